//! What coldvault relies on from an object store, checked against any [`ObjectStore`]: the
//! in-memory fake (`memory.rs`, in the unit tests) and real servers (s3s-fs and moto, by
//! `tests/store_conformance.rs` run from the e2e suite). A behaviour the fake has and a real
//! server lacks — or the other way round — is a test that passes on the fake and a bug in a
//! real bucket; this suite is where the two are held to the same contract.
//!
//! Each check is named after the promise it tests. What a server cannot do (archive tiers on
//! s3s-fs) is declared in [`Caps`] and reported as skipped, never as passed.

use super::{ObjectStore, PutOptions, StoreError};
use bytes::Bytes;
use std::time::Duration;

/// Moves an object at a key into an archive access tier.
pub type MoveToArchive = dyn Fn(&str) + Send + Sync;

/// What the server under test is expected to support.
pub struct Caps {
    /// `If-None-Match: *` on PutObject and CompleteMultipartUpload.
    pub conditional_writes: bool,
    /// GLACIER / DEEP_ARCHIVE objects that refuse GETs until RestoreObject completes.
    pub archive_tiers: bool,
    /// How long a restore takes on this server (polled up to 10× this).
    pub restore_time: Duration,
    /// Moves an Intelligent-Tiering object into an archive access tier (only the fake can do
    /// that on demand; S3 takes 90 days).
    pub it_archive: Option<Box<MoveToArchive>>,
    /// ListMultipartUploads.
    pub lists_multipart: bool,
    /// UploadPart to a completed or aborted upload answers NoSuchUpload, as S3 does.
    pub no_such_upload: bool,
}

/// The outcome of one run: every check by name.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
    pub skipped: Vec<(&'static str, &'static str)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.passed {
            writeln!(f, "ok       {p}")?;
        }
        for (s, why) in &self.skipped {
            writeln!(f, "skipped  {s}: {why}")?;
        }
        for (n, e) in &self.failed {
            writeln!(f, "FAILED   {n}: {e}")?;
        }
        write!(f, "{} passed, {} failed, {} skipped", self.passed.len(), self.failed.len(), self.skipped.len())
    }
}

