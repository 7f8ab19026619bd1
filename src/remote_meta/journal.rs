//! The journal task: uploads pending journal entries in batches, snapshots the index now and
//! then, and compacts what the snapshot makes redundant (when the credentials allow deletes).

use super::{compact, put_batch, put_snapshot, seal_json, EntriesOf, Record, SnapshotOf, Tree};
use crate::clock::now_ms;
use crate::crypto::VaultKeys;
use crate::meta::IndexResult;
use crate::store::ObjectStore;
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
    /// Key prefix of this vault in the bucket.
    fn prefix(&self) -> &str;
    /// Held by whoever is uploading the journal (the task, `flush`, unmount): one at a time.
    fn flush_lock(&self) -> &tokio::sync::Mutex<()>;
    /// Notified when the journal should go up now.
    fn wakeup(&self) -> &tokio::sync::Notify;
    /// A journal batch or snapshot reached the bucket (counted for `status`).
    fn uploaded_one(&self);
    /// This machine's id in the bucket's journal.
    fn machine(&self) -> IndexResult<String>;
    /// Records not yet uploaded, oldest first, at most `limit`.
    fn pending_journal(&self, limit: usize) -> IndexResult<Vec<Record>>;
    /// Records up to `last_seq` (`n` of them) are in the bucket.
    fn journal_sent(&self, last_seq: i64, n: u64) -> IndexResult<()>;
    /// Records sent since the last snapshot, when it was taken (ms), and how many entries it had.
    fn snapshot_due(&self) -> IndexResult<(u64, i64, u64)>;
    /// The live tree and the last journal record it reflects.
    fn tree(&self) -> IndexResult<(Tree, i64)>;
    /// Object keys no version uses any more.
    fn dead(&self) -> IndexResult<Vec<String>>;
    /// How far the snapshot has seen each machine's journal.
    fn snapshot_seen(&self, machine: &str, covers_seq: i64) -> IndexResult<std::collections::BTreeMap<String, i64>>;
    /// The time to stamp on a snapshot: never before anything already in the bucket.
    fn clock_ms(&self) -> IndexResult<i64>;
    fn snapshot_taken(&self, covers_seq: i64, entries: u64) -> IndexResult<()>;
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
        let key = put_batch(fs.store(), fs.keys(), fs.prefix(), &machine, recs).await.map_err(|e| e.to_string())?;
        fs.journal_sent(last, n as u64).map_err(|e| e.to_string())?;
        fs.uploaded_one();
        tracing::debug!(key, entries = n, "journal batch uploaded");
        sent += n;
    }
    let (since, last_ms, last_entries) = fs.snapshot_due().map_err(|e| e.to_string())?;
    // A snapshot costs work and memory in proportion to the whole index, so the next one waits
    // for records amounting to half the last one (and at least `snapshot_every`): copying a
    // million files in then costs a few snapshots, not one per 10,000 files, and a rebuild
    // replays at most half a snapshot's worth of records on top of it.
    let every = cfg.snapshot_every.max(last_entries / 2);
    if since > 0 && (since >= every || now_ms() - last_ms >= cfg.snapshot_max_age.as_millis() as i64) {
        let (tree, covers_seq) = fs.tree().map_err(|e| e.to_string())?;
        let dead_keys = fs.dead().map_err(|e| e.to_string())?;
        let seen = fs.snapshot_seen(&machine, covers_seq).map_err(|e| e.to_string())?;
        let ts_ms = fs.clock_ms().map_err(|e| e.to_string())?;
        let files = tree.nodes.len();
        let body =
            seal_json(fs.keys(), &SnapshotOf { machine: &machine, covers_seq, ts_ms, entries: EntriesOf(&tree), dead_keys: &dead_keys, seen: &seen });
        drop(tree);
        let key = put_snapshot(fs.store(), fs.prefix(), &machine, covers_seq, body).await.map_err(|e| e.to_string())?;
        fs.snapshot_taken(covers_seq, files as u64).map_err(|e| e.to_string())?;
        fs.uploaded_one();
        tracing::info!(key, files, covers_seq, "index snapshot uploaded");
        if !cfg.write_only {
            match compact(fs.store(), fs.prefix(), &machine, covers_seq).await {
                Ok(n) => tracing::info!(removed = n, "journal compacted"),
                Err(e) => tracing::warn!(error = %e, "journal compaction failed (needs s3:ListBucket and s3:DeleteObject)"),
            }
        }
    }
    Ok(sent)
}
