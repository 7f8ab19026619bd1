//! `ObjectStore` over aws-sdk-s3. The only file in coldvault that imports the SDK.
//!
//! Credentials and region come from the standard AWS chain (env, profiles, SSO, instance roles);
//! `endpoint_url` (or `AWS_ENDPOINT_URL`) plus path-style addressing serve S3-compatible stores.
//! Checksums are `WhenRequired` because several S3-compatible servers reject the SDK's default
//! CRC trailers; coldvault sends its own checksum headers (CRC32C on whole objects, Content-MD5 on
//! parts). Data bodies are signed over plain HTTP only (`sign_payload`). Every SDK error is
//! classified into `StoreError` in `classify`.

use super::*;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, GlacierJobParameters, ObjectLockEnabled, ObjectLockMode, RestoreRequest,
    StorageClass, Tier,
};
use aws_sdk_s3::Client;

#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// Every object written gets this Object Lock retention (`--object-lock-days`).
    pub object_lock: Option<ObjectLock>,
}

/// An Object Lock retention: how long each object written can be neither deleted nor
/// overwritten (every version it is), and whether even the account's root may not shorten it
/// (COMPLIANCE) or a user allowed `s3:BypassGovernanceRetention` may (GOVERNANCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub days: u32,
    pub compliance: bool,
}

impl ObjectLock {
    /// The mode and retain-until date of an object written now.
    fn params(&self) -> (ObjectLockMode, aws_smithy_types::DateTime) {
        let mode = if self.compliance { ObjectLockMode::Compliance } else { ObjectLockMode::Governance };
        let until = crate::clock::now_ms() + i64::from(self.days) * 86_400_000;
        (mode, aws_smithy_types::DateTime::from_millis(until))
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Whether the store accepts `If-None-Match: *` on writes. Cleared (once, with a warning)
    /// when it answers NotImplemented: object keys are random per version, so the condition is
    /// a second line of defence, not the only one.
    conditional: std::sync::atomic::AtomicBool,
    /// Whether request bodies are covered by the signature (`x-amz-content-sha256`, which the
    /// server checks by hashing the whole body again): see `sign_payload`.
    sign_payload: bool,
    /// The Object Lock retention every object written gets (S3 requires a checksum with it:
    /// CRC32C on whole objects and Content-MD5 on parts are always sent).
    lock: Option<ObjectLock>,
}

/// Over HTTPS, TLS already keeps a body from being changed on the way, so data requests go
/// with `UNSIGNED-PAYLOAD` (their CRC32C or Content-MD5 still catches corruption): neither
/// coldvault nor the server spends a SHA-256 pass over every byte (AWS's own SDKs do the same).
/// Over plain HTTP (a server on the LAN) the body stays signed: otherwise anyone on the path
/// could replace an object with bytes of the same checksum, and the version would count as
/// safe until a restore found it broken.
fn sign_payload(endpoint: Option<&str>) -> bool {
    !endpoint.is_none_or(|e| e.trim_start().get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")))
}

/// A conditional write the store does not implement (S3-compatible servers without
/// conditional-write support answer 501 NotImplemented or 400 with that code).
fn conditional_unsupported(e: &StoreError) -> bool {
    matches!(e, StoreError::Permanent { code, .. } if code == "NotImplemented" || code == "HTTP501")
}

impl S3Store {
    pub async fn connect(s: &S3Settings) -> S3Store {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        // S3-compatible stores rarely care about the region, but SigV4 needs one.
        let region = s.region.clone().or_else(|| std::env::var("AWS_REGION").ok()).or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
        let endpoint = s.endpoint_url.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).filter(|e| !e.is_empty());
        if let Some(r) = &region {
            loader = loader.region(Region::new(r.clone()));
        } else if endpoint.is_some() {
            loader = loader.region(Region::new("us-east-1"));
        }
        let sdk = loader.load().await;
        // No request may hang forever: connecting and waiting for response bytes are bounded, and
        // a body that stops moving for a minute (either way) fails the attempt, which is retried.
        // A whole attempt is not timed by a fixed deadline: on a slow link several uploads of
        // several parts share the uplink, and below about 1.2 Mbit/s a 15-minute deadline failed
        // every part together, again and again, with no progress (review N10). The attempt
        // limit left is a sanity bound far beyond any part at any rate that moves.
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(120))
            .operation_attempt_timeout(std::time::Duration::from_secs(24 * 3600))
            .build();
        let stalls = aws_sdk_s3::config::StalledStreamProtectionConfig::enabled().grace_period(std::time::Duration::from_secs(60)).build();
        let sign_payload = sign_payload(endpoint.as_deref());
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .timeout_config(timeouts)
            .stalled_stream_protection(stalls)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = endpoint {
            b = b.endpoint_url(e).force_path_style(true);
        } else if s.path_style {
            b = b.force_path_style(true);
        }
        S3Store { client: Client::from_conf(b.build()), bucket: s.bucket.clone(), conditional: true.into(), sign_payload, lock: s.object_lock }
    }

