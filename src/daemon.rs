//! Wiring for `coldvault mount`: open the index, allow this machine's key, rebuild if needed, and
//! start the uploader, the journal uploader, the restore poller, the sealer and the group
//! commit; shut them down cleanly. `cli/mount.rs` connects the store, serves the control socket
//! and runs the FUSE session around it.
//!
//! Shutdown: a watch channel (`stop`) tells every background task to end; uploads in flight are
//! interrupted, their journal rows stay queued, and the next mount resumes them.

use crate::crypto::VaultKeys;
use crate::fs::{Fs, FsConfig};
use crate::remote_meta::journal::{JournalEnv, JournalUploader};
use crate::store::{Counted, ObjectStore};
use crate::upload::{UploadConfig, Uploader};
use std::sync::Arc;
use std::time::Duration;

/// A running daemon without FUSE (tests drive `fs` directly) or with it (`cli/mount.rs`).
pub struct Daemon {
    pub fs: Arc<Fs>,
    /// The one journal uploader: its task, the control socket's `flush` and unmount share it.
    pub journal: Arc<JournalUploader>,
    pub stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The sealer and the group commit threads.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// This full mount found the vault signing, or started it, and its own key allowed.
    pub signing: bool,
    /// The allowance of this machine's key, when it could not be made at start.
    allowing: Option<Arc<Allowing>>,
    /// Per machine, the journal record the rebuild at start reached (`None`: no rebuild).
    pub rebuilt_reach: Option<crate::remote_meta::Reach>,
}

/// Allowing this machine's signing key in the vault (`trust::prepare_full`), tried again until
/// it is done when the store could not be reached at start: a rebuild believes what this
/// machine uploads only once its key is allowed, whenever that happens.
struct Allowing {
    store: Arc<dyn ObjectStore>,
    sk: x25519_dalek::StaticSecret,
    fs: Arc<Fs>,
    /// Done; held for a whole try, so the retry task and the try at unmount never run
    /// `prepare_full` at once (it may adopt unsigned objects: once).
    done: tokio::sync::Mutex<bool>,
}

impl Allowing {
    async fn try_once(&self) -> Result<(), crate::remote_meta::RemoteError> {
        let mut done = self.done.lock().await;
        if *done {
            return Ok(());
        }
        let fs = &self.fs;
        crate::remote_meta::trust::prepare_full(
            &self.store,
            &self.sk,
            &fs.cfg().prefix,
            fs.signer(),
            fs.cfg().vault_signed,
            fs.cfg().descriptor.as_ref(),
        )
        .await?;
        *done = true;
        Ok(())
    }

    /// Again and again (1 s, doubling up to 5 min) until it is done, refused for good, or stopped.
    async fn retry(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            match self.try_once().await {
                Ok(()) => {
                    tracing::info!("this machine's signing key is allowed in the vault now");
                    return;
                }
                Err(crate::remote_meta::RemoteError::Store(e)) if e.is_retryable() => wait = (wait * 2).min(Duration::from_secs(300)),
                Err(e) => {
                    tracing::error!(error = %e, token = %self.fs.signer().token(), "could not allow this machine's signing key in the vault: until then a rebuild does not believe what it uploads");
                    return;
                }
            }
        }
    }
}

