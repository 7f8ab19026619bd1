//! The staging quota: one user (the owner of the files being written) may have at most
//! `FsConfig::staging_quota` bytes of file content on the staging disk waiting for upload. A
//! write or truncate that would go beyond gets EDQUOT ("Disk quota exceeded"; Samba answers
//! NT_STATUS_DISK_FULL), so one writer — a Samba user dropping a huge folder, `truncate -s`
//! of a big size — cannot fill the staging disk for everyone, and what was written before
//! stays whole. It frees up as uploads complete.
//!
//! What a user has staged is read from the index (sizes of files not uploaded yet, plus what
//! open files have grown beyond that) once a second, and counted in memory between reads; a
//! write that would cross the quota reads it again first (at once if uploads completed since
//! the last reading, else at most every 100 ms), so uploads that completed meanwhile count. Writing into part of an uploaded file stages its old
//! content again: that is charged too. The charge goes to the file's owner: behind a Samba
//! share with `force user`, every client shares one quota.

use super::{Fs, FsError, Result};
use crate::meta::State;
use crate::sync::Mutex;
use std::collections::HashMap;

/// A user's staged bytes as last read from the index, and what writes added since.
struct Use {
    read: u64,
    added: u64,
    at: std::time::Instant,
    /// `Quota::staged_gen` at the reading: uploads completed since make it worth reading again.
    gen: u64,
}

/// How long a reading of a user's staged bytes is used before it is read again…
const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// …and at most how often it is read again while writes are refused (a reading sums the
/// user's staged files under the index lock).
const RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The staging quota's own state: what each user had staged at the last reading, and a count
/// of upload completions. Its lock is taken before `core` (a reading sums the user's staged
/// files under the index lock), never after.
pub(super) struct Quota {
    limit: Option<u64>,
    users: Mutex<HashMap<u32, Use>>,
    /// Bumped whenever uploads complete (staged files released): a reading taken before is
    /// worth taking again.
    staged_gen: std::sync::atomic::AtomicU64,
}

impl Quota {
    pub(super) fn new(limit: Option<u64>) -> Quota {
        Quota { limit, users: Mutex::new(HashMap::new()), staged_gen: Default::default() }
    }

    /// Uploads completed: staged bytes were released.
    pub(super) fn released(&self) {
        self.staged_gen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Charge `uid` for `grows` more bytes on the staging disk; EDQUOT beyond its quota.
    /// `staged` reads what the user has staged now (from the index).
    fn charge(&self, uid: u32, grows: u64, staged: impl FnOnce(u32) -> Result<u64>) -> Result<()> {
        let Some(quota) = self.limit else { return Ok(()) };
        if grows == 0 {
            return Ok(());
        }
        let mut q = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let gen = self.staged_gen.load(std::sync::atomic::Ordering::Relaxed);
        let stale = q.get(&uid).is_none_or(|u| {
            let age = u.at.elapsed();
            let over = u.read.saturating_add(u.added).saturating_add(grows) > quota;
            age > FRESH || (over && (age > RETRY || u.gen != gen))
        });
        if stale {
            let read = staged(uid)?;
            q.insert(uid, Use { read, added: 0, at: std::time::Instant::now(), gen });
        }
        let u = q.get_mut(&uid).expect("just read");
        let total = u.read.saturating_add(u.added).saturating_add(grows);
        if total > quota {
            tracing::warn!(
                uid,
                staged = u.read.saturating_add(u.added),
                quota,
                "refused a write over the user's staging quota (EDQUOT): it waits until uploads free staging space"
            );
            return Err(FsError::Quota(quota));
        }
        u.added += grows;
        Ok(())
    }
}

impl Fs {
    /// Charge `uid` for `grows` more bytes on the staging disk; EDQUOT beyond its quota.
    pub(super) fn charge(&self, uid: u32, grows: u64) -> Result<()> {
        self.quota.charge(uid, grows, |uid| self.staged_bytes(uid))
    }

    /// Bytes of `uid`'s files on the staging disk only: as the index records them, and what
    /// open files have grown beyond that.
    fn staged_bytes(&self, uid: u32) -> Result<u64> {
        let c = self.core();
        let mut n = c.db.staged_bytes_of(uid)?;
        for (ino, o) in c.open.iter().filter(|(_, o)| o.uid == uid && o.spool.is_some()) {
            let recorded =
                c.db.get(*ino)?
                    .filter(|i| matches!(i.state, State::Dirty | State::Local | State::Sealed | State::Uploading | State::Failed))
                    .map_or(0, |i| i.size);
            n = n.saturating_add(o.size.saturating_sub(recorded));
        }
        Ok(n)
    }
}
