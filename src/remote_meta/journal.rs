//! The journal task: uploads pending journal entries in batches, snapshots the index now and
//! then, and compacts what the snapshot makes redundant (when the credentials allow deletes).

use super::{compact, put_batch, put_snapshot, Record, Snapshot};
use crate::fs::{now_ms, Fs};
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

pub async fn run(fs: Arc<Fs>, cfg: JournalConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = *stop.borrow();
        if let Err(e) = flush(&fs, &cfg).await {
            tracing::warn!(error = %e, "journal upload failed; will retry");
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = fs.journal_wakeup.notified() => {}
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Upload every pending entry (and a snapshot if one is due). Returns entries uploaded.
pub async fn flush(fs: &Arc<Fs>, cfg: &JournalConfig) -> Result<usize, String> {
    let _guard = fs.journal_lock.lock().await; // one flusher at a time (task, `flush`, unmount)
    let machine = fs.machine_id().map_err(|e| e.to_string())?;
    let mut sent = 0;
    loop {
        let recs: Vec<Record> = fs.pending_journal(BATCH).map_err(|e| e.to_string())?;
        if recs.is_empty() {
            break;
        }
        let last = recs.last().map(|r| r.seq).unwrap_or(0);
        let n = recs.len();
        let key = put_batch(fs.store.as_ref(), &fs.keys, &fs.cfg.prefix, &machine, recs).await.map_err(|e| e.to_string())?;
        fs.journal_sent(last, n as u64).map_err(|e| e.to_string())?;
        fs.meta_uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(key, entries = n, "journal batch uploaded");
        sent += n;
    }
    let (since, last_ms) = fs.snapshot_due().map_err(|e| e.to_string())?;
    if since > 0 && (since >= cfg.snapshot_every || now_ms() - last_ms >= cfg.snapshot_max_age.as_millis() as i64) {
        let (tree, covers_seq) = fs.export_tree().map_err(|e| e.to_string())?;
        let dead_keys = fs.dead_keys().map_err(|e| e.to_string())?;
        let seen = fs.snapshot_seen(&machine, covers_seq).map_err(|e| e.to_string())?;
        let ts_ms = fs.clock_ms().map_err(|e| e.to_string())?;
        let s = Snapshot { machine: machine.clone(), covers_seq, ts_ms, entries: tree.to_entries(), dead_keys, seen };
        let key = put_snapshot(fs.store.as_ref(), &fs.keys, &fs.cfg.prefix, &s).await.map_err(|e| e.to_string())?;
        fs.snapshot_taken(covers_seq).map_err(|e| e.to_string())?;
        fs.meta_uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(key, files = s.entries.len(), covers_seq, "index snapshot uploaded");
        if !cfg.write_only {
            match compact(fs.store.as_ref(), &fs.cfg.prefix, &machine, covers_seq).await {
                Ok(n) => tracing::info!(removed = n, "journal compacted"),
                Err(e) => tracing::warn!(error = %e, "journal compaction failed (needs s3:ListBucket and s3:DeleteObject)"),
            }
        }
    }
    Ok(sent)
}
