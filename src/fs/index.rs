//! The index: the one lock of the filesystem core and what it guards — the SQLite connection
//! (inodes, upload queue, journal, restores) and the table of open files and handles.
//!
//! Lock order (a lock on the left may be held while taking one on its right, never the other
//! way round):
//!
//! ```text
//! sealer.one → core               (one sealer at a time; it takes core for each step)
//! quota → core                    (a write charging the staging quota reads the user's staged bytes)
//! core → sealer.failures          (`status` reads the failures under core: taken last of all)
//! handle reader (std Mutex)       taken and released without core held, never both
//! reads.ahead (folder read-ahead) never held while taking core (`Reads` takes no core at all)
//! journal flush lock → core       (the journal uploader and `flush` read pending records)
//! ```
//!
//! `core` is never held across network I/O, the encryption of a whole file, an fsync or a
//! `pwrite`: those run outside and re-check `content_gen` before committing. The WAL fsync and
//! checkpoint run on their own connection (`meta::Syncer`), without `core`.

use super::now_ms;
use crate::clock::Nanos;
use crate::meta::Db;
use crate::sync::Mutex;
use crate::sync::MutexGuard;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// The index and the open-file table behind the core lock, and the connection that makes the
/// index durable without it.
pub(super) struct Index {
    core: Mutex<Core>,
    /// Makes the index durable without `core` (`Fs::sync_durable`).
    pub(super) syncer: crate::meta::Syncer,
    /// The latest wall-clock time (ms) the sealer or the uploader read: one later read far
    /// below it means the system clock was set back (`check_clock`).
    pub(super) clock_high: std::sync::atomic::AtomicI64,
}

impl Index {
    pub(super) fn new(db: Db) -> Index {
        let syncer = db.syncer();
        Index {
            core: Mutex::new(Core {
                db,
                open: HashMap::new(),
                handles: HashMap::new(),
                next_fh: 1,
                op_depth: 0,
                after_commit: Vec::new(),
                after_durable: Vec::new(),
                synced_changes: u64::MAX,
                written: false,
            }),
            syncer,
            clock_high: Default::default(),
        }
    }

    /// The core lock. A panic while it was held leaves the index consistent (every change is
    /// a transaction), so a poisoned lock is taken over.
    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wall-clock times the index keeps (when a dirty file settles, when an upload is retried)
    /// are brought back if the system clock was set back since they were written (review L8:
    /// a step back of Δ delayed every seal and retry by Δ, and `flush --wait` with them).
    /// Checked at start and whenever the sealer or the uploader reads the clock: an atomic
    /// compare, and two indexed updates only after a step back.
    pub(super) fn check_clock(&self, at_start: bool) -> crate::meta::Result<()> {
        let now = now_ms();
        let high = self.clock_high.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        if !at_start && high <= now + 1_000 {
            return Ok(());
        }
        let back = if at_start { 0 } else { high - now };
        let n = self.core().db.clamp_future_times(now, back, crate::upload::MAX_BACKOFF.as_millis() as i64)?;
        if n > 0 {
            tracing::warn!(
                back_s = (high - now).max(0) / 1000,
                rows = n,
                "the system clock was set back: seals and upload retries planned for later are due now"
            );
        }
        self.clock_high.store(now, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// State of a file with at least one open handle.
pub(super) struct OpenFile {
    pub(super) handles: u32,
    pub(super) writers: u32,
    /// Handles opened by execve (`Fs::open_exec`): the file is a running program until they
    /// are released (when the last process running it has exited).
    pub(super) execs: u32,
    /// The file's owner when it was opened (charged for what writes add, `quota.rs`).
    pub(super) uid: u32,
    /// The plaintext spool, open read-write, when the file's content is dirty. None with
    /// writers counted: they opened an uploaded file without O_TRUNC, and no write, read or
    /// truncate has needed the old content yet (`Fs::materialize`).
    pub(super) spool: Option<Arc<File>>,
    pub(super) size: u64,
    pub(super) mtime_ns: Nanos,
    /// Changed by writes and truncates (committed with the data; a close alone changes nothing).
    pub(super) ctime_ns: Nanos,
    /// Writes and truncates through this file so far, and how many of them are durable
    /// (spool fsynced and index committed). A close or fsync makes durable what came before
    /// it; a write racing with it stays pending for the next one.
    pub(super) changes: u64,
    pub(super) committed: u64,
    /// Truncations (and O_TRUNC spool swaps) so far: a write whose bytes went to the spool
    /// before a truncation that came after it started writes them again (review L10: the
    /// truncate cut them, and the write then set the size back, leaving zeros).
    pub(super) cuts: u64,
}

impl OpenFile {
    pub(super) fn touch(&mut self) {
        self.changes += 1;
    }
    pub(super) fn pending(&self) -> bool {
        self.changes != self.committed
    }
}

pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) write: bool,
    /// Content of a virtual (status) file, fixed at open.
    pub(super) virt: Option<Arc<Vec<u8>>>,
    /// The reader of the object this handle reads from S3, made by its first remote read.
    pub(super) reader: Option<Arc<std::sync::Mutex<crate::sealed::Reader>>>,
    /// The process that opened it (0: not known): folder read-ahead follows each reader; a
    /// writer's first write names it in the restore it may request (the indexer rule).
    pub(super) pid: u32,
    /// Opened by execve: counted in `OpenFile::execs` until released.
    pub(super) exec: bool,
    /// A file of a view (`at.rs`), as it was at open: its reads go on when the view is
    /// dropped (more views made than are kept).
    pub(super) view: Option<Arc<crate::meta::Inode>>,
}

pub(super) struct Core {
    pub(super) db: Db,
    pub(super) open: HashMap<u64, OpenFile>,
    pub(super) handles: HashMap<u64, Handle>,
    pub(super) next_fh: u64,
    /// Inside a namespace operation (`Fs::in_op`): staged files it made unreferenced, deleted
    /// only once its transaction has committed (a crash or an error before keeps them).
    pub(super) op_depth: u32,
    pub(super) after_commit: Vec<AfterCommit>,
    /// Staged files that committed changes no longer reference, deleted by the next
    /// `sync_durable` once those commits survive power loss (before, a power cut could bring
    /// back an index that still needs them: a sealed version whose upload's completion was
    /// lost, a version a rewrite discarded).
    pub(super) after_durable: Vec<PathBuf>,
    /// The connection's change count right after the last `sync_durable`, and whether bytes
    /// were written to a spool since: the group commit skips an idle filesystem.
    pub(super) synced_changes: u64,
    pub(super) written: bool,
}

/// What a namespace operation does with staged files once its transaction has committed.
pub(super) enum AfterCommit {
    /// Delete once durable (`Fs::remove_when_durable`).
    RemoveWhenDurable(PathBuf),
    /// Move the inode's spool aside, delete it once durable (`Fs::drop_spool`).
    DropSpool(u64),
}
