//! In-memory `ObjectStore`: the fake every fast test runs on.
//!
//! Models what coldvault relies on from S3: versions (a PUT to an existing key adds a version;
//! reads see the newest), conditional writes (`If-None-Match: *` refuses an existing key), storage classes (GET of a GLACIER/DEEP_ARCHIVE object fails with
//! `Archived` until a restore completes), RestoreObject with a configurable delay and
//! RestoreAlreadyInProgress, multipart uploads, and injected faults: fail the Nth call, fail
//! every call of one operation, or add latency.

use super::*;
use crate::vault::StorageClass;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct MemObject {
    pub body: Bytes,
    pub storage_class: String,
    pub metadata: HashMap<String, String>,
    pub restore_requested: Option<Instant>,
    pub restore_days: Option<i32>,
    pub tagging: Option<String>,
    /// Intelligent-Tiering archive access tier the object sits in (`x-amz-archive-status`).
    pub archive_status: Option<String>,
    /// When it was written (ms since the epoch).
    pub modified_ms: i64,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Vec<MemObject>>,
    uploads: HashMap<String, (String, PutOptions, BTreeMap<i32, Bytes>)>,
    /// upload id -> when it was begun (ms).
    initiated: HashMap<String, i64>,
    next_upload: u64,
    calls: u64,
    /// call number (1-based, counted over all operations) -> error to return.
    fail_at: BTreeMap<u64, StoreError>,
    /// operation name -> (remaining count, error). u64::MAX means "always".
    fail_op: HashMap<&'static str, (u64, StoreError)>,
    /// operation name -> calls made.
    per_op: HashMap<&'static str, u64>,
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// How long a restore takes before the object becomes readable.
    pub restore_delay: Mutex<Duration>,
    /// How long a restored copy stays readable (None: the requested Days).
    pub restore_lifetime: Mutex<Option<Duration>>,
    pub latency: Mutex<Duration>,
    /// operation name -> delay for its next call only (a PUT that is slow on the wire and lands
    /// after a newer one).
    delay_next: Mutex<HashMap<&'static str, Duration>>,
    /// operations whose next call succeeds but answers with a transient error.
    lose_response: Mutex<std::collections::HashSet<&'static str>>,
    /// HeadObject answers with a size one byte off (a gateway whose HEAD answers lie).
    pub head_size_lies: std::sync::atomic::AtomicBool,
    /// The next PutObject stores only the first half of its body and answers success (a store
    /// or proxy that cut the object short).
    truncate_next_put: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::default())
    }

    /// Make the `n`th call from now (1 = the next one) fail with `err`.
    pub fn fail_call(&self, n: u64, err: StoreError) {
        let mut i = self.inner.lock().unwrap();
        let at = i.calls + n;
        i.fail_at.insert(at, err);
    }

    /// Make the next `count` calls of operation `op` (e.g. "UploadPart") fail with `err`.
    pub fn fail_op(&self, op: &'static str, count: u64, err: StoreError) {
        self.inner.lock().unwrap().fail_op.insert(op, (count, err));
    }

    /// Put an object behind coldvault's back (another writer, an attacker, a lost response).
    pub fn plant(&self, key: &str, body: &[u8]) {
        self.store(key, Bytes::copy_from_slice(body), &PutOptions::default()).expect("plant");
    }

    /// The next call of `op` takes effect but its response is lost (the caller sees a
    /// retryable error), as when a connection drops after S3 stored the object.
    pub fn lose_next_response(&self, op: &'static str) {
        self.lose_response.lock().unwrap().insert(op);
    }

    fn response_lost(&self, op: &'static str) -> Result<()> {
        if self.lose_response.lock().unwrap().remove(op) {
            return Err(StoreError::Retryable(format!("{op}: connection reset after the request was sent")));
        }
        Ok(())
    }

    /// The next PutObject keeps only half of its body but reports success.
    pub fn truncate_next_put(&self) {
        self.truncate_next_put.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Delay the next call of operation `op` by `d` (its effect happens after the delay).
    pub fn delay_next(&self, op: &'static str, d: Duration) {
        self.delay_next.lock().unwrap().insert(op, d);
    }

    /// How many calls of operation `op` (e.g. "GetObject", which counts ranged GETs) were made.
    pub fn calls_of(&self, op: &'static str) -> u64 {
        self.inner.lock().unwrap().per_op.get(op).copied().unwrap_or(0)
    }

    pub fn clear_faults(&self) {
        let mut i = self.inner.lock().unwrap();
        i.fail_at.clear();
        i.fail_op.clear();
    }

    /// Newest version of every key.
    pub fn snapshot(&self) -> BTreeMap<String, MemObject> {
        let i = self.inner.lock().unwrap();
        i.objects.iter().map(|(k, v)| (k.clone(), v.last().unwrap().clone())).collect()
    }

    /// Object versions written under `prefix` (all keys, all versions).
    pub fn versions_under(&self, prefix: &str) -> usize {
        self.inner.lock().unwrap().objects.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.len()).sum()
    }

    pub fn version_count(&self, key: &str) -> usize {
        self.inner.lock().unwrap().objects.get(key).map_or(0, |v| v.len())
    }

    /// Change an object's storage class behind coldvault's back (a lifecycle transition).
    /// Sets when the newest version of `key` was written (a test's fake clock).
    pub fn set_modified(&self, key: &str, ms: i64) {
        if let Some(o) = self.inner.lock().unwrap().objects.get_mut(key).and_then(|v| v.last_mut()) {
            o.modified_ms = ms;
        }
    }

    pub fn set_storage_class(&self, key: &str, class: &str) {
        let mut i = self.inner.lock().unwrap();
        if let Some(o) = i.objects.get_mut(key).and_then(|v| v.last_mut()) {
            o.storage_class = class.to_string();
            o.restore_requested = None;
            o.archive_status = None;
        }
    }

    /// Intelligent-Tiering moves an object into one of its archive access tiers
    /// (`ARCHIVE_ACCESS`, `DEEP_ARCHIVE_ACCESS`) or, with None, back out: as S3 does after 90 or
    /// 180 days without access when the bucket opts in. GETs then fail until it is restored.
    pub fn set_archive_status(&self, key: &str, status: Option<&str>) {
        let mut i = self.inner.lock().unwrap();
        if let Some(o) = i.objects.get_mut(key).and_then(|v| v.last_mut()) {
            o.archive_status = status.map(str::to_string);
            o.restore_requested = None;
        }
    }

    /// Overwrite the newest version's bytes (tamper tests).
    pub fn replace_body(&self, key: &str, body: Bytes) {
        let mut i = self.inner.lock().unwrap();
        if let Some(o) = i.objects.get_mut(key).and_then(|v| v.last_mut()) {
            o.body = body;
        }
    }

    pub fn open_multipart_uploads(&self) -> usize {
        self.inner.lock().unwrap().uploads.len()
    }

    /// The open multipart uploads, as (key, upload id).
    pub fn multipart_ids(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.inner.lock().unwrap().uploads.iter().map(|(id, u)| (u.0.clone(), id.clone())).collect();
        v.sort();
        v
    }

    /// Makes every open multipart upload `by_ms` older (one begun long ago).
    pub fn age_multipart_uploads(&self, by_ms: i64) {
        for t in self.inner.lock().unwrap().initiated.values_mut() {
            *t -= by_ms;
        }
    }

    async fn enter(&self, op: &'static str) -> Result<()> {
        let lat = *self.latency.lock().unwrap() + self.delay_next.lock().unwrap().remove(op).unwrap_or_default();
        if !lat.is_zero() {
            tokio::time::sleep(lat).await;
        }
        let mut i = self.inner.lock().unwrap();
        i.calls += 1;
        *i.per_op.entry(op).or_default() += 1;
        let c = i.calls;
        if let Some(e) = i.fail_at.remove(&c) {
            return Err(e);
        }
        if let Some((n, e)) = i.fail_op.get_mut(op) {
            if *n > 0 {
                if *n != u64::MAX {
                    *n -= 1;
                }
                return Err(e.clone());
            }
        }
        Ok(())
    }

    fn class(o: &MemObject) -> StorageClass {
        StorageClass::from_head(&o.storage_class, o.archive_status.as_deref())
    }

    fn readable(&self, o: &MemObject) -> bool {
        let class = Self::class(o);
        if !class.needs_restore() {
            return true;
        }
        let d = *self.restore_delay.lock().unwrap();
        if class.is_it_archive() {
            // Restored from an Intelligent-Tiering archive tier: back in a frequent-access
            // tier, with no expiry.
            return matches!(o.restore_requested, Some(t) if t.elapsed() >= d);
        }
        matches!(o.restore_requested, Some(t) if t.elapsed() >= d && t.elapsed() < d + self.lifetime(o))
    }

    fn lifetime(&self, o: &MemObject) -> Duration {
        self.restore_lifetime.lock().unwrap().unwrap_or(Duration::from_secs(86_400 * o.restore_days.unwrap_or(1).max(1) as u64))
    }

    /// expiry-date as S3 writes it (RFC 1123), for a restore that became ready.
    fn expiry_date(&self, o: &MemObject) -> Option<String> {
        let t = o.restore_requested?;
        let d = *self.restore_delay.lock().unwrap();
        let remaining = (d + self.lifetime(o)).checked_sub(t.elapsed()).unwrap_or_default();
        let at = std::time::SystemTime::now() + remaining;
        let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
        Some(http_date(secs))
    }

    fn newest(&self, key: &str) -> Result<MemObject> {
        let i = self.inner.lock().unwrap();
        i.objects.get(key).and_then(|v| v.last().cloned()).ok_or(StoreError::NotFound)
    }

    fn store(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        let class = if opts.storage_class.is_empty() { "STANDARD".to_string() } else { opts.storage_class.clone() };
        if StorageClass::choose(&class).is_err() {
            return Err(StoreError::Permanent { code: "InvalidStorageClass".into(), message: class });
        }
        let o = MemObject {
            body,
            storage_class: class,
            metadata: opts.metadata.iter().cloned().collect(),
            restore_requested: None,
            restore_days: None,
            tagging: opts.tagging.clone(),
            archive_status: None,
            modified_ms: crate::clock::now_ms(),
        };
        self.inner.lock().unwrap().objects.entry(key.to_string()).or_default().push(o);
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        self.enter("PutObject").await?;
        if opts.if_none_match && self.inner.lock().unwrap().objects.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        let body = if self.truncate_next_put.swap(false, std::sync::atomic::Ordering::SeqCst) { body.slice(..body.len() / 2) } else { body };
        self.store(key, body, opts)?;
        self.response_lost("PutObject")
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String> {
        self.enter("CreateMultipartUpload").await?;
        let mut i = self.inner.lock().unwrap();
        i.next_upload += 1;
        let id = format!("mem-upload-{}", i.next_upload);
        i.uploads.insert(id.clone(), (key.to_string(), opts.clone(), BTreeMap::new()));
        i.initiated.insert(id.clone(), crate::clock::now_ms());
        Ok(id)
    }
    async fn upload_part(&self, key: &str, upload_id: &str, n: i32, body: Bytes) -> Result<String> {
        self.enter("UploadPart").await?;
        let mut i = self.inner.lock().unwrap();
        let u = i.uploads.get_mut(upload_id).ok_or(StoreError::NoSuchUpload)?;
        if u.0 != key {
            return Err(StoreError::NoSuchUpload);
        }
        let etag = format!("\"{}\"", &crate::crypto::sha256_hex(&body)[..32]);
        u.2.insert(n, body);
        Ok(etag)
    }
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()> {
        self.enter("CompleteMultipartUpload").await?;
        if if_none_match && self.inner.lock().unwrap().objects.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        let (k, opts, stored) = {
            let mut i = self.inner.lock().unwrap();
            i.uploads.remove(upload_id).ok_or(StoreError::NoSuchUpload)?
        };
        if k != key || parts.len() != stored.len() || parts.iter().any(|(n, _)| !stored.contains_key(n)) {
            return Err(StoreError::Permanent { code: "InvalidPart".into(), message: "part list mismatch".into() });
        }
        let mut body = Vec::new();
        for (n, _) in parts {
            body.extend_from_slice(&stored[n]);
        }
        self.store(key, Bytes::from(body), &opts)
    }
    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<()> {
        self.enter("AbortMultipartUpload").await?;
        self.inner.lock().unwrap().uploads.remove(upload_id);
        Ok(())
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<super::OpenMultipart>> {
        self.enter("ListMultipartUploads").await?;
        let i = self.inner.lock().unwrap();
        let mut v: Vec<super::OpenMultipart> = i
            .uploads
            .iter()
            .filter(|(_, u)| u.0.starts_with(prefix))
            .map(|(id, u)| super::OpenMultipart { key: u.0.clone(), upload_id: id.clone(), initiated_ms: i.initiated.get(id).copied().unwrap_or(0) })
            .collect();
        v.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(v)
    }
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.enter("GetObject").await?;
        let o = self.newest(key)?;
        if !self.readable(&o) {
            return Err(StoreError::Archived);
        }
        let len = o.body.len() as u64;
        let (s, e) = (start.min(len) as usize, end.min(len) as usize);
        Ok(o.body.slice(s..e))
    }
    async fn get_object(&self, key: &str, max: u64) -> Result<Bytes> {
        Ok(self.get_with_metadata(key, max).await?.0)
    }
    async fn get_with_metadata(&self, key: &str, max: u64) -> Result<(Bytes, std::collections::HashMap<String, String>)> {
        self.enter("GetObject").await?;
        let o = self.newest(key)?;
        if !self.readable(&o) {
            return Err(StoreError::Archived);
        }
        if o.body.len() as u64 > max {
            return Err(StoreError::too_large(key, o.body.len() as u64, max));
        }
        Ok((o.body, o.metadata))
    }
    async fn head_object(&self, key: &str) -> Result<HeadInfo> {
        self.enter("HeadObject").await?;
        let o = self.newest(key)?;
        let d = *self.restore_delay.lock().unwrap();
        let it_archive = Self::class(&o).is_it_archive();
        let restore = match o.restore_requested {
            Some(t) if t.elapsed() < d => Some(RestoreState { ongoing: true, expiry: None }),
            // An Intelligent-Tiering object restored is back in a frequent-access tier: no expiry.
            Some(_) if it_archive => Some(RestoreState { ongoing: false, expiry: None }),
            Some(_) if self.readable(&o) => Some(RestoreState { ongoing: false, expiry: self.expiry_date(&o) }),
            _ => None, // never restored, or the restored copy expired
        };
        let restored_it = it_archive && matches!(o.restore_requested, Some(t) if t.elapsed() >= d);
        let lie = self.head_size_lies.load(std::sync::atomic::Ordering::SeqCst) as u64;
        Ok(HeadInfo {
            size: o.body.len() as u64 + lie,
            storage_class: o.storage_class.clone(),
            metadata: o.metadata.clone(),
            restore,
            archive_status: if restored_it { None } else { o.archive_status.clone() },
        })
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>> {
        self.enter("ListObjectsV2").await?;
        Ok(self
            .snapshot()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ListEntry { key: k, size: o.body.len() as u64, storage_class: o.storage_class, modified_ms: o.modified_ms })
            .collect())
    }
    async fn delete_object(&self, key: &str) -> Result<()> {
        self.enter("DeleteObject").await?;
        self.inner.lock().unwrap().objects.remove(key);
        Ok(())
    }
    async fn restore_object(&self, key: &str, days: Option<i32>, _tier: &str) -> Result<()> {
        self.enter("RestoreObject").await?;
        let d = *self.restore_delay.lock().unwrap();
        let mut i = self.inner.lock().unwrap();
        let o = i.objects.get_mut(key).and_then(|v| v.last_mut()).ok_or(StoreError::NotFound)?;
        if !Self::class(o).needs_restore() {
            return Err(StoreError::Permanent { code: "InvalidObjectState".into(), message: "not archived".into() });
        }
        if let Some(t) = o.restore_requested {
            if t.elapsed() < d {
                return Err(StoreError::RestoreInProgress);
            }
        }
        o.restore_requested = Some(Instant::now());
        o.restore_days = days;
        Ok(())
    }
    async fn check_bucket(&self, _prefix: &str) -> Result<()> {
        self.enter("HeadBucket").await
    }
}

