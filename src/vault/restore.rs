//! A restore as the index keeps it (table `restores`): its state and what was asked.
//!
//! The `restore` module holds what restores cost and how long they take, the poller moves a
//! restore along; this is only the shared record, so that `meta` (which stores it) and
//! `restore` (which acts on it) need not know each other.

use super::{StorageClass, Tier};

/// States of a restore, as stored in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RState {
    /// Recorded; the RestoreObject request has not been accepted by S3 yet (retried).
    Requesting,
    /// S3 accepted the request and is thawing the object.
    InProgress,
    /// The restored copy is readable until `expiry_ms`.
    Ready,
    /// The restored copy expired; the object is archived again.
    Expired,
    /// Not requested: the cost guard or the indexer rule said no (reason recorded).
    Refused,
    /// S3 refused the request permanently (reason recorded).
    Failed,
}

impl RState {
    pub fn as_str(self) -> &'static str {
        match self {
            RState::Requesting => "requested",
            RState::InProgress => "in progress",
            RState::Ready => "ready",
            RState::Expired => "expired",
            RState::Refused => "refused",
            RState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<RState> {
        Some(match s {
            "requested" => RState::Requesting,
            "in progress" => RState::InProgress,
            "ready" => RState::Ready,
            "expired" => RState::Expired,
            "refused" => RState::Refused,
            "failed" => RState::Failed,
            _ => return None,
        })
    }
    /// A status file is shown while the restore is pending, ready, or was refused/failed.
    pub fn visible(self) -> bool {
        !matches!(self, RState::Expired)
    }
    pub fn pending(self) -> bool {
        matches!(self, RState::Requesting | RState::InProgress)
    }
}

/// One restore as the index holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Restore {
    pub ino: u64,
    pub object_key: String,
    pub state: RState,
    pub class: StorageClass,
    pub tier: Tier,
    pub days: Option<i32>,
    pub size: u64,
    pub requested_ms: i64,
    pub expected_ms: i64,
    pub expiry_ms: Option<i64>,
    pub expiry_text: Option<String>,
    pub last_check_ms: i64,
    pub next_check_ms: i64,
    pub attempts: i64,
    pub reason: Option<String>,
    /// Triggered by an open (counts against the daily budget) rather than `coldvault restore`.
    pub auto: bool,
}

impl Restore {
    /// Readable now: restored and not expired at `now_ms`.
    pub fn readable_at(&self, now_ms: i64) -> bool {
        self.state == RState::Ready && self.expiry_ms.is_none_or(|e| e > now_ms)
    }
}
