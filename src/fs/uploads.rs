//! The upload book: the uploader's view of the queue (due, retry, failed, parts) and committing
//! a finished version into the index. `UploadBook` holds the index, the staging area and the
//! counters it moves, nothing that reaches back into the filesystem: the uploader calls down
//! into it, never up into `Fs`.

use super::{index, now_ms, quota, seal, Core, Fs, Result};
use crate::crypto;
use crate::meta::Db;
use crate::meta::Inode;
use crate::meta::State;
use crate::meta::Upload;
use crate::staging::Staging;
use crate::store::ObjectStore;
use crate::store::StoreError;
use crate::sync::MutexGuard;
use crate::vault::header;
use crate::vault::UploadState;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::upload::{IndexResult, UploadQueue};
use std::sync::atomic::{AtomicU64, Ordering};

/// The queue of versions to upload, as the index holds it (`upload::UploadQueue`).
pub struct UploadBook {
    index: Arc<index::Index>,
    staging: Arc<Staging>,
    /// Told when staged bytes are released (a write refused over its quota looks again).
    quota: Arc<quota::Quota>,
    /// Bytes of uploaded objects kept locally for reads (`FsConfig::read_cache`).
    read_cache: u64,
    /// File versions that reached S3 since mount (`status`; tests check "uploaded once").
    landed: Arc<AtomicU64>,
    /// Tests: how many times the uploader tried to record an upload's start.
    #[cfg(test)]
    pub(super) mark_calls: AtomicU64,
}

