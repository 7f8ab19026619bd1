//! The restore task: sends recorded RestoreObject requests (once; 409 RestoreAlreadyInProgress
//! counts as sent), polls HeadObject for pending restores at a pace suited to the tier, flips
//! files to readable when S3 reports `ongoing-request="false"`, expires them after the
//! expiry date, optionally fetches restored objects, and periodically refreshes storage
//! classes with ListObjectsV2. All state is in the index, so it survives restarts.

use super::{poll_interval, RState, Restore, RestoreConfig};
use crate::clock::now_ms;
use crate::meta::IndexResult;
use crate::store::{ObjectStore, StoreError};
use crate::vault::StorageClass;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the restore task asks of the index: the restores recorded, storage classes, and where
/// a restored copy is kept. Only index operations; the store, the settings and the wakeup are
/// the [`Poller`]'s own.
pub trait RestoreIndex: Send + Sync {
    fn restores(&self) -> IndexResult<Vec<Restore>>;
    /// Save a restore's new state (dropped if its file was deleted or rewritten meanwhile).
    fn put_restore(&self, r: &Restore) -> IndexResult<()>;
    /// The object's storage class as a listing shows it; returns the files changed.
    fn set_class_by_key(&self, key: &str, class: &StorageClass) -> IndexResult<usize>;
    /// Where a local copy of this file's current version is kept (`--fetch-restored`), and
    /// what the index records of that version: its header and plaintext size.
    /// None once the file's version is no longer the one at `key` (rewritten since).
    fn restored_copy(&self, ino: u64, key: &str) -> Option<RestoredCopy>;
}

/// The restore task.
pub struct Poller {
    pub index: Arc<dyn RestoreIndex>,
    pub store: Arc<dyn ObjectStore>,
    pub cfg: RestoreConfig,
    /// Key prefix of this vault in the bucket.
    pub prefix: String,
    /// Notified when a restore is recorded and must be sent.
    pub wakeup: Arc<tokio::sync::Notify>,
}

/// The local copy of a restored version: where it goes, and what the object must be.
pub struct RestoredCopy {
    pub path: PathBuf,
    pub header: Vec<u8>,
    pub size: u64,
}

/// Bytes per ranged GET when fetching a restored object.
const FETCH_CHUNK: u64 = 8 << 20;

impl Poller {
    fn interval(&self, r: &Restore) -> i64 {
        self.cfg.poll_override.unwrap_or_else(|| poll_interval(r.tier)).as_millis() as i64
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut next_refresh = self.cfg.class_refresh.map(|d| tokio::time::Instant::now() + d);
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "restore poller");
            }
            if let Some(t) = next_refresh {
                if tokio::time::Instant::now() >= t {
                    self.refresh_classes().await;
                    next_refresh = self.cfg.class_refresh.map(|d| tokio::time::Instant::now() + d);
                }
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn tick(&self) -> IndexResult<()> {
        let now = now_ms();
        for mut r in self.index.restores()? {
            if r.next_check_ms > now {
                continue;
            }
            match r.state {
                RState::Requesting => self.send(&mut r).await,
                RState::InProgress => self.head(&mut r).await,
                RState::Ready => {
                    if r.expiry_ms.is_some_and(|e| e <= now) {
                        tracing::info!(ino = r.ino, "restored copy expired; the object is archived again");
                        r.state = RState::Expired;
                    } else if self.cfg.fetch_restored {
                        self.fetch(&mut r).await;
                    }
                    r.next_check_ms = r.expiry_ms.unwrap_or(i64::MAX).min(now + 3_600_000);
                }
                _ => continue,
            }
            self.index.put_restore(&r)?;
        }
        Ok(())
    }

    async fn send(&self, r: &mut Restore) {
        let now = now_ms();
        match self.store.restore_object(&r.object_key, r.days, r.tier.as_str()).await {
            Ok(()) | Err(StoreError::RestoreInProgress) => {
                tracing::info!(ino = r.ino, tier = %r.tier, "RestoreObject accepted");
                r.state = RState::InProgress;
                r.last_check_ms = now;
                r.next_check_ms = now + self.interval(r);
            }
            Err(StoreError::Permanent { code, .. }) if code == "InvalidObjectState" => {
                // Not archived (any more), S3 says: a HeadObject now confirms it (`apply_head`
                // makes it readable with the class it is in) rather than trusting the code
                // alone, which a server could use for another refusal.
                r.state = RState::InProgress;
                r.last_check_ms = now;
                r.next_check_ms = now;
            }
            Err(e) if e.is_retryable() => {
                r.attempts += 1;
                let backoff = (1000i64 << r.attempts.min(8)).min(300_000);
                tracing::warn!(ino = r.ino, error = %e, retry_in_ms = backoff, "RestoreObject failed; will retry");
                r.next_check_ms = now + backoff;
            }
            Err(e) => {
                tracing::error!(ino = r.ino, error = %e, "RestoreObject refused");
                r.state = RState::Failed;
                r.reason = Some(e.to_string());
            }
        }
    }

    async fn head(&self, r: &mut Restore) {
        let now = now_ms();
        match self.store.head_object(&r.object_key).await {
            Ok(h) => {
                super::apply_head(r, &h, now_ms());
                if r.state == RState::Ready {
                    tracing::info!(ino = r.ino, until = ?r.expiry_text, "restore complete; file readable");
                    if self.cfg.fetch_restored {
                        self.fetch(r).await; // at once: the restored copy may be short-lived
                    }
                } else {
                    r.next_check_ms = now + self.interval(r);
                }
            }
            Err(StoreError::NotFound) => {
                r.state = RState::Failed;
                r.reason = Some("the object no longer exists in the bucket".into());
            }
            Err(e) => {
                tracing::warn!(ino = r.ino, error = %e, "HeadObject for a pending restore failed");
                r.last_check_ms = now;
                r.next_check_ms = now + self.interval(r).min(60_000);
            }
        }
    }

    /// `--fetch-restored`: keep a local copy so the file stays readable after the restore expires.
    /// The object is copied in ranged GETs (memory does not grow with the file) and kept only if it
    /// is this version: the header the index recorded, and the length that goes with its size.
    /// Reads decrypt the copy under the index's header, so a segment changed since fails there.
    async fn fetch(&self, r: &mut Restore) {
        let Some(c) = self.index.restored_copy(r.ino, &r.object_key) else { return };
        if c.path.exists() {
            return;
        }
        let tmp = c.path.with_extension("tmp");
        match fetch_checked(self.store.as_ref(), &r.object_key, &c, &tmp).await {
            Ok(bytes) => tracing::info!(ino = r.ino, bytes, "restored object fetched into the local cache"),
            Err(FetchError::NotThisVersion(why)) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::error!(ino = r.ino, key = %r.object_key, "the restored object is not this file's version ({why}); not kept")
            }
            Err(FetchError::Store(e)) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(ino = r.ino, error = %e, "fetching the restored object failed; will retry")
            }
            Err(FetchError::Local(e)) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(ino = r.ino, error = %e, "could not keep the restored object locally")
            }
        }
    }
}