    /// Why the bucket cannot take the Object Lock retention configured, if it cannot: Object
    /// Lock (and with it versioning) must be enabled on the bucket.
    pub async fn object_lock_refused(&self) -> Result<Option<String>> {
        let r = self.client.get_object_lock_configuration().bucket(&self.bucket).send().await;
        let enabled = match r {
            Ok(c) => c.object_lock_configuration().and_then(|c| c.object_lock_enabled()).is_some_and(|e| *e == ObjectLockEnabled::Enabled),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| s.meta().code()).unwrap_or_default().to_string();
                if code != "ObjectLockConfigurationNotFoundError" {
                    return Err(classify(e));
                }
                false
            }
        };
        if !enabled {
            return Ok(Some(format!(
                "bucket {b} does not have Object Lock enabled; enable it (with versioning) first: `aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled` then `aws s3api put-object-lock-configuration --bucket {b} --object-lock-configuration ObjectLockEnabled=Enabled`, or create the bucket with `--object-lock-enabled-for-bucket`",
                b = self.bucket
            )));
        }
        Ok(None)
    }

    /// Puts `rules` in the bucket's lifecycle configuration in place of its rules whose id
    /// starts with `ours`, keeping every other rule; how many others were kept.
    pub async fn apply_lifecycle(&self, ours: &str, rules: &[super::lifecycle::Rule]) -> Result<usize> {
        use aws_sdk_s3::types::{
            AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
            NoncurrentVersionExpiration, Transition, TransitionStorageClass,
        };
        let existing = match self.client.get_bucket_lifecycle_configuration().bucket(&self.bucket).send().await {
            Ok(c) => c.rules().to_vec(),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| s.meta().code()).unwrap_or_default().to_string();
                if code != "NoSuchLifecycleConfiguration" {
                    return Err(classify(e));
                }
                Vec::new()
            }
        };
        let mut all: Vec<LifecycleRule> = existing.into_iter().filter(|r| !r.id().is_some_and(|i| i.starts_with(ours))).collect();
        let kept = all.len();
        let bad = |e: aws_sdk_s3::error::BuildError| StoreError::Permanent { code: "InvalidLifecycleRule".into(), message: e.to_string() };
        for r in rules {
            let mut b =
                LifecycleRule::builder().id(&r.id).status(ExpirationStatus::Enabled).filter(LifecycleRuleFilter::builder().prefix(&r.prefix).build());
            if let Some(d) = r.abort_multipart_days {
                b = b.abort_incomplete_multipart_upload(AbortIncompleteMultipartUpload::builder().days_after_initiation(d).build());
            }
            for (d, c) in &r.transitions {
                b = b.transitions(Transition::builder().days(*d).storage_class(TransitionStorageClass::from(c.as_str())).build());
            }
            if let Some(d) = r.noncurrent_days {
                b = b.noncurrent_version_expiration(NoncurrentVersionExpiration::builder().noncurrent_days(d).build());
            }
            if r.expired_delete_markers {
                b = b.expiration(LifecycleExpiration::builder().expired_object_delete_marker(true).build());
            }
            all.push(b.build().map_err(bad)?);
        }
        let conf = BucketLifecycleConfiguration::builder().set_rules(Some(all)).build().map_err(bad)?;
        self.client.put_bucket_lifecycle_configuration().bucket(&self.bucket).lifecycle_configuration(conf).send().await.map_err(classify)?;
        Ok(kept)
    }

    fn conditional(&self, wanted: bool) -> Option<String> {
        (wanted && self.conditional.load(std::sync::atomic::Ordering::Relaxed)).then(|| "*".to_string())
    }

    fn conditional_unsupported_here(&self, e: &StoreError) -> bool {
        let unsupported = conditional_unsupported(e);
        if unsupported && self.conditional.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "this S3 store does not implement conditional writes (If-None-Match); writing without them (object keys are unique per version)");
        }
        unsupported
    }

    async fn put_once(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        let (lock_mode, lock_until) = self.lock.map(|l| l.params()).unzip();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(class(&opts.storage_class))
            .set_metadata(meta_map(&opts.metadata))
            .set_tagging(opts.tagging.clone())
            .set_if_none_match(self.conditional(opts.if_none_match))
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(lock_until)
            // A locked PUT must name its checksum's algorithm (the value is ours, not computed again).
            .set_checksum_algorithm(self.lock.map(|_| ChecksumAlgorithm::Crc32C))
            .checksum_crc32_c(crc32c(&body))
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing_if(!self.sign_payload)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn complete_once(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()> {
        let parts = parts.iter().map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build()).collect();
        let r = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_if_none_match(self.conditional(if_none_match))
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // Some S3-compatible servers (moto) answer success with a differently named XML
            // root, which the SDK rejects. A 200 whose body is a result (an ETag, no <Error>)
            // is accepted once HeadObject confirms the object exists.
            Err(SdkError::ServiceError(se))
                if se.raw().status().as_u16() == 200
                    && se.raw().body().bytes().is_some_and(|b| {
                        let t = String::from_utf8_lossy(b);
                        t.contains("<ETag>") && !t.contains("<Error>")
                    }) =>
            {
                tracing::debug!(key, "non-standard CompleteMultipartUpload response; confirming with HeadObject");
                self.head_object(key).await.map(|_| ())
            }
            Err(e) => Err(classify(e)),
        }
    }
}

