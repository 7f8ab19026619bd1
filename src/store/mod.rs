//! The `ObjectStore` trait: every S3 call coldvault makes goes through it.
//!
//! Implementations: `s3::S3Store` (aws-sdk-s3; the only file importing it), `memory::MemoryStore`
//! (in-process fake with storage classes, restores with delays, versions and fault injection),
//! and `Counted`, a wrapper that counts requests per operation for `coldvault status`.
//!
//! Error contract: implementations classify every failure into `StoreError` so that callers
//! decide retry-or-park without knowing the backend.

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[doc(hidden)]
pub mod conformance;
pub mod lifecycle;
pub mod memory;
pub mod s3;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// 5xx, SlowDown, timeouts, connection resets: retried forever with capped backoff.
    #[error("transient S3 error: {0}")]
    Retryable(String),
    /// The credentials expired or were refused as stale (ExpiredToken, RequestExpired, …):
    /// retried with the longest backoff until renewed credentials work; shown in `status`.
    #[error("S3 credentials expired or not yet valid ({0}); retrying until renewed credentials work")]
    Credentials(String),
    #[error("no such object")]
    NotFound,
    /// GET of an object in an archive tier that is not restored (InvalidObjectState).
    #[error("object is in an archive tier and not restored")]
    Archived,
    #[error("a restore is already in progress")]
    RestoreInProgress,
    /// The multipart upload id is gone (aborted or expired): restart the upload.
    #[error("multipart upload no longer exists")]
    NoSuchUpload,
    /// A conditional write (`If-None-Match: *`) found an object at the key already (HTTP 412):
    /// nothing was overwritten. The caller decides whether that object is its own earlier
    /// attempt (a retry after a lost response) or another one.
    #[error("an object already exists at this key (conditional write refused)")]
    AlreadyExists,
    /// AccessDenied, NoSuchBucket, InvalidStorageClass, …: retrying will not help.
    #[error("S3 refused the request: {code}: {message}")]
    Permanent { code: String, message: String },
}

