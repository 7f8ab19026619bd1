//! POSIX semantics over the index, the staging area and the object store — without FUSE.
//!
//! Role: every filesystem operation (`lookup`, `create`, `write`, `rename`, …) as a plain method
//! returning `Result<_, FsError>`; the open-handle table; sealing settled files into the outbox;
//! completing uploads into the index; reading local or remote content. `fuse/` only translates.
//!
//! Concurrency: one lock, `core` (the SQLite connection plus the open-file table), owned by
//! `index::Index`, whose header gives the lock order. Every inode state transition happens
//! under it. It is never held across network I/O, encryption of a whole file, or a `pwrite`:
//! those run outside and re-check `content_gen` before committing.
//!
//! Durability, with a local filesystem's contract: `flush` (every close) and `release` commit
//! the file's size and state to the index (SQLite WAL, not fsynced) before replying, so a
//! close that returned success survives kill -9 of the daemon; `fsync` (and `flush --wait`)
//! makes everything before it survive power loss (`sync_durable`); the group commit does the
//! same every `GROUP_COMMIT` (5 s, like ext4's journal commit).

pub mod error;

// One `impl Fs` per concern (and `read::Reads`, the read path cut off the core lock); the shared
// state and its lock live here.
mod ahead;
mod archive;
pub mod at;
mod attrs;
mod handles;
mod index;
mod journal;
mod namespace;
mod quota;
mod read;
mod seal;
mod status;
mod uploads;

use index::{AfterCommit, Core, Handle, OpenFile};
use read::Reads;
pub use status::{FailureInfo, FlushView, RestoreInfo, Status};
pub use uploads::UploadBook;

use crate::crypto::{self, VaultKeys, HEADER_LEN};
use crate::meta::{Db, Inode, State, Upload};
use crate::staging::Staging;
use crate::store::Counted;
#[cfg(test)]
use crate::sync::Mutex;
use crate::sync::MutexGuard;
pub use error::{FsError, Result};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::meta::{MAX_NAME, MAX_PATH};
use crate::vault::{header, UploadState};
/// Below this much free space, sealing gives up the staging reserve (`Staging::release_reserve`)
/// so that the index can record the seals that free the disk.
const SEAL_HEADROOM: u64 = 16 << 20;
/// Free space a batch of seals needs for the index's pages: less than the reserve gives back.
const SEAL_MIN_ROOM: u64 = 1 << 20;
/// How often the group commit makes everything survive power loss (ext4 commits every 5 s).
pub const GROUP_COMMIT: Duration = Duration::from_secs(5);

pub use crate::clock::{now_ms, now_ns};

#[derive(Clone, Debug)]
pub struct FsConfig {
    pub cache_dir: PathBuf,
    /// A closed file is sealed once it has been untouched this long.
    pub settle: Duration,
    /// Object key prefix inside the bucket ("" or ending in '/').
    pub prefix: String,
    /// Storage class (and tags) per path.
    pub policy: crate::rules::ClassPolicy,
    pub restore: RestoreConfig,
    /// Metadata journal and snapshots in the bucket.
    pub journal: crate::remote_meta::JournalConfig,
    /// File-name globs kept local and never uploaded.
    pub ignore: Vec<String>,
    /// Bytes of uploaded objects kept locally for reads (0: release after upload).
    pub read_cache: u64,
    /// Bytes of file content all readers of the mount may have requested from S3 ahead of
    /// what they read (`sealed::Budget`): the memory bound of reading.
    pub read_ahead: u64,
    /// Interval of the group commit (`GROUP_COMMIT`).
    pub group_commit: Duration,
    /// The largest file accepted (`MAX_FILE_SIZE` unless set lower): a write or truncate
    /// beyond it fails with EFBIG, at once, instead of a file that can never be uploaded.
    pub max_file_size: u64,
    /// The vault is known to sign its metadata (the config's `signed`).
    pub vault_signed: bool,
    /// How far each machine's journal reached when this machine last read the vault (the
    /// config's `journal_heads`): a rebuild that finds less reports a rollback.
    pub journal_heads: std::collections::BTreeMap<String, i64>,
    /// The machine id the config names (`init --write-only`), taken by a new cache dir.
    pub machine_id: Option<String>,
    /// The most bytes of file content one user (the files' owner) may have on the staging disk
    /// waiting for upload; a write beyond it gets EDQUOT. `None`: no quota.
    pub staging_quota: Option<u64>,
    /// The vault descriptor this machine's config holds: signed by a full mount if the vault
    /// has not signed one yet.
    pub descriptor: Option<crate::crypto::VaultDescriptor>,
}