enum FetchError {
    NotThisVersion(String),
    Store(StoreError),
    Local(std::io::Error),
}

async fn fetch_checked(store: &dyn ObjectStore, key: &str, c: &RestoredCopy, tmp: &std::path::Path) -> Result<u64, FetchError> {
    use std::io::Write;
    let want = crate::crypto::encrypted_len(c.size);
    let mut f = std::fs::File::create(tmp).map_err(FetchError::Local)?;
    let mut at = 0u64;
    while at < want {
        let end = (at + FETCH_CHUNK).min(want);
        let b = store.get_range(key, at, end).await.map_err(FetchError::Store)?;
        if b.len() as u64 != end - at {
            return Err(FetchError::NotThisVersion(format!("{} bytes where {want} were expected", at + b.len() as u64)));
        }
        if at == 0 && b.get(..c.header.len()) != Some(&c.header[..]) {
            return Err(FetchError::NotThisVersion("another header".into()));
        }
        f.write_all(&b).map_err(FetchError::Local)?;
        at = end;
    }
    // Nothing beyond the expected length either: of the last byte and the one after it, only
    // the last exists. (A range starting past the end is answered 416 by S3.)
    match store.get_range(key, want - 1, want + 1).await {
        Ok(b) if b.len() == 1 => {}
        Ok(_) => return Err(FetchError::NotThisVersion(format!("longer than the {want} bytes expected"))),
        Err(e) => return Err(FetchError::Store(e)),
    }
    f.sync_all().map_err(FetchError::Local)?;
    std::fs::rename(tmp, &c.path).map_err(FetchError::Local)?;
    Ok(want)
}

impl Poller {
    /// ListObjectsV2 over the data prefix: learn lifecycle transitions without a HEAD per file.
    async fn refresh_classes(&self) {
        let prefix = format!("{}d/", self.prefix);
        match self.store.list(&prefix).await {
            Ok(entries) => {
                let mut changed = 0;
                for e in entries {
                    changed += self.index.set_class_by_key(&e.key, &StorageClass::parse(&e.storage_class)).unwrap_or(0);
                }
                tracing::info!(changed, "storage classes refreshed from the bucket listing");
            }
            Err(e) => tracing::warn!(error = %e, "storage-class refresh (ListObjectsV2) failed"),
        }
    }
}
