//! Metadata in the bucket: the journal of namespace changes, index snapshots, and the replay
//! that rebuilds the tree from them — so the bucket alone (plus the passphrase) is a complete
//! backup, and write-only machines can still describe what they did.
//!
//! * Every namespace change (upload completed, mkdir, symlink, rename, remove, attribute or
//!   xattr change) is appended to the `journal` table in the same lock as the change itself.
//! * The journal task (`run`) uploads pending entries as one encrypted object per batch,
//!   `P j/<machine>/<first seq>-<last seq>`, every `journal_interval` or 1,000 entries, on
//!   `flush` and at unmount. Re-uploading a batch after a crash writes the same key.
//! * After `snapshot_every` entries, or half as many as the last snapshot had if that is more
//!   (and at least daily while changes happen), the whole index is uploaded as
//!   `P s/<machine>/<covered seq>`; with delete rights, older snapshots of this machine are
//!   then removed (compaction). Journal batches are never removed: they are the vault's
//!   history (`history`).
//! * Replay (`Tree::apply`) = latest snapshot per machine + later batches in order + objects in
//!   `P d/` that no entry mentions (uploads whose journal batch was lost), read with HeadObject
//!   (works on archived objects too; nothing is restored).
//!
//! All objects use the file format of docs/FORMAT.md (sealed to the vault public key), so a
//! write-only mount can write them and only the passphrase can read them.
//!
//! The code, by concern:
//! * `model`: the vocabulary of the objects (`Entry`, `Record`, `Batch`, `Snapshot`) and the
//!   `Tree` they replay into, with the rules for what machines that had not seen each other's
//!   changes did (conflict copies, write-only ownership);
//! * `codec`: sealing and opening metadata objects (`seal_json`, `open_json`, `object_meta`)
//!   and writing a snapshot entry by entry (`SnapshotWriter`);
//! * `read`: streaming a snapshot into a tree; `trust`: which objects a rebuild believes;
//! * `rebuild`: the replay of the whole bucket (`rebuild`), and of every journal from its
//!   first record, cut at a time or following paths (`history`, whose types are in `history.rs`);
//! * `sink`: what a machine puts in the bucket (`MetaSink`, `put_file`) and `compact`;
//! * `journal`: the journal task.
//!
//! Here: the error of all of them, and the checks and key names they share.

use crate::crypto;
use crate::store::StoreError;
use std::collections::BTreeMap;

mod codec;
pub mod history;
pub mod journal;
mod model;
pub mod read;
mod rebuild;
pub mod remembered;
mod sink;
pub mod trust;

pub use codec::{object_meta, open_json, seal_json, SnapshotWriter};
pub use journal::JournalConfig;
pub use model::{Batch, Entry, Node, NodeKind, Record, Snapshot, Tree};
pub use rebuild::{history, lifetimes, rebuild, Progress};
pub use sink::{compact, put_file, MetaSink};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("S3: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {err}")]
    Crypto { what: String, err: crypto::CryptoError },
    #[error("{0}")]
    Malformed(String),
    #[error("this mount has no private key (write-only): it cannot read the bucket's metadata")]
    WriteOnly,
    /// A snapshot changed or vanished while being read (a machine replacing or compacting it):
    /// the rebuild starts over once, then reports this.
    #[error("{0}")]
    Changed(String),
    /// The vault's metadata cannot be believed as it is without the user's say: statements
    /// deleted from a vault that signs, or unsigned objects no one has adopted (review N1).
    #[error("{0}")]
    Untrusted(String),
}

/// A path from the bucket as it may be printed on a terminal: control characters (a forged name
/// could carry `\r` or escape sequences that hide or fake lines of output) are escaped.
pub fn shown(p: &str) -> std::borrow::Cow<'_, str> {
    if p.chars().any(char::is_control) {
        std::borrow::Cow::Owned(p.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect())
    } else {
        std::borrow::Cow::Borrowed(p)
    }
}

/// Refuse paths that could escape the vault or a restore directory.
pub fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.starts_with('/') {
        return Err(format!("absolute path {p:?}"));
    }
    if p.contains('\0') {
        return Err(format!("path with NUL {p:?}"));
    }
    if p.len() > crate::meta::MAX_PATH {
        return Err(format!("path longer than {} bytes", crate::meta::MAX_PATH));
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("path with an empty, '.' or '..' component {p:?}"));
        }
        if c.len() > crate::meta::MAX_NAME {
            return Err(format!("name longer than {} bytes in {p:?}", crate::meta::MAX_NAME));
        }
    }
    Ok(())
}

