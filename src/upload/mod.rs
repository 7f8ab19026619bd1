//! The background uploader: takes queued rows from the upload journal and puts each outbox
//! file into S3 as one object.
//!
//! * Small objects: one PutObject. Large ones: multipart with parts of at least 8 MiB, several
//!   in flight; the upload id and every completed part's ETag are committed to the journal as
//!   they happen, so after a crash the upload resumes and never re-sends a completed part.
//! * Retryable errors (5xx, SlowDown, timeouts, resets) are retried forever with capped
//!   exponential backoff; a permanent error parks the upload as failed (data kept, shown in
//!   `status`).
//! * An upload whose journal row disappeared (file rewritten or deleted) is abandoned.

use crate::crypto::sign::MachineSigner;
use crate::meta::Upload;
use crate::store::{ObjectStore, PutOptions, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Objects above this size go multipart.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// S3's minimum part size is 5 MiB; 8 MiB parts keep a 40 GB file under 10,000 parts… almost:
/// `part_size` grows the part for larger files.
pub const MIN_PART: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Completed uploads recorded in one transaction, at most…
const COMPLETE_BATCH: usize = 16;
/// …and at the latest this long after the first of them completed.
const COMPLETE_WAIT: Duration = Duration::from_millis(50);
/// A version whose key the store reports as holding another object this many times in a row
/// is parked: a store or proxy that alters objects or HEAD answers would otherwise be sent the
/// version again and again, each time leaving an object the user pays for.
const MAX_REKEYS: u32 = 3;
/// After the index fails (a full or read-only staging disk), the uploader pauses this long at
/// first, doubling up to `MAX_INDEX_PAUSE`, instead of retrying at once in a loop.
const INDEX_PAUSE: Duration = Duration::from_secs(1);
const MAX_INDEX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Objects uploaded at once.
    pub concurrency: usize,
    /// Parts of one multipart upload in flight at once.
    pub part_concurrency: usize,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Upload bandwidth cap in bytes per second (None: unlimited), for slow home uplinks.
    pub bandwidth: Option<u64>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig { concurrency: 4, part_concurrency: 4, base_backoff: Duration::from_secs(1), max_backoff: MAX_BACKOFF, bandwidth: None }
    }
}

pub fn part_size(enc_size: u64) -> u64 {
    MIN_PART.max(enc_size.div_ceil(MAX_PARTS))
}

/// Backoff before attempt `attempts + 1`: base * 2^attempts, capped, with ±20% jitter.
pub fn backoff(cfg: &UploadConfig, attempts: i64) -> Duration {
    let exp = cfg.base_backoff.saturating_mul(1u32 << attempts.clamp(0, 20));
    let capped = exp.min(cfg.max_backoff);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    capped.mul_f64(jitter).min(cfg.max_backoff)
}

pub use crate::meta::{IndexError, IndexResult};

/// What the uploader asks of the index: the queue of sealed versions, where each one's local
/// copy is, and every state change of a queued version. Index operations only; the store, the
/// signing key and the wakeup are the uploader's own ([`UploadEnv`]).
pub trait UploadQueue: Send + Sync {
    /// The local copy of a queued version (its frozen plaintext, or an encrypted outbox file of
    /// an earlier build).
    fn outbox_path(&self, u: &Upload) -> PathBuf;
    /// Queued versions whose next attempt is due, oldest first.
    fn due_uploads(&self, limit: usize) -> IndexResult<Vec<Upload>>;
    /// False once the version was cancelled (file rewritten or deleted): stop sending it.
    fn upload_exists(&self, id: i64) -> IndexResult<bool>;
    fn mark_uploading(&self, u: &Upload) -> IndexResult<()>;
    fn set_multipart(&self, id: i64, mp: Option<&str>) -> IndexResult<()>;
    /// Move version `id` to `key`; returns the multipart upload (old key, id) it abandons.
    fn rekey_upload(&self, id: i64, key: &str) -> IndexResult<Option<(String, String)>>;
    fn record_part(&self, id: i64, part: i32, etag: &str) -> IndexResult<()>;
    fn parts(&self, id: i64) -> IndexResult<Vec<(i32, String)>>;
    fn upload_retry(&self, u: &Upload, err: &StoreError, delay: Duration) -> IndexResult<()>;
    fn upload_failed(&self, u: &Upload, err: &StoreError) -> IndexResult<()>;
    /// The objects are in the store and checked: record their versions, all in one
    /// transaction, and release the local copies.
    fn complete_uploads(&self, ups: &[Upload]) -> IndexResult<()>;
}

