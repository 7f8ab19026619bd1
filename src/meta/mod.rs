//! The local index and upload journal, in SQLite (WAL, synchronous=FULL).
//!
//! Role: source of truth for listings (inodes, directory entries, attributes), the per-file
//! content state machine, the upload queue and multipart progress. SQLite, not sled: sled lost
//! acknowledged writes in a kill -9 test (docs/ARCHITECTURE.md, "Why SQLite").
//!
//! Invariants:
//! * inode numbers come from AUTOINCREMENT and are never reused, so they are stable across
//!   remounts (NFS/Samba re-export relies on that); the root is inode 1.
//! * a regular file's `state` says where its current content lives:
//!   `dirty` (plaintext spool file `spool/<ino>`), `sealed` (encrypted outbox file, an
//!   `uploads` row queued), `uploading` (same, an upload is in flight), `uploaded` (in S3 at
//!   `object_key`), `failed` (upload parked after a permanent error; outbox kept).
//! * `content_gen` increases on every content change; an upload completes into the inode only
//!   if the generation it sealed is still current.
//! * the caller serialises access (one connection behind the filesystem's core lock).

use crate::restore::{RState, Restore};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("index database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("index is corrupt: {0}")]
    Corrupt(String),
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
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub target: Option<String>,
    pub state: State,
    pub content_gen: i64,
    /// When the content last changed (ms since epoch); the settle delay counts from here.
    pub dirty_ms: i64,
    pub object_key: Option<String>,
    pub storage_class: Option<String>,
    /// The uploaded object's 128-byte header, so a read needs no extra GET for it.
    pub header: Option<Vec<u8>>,
    pub sha256: Option<String>,
    /// DOS attributes and other xattrs (Samba), serialized as JSON object name -> hex value.
    pub xattrs: Option<String>,
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
    pub storage_class: String,
    /// "queued" | "uploading" | "failed"
    pub state: String,
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
}