impl Daemon {
    pub fn start(
        rt: &tokio::runtime::Handle,
        store: Arc<dyn ObjectStore>,
        keys: Arc<VaultKeys>,
        fs_cfg: FsConfig,
        up: UploadConfig,
    ) -> crate::fs::Result<Daemon> {
        // A full mount may list the bucket; a write-only one relies on conditional writes, and
        // on the fork its last upload found.
        if let Some(why) = Fs::fork_check(&fs_cfg, store.as_ref(), rt, keys.secret.is_some())? {
            tracing::error!("{why}");
        }
        let counted = Arc::new(Counted::with_prefix(store.clone(), &fs_cfg.prefix));
        let fs = Fs::new(fs_cfg, keys, counted, rt.clone())?;
        let mut signing = false;
        let mut allowing = None;
        let mut untrusted = None;
        match fs.keys().secret.as_ref() {
            // A full mount allows its own signing key in the vault (and starts the vault signing
            // if no machine has), before it rebuilds or writes anything.
            Some(sk) => {
                let allow = Arc::new(Allowing { store: store.clone(), sk: sk.clone(), fs: fs.clone(), done: Default::default() });
                // Not counted in `status`: what a mount does once before it starts.
                match rt.block_on(allow.try_once()) {
                    Ok(()) => signing = true,
                    // A store that cannot be reached at mount time (a network not up yet at
                    // boot, a 5xx) must not leave what this mount uploads unbelieved for the
                    // whole mount: tried again in the background and before unmounting.
                    Err(crate::remote_meta::RemoteError::Store(e)) if e.is_retryable() => {
                        tracing::warn!(error = %e, "could not allow this machine's signing key in the vault yet; trying again");
                        allowing = Some(allow);
                    }
                    // What a rebuild would read cannot be believed: no rebuild from it (below).
                    Err(e @ crate::remote_meta::RemoteError::Untrusted(_)) => {
                        tracing::error!("{e}");
                        untrusted = Some(e);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        token = %fs.signer().token(),
                        "could not allow this machine's signing key in the vault (tried again at the next mount; or run `coldvault machine allow TOKEN`): until then a rebuild does not believe what it uploads"
                    ),
                }
            }
            None => tracing::info!(
                token = %fs.signer().token(),
                "write-only mount: a rebuild believes what this machine uploads once a full machine allowed its key: `coldvault machine allow TOKEN` (also shown by `coldvault status`)"
            ),
        }
        let mut rebuilt_reach = None;
        if fs.needs_rebuild()? {
            // A machine with its index goes on (what it uploads stays its own); one that would
            // rebuild it from what the vault cannot vouch for stops here, saying why.
            if let Some(e) = untrusted {
                return Err(crate::fs::FsError::Rebuild(e));
            }
            if fs.keys().secret.is_some() {
                let prefix = fs.cfg().prefix.clone();
                let progress = |what: &str, done: usize, total: usize| {
                    if done == total || done.is_multiple_of(500) {
                        tracing::info!(what, done, total, "rebuilding the index from the bucket");
                    }
                };
                let tree = rt
                    .block_on(crate::remote_meta::rebuild(&(fs.store().clone() as Arc<dyn crate::store::ObjectStore>), fs.keys(), &prefix, &progress))
                    .map_err(crate::fs::FsError::Rebuild)?;
                tree.check_signed(fs.cfg().vault_signed, &prefix).map_err(crate::fs::FsError::Rebuild)?;
                for r in &tree.refused {
                    tracing::error!("{r}");
                }
                for c in &tree.conflicts {
                    tracing::warn!("conflict between machines: {c}");
                }
                let reach = crate::remote_meta::Reach::of(&tree);
                for r in reach.rolled_back(&fs.cfg().journal_heads) {
                    tracing::error!("{r}");
                }
                rebuilt_reach = Some(reach);
                let (d, f, l) = fs.import_tree(&tree)?;
                tracing::info!(dirs = d, files = f, symlinks = l, refused = tree.refused.len(), "index rebuilt from the bucket");
            } else {
                tracing::warn!(
                    "write-only mount with an empty index: files uploaded earlier are not listed (a full mount with the passphrase rebuilds them)"
                );
                fs.mark_initialized()?;
            }
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let env = crate::upload::UploadEnv {
            store: fs.store().clone(),
            can_read: fs.keys().secret.is_some(),
            prefix: fs.cfg().prefix.clone(),
            signer: fs.signer().clone(),
            vault: fs.keys().public,
            wakeup: fs.upload_wakeup().clone(),
        };
        let uploader = Uploader::new(fs.upload_book(), env, up, stop_rx.clone());
        let env = JournalEnv {
            store: fs.store().clone(),
            keys: fs.keys().clone(),
            signer: fs.signer().clone(),
            prefix: fs.cfg().prefix.clone(),
            wakeup: Default::default(),
            uploaded: fs.meta_uploads().clone(),
        };
        let journal = Arc::new(JournalUploader::new(fs.clone(), env, fs.cfg().journal.clone()));
        #[cfg(test)]
        let _ = fs.daemon_journal.set(Arc::downgrade(&journal));
        let mut tasks = vec![rt.spawn(uploader.run()), rt.spawn(journal.clone().run(stop_rx.clone()))];
        if fs.keys().secret.is_some() {
            // Restores and class refreshes need read rights a write-only mount does not have.
            let poller = crate::restore::poller::Poller {
                index: fs.clone(),
                store: fs.store().clone(),
                cfg: fs.cfg().restore.clone(),
                prefix: fs.cfg().prefix.clone(),
                wakeup: fs.restore_wakeup().clone(),
            };
            tasks.push(rt.spawn(poller.run(stop_rx.clone())));
        }
        tasks.push(rt.spawn(sweep_multipart(fs.clone(), stop_rx.clone())));
        if let Some(a) = &allowing {
            tasks.push(rt.spawn(a.clone().retry(stop_rx.clone())));
        }
        // Poll often enough that the settle delay is honoured to within ~0.25 s.
        let sealer = {
            let fs = fs.clone();
            periodic("sealer", true, stop_rx.clone(), Duration::from_millis(250), move || {
                if let Err(e) = fs.seal_ready(false) {
                    tracing::error!(error = %e, "sealer");
                }
            })
        };
        // The group commit, on a thread of its own so that long seals (a batch of big files
        // being digested) never delay it: everything before it survives power loss.
        let committer = {
            let fs = fs.clone();
            periodic("group-commit", false, stop_rx.clone(), fs.cfg().group_commit, move || {
                if let Err(e) = fs.group_commit() {
                    tracing::error!(error = %e, "group commit failed; retrying at the next one");
                }
            })
        };
        Ok(Daemon { fs, journal, stop, tasks, threads: vec![sealer, committer], signing, allowing, rebuilt_reach })
    }

    pub fn add_task(&mut self, t: tokio::task::JoinHandle<()>) {
        self.tasks.push(t);
    }

    /// Stop background work. Pending uploads stay in the journal.
    pub async fn shutdown(self) {
        self.stop_all(true).await
    }

    /// Stop background work as a crash would (tests): tasks are cancelled where they are
    /// (no last journal flush), no last group commit.
    #[cfg(test)]
    pub async fn crash(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop_all(false).await
    }

    async fn stop_all(mut self, last_commit: bool) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // One more try before going: what this mount uploaded is believed only once its key is.
        if let (true, Some(a)) = (last_commit, &self.allowing) {
            match tokio::time::timeout(Duration::from_secs(30), a.try_once()).await {
                Ok(Ok(())) => tracing::info!("this machine's signing key is allowed in the vault now"),
                _ => tracing::error!(
                    token = %self.fs.signer().token(),
                    "this machine's signing key is still not allowed in the vault: a rebuild does not believe what it uploaded until the next mount allows it (or `coldvault machine allow TOKEN`)"
                ),
            }
        }
        // The uploader records its last completed uploads as it stops, possibly after the
        // journal task's last flush: their records go up now, not at the next mount.
        if last_commit && self.fs.journal_pending_count().unwrap_or(0) > 0 {
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(30), self.journal.flush()).await {
                tracing::warn!(error = %e, "last journal upload failed; the next mount sends it");
            }
        }
        let threads = std::mem::take(&mut self.threads);
        let fs = self.fs.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // The last group commit, after the sealer's last seal.
            if !last_commit {
                return;
            }
            if let Err(e) = fs.group_commit() {
                tracing::error!(error = %e, "final group commit failed");
            }
        })
        .await;
    }
}