#[cfg(test)]
impl FsConfig {
    /// A configuration for tests that drive the core without a daemon: nothing settles, syncs
    /// or flushes the journal by itself; STANDARD for everything.
    pub(crate) fn for_tests(dir: &std::path::Path) -> FsConfig {
        FsConfig {
            cache_dir: dir.to_path_buf(),
            settle: Duration::from_secs(3600),
            prefix: "v/".into(),
            policy: crate::rules::ClassPolicy {
                rules: vec![],
                default_class: "STANDARD".into(),
                small_file_threshold: 0,
                small_file_class: "STANDARD".into(),
            },
            restore: RestoreConfig::default(),
            journal: crate::remote_meta::JournalConfig { interval: Duration::from_secs(3600), ..Default::default() },
            ignore: vec![],
            read_cache: 0,
            read_ahead: 4 << 20,
            group_commit: Duration::from_secs(3600),
            max_file_size: MAX_FILE_SIZE,
            vault_signed: false,
            journal_heads: Default::default(),
            machine_id: None,
            staging_quota: None,
            descriptor: None,
        }
    }
}

/// S3's largest object is 5 TiB; the largest file whose encrypted object fits in it.
pub const MAX_FILE_SIZE: u64 = {
    const S3_MAX_OBJECT: u64 = 5 << 40;
    // Each 64 KiB segment carries a 16-byte tag, and the object a 128-byte header.
    let segments = (S3_MAX_OBJECT - crypto::HEADER_LEN as u64) / (crypto::SEGMENT + crypto::TAG);
    segments * crypto::SEGMENT
};

pub use crate::restore::RestoreConfig;

/// Inode number space of virtual files: a file's status file is `ino | STATUS_BIT`; the
/// `.coldvault` folder and its `restores` listing have fixed numbers far above real inodes.
pub const STATUS_BIT: u64 = 1 << 62;
pub const CTL_DIR: u64 = 1 << 61;
pub const CTL_RESTORES: u64 = (1 << 61) + 1;
pub const CTL_NAME: &str = ".coldvault";
/// Junk that desktops and editors write beside real files: accepted, readable, never uploaded.
pub const DEFAULT_IGNORE: &[&str] =
    &[".DS_Store", "._*", ".localized", "Thumbs.db", "ehthumbs.db", "desktop.ini", "~$*", ".~lock.*#", "*.swp", "*.swx", ".#*", "#*#", "*~"];
/// An open of an archived file may ask S3 about its pending restore at most this often.
const OPEN_HEAD_INTERVAL_MS: i64 = 60_000;

/// Where an encrypted copy of a file's current content can be read from.
enum Source {
    /// A sealed version's frozen plaintext, or an uploaded one kept in the read cache.
    Plain(PathBuf),
    /// An encrypted copy (outbox or read cache) written by an earlier build.
    Local(PathBuf),
    Remote(String),
}

