//! The local index and upload journal, in SQLite (WAL, synchronous=NORMAL, synced by `Db::sync`).
//!
//! Role: source of truth for listings (inodes, directory entries, attributes), the per-file
//! content state machine, the upload queue and multipart progress. SQLite, not sled: sled lost
//! acknowledged writes in a kill -9 test (docs/ARCHITECTURE.md, "Why SQLite").
//!
//! Invariants:
//! * inode numbers come from AUTOINCREMENT and are never reused, so they are stable across
//!   remounts (NFS/Samba re-export relies on that); the root is inode 1.
//! * a regular file's `state` says where its current content lives:
//!   `dirty` (plaintext spool file `spool/<ino>`), `sealed` (the version's frozen plaintext in
//!   the outbox, an `uploads` row queued), `uploading` (same, an upload is in flight), `uploaded` (in S3 at
//!   `object_key`), `failed` (upload parked after a permanent error; outbox kept).
//! * `content_gen` increases on every content change; an upload completes into the inode only
//!   if the generation it sealed is still current.
//! * the caller serialises access (one connection behind the filesystem's core lock).

use crate::clock::{Nanos, SqlNanos};
use crate::vault::{RState, Restore, StorageClass, Tier, UploadState};
use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;

/// `execute` and `query_row` through the connection's statement cache. rusqlite's own parse
/// and plan the SQL on every call, which was the largest single cost of a small file's
/// namespace operations in the daemon (see docs/BENCHMARKS.md).
pub(crate) trait Cached {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(&self, sql: &str, p: impl rusqlite::Params, f: F) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row<T, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(&self, sql: &str, p: impl rusqlite::Params, f: F) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// Longest vault path (bytes). The encrypted metadata (path included) must fit S3's 2 KiB
/// user-metadata limit once base64-encoded beside the 128-byte header.
pub const MAX_PATH: usize = 1000;
pub const MAX_NAME: usize = 255;

/// A failure of the index as the background tasks see it (uploader, journal, restores): the
/// task retries later, nothing is dropped.
pub type IndexError = Box<dyn std::error::Error + Send + Sync>;
pub type IndexResult<T> = std::result::Result<T, IndexError>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("index database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("index is corrupt: {0}")]
    Corrupt(String),
    #[error("index database: {0}")]
    Io(std::io::Error),
}

// The vault's values as columns: each is stored as the text `vault` gives it, so the schema
// and the files of earlier builds are unchanged.

impl ToSql for StorageClass {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str().into_owned()))
    }
}

impl FromSql for StorageClass {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(StorageClass::parse(v.as_str()?))
    }
}

impl ToSql for Tier {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Tier {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        // Lenient: a tier an earlier build let through (the control socket did not check it)
        // must not make every restore unreadable; the request is sent again as Standard.
        Ok(Tier::parse(v.as_str()?).unwrap_or(Tier::Standard))
    }
}

impl ToSql for UploadState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for UploadState {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        // Lenient, as for tiers: an unknown state is a row to send again, never an index that
        // cannot be read.
        Ok(UploadState::parse(v.as_str()?).unwrap_or(UploadState::Queued))
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    /// FIFO, socket or device node: index only, no content. `target` holds
    /// `fifo:0`, `sock:0`, `chr:RDEV` or `blk:RDEV`.
    Special = 4,
}