type Check = Result<(), String>;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn body(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

fn standard() -> PutOptions {
    PutOptions { storage_class: "STANDARD".into(), ..Default::default() }
}

/// Run every check under `prefix` (which should be empty and is left with the objects made).
pub async fn run(store: &dyn ObjectStore, prefix: &str, caps: &Caps) -> Report {
    let mut r = Report::default();
    let p = prefix;
    macro_rules! check {
        ($name:literal, $e:expr) => {
            match $e.await {
                Ok(()) => r.passed.push($name),
                Err(e) => r.failed.push(($name, e)),
            }
        };
    }
    macro_rules! skip {
        ($name:literal, $why:literal) => {
            r.skipped.push(($name, $why))
        };
    }
    check!("put, get and head keep bytes, size and user metadata", put_get_head(store, p));
    check!("ranges: inside, clamped at the end, the last byte alone", ranges(store, p));
    check!("a missing key is NotFound for get, range, head and metadata", missing(store, p));
    check!("list: keys under a prefix only, sizes, classes, past 1,000 keys", listing(store, p));
    check!("an unknown storage class is refused for good", bad_class(store, p));
    check!("multipart: parts assembled in order, resumable by part number", multipart(store, p));
    check!("delete removes the object", delete(store, p));
    if caps.no_such_upload {
        check!("a part sent to a completed or aborted upload is NoSuchUpload", gone_upload(store, p));
    } else {
        skip!("a part sent to a completed or aborted upload is NoSuchUpload", "the server answers otherwise (see the caps)");
    }
    if caps.conditional_writes {
        check!("a conditional PUT never overwrites", conditional_put(store, p));
        check!("a conditional multipart completion never overwrites", conditional_multipart(store, p));
    } else {
        skip!("a conditional PUT never overwrites", "the server does not implement If-None-Match");
        skip!("a conditional multipart completion never overwrites", "the server does not implement If-None-Match");
    }
    if caps.lists_multipart {
        check!("open multipart uploads are listed until aborted", open_multipart(store, p));
    } else {
        skip!("open multipart uploads are listed until aborted", "the server does not list multipart uploads");
    }
    if caps.archive_tiers {
        check!("an archived object refuses GETs until restored, then reads", archive(store, p, caps.restore_time));
        check!("restoring an object that is not archived is InvalidObjectState", restore_unarchived(store, p));
    } else {
        skip!("an archived object refuses GETs until restored, then reads", "the server has no archive tiers");
        skip!("restoring an object that is not archived is InvalidObjectState", "the server has no archive tiers");
    }
    match &caps.it_archive {
        Some(move_to_archive) => {
            check!("an Intelligent-Tiering object in an archive tier reads as archived", it_archive(store, p, move_to_archive, caps.restore_time))
        }
        None => skip!("an Intelligent-Tiering object in an archive tier reads as archived", "the server cannot archive on demand"),
    }
    r
}

async fn put_get_head(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}basic/a");
    let b = body(100_000, 1);
    let opts = PutOptions { metadata: vec![("cv".into(), "value-1".into()), ("cvs".into(), "sig".into())], ..standard() };
    s.put_object(&key, b.clone(), &opts).await.map_err(|e| format!("put: {e}"))?;
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("get: {e}"))?;
    ensure(got == b, || format!("get returned {} bytes, not the {} put", got.len(), b.len()))?;
    let h = s.head_object(&key).await.map_err(|e| format!("head: {e}"))?;
    ensure(h.size == b.len() as u64, || format!("head size {} for {} bytes", h.size, b.len()))?;
    ensure(h.class() == crate::vault::StorageClass::Standard, || format!("head class {:?}", h.storage_class))?;
    ensure(h.restore.is_none(), || format!("head says restore {:?} of an object never archived", h.restore))?;
    ensure(h.metadata.get("cv").map(String::as_str) == Some("value-1"), || format!("head metadata {:?}", h.metadata))?;
    let (got, md) = s.get_with_metadata(&key, u64::MAX).await.map_err(|e| format!("get with metadata: {e}"))?;
    ensure(got == b, || "get with metadata: other bytes".into())?;
    ensure(md.get("cvs").map(String::as_str) == Some("sig"), || format!("get metadata {md:?}"))?;
    // A GET bounded below the object's size reads none of it (review N13); at its size, all.
    match s.get_with_metadata(&key, b.len() as u64 - 1).await {
        Err(StoreError::Permanent { code, .. }) if code == "TooLarge" => {}
        other => return Err(format!("a GET bounded below the object's size gave {:?}", other.map(|(b, _)| b.len()))),
    }
    ensure(s.get_object(&key, b.len() as u64).await.map_err(|e| format!("get at its size: {e}"))? == b, || "get at its size: other bytes".into())?;
    // An empty object is an object.
    let empty = format!("{p}basic/empty");
    s.put_object(&empty, Bytes::new(), &standard()).await.map_err(|e| format!("put empty: {e}"))?;
    ensure(s.head_object(&empty).await.map_err(|e| format!("head empty: {e}"))?.size == 0, || "empty object has a size".into())
}

async fn ranges(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}ranges/a");
    let b = body(70_000, 2);
    s.put_object(&key, b.clone(), &standard()).await.map_err(|e| format!("put: {e}"))?;
    let mid = s.get_range(&key, 1000, 5000).await.map_err(|e| format!("range: {e}"))?;
    ensure(mid == b.slice(1000..5000), || format!("range 1000..5000 gave {} bytes", mid.len()))?;
    let tail = s.get_range(&key, 69_000, 80_000).await.map_err(|e| format!("range past the end: {e}"))?;
    ensure(tail == b.slice(69_000..), || format!("range past the end gave {} bytes, not the 1,000 left", tail.len()))?;
    // How a fetched copy proves the object ends where it should (restore poller).
    let last = s.get_range(&key, 69_999, 70_001).await.map_err(|e| format!("range over the last byte: {e}"))?;
    ensure(last.len() == 1 && last[0] == b[69_999], || format!("range over the last byte gave {} bytes", last.len()))?;
    let into = s.get_range_into(&key, 10, 20, vec![9; 100]).await.map_err(|e| format!("range into a buffer: {e}"))?;
    ensure(into == b[10..20], || format!("range into a used buffer gave {into:?}"))
}

