//! Sealing: settled dirty files are frozen (their spool renamed into the outbox, no copy) with a
//! fresh object key, data key and header, and queued for upload; superseded uploads become dead
//! keys.
//!
//! `Sealer` owns what sealing needs and nothing else: the index, the staging area, the vault's
//! public key, the mount's class policy, prefix, settle time and ignore list, its own lock (one
//! sealer at a time) and the failures `status` shows. It never reads or writes the bucket.

use super::{index, now_ms, Core, Fs, FsConfig, FsError, Result, SEAL_HEADROOM, SEAL_MIN_ROOM};
use crate::crypto;
use crate::crypto::ObjectMeta;
use crate::meta::Db;
use crate::meta::State;
use crate::meta::Upload;
use crate::rules::ClassPolicy;
use crate::staging::Staging;
use crate::sync::Mutex;
use crate::sync::MutexGuard;
use crate::vault::UploadState;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a file's current content could not be sealed: its content generation, how many tries
/// failed in a row, and the last error (shown by `status`; `flush --wait` answers with it).
#[derive(Clone, Debug)]
pub(super) struct SealFailure {
    pub(super) gen: i64,
    pub(super) attempts: i64,
    pub(super) error: String,
}

pub(super) struct Sealer {
    index: Arc<index::Index>,
    staging: Arc<Staging>,
    /// The vault's public key: each version's data key is wrapped to it.
    vault: x25519_dalek::PublicKey,
    /// A closed file is sealed once it has been untouched this long.
    settle: Duration,
    /// Object key prefix inside the bucket.
    prefix: String,
    policy: ClassPolicy,
    /// File-name globs kept local and never uploaded.
    ignore: Vec<String>,
    /// Woken when an upload is queued (the uploader's wakeup).
    wakeup: Arc<tokio::sync::Notify>,
    /// One sealer at a time: the sealer thread and `flush` must never seal the same file
    /// concurrently (they would freeze one version under two data keys).
    one: Mutex<()>,
    /// Files whose last seal failed, by inode.
    failures: Mutex<HashMap<u64, SealFailure>>,
}