pub struct Fs {
    cfg: FsConfig,
    /// The index and the open-file table, behind the one core lock (`index.rs`, with the lock
    /// order).
    index: Arc<index::Index>,
    keys: Arc<VaultKeys>,
    /// This machine's id in the bucket and the key that signs what it puts there.
    signer: Arc<crate::crypto::sign::MachineSigner>,
    store: Arc<Counted>,
    rt: tokio::runtime::Handle,
    staging: Arc<Staging>,
    /// Freezes settled files as versions and queues them (`seal.rs`).
    sealer: seal::Sealer,
    /// Reading content once `Fs` has chosen where it is (`read.rs`): the read budget, the
    /// folder read-ahead's state (`ahead.rs`) and the readers started ahead; it never takes
    /// `core`.
    reads: Reads,
    /// The vault as it was at given times, read-only under `.coldvault/at` (`at.rs`).
    views: at::Views,
    /// Woken when an upload is queued.
    upload_wakeup: Arc<tokio::sync::Notify>,
    /// Woken when a restore is recorded and must be sent.
    restore_wakeup: Arc<tokio::sync::Notify>,
    /// Staged bytes per owner, for the staging quota (`quota.rs`).
    quota: Arc<quota::Quota>,
    /// The upload queue the uploader works through (`uploads.rs`).
    uploads: Arc<UploadBook>,
    /// Tests: runs once inside the next `persist`, between choosing what to make durable and
    /// the fsync (where a concurrent write can land).
    #[cfg(test)]
    persist_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Test hook: runs once in `write`, after the bytes reach the spool and before the size is
    /// recorded (a truncate racing with the write).
    #[cfg(test)]
    write_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// File versions that reached S3 since mount (status; tests check "uploaded once").
    data_uploads: Arc<std::sync::atomic::AtomicU64>,
    /// Journal batches and snapshots uploaded since mount (counted by the journal uploader).
    meta_uploads: Arc<std::sync::atomic::AtomicU64>,
    /// Tests: the journal uploader of the daemon serving this filesystem (`journal_uploader`).
    #[cfg(test)]
    pub daemon_journal: std::sync::OnceLock<std::sync::Weak<crate::remote_meta::journal::JournalUploader>>,
}

/// What the wiring (`daemon.rs`), the FUSE adapter and the control socket read of the core.
impl Fs {
    pub fn cfg(&self) -> &FsConfig {
        &self.cfg
    }
    pub fn keys(&self) -> &Arc<VaultKeys> {
        &self.keys
    }
    /// This machine's id in the bucket and the key that signs what it puts there.
    pub fn signer(&self) -> &Arc<crate::crypto::sign::MachineSigner> {
        &self.signer
    }
    /// The store, counting requests for `status`.
    pub fn store(&self) -> &Arc<Counted> {
        &self.store
    }
    /// The runtime the core blocks on for network I/O (FUSE threads hand reads to it).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }
    /// Woken when an upload is queued (the uploader's wakeup).
    pub fn upload_wakeup(&self) -> &Arc<tokio::sync::Notify> {
        &self.upload_wakeup
    }
    /// Journal batches and snapshots uploaded since mount (the journal uploader counts them).
    pub fn meta_uploads(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.meta_uploads
    }
    /// The upload queue, for the uploader.
    pub fn upload_book(&self) -> Arc<UploadBook> {
        self.uploads.clone()
    }
    /// Woken when a restore is recorded (the restore poller's wakeup).
    pub fn restore_wakeup(&self) -> &Arc<tokio::sync::Notify> {
        &self.restore_wakeup
    }
}

fn check_name(name: &std::ffi::OsStr) -> Result<&str> {
    let s = name.to_str().ok_or(FsError::BadName)?;
    if s.len() > MAX_NAME {
        return Err(FsError::NameTooLong);
    }
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(s)
}