async fn missing(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}missing/none");
    let nf = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("{what} of a missing key: {other:?}")),
    };
    nf("get", s.get_object(&key, u64::MAX).await.map(drop))?;
    nf("range", s.get_range(&key, 0, 10).await.map(drop))?;
    nf("head", s.head_object(&key).await.map(drop))?;
    nf("get with metadata", s.get_with_metadata(&key, u64::MAX).await.map(drop))
}

async fn listing(s: &dyn ObjectStore, p: &str) -> Check {
    let dir = format!("{p}list/");
    let n = 1_010;
    // 16 PUTs at a time (the store is borrowed, so they are polled together, not spawned).
    let keys: Vec<String> = (0..n).map(|i| format!("{dir}k{i:05}")).collect();
    let mut it = keys.iter();
    loop {
        let batch: Vec<&String> = it.by_ref().take(16).collect();
        if batch.is_empty() {
            break;
        }
        let opts = standard();
        let futs = batch.iter().map(|k| s.put_object(k, body(10 + k.len() % 7, 3), &opts));
        for r in futures_join(futs).await {
            r.map_err(|e| format!("put: {e}"))?;
        }
    }
    s.put_object(&format!("{p}list-other"), body(5, 4), &standard()).await.map_err(|e| format!("put: {e}"))?;
    let l = s.list(&dir).await.map_err(|e| format!("list: {e}"))?;
    let mut got: Vec<&str> = l.iter().map(|e| e.key.as_str()).collect();
    got.sort();
    ensure(got.len() == n, || format!("listed {} keys of {n} (a listing stopped at a page?)", got.len()))?;
    ensure(got == keys.iter().map(String::as_str).collect::<Vec<_>>(), || "other keys listed".into())?;
    let e = l.iter().find(|e| e.key == keys[7]).ok_or("a key is missing")?;
    ensure(e.size == (10 + keys[7].len() % 7) as u64, || format!("listed size {}", e.size))?;
    ensure(e.storage_class == "STANDARD", || format!("listed class {:?}", e.storage_class))
}

/// `join_all` without a dependency: polls the futures together, keeps their order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

async fn bad_class(s: &dyn ObjectStore, p: &str) -> Check {
    let opts = PutOptions { storage_class: "NOT_A_CLASS".into(), ..Default::default() };
    match s.put_object(&format!("{p}class/bad"), body(10, 5), &opts).await {
        Err(e) if !e.is_retryable() && !matches!(e, StoreError::AlreadyExists) => Ok(()),
        other => Err(format!("PUT with class NOT_A_CLASS: {other:?}")),
    }
}

const PART: usize = 5 << 20;

async fn multipart(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}mp/a");
    let (a, b) = (body(PART, 6), body(1000, 7));
    let id = s.create_multipart(&key, &standard()).await.map_err(|e| format!("create: {e}"))?;
    // Parts sent out of order, and the second sent twice (a retry after a lost answer).
    let e2 = s.upload_part(&key, &id, 2, b.clone()).await.map_err(|e| format!("part 2: {e}"))?;
    let e1 = s.upload_part(&key, &id, 1, a.clone()).await.map_err(|e| format!("part 1: {e}"))?;
    let e2b = s.upload_part(&key, &id, 2, b.clone()).await.map_err(|e| format!("part 2 again: {e}"))?;
    ensure(e2 == e2b, || format!("the same part sent twice has two ETags ({e2}, {e2b})"))?;
    s.complete_multipart(&key, &id, &[(1, e1), (2, e2)], false).await.map_err(|e| format!("complete: {e}"))?;
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("get: {e}"))?;
    ensure(got.len() == PART + 1000 && got[..PART] == a[..] && got[PART..] == b[..], || format!("assembled {} bytes, other content", got.len()))
}