fn classify<E>(e: SdkError<E, aws_smithy_runtime_api_http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            match code.as_str() {
                "NoSuchKey" | "NotFound" => StoreError::NotFound,
                "InvalidObjectState" => StoreError::Archived,
                "RestoreAlreadyInProgress" => StoreError::RestoreInProgress,
                "NoSuchUpload" => StoreError::NoSuchUpload,
                "PreconditionFailed" => StoreError::AlreadyExists,
                "" if status == 412 => StoreError::AlreadyExists,
                // 409s AWS asks clients to retry: a conditional write racing another request
                // on the key, or a conflicting operation in progress (review N15).
                "SlowDown"
                | "InternalError"
                | "RequestTimeout"
                | "ServiceUnavailable"
                | "RequestTimeTooSkewed"
                | "ConditionalRequestConflict"
                | "OperationAborted" => StoreError::Retryable(format!("{code} (HTTP {status}) {message}")),
                // The body arrived short or damaged on the way: sending it again helps.
                // (AWS answers BadDigest for a CRC32C mismatch too; Garage InvalidDigest, MinIO
                // XAmzContentChecksumMismatch.)
                "IncompleteBody" | "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "XAmzContentChecksumMismatch" => {
                    StoreError::Retryable(format!("{code} (HTTP {status}) {message}"))
                }
                "ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired" | "RequestExpired" => {
                    StoreError::Credentials(format!("{code}: {message}"))
                }
                // CompleteMultipartUpload naming a part S3 no longer has: start the upload over.
                "InvalidPart" | "InvalidPartOrder" => StoreError::NoSuchUpload,
                _ if status >= 500 || status == 429 => StoreError::Retryable(format!("HTTP {status} {code} {message}")),
                "" if status == 404 => StoreError::NotFound,
                "" if status == 403 => StoreError::Permanent { code: "AccessDenied".into(), message: "HTTP 403".into() },
                // CompleteMultipartUpload may fail inside a 200 response: S3 says to retry those.
                "" if status == 200 => StoreError::Retryable(format!("error inside a 200 response: {}", DisplayErrorContext(&e))),
                _ if code.is_empty() => StoreError::Permanent { code: format!("HTTP{status}"), message: DisplayErrorContext(&e).to_string() },
                _ => StoreError::Permanent { code, message },
            }
        }
        SdkError::ConstructionFailure(_) => {
            StoreError::Permanent { code: "ConstructionFailure".into(), message: DisplayErrorContext(&e).to_string() }
        }
        // Timeouts, dispatch failures (connection refused/reset) and unparseable responses.
        _ => StoreError::Retryable(DisplayErrorContext(&e).to_string()),
    }
}

