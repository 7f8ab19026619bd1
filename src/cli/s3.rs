//! Connecting to the vault's bucket, and turning a store error into a message that names the
//! bucket and the endpoint.

use anyhow::{anyhow, bail, Result};
use coldvault::config::Config;
use coldvault::store::{s3::S3Store, ObjectStore, StoreError};
use std::time::Duration;

pub fn explain_store(e: StoreError, cfg_bucket: &str, endpoint: &Option<String>) -> anyhow::Error {
    let where_ = endpoint.clone().unwrap_or_else(|| "AWS S3".into());
    match e {
        StoreError::NotFound => anyhow!("bucket {cfg_bucket:?} does not exist at {where_}"),
        StoreError::Permanent { code, message } if code == "NoSuchBucket" => anyhow!("bucket {cfg_bucket:?} does not exist at {where_}: {message}"),
        StoreError::Permanent { code, message } => anyhow!("S3 at {where_} refused access to bucket {cfg_bucket:?}: {code} {message}"),
        StoreError::Retryable(m) => anyhow!("cannot reach S3 at {where_}: {m}"),
        other => anyhow!("S3 at {where_}: {other}"),
    }
}

/// The vault's bucket as every command that reads the vault sees it: with the revocations this
/// machine has seen, should the bucket have lost them (`remote_meta::remembered`).
pub async fn connect_vault(cfg: &Config) -> Result<std::sync::Arc<dyn coldvault::store::ObjectStore>> {
    let store = std::sync::Arc::new(connect(cfg).await?);
    Ok(coldvault::remote_meta::remembered::Remembered::wrap(store, &cfg.prefix, &cfg.revocations))
}

pub async fn connect(cfg: &Config) -> Result<S3Store> {
    let store = S3Store::connect(&cfg.s3_settings()).await;
    match tokio::time::timeout(Duration::from_secs(30), store.check_bucket(&cfg.prefix)).await {
        Err(_) => bail!("cannot reach S3 at {}: timed out after 30 s", cfg.endpoint_url.clone().unwrap_or_else(|| "AWS S3".into())),
        Ok(Err(e)) => Err(explain_store(e, &cfg.bucket, &cfg.endpoint_url)),
        Ok(Ok(())) => Ok(store),
    }
}