/// What a resumed upload meets when its upload id is gone: the uploader starts it again.
async fn gone_upload(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}mp/gone");
    let id = s.create_multipart(&key, &standard()).await.map_err(|e| format!("create: {e}"))?;
    let e1 = s.upload_part(&key, &id, 1, body(100, 18)).await.map_err(|e| format!("part: {e}"))?;
    s.complete_multipart(&key, &id, &[(1, e1)], false).await.map_err(|e| format!("complete: {e}"))?;
    match s.upload_part(&key, &id, 2, body(100, 19)).await {
        Err(StoreError::NoSuchUpload) => {}
        other => return Err(format!("a part of a completed upload: {other:?}")),
    }
    let id = s.create_multipart(&key, &standard()).await.map_err(|e| format!("create: {e}"))?;
    s.abort_multipart(&key, &id).await.map_err(|e| format!("abort: {e}"))?;
    match s.upload_part(&key, &id, 1, body(100, 20)).await {
        Err(StoreError::NoSuchUpload) => Ok(()),
        other => Err(format!("a part of an aborted upload: {other:?}")),
    }
}

async fn delete(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}del/a");
    s.put_object(&key, body(10, 8), &standard()).await.map_err(|e| format!("put: {e}"))?;
    s.delete_object(&key).await.map_err(|e| format!("delete: {e}"))?;
    match s.get_object(&key, u64::MAX).await {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("get after delete: {:?}", other.map(|b| b.len()))),
    }
}

async fn conditional_put(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}cond/a");
    let first = body(1000, 9);
    let opts = PutOptions { if_none_match: true, ..standard() };
    s.put_object(&key, first.clone(), &opts).await.map_err(|e| format!("first conditional put: {e}"))?;
    match s.put_object(&key, body(1000, 10), &opts).await {
        Err(StoreError::AlreadyExists) => {}
        other => return Err(format!("second conditional put: {other:?}")),
    }
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("get: {e}"))?;
    ensure(got == first, || "the object was overwritten".into())
}

async fn conditional_multipart(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}cond/mp");
    let first = body(100, 11);
    s.put_object(&key, first.clone(), &standard()).await.map_err(|e| format!("put: {e}"))?;
    let opts = PutOptions { if_none_match: true, ..standard() };
    let id = s.create_multipart(&key, &opts).await.map_err(|e| format!("create: {e}"))?;
    let e1 = s.upload_part(&key, &id, 1, body(2000, 12)).await.map_err(|e| format!("part: {e}"))?;
    let r = s.complete_multipart(&key, &id, &[(1, e1)], true).await;
    let _ = s.abort_multipart(&key, &id).await;
    match r {
        Err(StoreError::AlreadyExists) => {}
        other => return Err(format!("conditional completion over an object: {other:?}")),
    }
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("get: {e}"))?;
    ensure(got == first, || "the object was overwritten".into())
}

async fn open_multipart(s: &dyn ObjectStore, p: &str) -> Check {
    let dir = format!("{p}open/");
    let key = format!("{dir}a");
    let id = s.create_multipart(&key, &standard()).await.map_err(|e| format!("create: {e}"))?;
    s.upload_part(&key, &id, 1, body(100, 13)).await.map_err(|e| format!("part: {e}"))?;
    let open = s.list_multipart(&dir).await.map_err(|e| format!("list multipart: {e}"))?;
    ensure(open.iter().any(|o| o.key == key && o.upload_id == id), || format!("open upload not listed: {open:?}"))?;
    s.abort_multipart(&key, &id).await.map_err(|e| format!("abort: {e}"))?;
    let open = s.list_multipart(&dir).await.map_err(|e| format!("list multipart: {e}"))?;
    ensure(!open.iter().any(|o| o.upload_id == id), || "an aborted upload is still listed".into())
}