/// RFC 1123 date ("Tue, 24 Nov 2026 03:26:21 GMT") of Unix seconds.
fn http_date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let ms = crate::clock::fmt_ms(secs * 1000); // "YYYY-MM-DD hh:mm:ss UTC"
    let (y, m, d) = (&ms[0..4], &ms[5..7], &ms[8..10]);
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][m.parse::<usize>().unwrap_or(1) - 1];
    format!("{wd}, {d} {mon} {y} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Caps};

    /// The fake keeps the contract the real servers are held to (`tests/store_conformance.rs`):
    /// a test that passes on it says something about a real bucket.
    #[test]
    fn the_fake_keeps_the_store_contract() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let m = MemoryStore::new();
        *m.restore_delay.lock().unwrap() = Duration::from_millis(200);
        let fake = m.clone();
        let caps = Caps {
            conditional_writes: true,
            archive_tiers: true,
            restore_time: Duration::from_millis(200),
            it_archive: Some(Box::new(move |k| fake.set_archive_status(k, Some("ARCHIVE_ACCESS")))),
            lists_multipart: true,
            no_such_upload: true,
        };
        let r = rt.block_on(conformance::run(m.as_ref(), "t/", &caps));
        println!("{r}");
        assert!(r.failed.is_empty() && r.skipped.is_empty(), "{r}");
    }
}