/// A version's object key, storage class, header and SHA-256 as an upload entry gives them, in
/// the forms coldvault writes: a data object's key (with `strict_key`, for a write-only
/// machine's entries: `…d/` and 32 or, in format 1, 64 hex digits, never another object of the
/// bucket for a mount to GET or restore; review L4), a class name, and a header that is 128
/// bytes when given — one that is not is no reason to trust the object's own, and neither is
/// an entry with neither header nor SHA-256 (review N9).
pub fn check_version(key: &str, class: &str, header: &str, sha256: &str, strict_key: bool) -> Result<(), String> {
    let tail = key.rsplit_once("d/").filter(|(before, _)| before.is_empty() || before.ends_with('/')).map(|(_, t)| t);
    let data_key = tail.is_some_and(|t| matches!(t.len(), 32 | 64) && t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if key.is_empty() || key.contains("..") || (strict_key && !data_key) {
        return Err(format!("{} is not a data object's key", shown(key)));
    }
    if class.is_empty() || class.len() > 64 || !class.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'/') {
        return Err(format!("storage class {:?} of {key}", shown(class)));
    }
    use base64::Engine as _;
    match header {
        "" if sha256.is_empty() => Err(format!("version {key} has neither a header nor a SHA-256 to check its content by")),
        "" => Ok(()),
        h if base64::engine::general_purpose::STANDARD.decode(h).is_ok_and(|b| b.len() == crypto::HEADER_LEN) => Ok(()),
        _ => Err(format!("version {key} has a header that is not 128 bytes of base64")),
    }
}

/// How far a read of the vault reached in each machine's journal (its highest record believed),
/// and which machines had a key revoked (the highest record of theirs still believed): what
/// the config's journal heads are checked against (review N8) and grow from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub seen: BTreeMap<String, i64>,
    pub revoked: BTreeMap<String, i64>,
    /// The revocations the read believed, as statement objects (`Trust::revocation_objects`):
    /// what the config keeps (`remembered`).
    pub revocations: BTreeMap<String, String>,
}

impl Reach {
    pub fn of(tree: &Tree) -> Reach {
        Reach { seen: tree.seen.clone(), revoked: tree.revoked.clone(), revocations: tree.revocations.clone() }
    }

    /// What this read says of a machine that remembered `heads` from an earlier one: one line
    /// per machine whose journal now ends before what it saw then (its newest batches were
    /// deleted: the vault is shown as it was before them). A revoked key's records past its
    /// revocation are not believed on purpose: its journal is expected to end there.
    pub fn rolled_back(&self, heads: &BTreeMap<String, i64>) -> Vec<String> {
        heads
            .iter()
            .filter_map(|(m, &h)| {
                let h = self.revoked.get(m).map_or(h, |&until| h.min(until));
                let now = self.seen.get(m).copied().unwrap_or(0);
                (now < h).then(|| {
                    format!(
                        "ROLLBACK: the bucket holds machine {m}'s journal up to record {now}, but this machine saw it up to record {h} before: its newest batches were deleted, and what they recorded is missing from what follows (enable Object Lock: docs/AWS.md)"
                    )
                })
            })
            .collect()
    }

    /// The heads to remember after this read, from `old`: each machine's highest record seen
    /// so far, never past what a revocation still believes.
    pub fn heads(&self, old: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
        let mut heads = old.clone();
        for (m, &q) in &self.seen {
            let h = heads.entry(m.clone()).or_insert(0);
            *h = (*h).max(q);
        }
        for (m, &until) in &self.revoked {
            if let Some(h) = heads.get_mut(m) {
                *h = (*h).min(until);
            }
        }
        heads
    }
}

/// Parse `P j/<machine>/<first>-<last>` and `P s/<machine>/<seq>` keys, in the one form
/// coldvault writes them (16 decimal digits each): `0-5` or `+3` would sort a forged batch
/// before the honest ones, or let one range have two keys.
pub fn parse_seq_key(rest: &str) -> Option<(String, i64, i64)> {
    let (machine, tail) = rest.split_once('/')?;
    if machine.is_empty() {
        return None;
    }
    let num = |s: &str| -> Option<i64> { (s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten() };
    match tail.split_once('-') {
        Some((a, b)) => Some((machine.to_string(), num(a)?, num(b)?)),
        None => {
            let s = num(tail)?;
            Some((machine.to_string(), s, s))
        }
    }
}

/// Whether a failed GET of a metadata object (batch or snapshot) stops the rebuild, to be run
/// again whole, rather than leave that object out: a transient error, expired credentials, or
/// a server that ignores ranges are not the object's fault. Anything else (gone, archived —
/// anyone who can put objects can put one in GLACIER, and a lifecycle rule may archive an old
/// snapshot —, refused) is reported with the object's name, and the rebuild goes on.
pub(super) fn stops_rebuild(e: &StoreError) -> bool {
    e.is_retryable() || matches!(e, StoreError::Permanent { code, .. } if code == "RangeIgnored")
}

/// Run blocking work (disk reads, a walk of the index) without stalling the runtime's other
/// tasks: `block_in_place` where the runtime allows it.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