impl Sealer {
    pub(super) fn new(
        index: Arc<index::Index>,
        staging: Arc<Staging>,
        vault: x25519_dalek::PublicKey,
        cfg: &FsConfig,
        wakeup: Arc<tokio::sync::Notify>,
    ) -> Sealer {
        Sealer {
            index,
            staging,
            vault,
            settle: cfg.settle,
            prefix: cfg.prefix.clone(),
            policy: cfg.policy.clone(),
            ignore: cfg.ignore.clone(),
            wakeup,
            one: Mutex::new(()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.index.core()
    }

    // ------------------------------------------------------------------ sealing

    /// Seal every dirty file that is closed and has settled (`force`: regardless of settle).
    /// Returns how many were sealed.
    pub(super) fn seal_ready(&self, force: bool) -> Result<usize> {
        let _one_sealer = self.one.lock().unwrap_or_else(|p| p.into_inner());
        self.staging.ensure_reserve();
        // Forced (flush): every file dirty now, and not the ones changed while this runs (a
        // copy still going on would keep it from ever finishing).
        let cutoff = if force { self.core().db.newest_dirty_ms()?.unwrap_or(0) } else { now_ms() - self.settle.as_millis() as i64 };
        let mut n = 0;
        // A page of settled files at a time (the lock is held for one indexed read of a page,
        // however many files are dirty); each page is digested, its bytes made durable with
        // one `syncfs` (not one fsync per file), then each file is frozen and committed.
        let mut after = (i64::MIN, 0);
        loop {
            let (page, more) = {
                let c = self.core();
                let rows = c.db.settled_dirty(cutoff, after, SEAL_BATCH)?;
                let more = rows.len() == SEAL_BATCH;
                if let Some(&(ino, _, ms)) = rows.last() {
                    after = (ms, ino);
                }
                let page: Vec<(u64, i64)> =
                    rows.into_iter().filter(|(ino, _, _)| c.open.get(ino).is_none_or(|o| o.writers == 0)).map(|(ino, gen, _)| (ino, gen)).collect();
                (page, more)
            };
            n += self.seal_page(&page)?;
            if !more {
                break;
            }
        }
        Ok(n)
    }

    /// Seal the files of one page (those that changed since are skipped). Returns how many were sealed.
    fn seal_page(&self, page: &[(u64, i64)]) -> Result<usize> {
        let mut ready = Vec::new();
        for &(ino, gen) in page {
            if self.keep_local_if_ignored(ino, gen)? {
                continue;
            }
            match self.prepare_seal(ino, gen) {
                Ok(Some(p)) => ready.push(p),
                Ok(None) => {}
                Err(e) => self.note_seal_result(ino, gen, Err(e)),
            }
        }
        if ready.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.staging.syncfs() {
            let e = FsError::from(e);
            for p in &ready {
                self.note_seal_result(p.u.ino, p.u.content_gen, Err(FsError::Invalid("the staging disk could not be synced")));
            }
            return Err(e);
        }
        let mut n = 0;
        let mut ready = ready.into_iter().peekable();
        while ready.peek().is_some() {
            let chunk: Vec<PreparedSeal> = ready.by_ref().take(SEAL_COMMIT).collect();
            let before = n;
            for (ino, gen, r) in self.commit_seals(chunk) {
                n += matches!(r, Ok(true)) as usize;
                self.note_seal_result(ino, gen, r.map(|_| ()));
            }
            if n > before {
                self.wakeup.notify_one();
            }
        }
        Ok(n)
    }

    fn note_seal_result(&self, ino: u64, gen: i64, r: Result<()>) {
        let mut failures = self.failures.lock().unwrap();
        match r {
            Ok(()) => {
                failures.remove(&ino);
            }
            Err(e) => {
                let error = e.to_string();
                let f = failures.entry(ino).or_insert(SealFailure { gen, attempts: 0, error: String::new() });
                if f.attempts == 0 || f.error != error {
                    tracing::error!(ino, error = %e, "sealing failed; the plaintext stays staged and will be retried");
                }
                *f = SealFailure { gen, attempts: f.attempts + 1, error };
            }
        }
    }

    /// Why generation `gen` of `ino` could not be sealed, if its last attempt failed.
    pub(super) fn failure(&self, ino: u64, gen: i64) -> Option<String> {
        self.failures.lock().unwrap().get(&ino).filter(|f| f.gen == gen).map(|f| f.error.clone())
    }

    /// The failures kept for `status` (taken under `core`: the last lock of the order).
    pub(super) fn failures(&self) -> Vec<(u64, SealFailure)> {
        self.failures.lock().unwrap().iter().map(|(&ino, f)| (ino, f.clone())).collect()
    }

    /// Names on the ignore list (.DS_Store, Thumbs.db, ._*, editors' temp files) stay local.
    pub(super) fn ignored(&self, name: &str) -> bool {
        self.ignore.iter().any(|g| crate::rules::matches(g, name))
    }

    /// Mark a settled dirty file whose name is on the ignore list as local-only. Returns true
    /// if it was (it is then never sealed or uploaded, but stays readable here).
    pub(super) fn keep_local_if_ignored(&self, ino: u64, gen: i64) -> Result<bool> {
        let c = self.core();
        let Some(mut i) = c.db.get(ino)? else { return Ok(false) };
        if i.state != State::Dirty || i.content_gen != gen || !self.ignored(&i.name) {
            return Ok(false);
        }
        i.state = State::Local;
        c.db.update(&i)?;
        Ok(true)
    }

    // Sealing one file: freeze its spool as this version's plaintext and queue its upload, in
    // one transaction. No encrypted copy is written: the uploader encrypts from the frozen
    // file (`crypto::VersionCipher`), so sealing needs no room beyond the index's headroom.

    /// The part of a seal done outside the lock: digest, keys and header of the version.
    fn prepare_seal(&self, ino: u64, gen: i64) -> Result<Option<PreparedSeal>> {
        let (i, path, prev) = {
            let c = self.core();
            let Some(i) = c.db.get(ino)? else { return Ok(None) };
            if i.state != State::Dirty || i.content_gen != gen || c.open.get(&ino).is_some_and(|o| o.writers > 0 || o.pending()) {
                return Ok(None);
            }
            let path = c.db.path_of(ino)?;
            // The version this one replaces (its own last one, or the one of a file it was saved
            // over): a rebuild that finds this version but not its record puts it where that
            // one is, wherever renames took it since.
            let prev = Some(Db::seen_key(c.db.conn(), &i)?).filter(|k| !k.is_empty());
            (i, path, prev)
        };
        // Sealing writes no data (a rename and one row), and it is what frees the disk: the
        // upload deletes the staged file. A file that filled the staging disk must still be
        // sealed, so a nearly full disk gives up the reserve for the index's few pages rather
        // than refuse (review N11: it waited for the user to delete other data). Only a disk
        // with not even that room is an error, with the numbers.
        let mut free = self.staging.free_bytes()?;
        if free < SEAL_HEADROOM && self.staging.release_reserve() {
            tracing::warn!(free_mib = free >> 20, "staging disk nearly full: released the reserve so that files can be sealed and uploaded");
            free = self.staging.free_bytes()?;
        }
        if free < SEAL_MIN_ROOM {
            return Err(FsError::NoSpace(format!(
                "the staging disk has {} KiB free; queueing this {} MiB file for upload needs {} KiB for the index (free space or move the cache dir to a larger disk)",
                free >> 10,
                i.size >> 20,
                SEAL_MIN_ROOM >> 10
            )));
        }
        // Digest of exactly `i.size` bytes (a spool shorter than that, a hole at the end, reads
        // as zeros), outside the lock; the caller makes them durable. The spool is only read, never cut to size:
        // a writer that opened it since the check above may be appending (the seal then aborts
        // below and the spool must be intact).
        let spool = self.staging.open_spool(ino)?;
        let sha256 = hex::encode(crypto::sha256_file(&spool, i.size)?);
        drop(spool);
        let cipher = crypto::VersionCipher::new(&self.vault, i.size);
        let meta = ObjectMeta {
            path: path.clone(),
            size: i.size,
            mtime_ns: i.mtime_ns,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            sha256: sha256.clone(),
            sealed_ms: now_ms(),
            prev,
        };
        let md = vec![("cvh".to_string(), B64.encode(cipher.header().bytes)), ("cvm".to_string(), B64.encode(cipher.encrypt_meta(&meta)))];
        let object_key = crate::vault::new_object_key(&self.prefix);
        let (class, tags) = self.policy.choose(&path, i.size);
        let u = Upload {
            id: 0,
            ino,
            content_gen: gen,
            object_key,
            path,
            size: i.size,
            enc_size: cipher.enc_len(),
            storage_class: class,
            state: UploadState::Queued,
            attempts: 0,
            next_try_ms: 0,
            last_error: None,
            mp_upload_id: None,
            metadata: serde_json::to_string(&md).expect("json"),
            header: cipher.header().bytes.to_vec(),
            sha256,
            tagging: crate::rules::tagging(&tags),
            dk: Some(crate::meta::SecretBytes(cipher.data_key().to_vec())),
        };
        Ok(Some(PreparedSeal { u, size: i.size }))
    }

    /// The part of a batch of seals done under the lock: each file still as `prepare_seal`
    /// found it is frozen, and all their upload rows commit in one transaction (the table and
    /// index pages the rows share go to the WAL once a batch, not once a file: a commit per
    /// file wrote each of them again). A failed statement or commit undoes the whole batch and
    /// puts every spool back (a crash in between is undone at start-up, `recover`). Returns,
    /// per file, whether it was sealed (false: it changed meanwhile, seal again later).
    fn commit_seals(&self, seals: Vec<PreparedSeal>) -> Vec<(u64, i64, Result<bool>)> {
        let mut guard = self.core();
        let c = &mut *guard;
        let ids: Vec<(u64, i64)> = seals.iter().map(|p| (p.u.ino, p.u.content_gen)).collect();
        let mut frozen: Vec<(u64, i64)> = Vec::new();
        let mut sealed: Vec<Result<bool>> = Vec::with_capacity(seals.len());
        let r = (|| -> Result<()> {
            c.db.op_begin()?;
            for p in &seals {
                sealed.push(self.seal_in_batch(c, p, &mut frozen)?);
            }
            Ok(c.db.op_commit()?)
        })();
        // Durable before the uploader may send them (review N7): a version whose PUT landed
        // while its seal was lost in a power cut was sealed again under another key, and the
        // landed object, neither mentioned nor dead, came back after a deletion. One WAL fsync
        // per batch of seals. (Committed already: a failed sync is only logged.)
        if r.is_ok() && !frozen.is_empty() {
            // Staged renames first, as `sync_durable` orders them: a commit durable before the
            // rename it describes could outlive it in a power cut.
            if let Err(e) = self.staging.syncfs().map_err(FsError::from).and_then(|_| Ok(c.db.sync()?)) {
                tracing::error!(error = %e, "the index could not be synced after sealing");
            }
        }
        if let Err(e) = r {
            let _ = c.db.op_rollback();
            for &(ino, gen) in &frozen {
                if let Err(back) = self.staging.unfreeze_spool(ino, gen) {
                    tracing::error!(ino, error = %back, "could not put the spool back after a failed seal; start-up will");
                }
            }
            // The file being recorded when it failed (none: the commit) gets the error; those
            // recorded before it are undone with it; those not reached are simply retried.
            let culprit = ids.get(sealed.len()).map(|&(ino, _)| ino);
            tracing::warn!(files = ids.len(), ?culprit, error = %e, "a batch of seals failed; its files stay staged and are sealed again");
            let mut e = Some(e);
            return ids
                .into_iter()
                .enumerate()
                .map(|(k, (ino, gen))| {
                    let r = match sealed.get(k) {
                        Some(Ok(true)) if culprit.is_none() => Err(e.take().unwrap_or(FsError::Invalid("undone with the rest of its seal batch"))),
                        Some(Ok(true)) => Err(FsError::Invalid("undone with the rest of its seal batch")),
                        Some(Ok(false)) => Ok(false),
                        Some(Err(_)) => std::mem::replace(&mut sealed[k], Ok(false)),
                        None if Some(ino) == culprit => Err(e.take().unwrap_or(FsError::Invalid("the seal's batch failed"))),
                        None => Ok(false),
                    };
                    (ino, gen, r)
                })
                .collect();
        }
        for (k, &(ino, _)) in ids.iter().enumerate() {
            // The spool fd in an open read-only handle (if any) keeps working until it is closed.
            if let (Ok(true), Some(o)) = (&sealed[k], c.open.get_mut(&ino)) {
                o.spool = None;
            }
        }
        ids.into_iter().zip(sealed).map(|((ino, gen), s)| (ino, gen, s)).collect()
    }

    /// One file of `commit_seals`, inside its transaction: check nothing changed since
    /// `prepare_seal`, freeze the spool (recorded in `frozen`), add the upload row. The outer
    /// error fails the batch (the index); the inner one only this file (its staged file: the
    /// others go on).
    fn seal_in_batch(&self, c: &mut Core, p: &PreparedSeal, frozen: &mut Vec<(u64, i64)>) -> Result<Result<bool>> {
        let u = &p.u;
        let (ino, gen) = (u.ino, u.content_gen);
        let Some(mut cur) = c.db.get(ino)? else { return Ok(Ok(false)) };
        // A change not committed yet (a truncate whose `persist` is still fsyncing, a close
        // whose commit failed) counts as a change: the spool may differ from what was hashed.
        // A file deleted while still open (parent 0) has no path: it is not sealed, and its
        // (failed) path lookup must not fail the others of the batch.
        if cur.state != State::Dirty
            || cur.content_gen != gen
            || cur.parent == 0
            || c.open.get(&ino).is_some_and(|o| o.writers > 0 || o.pending())
            || c.db.path_of(ino).ok().as_deref() != Some(u.path.as_str())
            || cur.size != p.size
        {
            // Written, truncated, renamed or reopened while we read it: seal again later.
            return Ok(Ok(false));
        }
        // The frozen file holds exactly the version's bytes (the uploader checks its length):
        // a spool that differs from the committed size (a sparse tail, bytes no close
        // committed) is set to it here, with no writer open, as the hash above read it.
        // Freeze first, under the lock (no open or read sees the file half-way), then record:
        // a rename that fails leaves the file staged, and it is sealed again later.
        let staged = (|| -> std::io::Result<()> {
            if self.staging.spool_len(ino) != Some(cur.size) {
                self.staging.open_spool(ino)?.set_len(cur.size)?;
            }
            self.staging.freeze_spool(ino, gen)
        })();
        if let Err(e) = staged {
            return Ok(Err(e.into()));
        }
        frozen.push((ino, gen));
        Db::insert_upload(c.db.conn(), u)?;
        cur.state = State::Sealed;
        cur.sha256 = Some(u.sha256.clone());
        Db::save(c.db.conn(), &cur)?;
        Ok(Ok(true))
    }
}

/// The index side of sealing that other operations share: superseded and discarded versions,
/// where a queued version is staged.
impl Fs {
    /// The vault path of `ino` (for messages).
    pub fn path_of(&self, ino: u64) -> String {
        self.core().db.path_of(ino).unwrap_or_else(|_| format!("inode {ino}"))
    }

    /// Why `ino`'s current content could not be sealed, if its last attempt failed.
    pub fn seal_failure(&self, ino: u64) -> Option<String> {
        let gen = self.state_of(ino).ok().flatten()?.0;
        self.sealer.failure(ino, gen)
    }

    /// Seal every dirty file that is closed and has settled (`force`: regardless of settle,
    /// what `flush` asks). Returns how many were sealed.
    pub fn seal_ready(&self, force: bool) -> Result<usize> {
        self.check_clock(false)?;
        self.sealer.seal_ready(force)
    }

    /// Names on the ignore list (.DS_Store, Thumbs.db, ._*, editors' temp files) stay local.
    pub fn ignored(&self, name: &str) -> bool {
        self.sealer.ignored(name)
    }

    /// Drop queued uploads of versions no longer wanted (rewritten, deleted). A PUT of one may
    /// already be on the wire and land later: its key is recorded as dead locally and, when a
    /// request may have been sent, in the journal (`discard`), so that no rebuild — even one
    /// that has no snapshot carrying the dead-key list — adopts that object as a live file.
    /// A file is rewritten while versions of it are queued: the one on the wire now goes on and
    /// is recorded as a version when it lands (review N9: a file saved more often than its
    /// upload takes, a catalog or a password database, had every upload cancelled and never
    /// reached the bucket); the others are discarded. Returns the discarded ones (their staged
    /// files go once the commit is durable; the kept one's stays until it lands).
    pub(super) fn supersede_uploads(tx: &rusqlite::Connection, ups: &[Upload]) -> Result<Vec<Upload>> {
        let (kept, gone): (Vec<Upload>, Vec<Upload>) = ups.iter().cloned().partition(|u| u.state == UploadState::Uploading);
        Self::discard_uploads(tx, &gone)?;
        for u in &kept {
            tracing::debug!(upload = u.id, "a version on the wire is kept going while the file is rewritten");
        }
        Ok(gone)
    }

    pub(super) fn discard_uploads(tx: &rusqlite::Connection, ups: &[Upload]) -> Result<()> {
        for u in ups {
            if u.state == UploadState::Uploading || u.attempts > 0 {
                Self::discard_key(tx, &u.object_key)?;
            }
            Db::cancel_upload(tx, u.id)?;
        }
        Ok(())
    }

    /// Record that the object at `key` is no live file's version (journal + dead-key list).
    pub(super) fn discard_key(tx: &rusqlite::Connection, key: &str) -> Result<()> {
        Db::add_dead_key(tx, key)?;
        let entry = crate::remote_meta::Entry::Discard { key: key.to_string() };
        Db::journal_append(tx, now_ms(), &serde_json::to_string(&entry).expect("json"))?;
        Ok(())
    }

    /// Where a queued version's bytes are: its frozen plaintext, or an encrypted outbox file
    /// written by an earlier build (no data key recorded).
    pub(super) fn staged_version(&self, u: &Upload) -> PathBuf {
        staged_version(&self.staging, u)
    }
}

/// Where a queued version's bytes are: its frozen plaintext, or an encrypted outbox file
/// written by an earlier build (no data key recorded).
pub(super) fn staged_version(staging: &Staging, u: &Upload) -> PathBuf {
    if u.dk.is_some() {
        staging.frozen_path(u.ino, u.content_gen)
    } else {
        staging.outbox_path(u.ino, u.content_gen)
    }
}

/// A seal prepared outside the lock (`Sealer::prepare_seal`), to be committed under it.
struct PreparedSeal {
    u: Upload,
    size: u64,
}

/// Files digested before one `syncfs` makes their bytes durable.
const SEAL_BATCH: usize = 256;
/// Files frozen and committed in one transaction, under one hold of the lock (a few ms).
const SEAL_COMMIT: usize = 32;
