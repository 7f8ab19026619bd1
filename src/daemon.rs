//! Wiring for `coldvault mount`: connect the store, open the index, start the uploader, the
//! sealer and the control socket, run the FUSE session, and shut down cleanly.
//!
//! Shutdown: a watch channel (`stop`) tells every background task to end; uploads in flight are
//! interrupted, their journal rows stay queued, and the next mount resumes them.

use crate::crypto::VaultKeys;
use crate::fs::{Fs, FsConfig};
use crate::store::{Counted, ObjectStore};
use crate::upload::{UploadConfig, Uploader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct MountSpec {
    pub mountpoint: PathBuf,
    pub fs: FsConfig,
    pub upload: UploadConfig,
    pub allow_other: bool,
    pub threads: usize,
}

/// A running daemon without FUSE (tests drive `fs` directly) or with it (`run_mount`).
pub struct Daemon {
    pub fs: Arc<Fs>,
    pub stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sealer: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn start(rt: &tokio::runtime::Handle, store: Arc<dyn ObjectStore>, keys: Arc<VaultKeys>, fs_cfg: FsConfig, up: UploadConfig) -> crate::fs::Result<Daemon> {
        let counted = Arc::new(Counted::new(store));
        let fs = Fs::new(fs_cfg, keys, counted, rt.clone())?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let uploader = Uploader::new(fs.clone(), up, stop_rx.clone());
        let tasks = vec![rt.spawn(uploader.run()), rt.spawn(crate::restore::poller::run(fs.clone(), stop_rx.clone()))];
        let sealer = {
            let fs = fs.clone();
            let stop_rx = stop_rx.clone();
            std::thread::Builder::new()
                .name("sealer".into())
                .spawn(move || {
                    // Poll often enough that the settle delay is honoured to within ~0.25 s.
                    while !*stop_rx.borrow() {
                        if let Err(e) = fs.seal_ready(false) {
                            tracing::error!(error = %e, "sealer");
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
                .expect("spawn sealer")
        };
        Ok(Daemon { fs, stop, tasks, sealer: Some(sealer) })
    }

    pub fn add_task(&mut self, t: tokio::task::JoinHandle<()>) {
        self.tasks.push(t);
    }

    /// Stop background work. Pending uploads stay in the journal.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if let Some(s) = self.sealer.take() {
            let _ = tokio::task::spawn_blocking(move || s.join()).await;
        }
    }
}