/// What the uploader works with besides the queue.
pub struct UploadEnv {
    pub store: Arc<dyn ObjectStore>,
    /// The mount holds the private key and full rights (HeadObject, AbortMultipartUpload); a
    /// write-only mount does not.
    pub can_read: bool,
    /// The vault's key prefix in the bucket: fresh keys go under it, signatures name keys below it.
    pub prefix: String,
    /// This machine's signing key (`x-amz-meta-cvs` of every object) and the vault it signs for.
    pub signer: Arc<MachineSigner>,
    pub vault: x25519_dalek::PublicKey,
    /// Notified when a version is queued.
    pub wakeup: Arc<tokio::sync::Notify>,
}

pub struct Uploader {
    fs: Arc<dyn UploadQueue>,
    env: UploadEnv,
    cfg: UploadConfig,
    inflight: Mutex<HashSet<i64>>,
    /// Uploads done and checked, recorded together (`record_done`), and since when the oldest
    /// has waited; their ids stay in `completing` until recorded (never dispatched again).
    done: Mutex<(Vec<Upload>, Option<tokio::time::Instant>)>,
    completing: Mutex<HashSet<i64>>,
    /// Abort handles of running attempts: stopping interrupts them as a crash would.
    running: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Bandwidth limiter: the instant the link is free again.
    link_free_at: Mutex<tokio::time::Instant>,
    /// Per upload, how many times in a row its key turned out to hold another object.
    rekeys: Mutex<HashMap<i64, u32>>,
    /// After an index error: no dispatch before this instant, and the pause after the next one.
    index_pause: Mutex<(Option<tokio::time::Instant>, Duration)>,
    stop: tokio::sync::watch::Receiver<bool>,
}

enum Outcome {
    Done,
    Cancelled,
}

/// What one turn of the upload loop did (`Uploader::step`).
pub struct Turn {
    /// The versions claimed for this turn, each to be sent.
    pub attempts: Vec<Attempt>,
    /// How long the loop may sleep before its next turn unless woken.
    pub wait: Duration,
}

/// One version claimed by `step`: sending it, retrying it later, or failing it.
pub struct Attempt {
    claim: Claim,
    u: Upload,
}

impl Attempt {
    /// Send the version and record the outcome (a completed upload waits in the batch
    /// `step` records); the claim is released when this ends.
    pub async fn run(self) {
        self.claim.up.attempt(self.u).await;
    }
}

/// A version in flight: released (and the loop woken for the free slot) when its attempt
/// ends, is interrupted, or was never run.
struct Claim {
    up: Arc<Uploader>,
    id: i64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // An attempt that panicked keeps its claim: the version waits for the next mount, as
        // after a crash, instead of being claimed again at once (it is due), panicking again.
        if std::thread::panicking() {
            return;
        }
        self.up.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.up.env.wakeup.notify_one();
    }
}

impl Uploader {
    pub fn new(fs: Arc<dyn UploadQueue>, env: UploadEnv, cfg: UploadConfig, stop: tokio::sync::watch::Receiver<bool>) -> Arc<Uploader> {
        Arc::new(Uploader {
            fs,
            env,
            cfg,
            inflight: Mutex::new(HashSet::new()),
            done: Mutex::new((Vec::new(), None)),
            completing: Mutex::new(HashSet::new()),
            running: Mutex::new(Vec::new()),
            link_free_at: Mutex::new(tokio::time::Instant::now()),
            rekeys: Mutex::new(HashMap::new()),
            index_pause: Mutex::new((None, INDEX_PAUSE)),
            stop,
        })
    }