impl Kind {
    fn from_i64(v: i64) -> Result<Kind> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Special,
            _ => return Err(MetaError::Corrupt(format!("kind {v}"))),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not a regular file.
    None,
    Dirty,
    /// Kept on local disk only, never uploaded (ignore list: .DS_Store, Thumbs.db, ...).
    Local,
    Sealed,
    Uploading,
    Uploaded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::None => "",
            State::Dirty => "dirty",
            State::Local => "local",
            State::Sealed => "sealed",
            State::Uploading => "uploading",
            State::Uploaded => "uploaded",
            State::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Result<State> {
        Ok(match s {
            "" => State::None,
            "dirty" => State::Dirty,
            "local" => State::Local,
            "sealed" => State::Sealed,
            "uploading" => State::Uploading,
            "uploaded" => State::Uploaded,
            "failed" => State::Failed,
            _ => return Err(MetaError::Corrupt(format!("state {s}"))),
        })
    }
    /// Content is in the plaintext spool file.
    pub fn has_spool(self) -> bool {
        matches!(self, State::Dirty | State::Local)
    }
    /// Content is in an encrypted outbox file waiting for (or in) upload.
    pub fn in_outbox(self) -> bool {
        matches!(self, State::Sealed | State::Uploading | State::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Permission bits only (no S_IFMT).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: Nanos,
    pub mtime_ns: Nanos,
    pub ctime_ns: Nanos,
    pub target: Option<String>,
    pub state: State,
    pub content_gen: i64,
    /// When the content last changed (ms since epoch); the settle delay counts from here.
    pub dirty_ms: i64,
    pub object_key: Option<String>,
    pub storage_class: Option<StorageClass>,
    /// The uploaded object's 128-byte header, so a read needs no extra GET for it.
    pub header: Option<Vec<u8>>,
    pub sha256: Option<String>,
    /// DOS attributes and other xattrs (Samba), serialized as JSON object name -> hex value.
    pub xattrs: Option<String>,
    /// The machine whose journal or snapshot made this node what it is, when it came from the
    /// bucket (a rebuild); `None`: this machine. Snapshots carry it (docs/FORMAT.md, section 8),
    /// so that a write-only machine's later entries still concern what it wrote.
    pub owner: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub id: i64,
    pub ino: u64,
    pub content_gen: i64,
    pub object_key: String,
    pub path: String,
    pub size: u64,
    pub enc_size: u64,
    pub storage_class: StorageClass,
    pub state: UploadState,
    pub attempts: i64,
    pub next_try_ms: i64,
    pub last_error: Option<String>,
    pub mp_upload_id: Option<String>,
    /// Encrypted user metadata to send, as (name, value) JSON.
    pub metadata: String,
    pub header: Vec<u8>,
    pub sha256: String,
    /// Object tags, URL-encoded (`k=v&k2=v2`), for bucket lifecycle rules.
    pub tagging: Option<String>,
    /// The version's data key while it waits for upload (`crypto::VersionCipher::resume`);
    /// None for an encrypted outbox file written by an earlier build.
    pub dk: Option<SecretBytes>,
}

/// Key material kept in the index: never shown by `Debug` (logs), wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// One durable version of a file (the `versions` table).
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub object_key: String,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: Nanos,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub storage_class: StorageClass,
    pub sha256: String,
    pub header: Vec<u8>,
}

impl Version {
    /// The version at `object_key` with `i`'s size, times and owner (what a file describes once
    /// that version is its content).
    pub fn of(i: &Inode, object_key: &str, storage_class: &StorageClass, sha256: &str, header: &[u8]) -> Version {
        Version {
            object_key: object_key.to_string(),
            ino: i.ino,
            size: i.size,
            mtime_ns: i.mtime_ns,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            storage_class: storage_class.clone(),
            sha256: sha256.to_string(),
            header: header.to_vec(),
        }
    }
}

/// Files and bytes per content state (`Db::counts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub failed_files: u64,
    pub local_only_files: u64,
    pub dirty_files: u64,
    pub queued_uploads: u64,
}

mod inodes;
mod journal;
mod restores;
mod schema;
mod uploads;

/// Bytes the write-ahead log keeps on disk once it starts over (`journal_size_limit`).
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

pub struct Db {
    conn: Connection,
    /// The database file (`read_view` opens a second connection to it).
    path: std::path::PathBuf,
    /// The write-ahead log (`sync` fsyncs it).
    wal: std::path::PathBuf,
    /// How many times `sync` made the index durable (tests watch it).
    syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What makes the index durable without its connection, so without the lock that guards it
/// (review N17: every FUSE operation waited for the group commit's fsync and checkpoint).
pub struct Syncer {
    path: std::path::PathBuf,
    wal: std::path::PathBuf,
    syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A connection of its own for checkpoints, opened at the first.
    checkpointer: std::sync::Mutex<Option<Connection>>,
}

impl Syncer {
    /// `Db::sync`: every transaction committed before the call survives power loss. The WAL
    /// is never restarted over frames that a checkpoint has not copied and synced into the
    /// database file, so an fsync of it covers every commit made before, on any connection.
    pub fn sync(&self) -> Result<()> {
        sync_wal(&self.wal)?;
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// `Db::checkpoint` on a connection of its own: it copies pages and syncs the database
    /// file while the index's connection goes on committing (PASSIVE: it waits for nobody).
    pub fn checkpoint(&self) -> Result<(i64, i64)> {
        let mut g = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let conn =
                Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            *g = Some(conn);
        }
        let conn = g.as_ref().expect("opened above");
        Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))?)
    }
}

/// Tests: runs once inside the next fsync of the WAL at this path (what a slow disk makes long).
#[cfg(test)]
pub static WAL_SYNC_HOOK: std::sync::Mutex<Option<(std::path::PathBuf, TestHook)>> = std::sync::Mutex::new(None);

#[cfg(test)]
pub type TestHook = Box<dyn FnOnce() + Send>;

