//! The journal task: uploads pending journal entries in batches, snapshots the index now and
//! then, and compacts what the snapshot makes redundant (when the credentials allow deletes).

use super::{compact, MetaSink, Record};
use crate::clock::now_ms;
use crate::crypto::sign::MachineSigner;
use crate::crypto::VaultKeys;
use crate::meta::{IndexError, IndexResult};
use crate::store::{ObjectStore, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Entries per uploaded batch…
pub const BATCH: usize = 1000;
/// …and their JSON bytes at most (one record alone may be more: a path and its extended
/// attributes stay far below `rebuild::MAX_BATCH_BYTES`).
pub const BATCH_BYTES: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Upload pending entries at least this often.
    pub interval: Duration,
    /// Snapshot after this many entries since the last snapshot…
    pub snapshot_every: u64,
    /// …or after this long, if anything changed.
    pub snapshot_max_age: Duration,
    /// Write-only credentials: never delete (no compaction).
    pub write_only: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            interval: Duration::from_secs(30),
            snapshot_every: 10_000,
            snapshot_max_age: Duration::from_secs(24 * 3600),
            write_only: false,
        }
    }
}

/// What the journal task asks of the index: its pending records and its snapshot bookkeeping.
/// Index operations only; the store, the keys, the prefix, the flush lock and the wakeup are
/// the uploader's own ([`JournalUploader`]). The filesystem core implements it.
pub trait JournalIndex: Send + Sync {
    /// Another copy of this machine's cache dir wrote its journal (`MetaSink::put_batch`):
    /// the next mount takes a new machine id (`Fs::fork_check`).
    fn journal_forked(&self) -> IndexResult<()>;
    /// This machine's id in the bucket's journal.
    fn machine(&self) -> IndexResult<String>;
    /// The batch of records `first..=last` is about to be put: recorded, and whether this
    /// index put it before (so that an object already at its key is its own earlier attempt).
    fn batch_attempted(&self, first: i64, last: i64) -> IndexResult<bool>;
    /// Records not yet uploaded, oldest first, at most `limit`.
    fn pending_journal(&self, limit: usize) -> IndexResult<Vec<Record>>;
    /// Records up to `last_seq` (`n` of them) are in the bucket.
    fn journal_sent(&self, last_seq: i64, n: u64) -> IndexResult<()>;
    /// What the decision to take a snapshot weighs (see [`SnapshotDue`]).
    fn snapshot_due(&self) -> IndexResult<SnapshotDue>;
    /// A snapshot of the index as it is on disk now, sealed in a temporary file (see
    /// `SnapshotFile`), stamped with a time after every record it reflects.
    fn write_snapshot(&self, machine: &str) -> IndexResult<SnapshotFile>;
    /// The snapshot (`entries` entries, `bytes` bytes) is in the bucket.
    fn snapshot_taken(&self, entries: u64, bytes: u64) -> IndexResult<()>;
}

/// The index's snapshot bookkeeping, from which `flush` decides whether one is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDue {
    /// Records uploaded since the last snapshot.
    pub since: u64,
    /// When the last snapshot was taken (ms; the first use of the index if none was).
    pub last_ms: i64,
    /// Entries the last snapshot held.
    pub last_entries: u64,
}

/// A sealed snapshot waiting to be uploaded: an unnamed temporary file (gone when dropped).
pub struct SnapshotFile {
    pub file: std::fs::File,
    /// Bytes of the sealed object.
    pub len: u64,
    /// This machine's journal records up to this one are reflected.
    pub covers_seq: i64,
    /// Entries (files, folders, links) it holds.
    pub entries: u64,
}

/// Why a journal flush (or the snapshot it takes) failed. `Display` is what was logged and
/// answered to `flush --wait` before this was a type.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The index could not say or record what is pending or sent.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The snapshot could not be written to its temporary file.
    #[error("snapshot: {0}")]
    Snapshot(IndexError),
    /// The bucket refused or failed a batch or a snapshot.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the journal uploader works with besides the index: where it uploads, with which keys,
/// and what it tells the rest of the daemon.
pub struct JournalEnv {
    pub store: Arc<dyn ObjectStore>,
    pub keys: Arc<VaultKeys>,
    /// This machine's signing key (journal batches and snapshots are signed with it).
    pub signer: Arc<MachineSigner>,
    /// Key prefix of this vault in the bucket.
    pub prefix: String,
    /// Notified when the journal should go up now.
    pub wakeup: Arc<Notify>,
    /// Journal batches and snapshots that reached the bucket (counted for `status`).
    pub uploaded: Arc<AtomicU64>,
}

/// The journal task: uploads pending journal records in batches, snapshots the index now and
/// then, and compacts. One per daemon: the task (`run`), `flush --wait` and unmount share it,
/// and its lock lets one of them upload at a time.
pub struct JournalUploader {
    index: Arc<dyn JournalIndex>,
    env: JournalEnv,
    cfg: JournalConfig,
    /// Held by whoever is uploading the journal (the task, `flush`, unmount): one at a time.
    lock: tokio::sync::Mutex<()>,
    /// The store refused a compaction's delete (a `mount` policy grants no Delete): not tried
    /// again by this mount, said once.
    no_delete: std::sync::atomic::AtomicBool,
}