impl UploadBook {
    pub(super) fn new(
        index: Arc<index::Index>,
        staging: Arc<Staging>,
        quota: Arc<quota::Quota>,
        read_cache: u64,
        landed: Arc<AtomicU64>,
    ) -> UploadBook {
        UploadBook {
            index,
            staging,
            quota,
            read_cache,
            landed,
            #[cfg(test)]
            mark_calls: AtomicU64::new(0),
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.index.core()
    }
}

/// Run `f` as one transaction: an upload row and its inode's state change together or not at
/// all (review N12: a crash between two autocommits left a `failed` row under a `sealed`
/// inode, which nothing advanced and `flush --wait` waited on for ever).
fn paired<T>(db: &Db, f: impl FnOnce(&Db) -> crate::meta::Result<T>) -> IndexResult<T> {
    db.op_begin()?;
    match f(db) {
        Ok(v) => {
            db.op_commit()?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.op_rollback();
            Err(e.into())
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
impl UploadBook {
    /// The upload queue as the index holds it.
    pub(crate) fn queued_uploads(&self) -> Vec<Upload> {
        self.core().db.uploads().unwrap()
    }
}

impl UploadQueue for UploadBook {
    fn outbox_path(&self, u: &Upload) -> PathBuf {
        seal::staged_version(&self.staging, u)
    }

    fn due_uploads(&self, limit: usize) -> IndexResult<Vec<Upload>> {
        self.index.check_clock(false)?;
        Ok(self.core().db.due_uploads(now_ms(), limit)?)
    }

    fn upload_exists(&self, id: i64) -> IndexResult<bool> {
        Ok(self.core().db.upload(id)?.is_some())
    }

    fn mark_uploading(&self, u: &Upload) -> IndexResult<()> {
        #[cfg(test)]
        self.mark_calls.fetch_add(1, Ordering::Relaxed);
        let c = self.core();
        paired(&c.db, |db| {
            db.set_upload_state(u.id, UploadState::Uploading, u.attempts, u.next_try_ms, u.last_error.as_deref())?;
            if let Some(mut i) = db.get(u.ino)? {
                if i.content_gen == u.content_gen && i.state.in_outbox() {
                    i.state = State::Uploading;
                    db.update(&i)?;
                }
            }
            Ok(())
        })
    }

    fn set_multipart(&self, id: i64, mp: Option<&str>) -> IndexResult<()> {
        Ok(self.core().db.set_mp_upload_id(id, mp)?)
    }

    /// Move a queued version to a fresh object key (its key turned out to be occupied): the
    /// multipart upload, if any, belonged to the old key and starts over; it is returned (old
    /// key, upload id) for the uploader to abort.
    fn rekey_upload(&self, id: i64, key: &str) -> IndexResult<Option<(String, String)>> {
        let c = self.core();
        let old = c.db.upload(id)?.and_then(|u| u.mp_upload_id.map(|mp| (u.object_key, mp)));
        paired(&c.db, |db| {
            db.set_mp_upload_id(id, None)?;
            db.set_upload_key(id, key)
        })?;
        Ok(old)
    }

    fn record_part(&self, id: i64, part: i32, etag: &str) -> IndexResult<()> {
        Ok(self.core().db.add_part(id, part, etag)?)
    }

    fn parts(&self, id: i64) -> IndexResult<Vec<(i32, String)>> {
        Ok(self.core().db.parts(id)?)
    }

    fn upload_retry(&self, u: &Upload, err: &StoreError, delay: Duration) -> IndexResult<()> {
        let c = self.core();
        paired(&c.db, |db| {
            db.set_upload_state(u.id, UploadState::Queued, u.attempts + 1, now_ms() + delay.as_millis() as i64, Some(&err.to_string()))?;
            if let Some(mut i) = db.get(u.ino)? {
                if i.content_gen == u.content_gen && i.state == State::Uploading {
                    i.state = State::Sealed;
                    db.update(&i)?;
                }
            }
            Ok(())
        })
    }

    fn upload_failed(&self, u: &Upload, err: &StoreError) -> IndexResult<()> {
        let c = self.core();
        paired(&c.db, |db| {
            db.set_upload_state(u.id, UploadState::Failed, u.attempts + 1, i64::MAX, Some(&err.to_string()))?;
            if let Some(mut i) = db.get(u.ino)? {
                if i.content_gen == u.content_gen && i.state.in_outbox() {
                    i.state = State::Failed;
                    db.update(&i)?;
                }
            }
            Ok(())
        })
    }

    /// The objects are durable in S3: record them, in one transaction (the pages their rows
    /// share go to the WAL once), and release the local copies.
    fn complete_uploads(&self, ups: &[Upload]) -> IndexResult<()> {
        let mut guard = self.core();
        let c = &mut *guard;
        // Read first (nothing else writes: the lock is held throughout), then write in one
        // transaction. A file has one live upload at a time (a rewrite cancels the older one).
        let mut todo = Vec::with_capacity(ups.len());
        for u in ups {
            if c.db.upload(u.id)?.is_none() {
                continue; // cancelled (rewritten or deleted) while in flight
            }
            let cur = c.db.get(u.ino)?;
            let cur_path = if cur.is_some() { c.db.path_of(u.ino).ok() } else { None };
            // Older versions of the file still queued (kept going through a rewrite, N9): this
            // one supersedes them once it lands.
            let older: Vec<Upload> = c.db.uploads_for_ino(u.ino)?.into_iter().filter(|r| r.content_gen < u.content_gen).collect();
            todo.push((u, cur, cur_path, older));
        }
        let (mut done, mut live) = (Vec::with_capacity(todo.len()), 0);
        let mut retired: Vec<Upload> = Vec::new();
        let mut retired_ids: HashSet<i64> = HashSet::new();
        let tx = c.db.begin()?;
        for (u, cur, cur_path, older) in todo {
            if retired_ids.contains(&u.id) {
                continue; // superseded by a newer version completed in this batch
            }
            Db::delete_upload(&tx, u.id)?;
            if let Some(mut i) = cur {
                let superseded = u.content_gen < i.content_gen && i.state != State::Uploaded && i.parent != 0;
                let current = i.content_gen == u.content_gen && i.state.in_outbox();
                let path = cur_path.clone().unwrap_or_else(|| u.path.clone());
                if superseded {
                    // A version kept going while the file was rewritten: it is the file's newest
                    // in the bucket until the pending one lands (a rebuild meanwhile shows it).
                    match Self::superseded_version(&tx, &mut i, u, path) {
                        Ok(()) => live += 1,
                        Err(e) => {
                            tracing::warn!(upload = u.id, error = %e, "a superseded version landed but cannot be recorded; discarded");
                            Fs::discard_key(&tx, &u.object_key)?;
                        }
                    }
                } else if current {
                    let v = crate::meta::Version::of(&i, &u.object_key, &u.storage_class, &u.sha256, &u.header);
                    Self::record_version(&tx, &i, &v, path)?;
                    i.state = State::Uploaded;
                    i.object_key = Some(u.object_key.clone());
                    i.storage_class = Some(u.storage_class.clone());
                    i.header = Some(u.header.clone());
                    i.sha256 = Some(u.sha256.clone());
                    // This machine's version now (its upload record says so in a replay too).
                    i.owner = None;
                    Db::save(&tx, &i)?;
                    // A restore of the previous version means nothing for the new one.
                    Db::delete_restore(&tx, i.ino)?;
                    live += 1;
                } else {
                    // A version superseded while it was uploading: its object is in the bucket but
                    // no file uses it.
                    Fs::discard_key(&tx, &u.object_key)?;
                }
                if superseded || current {
                    // The older versions still queued are retired by this one.
                    let pending: Vec<Upload> = older.into_iter().filter(|r| !retired_ids.contains(&r.id)).collect();
                    Fs::discard_uploads(&tx, &pending)?;
                    retired_ids.extend(pending.iter().map(|r| r.id));
                    retired.extend(pending);
                }
            } else {
                Fs::discard_key(&tx, &u.object_key)?;
            }
            done.push(u);
        }
        tx.commit().map_err(crate::meta::MetaError::from)?;
        for u in &retired {
            for p in self.staging.version_files(u.ino, u.content_gen) {
                Fs::remove_when_durable(c, p);
            }
        }
        // Staging space freed: a write refused over its quota reads its owner's use again.
        self.quota.released();
        self.landed.fetch_add(live, Ordering::Relaxed);
        // Review N4: the moves below are renames the filesystem may persist before the commit
        // above; a power cut between them found the file dirty with its spool gone into the
        // read cache, emptied it and uploaded the empty version. The commit is made durable
        // first (one WAL fsync per batch, only with a read cache).
        if self.read_cache > 0 && done.iter().any(|u| u.enc_size <= self.read_cache) {
            self.staging.syncfs()?;
            c.db.sync()?;
        }
        for u in done {
            // Still under the lock: a reader that sees `uploaded` must find the read-cache copy.
            // (A power cut that loses this commit finds the kept copy in the read cache and moves
            // it back, `recover`.) Without a read cache the frozen file goes once the commit is
            // durable: until then the index on disk may still need it.
            if self.read_cache > 0 && u.enc_size <= self.read_cache {
                for p in self.staging.keep_in_read_cache(u.ino, u.content_gen, header::commitment(&u.header), self.read_cache) {
                    Fs::remove_when_durable(c, p);
                }
            } else {
                for p in self.staging.version_files(u.ino, u.content_gen) {
                    Fs::remove_when_durable(c, p);
                }
            }
        }
        Ok(())
    }
}

impl UploadBook {
    /// Record `u`, a version that landed after its file was rewritten, as the file's newest
    /// version in the bucket (journal, versions, dead keys), inside the completion's
    /// transaction; the file itself stays as it is (its newer content pending).
    fn superseded_version(tx: &rusqlite::Connection, i: &mut Inode, u: &Upload, path: String) -> IndexResult<()> {
        let dk = u.dk.as_ref().ok_or("no data key (an outbox file of an earlier build)")?;
        let md: Vec<(String, String)> = serde_json::from_str(&u.metadata)?;
        let cvm = md.iter().find(|(k, _)| k == "cvm").ok_or("no cvm metadata")?;
        let m = crypto::VersionCipher::resume(&dk.0, &u.header, u.size)?.decrypt_meta(&B64.decode(&cvm.1)?)?;
        // The version as it was sealed, not as the file is now.
        let sealed = Inode { size: u.size, mtime_ns: m.mtime_ns, mode: m.mode, uid: m.uid, gid: m.gid, ..i.clone() };
        let v = crate::meta::Version::of(&sealed, &u.object_key, &u.storage_class, &u.sha256, &u.header);
        Self::record_version(tx, i, &v, path)?;
        // The file's last uploaded version (what its next completion retires); its state,
        // size and digest stay those of its pending content.
        i.object_key = Some(u.object_key.clone());
        i.header = Some(u.header.clone());
        i.storage_class = Some(u.storage_class.clone());
        Db::save(tx, i)?;
        Ok(())
    }

    /// Version `v` of file `i` (as the index has it before this version) is in the bucket at
    /// `path`: every other version `i` has had is dead, `v` is kept, and journaled as an upload.
    fn record_version(tx: &rusqlite::Connection, i: &Inode, v: &crate::meta::Version, path: String) -> crate::meta::Result<()> {
        // What the path showed before this version, as this index knew it.
        let saw = Db::seen_key(tx, i)?;
        if let Some(old) = i.object_key.as_deref().filter(|k| *k != v.object_key) {
            Db::add_dead_key(tx, old)?;
        }
        // And every older version, including those of a file it was saved over.
        Db::kill_versions_of(tx, i.ino, Some(&v.object_key))?;
        let now = now_ms();
        Db::add_version(tx, v, now)?;
        Db::set_placed(tx, i.ino, now)?;
        let entry = crate::remote_meta::Entry::Upload {
            path,
            key: v.object_key.clone(),
            size: v.size,
            mtime_ns: v.mtime_ns,
            mode: v.mode,
            uid: v.uid,
            gid: v.gid,
            class: v.storage_class.to_string(),
            sha256: v.sha256.clone(),
            header: B64.encode(&v.header),
            xattrs: i.xattrs.clone(),
            saw: Some(saw).filter(|s| *s != v.object_key),
        };
        Db::journal_append(tx, now, &serde_json::to_string(&entry).expect("json"))
    }
}

/// What the daemon and the control socket ask of the queue.
impl Fs {
    /// Abort the vault's multipart uploads begun more than `older_than` ago that no queued
    /// upload of this machine resumes (review L6: a rekey, a restart after NoSuchUpload, a
    /// completion refused, or a crash between beginning one and recording it left them, and the
    /// bucket charged for their parts for ever). Another machine's upload is never that old
    /// while it runs: an attempt is abandoned after 24 h, and one resumed after an abort starts
    /// a new upload (NoSuchUpload). Returns how many were aborted.
    pub async fn sweep_multipart(&self, older_than: Duration) -> Result<usize> {
        let open = self.store.list_multipart(&self.cfg.prefix).await?;
        if open.is_empty() {
            return Ok(0);
        }
        let ours = self.core().db.multipart_ids()?;
        let before = now_ms() - older_than.as_millis() as i64;
        let mut n = 0;
        for m in open.iter().filter(|m| m.initiated_ms > 0 && m.initiated_ms < before && !ours.contains(&m.upload_id)) {
            match self.store.abort_multipart(&m.key, &m.upload_id).await {
                Ok(()) | Err(StoreError::NoSuchUpload) => n += 1,
                Err(e) => tracing::warn!(key = %m.key, error = %e, "could not abort an abandoned multipart upload"),
            }
        }
        if n > 0 {
            tracing::info!(aborted = n, "aborted multipart uploads abandoned for over a week (their parts were billed)");
        }
        Ok(n)
    }

    /// Requeue uploads parked as failed (after the user fixed credentials or the bucket).
    pub fn retry_failed(&self) -> Result<usize> {
        let c = self.core();
        let n = c.db.requeue_failed()?;
        drop(c);
        self.upload_wakeup.notify_one();
        Ok(n)
    }
}