impl Fs {
    pub fn new(cfg: FsConfig, keys: Arc<VaultKeys>, store: Arc<Counted>, rt: tokio::runtime::Handle) -> Result<Arc<Fs>> {
        let staging = Arc::new(Staging::open(&cfg.cache_dir)?);
        staging.ensure_reserve();
        // SAFETY: getuid/getgid take no arguments, cannot fail and touch no memory of ours.
        let uid = unsafe { libc::getuid() };
        // SAFETY: as above.
        let gid = unsafe { libc::getgid() };
        let db = Db::open(&cfg.cache_dir.join("index.db"), now_ns(), uid, gid)?;
        let reads = Reads::new(store.clone(), keys.clone(), rt.clone(), cfg.read_ahead);
        let signer = Arc::new(Self::load_signer(&db, cfg.machine_id.as_deref())?);
        let quota = Arc::new(quota::Quota::new(cfg.staging_quota));
        // Views of the past (`at.rs`) are numbered anew by every mount: their restore rows
        // would name other files now.
        for r in db.restores()?.into_iter().filter(|r| at::is_view_ino(r.ino)) {
            Db::delete_restore(db.conn(), r.ino)?;
        }
        let index = Arc::new(index::Index::new(db));
        let upload_wakeup = Arc::new(tokio::sync::Notify::new());
        let data_uploads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let uploads = Arc::new(UploadBook::new(index.clone(), staging.clone(), quota.clone(), cfg.read_cache, data_uploads.clone()));
        let sealer = seal::Sealer::new(index.clone(), staging.clone(), keys.public, &cfg, upload_wakeup.clone());
        let fs = Arc::new(Fs {
            cfg,
            index,
            keys,
            signer,
            store,
            rt,
            staging,
            sealer,
            reads,
            views: Default::default(),
            upload_wakeup,
            restore_wakeup: Default::default(),
            quota,
            uploads,
            #[cfg(test)]
            persist_hook: Mutex::new(None),
            #[cfg(test)]
            write_hook: Mutex::new(None),
            data_uploads,
            meta_uploads: Default::default(),
            #[cfg(test)]
            daemon_journal: Default::default(),
        });
        fs.recover()?;
        Ok(fs)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.index.core()
    }

    /// Make everything so far survive power loss: every staged byte and rename (one `syncfs`
    /// of the staging filesystem), then the index (its WAL fsynced), in that order, so that a
    /// change made before the call is durable in its staged files before the index commit that
    /// refers to it; then delete the staged files those commits released. (A commit made
    /// between the two steps may become durable ahead of its files: start-up repairs that,
    /// see `recover`.) `fsync` calls it; so do the group commit every `GROUP_COMMIT`, start-up
    /// and unmount.
    pub fn sync_durable(&self) -> Result<()> {
        self.sync_durable_then(false)
    }

