//! POSIX semantics over the index, the staging area and the object store — without FUSE.
//!
//! Role: every filesystem operation (`lookup`, `create`, `write`, `rename`, …) as a plain method
//! returning `Result<_, FsError>`; the open-handle table; sealing settled files into the outbox;
//! completing uploads into the index; reading local or remote content. `fuse/` only translates.
//!
//! Concurrency: one lock, `core` (the SQLite connection plus the open-file table). Every inode
//! state transition happens under it. It is never held across network I/O, encryption of a
//! whole file, or a `pwrite`: those run outside and re-check `content_gen` before committing.
//!
//! Durability: `flush` (every close), `fsync` and `release` fsync the spool file and commit its
//! size and state before replying, so a close that returned success survives kill -9.

pub mod error;

use crate::crypto::{self, Header, ObjectMeta, Opened, VaultKeys, HEADER_LEN, SEGMENT};
use crate::meta::{Db, Inode, Kind, State, Upload, ROOT};
use crate::staging::Staging;
use crate::store::{Counted, ObjectStore, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
pub use error::{FsError, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest vault path (bytes). The encrypted metadata (path included) must fit S3's 2 KiB
/// user-metadata limit once base64-encoded beside the 128-byte header.
pub const MAX_PATH: usize = 1000;
pub const MAX_NAME: usize = 255;
/// Free space kept beyond a sealed copy's size when sealing (index, journal, other writers).
const SEAL_HEADROOM: u64 = 16 << 20;

/// Segments fetched per remote GET on a cache miss (1 MiB): sequential readers need fewer requests.
const READ_AHEAD_SEGMENTS: u64 = 16;

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
pub fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

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
    /// Bytes of decrypted segments kept in memory.
    pub segment_cache: u64,
}

#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// Tier for automatic restores of GLACIER / DEEP_ARCHIVE objects.
    pub glacier_tier: String,
    pub deep_archive_tier: String,
    /// Days a restored copy stays available (not sent for Intelligent-Tiering).
    pub days: i32,
    /// Bytes of open-triggered restores allowed per UTC day.
    pub daily_budget: u64,
    /// Extra process names that never trigger a restore.
    pub indexers: Vec<String>,
    /// Suffix of the placeholder status files.
    pub suffix: String,
    /// Poll interval overriding the per-tier default (`--restore-poll`).
    pub poll_override: Option<Duration>,
    /// Download restored objects into the local cache so they stay readable after expiry.
    pub fetch_restored: bool,
    /// ListObjectsV2 refresh of storage classes (None: off).
    pub class_refresh: Option<Duration>,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            glacier_tier: "Standard".into(),
            deep_archive_tier: "Bulk".into(),
            days: 7,
            daily_budget: 10 << 30,
            indexers: Vec::new(),
            suffix: ".restore-status".into(),
            poll_override: None,
            fetch_restored: false,
            class_refresh: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

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

/// State of a file with at least one open handle.
struct OpenFile {
    handles: u32,
    writers: u32,
    /// The plaintext spool, open read-write, when the file's content is dirty.
    spool: Option<Arc<File>>,
    size: u64,
    mtime_ns: i64,
    /// Changed by writes and truncates (committed with the data; a close alone changes nothing).
    ctime_ns: i64,
    /// Writes and truncates through this file so far, and how many of them are durable
    /// (spool fsynced and index committed). A close or fsync makes durable what came before
    /// it; a write racing with it stays pending for the next one.
    changes: u64,
    committed: u64,
}

impl OpenFile {
    fn touch(&mut self) {
        self.changes += 1;
    }
    fn pending(&self) -> bool {
        self.changes != self.committed
    }
}

struct Handle {
    ino: u64,
    write: bool,
    /// Content of a virtual (status) file, fixed at open.
    virt: Option<Arc<Vec<u8>>>,
}

struct Core {
    db: Db,
    open: HashMap<u64, OpenFile>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Inside a namespace operation (`Fs::in_op`): staged files it made unreferenced, deleted
    /// only once its transaction has committed (a crash or an error before keeps them).
    op_depth: u32,
    after_commit: Vec<PathBuf>,
}

/// Where an encrypted copy of a file's current content can be read from.
enum Source {
    Local(PathBuf),
    Remote(String),
}

type SegCache = quick_cache::sync::Cache<([u8; 16], u64), Arc<Vec<u8>>, SegWeighter>;

#[derive(Clone)]
struct SegWeighter;
impl quick_cache::Weighter<([u8; 16], u64), Arc<Vec<u8>>> for SegWeighter {
    fn weight(&self, _k: &([u8; 16], u64), v: &Arc<Vec<u8>>) -> u64 {
        v.len() as u64 + 64
    }
}

pub struct Fs {
    pub cfg: FsConfig,
    core: Mutex<Core>,
    pub keys: Arc<VaultKeys>,
    pub store: Arc<Counted>,
    pub rt: tokio::runtime::Handle,
    pub staging: Staging,
    segs: SegCache,
    /// Woken when an upload is queued.
    pub upload_wakeup: tokio::sync::Notify,
    /// Woken when a restore is recorded and must be sent.
    pub restore_wakeup: tokio::sync::Notify,
    /// Woken to upload the journal now (flush, many pending entries).
    pub journal_wakeup: tokio::sync::Notify,
    /// One journal flusher at a time.
    pub journal_lock: tokio::sync::Mutex<()>,
    /// One sealer at a time: the sealer thread and `flush` must never encrypt the same file
    /// concurrently (they would write one outbox file with two data keys).
    seal_lock: Mutex<()>,
    /// Files whose last seal failed (content generation, attempts, error): shown in `status`,
    /// and `flush --wait` answers with them instead of waiting for a seal that cannot happen.
    seal_failures: Mutex<HashMap<u64, (i64, i64, String)>>,
    /// Tests: runs once inside the next `persist`, between choosing what to make durable and
    /// the fsync (where a concurrent write can land).
    #[cfg(test)]
    persist_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// File versions that reached S3 since mount (status; tests check "uploaded once").
    pub data_uploads: std::sync::atomic::AtomicU64,
    /// Journal batches and snapshots uploaded since mount.
    pub meta_uploads: std::sync::atomic::AtomicU64,
    pub uid: u32,
    pub gid: u32,
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
        let staging = Staging::open(&cfg.cache_dir)?;
        staging.ensure_reserve();
        // SAFETY: getuid/getgid take no arguments, cannot fail and touch no memory of ours.
        let uid = unsafe { libc::getuid() };
        // SAFETY: as above.
        let gid = unsafe { libc::getgid() };
        let db = Db::open(&cfg.cache_dir.join("index.db"), now_ns(), uid, gid)?;
        let segs = SegCache::with_weighter(1024, cfg.segment_cache.max(1 << 20), SegWeighter);
        let fs = Arc::new(Fs {
            cfg,
            core: Mutex::new(Core { db, open: HashMap::new(), handles: HashMap::new(), next_fh: 1, op_depth: 0, after_commit: Vec::new() }),
            keys,
            store,
            rt,
            staging,
            segs,
            upload_wakeup: tokio::sync::Notify::new(),
            restore_wakeup: tokio::sync::Notify::new(),
            journal_wakeup: tokio::sync::Notify::new(),
            journal_lock: tokio::sync::Mutex::new(()),
            seal_lock: Mutex::new(()),
            seal_failures: Mutex::new(HashMap::new()),
            #[cfg(test)]
            persist_hook: Mutex::new(None),
            data_uploads: Default::default(),
            meta_uploads: Default::default(),
            uid,
            gid,
        });
        fs.recover()?;
        Ok(fs)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start-up repair: requeue what was staged, drop orphans, reconcile spool sizes.
    fn recover(&self) -> Result<()> {
        let mut c = self.core();
        // Unlinked files that were open when the daemon stopped: nobody can reach them now.
        for o in c.db.orphans()? {
            Db::delete_inode(c.db.conn(), o.ino)?;
            self.drop_content(&mut c, o.ino)?;
        }
        let mut keep_spool = Vec::new();
        for mut i in c.db.files_in_state(&[State::Dirty, State::Local])? {
            match self.staging.spool_len(i.ino) {
                Some(len) => {
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
            keep_spool.push(i.ino);
        }
        let uploads = c.db.uploads()?;
        let mut keep_outbox = Vec::new();
        for u in &uploads {
            if !self.staging.outbox_path(u.ino, u.content_gen).exists() {
                tracing::error!(upload = u.id, ino = u.ino, "outbox file missing for a queued upload; dropping it");
                let tx = c.db.begin()?;
                Self::discard_uploads(&tx, std::slice::from_ref(u))?;
                tx.commit().map_err(crate::meta::MetaError::from)?;
                continue;
            }
            if u.state == "uploading" {
                c.db.set_upload_state(u.id, "queued", u.attempts, 0, u.last_error.as_deref())?;
            }
            keep_outbox.push((u.ino, u.content_gen));
        }
        for mut i in c.db.files_in_state(&[State::Uploading])? {
            i.state = State::Sealed;
            c.db.update(&i)?;
        }
        let removed = self.staging.remove_orphans(&keep_spool, &keep_outbox)?;
        if removed > 0 {
            tracing::info!(removed, "removed orphaned staging files");
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

    /// Links of a directory: "." , its entry in the parent, and ".." of each subdirectory.
    pub fn dir_nlink(&self, ino: u64) -> u32 {
        let c = self.core();
        c.db.conn()
            .query_row("SELECT count(*) FROM inodes WHERE parent=?1 AND kind=2 AND ino != 1", [ino as i64], |r| r.get::<_, i64>(0))
            .map(|n| 2 + n as u32)
            .unwrap_or(2)
    }

    pub fn getattr(&self, ino: u64) -> Result<Inode> {
        let c = self.core();
        if ino >= CTL_DIR {
            return self.virtual_inode(&c, ino).map(|(i, _)| i);
        }
        Self::get_inode(&c, ino)
    }

    pub fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> Result<Inode> {
        if name.len() > MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let c = self.core();
        if parent == ROOT && name == CTL_NAME {
            return self.virtual_inode(&c, CTL_DIR).map(|(i, _)| i);
        }
        if parent == CTL_DIR {
            return if name == "restores" { self.virtual_inode(&c, CTL_RESTORES).map(|(i, _)| i) } else { Err(FsError::NotFound) };
        }
        match c.db.lookup(parent, name)? {
            Some(i) => Ok(Self::apply_overlay(&c, i)),
            None => {
                // NAME.restore-status beside a file with a visible restore.
                let base = name.strip_suffix(self.cfg.restore.suffix.as_str()).ok_or(FsError::NotFound)?;
                let b = c.db.lookup(parent, base)?.ok_or(FsError::NotFound)?;
                self.virtual_inode(&c, b.ino | STATUS_BIT).map(|(i, _)| i)
            }
        }
    }

    pub fn readdir(&self, ino: u64) -> Result<Vec<Inode>> {
        let c = self.core();
        if ino == CTL_DIR {
            return Ok(vec![self.virtual_inode(&c, CTL_RESTORES)?.0]);
        }
        let d = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out: Vec<Inode> = c.db.children(ino)?.into_iter().map(|i| Self::apply_overlay(&c, i)).collect();
        let restores = c.db.restores()?;
        if !restores.is_empty() {
            let visible: std::collections::HashSet<u64> = restores.iter().filter(|r| r.state.visible()).map(|r| r.ino).collect();
            let extra: Vec<u64> = out.iter().filter(|i| visible.contains(&i.ino)).map(|i| i.ino).collect();
            for x in extra {
                if let Ok((v, _)) = self.virtual_inode(&c, x | STATUS_BIT) {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// A virtual inode (status file, `.coldvault`, its `restores` listing) and its content.
    fn virtual_inode(&self, c: &Core, ino: u64) -> Result<(Inode, Vec<u8>)> {
        let root = c.db.get(ROOT)?.ok_or(FsError::NotFound)?;
        let mut v = Self::new_inode(ROOT, CTL_NAME, Kind::Dir, 0o555, root.uid, root.gid);
        v.ino = ino;
        v.state = State::None;
        v.mtime_ns = now_ns();
        v.ctime_ns = v.mtime_ns;
        let content = match ino {
            CTL_DIR => Vec::new(),
            CTL_RESTORES => {
                v.parent = CTL_DIR;
                v.name = "restores".into();
                v.kind = Kind::File;
                v.mode = 0o444;
                let mut t = String::from("# path\tstate\tclass\ttier\tsize\trequested\texpected ready / available until\treason\n");
                for r in c.db.restores()? {
                    let path = c.db.path_of(r.ino).unwrap_or_default();
                    let when = match r.state {
                        crate::restore::RState::Ready => r.expiry_text.clone().unwrap_or_default(),
                        _ => crate::restore::fmt_ms(r.expected_ms),
                    };
                    t.push_str(&format!(
                        "{path}\t{}\t{}\t{}\t{}\t{}\t{when}\t{}\n",
                        r.state.as_str(),
                        r.class,
                        r.tier,
                        r.size,
                        crate::restore::fmt_ms(r.requested_ms),
                        r.reason.clone().unwrap_or_default()
                    ));
                }
                t.into_bytes()
            }
            x if x & STATUS_BIT != 0 => {
                let base_ino = x & !STATUS_BIT;
                let b = c.db.get(base_ino)?.ok_or(FsError::NotFound)?;
                let r = c.db.restore(base_ino)?.filter(|r| r.state.visible()).ok_or(FsError::NotFound)?;
                let path = c.db.path_of(base_ino)?;
                v.parent = b.parent;
                v.name = format!("{}{}", b.name, self.cfg.restore.suffix);
                v.kind = Kind::File;
                v.mode = 0o444;
                v.uid = b.uid;
                v.gid = b.gid;
                v.mtime_ns = r.last_check_ms.max(r.requested_ms) * 1_000_000;
                v.ctime_ns = v.mtime_ns;
                crate::restore::status_text(&path, &r).into_bytes()
            }
            _ => return Err(FsError::NotFound),
        };
        v.size = content.len() as u64;
        Ok((v, content))
    }

    pub fn readlink(&self, ino: u64) -> Result<String> {
        let i = self.getattr(ino)?;
        i.target.ok_or(FsError::Invalid("not a symlink"))
    }

    /// chmod/chown/truncate/utimens. `None` leaves a field unchanged (UTIME_OMIT).
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
    ) -> Result<Inode> {
        if let Some(sz) = size {
            self.truncate(ino, sz)?;
        }
        let mut c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let now = now_ns();
        if let Some(m) = mode {
            i.mode = m & 0o7777;
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        if let Some(a) = atime_ns {
            i.atime_ns = a;
        }
        if let Some(m) = mtime_ns {
            i.mtime_ns = m;
            if let Some(o) = c.open.get_mut(&ino) {
                o.mtime_ns = m;
            }
        } else if let Some(o) = c.open.get(&ino) {
            if o.spool.is_some() {
                i.mtime_ns = o.mtime_ns;
            }
        }
        if size.is_none() {
            if let Some(o) = c.open.get(&ino) {
                if o.spool.is_some() {
                    i.size = o.size;
                }
            }
        }
        i.ctime_ns = now;
        if let Some(o) = c.open.get_mut(&ino) {
            o.ctime_ns = now;
        }
        if i.state == State::Dirty {
            // Metadata changes right after a write (robocopy sets times after closing) restart
            // the settle clock, so the file is sealed once, with its final attributes.
            i.dirty_ms = now_ms();
        }
        c.db.update(&i)?;
        Self::record_attr(&c, &i);
        Ok(Self::apply_overlay(&c, i))
    }

    fn truncate(&self, ino: u64, size: u64) -> Result<()> {
        {
            let mut c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if i.kind != Kind::File {
                return Err(FsError::Invalid("truncate of a non-file"));
            }
            if let Some(o) = c.open.get_mut(&ino) {
                if let Some(sp) = &o.spool {
                    sp.set_len(size)?;
                    o.size = size;
                    o.mtime_ns = now_ns();
                    o.ctime_ns = o.mtime_ns;
                    o.touch();
                    let writers = o.writers;
                    drop(c);
                    // With a writer open, its close commits this; with only readers (or
                    // `truncate` by path while someone reads), nobody else would.
                    return if writers == 0 { self.persist(ino) } else { Ok(()) };
                }
            }
            if i.state.has_spool() {
                let f = self.staging.open_spool(ino)?;
                f.set_len(size)?;
                f.sync_all()?;
                drop(f);
                let mut i = i;
                i.size = size;
                i.mtime_ns = now_ns();
                i.content_gen += 1;
                i.dirty_ms = now_ms();
                c.db.update(&i)?;
                return Ok(());
            }
        }
        // Content is sealed or remote: materialize it (or start empty), then cut.
        self.ensure_spool(ino, size == 0)?;
        let c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let f = self.staging.open_spool(ino)?;
        f.set_len(size)?;
        f.sync_all()?;
        i.size = size;
        i.mtime_ns = now_ns();
        i.content_gen += 1;
        i.dirty_ms = now_ms();
        c.db.update(&i)?;
        Ok(())
    }

    // ------------------------------------------------------------------ namespace

    fn new_inode(parent: u64, name: &str, kind: Kind, mode: u32, uid: u32, gid: u32) -> Inode {
        let now = now_ns();
        Inode {
            ino: 0,
            parent,
            name: name.to_string(),
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            target: None,
            state: if kind == Kind::File { State::Dirty } else { State::None },
            content_gen: 0,
            dirty_ms: now_ms(),
            object_key: None,
            storage_class: None,
            header: None,
            sha256: None,
            xattrs: None,
        }
    }

    fn check_new_entry(c: &Core, parent: u64, name: &std::ffi::OsStr) -> Result<String> {
        let name = check_name(name)?;
        let p = c.db.get(parent)?.ok_or(FsError::NotFound)?;
        if p.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let ppath = c.db.path_of(parent)?;
        if ppath.len() + 1 + name.len() > MAX_PATH {
            return Err(FsError::NameTooLong);
        }
        if c.db.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        Ok(name.to_string())
    }

    fn touch_dir(c: &Core, dir: u64) -> Result<()> {
        if let Some(mut d) = c.db.get(dir)? {
            let now = now_ns();
            d.mtime_ns = now;
            d.ctime_ns = now;
            c.db.update(&d)?;
        }
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, uid: u32, gid: u32) -> Result<Inode> {
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let i = c.db.insert(&Self::new_inode(parent, &name, Kind::Dir, mode, uid, gid))?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            Self::record_in_op(c, crate::remote_meta::Entry::Mkdir { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns })?;
            Ok(i)
        })
    }

    pub fn symlink(&self, parent: u64, name: &std::ffi::OsStr, target: &std::path::Path, uid: u32, gid: u32) -> Result<Inode> {
        let target = target.to_str().ok_or(FsError::BadName)?.to_string();
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let mut n = Self::new_inode(parent, &name, Kind::Symlink, 0o777, uid, gid);
            n.size = target.len() as u64;
            n.target = Some(target.clone());
            let i = c.db.insert(&n)?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            Self::record_in_op(c, crate::remote_meta::Entry::Symlink { path, target: target.clone(), uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns })?;
            Ok(i)
        })
    }

    /// mknod: regular files are created empty; FIFOs, sockets and device nodes live in the
    /// index only (nothing to upload) and are journaled so a rebuild recreates them.
    pub fn mknod(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, rdev: u32, uid: u32, gid: u32) -> Result<Inode> {
        let special = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                let (i, fh) = self.create(parent, name, mode, uid, gid)?;
                self.release(fh)?;
                return Ok(i);
            }
            libc::S_IFIFO => "fifo:0".to_string(),
            libc::S_IFSOCK => "sock:0".to_string(),
            libc::S_IFCHR => format!("chr:{rdev}"),
            libc::S_IFBLK => format!("blk:{rdev}"),
            _ => return Err(FsError::Invalid("mknod of this file type")),
        };
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let mut n = Self::new_inode(parent, &name, Kind::Special, mode, uid, gid);
            n.target = Some(special.clone());
            let i = c.db.insert(&n)?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            let entry =
                crate::remote_meta::Entry::Special { path, special: special.clone(), mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns };
            Self::record_in_op(c, entry)?;
            Ok(i)
        })
    }

    pub fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let mut c = self.core();
        self.in_op(&mut c, |c| Self::rmdir_in(c, parent, name))
    }

    fn rmdir_in(c: &mut Core, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let d = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if c.db.has_children(d.ino)? {
            return Err(FsError::NotEmpty);
        }
        let path = c.db.path_of(d.ino)?;
        Db::delete_inode(c.db.conn(), d.ino)?;
        Self::record_in_op(c, crate::remote_meta::Entry::Remove { path })?;
        Self::touch_dir(c, parent)?;
        Ok(())
    }

    /// Run one namespace operation as one SQLite transaction (a savepoint, so operations
    /// nest): its index changes and its journal record commit together or not at all, and the
    /// staged files it made unreferenced are deleted only after the commit.
    fn in_op<T>(&self, c: &mut Core, mut f: impl FnMut(&mut Core) -> Result<T>) -> Result<T> {
        match self.in_op_once(c, &mut f) {
            // The disk is full and the index cannot grow: give up the reserve and try once more
            // (deleting must work on a full disk: it is how space comes back).
            Err(e) if e.errno() == libc::ENOSPC && c.op_depth == 0 && self.staging.release_reserve() => {
                tracing::warn!("staging disk full: released the reserve so that this change can be recorded");
                self.in_op_once(c, &mut f)
            }
            r => r,
        }
    }

    fn in_op_once<T>(&self, c: &mut Core, f: &mut impl FnMut(&mut Core) -> Result<T>) -> Result<T> {
        c.db.conn().execute_batch("SAVEPOINT ns_op").map_err(crate::meta::MetaError::from)?;
        c.op_depth += 1;
        let r = f(c).and_then(|v| c.db.conn().execute_batch("RELEASE ns_op").map_err(|e| crate::meta::MetaError::from(e).into()).map(|_| v));
        c.op_depth -= 1;
        if r.is_err() {
            let _ = c.db.conn().execute_batch("ROLLBACK TO ns_op; RELEASE ns_op");
        }
        if c.op_depth == 0 {
            let doomed = std::mem::take(&mut c.after_commit);
            if r.is_ok() {
                for p in doomed {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        r
    }

    /// Delete a staged file now, or after the enclosing operation commits.
    fn remove_staged(c: &mut Core, p: PathBuf) {
        if c.op_depth > 0 {
            c.after_commit.push(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Remove a file's local content and queued uploads (the inode row is the caller's).
    fn drop_content(&self, c: &mut Core, ino: u64) -> Result<()> {
        let ups = c.db.uploads_for_ino(ino)?;
        let tx = c.db.begin()?;
        Self::discard_uploads(&tx, &ups)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        for u in &ups {
            Self::remove_staged(c, self.staging.outbox_path(u.ino, u.content_gen));
            // Write-only credentials lack s3:AbortMultipartUpload: leave it to the bucket's
            // AbortIncompleteMultipartUpload lifecycle rule.
            if let Some(mp) = u.mp_upload_id.as_ref().filter(|_| self.keys.secret.is_some()) {
                // Best effort: the uploader also aborts uploads whose row vanished.
                let store = self.store.clone();
                let (k, mp) = (u.object_key.clone(), mp.clone());
                self.rt.spawn(async move {
                    let _ = store.abort_multipart(&k, &mp).await;
                });
            }
        }
        Self::remove_staged(c, self.staging.spool_path(ino));
        c.db.delete_restore(ino)?;
        Ok(())
    }

    /// Remove an inode from the namespace. A file that is still open becomes an orphan
    /// (parent 0): its handles keep reading, writing and stat-ing it until the last close,
    /// as POSIX requires; it is never sealed; the last release deletes it.
    fn remove_inode(&self, c: &mut Core, i: Inode) -> Result<()> {
        if c.open.contains_key(&i.ino) {
            let mut o = i;
            o.parent = 0;
            o.name = format!("#orphan-{}", o.ino);
            o.ctime_ns = now_ns();
            c.db.update(&o)?;
            let ups = c.db.uploads_for_ino(o.ino)?;
            let tx = c.db.begin()?;
            Self::discard_uploads(&tx, &ups)?;
            tx.commit().map_err(crate::meta::MetaError::from)?;
            return Ok(());
        }
        Db::delete_inode(c.db.conn(), i.ino)?;
        if i.kind == Kind::File {
            self.drop_content(c, i.ino)?;
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let mut c = self.core();
        self.in_op(&mut c, |c| self.unlink_in(c, parent, name))
    }

    fn unlink_in(&self, c: &mut Core, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let i = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let path = c.db.path_of(i.ino)?;
        if let Some(k) = &i.object_key {
            Db::add_dead_key(c.db.conn(), k)?;
        }
        Self::record_in_op(c, crate::remote_meta::Entry::Remove { path })?;
        self.remove_inode(c, i)?;
        Self::touch_dir(c, parent)?;
        Ok(())
    }

    pub fn rename(&self, parent: u64, name: &std::ffi::OsStr, newparent: u64, newname: &std::ffi::OsStr, noreplace: bool) -> Result<()> {
        let mut c = self.core();
        self.in_op(&mut c, |c| self.rename_in(c, parent, name, newparent, newname, noreplace))
    }

    fn rename_in(&self, c: &mut Core, parent: u64, name: &std::ffi::OsStr, newparent: u64, newname: &std::ffi::OsStr, noreplace: bool) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let newname = check_name(newname)?.to_string();
        let mut src = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let np = c.db.get(newparent)?.ok_or(FsError::NotFound)?;
        if np.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if c.db.path_of(newparent)?.len() + 1 + newname.len() > MAX_PATH {
            return Err(FsError::NameTooLong);
        }
        if src.kind == Kind::Dir {
            // Refuse moving a directory into its own subtree.
            let mut cur = newparent;
            while cur != ROOT {
                if cur == src.ino {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                cur = c.db.get(cur)?.ok_or(FsError::NotFound)?.parent;
            }
        }
        if let Some(dst) = c.db.lookup(newparent, &newname)? {
            if dst.ino == src.ino {
                return Ok(());
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if c.db.has_children(dst.ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            if let Some(k) = &dst.object_key {
                Db::add_dead_key(c.db.conn(), k)?;
            }
            self.remove_inode(c, dst)?;
        }
        let from = c.db.path_of(src.ino)?;
        src.parent = newparent;
        src.name = newname;
        src.ctime_ns = now_ns();
        if src.state == State::Local && !self.ignored(&src.name) {
            src.state = State::Dirty; // e.g. an editor's temp file saved over the real name
        }
        if src.state == State::Dirty {
            src.dirty_ms = now_ms();
        }
        c.db.update(&src)?;
        let to = c.db.path_of(src.ino)?;
        Self::record_in_op(c, crate::remote_meta::Entry::Rename { from, to })?;
        Self::touch_dir(c, parent)?;
        if newparent != parent {
            Self::touch_dir(c, newparent)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ open / close

    fn alloc_handle(c: &mut Core, ino: u64, write: bool) -> u64 {
        let fh = c.next_fh;
        c.next_fh += 1;
        c.handles.insert(fh, Handle { ino, write, virt: None });
        fh
    }

    pub fn create(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, uid: u32, gid: u32) -> Result<(Inode, u64)> {
        let mut c = self.core();
        let name = Self::check_new_entry(&c, parent, name)?;
        let mut i = c.db.insert(&Self::new_inode(parent, &name, Kind::File, mode, uid, gid))?;
        let spool = match self.staging.create_spool(i.ino) {
            Ok(f) => f,
            Err(e) => {
                Db::delete_inode(c.db.conn(), i.ino)?;
                return Err(e.into());
            }
        };
        i.state = State::Dirty;
        Self::touch_dir(&c, parent)?;
        c.open.insert(
            i.ino,
            OpenFile {
                handles: 1,
                writers: 1,
                spool: Some(Arc::new(spool)),
                size: 0,
                mtime_ns: i.mtime_ns,
                ctime_ns: i.ctime_ns,
                changes: 1,
                committed: 0,
            },
        );
        let fh = Self::alloc_handle(&mut c, i.ino, true);
        Ok((i, fh))
    }

    /// Make sure the file's plaintext is in its spool (state dirty). `empty`: start from
    /// nothing (O_TRUNC) instead of fetching the old content.
    fn ensure_spool(&self, ino: u64, empty: bool) -> Result<()> {
        let (i, src) = {
            let mut c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            if i.state.has_spool() {
                return Ok(());
            }
            if empty || i.size == 0 {
                return self.become_dirty_empty(&mut c, i);
            }
            let src = self.source_of(&c, &i)?;
            (i, src)
        };
        // Decrypt the old content outside the lock into a fetch file, then adopt it.
        let tmp = self.staging.fetch_path(ino);
        let fetch = || -> Result<()> {
            let out = File::create(&tmp)?;
            let mut off = 0u64;
            while off < i.size {
                let n = (i.size - off).min(8 * SEGMENT);
                let data = self.read_encrypted(&i, &src, off, n)?;
                out.write_all_at(&data, off)?;
                off += data.len() as u64;
                if data.is_empty() {
                    break;
                }
            }
            Ok(out.sync_all()?)
        };
        if let Err(e) = fetch() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut c = self.core();
        let mut cur = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        if cur.content_gen != i.content_gen || cur.state.has_spool() {
            let _ = std::fs::remove_file(&tmp);
            return if cur.state.has_spool() { Ok(()) } else { Err(FsError::Invalid("file changed while opening")) };
        }
        let ups = c.db.uploads_for_ino(ino)?;
        self.staging.adopt_fetch(&tmp, ino)?;
        let tx = c.db.begin()?;
        Self::discard_uploads(&tx, &ups)?;
        cur.state = State::Dirty;
        cur.content_gen += 1;
        cur.dirty_ms = now_ms();
        Db::save(&tx, &cur)?;
        tx.execute("DELETE FROM restores WHERE ino=?1", [ino as i64]).map_err(crate::meta::MetaError::from)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        for u in &ups {
            self.staging.remove_outbox(u.ino, u.content_gen);
        }
        Ok(())
    }

    fn become_dirty_empty(&self, c: &mut Core, mut i: Inode) -> Result<()> {
        self.drop_content(c, i.ino)?;
        self.staging.create_spool(i.ino)?.sync_all()?;
        i.state = State::Dirty;
        i.size = 0;
        i.content_gen += 1;
        i.dirty_ms = now_ms();
        i.mtime_ns = now_ns();
        c.db.update(&i)?;
        Ok(())
    }

    /// Open an existing file. Returns the handle number and whether the kernel must bypass its
    /// page cache (virtual files, whose content changes). `pid` is the opener (cost guard).
    pub fn open(&self, ino: u64, write: bool, trunc: bool, pid: u32) -> Result<(u64, bool)> {
        if ino >= CTL_DIR {
            if write {
                return Err(FsError::NotPermitted("status files are read-only"));
            }
            let mut c = self.core();
            let (i, content) = self.virtual_inode(&c, ino)?;
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let fh = Self::alloc_handle(&mut c, ino, false);
            c.handles.get_mut(&fh).expect("just added").virt = Some(Arc::new(content));
            return Ok((fh, true));
        }
        {
            let c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            drop(c);
            if self.keys.secret.is_none() && !i.state.has_spool() && !(write && trunc) && i.size > 0 {
                return Err(self.write_only_refusal(&i));
            }
            // Reading (or partly rewriting) archived content needs a restore; O_TRUNC does not.
            if i.state == State::Uploaded && !(write && trunc) && i.size > 0 {
                self.check_restore(&i, pid)?;
            }
        }
        self.open_real(ino, write, trunc).map(|fh| (fh, false))
    }

    fn write_only_refusal(&self, i: &Inode) -> FsError {
        let path = self.core().db.path_of(i.ino).unwrap_or_default();
        tracing::warn!(path = %path, "refusing to read: this mount is write-only (no private key); its content is only readable with the passphrase");
        FsError::WriteOnly
    }

    fn open_real(&self, ino: u64, write: bool, trunc: bool) -> Result<u64> {
        if write {
            self.ensure_spool(ino, trunc)?;
        }
        let mut c = self.core();
        let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        if write && trunc && i.size != 0 {
            let sp = match c.open.get(&ino).and_then(|o| o.spool.clone()) {
                Some(s) => s,
                None => Arc::new(self.staging.open_spool(ino)?),
            };
            sp.set_len(0)?;
            if let Some(o) = c.open.get_mut(&ino) {
                o.size = 0;
                o.touch();
            } else {
                let mut i = i.clone();
                i.size = 0;
                i.content_gen += 1;
                i.dirty_ms = now_ms();
                i.mtime_ns = now_ns();
                c.db.update(&i)?;
            }
        }
        let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let spool = if i.state.has_spool() {
            match c.open.get(&ino).and_then(|o| o.spool.clone()) {
                Some(s) => Some(s),
                None => Some(Arc::new(self.staging.open_spool(ino)?)),
            }
        } else {
            None
        };
        let o = c.open.entry(ino).or_insert(OpenFile {
            handles: 0,
            writers: 0,
            spool: None,
            size: i.size,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
            changes: 0,
            committed: 0,
        });
        if o.spool.is_none() {
            if let Some(s) = spool {
                o.spool = Some(s);
                o.size = i.size;
                o.mtime_ns = i.mtime_ns;
                o.ctime_ns = i.ctime_ns;
            }
        }
        o.handles += 1;
        if write {
            o.writers += 1;
        }
        Ok(Self::alloc_handle(&mut c, ino, write))
    }

    /// Make what was written through this file durable (spool fsync + index commit).
    fn persist(&self, ino: u64) -> Result<()> {
        let (spool, target) = {
            let c = self.core();
            match c.open.get(&ino) {
                Some(o) if o.pending() => (o.spool.clone(), o.changes),
                _ => return Ok(()),
            }
        };
        #[cfg(test)]
        if let Some(hook) = self.persist_hook.lock().unwrap().take() {
            hook();
        }
        if let Some(sp) = spool {
            sp.sync_all()?;
            self.staging.sync_dirs()?;
        }
        let mut c = self.core();
        let (size, mtime, ctime) = match c.open.get(&ino) {
            // Another close made at least these changes durable meanwhile.
            Some(o) if o.committed < target => (o.size, o.mtime_ns, o.ctime_ns),
            _ => return Ok(()),
        };
        if let Some(mut i) = c.db.get(ino)? {
            i.size = size;
            i.mtime_ns = mtime;
            i.ctime_ns = ctime;
            i.state = State::Dirty;
            i.content_gen += 1;
            i.dirty_ms = now_ms();
            c.db.update(&i)?;
        }
        // Only now, after the fsync and the commit, are the changes up to `target` durable.
        if let Some(o) = c.open.get_mut(&ino) {
            o.committed = o.committed.max(target);
        }
        Ok(())
    }

    fn handle_ino(&self, fh: u64) -> Result<(u64, bool)> {
        let c = self.core();
        c.handles.get(&fh).map(|h| (h.ino, h.write)).ok_or(FsError::BadHandle)
    }

    /// close(): durable before it returns.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let (ino, write) = self.handle_ino(fh)?;
        if write {
            self.persist(ino)?;
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64) -> Result<()> {
        let (ino, _) = self.handle_ino(fh)?;
        self.persist(ino)
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let (ino, write) = self.handle_ino(fh)?;
        let r = if write { self.persist(ino) } else { Ok(()) };
        let mut c = self.core();
        c.handles.remove(&fh);
        let last = if let Some(o) = c.open.get_mut(&ino) {
            o.handles = o.handles.saturating_sub(1);
            if write {
                o.writers = o.writers.saturating_sub(1);
            }
            o.handles == 0
        } else {
            false
        };
        if last {
            c.open.remove(&ino);
            if let Some(i) = c.db.get(ino)? {
                if i.parent == 0 {
                    Db::delete_inode(c.db.conn(), ino)?;
                    self.drop_content(&mut c, ino)?;
                }
            }
        }
        r
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let (ino, write) = self.handle_ino(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        let spool = {
            let c = self.core();
            c.open.get(&ino).and_then(|o| o.spool.clone()).ok_or(FsError::BadHandle)?
        };
        spool.write_all_at(data, offset)?;
        let mut c = self.core();
        if let Some(o) = c.open.get_mut(&ino) {
            o.size = o.size.max(offset + data.len() as u64);
            o.mtime_ns = now_ns();
            o.ctime_ns = o.mtime_ns;
            o.touch();
        }
        Ok(data.len())
    }

    // ------------------------------------------------------------------ reading

    fn source_of(&self, c: &Core, i: &Inode) -> Result<Source> {
        if i.state.in_outbox() {
            let ups = c.db.uploads_for_ino(i.ino)?;
            let u = ups.iter().find(|u| u.content_gen == i.content_gen).ok_or(FsError::NotFound)?;
            return Ok(Source::Local(self.staging.outbox_path(u.ino, u.content_gen)));
        }
        if i.state == State::Uploaded {
            let h = i.header.as_deref().ok_or(FsError::Invalid("no header"))?;
            let cached = self.staging.rcache_path(&h[96..128]);
            if cached.exists() {
                return Ok(Source::Local(cached));
            }
            let key = i.object_key.clone().ok_or(FsError::Invalid("no object key"))?;
            if i.storage_class.as_deref().is_some_and(crate::store::is_archive_class) {
                // Issue 3 adds restores; until the object is restored its bytes are unreadable.
                return Ok(Source::Remote(key));
            }
            return Ok(Source::Remote(key));
        }
        Err(FsError::Invalid("file has no readable content"))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let virt = self.core().handles.get(&fh).and_then(|h| h.virt.clone());
        if let Some(v) = virt {
            let start = (offset as usize).min(v.len());
            let end = (start + size as usize).min(v.len());
            return Ok(v[start..end].to_vec());
        }
        match self.read_inner(fh, offset, size) {
            Err(FsError::Store(StoreError::Archived)) => {
                // The index thought the object readable: a lifecycle rule moved it. Learn its
                // class and request a restore as an open would have.
                let (ino, _) = self.handle_ino(fh)?;
                self.discover_archived(ino);
                Err(FsError::Archived)
            }
            r => r,
        }
    }

    fn read_inner(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        // Sealing or an upload completing may move the content (spool -> outbox -> S3) between
        // choosing the source and opening it: look again rather than fail the read.
        let mut tries = 0;
        loop {
            match self.read_once(fh, offset, size) {
                Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn read_once(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (ino, _) = self.handle_ino(fh)?;
        let (i, spool, src) = {
            let c = self.core();
            let i = Self::get_inode(&c, ino)?;
            let spool = c.open.get(&ino).and_then(|o| o.spool.clone());
            let src = if spool.is_none() && !i.state.has_spool() { Some(self.source_of(&c, &i)?) } else { None };
            (i, spool, src)
        };
        if offset >= i.size {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(i.size - offset);
        if let Some(sp) = spool {
            return read_plain(&sp, offset, len);
        }
        match src {
            None => read_plain(&self.staging.open_spool(ino)?, offset, len),
            Some(src) => self.read_encrypted(&i, &src, offset, len),
        }
    }

    /// Read plaintext [offset, offset+len) of `i` from an encrypted copy, segment by segment.
    fn read_encrypted(&self, i: &Inode, src: &Source, offset: u64, len: u64) -> Result<Vec<u8>> {
        let sk = self.keys.secret.as_ref().ok_or(FsError::WriteOnly)?;
        let header = match (src, &i.header) {
            (Source::Remote(_), Some(h)) => Header::parse(h)?,
            (Source::Local(p), _) => {
                let f = File::open(p)?;
                let mut b = [0u8; HEADER_LEN];
                f.read_exact_at(&mut b, 0)?;
                Header::parse(&b)?
            }
            (Source::Remote(k), None) => {
                let b = self.rt.block_on(self.store.get_range(k, 0, HEADER_LEN as u64))?;
                Header::parse(&b)?
            }
        };
        let opened = Opened::open(sk, &header).map_err(|e| self.log_bad_object(i, src, e))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&header.bytes[96..112]);
        let size = i.size;
        let first = offset / SEGMENT;
        let last = (offset + len - 1) / SEGMENT;
        let nseg = crypto::segment_count(size);
        let mut out = Vec::with_capacity(len as usize);
        let mut s = first;
        while s <= last {
            let seg = match self.segs.get(&(id, s)) {
                Some(p) => p,
                None => {
                    // Miss: fetch a run of segments in one request and cache them all.
                    let upto = match src {
                        Source::Remote(_) => (s + READ_AHEAD_SEGMENTS).min(nseg).max(last + 1).min(nseg),
                        Source::Local(_) => last + 1,
                    };
                    let (start, _) = crypto::segment_cipher_range(size, s);
                    let (_, end) = crypto::segment_cipher_range(size, upto - 1);
                    let raw = match src {
                        Source::Local(p) => {
                            let f = File::open(p)?;
                            let mut b = vec![0u8; (end - start) as usize];
                            f.read_exact_at(&mut b, start).map_err(|e| {
                                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                    self.log_bad_object(i, src, crypto::CryptoError::Auth).into()
                                } else {
                                    FsError::Io(e)
                                }
                            })?;
                            b
                        }
                        Source::Remote(k) => self.rt.block_on(self.store.get_range(k, start, end))?.to_vec(),
                    };
                    if raw.len() as u64 != end - start {
                        return Err(self.log_bad_object(i, src, crypto::CryptoError::Auth).into());
                    }
                    let mut result = None;
                    for j in s..upto {
                        let (a, b) = crypto::segment_cipher_range(size, j);
                        let pt = opened
                            .decrypt_segment(size, j, &raw[(a - start) as usize..(b - start) as usize])
                            .map_err(|e| self.log_bad_object(i, src, e))?;
                        let pt = Arc::new(pt);
                        if j == s {
                            result = Some(pt.clone());
                        }
                        self.segs.insert((id, j), pt);
                    }
                    result.expect("at least one segment")
                }
            };
            let seg_start = s * SEGMENT;
            let from = offset.max(seg_start) - seg_start;
            let to = (offset + len).min(seg_start + seg.len() as u64) - seg_start;
            if from < to {
                out.extend_from_slice(&seg[from as usize..to as usize]);
            }
            s += 1;
        }
        Ok(out)
    }

    fn log_bad_object(&self, i: &Inode, src: &Source, e: crypto::CryptoError) -> crypto::CryptoError {
        let what = match src {
            Source::Local(p) => p.display().to_string(),
            Source::Remote(k) => format!("s3 object {k}"),
        };
        tracing::error!(ino = i.ino, object = %what, error = %e, "refusing to return data: object failed authentication");
        e
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        Ok(self.staging.statvfs()?)
    }

    // ------------------------------------------------------------------ xattrs (Samba DOS attributes)

    fn xattr_map(i: &Inode) -> HashMap<String, String> {
        i.xattrs.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    pub fn getxattr(&self, ino: u64, name: &std::ffi::OsStr) -> Result<Vec<u8>> {
        let i = self.getattr(ino)?;
        let m = Self::xattr_map(&i);
        let v = m.get(name.to_str().ok_or(FsError::NoAttr)?).ok_or(FsError::NoAttr)?;
        hex::decode(v).map_err(|_| FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.getattr(ino)?;
        let mut out = Vec::new();
        let mut names: Vec<_> = Self::xattr_map(&i).into_keys().collect();
        names.sort();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &std::ffi::OsStr, value: &[u8], flags: i32) -> Result<()> {
        let name = name.to_str().ok_or(FsError::BadName)?;
        if !(name.starts_with("user.") || name.starts_with("security.") || name.starts_with("trusted.")) {
            return Err(FsError::NotSupported("only user.*, security.* and trusted.* attributes are stored"));
        }
        // Samba's streams_xattr keeps alternate data streams (macOS resource forks) in xattrs.
        if value.len() > 64 * 1024 {
            return Err(FsError::Range);
        }
        let c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let mut m = Self::xattr_map(&i);
        let exists = m.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        m.insert(name.to_string(), hex::encode(value));
        i.xattrs = Some(serde_json::to_string(&m).expect("json"));
        i.ctime_ns = now_ns();
        c.db.update(&i)?;
        Self::record_attr(&c, &i);
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &std::ffi::OsStr) -> Result<()> {
        let c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let mut m = Self::xattr_map(&i);
        if m.remove(name.to_str().ok_or(FsError::NoAttr)?).is_none() {
            return Err(FsError::NoAttr);
        }
        i.xattrs = Some(serde_json::to_string(&m).expect("json"));
        c.db.update(&i)?;
        Self::record_attr(&c, &i);
        Ok(())
    }

    // ------------------------------------------------------------------ sealing

    /// Seal every dirty file that is closed and has settled (`force`: regardless of settle).
    /// Returns how many were sealed.
    pub fn seal_ready(&self, force: bool) -> Result<usize> {
        let _one_sealer = self.seal_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.staging.ensure_reserve();
        let cutoff = now_ms() - self.cfg.settle.as_millis() as i64;
        let candidates: Vec<(u64, i64)> = {
            let c = self.core();
            c.db.dirty_files()?
                .into_iter()
                .filter(|i| (force || i.dirty_ms <= cutoff) && c.open.get(&i.ino).is_none_or(|o| o.writers == 0))
                .map(|i| (i.ino, i.content_gen))
                .collect()
        };
        let mut n = 0;
        for (ino, gen) in candidates {
            if self.keep_local_if_ignored(ino, gen)? {
                continue;
            }
            let r = self.seal_one(ino, gen);
            let mut failures = self.seal_failures.lock().unwrap();
            match r {
                Ok(sealed) => {
                    failures.remove(&ino);
                    n += sealed as usize;
                }
                Err(e) => {
                    let f = failures.entry(ino).or_insert((gen, 0, String::new()));
                    if f.1 == 0 || f.2 != e.to_string() {
                        tracing::error!(ino, error = %e, "sealing failed; the plaintext stays staged and will be retried");
                    }
                    *f = (gen, f.1 + 1, e.to_string());
                }
            }
        }
        Ok(n)
    }

    /// The vault path of `ino` (for messages).
    pub fn path_of(&self, ino: u64) -> String {
        self.core().db.path_of(ino).unwrap_or_else(|_| format!("inode {ino}"))
    }

    /// Why `ino`'s current content could not be sealed, if its last attempt failed.
    pub fn seal_failure(&self, ino: u64) -> Option<String> {
        let gen = self.state_of(ino).ok().flatten()?.0;
        self.seal_failures.lock().unwrap().get(&ino).filter(|f| f.0 == gen).map(|f| f.2.clone())
    }

    /// Names on the ignore list (.DS_Store, Thumbs.db, ._*, editors' temp files) stay local.
    pub fn ignored(&self, name: &str) -> bool {
        self.cfg.ignore.iter().any(|g| crate::rules::matches(g, name))
    }

    /// Mark a settled dirty file whose name is on the ignore list as local-only. Returns true
    /// if it was (it is then never sealed or uploaded, but stays readable here).
    fn keep_local_if_ignored(&self, ino: u64, gen: i64) -> Result<bool> {
        let c = self.core();
        let Some(mut i) = c.db.get(ino)? else { return Ok(false) };
        if i.state != State::Dirty || i.content_gen != gen || !self.ignored(&i.name) {
            return Ok(false);
        }
        i.state = State::Local;
        c.db.update(&i)?;
        Ok(true)
    }

    /// Drop queued uploads of versions no longer wanted (rewritten, deleted). A PUT of one may
    /// already be on the wire and land later: its key is recorded as dead locally and, when a
    /// request may have been sent, in the journal (`discard`), so that no rebuild — even one
    /// that has no snapshot carrying the dead-key list — adopts that object as a live file.
    fn discard_uploads(tx: &rusqlite::Connection, ups: &[Upload]) -> Result<()> {
        for u in ups {
            if u.state == "uploading" || u.attempts > 0 {
                Self::discard_key(tx, &u.object_key)?;
            }
            Db::cancel_upload(tx, u.id)?;
        }
        Ok(())
    }

    /// Record that the object at `key` is no live file's version (journal + dead-key list).
    fn discard_key(tx: &rusqlite::Connection, key: &str) -> Result<()> {
        Db::add_dead_key(tx, key)?;
        let entry = crate::remote_meta::Entry::Discard { key: key.to_string() };
        Db::journal_append(tx, now_ms(), &serde_json::to_string(&entry).expect("json"))?;
        Ok(())
    }

    /// A fresh object key for one file version: 128 random bits, never derived from the path,
    /// so no upload (a stale retry, a rewrite, a second machine, a write-only mount on an empty
    /// index) can land on another version's object (docs/FORMAT.md, section 1).
    pub fn new_object_key(prefix: &str) -> String {
        format!("{prefix}d/{}", hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Encrypt one file's spool into the outbox and queue its upload in one transaction.
    fn seal_one(&self, ino: u64, gen: i64) -> Result<bool> {
        let (i, path) = {
            let c = self.core();
            let Some(i) = c.db.get(ino)? else { return Ok(false) };
            if i.state != State::Dirty || i.content_gen != gen || c.open.get(&ino).is_some_and(|o| o.writers > 0) {
                return Ok(false);
            }
            let path = c.db.path_of(ino)?;
            (i, path)
        };
        // The sealed copy needs its own room (about the file's size) plus headroom for the
        // index: refuse at once with the numbers rather than fill the disk and fail midway.
        let need = crypto::encrypted_len(i.size) + SEAL_HEADROOM;
        let st = self.staging.statvfs()?;
        let free = st.f_bavail * st.f_frsize;
        if free < need {
            return Err(FsError::NoSpace(format!(
                "the staging disk has {} MiB free; sealing this {} MiB file needs {} MiB (free space or move the cache dir to a larger disk)",
                free >> 20,
                i.size >> 20,
                need.div_ceil(1 << 20)
            )));
        }
        let spool = self.staging.open_spool(ino)?;
        let tmp = self.staging.outbox_tmp(ino, gen);
        // The spool is only read, never cut to size: a writer that opened it since the check
        // above may be appending (the seal then aborts below and the spool must be intact).
        // Exactly `i.size` bytes are sealed; a spool shorter than that (a hole at the end)
        // reads as zeros.
        let encrypt = || -> Result<crypto::Sealed> {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, self.staging.create_outbox_tmp(&tmp)?);
            let input = std::io::BufReader::with_capacity(1 << 20, &spool);
            let mut input = std::io::Read::take(std::io::Read::chain(std::io::Read::take(input, i.size), std::io::repeat(0)), i.size);
            let s = crypto::encrypt_stream(&self.keys.public, i.size, &mut input, &mut out).map_err(|e| match e {
                crypto::CryptoError::Io(io) => FsError::Io(io),
                other => FsError::Crypto(other),
            })?;
            let f = out.into_inner().map_err(|e| FsError::Io(e.into_error()))?;
            f.sync_all()?;
            Ok(s)
        };
        let sealed = match encrypt() {
            Ok(s) => s,
            Err(e) => {
                // Never leave a partial outbox file behind (a full disk retried every 250 ms
                // left hundreds of them).
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let meta = ObjectMeta {
            path: path.clone(),
            size: i.size,
            mtime_ns: i.mtime_ns,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            sha256: hex::encode(sealed.sha256),
        };
        let md = vec![("cvh".to_string(), B64.encode(sealed.header.bytes)), ("cvm".to_string(), B64.encode(sealed.encrypt_meta(&meta)))];
        let object_key = Self::new_object_key(&self.cfg.prefix);
        let (class, tags) = self.cfg.policy.choose(&path, i.size);
        let mut c = self.core();
        let Some(mut cur) = c.db.get(ino)? else {
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        };
        if cur.state != State::Dirty || cur.content_gen != gen || c.open.get(&ino).is_some_and(|o| o.writers > 0) || c.db.path_of(ino)? != path {
            // Written, renamed or reopened while we encrypted: seal again later.
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        self.staging.commit_outbox(&tmp, ino, gen)?;
        let u = Upload {
            id: 0,
            ino,
            content_gen: gen,
            object_key,
            path,
            size: i.size,
            enc_size: sealed.enc_len,
            storage_class: class,
            state: "queued".into(),
            attempts: 0,
            next_try_ms: 0,
            last_error: None,
            mp_upload_id: None,
            metadata: serde_json::to_string(&md).expect("json"),
            header: sealed.header.bytes.to_vec(),
            sha256: hex::encode(sealed.sha256),
            tagging: crate::rules::tagging(&tags),
        };
        let tx = c.db.begin()?;
        Db::insert_upload(&tx, &u)?;
        cur.state = State::Sealed;
        cur.sha256 = Some(u.sha256.clone());
        Db::save(&tx, &cur)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        // The spool fd in an open read-only handle (if any) keeps working until it is closed.
        if let Some(o) = c.open.get_mut(&ino) {
            o.spool = None;
        }
        self.staging.remove_spool(ino);
        drop(c);
        self.upload_wakeup.notify_one();
        Ok(true)
    }

    // ------------------------------------------------------------------ upload bookkeeping (called by upload/)

    pub fn due_uploads(&self, limit: usize) -> Result<Vec<Upload>> {
        Ok(self.core().db.due_uploads(now_ms(), limit)?)
    }

    pub fn upload_exists(&self, id: i64) -> Result<bool> {
        Ok(self.core().db.upload(id)?.is_some())
    }

    pub fn mark_uploading(&self, u: &Upload) -> Result<()> {
        let c = self.core();
        c.db.set_upload_state(u.id, "uploading", u.attempts, u.next_try_ms, u.last_error.as_deref())?;
        if let Some(mut i) = c.db.get(u.ino)? {
            if i.content_gen == u.content_gen && i.state.in_outbox() {
                i.state = State::Uploading;
                c.db.update(&i)?;
            }
        }
        Ok(())
    }

    pub fn set_multipart(&self, id: i64, mp: Option<&str>) -> Result<()> {
        Ok(self.core().db.set_mp_upload_id(id, mp)?)
    }

    /// Move a queued version to a fresh object key (its key turned out to be occupied): the
    /// multipart upload, if any, belonged to the old key and starts over.
    pub fn rekey_upload(&self, id: i64, key: &str) -> Result<()> {
        let c = self.core();
        c.db.set_mp_upload_id(id, None)?;
        Ok(c.db.set_upload_key(id, key)?)
    }

    pub fn record_part(&self, id: i64, part: i32, etag: &str) -> Result<()> {
        Ok(self.core().db.add_part(id, part, etag)?)
    }

    pub fn parts(&self, id: i64) -> Result<Vec<(i32, String)>> {
        Ok(self.core().db.parts(id)?)
    }

    pub fn upload_retry(&self, u: &Upload, err: &StoreError, delay: Duration) -> Result<()> {
        let c = self.core();
        c.db.set_upload_state(u.id, "queued", u.attempts + 1, now_ms() + delay.as_millis() as i64, Some(&err.to_string()))?;
        if let Some(mut i) = c.db.get(u.ino)? {
            if i.content_gen == u.content_gen && i.state == State::Uploading {
                i.state = State::Sealed;
                c.db.update(&i)?;
            }
        }
        Ok(())
    }

    pub fn upload_failed(&self, u: &Upload, err: &StoreError) -> Result<()> {
        let c = self.core();
        c.db.set_upload_state(u.id, "failed", u.attempts + 1, i64::MAX, Some(&err.to_string()))?;
        if let Some(mut i) = c.db.get(u.ino)? {
            if i.content_gen == u.content_gen && i.state.in_outbox() {
                i.state = State::Failed;
                c.db.update(&i)?;
            }
        }
        Ok(())
    }

    /// Requeue uploads parked as failed (after the user fixed credentials or the bucket).
    pub fn retry_failed(&self) -> Result<usize> {
        let c = self.core();
        let n =
            c.db.conn().execute("UPDATE uploads SET state='queued', next_try_ms=0 WHERE state='failed'", []).map_err(crate::meta::MetaError::from)?;
        c.db.conn().execute("UPDATE inodes SET state='sealed' WHERE state='failed'", []).map_err(crate::meta::MetaError::from)?;
        drop(c);
        self.upload_wakeup.notify_one();
        Ok(n)
    }

    /// The object is durable in S3: record it and release the local copy.
    pub fn complete_upload(&self, u: &Upload) -> Result<()> {
        let mut c = self.core();
        if c.db.upload(u.id)?.is_none() {
            return Ok(()); // cancelled (rewritten or deleted) while in flight
        }
        let cur = c.db.get(u.ino)?;
        let cur_path = if cur.is_some() { c.db.path_of(u.ino).ok() } else { None };
        let tx = c.db.begin()?;
        Db::delete_upload(&tx, u.id)?;
        if let Some(mut i) = cur {
            if i.content_gen == u.content_gen && i.state.in_outbox() {
                if let Some(old) = i.object_key.as_deref().filter(|k| *k != u.object_key) {
                    Db::add_dead_key(&tx, old)?;
                }
                i.state = State::Uploaded;
                i.object_key = Some(u.object_key.clone());
                i.storage_class = Some(u.storage_class.clone());
                i.header = Some(u.header.clone());
                i.sha256 = Some(u.sha256.clone());
                Db::save(&tx, &i)?;
                let v = crate::meta::Version {
                    object_key: u.object_key.clone(),
                    ino: i.ino,
                    size: i.size,
                    mtime_ns: i.mtime_ns,
                    mode: i.mode,
                    uid: i.uid,
                    gid: i.gid,
                    storage_class: u.storage_class.clone(),
                    sha256: u.sha256.clone(),
                    header: u.header.clone(),
                };
                Db::add_version(&tx, &v, now_ms())?;
                // A restore of the previous version means nothing for the new one.
                tx.execute("DELETE FROM restores WHERE ino=?1", [i.ino as i64]).map_err(crate::meta::MetaError::from)?;
                let entry = crate::remote_meta::Entry::Upload {
                    path: cur_path.clone().unwrap_or_else(|| u.path.clone()),
                    key: u.object_key.clone(),
                    size: i.size,
                    mtime_ns: i.mtime_ns,
                    mode: i.mode,
                    uid: i.uid,
                    gid: i.gid,
                    class: u.storage_class.clone(),
                    sha256: u.sha256.clone(),
                    header: B64.encode(&u.header),
                    xattrs: i.xattrs.clone(),
                };
                Db::journal_append(&tx, now_ms(), &serde_json::to_string(&entry).expect("json"))?;
                self.data_uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                // A version superseded while it was uploading: its object is in the bucket but
                // no file uses it.
                Self::discard_key(&tx, &u.object_key)?;
            }
        } else {
            Self::discard_key(&tx, &u.object_key)?;
        }
        tx.commit().map_err(crate::meta::MetaError::from)?;
        // Still under the lock: a reader that sees `uploaded` must find the read-cache copy.
        if self.cfg.read_cache > 0 && u.enc_size <= self.cfg.read_cache {
            self.staging.keep_in_read_cache(u.ino, u.content_gen, &u.header[96..128], self.cfg.read_cache);
        } else {
            self.staging.remove_outbox(u.ino, u.content_gen);
        }
        drop(c);
        Ok(())
    }

    // ------------------------------------------------------------------ restores (archive tiers)

    /// Ok if `i`'s remote content can be read now; otherwise records/advances a restore and
    /// answers `Archived` (EAGAIN). Called from open, on a blocking thread.
    fn check_restore(&self, i: &Inode, pid: u32) -> Result<()> {
        let Some(class) = i.storage_class.clone() else { return Ok(()) };
        if !crate::restore::needs_restore(&class) {
            return Ok(());
        }
        if let Some(h) = &i.header {
            if self.staging.rcache_path(&h[96..128]).exists() {
                return Ok(()); // a fetched copy of the restored object
            }
        }
        let now = now_ms();
        let existing = self.core().db.restore(i.ino)?;
        match existing {
            Some(r) if r.state == crate::restore::RState::Ready && r.expiry_ms.is_none_or(|e| e > now) => Ok(()),
            Some(mut r) if r.state.pending() => {
                if r.state == crate::restore::RState::InProgress && now - r.last_check_ms >= OPEN_HEAD_INTERVAL_MS {
                    let key = r.object_key.clone();
                    let head = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), self.store.head_object(&key)).await });
                    if let Ok(Ok(h)) = head {
                        self.apply_head(&mut r, &h);
                        self.core().db.put_restore(&r)?;
                        if r.state == crate::restore::RState::Ready {
                            return Ok(());
                        }
                    }
                }
                Err(FsError::Archived)
            }
            _ => {
                self.request_restore(i, &class, pid, None, None, true)?;
                Err(FsError::Archived)
            }
        }
    }

    /// Record a restore request (the restore task sends it). For automatic requests (`auto`),
    /// the indexer rule and the daily budget apply and may record a refusal instead.
    /// Returns true if a request was recorded.
    pub fn request_restore(&self, i: &Inode, class: &str, pid: u32, tier: Option<String>, days: Option<i32>, auto: bool) -> Result<bool> {
        let now = now_ms();
        let rc = &self.cfg.restore;
        let tier = tier.unwrap_or_else(|| crate::restore::default_tier(class, &rc.glacier_tier, &rc.deep_archive_tier));
        let days = if crate::restore::is_intelligent_tiering_archive(class) { None } else { Some(days.unwrap_or(rc.days)) };
        let mut r = crate::restore::Restore {
            ino: i.ino,
            object_key: i.object_key.clone().unwrap_or_default(),
            state: crate::restore::RState::Requesting,
            class: class.to_string(),
            tier: tier.clone(),
            days,
            size: i.size,
            requested_ms: now,
            expected_ms: now + crate::restore::expected_duration(class, &tier).as_millis() as i64,
            expiry_ms: None,
            expiry_text: None,
            last_check_ms: 0,
            next_check_ms: 0,
            attempts: 0,
            reason: None,
            auto,
        };
        let c = self.core();
        // Checked under the lock: concurrent opens and reads (kernel readahead) of one file
        // must produce one request, never two.
        if let Some(cur) = c.db.restore(i.ino)? {
            let live = cur.state.pending() || (cur.state == crate::restore::RState::Ready && cur.expiry_ms.is_none_or(|e| e > now));
            if live && cur.object_key == r.object_key {
                return Ok(false);
            }
        }
        if auto {
            if let Some(name) = crate::restore::indexer_name(pid, &rc.indexers) {
                r.state = crate::restore::RState::Refused;
                r.reason = Some(format!("opened by {name}, a known indexer or thumbnailer; those never trigger restores"));
                tracing::info!(ino = i.ino, process = %name, "restore refused: indexer");
                c.db.put_restore(&r)?;
                return Ok(false);
            }
            let day_start = now - now.rem_euclid(86_400_000);
            let used = c.db.auto_restore_bytes_since(day_start)?;
            if used + i.size > rc.daily_budget {
                r.state = crate::restore::RState::Refused;
                r.reason = Some(format!(
                    "the daily budget for automatic restores ({}) would be exceeded ({} already requested today, this file {})",
                    crate::restore::human_bytes(rc.daily_budget),
                    crate::restore::human_bytes(used),
                    crate::restore::human_bytes(i.size)
                ));
                tracing::warn!(ino = i.ino, used, budget = rc.daily_budget, "restore refused: daily budget");
                c.db.put_restore(&r)?;
                return Ok(false);
            }
        }
        tracing::info!(ino = i.ino, class, tier = %r.tier, auto, "restore requested");
        c.db.put_restore(&r)?;
        drop(c);
        self.restore_wakeup.notify_one();
        Ok(true)
    }

    /// A GET failed with InvalidObjectState: learn the object's class with HeadObject and
    /// request a restore through the usual rules.
    fn discover_archived(&self, ino: u64) {
        let Ok(Some(mut i)) = self.core().db.get(ino) else { return };
        let Some(key) = i.object_key.clone() else { return };
        let head = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), self.store.head_object(&key)).await });
        let Ok(Ok(h)) = head else { return };
        let class = effective_class(&h);
        tracing::info!(ino, class = %class, "object moved to an archive tier behind our back");
        i.storage_class = Some(class.clone());
        if self.core().db.update(&i).is_err() {
            return;
        }
        if crate::restore::needs_restore(&class) {
            let _ = self.request_restore(&i, &class, 0, None, None, true);
        }
    }

    /// Fold a HeadObject answer into a restore record.
    pub fn apply_head(&self, r: &mut crate::restore::Restore, h: &crate::store::HeadInfo) {
        let now = now_ms();
        r.last_check_ms = now;
        let class = effective_class(h);
        if !crate::restore::needs_restore(&class) && class != "INTELLIGENT_TIERING" {
            // Moved back out of the archive tier: readable, nothing to wait for.
            r.state = crate::restore::RState::Ready;
            r.expiry_ms = None;
            r.expiry_text = Some(format!("indefinitely (now in {class})"));
            return;
        }
        match &h.restore {
            Some(rs) if !rs.ongoing => {
                r.state = crate::restore::RState::Ready;
                r.expiry_text = rs.expiry.clone();
                r.expiry_ms = rs.expiry.as_deref().and_then(crate::restore::parse_http_date);
            }
            Some(_) => r.state = crate::restore::RState::InProgress,
            None if class == "INTELLIGENT_TIERING" && h.archive_status.is_none() => {
                // Intelligent-Tiering moved it back to a frequent-access tier.
                r.state = crate::restore::RState::Ready;
                r.expiry_ms = None;
                r.expiry_text = Some("indefinitely (back in a frequent-access tier)".into());
            }
            None => {}
        }
    }

    pub fn restores(&self) -> Result<Vec<crate::restore::Restore>> {
        Ok(self.core().db.restores()?)
    }

    pub fn put_restore(&self, r: &crate::restore::Restore) -> Result<()> {
        // The file may have been deleted or rewritten meanwhile: only keep rows for live objects.
        let c = self.core();
        match c.db.get(r.ino)? {
            Some(i) if i.object_key.as_deref() == Some(r.object_key.as_str()) => Ok(c.db.put_restore(r)?),
            _ => Ok(c.db.delete_restore(r.ino)?),
        }
    }

    pub fn set_class_by_key(&self, key: &str, class: &str) -> Result<usize> {
        Ok(self.core().db.set_storage_class_by_key(key, class)?)
    }

    /// Resolve a vault path ("a/b", "" for the root) to its inode.
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let c = self.core();
        let mut cur = c.db.get(ROOT)?.ok_or(FsError::NotFound)?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            cur = c.db.lookup(cur.ino, part)?.ok_or(FsError::NotFound)?;
        }
        Ok(cur)
    }

    /// Files at or below `i` whose content is in an archive tier and not readable now.
    pub fn archived_files_below(&self, i: &Inode) -> Result<Vec<Inode>> {
        let c = self.core();
        let files = if i.kind == Kind::Dir { c.db.files_below(i.ino)? } else { vec![i.clone()] };
        let now = now_ms();
        let mut out = Vec::new();
        for f in files {
            let archived = f.state == State::Uploaded && f.storage_class.as_deref().is_some_and(crate::restore::needs_restore);
            if !archived {
                continue;
            }
            let ready =
                c.db.restore(f.ino)?
                    .is_some_and(|r| r.state.pending() || (r.state == crate::restore::RState::Ready && r.expiry_ms.is_none_or(|e| e > now)));
            if !ready {
                out.push(f);
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ journal (metadata in the bucket)

    /// Append a namespace change to the journal (called with `core` held, right after the change).
    /// Journal a change inside its operation's transaction: if the record cannot be written,
    /// the operation fails and nothing of it is kept.
    fn record_in_op(c: &Core, e: crate::remote_meta::Entry) -> Result<()> {
        Db::journal_append(c.db.conn(), now_ms(), &serde_json::to_string(&e).expect("serialize"))?;
        Ok(())
    }

    fn record(c: &Core, e: crate::remote_meta::Entry) {
        let json = serde_json::to_string(&e).expect("serialize");
        if let Err(err) = Db::journal_append(c.db.conn(), now_ms(), &json) {
            tracing::error!(error = %err, "could not journal a namespace change; the next snapshot will carry it");
        }
    }

    fn record_attr(c: &Core, i: &Inode) {
        if i.kind == Kind::File && i.state != State::Uploaded {
            return; // its Upload entry will carry the final attributes
        }
        if let Ok(path) = c.db.path_of(i.ino) {
            Self::record(
                c,
                crate::remote_meta::Entry::Attr { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns, xattrs: i.xattrs.clone() },
            );
        }
    }

    pub fn machine_id(&self) -> Result<String> {
        let c = self.core();
        if let Some(m) = c.db.setting("machine_id")? {
            return Ok(m);
        }
        let m = hex::encode(rand::random::<[u8; 8]>());
        c.db.set_setting("machine_id", &m)?;
        Ok(m)
    }

    pub fn pending_journal(&self, limit: usize) -> Result<Vec<crate::remote_meta::Record>> {
        let rows = self.core().db.journal_pending(limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, ts_ms, json)| match serde_json::from_str(&json) {
                Ok(entry) => Some(crate::remote_meta::Record { seq, ts_ms, entry }),
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable journal row skipped");
                    None
                }
            })
            .collect())
    }

    pub fn journal_sent(&self, last_seq: i64, n: u64) -> Result<()> {
        let c = self.core();
        c.db.journal_delete_upto(last_seq)?;
        let since: u64 = c.db.setting("since_snapshot")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        c.db.set_setting("since_snapshot", &(since + n).to_string())?;
        Ok(())
    }

    pub fn journal_pending_count(&self) -> Result<u64> {
        Ok(self.core().db.conn().query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0)).map_err(crate::meta::MetaError::from)? as u64)
    }

    /// (entries uploaded since the last snapshot, time of the last snapshot in ms).
    pub fn snapshot_due(&self) -> Result<(u64, i64)> {
        let c = self.core();
        let since = c.db.setting("since_snapshot")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let last = match c.db.setting("last_snapshot_ms")? {
            Some(v) => v.parse().unwrap_or(0),
            None => {
                // Count the age from the first use, not from 1970.
                c.db.set_setting("last_snapshot_ms", &now_ms().to_string())?;
                now_ms()
            }
        };
        Ok((since, last))
    }

    /// What a snapshot taken now reflects of every machine's journal: this machine's records up
    /// to `covers_seq`, other machines' as far as this index imported them.
    pub fn snapshot_seen(&self, machine: &str, covers_seq: i64) -> Result<std::collections::BTreeMap<String, i64>> {
        let c = self.core();
        let mut seen: std::collections::BTreeMap<String, i64> =
            c.db.setting("imported_seen")?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
        seen.insert(machine.to_string(), covers_seq);
        Ok(seen)
    }

    /// Now, for stamping bucket metadata: never before what this index imported.
    pub fn clock_ms(&self) -> Result<i64> {
        let floor = self.core().db.setting("clock_floor_ms")?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        Ok(now_ms().max(floor + 1))
    }

    pub fn snapshot_taken(&self, _covers_seq: i64) -> Result<()> {
        let c = self.core();
        c.db.set_setting("since_snapshot", "0")?;
        c.db.set_setting("last_snapshot_ms", &now_ms().to_string())?;
        Ok(())
    }

    /// The uploaded namespace as a tree, and the journal sequence number it reflects — taken
    /// under one lock so the snapshot and the sequence agree.
    pub fn export_tree(&self) -> Result<(crate::remote_meta::Tree, i64)> {
        use crate::remote_meta::{Entry, Tree};
        let c = self.core();
        let covers = c.db.journal_max_seq()?;
        let mut t = Tree::default();
        for i in c.db.select_inodes("WHERE ino != 1 AND parent != 0 ORDER BY ino", [])? {
            let path = c.db.path_of(i.ino)?;
            let e = match i.kind {
                Kind::Dir => Entry::Mkdir { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns },
                Kind::Symlink => Entry::Symlink { path, target: i.target.clone().unwrap_or_default(), uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns },
                Kind::Special => {
                    Entry::Special { path, special: i.target.clone().unwrap_or_default(), mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns }
                }
                Kind::File if i.state == State::Uploaded => Entry::Upload {
                    path,
                    key: i.object_key.clone().unwrap_or_default(),
                    size: i.size,
                    mtime_ns: i.mtime_ns,
                    mode: i.mode,
                    uid: i.uid,
                    gid: i.gid,
                    class: i.storage_class.clone().unwrap_or_else(|| "STANDARD".into()),
                    sha256: i.sha256.clone().unwrap_or_default(),
                    header: i.header.as_ref().map(|h| B64.encode(h)).unwrap_or_default(),
                    xattrs: i.xattrs.clone(),
                },
                // The next version is still pending: the snapshot carries the newest one that
                // is durable (the file must not vanish from a rebuild meanwhile).
                Kind::File => match c.db.latest_version(i.ino)? {
                    Some(v) => Entry::Upload {
                        path,
                        key: v.object_key,
                        size: v.size,
                        mtime_ns: v.mtime_ns,
                        mode: v.mode,
                        uid: v.uid,
                        gid: v.gid,
                        class: v.storage_class,
                        sha256: v.sha256,
                        header: B64.encode(v.header),
                        xattrs: i.xattrs.clone(),
                    },
                    None => continue,
                },
            };
            t.apply(&e);
        }
        Ok((t, covers))
    }

    /// A fresh index (only the root) that was never filled: a rebuild from the bucket applies.
    pub fn needs_rebuild(&self) -> Result<bool> {
        let c = self.core();
        if c.db.setting("initialized")?.is_some() {
            return Ok(false);
        }
        let n: i64 = c.db.conn().query_row("SELECT count(*) FROM inodes WHERE ino != 1", [], |r| r.get(0)).map_err(crate::meta::MetaError::from)?;
        if n > 0 {
            c.db.set_setting("initialized", "1")?;
            return Ok(false);
        }
        Ok(true)
    }

    pub fn dead_keys(&self) -> Result<Vec<String>> {
        Ok(self.core().db.dead_keys()?)
    }

    pub fn mark_initialized(&self) -> Result<()> {
        Ok(self.core().db.set_setting("initialized", "1")?)
    }

    /// Fill an empty index from a replayed tree (one transaction). Returns (dirs, files, links).
    pub fn import_tree(&self, t: &crate::remote_meta::Tree) -> Result<(usize, usize, usize)> {
        use crate::remote_meta::NodeKind;
        let mut c = self.core();
        let now = now_ns();
        let tx = c.db.begin()?;
        let mut inos: HashMap<String, u64> = HashMap::new();
        inos.insert(String::new(), ROOT);
        let (mut d, mut f, mut l) = (0, 0, 0);
        // BTreeMap order puts "a" before "a/b": parents are inserted first.
        for (path, n) in &t.nodes {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n),
                None => (String::new(), path.as_str()),
            };
            let Some(&pino) = inos.get(&parent) else { continue };
            let (kind, state) = match n.kind {
                NodeKind::Dir => (Kind::Dir, State::None),
                NodeKind::Symlink => (Kind::Symlink, State::None),
                NodeKind::Special => (Kind::Special, State::None),
                NodeKind::File => (Kind::File, State::Uploaded),
            };
            tx.execute(
                "INSERT INTO inodes(parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms,object_key,storage_class,header,sha256,xattrs)
                 VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?8,?9,?10,?11,1,0,?12,?13,?14,?15,?16)",
                rusqlite::params![
                    pino as i64, name, kind as i64, n.mode, n.uid, n.gid, n.size as i64, n.mtime_ns, now, n.target, state.as_str(),
                    n.key, n.class, n.header, n.sha256, n.xattrs
                ],
            )
            .map_err(crate::meta::MetaError::from)?;
            let ino = tx.last_insert_rowid() as u64;
            match n.kind {
                NodeKind::Dir => {
                    d += 1;
                    inos.insert(path.clone(), ino);
                }
                NodeKind::File => {
                    f += 1;
                    if let Some(key) = &n.key {
                        let v = crate::meta::Version {
                            object_key: key.clone(),
                            ino,
                            size: n.size,
                            mtime_ns: n.mtime_ns,
                            mode: n.mode,
                            uid: n.uid,
                            gid: n.gid,
                            storage_class: n.class.clone().unwrap_or_else(|| "STANDARD".into()),
                            sha256: n.sha256.clone().unwrap_or_default(),
                            header: n.header.clone().unwrap_or_default(),
                        };
                        Db::add_version(&tx, &v, 0)?;
                    }
                }
                NodeKind::Symlink | NodeKind::Special => l += 1,
            }
        }
        // Keys the bucket holds but no live file uses stay dead in this index's snapshots too.
        let live: std::collections::HashSet<&str> = t.nodes.values().filter_map(|n| n.key.as_deref()).collect();
        for k in t.mentioned.iter().filter(|k| !live.contains(k.as_str())) {
            Db::add_dead_key(&tx, k)?;
        }
        tx.execute("INSERT OR REPLACE INTO settings(key,value) VALUES('initialized','1')", []).map_err(crate::meta::MetaError::from)?;
        // What this index was built from: its snapshots say so (so a later rebuild replays only
        // what came after), and its own changes are stamped after all of it.
        tx.execute(
            "INSERT OR REPLACE INTO settings(key,value) VALUES('imported_seen',?1),('clock_floor_ms',?2)",
            rusqlite::params![serde_json::to_string(&t.seen).expect("json"), t.max_ts.to_string()],
        )
        .map_err(crate::meta::MetaError::from)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        Ok((d, f, l))
    }

    // ------------------------------------------------------------------ status

    pub fn status(&self) -> Result<Status> {
        let c = self.core();
        let conn = c.db.conn();
        let q = |sql: &str| -> Result<(u64, u64)> {
            conn.query_row(sql, [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64)))
                .map_err(|e| crate::meta::MetaError::from(e).into())
        };
        let (pending_files, pending_bytes) = q("SELECT count(*), sum(size) FROM inodes WHERE state IN ('dirty','sealed','uploading')")?;
        let (uploaded_files, uploaded_bytes) = q("SELECT count(*), sum(size) FROM inodes WHERE state='uploaded'")?;
        let (failed_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='failed'")?;
        let (local_only_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='local'")?;
        let (dirty_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='dirty'")?;
        let (queued_uploads, _) = q("SELECT count(*), 0 FROM uploads WHERE state IN ('queued','uploading')")?;
        let mut failures: Vec<FailureInfo> =
            c.db.uploads()?
                .into_iter()
                .filter(|u| u.state == "failed" || u.last_error.is_some())
                .map(|u| FailureInfo { path: u.path, state: u.state, attempts: u.attempts, error: u.last_error.unwrap_or_default() })
                .collect();
        for (ino, (gen, attempts, error)) in self.seal_failures.lock().unwrap().iter() {
            if c.db.get(*ino)?.is_some_and(|i| i.content_gen == *gen && i.state == State::Dirty) {
                let path = c.db.path_of(*ino).unwrap_or_default();
                failures.push(FailureInfo { path, state: "sealing".into(), attempts: *attempts, error: error.clone() });
            }
        }
        Ok(Status {
            pending_files,
            pending_bytes,
            uploaded_files,
            uploaded_bytes,
            failed_files,
            dirty_files,
            queued_uploads,
            requests: self.store.counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            failures,
            eta_seconds: None,
            local_only_files,
            uploads_since_mount: self.data_uploads.load(std::sync::atomic::Ordering::Relaxed),
            metadata_objects_since_mount: self.meta_uploads.load(std::sync::atomic::Ordering::Relaxed),
            journal_pending: c
                .db
                .conn()
                .query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))
                .map_err(crate::meta::MetaError::from)? as u64,
            restores: c
                .db
                .restores()?
                .into_iter()
                .map(|r| RestoreInfo {
                    path: c.db.path_of(r.ino).unwrap_or_default(),
                    state: r.state.as_str().to_string(),
                    class: r.class,
                    tier: r.tier,
                    size: r.size,
                    requested_at: crate::restore::fmt_ms(r.requested_ms),
                    expected_ready_by: crate::restore::fmt_ms(r.expected_ms),
                    available_until: r.expiry_text,
                    reason: r.reason,
                })
                .collect(),
        })
    }

    /// Inode numbers whose content is not yet in S3 (dirty or in the outbox).
    pub fn pending_inodes(&self) -> Result<Vec<(u64, i64, State)>> {
        let c = self.core();
        Ok(c.db
            .files_in_state(&[State::Dirty, State::Sealed, State::Uploading, State::Failed])?
            .into_iter()
            .map(|i| (i.ino, i.content_gen, i.state))
            .collect())
    }

    pub fn state_of(&self, ino: u64) -> Result<Option<(i64, State)>> {
        Ok(self.core().db.get(ino)?.map(|i| (i.content_gen, i.state)))
    }

    /// Multipart parts recorded in the journal, over all uploads (tests and status).
    pub fn parts_recorded(&self) -> usize {
        let c = self.core();
        c.db.conn().query_row("SELECT count(*) FROM parts", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
    }

    pub fn open_writers(&self) -> usize {
        self.core().open.values().filter(|o| o.writers > 0).count()
    }
}

/// The storage class as the index records it: Intelligent-Tiering objects in an archive access
/// tier become `INTELLIGENT_TIERING/<ARCHIVE_ACCESS|DEEP_ARCHIVE_ACCESS>`.
pub fn effective_class(h: &crate::store::HeadInfo) -> String {
    match (&h.storage_class[..], &h.archive_status) {
        ("INTELLIGENT_TIERING", Some(a)) => format!("INTELLIGENT_TIERING/{a}"),
        (c, _) => c.to_string(),
    }
}

fn read_plain(f: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break; // sparse tail beyond the spool's length reads as zeros
        }
        got += n;
    }
    Ok(buf)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct FailureInfo {
    pub path: String,
    pub state: String,
    pub attempts: i64,
    pub error: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct Status {
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub failed_files: u64,
    pub dirty_files: u64,
    pub queued_uploads: u64,
    pub requests: std::collections::BTreeMap<String, u64>,
    pub failures: Vec<FailureInfo>,
    pub eta_seconds: Option<u64>,
    /// Files on the ignore list, kept on local disk only.
    pub local_only_files: u64,
    /// File versions uploaded since mount.
    pub uploads_since_mount: u64,
    /// Journal batches and index snapshots uploaded since mount.
    pub metadata_objects_since_mount: u64,
    /// Namespace changes not yet uploaded to the bucket's journal.
    pub journal_pending: u64,
    pub restores: Vec<RestoreInfo>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct RestoreInfo {
    pub path: String,
    pub state: String,
    pub class: String,
    pub tier: String,
    pub size: u64,
    pub requested_at: String,
    pub expected_ready_by: String,
    pub available_until: Option<String>,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests;