async fn archive(s: &dyn ObjectStore, p: &str, restore_time: Duration) -> Check {
    let key = format!("{p}arch/a");
    let b = body(3000, 15);
    let opts = PutOptions { storage_class: "DEEP_ARCHIVE".into(), ..Default::default() };
    s.put_object(&key, b.clone(), &opts).await.map_err(|e| format!("put: {e}"))?;
    let h = s.head_object(&key).await.map_err(|e| format!("head: {e}"))?;
    ensure(h.class().needs_restore() && h.storage_class == "DEEP_ARCHIVE", || format!("head class {:?}", h.storage_class))?;
    ensure(h.size == 3000, || format!("head size {} of an archived object", h.size))?;
    match s.get_range(&key, 0, 100).await {
        Err(StoreError::Archived) => {}
        other => return Err(format!("GET of an archived object: {:?}", other.map(|b| b.len()))),
    }
    s.restore_object(&key, Some(1), "Bulk").await.map_err(|e| format!("restore: {e}"))?;
    let deadline = tokio::time::Instant::now() + restore_time * 10 + Duration::from_secs(5);
    let mut saw_ongoing = false;
    loop {
        let h = s.head_object(&key).await.map_err(|e| format!("head while restoring: {e}"))?;
        match &h.restore {
            Some(r) if r.ongoing => saw_ongoing = true,
            Some(r) => {
                ensure(r.expiry.is_some(), || "a finished restore without an expiry date".into())?;
                break;
            }
            None if !saw_ongoing => return Err("head after RestoreObject shows no restore".into()),
            None => return Err("the restore vanished".into()),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not restored after {:?}", deadline.elapsed()));
        }
        tokio::time::sleep(restore_time / 4 + Duration::from_millis(20)).await;
    }
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("GET of the restored object: {e}"))?;
    ensure(got == b, || "the restored object reads other bytes".into())
}

async fn restore_unarchived(s: &dyn ObjectStore, p: &str) -> Check {
    let key = format!("{p}arch/std");
    s.put_object(&key, body(10, 16), &standard()).await.map_err(|e| format!("put: {e}"))?;
    match s.restore_object(&key, Some(1), "Standard").await {
        Err(StoreError::Permanent { code, .. }) if code == "InvalidObjectState" => Ok(()),
        other => Err(format!("restore of a STANDARD object: {other:?}")),
    }
}

async fn it_archive(s: &dyn ObjectStore, p: &str, move_to_archive: &MoveToArchive, restore_time: Duration) -> Check {
    let key = format!("{p}it/a");
    let b = body(500, 17);
    let opts = PutOptions { storage_class: "INTELLIGENT_TIERING".into(), ..Default::default() };
    s.put_object(&key, b.clone(), &opts).await.map_err(|e| format!("put: {e}"))?;
    ensure(!s.head_object(&key).await.map_err(|e| format!("head: {e}"))?.class().needs_restore(), || "a fresh object is archived".into())?;
    move_to_archive(&key);
    let h = s.head_object(&key).await.map_err(|e| format!("head: {e}"))?;
    ensure(h.class().needs_restore() && h.class().is_it_archive(), || format!("head class {:?}/{:?}", h.storage_class, h.archive_status))?;
    match s.get_object(&key, u64::MAX).await {
        Err(StoreError::Archived) => {}
        other => return Err(format!("GET in an archive access tier: {:?}", other.map(|b| b.len()))),
    }
    s.restore_object(&key, None, "Standard").await.map_err(|e| format!("restore: {e}"))?;
    tokio::time::sleep(restore_time + Duration::from_millis(50)).await;
    let h = s.head_object(&key).await.map_err(|e| format!("head after restore: {e}"))?;
    ensure(!h.class().needs_restore(), || format!("still archived after the restore: {:?}", h.archive_status))?;
    let got = s.get_object(&key, u64::MAX).await.map_err(|e| format!("GET after restore: {e}"))?;
    ensure(got == b, || "other bytes after restore".into())
}
