//! The vault's vocabulary: the typed values every layer speaks of, in one leaf module that
//! imports nothing else of the crate.
//!
//! * [`StorageClass`] — where an object's bytes sit, with the one answer to "does reading it
//!   need a restore first?" ([`StorageClass::needs_restore`]).
//! * [`Tier`] — how fast (and at what price) a restore runs.
//! * [`RState`] and [`Restore`] — a restore as the index keeps it.
//! * [`UploadState`] — where a queued upload stands.
//! * [`Special`] — a FIFO, socket or device node, as the index and the journal write it.
//! * [`header`] — the fields of a sealed object's header that other layers look at.
//!
//! Every type here keeps the text it is stored as (index columns, journal JSON, status files):
//! `parse(x.as_str()) == x`, so changing a type never changes a byte on disk or in the bucket.

pub mod class;
pub mod header;
pub mod restore;
pub mod special;

pub use class::{ItArchive, StorageClass, Tier, UnknownClass};
pub use restore::{RState, Restore};
pub use special::Special;

/// Where a queued upload stands (the `uploads.state` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// Waiting for its turn or for its next retry (`next_try_ms`).
    Queued,
    /// Taken by the uploader; back to `Queued` at start-up if the daemon stopped meanwhile.
    Uploading,
    /// Refused for good (the error is recorded); `coldvault retry` queues it again.
    Failed,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Queued => "queued",
            UploadState::Uploading => "uploading",
            UploadState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<UploadState> {
        Some(match s {
            "queued" => UploadState::Queued,
            "uploading" => UploadState::Uploading,
            "failed" => UploadState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for UploadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fresh object key for a version: 128 random bits under the vault's data prefix. Keys are
/// never reused and never contain a name (docs/FORMAT.md).
pub fn new_object_key(prefix: &str) -> String {
    let id: [u8; 16] = rand::random();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}d/{hex}")
}

#[cfg(test)]
mod tests;
