//! Fast tests of the filesystem on the in-memory store, one file per file of `fs/` under test. Here, the shared harness: `Env`
//! (a daemon on a `MemoryStore`; restarts, crashes and power cuts), the test configuration, and helpers that drive a machine or wait.

use super::*;
use crate::crypto::VaultDescriptor;
use crate::crypto::{Header, Opened};
use crate::daemon::Daemon;
use crate::meta::{Kind, ROOT};
use crate::store::memory::MemoryStore;
use crate::store::{ObjectStore, StoreError};
use crate::upload::UploadConfig;
use crate::vault::StorageClass;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::time::Instant;

mod ahead;
mod archive;
mod at;
mod attrs;
mod handles;
mod journal;
mod model;
mod namespace;
mod quota;
mod read;
mod reads;
mod recover;
mod seal;
mod status;
mod uploads;

struct Env {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    keys: Arc<VaultKeys>,
    daemon: Option<Daemon>,
}

fn cfg(dir: &std::path::Path) -> FsConfig {
    FsConfig {
        cache_dir: dir.to_path_buf(),
        settle: Duration::from_secs(3600), // tests seal explicitly
        prefix: "v/".into(),
        policy: crate::rules::ClassPolicy {
            rules: vec![crate::rules::parse_rule("raw/**=DEEP_ARCHIVE").unwrap()],
            default_class: "STANDARD".into(),
            small_file_threshold: 128 * 1024,
            small_file_class: "STANDARD".into(),
        },
        restore: RestoreConfig { poll_override: Some(Duration::from_millis(100)), class_refresh: None, ..Default::default() },
        // Tests flush the journal explicitly (so request counts stay about data objects).
        journal: crate::remote_meta::JournalConfig { interval: Duration::from_secs(3600), ..Default::default() },
        ignore: DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect(),
        read_cache: 0,
        read_ahead: 4 << 20,
        // Tests sync explicitly (a power cut is simulated by going back to a copy of the index).
        group_commit: Duration::from_secs(3600),
        max_file_size: crate::fs::MAX_FILE_SIZE,
        vault_signed: false,
        journal_heads: Default::default(),
        machine_id: None,
        staging_quota: None,
        descriptor: None,
    }
}

fn fast_upload() -> UploadConfig {
    UploadConfig {
        concurrency: 2,
        part_concurrency: 1,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        bandwidth: None,
    }
}

impl Env {
    fn new() -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (_, keys) = VaultDescriptor::create_with_cost(b"pw", 1024, 1);
        let mut e = Env { rt, dir: tempfile::tempdir().unwrap(), store: MemoryStore::new(), keys: Arc::new(keys), daemon: None };
        e.start();
        e
    }
    fn start(&mut self) {
        let d = Daemon::start(self.rt.handle(), self.store.clone(), self.keys.clone(), cfg(self.dir.path()), fast_upload()).unwrap();
        self.daemon = Some(d);
    }
    fn restart(&mut self) {
        self.restart_with(|_| {});
    }
    /// Restart with the test configuration changed by `change`.
    fn restart_with(&mut self, change: impl FnOnce(&mut FsConfig)) {
        let d = self.daemon.take().unwrap();
        self.rt.block_on(d.shutdown());
        let mut c = cfg(self.dir.path());
        change(&mut c);
        self.daemon = Some(Daemon::start(self.rt.handle(), self.store.clone(), self.keys.clone(), c, fast_upload()).unwrap());
    }
    fn fs(&self) -> Arc<Fs> {
        self.daemon.as_ref().unwrap().fs.clone()
    }
    /// The index files as they are on disk after a sync: what a power cut from now on keeps.
    fn durable_index(&self) -> Vec<(std::path::PathBuf, Option<Vec<u8>>)> {
        let fs = self.fs();
        fs.sync_durable().unwrap();
        let _quiet = fs.core();
        ["index.db", "index.db-wal"]
            .iter()
            .map(|n| {
                let p = self.dir.path().join(n);
                let b = std::fs::read(&p).ok();
                (p, b)
            })
            .collect()
    }
    /// A power cut: the daemon stops without syncing, and the index on disk goes back to
    /// `durable` (commits since were not synced), while staged files stay as they are (the
    /// filesystem may have written any of their renames). Then the daemon starts again.
    fn power_cut(&mut self, durable: Vec<(std::path::PathBuf, Option<Vec<u8>>)>) {
        let d = self.daemon.take().unwrap();
        let gone = Arc::downgrade(&d.fs);
        self.rt.block_on(d.crash());
        assert!(gone.upgrade().is_none(), "the test still holds the crashed filesystem (drop its handles first)");
        let _ = std::fs::remove_file(self.dir.path().join("index.db-shm"));
        for (p, b) in durable {
            match b {
                Some(b) => std::fs::write(&p, b).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        self.start();
    }
    fn write_file(&self, parent: u64, name: &str, data: &[u8]) -> u64 {
        let fs = self.fs();
        let (i, fh) = fs.create(parent, OsStr::new(name), 0o644, 0, 0).unwrap();
        for (k, chunk) in data.chunks(1 << 20).enumerate() {
            fs.write(fh, (k << 20) as u64, chunk).unwrap();
        }
        fs.flush(fh).unwrap();
        fs.release(fh).unwrap();
        i.ino
    }
    fn read_all(&self, ino: u64) -> Result<Vec<u8>> {
        let fs = self.fs();
        let fh = fs.open(ino, false, false, 0)?.0;
        let size = fs.getattr(ino)?.size;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let d = fs.read(fh, out.len() as u64, 128 * 1024);
            match d {
                Ok(d) if d.is_empty() => break,
                Ok(d) => out.extend(d),
                Err(e) => {
                    fs.release(fh)?;
                    return Err(e);
                }
            }
        }
        fs.release(fh)?;
        Ok(out)
    }
    fn wait_uploaded(&self) {
        let t = Instant::now();
        loop {
            let s = self.fs().status().unwrap();
            if s.pending_files == 0 {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "uploads did not finish: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn wait_state(&self, ino: u64, st: State) {
        let t = Instant::now();
        while self.fs().state_of(ino).unwrap().map(|x| x.1) != Some(st) {
            assert!(t.elapsed() < Duration::from_secs(30), "state {:?} never reached", st);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Data object versions written to the bucket (journal batches and snapshots excluded).
    fn puts(&self) -> u64 {
        self.store.versions_under("v/d/") as u64
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.shutdown());
        }
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed as usize * 7) % 251) as u8).collect()
}