    /// Runs until `stop` turns true, one `step` after another: each turn's attempts run as
    /// tasks of their own (several versions on the wire at once), and the loop sleeps until
    /// one ends, a version is queued, or the turn's wait is over. Uploads in flight at stop are
    /// simply interrupted: their rows stay queued (and their completed parts recorded) for
    /// the next mount.
    pub async fn run(self: Arc<Self>) {
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow() {
                for h in self.running.lock().unwrap().drain(..) {
                    h.abort();
                }
                self.record_done();
                return;
            }
            let turn = self.step();
            for a in turn.attempts {
                let h = tokio::spawn(a.run());
                let mut running = self.running.lock().unwrap();
                running.retain(|h| !h.is_finished());
                running.push(h.abort_handle());
            }
            if turn.wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = self.env.wakeup.notified() => {}
                _ = tokio::time::sleep(turn.wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One turn of the upload loop, the daemon's (`run`) and the tests': record the completed
    /// uploads once that is due (a dozen of them, or the oldest has waited `COMPLETE_WAIT`, or
    /// nothing else is in flight), then claim the versions due now for the free slots. Returns
    /// their attempts, to be run (each releases its claim when it ends or is dropped), and how
    /// long the loop may wait before its next turn unless woken.
    pub fn step(self: &Arc<Self>) -> Turn {
        if self.record_wait().is_zero() {
            self.record_done();
        }
        let attempts = self.claim_due();
        Turn { attempts, wait: self.record_wait() }
    }

    /// `step`, with its attempts run here one after another and what they completed recorded
    /// at once: the real protocol without timers or tasks, for tests and the shuttle model.
    /// Returns the versions attempted.
    pub async fn step_inline(self: &Arc<Self>) -> usize {
        let turn = self.step();
        let n = turn.attempts.len();
        for a in turn.attempts {
            a.run().await;
        }
        self.record_done();
        n
    }

    /// How long the completed uploads waiting in `done` may wait before they are recorded
    /// (zero: now; half a second when none waits).
    fn record_wait(&self) -> Duration {
        let (batch, since) = &*self.done.lock().unwrap();
        match since.map(|t| t.elapsed()) {
            Some(age) if batch.len() >= COMPLETE_BATCH || age >= COMPLETE_WAIT || self.inflight.lock().unwrap().is_empty() => Duration::ZERO,
            Some(age) => COMPLETE_WAIT.saturating_sub(age).max(Duration::from_millis(1)),
            None => Duration::from_millis(500),
        }
    }

    /// The index failed: pause dispatching (doubling each time in a row), and log once per pause.
    fn index_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut p = self.index_pause.lock().unwrap();
        let now = tokio::time::Instant::now();
        if p.0.is_some_and(|until| now < until) {
            return; // already paused (and logged)
        }
        tracing::error!(error = %e, pause_ms = p.1.as_millis() as u64, "{what} failed; uploads pause and try again");
        *p = (Some(now + p.1), (p.1 * 2).min(MAX_INDEX_PAUSE));
    }

    fn index_ok(&self) {
        let mut p = self.index_pause.lock().unwrap();
        if p.0.is_some_and(|until| tokio::time::Instant::now() >= until) {
            *p = (None, INDEX_PAUSE);
        }
    }

    fn index_paused(&self) -> bool {
        self.index_pause.lock().unwrap().0.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Claim the oldest due versions not in flight or being recorded, as many as there are
    /// free slots.
    fn claim_due(self: &Arc<Self>) -> Vec<Attempt> {
        if self.index_paused() {
            return Vec::new();
        }
        let busy = self.inflight.lock().unwrap().len();
        let free = self.cfg.concurrency.max(1).saturating_sub(busy);
        if free == 0 {
            return Vec::new();
        }
        // The oldest due rows include those in flight and those waiting to be recorded (all
        // still `uploading`): ask for enough to find `free` others behind them.
        let skip = busy + self.completing.lock().unwrap().len();
        let due = match self.fs.due_uploads(free + skip) {
            Ok(d) => d,
            Err(e) => {
                self.index_failed("reading the upload queue", &e);
                return Vec::new();
            }
        };
        let mut claimed = Vec::new();
        for u in due {
            {
                let mut inf = self.inflight.lock().unwrap();
                if inf.len() >= self.cfg.concurrency.max(1) || inf.contains(&u.id) || self.completing.lock().unwrap().contains(&u.id) {
                    continue;
                }
                inf.insert(u.id);
            }
            claimed.push(Attempt { claim: Claim { up: self.clone(), id: u.id }, u });
        }
        claimed
    }

    async fn attempt(&self, u: Upload) {
        if let Err(e) = self.fs.mark_uploading(&u) {
            // Review N13: returning at once made the row due again at once, a busy loop.
            self.index_failed("recording an upload's start", &e);
            return;
        }
        let r = self.upload(&u).await;
        let res = match r {
            Ok(Outcome::Done) => {
                tracing::info!(upload = u.id, bytes = u.enc_size, class = %u.storage_class, "uploaded");
                self.completing.lock().unwrap().insert(u.id);
                let mut done = self.done.lock().unwrap();
                done.1.get_or_insert_with(tokio::time::Instant::now);
                done.0.push(u);
                return;
            }
            Ok(Outcome::Cancelled) => Ok(()),
            Err(e) if e.is_retryable() => {
                // Expired credentials are not renewed by hammering: wait the longest backoff.
                let d = if matches!(e, StoreError::Credentials(_)) { self.cfg.max_backoff } else { backoff(&self.cfg, u.attempts) };
                tracing::warn!(upload = u.id, attempt = u.attempts + 1, retry_in_ms = d.as_millis() as u64, error = %e, "upload failed; will retry");
                self.fs.upload_retry(&u, &e, d)
            }
            Err(e) => {
                tracing::error!(upload = u.id, error = %e, "upload failed permanently; the file stays staged (see `coldvault status`)");
                self.fs.upload_failed(&u, &e)
            }
        };
        match res {
            Ok(()) => self.index_ok(),
            Err(e) => self.index_failed("recording an upload's outcome", &e),
        }
    }

    /// Record the completed uploads waiting in `done`, in one transaction. If that fails,
    /// their rows stay `uploading` and they are sent again: the store then answers that the
    /// object exists, it is checked, and recorded.
    fn record_done(&self) {
        let batch = {
            let mut done = self.done.lock().unwrap();
            done.1 = None;
            std::mem::take(&mut done.0)
        };
        if batch.is_empty() {
            return;
        }
        match tokio::task::block_in_place(|| self.fs.complete_uploads(&batch)) {
            Ok(()) => {
                self.index_ok();
                let mut rekeys = self.rekeys.lock().unwrap();
                for u in &batch {
                    rekeys.remove(&u.id);
                }
            }
            // They are sent again (each found in place and checked) once the pause is over.
            Err(e) => self.index_failed("recording completed uploads", &e),
        }
        let mut completing = self.completing.lock().unwrap();
        for u in &batch {
            completing.remove(&u.id);
        }
    }

    fn read_outbox(&self, u: &Upload, start: u64, len: u64) -> Result<Bytes, StoreError> {
        object_bytes(&self.fs.outbox_path(u), u, start, len)
    }

    /// Wait for our turn on the link when a bandwidth cap is set (reservation-based pacing).
    async fn pace(&self, bytes: u64) {
        let Some(rate) = self.cfg.bandwidth.filter(|r| *r > 0) else { return };
        let start = {
            let mut free = self.link_free_at.lock().unwrap();
            let now = tokio::time::Instant::now();
            let start = (*free).max(now);
            *free = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// Best-effort abort of a cancelled multipart upload. Write-only credentials lack
    /// s3:AbortMultipartUpload: there the bucket's AbortIncompleteMultipartUpload rule cleans up.
    async fn abandon_multipart(&self, u: &Upload, mp: &str) {
        if self.env.can_read {
            let _ = self.env.store.abort_multipart(&u.object_key, mp).await;
        }
    }

    /// This machine's signature of the object at `key` with this header.
    fn sign_object(&self, key: &str, header: &[u8]) -> String {
        self.env.signer.sign_object(&self.env.vault, key.strip_prefix(self.env.prefix.as_str()).unwrap_or(key), header)
    }

    fn opts(&self, u: &Upload) -> PutOptions {
        let mut metadata: Vec<(String, String)> = serde_json::from_str(&u.metadata).unwrap_or_default();
        // Signed here, not when sealed: a version moved to a fresh key is signed for that key.
        metadata.retain(|(k, _)| k != crate::crypto::sign::META);
        metadata.push((crate::crypto::sign::META.to_string(), self.sign_object(&u.object_key, &u.header)));
        // Data objects are never overwritten: a version's key is fresh and the write conditional.
        PutOptions { storage_class: u.storage_class.wire().to_string(), metadata, tagging: u.tagging.clone(), if_none_match: true }
    }

    fn journal<T>(r: IndexResult<T>) -> Result<T, StoreError> {
        // A failing journal write must not lose the upload: treat as transient.
        r.map_err(|e| StoreError::Retryable(format!("journal: {e}")))
    }

    /// The object at this version's key is ours when it carries this version's header (unique
    /// per version: a fresh ephemeral key and data key) and size — after an upload, or when a
    /// conditional write found an object there (our own earlier attempt whose response was
    /// lost). Anything else is never overwritten: the version moves to a fresh key and is
    /// uploaded again.
    async fn settle_existing(&self, u: &Upload) -> Result<Outcome, StoreError> {
        let h = match self.env.store.head_object(&u.object_key).await {
            // Just written but not visible yet (an eventually consistent store): ask again later.
            Err(StoreError::NotFound) => return Err(StoreError::Retryable("the uploaded object is not visible yet".into())),
            // A HEAD answer has no body: credentials that expired between the PUT and the HEAD
            // (STS, SSO) arrive as a bare 400 or 403. The PUT was accepted with the same rights,
            // so this is retried like expired credentials, never parked (review N15).
            Err(StoreError::Permanent { code, message }) if code == "AccessDenied" || code == "HTTP400" || code == "HTTP403" => {
                return Err(StoreError::Credentials(format!("checking the uploaded object: {code} {message}")));
            }
            r => r?,
        };
        let ours = B64.encode(&u.header);
        if h.size == u.enc_size && h.metadata.get("cvh").is_some_and(|v| *v == ours) {
            return Ok(Outcome::Done);
        }
        let tries = {
            let mut r = self.rekeys.lock().unwrap();
            let n = r.entry(u.id).or_insert(0);
            *n += 1;
            *n
        };
        if tries >= MAX_REKEYS {
            self.rekeys.lock().unwrap().remove(&u.id);
            let what = if h.metadata.get("cvh").is_some_and(|v| *v == ours) { "this version's header" } else { "another header or none" };
            return Err(StoreError::Permanent {
                code: "VersionNotStored".into(),
                message: format!(
                    "{tries} times in a row the store answered that the object just written at a fresh key holds something else ({} bytes with {what}; this version is {} bytes): a proxy or gateway that alters objects or their HEAD answers? Nothing was overwritten; the file stays staged: run `coldvault retry` once the store is fixed",
                    h.size, u.enc_size
                ),
            });
        }
        let fresh = crate::vault::new_object_key(&self.env.prefix);
        tracing::error!(upload = u.id, key = %u.object_key, new_key = %fresh, "another object occupies this version's key; it is left untouched and the version is uploaded under a new key");
        // The old key's multipart upload: its parts would be billed for ever (review L6).
        // Sent on its own task: it neither holds this attempt's slot nor ends with it at stop.
        if let Some((old, mp)) = Self::journal(self.fs.rekey_upload(u.id, &fresh))? {
            let store = self.env.store.clone();
            tokio::spawn(async move {
                let _ = store.abort_multipart(&old, &mp).await;
            });
        }
        Err(StoreError::Retryable("object key taken by another object; retrying under a new key".into()))
    }

    async fn upload(&self, u: &Upload) -> Result<Outcome, StoreError> {
        match self.upload_conditional(u).await {
            // A write-only mount may not HeadObject. The key is 128 random bits drawn for this
            // version and never shown to anyone before this upload, so an object already there
            // is our own earlier attempt whose answer was lost.
            Err(StoreError::AlreadyExists) if !self.env.can_read => Ok(Outcome::Done),
            Err(StoreError::AlreadyExists) => self.settle_existing(u).await,
            // Before the local copy is released, check what the store holds: its size and this
            // version's header. A write-only mount may not read the bucket (HeadObject is
            // denied): there the Content-MD5 of every request is the check.
            Ok(Outcome::Done) if self.env.can_read => self.settle_existing(u).await,
            r => r,
        }
    }

    async fn upload_conditional(&self, u: &Upload) -> Result<Outcome, StoreError> {
        // A retry encrypts the frozen plaintext again under the same key and nonces: only while
        // it is exactly what was sealed (review N15: a change of the same size would reuse GCM
        // nonces for other bytes).
        if u.attempts > 0 && u.dk.is_some() && !u.sha256.is_empty() {
            tokio::task::block_in_place(|| frozen_unchanged(&self.fs.outbox_path(u), u))?;
        }
        let store = self.env.store.clone();
        if u.enc_size <= MULTIPART_THRESHOLD {
            let body = tokio::task::block_in_place(|| self.read_outbox(u, 0, u.enc_size))?;
            if !Self::journal(self.fs.upload_exists(u.id))? {
                return Ok(Outcome::Cancelled);
            }
            self.pace(u.enc_size).await;
            store.put_object(&u.object_key, body, &self.opts(u)).await?;
            return Ok(Outcome::Done);
        }
        let mp = match &u.mp_upload_id {
            Some(id) => id.clone(),
            None => {
                let id = store.create_multipart(&u.object_key, &self.opts(u)).await?;
                Self::journal(self.fs.set_multipart(u.id, Some(&id)))?;
                id
            }
        };
        let psize = part_size(u.enc_size);
        let nparts = u.enc_size.div_ceil(psize) as i32;
        let done: std::collections::BTreeMap<i32, String> = Self::journal(self.fs.parts(u.id))?.into_iter().collect();
        if !done.is_empty() {
            tracing::info!(upload = u.id, parts_done = done.len(), parts = nparts, "resuming multipart upload");
        }
        let todo: Vec<i32> = (1..=nparts).filter(|n| !done.contains_key(n)).collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.part_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for n in todo {
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            if !Self::journal(self.fs.upload_exists(u.id))? {
                tasks.abort_all();
                self.abandon_multipart(u, &mp).await;
                return Ok(Outcome::Cancelled);
            }
            let start = (n as u64 - 1) * psize;
            let len = psize.min(u.enc_size - start);
            let body = tokio::task::block_in_place(|| self.read_outbox(u, start, len))?;
            self.pace(len).await;
            let (store, key, mpid, fs, id) = (store.clone(), u.object_key.clone(), mp.clone(), self.fs.clone(), u.id);
            tasks.spawn(async move {
                let _permit = permit;
                let etag = store.upload_part(&key, &mpid, n, body).await?;
                fs.record_part(id, n, &etag).map_err(|e| StoreError::Retryable(format!("journal: {e}")))?;
                Ok::<(), StoreError>(())
            });
            // Surface failures early instead of sending every remaining part.
            while let Some(r) = tasks.try_join_next() {
                self.part_result(r, u).await?;
            }
        }
        while let Some(r) = tasks.join_next().await {
            self.part_result(r, u).await?;
        }
        if !Self::journal(self.fs.upload_exists(u.id))? {
            self.abandon_multipart(u, &mp).await;
            return Ok(Outcome::Cancelled);
        }
        let parts = Self::journal(self.fs.parts(u.id))?;
        if parts.len() != nparts as usize {
            return Err(StoreError::Retryable(format!("{} of {nparts} parts recorded", parts.len())));
        }
        match store.complete_multipart(&u.object_key, &mp, &parts, true).await {
            Ok(()) => Ok(Outcome::Done),
            Err(StoreError::NoSuchUpload) => {
                // Expired or aborted behind our back: start a fresh multipart upload next time.
                Self::journal(self.fs.set_multipart(u.id, None))?;
                Err(StoreError::Retryable("multipart upload vanished before completion; restarting it".into()))
            }
            Err(e) => Err(e),
        }
    }

    async fn part_result(&self, r: Result<Result<(), StoreError>, tokio::task::JoinError>, u: &Upload) -> Result<(), StoreError> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(StoreError::NoSuchUpload)) => {
                // The upload id expired or was aborted: start over with a new one.
                Self::journal(self.fs.set_multipart(u.id, None))?;
                Err(StoreError::Retryable("multipart upload vanished; restarting it".into()))
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(StoreError::Retryable(format!("part task: {e}"))),
        }
    }
}

/// Whether the frozen plaintext of `u` at `p` still hashes to the version's SHA-256.
pub fn frozen_unchanged(p: &std::path::Path, u: &Upload) -> Result<(), StoreError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| StoreError::Retryable(format!("reading the staged file {}: {e}", p.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| StoreError::Retryable(format!("reading the staged file {}: {e}", p.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if hex::encode(h.finalize()) != u.sha256 {
        return Err(StoreError::Permanent {
            code: "LocalOutbox".into(),
            message: format!("{}: the sealed file changed after sealing; it is not encrypted again under the same nonces", p.display()),
        });
    }
    Ok(())
}

/// Object bytes [start, start + len) of `u`: encrypted now from the version's frozen
/// plaintext (the same bytes on every retry), or read from an encrypted outbox file of an
/// earlier build.
pub fn object_bytes(p: &std::path::Path, u: &Upload, start: u64, len: u64) -> Result<Bytes, StoreError> {
    let local = |e: String| StoreError::Permanent { code: "LocalOutbox".into(), message: format!("{}: {e}", p.display()) };
    // Too many open files, no memory, an I/O error of the staging disk: passing conditions
    // (review N15: they parked the upload for good); a missing file or a wrong size are not.
    let io = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EIO | libc::EINTR | libc::EAGAIN) => {
            StoreError::Retryable(format!("reading the staged file {}: {e}", p.display()))
        }
        _ => local(e.to_string()),
    };
    let f = std::fs::File::open(p).map_err(io)?;
    if let Some(dk) = &u.dk {
        // Frozen files never change; one that did is not encrypted again under the same
        // nonces (a short one would upload zeros in place of the file's bytes).
        let on_disk = f.metadata().map_err(io)?.len();
        if on_disk != u.size {
            return Err(local(format!("the sealed file is {on_disk} bytes, its version {} bytes: it changed after sealing", u.size)));
        }
        let cipher = crate::crypto::VersionCipher::resume(&dk.0, &u.header, u.size).map_err(|e| local(e.to_string()))?;
        return cipher.encrypt_range(&f, start, len).map(Bytes::from).map_err(|e| local(e.to_string()));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, start).map_err(io)?;
    Ok(Bytes::from(buf))
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests;