    /// `sync_durable`, and with `checkpoint` a WAL checkpoint under the same lock right after
    /// (a checkpoint syncs the WAL too, so it must not run without the `syncfs` before it).
    fn sync_durable_then(&self, checkpoint: bool) -> Result<()> {
        // A write from here on is caught by the next sync, even if it lands during this one.
        self.core().written = false;
        if let Err(e) = self.staging.syncfs() {
            self.core().written = true;
            return Err(e.into());
        }
        // What this sync covers: the commits made so far (all under the lock, so their frames
        // are in the WAL now) and the staged files they released. The fsync and the checkpoint
        // run without the lock (review N17: every FUSE operation, getattr too, waited for them
        // every 5 s; seconds on a slow disk or after a snapshot grew the WAL).
        let (changes, doomed) = {
            let mut c = self.core();
            (c.db.conn().total_changes(), std::mem::take(&mut c.after_durable))
        };
        if let Err(e) = self.index.syncer.sync() {
            let mut c = self.core();
            c.written = true;
            c.after_durable.extend(doomed);
            return Err(e.into());
        }
        {
            let mut c = self.core();
            // (Two syncs finishing out of order leave the older count: one more sync, no harm.)
            c.synced_changes = changes;
        }
        if checkpoint {
            match self.index.syncer.checkpoint() {
                // The pages written to the WAL since the last checkpoint that emptied it
                // (what every change costs in writes: `RUST_LOG=coldvault=debug`).
                Ok((pages, copied)) => tracing::debug!(pages, copied, "index checkpoint"),
                Err(e) => tracing::warn!(error = %e, "index checkpoint failed; the next group commit tries again"),
            }
        }
        for p in doomed {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    /// The group commit: `sync_durable` and a WAL checkpoint (so the WAL stays small) when
    /// anything changed since the last one.
    pub fn group_commit(&self) -> Result<()> {
        self.reads.expire();
        let idle = {
            let c = self.core();
            !c.written && c.db.conn().total_changes() == c.synced_changes && c.after_durable.is_empty()
        };
        if idle {
            return Ok(());
        }
        self.sync_durable_then(true)
    }

    /// Delete `p` once the commits made so far (and the enclosing operation's, if any)
    /// survive power loss (`sync_durable`).
    fn remove_when_durable(c: &mut Core, p: PathBuf) {
        if c.op_depth > 0 {
            c.after_commit.push(AfterCommit::RemoveWhenDurable(p));
        } else {
            c.after_durable.push(p);
        }
    }

    /// The clock check (`Index::check_clock`) of the sealer, the uploader and start-up.
    pub(super) fn check_clock(&self, at_start: bool) -> Result<()> {
        Ok(self.index.check_clock(at_start)?)
    }

    /// Start-up repair: requeue what was staged, drop orphans, reconcile spool sizes.
    fn recover(&self) -> Result<()> {
        // After a crash of the daemon, its last commits and renames may be in the page cache
        // only: make them durable first, so that nothing below acts on (or deletes files for)
        // an index a power cut could still take back.
        self.sync_durable()?;
        self.check_clock(true)?;
        let mut c = self.core();
        // Unlinked files that were open when the daemon stopped: nobody can reach them now.
        for o in c.db.orphans()? {
            Db::delete_inode(c.db.conn(), o.ino)?;
            self.drop_content(&mut c, o.ino)?;
        }
        let uploads = c.db.uploads()?;
        let mut keep_outbox = HashSet::new();
        for u in &uploads {
            if !self.staged_version(u).exists() {
                self.refind_sealed_version(&c, u)?;
            }
            if !self.staged_version(u).exists() {
                let cur = c.db.get(u.ino)?;
                let tx = c.db.begin()?;
                Self::discard_uploads(&tx, std::slice::from_ref(u))?;
                // The spool is still the file's content (it was never frozen, or changed
                // after the seal): a dirty file again, sealed anew below.
                let back = match cur {
                    Some(mut i) if i.state.in_outbox() && i.content_gen == u.content_gen && self.staging.spool_len(u.ino).is_some() => {
                        i.state = State::Dirty;
                        i.content_gen += 1;
                        i.dirty_ms = now_ms();
                        Db::save(&tx, &i)?;
                        true
                    }
                    _ => false,
                };
                tx.commit().map_err(crate::meta::MetaError::from)?;
                if back {
                    tracing::warn!(ino = u.ino, "a sealed version's file was lost in a power cut; the file's staged content is queued again");
                } else {
                    tracing::error!(upload = u.id, ino = u.ino, "outbox file missing for a queued upload; dropping it");
                }
                continue;
            }
            // Any row found here may have been on the wire before the daemon stopped, even if the
            // index never said so (a power cut loses `uploading`): at least one attempt, so that
            // cancelling it journals a Discard of its key (else a landed object came back after
            // the file was deleted: it was neither mentioned nor dead).
            if u.state == UploadState::Uploading || u.attempts == 0 {
                let next = if u.state == UploadState::Uploading { 0 } else { u.next_try_ms };
                c.db.set_upload_state(u.id, UploadState::Queued, u.attempts.max(1), next, u.last_error.as_deref())?;
            }
            keep_outbox.insert((u.ino, u.content_gen));
        }
        for mut i in c.db.files_in_state(&[State::Uploading])? {
            i.state = State::Sealed;
            c.db.update(&i)?;
        }
        // Each inode in the outbox has a live upload row in the same state, or it is a file
        // nothing would ever advance (review N12: a `failed` row under a `sealed` inode, left
        // by a crash between two commits of an older build; a version dropped above).
        let rows: HashMap<(u64, i64), bool> = c.db.uploads()?.into_iter().map(|u| ((u.ino, u.content_gen), u.state == UploadState::Failed)).collect();
        for mut i in c.db.files_in_state(&[State::Sealed, State::Failed])? {
            let want = match rows.get(&(i.ino, i.content_gen)) {
                Some(true) => State::Failed,
                Some(false) => State::Sealed,
                None if self.staging.spool_len(i.ino).is_some() => {
                    // Its staged content is still there: seal it anew.
                    i.content_gen += 1;
                    i.dirty_ms = now_ms();
                    State::Dirty
                }
                // Its newest version in the bucket (its own, or one it took over by an atomic save).
                None if c.db.latest_version(i.ino)?.is_some() => {
                    tracing::error!(ino = i.ino, "a queued version's staged file is gone; the file is its last uploaded version again");
                    let v = c.db.latest_version(i.ino)?.expect("checked above");
                    (i.size, i.mtime_ns, i.sha256, i.header, i.storage_class) =
                        (v.size, v.mtime_ns, Some(v.sha256), Some(v.header), Some(v.storage_class));
                    i.object_key = Some(v.object_key);
                    State::Uploaded
                }
                None => {
                    tracing::error!(ino = i.ino, "a queued version's staged file is gone and the file has no uploaded version; it is now empty");
                    self.staging.create_spool(i.ino)?;
                    i.size = 0;
                    i.content_gen += 1;
                    i.dirty_ms = now_ms();
                    State::Dirty
                }
            };
            if i.state != want {
                tracing::warn!(ino = i.ino, from = i.state.as_str(), to = want.as_str(), "reconciled a file's state with its upload queue");
                i.state = want;
                c.db.update(&i)?;
            }
        }
        let mut keep_spool = HashSet::new();
        for mut i in c.db.files_in_state(&[State::Dirty, State::Local])? {
            if self.staging.spool_len(i.ino).is_none() {
                self.refind_spool(&i, &keep_outbox)?;
            }
            match self.staging.spool_len(i.ino) {
                Some(len) => {
                    if len != i.size {
                        self.refind_durable_spool(&i)?;
                    }
                    let len = self.staging.spool_len(i.ino).unwrap_or(len);
                    if len != i.size {
                        tracing::info!(ino = i.ino, len, indexed = i.size, "spool size differs from index after restart; keeping the bytes on disk");
                        i.size = len;
                        c.db.update(&i)?;
                    }
                }
                None => {
                    tracing::error!(ino = i.ino, "spool file for a dirty file is missing; the file is now empty");
                    self.staging.create_spool(i.ino)?;
                    i.size = 0;
                    c.db.update(&i)?;
                }
            }
            keep_spool.insert(i.ino);
        }
        drop(c);
        // The repairs above survive power loss before anything they no longer need goes.
        self.sync_durable()?;
        let mut removed = self.staging.remove_orphans(&keep_spool, &keep_outbox)?;
        // Read-cache copies of versions no file has any more (their deletion was pending).
        let mut versions: HashSet<String> = HashSet::new();
        {
            let c = self.core();
            let headers = c.db.file_headers()?.into_iter().chain(c.db.uploads()?.into_iter().map(|u| u.header));
            versions.extend(headers.filter(|h| h.len() == HEADER_LEN).map(|h| hex::encode(header::commitment(&h))));
        }
        removed += self.staging.remove_rcache_orphans(&versions)?;
        if removed > 0 {
            tracing::info!(removed, "removed orphaned staging files");
        }
        Ok(())
    }

    /// A dirty file without its spool: after a crash, the spool may be where a change the
    /// index does not hold (lost in a power cut) had moved it — frozen by a seal (this
    /// generation or a later one), or dropped by a deletion or truncation. The newest such
    /// file becomes the spool again.
    fn refind_spool(&self, i: &Inode, queued: &HashSet<(u64, i64)>) -> Result<()> {
        if self.staging.frozen_path(i.ino, i.content_gen).exists() {
            // A seal renamed the spool and the daemon stopped before its commit.
            tracing::info!(ino = i.ino, "undoing a seal the daemon stopped in");
            self.staging.unfreeze_spool(i.ino, i.content_gen)?;
            return Ok(());
        }
        let queued_paths: Vec<PathBuf> =
            queued.iter().filter(|(ino, _)| *ino == i.ino).flat_map(|&(ino, g)| self.staging.version_files(ino, g)).collect();
        let newest = self.staging.lost_spools(i.ino, i.content_gen).into_iter().filter(|(_, _, p)| !queued_paths.contains(p)).max();
        if let Some((_, _, p)) = newest {
            tracing::warn!(ino = i.ino, file = %p.display(), "a change to this file was lost in a power cut; its newest staged content is kept");
            self.staging.restore_spool(i.ino, &p)?;
        }
        Ok(())
    }

    /// A dirty file whose spool has another length than the index says: after a power cut
    /// that lost a truncation (`cp`/`>` over the file), the spool is the new content, maybe
    /// cut short, and the content the index describes may still be staged (moved aside, not
    /// deleted until the truncation was durable). The newest such file of exactly the
    /// indexed length is the file's content again.
    fn refind_durable_spool(&self, i: &Inode) -> Result<()> {
        let durable = self
            .staging
            .lost_spools(i.ino, i64::MAX)
            .into_iter()
            .filter(|(_, len, p)| *len == i.size && p.extension().is_some_and(|e| e == "dropped"))
            .max();
        if let Some((_, _, p)) = durable {
            tracing::warn!(ino = i.ino, "a truncation of this file was lost in a power cut; its content before it is kept");
            self.staging.drop_spool(i.ino);
            self.staging.restore_spool(i.ino, &p)?;
        }
        Ok(())
    }

    /// A queued version whose frozen file is not where the index says, after a power cut
    /// that kept the index's commit and lost a rename (the filesystem may persist renames
    /// and truncations in any order within one sync): the upload's completion had moved it
    /// into the read cache (move it back), or the seal's freeze never reached the disk (the
    /// spool is still the version when its first `size` bytes have the version's digest:
    /// cut it to that size and freeze it). Otherwise the caller requeues the spool.
    fn refind_sealed_version(&self, c: &Core, u: &Upload) -> Result<()> {
        if u.dk.is_none() || u.header.len() != HEADER_LEN {
            return Ok(());
        }
        let cached = self.staging.rcache_plain_path(header::commitment(&u.header));
        if cached.exists() {
            tracing::info!(upload = u.id, ino = u.ino, "a sealed version found in the read cache after a restart; queued again");
            std::fs::rename(&cached, self.staging.frozen_path(u.ino, u.content_gen))?;
            return Ok(());
        }
        let current = c.db.get(u.ino)?.is_some_and(|i| i.state.in_outbox() && i.content_gen == u.content_gen);
        if current && self.staging.spool_len(u.ino).is_some_and(|len| len >= u.size) {
            let spool = self.staging.open_spool(u.ino)?;
            if hex::encode(crypto::sha256_file(&spool, u.size)?) == u.sha256 {
                tracing::info!(upload = u.id, ino = u.ino, "finishing a seal whose rename a power cut lost");
                spool.set_len(u.size)?;
                drop(spool);
                self.staging.freeze_spool(u.ino, u.content_gen)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ attributes

    fn apply_overlay(c: &Core, mut i: Inode) -> Inode {
        if let Some(o) = c.open.get(&i.ino) {
            if o.spool.is_some() {
                i.size = o.size;
                i.mtime_ns = o.mtime_ns;
                i.ctime_ns = o.ctime_ns;
            }
        }
        i
    }

    fn get_inode(c: &Core, ino: u64) -> Result<Inode> {
        let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        Ok(Self::apply_overlay(c, i))
    }
}

#[cfg(all(test, feature = "shuttle"))]
mod shuttle_tests;
// The in-memory-store tests run real threads and tokio: without shuttle's locks.
#[cfg(all(test, not(feature = "shuttle")))]
mod tests;
