//! The revocations this machine has seen, kept in its config: one deleted from the bucket
//! still applies here (security review N2). A store wrapper that lists and serves this
//! machine's copy of each one the bucket no longer holds, marked `LOCAL_COPY`, so that every
//! reader of the statements (`Trust::load`) sees it and says it is gone; all else goes to the
//! bucket unchanged.

use crate::store::{HeadInfo, ListEntry, ObjectStore, OpenMultipart, PutOptions, Result, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The storage class a listed statement has when it is this machine's copy.
pub const LOCAL_COPY: &str = "LOCAL_COPY";

pub struct Remembered {
    inner: Arc<dyn ObjectStore>,
    /// Full key → the statement object.
    statements: BTreeMap<String, Bytes>,
}

impl Remembered {
    /// `store`, with the statements of `remembered` (key below `prefix` → the statement
    /// object) served when the bucket no longer has them.
    pub fn wrap(store: Arc<dyn ObjectStore>, prefix: &str, remembered: &BTreeMap<String, String>) -> Arc<dyn ObjectStore> {
        if remembered.is_empty() {
            return store;
        }
        let statements = remembered.iter().map(|(rel, body)| (format!("{prefix}{rel}"), Bytes::from(body.clone().into_bytes()))).collect();
        Arc::new(Remembered { inner: store, statements })
    }

    fn kept(&self, key: &str, max: u64) -> Option<Result<Bytes>> {
        let b = self.statements.get(key)?;
        Some(if b.len() as u64 > max { Err(StoreError::too_large(key, b.len() as u64, max)) } else { Ok(b.clone()) })
    }
}

#[async_trait]
impl ObjectStore for Remembered {
    async fn put_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<()> {
        self.inner.put_object(key, body, opts).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(&self, key: &str, upload_id: &str, part_number: i32, body: Bytes) -> Result<String> {
        self.inner.upload_part(key, upload_id, part_number, body).await
    }
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)], if_none_match: bool) -> Result<()> {
        self.inner.complete_multipart(key, upload_id, parts, if_none_match).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.inner.get_range(key, start, end).await
    }
    async fn get_range_into(&self, key: &str, start: u64, end: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        self.inner.get_range_into(key, start, end, buf).await
    }
    async fn get_object(&self, key: &str, max: u64) -> Result<Bytes> {
        match self.inner.get_object(key, max).await {
            Err(StoreError::NotFound) => self.kept(key, max).unwrap_or(Err(StoreError::NotFound)),
            r => r,
        }
    }
    async fn get_with_metadata(&self, key: &str, max: u64) -> Result<(Bytes, HashMap<String, String>)> {
        match self.inner.get_with_metadata(key, max).await {
            Err(StoreError::NotFound) => self.kept(key, max).unwrap_or(Err(StoreError::NotFound)).map(|b| (b, HashMap::new())),
            r => r,
        }
    }
    async fn head_object(&self, key: &str) -> Result<HeadInfo> {
        self.inner.head_object(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>> {
        let mut listed = self.inner.list(prefix).await?;
        let missing: Vec<ListEntry> = self
            .statements
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| !listed.iter().any(|o| &o.key == *k))
            .map(|(k, b)| ListEntry { key: k.clone(), size: b.len() as u64, storage_class: LOCAL_COPY.into(), modified_ms: 0 })
            .collect();
        if !missing.is_empty() {
            listed.extend(missing);
            listed.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Ok(listed)
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<OpenMultipart>> {
        self.inner.list_multipart(prefix).await
    }
    async fn delete_object(&self, key: &str) -> Result<()> {
        self.inner.delete_object(key).await
    }
    async fn restore_object(&self, key: &str, days: Option<i32>, tier: &str) -> Result<()> {
        self.inner.restore_object(key, days, tier).await
    }
    async fn check_bucket(&self, prefix: &str) -> Result<()> {
        self.inner.check_bucket(prefix).await
    }
}