fn upload_one(e: &Env, name: &str, d: &[u8]) -> (u64, String) {
    let ino = e.write_file(ROOT, name, d);
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    let key = e.fs().getattr(ino).unwrap().object_key.unwrap();
    (ino, key)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn flush_journal(e: &Env) {
    let fs = e.fs();
    e.rt.block_on(fs.journal_uploader().flush()).unwrap();
}

/// A second machine: fresh cache dir, same bucket and keys; its index is rebuilt at start.
fn fresh_machine(e: &Env) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cfg(dir.path()), fast_upload()).unwrap();
    (dir, d)
}

fn tree_of(fs: &Fs) -> Vec<(String, crate::remote_meta::Node)> {
    let (t, _) = fs.export_tree().unwrap();
    t.nodes.into_iter().collect()
}

fn write_on(fs: &Fs, parent: u64, name: &str, d: &[u8]) -> u64 {
    let (i, fh) = fs.create(parent, OsStr::new(name), 0o644, 0, 0).unwrap();
    fs.write(fh, 0, d).unwrap();
    fs.release(fh).unwrap();
    i.ino
}

fn rewrite_on(fs: &Fs, ino: u64, d: &[u8]) {
    let fh = fs.open(ino, true, true, 0).unwrap().0;
    fs.write(fh, 0, d).unwrap();
    fs.release(fh).unwrap();
}

/// Seal, upload and journal everything `fs` has (another machine's daemon in a test).
fn settle_machine(e: &Env, fs: &Arc<Fs>) {
    fs.seal_ready(true).unwrap();
    wait_for("uploads", || fs.status().unwrap().pending_files == 0);
    e.rt.block_on(fs.journal_uploader().flush()).unwrap();
}

fn read_on(fs: &Fs, path: &str) -> Vec<u8> {
    let i = fs.resolve(path).unwrap();
    let (fh, _) = fs.open(i.ino, false, false, 0).unwrap();
    let d = fs.read(fh, 0, i.size as u32 + 1).unwrap();
    fs.release(fh).unwrap();
    d.to_vec()
}

fn names_of(fs: &Fs) -> Vec<String> {
    tree_of(fs).into_iter().map(|(p, _)| p).collect()
}

fn flush_wait(e: &Env, timeout: Duration) -> crate::control::Reply {
    let fs = e.fs();
    let t = Instant::now();
    let r = e.rt.block_on(crate::control::flush(&fs, &fs.journal_uploader(), true, Some(timeout)));
    assert!(t.elapsed() < timeout + Duration::from_secs(5), "flush --wait overran its timeout: {r:?}");
    r
}

/// A second machine joining `e`'s vault (rebuilt from the bucket), taking a snapshot at
/// every journal flush.
fn second_machine(e: &Env) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.journal.snapshot_every = 1;
    let d = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap();
    (dir, d)
}

fn read_all_on(fs: &Fs, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size;
    let (fh, _) = fs.open(ino, false, false, 0).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let d = fs.read(fh, out.len() as u64, 1 << 20).unwrap();
        if d.is_empty() {
            break;
        }
        out.extend(d);
    }
    fs.release(fh).unwrap();
    out
}