impl JournalUploader {
    pub fn new(index: Arc<dyn JournalIndex>, env: JournalEnv, cfg: JournalConfig) -> JournalUploader {
        JournalUploader { index, env, cfg, lock: tokio::sync::Mutex::new(()), no_delete: Default::default() }
    }

    /// Upload now, then at every wakeup or `interval`, until `stop` (with one last upload).
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let stopping = *stop.borrow();
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "journal upload failed; will retry");
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = self.env.wakeup.notified() => {}
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Upload every pending entry (and a snapshot if one is due). Returns entries uploaded.
    pub async fn flush(&self) -> Result<usize, JournalError> {
        let _guard = self.lock.lock().await; // one flusher at a time (task, `flush`, unmount)
        let fs = self.index.as_ref();
        let machine = fs.machine()?;
        let mut sent = 0;
        loop {
            let mut recs: Vec<Record> = fs.pending_journal(BATCH)?;
            if recs.is_empty() {
                break;
            }
            // At most `BATCH_BYTES` of records (at least one): a rebuild reads no batch larger
            // than `MAX_BATCH_BYTES` (review N3, N4).
            let mut bytes = 0;
            let fit = recs.iter().position(|r| {
                bytes += serde_json::to_vec(r).map_or(0, |v| v.len());
                bytes > BATCH_BYTES
            });
            recs.truncate(fit.unwrap_or(recs.len()).max(1));
            let last = recs.last().map(|r| r.seq).unwrap_or(0);
            let first = recs.first().map(|r| r.seq).unwrap_or(0);
            let n = recs.len();
            let again = fs.batch_attempted(first, last)?;
            let key = match self.sink().put_batch_attempt(&machine, recs, again).await {
                Ok(k) => k,
                Err(e) => {
                    if matches!(&e, StoreError::Permanent { code, .. } if code == "JournalFork") {
                        if let Err(x) = fs.journal_forked() {
                            tracing::error!(error = %x, "could not record that this machine's journal forked");
                        }
                    }
                    return Err(e.into());
                }
            };
            fs.journal_sent(last, n as u64)?;
            self.uploaded_one();
            tracing::debug!(key, entries = n, "journal batch uploaded");
            sent += n;
        }
        let due = fs.snapshot_due()?;
        // A snapshot costs work and bytes in proportion to the whole index, so the next one waits
        // for records amounting to half the last one (and at least `snapshot_every`): copying a
        // million files in then costs a few snapshots, not one per 10,000 files, and a rebuild
        // replays at most half a snapshot's worth of records on top of it.
        let every = self.cfg.snapshot_every.max(due.last_entries / 2);
        if due.since > 0 && (due.since >= every || now_ms() - due.last_ms >= self.cfg.snapshot_max_age.as_millis() as i64) {
            // Every record is in the bucket by now: a snapshot is a shortcut for rebuilds, so one
            // that cannot be written (a staging disk too full for it) or sent is logged and tried
            // again at the next flush, and never fails this one (`flush --wait` would report an
            // error although every change is in the bucket).
            if let Err(e) = self.snapshot(&machine).await {
                tracing::warn!(error = %e, "index snapshot not taken; journal batches are all uploaded, a rebuild replays them");
            }
        }
        Ok(sent)
    }

    /// Take, upload and record one snapshot, then compact the journal it covers.
    async fn snapshot(&self, machine: &str) -> Result<(), JournalError> {
        let fs = self.index.as_ref();
        // Seconds of reading the index for a large one: off the runtime's worker threads.
        let t = std::time::Instant::now();
        let snap = super::off_runtime(|| fs.write_snapshot(machine)).map_err(JournalError::Snapshot)?;
        let (covers_seq, files, bytes) = (snap.covers_seq, snap.entries, snap.len);
        let written_ms = t.elapsed().as_millis() as u64;
        let key = self.sink().put_snapshot(machine, covers_seq, &snap.file, snap.len).await?;
        drop(snap);
        fs.snapshot_taken(files, bytes)?;
        self.uploaded_one();
        tracing::info!(
            key,
            files,
            bytes,
            covers_seq,
            written_ms,
            uploaded_ms = t.elapsed().as_millis() as u64 - written_ms,
            "index snapshot uploaded"
        );
        if !self.cfg.write_only && !self.no_delete.load(Ordering::Relaxed) {
            match compact(self.env.store.as_ref(), &self.env.prefix, machine, covers_seq).await {
                Ok(n) => tracing::info!(removed = n, "journal compacted"),
                Err(StoreError::Permanent { code, .. }) if code == "AccessDenied" => {
                    self.no_delete.store(true, Ordering::Relaxed);
                    tracing::info!(
                        "no delete rights (the `mount` policy): older snapshots stay in the bucket until someone with `admin` rights removes them"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "journal compaction failed (needs s3:ListBucket and s3:DeleteObject)"),
            }
        }
        Ok(())
    }

    /// A journal batch or snapshot reached the bucket.
    fn uploaded_one(&self) {
        self.env.uploaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Where this machine's batches and snapshots go, signed with its key.
    fn sink(&self) -> MetaSink<'_> {
        MetaSink { store: self.env.store.as_ref(), keys: &self.env.keys, signer: Some(&self.env.signer), prefix: &self.env.prefix }
    }
}