impl StoreError {
    /// An object larger than the GET that read it allowed.
    pub fn too_large(key: &str, size: u64, max: u64) -> StoreError {
        StoreError::Permanent { code: "TooLarge".into(), message: format!("{key} is {size} bytes, more than the {max} this read allows") }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Retryable(_) | StoreError::Credentials(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub storage_class: String,
    /// User metadata (sent as x-amz-meta-*). Values must be ASCII.
    pub metadata: Vec<(String, String)>,
    /// Object tags, URL-encoded (`k=v&k2=v2`).
    pub tagging: Option<String>,
    /// Never overwrite: send `If-None-Match: *` (on PutObject, or on CompleteMultipartUpload
    /// for a multipart upload created with these options), so an existing object at the key
    /// makes the request fail with `AlreadyExists`. Stores that do not implement conditional
    /// writes get the request without it (`s3.rs` falls back once and says so).
    pub if_none_match: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreState {
    /// true while S3 is still thawing the object.
    pub ongoing: bool,
    /// expiry-date from x-amz-restore once the restored copy is available.
    pub expiry: Option<String>,
}

#[derive(Clone, Debug)]
pub struct HeadInfo {
    pub size: u64,
    pub storage_class: String,
    pub metadata: HashMap<String, String>,
    pub restore: Option<RestoreState>,
    /// x-amz-archive-status (Intelligent-Tiering archive access tiers).
    pub archive_status: Option<String>,
}

impl HeadInfo {
    /// The storage class as the index records it: S3's class, and for Intelligent-Tiering the
    /// archive access tier the object sits in, if any.
    pub fn class(&self) -> crate::vault::StorageClass {
        crate::vault::StorageClass::from_head(&self.storage_class, self.archive_status.as_deref())
    }
}

#[derive(Clone, Debug)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    pub storage_class: String,
    /// When the object was written (ms since the epoch; 0: not said): what a storage class's
    /// minimum duration and an Object Lock retention count from.
    pub modified_ms: i64,
}

/// A multipart upload begun and neither completed nor aborted.
#[derive(Clone, Debug)]
pub struct OpenMultipart {
    pub key: String,
    pub upload_id: String,
    /// When it was begun (ms since the epoch; 0: not said).
    pub initiated_ms: i64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()>;
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String>;
    /// Returns the part's ETag.
    async fn upload_part(&self, key: &str, upload_id: &str, part_number: i32, body: Bytes) -> Result<String>;
    /// `if_none_match`: complete only if no object exists at `key` (see `PutOptions`).
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;
    /// Bytes [start, end) of the object.
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes>;
    /// `get_range` into `buf` (cleared first), so that readers can reuse their buffers: a
    /// fresh buffer of several MiB costs a page fault per 4 KiB as it fills.
    async fn get_range_into(&self, key: &str, start: u64, end: u64, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        let b = self.get_range(key, start, end).await?;
        buf.clear();
        buf.extend_from_slice(&b);
        Ok(buf)
    }
    /// The whole object, if it is at most `max` bytes (else `too_large`, nothing more read: a
    /// swapped object cannot make the caller hold more than it expected; review N13).
    async fn get_object(&self, key: &str, max: u64) -> Result<Bytes>;
    /// The whole object and its user metadata, from one GET (a journal batch and its
    /// signature), if it is at most `max` bytes.
    async fn get_with_metadata(&self, key: &str, max: u64) -> Result<(Bytes, HashMap<String, String>)>;
    async fn head_object(&self, key: &str) -> Result<HeadInfo>;
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>>;
    /// Multipart uploads under `prefix` begun and never completed or aborted (a store without
    /// them lists none).
    async fn list_multipart(&self, _prefix: &str) -> Result<Vec<OpenMultipart>> {
        Ok(Vec::new())
    }
    async fn delete_object(&self, key: &str) -> Result<()>;
    /// `days` is None for Intelligent-Tiering archive tiers.
    async fn restore_object(&self, key: &str, days: Option<i32>, tier: &str) -> Result<()>;
    /// Checks that the bucket exists and is reachable, by a request the vault's policies allow
    /// (a listing of at most one key under `prefix`: a HeadBucket needs `s3:ListBucket` with no
    /// prefix condition, which the printed policies do not grant).
    async fn check_bucket(&self, prefix: &str) -> Result<()>;
}

/// Counts requests per operation: `coldvault status` reports them, and tests assert on them
/// (for example, zero requests during a second rsync).
pub struct Counted {
    inner: Arc<dyn ObjectStore>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// The vault's key prefix: reads of its signed statements (`P m/`, read by every rebuild)
    /// are counted apart from reads of files and metadata.
    prefix: String,
}

impl Counted {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Counted {
        Self::with_prefix(inner, "")
    }
    pub fn with_prefix(inner: Arc<dyn ObjectStore>, prefix: &str) -> Counted {
        Counted { inner, counts: Mutex::new(BTreeMap::new()), prefix: prefix.to_string() }
    }
    fn bump(&self, op: &'static str) {
        *self.counts.lock().unwrap().entry(op).or_default() += 1;
    }
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap().clone()
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        self.bump("PutObject");
        self.inner.put_object(key, body, opts).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String> {
        self.bump("CreateMultipartUpload");
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(&self, key: &str, upload_id: &str, n: i32, body: Bytes) -> Result<String> {
        self.bump("UploadPart");
        self.inner.upload_part(key, upload_id, n, body).await
    }
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()> {
        self.bump("CompleteMultipartUpload");
        self.inner.complete_multipart(key, upload_id, parts, if_none_match).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.bump("AbortMultipartUpload");
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.bump("GetObject");
        self.inner.get_range(key, start, end).await
    }
    async fn get_range_into(&self, key: &str, start: u64, end: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        self.bump("GetObject");
        self.inner.get_range_into(key, start, end, buf).await
    }
    async fn get_object(&self, key: &str, max: u64) -> Result<Bytes> {
        let statement = key.strip_prefix(self.prefix.as_str()).is_some_and(|k| k.starts_with("m/"));
        self.bump(if statement { "GetObject(statements)" } else { "GetObject" });
        self.inner.get_object(key, max).await
    }
    async fn get_with_metadata(&self, key: &str, max: u64) -> Result<(Bytes, HashMap<String, String>)> {
        self.bump("GetObject");
        self.inner.get_with_metadata(key, max).await
    }
    async fn head_object(&self, key: &str) -> Result<HeadInfo> {
        self.bump("HeadObject");
        self.inner.head_object(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>> {
        self.bump("ListObjectsV2");
        self.inner.list(prefix).await
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<OpenMultipart>> {
        self.bump("ListMultipartUploads");
        self.inner.list_multipart(prefix).await
    }
    async fn delete_object(&self, key: &str) -> Result<()> {
        self.bump("DeleteObject");
        self.inner.delete_object(key).await
    }
    async fn restore_object(&self, key: &str, days: Option<i32>, tier: &str) -> Result<()> {
        self.bump("RestoreObject");
        self.inner.restore_object(key, days, tier).await
    }
    async fn check_bucket(&self, prefix: &str) -> Result<()> {
        self.bump("ListObjectsV2");
        self.inner.check_bucket(prefix).await
    }
}