mod aws_smithy_runtime_api_http {
    pub use aws_sdk_s3::config::http::HttpResponse;
}

/// Base64 CRC32C of a whole object's body, sent as `x-amz-checksum-crc32c` so the store
/// verifies what it received (and keeps it with the object). Parts keep Content-MD5: on AWS a
/// part's checksum algorithm must be declared when the multipart upload is created.
fn crc32c(body: &[u8]) -> String {
    use base64::Engine;
    let c = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32;
    base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes())
}

/// Base64 MD5 of a request body, sent as Content-MD5 so the store verifies what it received.
fn content_md5(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

fn meta_map(m: &[(String, String)]) -> Option<HashMap<String, String>> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().cloned().collect())
    }
}

fn class(c: &str) -> Option<StorageClass> {
    if c.is_empty() {
        None
    } else {
        Some(StorageClass::from(c))
    }
}

/// At most `limit` bytes of a body (a longer one is cut: the caller never gets more than it
/// asked for).
async fn collect_at_most(body: ByteStream, limit: u64) -> Result<Bytes> {
    let out = collect_into(body, limit, Vec::with_capacity(limit.min(64 << 20) as usize)).await?;
    Ok(Bytes::from(out))
}

/// At most `limit` bytes of `body`, appended to `out`.
async fn collect_into(mut body: ByteStream, limit: u64, mut out: Vec<u8>) -> Result<Vec<u8>> {
    let base = out.len();
    while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::Retryable(format!("reading body: {e}")))? {
        let room = (limit - (out.len() - base) as u64) as usize;
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if (out.len() - base) as u64 >= limit {
            break;
        }
    }
    Ok(out)
}