fn sync_wal(wal: &Path) -> Result<()> {
    #[cfg(test)]
    {
        let hook = {
            let mut g = WAL_SYNC_HOOK.lock().unwrap();
            if g.as_ref().is_some_and(|(p, _)| p == wal) {
                g.take()
            } else {
                None
            }
        };
        if let Some((_, f)) = hook {
            f();
        }
    }
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_all().map_err(MetaError::Io),
        // No WAL yet: every commit is in the database file, which checkpoints sync.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MetaError::Io(e)),
    }
}

impl Db {
    pub fn open(path: &Path, now_ns: Nanos, uid: u32, gid: u32) -> Result<Db> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: a committed transaction is in the WAL (it survives a crash of the daemon)
        // but not yet fsynced; `sync` makes every commit so far survive power loss (`fsync`,
        // the group commit). No automatic checkpoint: it would sync the WAL at a moment of its
        // own choosing, ahead of the staged files the commits refer to; `checkpoint` runs
        // after each group commit instead.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // The WAL grows while a checkpoint cannot reach its end (a snapshot's read view holds
        // it back): once it starts over, it is cut back to this size instead of keeping its
        // largest size on the staging disk for good.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // Deleted rows (an upload's data key once it is done) are zeroed in the pages SQLite
        // writes anyway; older copies can remain in the WAL until it is overwritten.
        conn.pragma_update(None, "secure_delete", "FAST")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement the daemon runs stays prepared (`Cached`).
        conn.set_prepared_statement_cache_capacity(256);
        conn.execute_batch(schema::SCHEMA)?;
        schema::migrate(&conn)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let db = Db { conn, path: path.to_path_buf(), wal: wal.into(), syncs: Default::default() };
        if db.get(ROOT)?.is_none() {
            db.conn.exec(
                "INSERT INTO inodes(ino,parent,name,kind,mode,uid,gid,atime_ns,mtime_ns,ctime_ns) VALUES(1,1,'',2,493,?1,?2,?3,?3,?3)",
                params![uid, gid, SqlNanos(now_ns)],
            )?;
        }
        Ok(db)
    }

    /// Make every transaction committed so far survive power loss: fsync the WAL, which holds
    /// every frame committed since the last checkpoint (what SQLite itself does before a
    /// checkpoint with synchronous=NORMAL). Writes nothing, so it works on a full disk.
    pub fn sync(&self) -> Result<()> {
        sync_wal(&self.wal)?;
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A `Syncer` for this index (its own checkpoint connection).
    pub fn syncer(&self) -> Syncer {
        Syncer { path: self.path.clone(), wal: self.wal.clone(), syncs: self.syncs.clone(), checkpointer: std::sync::Mutex::new(None) }
    }

    /// The index as committed at this moment, read through a read-only connection of its own
    /// in one read transaction (WAL mode keeps that view while this connection goes on
    /// committing): a snapshot of a million files is read without holding the caller's lock.
    pub fn read_view(&self) -> Result<ReadView> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        // The view starts at the transaction's first read, so read now.
        conn.execute_batch("BEGIN")?;
        conn.row("SELECT count(*) FROM settings", [], |_| Ok(()))?;
        Ok(ReadView { db: Db { conn, path: self.path.clone(), wal: self.wal.clone(), syncs: Default::default() } })
    }

    /// How many `sync`s so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A transaction; inside a namespace operation's savepoint it nests as a savepoint and
    /// commits with the operation.
    pub fn begin(&mut self) -> Result<rusqlite::Savepoint<'_>> {
        Ok(self.conn.savepoint()?)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.row("SELECT value FROM settings WHERE key=?1", params![key], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        Self::set_setting_in(&self.conn, key, value)
    }

    pub fn set_setting_in(conn: &Connection, key: &str, value: &str) -> Result<()> {
        conn.exec("INSERT OR REPLACE INTO settings(key,value) VALUES(?1,?2)", params![key, value])?;
        Ok(())
    }

    /// Open the transaction of one namespace operation (a named savepoint: `begin` nests in it).
    pub fn op_begin(&self) -> Result<()> {
        Ok(self.conn.execute_batch("SAVEPOINT ns_op")?)
    }

    /// Commit the namespace operation opened by `op_begin`.
    pub fn op_commit(&self) -> Result<()> {
        Ok(self.conn.execute_batch("RELEASE ns_op")?)
    }

    /// Undo everything since `op_begin`.
    pub fn op_rollback(&self) -> Result<()> {
        Ok(self.conn.execute_batch("ROLLBACK TO ns_op; RELEASE ns_op")?)
    }
}

/// A consistent, read-only view of the index (`Db::read_view`); every read method of `Db`
/// works on it. Dropping it ends the read transaction.
pub struct ReadView {
    db: Db,
}

impl std::ops::Deref for ReadView {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

#[cfg(test)]
mod tests;