/// One durable version of a file (the `versions` table).
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub object_key: String,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub storage_class: String,
    pub sha256: String,
    pub header: Vec<u8>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes(
  ino INTEGER PRIMARY KEY AUTOINCREMENT,
  parent INTEGER NOT NULL,
  name TEXT NOT NULL,
  kind INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  gid INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  atime_ns INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  ctime_ns INTEGER NOT NULL,
  target TEXT,
  state TEXT NOT NULL DEFAULT '',
  content_gen INTEGER NOT NULL DEFAULT 0,
  dirty_ms INTEGER NOT NULL DEFAULT 0,
  object_key TEXT,
  storage_class TEXT,
  header BLOB,
  sha256 TEXT,
  xattrs TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS inodes_dirent ON inodes(parent, name) WHERE ino != 1;
CREATE INDEX IF NOT EXISTS inodes_parent_kind ON inodes(parent, kind);
-- (A partial index over an IN list was never used: SQLite cannot tell that state='dirty'
-- implies it. Replaced by a plain index.)
DROP INDEX IF EXISTS inodes_state;
CREATE INDEX IF NOT EXISTS inodes_by_state ON inodes(state);
CREATE TABLE IF NOT EXISTS uploads(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ino INTEGER NOT NULL,
  content_gen INTEGER NOT NULL,
  object_key TEXT NOT NULL,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  enc_size INTEGER NOT NULL,
  storage_class TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued',
  attempts INTEGER NOT NULL DEFAULT 0,
  next_try_ms INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  mp_upload_id TEXT,
  metadata TEXT NOT NULL,
  header BLOB NOT NULL,
  sha256 TEXT NOT NULL,
  tagging TEXT
);
-- Every lookup the upload path makes per file is indexed: no per-seal or per-completion scan
-- that grows with the vault (uploads by inode, due uploads, inodes by object key).
CREATE INDEX IF NOT EXISTS uploads_ino ON uploads(ino);
CREATE INDEX IF NOT EXISTS uploads_due ON uploads(next_try_ms, id) WHERE state IN ('queued','uploading');
CREATE INDEX IF NOT EXISTS inodes_object_key ON inodes(object_key) WHERE object_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS restores(
  ino INTEGER PRIMARY KEY,
  object_key TEXT NOT NULL,
  state TEXT NOT NULL,
  class TEXT NOT NULL,
  tier TEXT NOT NULL,
  days INTEGER,
  size INTEGER NOT NULL,
  requested_ms INTEGER NOT NULL,
  expected_ms INTEGER NOT NULL,
  expiry_ms INTEGER,
  expiry_text TEXT,
  last_check_ms INTEGER NOT NULL DEFAULT 0,
  next_check_ms INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  auto INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS dead_keys(key TEXT PRIMARY KEY);
-- Every file version known to be durable in the bucket, newest last per inode: what a snapshot
-- carries for a file whose next version is still pending, and what listing, restoring and
-- pruning old versions will need.
CREATE TABLE IF NOT EXISTS versions(
  object_key TEXT PRIMARY KEY,
  ino INTEGER NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  gid INTEGER NOT NULL,
  storage_class TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  header BLOB NOT NULL,
  uploaded_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_ino ON versions(ino, uploaded_ms);
CREATE TABLE IF NOT EXISTS journal(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ts_ms INTEGER NOT NULL,
  entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts(
  upload_id INTEGER NOT NULL,
  part_no INTEGER NOT NULL,
  etag TEXT NOT NULL,
  PRIMARY KEY(upload_id, part_no)
);
"#;

pub struct Db {
    conn: Connection,
}

fn inode_from_row(r: &Row<'_>) -> rusqlite::Result<(Inode, i64, String)> {
    Ok((
        Inode {
            ino: r.get::<_, i64>(0)? as u64,
            parent: r.get::<_, i64>(1)? as u64,
            name: r.get(2)?,
            kind: Kind::File,
            mode: r.get::<_, i64>(4)? as u32,
            uid: r.get::<_, i64>(5)? as u32,
            gid: r.get::<_, i64>(6)? as u32,
            size: r.get::<_, i64>(7)? as u64,
            atime_ns: r.get(8)?,
            mtime_ns: r.get(9)?,
            ctime_ns: r.get(10)?,
            target: r.get(11)?,
            state: State::None,
            content_gen: r.get(13)?,
            dirty_ms: r.get(14)?,
            object_key: r.get(15)?,
            storage_class: r.get(16)?,
            header: r.get(17)?,
            sha256: r.get(18)?,
            xattrs: r.get(19)?,
        },
        r.get(3)?,
        r.get(12)?,
    ))
}

const INODE_COLS: &str = "ino,parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms,object_key,storage_class,header,sha256,xattrs";
const UPLOAD_COLS: &str = "id,ino,content_gen,object_key,path,size,enc_size,storage_class,state,attempts,next_try_ms,last_error,mp_upload_id,metadata,header,sha256,tagging";
const RESTORE_COLS: &str =
    "ino,object_key,state,class,tier,days,size,requested_ms,expected_ms,expiry_ms,expiry_text,last_check_ms,next_check_ms,attempts,reason,auto";

fn restore_from_row(r: &Row<'_>) -> rusqlite::Result<Restore> {
    let st: String = r.get(2)?;
    Ok(Restore {
        ino: r.get::<_, i64>(0)? as u64,
        object_key: r.get(1)?,
        state: RState::parse(&st).unwrap_or(RState::Failed),
        class: r.get(3)?,
        tier: r.get(4)?,
        days: r.get(5)?,
        size: r.get::<_, i64>(6)? as u64,
        requested_ms: r.get(7)?,
        expected_ms: r.get(8)?,
        expiry_ms: r.get(9)?,
        expiry_text: r.get(10)?,
        last_check_ms: r.get(11)?,
        next_check_ms: r.get(12)?,
        attempts: r.get(13)?,
        reason: r.get(14)?,
        auto: r.get::<_, i64>(15)? != 0,
    })
}

fn upload_from_row(r: &Row<'_>) -> rusqlite::Result<Upload> {
    Ok(Upload {
        id: r.get(0)?,
        ino: r.get::<_, i64>(1)? as u64,
        content_gen: r.get(2)?,
        object_key: r.get(3)?,
        path: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        enc_size: r.get::<_, i64>(6)? as u64,
        storage_class: r.get(7)?,
        state: r.get(8)?,
        attempts: r.get(9)?,
        next_try_ms: r.get(10)?,
        last_error: r.get(11)?,
        mp_upload_id: r.get(12)?,
        metadata: r.get(13)?,
        header: r.get(14)?,
        sha256: r.get(15)?,
        tagging: r.get(16)?,
    })
}

impl Db {
    pub fn open(path: &Path, now_ns: i64, uid: u32, gid: u32) -> Result<Db> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        let db = Db { conn };
        if db.get(ROOT)?.is_none() {
            db.conn.execute(
                "INSERT INTO inodes(ino,parent,name,kind,mode,uid,gid,atime_ns,mtime_ns,ctime_ns) VALUES(1,1,'',2,493,?1,?2,?3,?3,?3)",
                params![uid, gid, now_ns],
            )?;
        }
        Ok(db)
    }

    /// A transaction; inside a namespace operation's savepoint it nests as a savepoint and
    /// commits with the operation.
    pub fn begin(&mut self) -> Result<rusqlite::Savepoint<'_>> {
        Ok(self.conn.savepoint()?)
    }

    fn query_inode(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Option<Inode>> {
        let r = conn.query_row(sql, p, inode_from_row).optional()?;
        match r {
            None => Ok(None),
            Some((mut i, k, s)) => {
                i.kind = Kind::from_i64(k)?;
                i.state = State::parse(&s)?;
                Ok(Some(i))
            }
        }
    }

    pub fn get(&self, ino: u64) -> Result<Option<Inode>> {
        Self::query_inode(&self.conn, &format!("SELECT {INODE_COLS} FROM inodes WHERE ino=?1"), params![ino as i64])
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<Inode>> {
        Self::query_inode(
            &self.conn,
            &format!("SELECT {INODE_COLS} FROM inodes WHERE parent=?1 AND name=?2 AND ino != 1"),
            params![parent as i64, name],
        )
    }

    pub fn children(&self, parent: u64) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE parent=?1 AND ino != 1 ORDER BY ino", params![parent as i64])
    }

    pub fn has_children(&self, parent: u64) -> Result<bool> {
        Ok(self.conn.query_row("SELECT 1 FROM inodes WHERE parent=?1 AND ino != 1 LIMIT 1", params![parent as i64], |_| Ok(())).optional()?.is_some())
    }

    pub fn select_inodes(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<Inode>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {INODE_COLS} FROM inodes {clause}"))?;
        let rows = st.query_map(p, inode_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (mut i, k, s) = r?;
            i.kind = Kind::from_i64(k)?;
            i.state = State::parse(&s)?;
            out.push(i);
        }
        Ok(out)
    }

    /// Insert a new inode; returns it with its fresh number.
    pub fn insert(&mut self, i: &Inode) -> Result<Inode> {
        self.conn.execute(
            "INSERT INTO inodes(parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
            params![i.parent as i64, i.name, i.kind as i64, i.mode, i.uid, i.gid, i.size as i64, i.atime_ns, i.mtime_ns, i.ctime_ns, i.target, i.state.as_str(), i.content_gen, i.dirty_ms],
        )?;
        let mut n = i.clone();
        n.ino = self.conn.last_insert_rowid() as u64;
        Ok(n)
    }

    /// Write every mutable column of `i` back.
    pub fn save(conn: &Connection, i: &Inode) -> Result<()> {
        conn.execute(
            "UPDATE inodes SET parent=?2,name=?3,mode=?4,uid=?5,gid=?6,size=?7,atime_ns=?8,mtime_ns=?9,ctime_ns=?10,target=?11,state=?12,content_gen=?13,dirty_ms=?14,object_key=?15,storage_class=?16,header=?17,sha256=?18,xattrs=?19 WHERE ino=?1",
            params![i.ino as i64, i.parent as i64, i.name, i.mode, i.uid, i.gid, i.size as i64, i.atime_ns, i.mtime_ns, i.ctime_ns, i.target, i.state.as_str(), i.content_gen, i.dirty_ms, i.object_key, i.storage_class, i.header, i.sha256, i.xattrs],
        )?;
        Ok(())
    }

    pub fn update(&self, i: &Inode) -> Result<()> {
        Self::save(&self.conn, i)
    }

    pub fn delete_inode(conn: &Connection, ino: u64) -> Result<()> {
        conn.execute("DELETE FROM inodes WHERE ino=?1", params![ino as i64])?;
        Ok(())
    }

    /// Vault-relative path ("a/b/c.jpg") of an inode.
    pub fn path_of(&self, ino: u64) -> Result<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0;
        while cur != ROOT {
            let (p, n): (i64, String) = self
                .conn
                .query_row("SELECT parent,name FROM inodes WHERE ino=?1", params![cur as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| MetaError::Corrupt(format!("dangling inode {cur}")))?;
            parts.push(n);
            cur = p as u64;
            guard += 1;
            if guard > 4096 {
                return Err(MetaError::Corrupt("directory cycle".into()));
            }
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// Files whose content is dirty, with their dirty time: the sealer's candidates
    /// (never orphans: unlinked files that are still open have parent 0).
    pub fn dirty_files(&self) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE state='dirty' AND parent != 0 ORDER BY dirty_ms", [])
    }

    /// Unlinked files kept while open (parent 0).
    pub fn orphans(&self) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE parent = 0", [])
    }

    pub fn files_in_state(&self, states: &[State]) -> Result<Vec<Inode>> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        self.select_inodes(&format!("WHERE state IN ({})", list.join(",")), [])
    }

    // ---- upload queue ----

    pub fn insert_upload(conn: &Connection, u: &Upload) -> Result<i64> {
        conn.execute(
            "INSERT INTO uploads(ino,content_gen,object_key,path,size,enc_size,storage_class,state,attempts,next_try_ms,metadata,header,sha256,tagging) VALUES(?1,?2,?3,?4,?5,?6,?7,'queued',0,0,?8,?9,?10,?11)",
            params![u.ino as i64, u.content_gen, u.object_key, u.path, u.size as i64, u.enc_size as i64, u.storage_class, u.metadata, u.header, u.sha256, u.tagging],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn upload(&self, id: i64) -> Result<Option<Upload>> {
        Ok(self.conn.query_row(&format!("SELECT {UPLOAD_COLS} FROM uploads WHERE id=?1"), params![id], upload_from_row).optional()?)
    }

    pub fn uploads(&self) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {UPLOAD_COLS} FROM uploads ORDER BY id"))?;
        let r = st.query_map([], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn uploads_for_ino(&self, ino: u64) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {UPLOAD_COLS} FROM uploads WHERE ino=?1"))?;
        let r = st.query_map(params![ino as i64], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    /// Queued uploads due at `now_ms`, oldest first, excluding ids in `busy`.
    pub fn due_uploads(&self, now_ms: i64, limit: usize) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {UPLOAD_COLS} FROM uploads WHERE state IN ('queued','uploading') AND next_try_ms <= ?1 ORDER BY next_try_ms, id LIMIT ?2"
        ))?;
        let r = st.query_map(params![now_ms, limit as i64], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn set_upload_state(&self, id: i64, state: &str, attempts: i64, next_try_ms: i64, err: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE uploads SET state=?2, attempts=?3, next_try_ms=?4, last_error=?5 WHERE id=?1",
            params![id, state, attempts, next_try_ms, err],
        )?;
        Ok(())
    }

    pub fn set_mp_upload_id(&self, id: i64, mp: Option<&str>) -> Result<()> {
        self.conn.execute("UPDATE uploads SET mp_upload_id=?2 WHERE id=?1", params![id, mp])?;
        if mp.is_none() {
            self.conn.execute("DELETE FROM parts WHERE upload_id=?1", params![id])?;
        }
        Ok(())
    }

    /// Record a durable file version.
    pub fn add_version(conn: &Connection, v: &Version, uploaded_ms: i64) -> Result<()> {
        conn.execute(
            "INSERT OR REPLACE INTO versions(object_key,ino,size,mtime_ns,mode,uid,gid,storage_class,sha256,header,uploaded_ms)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            params![v.object_key, v.ino as i64, v.size as i64, v.mtime_ns, v.mode, v.uid, v.gid, v.storage_class, v.sha256, v.header, uploaded_ms],
        )?;
        Ok(())
    }

    /// The newest durable version of inode `ino`.
    pub fn latest_version(&self, ino: u64) -> Result<Option<Version>> {
        Ok(self
            .conn
            .query_row(
                "SELECT object_key,size,mtime_ns,mode,uid,gid,storage_class,sha256,header FROM versions WHERE ino=?1 ORDER BY uploaded_ms DESC, rowid DESC LIMIT 1",
                params![ino as i64],
                |r| {
                    Ok(Version {
                        object_key: r.get(0)?,
                        ino,
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        mode: r.get(3)?,
                        uid: r.get(4)?,
                        gid: r.get(5)?,
                        storage_class: r.get(6)?,
                        sha256: r.get(7)?,
                        header: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_upload_key(&self, id: i64, key: &str) -> Result<()> {
        self.conn.execute("UPDATE uploads SET object_key=?2 WHERE id=?1", params![id, key])?;
        Ok(())
    }

    pub fn add_part(&self, id: i64, part_no: i32, etag: &str) -> Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO parts(upload_id,part_no,etag) VALUES(?1,?2,?3)", params![id, part_no, etag])?;
        Ok(())
    }

    pub fn parts(&self, id: i64) -> Result<Vec<(i32, String)>> {
        let mut st = self.conn.prepare_cached("SELECT part_no, etag FROM parts WHERE upload_id=?1 ORDER BY part_no")?;
        let r = st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn delete_upload(conn: &Connection, id: i64) -> Result<()> {
        conn.execute("DELETE FROM parts WHERE upload_id=?1", params![id])?;
        conn.execute("DELETE FROM uploads WHERE id=?1", params![id])?;
        Ok(())
    }

    /// Drop a queued upload whose version is no longer wanted (rewritten, deleted). Its PUT may
    /// still be in flight and land, so its key is recorded as dead: a rebuild must never adopt
    /// that object as a live file.
    pub fn cancel_upload(conn: &Connection, id: i64) -> Result<()> {
        conn.execute("INSERT OR IGNORE INTO dead_keys(key) SELECT object_key FROM uploads WHERE id=?1", params![id])?;
        Self::delete_upload(conn, id)
    }

    // ---- restores ----

    pub fn restore(&self, ino: u64) -> Result<Option<Restore>> {
        Ok(self.conn.query_row(&format!("SELECT {RESTORE_COLS} FROM restores WHERE ino=?1"), params![ino as i64], restore_from_row).optional()?)
    }

    pub fn restores(&self) -> Result<Vec<Restore>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {RESTORE_COLS} FROM restores ORDER BY requested_ms, ino"))?;
        let r = st.query_map([], restore_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn put_restore(&self, r: &Restore) -> Result<()> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO restores({RESTORE_COLS}) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)"),
            params![
                r.ino as i64,
                r.object_key,
                r.state.as_str(),
                r.class,
                r.tier,
                r.days,
                r.size as i64,
                r.requested_ms,
                r.expected_ms,
                r.expiry_ms,
                r.expiry_text,
                r.last_check_ms,
                r.next_check_ms,
                r.attempts,
                r.reason,
                r.auto as i64
            ],
        )?;
        Ok(())
    }

    pub fn delete_restore(&self, ino: u64) -> Result<()> {
        self.conn.execute("DELETE FROM restores WHERE ino=?1", params![ino as i64])?;
        Ok(())
    }

    /// Bytes of automatic restores requested since `since_ms` (the daily budget).
    pub fn auto_restore_bytes_since(&self, since_ms: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(size),0) FROM restores WHERE auto=1 AND requested_ms >= ?1 AND state IN ('requested','in progress','ready','expired')",
            params![since_ms],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Files (ino, size, class) below `dir` (recursively) — for `coldvault restore DIR`.
    pub fn files_below(&self, dir: u64) -> Result<Vec<Inode>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for c in self.children(d)? {
                match c.kind {
                    Kind::Dir => stack.push(c.ino),
                    Kind::File => out.push(c),
                    Kind::Symlink | Kind::Special => {}
                }
            }
        }
        Ok(out)
    }

    pub fn set_storage_class_by_key(&self, key: &str, class: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE inodes SET storage_class=?2 WHERE object_key=?1 AND state='uploaded' AND coalesce(storage_class,'') != ?2
             AND NOT (?2 = 'INTELLIGENT_TIERING' AND coalesce(storage_class,'') LIKE 'INTELLIGENT_TIERING/%')",
            params![key, class],
        )?)
    }

    // ---- journal of namespace changes (uploaded to the bucket in batches) ----

    /// Append a journal record stamped `ts_ms`, raised above the clock floor (the newest
    /// time this index imported from the bucket), so that changes made after a rebuild sort
    /// after everything they were built on, even when this machine's clock is behind.
    pub fn journal_append(conn: &Connection, ts_ms: i64, entry_json: &str) -> Result<()> {
        conn.execute(
            "INSERT INTO journal(ts_ms, entry) VALUES(max(?1, coalesce((SELECT CAST(value AS INTEGER) FROM settings WHERE key='clock_floor_ms'), 0) + 1), ?2)",
            params![ts_ms, entry_json],
        )?;
        Ok(())
    }

    pub fn journal_pending(&self, limit: usize) -> Result<Vec<(i64, i64, String)>> {
        let mut st = self.conn.prepare_cached("SELECT seq, ts_ms, entry FROM journal ORDER BY seq LIMIT ?1")?;
        let r = st.query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn journal_delete_upto(&self, seq: i64) -> Result<()> {
        self.conn.execute("DELETE FROM journal WHERE seq <= ?1", params![seq])?;
        Ok(())
    }

    /// Highest journal sequence number ever assigned (sent or not).
    pub fn journal_max_seq(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='journal'), 0)", [], |r| r.get(0))?)
    }

    /// Object keys no live file uses any more (deleted or replaced): a rebuild must not
    /// resurrect them from the bucket listing. Snapshots carry this list.
    pub fn add_dead_key(conn: &Connection, key: &str) -> Result<()> {
        conn.execute("INSERT OR IGNORE INTO dead_keys(key) VALUES(?1)", params![key])?;
        Ok(())
    }

    pub fn dead_keys(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare_cached("SELECT key FROM dead_keys ORDER BY key")?;
        let r = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM settings WHERE key=?1", params![key], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO settings(key,value) VALUES(?1,?2)", params![key, value])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