/// A thread named `name` that runs `f` every `every` until `stop` says so (it looks at least
/// every 100 ms, so shutdown never waits a whole period); `background`: at a lower priority.
fn periodic(
    name: &str,
    background: bool,
    stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
    mut f: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if background {
                background_priority();
            }
            loop {
                let start = std::time::Instant::now();
                while start.elapsed() < every {
                    if *stop.borrow() {
                        return;
                    }
                    std::thread::sleep(every.saturating_sub(start.elapsed()).min(Duration::from_millis(100)));
                }
                f();
            }
        })
        .expect("spawn a background thread")
}

/// Lower the CPU priority of the calling thread to nice 10: the sealer (digests and key wraps,
/// outside the lock) yields the CPU to the FUSE threads that answer applications; when nothing
/// else runs it gets the whole CPU. Not the group commit (it holds the lock through an fsync)
/// nor the runtime (its blocking threads serve FUSE reads and opens).
fn background_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; on
    // Linux, PRIO_PROCESS with a thread id changes that thread only. A failure leaves the
    // priority as it was, which is harmless.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Multipart uploads abandoned for a week are aborted: a minute after start, then daily
/// (`Fs::sweep_multipart`). Credentials without ListBucketMultipartUploads (a write-only
/// machine's, often) say so once; the bucket's lifecycle rule is then the only sweep.
async fn sweep_multipart(fs: Arc<Fs>, mut stop: tokio::sync::watch::Receiver<bool>) {
    const ABANDONED: Duration = Duration::from_secs(7 * 86_400);
    let mut wait = Duration::from_secs(60);
    let mut said = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = fs.sweep_multipart(ABANDONED).await {
            if !said {
                tracing::info!(error = %e, "cannot list the vault's unfinished multipart uploads; abandoned ones are left to the bucket's lifecycle rule (AbortIncompleteMultipartUpload)");
                said = true;
            }
        }
        wait = Duration::from_secs(86_400);
    }
}
