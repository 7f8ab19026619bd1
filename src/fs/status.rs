//! What `coldvault status` and `flush --wait` report: pending, failed and uploaded files, requests, restores.

use super::{Fs, Result};
use crate::meta::State;

/// How many upload failures `status` lists.
const MAX_FAILURES_SHOWN: usize = 100;

/// How many of a rebuild's conflicts the index keeps for `status` (all are in the mount's log).
pub const MAX_CONFLICTS_KEPT: usize = 100;

impl Fs {
    // ------------------------------------------------------------------ status

    pub fn status(&self) -> Result<Status> {
        // The counts read every file's row (sums of sizes): through a read view of their own,
        // without the lock every file operation takes (review N18).
        let view = self.core().db.read_view()?;
        let counts = view.counts()?;
        drop(view);
        let c = self.core();
        let crate::meta::Counts {
            pending_files,
            pending_bytes,
            uploaded_files,
            uploaded_bytes,
            failed_files,
            local_only_files,
            dirty_files,
            queued_uploads,
        } = counts;
        // The first failures, not all: a long outage can leave every queued upload with an
        // error, and the queue can hold a million files (`failed_files` counts them all).
        let mut failures: Vec<FailureInfo> =
            c.db.upload_failures(MAX_FAILURES_SHOWN)?
                .into_iter()
                .map(|(path, state, attempts, error)| FailureInfo { path, state, attempts, error })
                .collect();
        for (ino, f) in self.sealer.failures() {
            if c.db.get(ino)?.is_some_and(|i| i.content_gen == f.gen && i.state == State::Dirty) {
                let path = c.db.path_of(ino).unwrap_or_default();
                failures.push(FailureInfo { path, state: "sealing".into(), attempts: f.attempts, error: f.error });
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
            journal_pending: c.db.journal_len()?,
            machine_token: self.signer.token(),
            conflicts: c.db.setting("rebuild_conflicts")?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default(),
            conflicts_total: c.db.setting("rebuild_conflicts_total")?.and_then(|n| n.parse().ok()).unwrap_or(0),
            restores: c
                .db
                .restores()?
                .into_iter()
                .map(|r| RestoreInfo {
                    path: c.db.path_of(r.ino).unwrap_or_default(),
                    state: r.state.as_str().to_string(),
                    class: r.class.to_string(),
                    tier: r.tier.to_string(),
                    size: r.size,
                    requested_at: crate::clock::fmt_ms(r.requested_ms),
                    expected_ready_by: crate::clock::fmt_ms(r.expected_ms),
                    available_until: r.expiry_text,
                    reason: r.reason,
                })
                .collect(),
        })
    }

    /// Inode numbers whose content is not yet in S3 (dirty, in the outbox, or failed).
    pub fn pending_inodes(&self) -> Result<Vec<u64>> {
        Ok(self.core().db.inos_in_state(&[State::Dirty, State::Sealed, State::Uploading, State::Failed])?)
    }

    /// The state of each of `inos` (None: gone), reading a chunk at a time under the lock so
    /// that a flush waiting on a million files never holds it for long.
    pub fn states_of(&self, inos: &[u64]) -> Result<Vec<Option<State>>> {
        let mut out = Vec::with_capacity(inos.len());
        for chunk in inos.chunks(512) {
            let c = self.core();
            for &ino in chunk {
                out.push(c.db.state(ino)?);
            }
        }
        Ok(out)
    }

    /// What `flush --wait` needs to know of each of `inos` (None: gone), a chunk at a time
    /// under the lock, as `states_of`.
    pub fn flush_view(&self, inos: &[u64]) -> Result<Vec<Option<FlushView>>> {
        let mut out = Vec::with_capacity(inos.len());
        for chunk in inos.chunks(512) {
            let c = self.core();
            for &ino in chunk {
                out.push(c.db.get(ino)?.map(|i| FlushView {
                    state: i.state,
                    orphan: i.parent == 0,
                    open_for_write: c.open.get(&ino).is_some_and(|o| o.writers > 0),
                }));
            }
        }
        Ok(out)
    }

    /// "path: state (last error)" for the first `max` of `inos` still pending, and a count of
    /// the rest: what a flush that timed out names.
    pub fn describe_pending(&self, inos: &[u64], max: usize) -> Vec<String> {
        let c = self.core();
        let mut out = Vec::new();
        let mut more = 0;
        for &ino in inos {
            let Ok(Some(i)) = c.db.get(ino) else { continue };
            if out.len() >= max {
                more += 1;
                continue;
            }
            let err = c.db.uploads_for_ino(ino).ok().and_then(|u| u.into_iter().find_map(|u| u.last_error));
            let open = if c.open.get(&ino).is_some_and(|o| o.writers > 0) { ", open for writing" } else { "" };
            let path = c.db.path_of(ino).unwrap_or_default();
            out.push(match err {
                Some(e) => format!("  {path}: {}{open} (last error: {e})", i.state.as_str()),
                None => format!("  {path}: {}{open}", i.state.as_str()),
            });
        }
        if more > 0 {
            out.push(format!("  … and {more} more"));
        }
        out
    }

    pub fn state_of(&self, ino: u64) -> Result<Option<(i64, State)>> {
        Ok(self.core().db.get(ino)?.map(|i| (i.content_gen, i.state)))
    }

    /// Multipart parts recorded in the journal, over all uploads (tests and status).
    pub fn parts_recorded(&self) -> usize {
        let c = self.core();
        c.db.parts_count().unwrap_or(0) as usize
    }

    pub fn open_writers(&self) -> usize {
        self.core().open.values().filter(|o| o.writers > 0).count()
    }
}

/// One pending file as `flush --wait` sees it.
#[derive(Debug, Clone, Copy)]
pub struct FlushView {
    pub state: State,
    /// Deleted while open: never uploaded.
    pub orphan: bool,
    /// Held open for writing: sealed only once closed.
    pub open_for_write: bool,
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
    /// This machine's id and signing key (`coldvault machine allow` takes it on a full machine).
    #[serde(default)]
    pub machine_token: String,
    /// What the rebuild this index was made by found two machines disagreeing on, and how it
    /// was settled (conflict copies; docs/SEMANTICS.md, "Several machines"): the first
    /// `MAX_CONFLICTS_KEPT`, and how many there were.
    #[serde(default)]
    pub conflicts: Vec<String>,
    #[serde(default)]
    pub conflicts_total: u64,
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
