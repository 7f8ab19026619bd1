//! The restore task: sends recorded RestoreObject requests (once; 409 RestoreAlreadyInProgress
//! counts as sent), polls HeadObject for pending restores at a pace suited to the tier, flips
//! files to readable when S3 reports `ongoing-request="false"`, expires them after the
//! expiry date, optionally fetches restored objects, and periodically refreshes storage
//! classes with ListObjectsV2. All state is in the index, so it survives restarts.

use super::{poll_interval, RState, Restore};
use crate::fs::{now_ms, Fs};
use crate::store::{ObjectStore, StoreError};
use std::sync::Arc;
use std::time::Duration;

fn interval(fs: &Fs, r: &Restore) -> i64 {
    fs.cfg.restore.poll_override.unwrap_or_else(|| poll_interval(&r.tier)).as_millis() as i64
}

pub async fn run(fs: Arc<Fs>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut next_refresh = fs.cfg.restore.class_refresh.map(|d| tokio::time::Instant::now() + d);
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = tick(&fs).await {
            tracing::error!(error = %e, "restore poller");
        }
        if let Some(t) = next_refresh {
            if tokio::time::Instant::now() >= t {
                refresh_classes(&fs).await;
                next_refresh = fs.cfg.restore.class_refresh.map(|d| tokio::time::Instant::now() + d);
            }
        }
        tokio::select! {
            _ = fs.restore_wakeup.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn tick(fs: &Arc<Fs>) -> crate::fs::Result<()> {
    let now = now_ms();
    for mut r in fs.restores()? {
        if r.next_check_ms > now {
            continue;
        }
        match r.state {
            RState::Requesting => send(fs, &mut r).await,
            RState::InProgress => head(fs, &mut r).await,
            RState::Ready => {
                if r.expiry_ms.is_some_and(|e| e <= now) {
                    tracing::info!(ino = r.ino, "restored copy expired; the object is archived again");
                    r.state = RState::Expired;
                } else if fs.cfg.restore.fetch_restored {
                    fetch(fs, &mut r).await;
                }
                r.next_check_ms = r.expiry_ms.unwrap_or(i64::MAX).min(now + 3_600_000);
            }
            _ => continue,
        }
        fs.put_restore(&r)?;
    }
    Ok(())
}

async fn send(fs: &Arc<Fs>, r: &mut Restore) {
    let now = now_ms();
    match fs.store.restore_object(&r.object_key, r.days, &r.tier).await {
        Ok(()) | Err(StoreError::RestoreInProgress) => {
            tracing::info!(ino = r.ino, tier = %r.tier, "RestoreObject accepted");
            r.state = RState::InProgress;
            r.last_check_ms = now;
            r.next_check_ms = now + interval(fs, r);
        }
        Err(StoreError::Permanent { code, .. }) if code == "InvalidObjectState" => {
            // Not archived (any more): readable as it is.
            r.state = RState::Ready;
            r.expiry_text = Some("indefinitely (the object is not in an archive tier)".into());
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

async fn head(fs: &Arc<Fs>, r: &mut Restore) {
    let now = now_ms();
    match fs.store.head_object(&r.object_key).await {
        Ok(h) => {
            fs.apply_head(r, &h);
            if r.state == RState::Ready {
                tracing::info!(ino = r.ino, until = ?r.expiry_text, "restore complete; file readable");
                if fs.cfg.restore.fetch_restored {
                    fetch(fs, r).await; // at once: the restored copy may be short-lived
                }
            } else {
                r.next_check_ms = now + interval(fs, r);
            }
        }
        Err(StoreError::NotFound) => {
            r.state = RState::Failed;
            r.reason = Some("the object no longer exists in the bucket".into());
        }
        Err(e) => {
            tracing::warn!(ino = r.ino, error = %e, "HeadObject for a pending restore failed");
            r.last_check_ms = now;
            r.next_check_ms = now + interval(fs, r).min(60_000);
        }
    }
}

/// `--fetch-restored`: keep a local copy so the file stays readable after the restore expires.
async fn fetch(fs: &Arc<Fs>, r: &mut Restore) {
    let Ok(i) = fs.getattr(r.ino) else { return };
    let Some(h) = i.header.clone() else { return };
    let dest = fs.staging.rcache_path(&h[96..128]);
    if dest.exists() {
        return;
    }
    match fs.store.get_object(&r.object_key).await {
        Ok(body) => {
            let tmp = dest.with_extension("tmp");
            let w = std::fs::write(&tmp, &body).and_then(|_| std::fs::File::open(&tmp)?.sync_all()).and_then(|_| std::fs::rename(&tmp, &dest));
            match w {
                Ok(()) => tracing::info!(ino = r.ino, bytes = body.len(), "restored object fetched into the local cache"),
                Err(e) => tracing::warn!(ino = r.ino, error = %e, "could not keep the restored object locally"),
            }
        }
        Err(e) => tracing::warn!(ino = r.ino, error = %e, "fetching the restored object failed; will retry"),
    }
}

/// ListObjectsV2 over the data prefix: learn lifecycle transitions without a HEAD per file.
async fn refresh_classes(fs: &Arc<Fs>) {
    let prefix = format!("{}d/", fs.cfg.prefix);
    match fs.store.list(&prefix).await {
        Ok(entries) => {
            let mut changed = 0;
            for e in entries {
                changed += fs.set_class_by_key(&e.key, &e.storage_class).unwrap_or(0);
            }
            tracing::info!(changed, "storage classes refreshed from the bucket listing");
        }
        Err(e) => tracing::warn!(error = %e, "storage-class refresh (ListObjectsV2) failed"),
    }
}