/// Parses `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`.
pub fn parse_restore_header(h: &str) -> RestoreState {
    let ongoing = h.contains("ongoing-request=\"true\"");
    let expiry = h.split("expiry-date=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
    RestoreState { ongoing, expiry }
}

impl S3Store {
    /// The body of a GET of bytes [start, end) of `key`.
    async fn ranged_body(&self, key: &str, start: u64, end: u64) -> Result<ByteStream> {
        let r =
            self.client.get_object().bucket(&self.bucket).key(key).range(format!("bytes={}-{}", start, end - 1)).send().await.map_err(classify)?;
        // A server that ignores Range answers with the whole object: never take its first
        // bytes for the ones asked for, and read no more than asked.
        if start > 0 && r.content_range().is_none() {
            return Err(StoreError::Permanent { code: "RangeIgnored".into(), message: format!("the S3 server ignored the Range of a GET of {key}") });
        }
        Ok(r.body)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        match self.put_once(key, body.clone(), opts).await {
            Err(e) if opts.if_none_match && self.conditional_unsupported_here(&e) => self.put_once(key, body, opts).await,
            r => r,
        }
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String> {
        let (lock_mode, lock_until) = self.lock.map(|l| l.params()).unzip();
        let r = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(lock_until)
            .set_storage_class(class(&opts.storage_class))
            .set_metadata(meta_map(&opts.metadata))
            .set_tagging(opts.tagging.clone())
            .send()
            .await
            .map_err(classify)?;
        r.upload_id().map(str::to_string).ok_or_else(|| StoreError::Retryable("no upload id in response".into()))
    }
    async fn upload_part(&self, key: &str, upload_id: &str, n: i32, body: Bytes) -> Result<String> {
        let r = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .content_md5(content_md5(&body))
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing_if(!self.sign_payload)
            .send()
            .await
            .map_err(classify)?;
        r.e_tag().map(str::to_string).ok_or_else(|| StoreError::Retryable("no ETag for part".into()))
    }
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()> {
        match self.complete_once(key, upload_id, parts, if_none_match).await {
            Err(e) if if_none_match && self.conditional_unsupported_here(&e) => self.complete_once(key, upload_id, parts, if_none_match).await,
            r => r,
        }
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await.map_err(classify)?;
        Ok(())
    }
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        if end <= start {
            return Ok(Bytes::new());
        }
        let body = self.ranged_body(key, start, end).await?;
        collect_at_most(body, end - start).await
    }
    async fn get_range_into(&self, key: &str, start: u64, end: u64, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        buf.clear();
        if end <= start {
            return Ok(buf);
        }
        let body = self.ranged_body(key, start, end).await?;
        collect_into(body, end - start, buf).await
    }
    async fn get_object(&self, key: &str, max: u64) -> Result<Bytes> {
        Ok(self.get_with_metadata(key, max).await?.0)
    }
    async fn get_with_metadata(&self, key: &str, max: u64) -> Result<(Bytes, std::collections::HashMap<String, String>)> {
        let mut r = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(classify)?;
        if let Some(n) = r.content_length().filter(|&n| n as u64 > max) {
            return Err(StoreError::too_large(key, n as u64, max));
        }
        let md = r.metadata.take().unwrap_or_default();
        // Without a length (or a lying one), reading stops one byte past the bound.
        let body = collect_at_most(r.body, max.saturating_add(1)).await?;
        if body.len() as u64 > max {
            return Err(StoreError::too_large(key, body.len() as u64, max));
        }
        Ok((body, md))
    }
    async fn head_object(&self, key: &str) -> Result<HeadInfo> {
        let r = self.client.head_object().bucket(&self.bucket).key(key).send().await.map_err(classify)?;
        Ok(HeadInfo {
            size: r.content_length().unwrap_or(0).max(0) as u64,
            storage_class: r.storage_class().map(|c| c.as_str().to_string()).unwrap_or_else(|| "STANDARD".into()),
            metadata: r.metadata().cloned().unwrap_or_default(),
            restore: r.restore().map(parse_restore_header),
            archive_status: r.archive_status().map(|a| a.as_str().to_string()),
        })
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(classify)?;
            for o in page.contents() {
                out.push(ListEntry {
                    key: o.key().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    storage_class: o.storage_class().map(|c| c.as_str().to_string()).unwrap_or_else(|| "STANDARD".into()),
                    modified_ms: o.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<super::OpenMultipart>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(classify)?;
            for u in page.uploads() {
                out.push(super::OpenMultipart {
                    key: u.key().unwrap_or_default().to_string(),
                    upload_id: u.upload_id().unwrap_or_default().to_string(),
                    initiated_ms: u.initiated().and_then(|t| t.to_millis().ok()).unwrap_or(0),
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }
    async fn delete_object(&self, key: &str) -> Result<()> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(classify)?;
        Ok(())
    }
    async fn restore_object(&self, key: &str, days: Option<i32>, tier: &str) -> Result<()> {
        let mut req = RestoreRequest::builder().set_days(days);
        if days.is_some() {
            let gp = GlacierJobParameters::builder()
                .tier(Tier::from(tier))
                .build()
                .map_err(|e| StoreError::Permanent { code: "BadRequest".into(), message: e.to_string() })?;
            req = req.glacier_job_parameters(gp);
        }
        match self.client.restore_object().bucket(&self.bucket).key(key).restore_request(req.build()).send().await.map_err(classify) {
            // InvalidObjectState means "archived" to a GET, and "not archived" to a restore:
            // the object reads as it is (the poller marks it ready).
            Err(StoreError::Archived) => {
                Err(StoreError::Permanent { code: "InvalidObjectState".into(), message: "the object is not in an archive tier".into() })
            }
            r => r.map(drop),
        }
    }
    async fn check_bucket(&self, prefix: &str) -> Result<()> {
        self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).max_keys(1).send().await.map_err(classify)?;
        Ok(())
    }
}

/// `disable_payload_signing` when `cond` holds (the SDK has it only for PutObject and UploadPart).
trait UnsignedIf: Sized {
    fn disable_payload_signing_if(self, cond: bool) -> Self;
}

impl<E, B> UnsignedIf for aws_sdk_s3::client::customize::CustomizableOperation<aws_sdk_s3::operation::put_object::PutObjectOutput, E, B> {
    fn disable_payload_signing_if(self, cond: bool) -> Self {
        if cond {
            self.disable_payload_signing()
        } else {
            self
        }
    }
}

impl<E, B> UnsignedIf for aws_sdk_s3::client::customize::CustomizableOperation<aws_sdk_s3::operation::upload_part::UploadPartOutput, E, B> {
    fn disable_payload_signing_if(self, cond: bool) -> Self {
        if cond {
            self.disable_payload_signing()
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    //! Error classification through the real SDK: a one-line HTTP server answers every request
    //! with a canned S3 error document, and the store's classification of what the SDK parsed
    //! is checked. (A classification table alone would not show that the SDK hands over the
    //! code the way `classify` expects.)
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The check value of CRC32C (iSCSI, Castagnoli) and the encoding S3 expects: the four
    /// big-endian bytes in base64.
    #[test]
    fn crc32c_header_value() {
        assert_eq!(super::crc32c(b"123456789"), base64::Engine::encode(&base64::engine::general_purpose::STANDARD, 0xE306_9283u32.to_be_bytes()));
        assert_eq!(super::crc32c(b""), "AAAAAA==");
    }

    /// Request heads (lower-cased) the one-line server has received.
    type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    async fn answering(status: u16, code: &str) -> (S3Store, tokio::task::JoinHandle<()>) {
        let (s, server, _) = answering_and_keeping(status, code).await;
        (s, server)
    }

    async fn answering_and_keeping(status: u16, code: &str) -> (S3Store, tokio::task::JoinHandle<()>, Heads) {
        let heads = Heads::default();
        let kept = heads.clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let body = if code.is_empty() {
            String::new()
        } else {
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>canned {code}</Message><RequestId>1</RequestId></Error>")
        };
        let resp =
            format!("HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let resp = resp.clone();
                let kept = kept.clone();
                tokio::spawn(async move {
                    // Read the whole request (headers, then Content-Length bytes) before answering.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap_or(0));
                            if buf.len() >= end + 4 + len {
                                kept.lock().unwrap().push(head);
                                break;
                            }
                        }
                    }
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        (S3Store { client: Client::from_conf(conf), bucket: "b".into(), conditional: true.into(), sign_payload: true, lock: None }, server, heads)
    }

    /// Bodies are signed over plain HTTP and not over HTTPS (whose TLS protects them).
    #[test]
    fn payloads_are_signed_unless_tls_protects_them() {
        assert!(!sign_payload(None), "AWS's own endpoints are HTTPS");
        assert!(!sign_payload(Some("https://s3.eu-central-1.wasabisys.com")));
        assert!(!sign_payload(Some("HTTPS://minio.example")));
        assert!(sign_payload(Some("http://127.0.0.1:3900")));
        assert!(sign_payload(Some("minio.lan:9000")), "an endpoint without a scheme is not known to be TLS");
    }

    /// What goes on the wire: the SHA-256 of the body in the signed `x-amz-content-sha256`
    /// header when payloads are signed, `UNSIGNED-PAYLOAD` when not; the CRC32C is sent either way.
    #[tokio::test]
    async fn data_requests_carry_the_payload_hash_only_when_signed() {
        let body = Bytes::from_static(b"an encrypted object");
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        for signed in [true, false] {
            let (mut s, server, heads) = answering_and_keeping(200, "").await;
            s.sign_payload = signed;
            s.put_object("k", body.clone(), &PutOptions::default()).await.expect("put");
            let _ = s.upload_part("k", "u", 1, body.clone()).await;
            let heads = heads.lock().unwrap().clone();
            assert_eq!(heads.len(), 2, "{heads:?}");
            for h in &heads {
                let want = if signed { sha.as_str() } else { "unsigned-payload" };
                assert!(h.contains(&format!("x-amz-content-sha256: {want}")), "signed={signed}: {h}");
                let signed_headers = h.split("signedheaders=").nth(1).and_then(|r| r.split(',').next()).unwrap_or("");
                assert!(signed_headers.split(';').any(|x| x == "x-amz-content-sha256"), "the hash header must be signed: {h}");
            }
            assert!(heads[0].contains(&format!("x-amz-checksum-crc32c: {}", super::crc32c(&body).to_ascii_lowercase())), "{}", heads[0]);
            assert!(heads[1].contains("content-md5:"), "{}", heads[1]);
            server.abort();
        }
    }

    #[tokio::test]
    async fn s3_errors_are_classified_as_the_uploader_needs() {
        let put = PutOptions::default();
        // (HTTP status, S3 error code, what the uploader must make of it)
        let cases: [(u16, &str, &str); 14] = [
            (400, "ExpiredToken", "credentials"),
            (400, "TokenRefreshRequired", "credentials"),
            (403, "RequestExpired", "credentials"),
            (400, "IncompleteBody", "retryable"),
            (400, "BadDigest", "retryable"),
            (400, "RequestTimeout", "retryable"),
            (503, "SlowDown", "retryable"),
            (500, "InternalError", "retryable"),
            (502, "", "retryable"),
            (412, "PreconditionFailed", "exists"),
            (404, "NoSuchUpload", "no-such-upload"),
            (400, "InvalidPart", "no-such-upload"),
            (403, "AccessDenied", "permanent"),
            (400, "InvalidStorageClass", "permanent"),
        ];
        for (status, code, want) in cases {
            let (s, server) = answering(status, code).await;
            let e = if code.starts_with("Invalid") && code.contains("Part") {
                s.complete_multipart("k", "u", &[(1, "\"e\"".into())], true).await
            } else if code == "NoSuchUpload" {
                s.upload_part("k", "u", 1, Bytes::from_static(b"x")).await.map(|_| ())
            } else {
                s.put_object("k", Bytes::from_static(b"hello"), &put).await
            }
            .expect_err("a canned error was taken for success");
            let got = match &e {
                StoreError::Credentials(_) => "credentials",
                StoreError::Retryable(_) => "retryable",
                StoreError::AlreadyExists => "exists",
                StoreError::NoSuchUpload => "no-such-upload",
                StoreError::Permanent { .. } => "permanent",
                _ => "other",
            };
            assert_eq!(got, want, "HTTP {status} {code} became {e:?}");
            if want == "credentials" {
                assert!(e.is_retryable(), "expired credentials must be retried (with the long backoff), not parked");
            }
            server.abort();
        }
        // A restore of an object not (or no longer) archived: S3 answers InvalidObjectState,
        // which the restore poller must read as "readable now", not as "archived".
        let (s, server) = answering(403, "InvalidObjectState").await;
        let e = s.restore_object("k", Some(1), "Bulk").await.expect_err("a canned error was taken for success");
        assert!(matches!(&e, StoreError::Permanent { code, .. } if code == "InvalidObjectState"), "{e:?}");
        server.abort();
    }
}
