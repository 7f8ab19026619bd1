//! The index's tables. Created if missing; changes are additive (`IF NOT EXISTS`, new
//! indexes), so an older index opens as it is.

pub(super) const SCHEMA: &str = r#"
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
-- Directory listings page through a folder in inode order (FUSE offsets).
CREATE INDEX IF NOT EXISTS inodes_parent_ino ON inodes(parent, ino);
-- (A partial index over an IN list was never used: SQLite cannot tell that state='dirty'
-- implies it. Replaced by a plain index.)
DROP INDEX IF EXISTS inodes_state;
-- By state, and dirty files by the time of their last change: the sealer reads the settled
-- ones a page at a time, never every dirty file (a folder being copied in).
DROP INDEX IF EXISTS inodes_by_state;
CREATE INDEX IF NOT EXISTS inodes_state_dirty_ms ON inodes(state, dirty_ms);
-- A user's bytes on the staging disk (the staging quota reads it every second while they
-- write): only staged files are in it (review N18: it was a scan of every inode).
CREATE INDEX IF NOT EXISTS inodes_staged_uid ON inodes(uid, kind, size) WHERE state IN ('dirty','local','sealed','uploading','failed');
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
  tagging TEXT,
  -- The version's data key while its upload is pending: the uploader encrypts from the frozen
  -- plaintext (outbox/<ino>.<gen>.plain). NULL: an encrypted outbox file of an earlier build.
  dk BLOB
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
-- Paths removed (deleted, renamed away) and when, as the journal stamped it: snapshots carry
-- the recent ones, so that a rebuild starting from a snapshot does not let another machine's
-- older upload bring back what was removed after it (docs/SEMANTICS.md, several machines).
CREATE TABLE IF NOT EXISTS tombstones(path TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, machine TEXT);
-- When each file was put where it is (its version's upload record, or a rename that moved an
-- uploaded file): what a snapshot says of it (`at`). Not a chmod or touch: they change no
-- version, and another machine's changes are weighed against versions and moves only.
CREATE TABLE IF NOT EXISTS placed(ino INTEGER PRIMARY KEY, ms INTEGER NOT NULL);
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

/// Columns added since the table was first created (`CREATE TABLE IF NOT EXISTS` leaves an
/// existing table as it was).
pub(super) fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has_dk = conn.prepare("SELECT dk FROM uploads LIMIT 0").is_ok();
    if !has_dk {
        conn.execute_batch("ALTER TABLE uploads ADD COLUMN dk BLOB")?;
    }
    // Which machine's entries made an imported node (write-only machines' entries may change
    // only their own).
    if conn.prepare("SELECT owner FROM inodes LIMIT 0").is_err() {
        conn.execute_batch("ALTER TABLE inodes ADD COLUMN owner TEXT")?;
    }
    Ok(())
}
