//! The journal task: uploads pending journal entries in batches, snapshots the index now and
//! then, and compacts what the snapshot makes redundant (when the credentials allow deletes).

use super::{compact, MetaSink, Record};
use crate::clock::now_ms;
use crate::crypto::VaultKeys;
use crate::meta::IndexResult;
use crate::store::{ObjectStore, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Entries per uploaded batch.
pub const BATCH: usize = 1000;

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

/// All the journal task knows of the rest of coldvault: the index's pending records, its
/// snapshot bookkeeping, and where to upload. The filesystem core implements it.
pub trait JournalIndex: Send + Sync {
    fn store(&self) -> &dyn ObjectStore;
    fn keys(&self) -> &VaultKeys;
    /// This machine's signing key (journal batches and snapshots are signed with it).
    fn signer(&self) -> &crate::crypto::sign::MachineSigner;
    /// Key prefix of this vault in the bucket.
    fn prefix(&self) -> &str;
    /// Held by whoever is uploading the journal (the task, `flush`, unmount): one at a time.
    fn flush_lock(&self) -> &tokio::sync::Mutex<()>;
    /// Notified when the journal should go up now.
    fn wakeup(&self) -> &tokio::sync::Notify;
    /// A journal batch or snapshot reached the bucket (counted for `status`).
    fn uploaded_one(&self);
    /// Another copy of this machine's cache dir wrote its journal (`MetaSink::put_batch`):
    /// the next mount takes a new machine id (`Fs::fork_check`).
    fn journal_forked(&self) -> IndexResult<()>;
    /// This machine's id in the bucket's journal.
    fn machine(&self) -> IndexResult<String>;
    /// Records not yet uploaded, oldest first, at most `limit`.
    fn pending_journal(&self, limit: usize) -> IndexResult<Vec<Record>>;
    /// Records up to `last_seq` (`n` of them) are in the bucket.
    fn journal_sent(&self, last_seq: i64, n: u64) -> IndexResult<()>;
    /// Records sent since the last snapshot, when it was taken (ms), and how many entries it had.
    fn snapshot_due(&self) -> IndexResult<(u64, i64, u64)>;
    /// A snapshot of the index as it is on disk now, sealed in a temporary file (see
    /// `SnapshotFile`), stamped with a time after every record it reflects.
    fn write_snapshot(&self, machine: &str) -> IndexResult<SnapshotFile>;
    /// The snapshot covering `covers_seq` (`entries` entries, `bytes` bytes) is in the bucket.
    fn snapshot_taken(&self, covers_seq: i64, entries: u64, bytes: u64) -> IndexResult<()>;
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

pub async fn run(fs: Arc<dyn JournalIndex>, cfg: JournalConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = *stop.borrow();
        if let Err(e) = flush(fs.as_ref(), &cfg).await {
            tracing::warn!(error = %e, "journal upload failed; will retry");
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = fs.wakeup().notified() => {}
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Upload every pending entry (and a snapshot if one is due). Returns entries uploaded.
pub async fn flush(fs: &dyn JournalIndex, cfg: &JournalConfig) -> Result<usize, String> {
    let _guard = fs.flush_lock().lock().await; // one flusher at a time (task, `flush`, unmount)
    let machine = fs.machine().map_err(|e| e.to_string())?;
    let mut sent = 0;
    loop {
        let recs: Vec<Record> = fs.pending_journal(BATCH).map_err(|e| e.to_string())?;
        if recs.is_empty() {
            break;
        }
        let last = recs.last().map(|r| r.seq).unwrap_or(0);
        let n = recs.len();
        let key = match sink(fs).put_batch(&machine, recs).await {
            Ok(k) => k,
            Err(e) => {
                if matches!(&e, StoreError::Permanent { code, .. } if code == "JournalFork") {
                    if let Err(x) = fs.journal_forked() {
                        tracing::error!(error = %x, "could not record that this machine's journal forked");
                    }
                }
                return Err(e.to_string());
            }
        };
        fs.journal_sent(last, n as u64).map_err(|e| e.to_string())?;
        fs.uploaded_one();
        tracing::debug!(key, entries = n, "journal batch uploaded");
        sent += n;
    }
    let (since, last_ms, last_entries) = fs.snapshot_due().map_err(|e| e.to_string())?;
    // A snapshot costs work and bytes in proportion to the whole index, so the next one waits
    // for records amounting to half the last one (and at least `snapshot_every`): copying a
    // million files in then costs a few snapshots, not one per 10,000 files, and a rebuild
    // replays at most half a snapshot's worth of records on top of it.
    let every = cfg.snapshot_every.max(last_entries / 2);
    if since > 0 && (since >= every || now_ms() - last_ms >= cfg.snapshot_max_age.as_millis() as i64) {
        // Every record is in the bucket by now: a snapshot is a shortcut for rebuilds, so one
        // that cannot be written (a staging disk too full for it) or sent is logged and tried
        // again at the next flush, and never fails this one (`flush --wait` would report an
        // error although every change is in the bucket).
        if let Err(e) = snapshot(fs, cfg, &machine).await {
            tracing::warn!(error = %e, "index snapshot not taken; journal batches are all uploaded, a rebuild replays them");
        }
    }
    Ok(sent)
}

/// Take, upload and record one snapshot, then compact the journal it covers.
async fn snapshot(fs: &dyn JournalIndex, cfg: &JournalConfig, machine: &str) -> Result<(), String> {
    // Seconds of reading the index for a large one: off the runtime's worker threads.
    let t = std::time::Instant::now();
    let snap = super::off_runtime(|| fs.write_snapshot(machine)).map_err(|e| format!("snapshot: {e}"))?;
    let (covers_seq, files, bytes) = (snap.covers_seq, snap.entries, snap.len);
    let written_ms = t.elapsed().as_millis() as u64;
    let key = sink(fs).put_snapshot(machine, covers_seq, &snap.file, snap.len).await.map_err(|e| e.to_string())?;
    drop(snap);
    fs.snapshot_taken(covers_seq, files, bytes).map_err(|e| e.to_string())?;
    fs.uploaded_one();
    tracing::info!(key, files, bytes, covers_seq, written_ms, uploaded_ms = t.elapsed().as_millis() as u64 - written_ms, "index snapshot uploaded");
    if !cfg.write_only {
        match compact(fs.store(), fs.prefix(), machine, covers_seq).await {
            Ok(n) => tracing::info!(removed = n, "journal compacted"),
            Err(e) => tracing::warn!(error = %e, "journal compaction failed (needs s3:ListBucket and s3:DeleteObject)"),
        }
    }
    Ok(())
}

/// Where this machine's batches and snapshots go, signed with its key.
fn sink<I: JournalIndex + ?Sized>(fs: &I) -> MetaSink<'_> {
    MetaSink { store: fs.store(), keys: fs.keys(), signer: Some(fs.signer()), prefix: fs.prefix() }
}
