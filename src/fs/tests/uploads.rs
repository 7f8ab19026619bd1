//! Tests of uploads (`fs/uploads.rs`, the uploader): retries and backoff, parked failures, multipart resume and sweep, lost answers, objects checked.

use super::*;

#[test]
fn retryable_errors_are_retried_with_backoff() {
    let e = Env::new();
    e.store.fail_op("PutObject", 3, StoreError::Retryable("SlowDown".into()));
    let ino = e.write_file(ROOT, "a", b"hello");
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    let journal_puts = e.fs().status().unwrap().metadata_objects_since_mount;
    assert_eq!(e.fs().store.counts()["PutObject"] - journal_puts, 4, "three failures then success");
    assert_eq!(e.fs().status().unwrap().failed_files, 0);
}

#[test]
fn backoff_grows_and_is_capped() {
    let c = UploadConfig { base_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(300), ..Default::default() };
    let b0 = crate::upload::backoff(&c, 0);
    let b3 = crate::upload::backoff(&c, 3);
    let b30 = crate::upload::backoff(&c, 30);
    assert!(b0 >= Duration::from_millis(800) && b0 <= Duration::from_millis(1200));
    assert!(b3 >= Duration::from_millis(6400) && b3 <= Duration::from_millis(9600));
    assert!(b30 <= Duration::from_secs(300) && b30 >= Duration::from_secs(240));
}

#[test]
fn permanent_error_parks_file_and_keeps_data() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Permanent { code: "AccessDenied".into(), message: "no".into() });
    let d = data(1000, 2);
    let ino = e.write_file(ROOT, "a", &d);
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Failed);
    let s = e.fs().status().unwrap();
    assert_eq!(s.failed_files, 1);
    assert!(s.failures[0].error.contains("AccessDenied"), "{:?}", s.failures);
    assert_eq!(s.failures[0].path, "a");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.fs().store.counts()["PutObject"], 1, "a permanent error is not retried");
    assert_eq!(e.read_all(ino).unwrap(), d, "data kept");
    e.store.clear_faults();
    assert_eq!(e.fs().retry_failed().unwrap(), 1);
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

#[test]
fn multipart_resumes_without_resending_parts() {
    let mut e = Env::new();
    let d = data(40 << 20, 6);
    let ino = e.write_file(ROOT, "big.tif", &d);
    let enc = crate::crypto::encrypted_len(d.len() as u64);
    let nparts = enc.div_ceil(crate::upload::part_size(enc));
    assert!(nparts >= 5, "{nparts} parts");
    let fs = e.fs();
    *e.store.latency.lock().unwrap() = Duration::from_millis(1);
    fs.seal_ready(true).unwrap();
    let t = Instant::now();
    while fs.parts_recorded() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(2));
    }
    e.store.fail_op("UploadPart", u64::MAX, StoreError::Retryable("connection reset".into()));
    // Simulated crash: stop everything with the multipart upload half done.
    e.restart();
    let done = e.fs().parts_recorded();
    assert!(done >= 2 && done < nparts as usize, "parts recorded before the crash: {done}");
    let before = e.store.open_multipart_uploads();
    assert_eq!(before, 1);
    e.store.clear_faults();
    e.wait_state(ino, State::Uploaded);
    let sent_after = e.fs().store.counts()["UploadPart"];
    assert_eq!(sent_after as usize, nparts as usize - done, "only missing parts are sent after restart");
    assert_eq!(e.fs().store.counts().get("CreateMultipartUpload"), None, "the upload id was reused");
    assert_eq!(e.read_all(ino).unwrap(), d);
}

/// Review N13: when the index cannot record an upload's start (a full disk under the WAL, a
/// locked or damaged index), the uploader returned at once, the row was due again at once,
/// and it tried again in a busy loop, logging each time. It pauses now (1 s, doubling), and
/// uploads once the index works again.
#[test]
fn an_index_that_cannot_record_an_upload_start_pauses_the_uploader() {
    let e = Env::new();
    let fs = e.fs();
    fs.core()
        .db
        .conn()
        .execute_batch(
            "CREATE TEMP TRIGGER fail_start BEFORE UPDATE OF state ON uploads WHEN NEW.state='uploading' BEGIN SELECT RAISE(ABORT, 'injected index failure'); END;",
        )
        .unwrap();
    let ino = e.write_file(ROOT, "a.jpg", &data(10_000, 1));
    fs.seal_ready(true).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let calls = fs.uploads.mark_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=3).contains(&calls), "{calls} tries in 2.5 s (1 s pause, doubling)");
    fs.core().db.conn().execute_batch("DROP TRIGGER fail_start").unwrap();
    e.wait_state(ino, State::Uploaded);
}

/// Regression: a 2 MB file rewritten while its first version was still uploading; the first
/// PUT landed last on the same key, `flush --wait` said all was in S3, and after a rebuild the
/// file gave EIO. Now the stale PUT lands on its own key, which is recorded as dead.
#[test]
fn stale_upload_landing_last_never_replaces_the_newer_version() {
    let e = Env::new();
    e.store.delay_next("PutObject", Duration::from_millis(1500));
    let ino = e.write_file(ROOT, "f.bin", &data(2_000_000, 7));
    let fs = e.fs();
    fs.seal_ready(true).unwrap();
    wait_for("v1's PUT on the wire", || fs.store.counts().get("PutObject").copied().unwrap_or(0) > 0);
    let v2 = data(1_500_000, 8);
    let fh = fs.open(ino, true, true, 0).unwrap().0;
    fs.write(fh, 0, &v2).unwrap();
    fs.release(fh).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    std::thread::sleep(Duration::from_millis(1700)); // v1's PUT has landed by now
    assert_eq!(e.puts(), 2, "both PUTs reached the bucket");
    assert_eq!(e.read_all(ino).unwrap(), v2);
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    let f2 = d2.fs.clone();
    let i2 = f2.resolve("f.bin").unwrap();
    let (fh, _) = f2.open(i2.ino, false, false, 0).unwrap();
    let mut got = Vec::new();
    while got.len() < v2.len() {
        let d = f2.read(fh, got.len() as u64, 1 << 20).expect("the newer version reads back after a rebuild");
        assert!(!d.is_empty());
        got.extend(d);
    }
    f2.release(fh).unwrap();
    assert!(got == v2, "the rebuilt file holds the newer version");
    assert_eq!(f2.readdir(ROOT).unwrap().len(), 1, "the stale object is not adopted as another file");
    e.rt.block_on(d2.shutdown());
    // Once the file is deleted, the stale version's object (still in the bucket, never
    // journaled as an upload) must not come back as the deleted file.
    fs.unlink(ROOT, OsStr::new("f.bin")).unwrap();
    flush_journal(&e);
    let (_dir3, d3) = fresh_machine(&e);
    assert!(d3.fs.resolve("f.bin").is_err(), "a deleted file came back from a stale object");
    e.rt.block_on(d3.shutdown());
}

/// A conditional write that finds an object at the key never overwrites it: our own earlier
/// attempt (a lost response) counts as done; anything else moves the version to a fresh key.
#[test]
fn conditional_writes_never_overwrite_an_occupied_key() {
    let e = Env::new();
    let fs = e.fs();
    // Lost response: the PUT landed, the retry finds our own object and is done.
    e.store.lose_next_response("PutObject");
    let (ino, key) = upload_one(&e, "mine.jpg", &data(5000, 9));
    assert_eq!(e.store.version_count(&key), 1, "the retry did not write a second version");
    assert_eq!(fs.state_of(ino).unwrap().unwrap().1, State::Uploaded);
    assert!(fs.store.counts()["HeadObject"] >= 1, "confirmed by HeadObject");
    // A foreign object appears at the key while our PUT is on the wire.
    e.store.delay_next("PutObject", Duration::from_millis(600));
    let d = data(5000, 10);
    let ino = e.write_file(ROOT, "x.jpg", &d);
    fs.seal_ready(true).unwrap();
    let key = fs.core().db.uploads().unwrap()[0].object_key.clone();
    e.store.plant(&key, b"someone else's");
    e.wait_uploaded();
    let final_key = fs.getattr(ino).unwrap().object_key.unwrap();
    assert_ne!(final_key, key, "moved to a fresh key");
    assert_eq!(&e.store.snapshot()[&key].body[..], b"someone else's", "the occupant is untouched");
    assert_eq!(e.store.version_count(&key), 1);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

/// Regression (issue 24, item 6): a gateway whose HEAD answers carry the wrong size made the
/// uploader move each version to a fresh key and send it again without end (17,700 PUTs for
/// 10,500 files). Now after a few tries the version is parked with an error in plain words,
/// its data kept, and `retry` sends it again once the store is fixed.
#[test]
fn a_store_that_misreports_every_object_parks_the_upload_after_a_few_tries() {
    let e = Env::new();
    e.store.head_size_lies.store(true, std::sync::atomic::Ordering::SeqCst);
    let d = data(3000, 4);
    let ino = e.write_file(ROOT, "x.jpg", &d);
    let fs = e.fs();
    fs.seal_ready(true).unwrap();
    e.wait_state(ino, State::Failed);
    std::thread::sleep(Duration::from_millis(500));
    let puts = fs.store.counts()["PutObject"];
    assert!(puts <= 3, "the version was sent {puts} times");
    let s = fs.status().unwrap();
    assert!(s.failures.iter().any(|f| f.path == "x.jpg" && f.error.contains("retry")), "{:?}", s.failures);
    assert_eq!(e.read_all(ino).unwrap(), d, "data kept");
    e.store.head_size_lies.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fs.retry_failed().unwrap(), 1);
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

/// Regression (review N15): a bare 403 on the HEAD that checks a PUT (credentials that expired
/// in between; a HEAD answer has no body) parked the upload as failed for good, though the
/// object had landed. It is retried until it works.
#[test]
fn a_bare_403_on_the_check_after_a_put_is_retried_not_parked() {
    let e = Env::new();
    e.store.fail_op("HeadObject", 1, StoreError::Permanent { code: "AccessDenied".into(), message: "HTTP 403".into() });
    let (ino, key) = upload_one(&e, "a.jpg", &data(3000, 6));
    assert_eq!(e.fs().state_of(ino).unwrap().unwrap().1, State::Uploaded);
    assert_eq!(e.store.version_count(&key), 1, "the landed object was not written again");
}

/// Completed uploads are recorded in batches: every file is recorded once, with one PUT and
/// one check each — none is sent again while its completion waits to be recorded (the due
/// rows of the queue include those still `uploading`), and each gets its journal record.
#[test]
fn uploads_recorded_in_batches_are_each_sent_and_recorded_once() {
    let e = Env::new();
    let fs = e.fs();
    let n = 60;
    let inos: Vec<u64> = (0..n).map(|k| e.write_file(ROOT, &format!("f{k:02}.jpg"), &data(2000, k as u8))).collect();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    let counts = fs.store.counts();
    assert_eq!(counts.get("PutObject").copied().unwrap_or(0), n as u64, "{counts:?}");
    assert_eq!(counts.get("HeadObject").copied().unwrap_or(0), n as u64, "one check per upload: {counts:?}");
    for &ino in &inos {
        assert_eq!(fs.state_of(ino).unwrap().unwrap().1, State::Uploaded);
    }
    assert_eq!(fs.journal_pending_count().unwrap(), n as u64, "one upload record per file");
}

/// Regression: ExpiredToken parked the upload as a permanent failure. Expired credentials are
/// retried (with the longest backoff), shown in `status` while they last, and the file uploads
/// once they are renewed.
#[test]
fn expired_credentials_are_retried_and_shown_in_status() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Credentials("ExpiredToken: The provided token has expired.".into()));
    let ino = e.write_file(ROOT, "a.jpg", b"hello");
    let fs = e.fs();
    fs.seal_ready(true).unwrap();
    wait_for("the failure in status", || fs.status().unwrap().failures.iter().any(|f| f.error.contains("ExpiredToken")));
    let s = fs.status().unwrap();
    assert_eq!(s.failed_files, 0, "not parked: {s:?}");
    assert!(s.failures[0].error.contains("credentials"), "{s:?}");
    e.store.clear_faults(); // renewed credentials
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), b"hello");
}

/// A frozen file is never encrypted again after it changed (that would reuse the version's
/// nonces and upload zeros or other bytes under the recorded digest): the upload stops with a
/// failure naming the change, and the object never appears.
#[test]
fn a_sealed_file_that_changed_is_not_uploaded() {
    frozen_file_changed(|f| f.set_len(1000).unwrap());
}

/// The same with a change of the same size, after a first attempt failed (review N15): the
/// retry checks the frozen bytes against the version's SHA-256 before it encrypts them again
/// under the same nonces.
#[test]
fn a_sealed_file_changed_in_place_is_not_encrypted_again() {
    frozen_file_changed(|f| f.write_all_at(b"same size, other bytes", 1000).unwrap());
}

/// A file sealed while PutObject fails, its frozen copy changed by `change` after a first
/// failed attempt: no attempt after it uploads anything.
fn frozen_file_changed(change: impl FnOnce(&std::fs::File)) {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("held".into()));
    e.write_file(ROOT, "a.jpg", &data(300_000, 7));
    let fs = e.fs();
    fs.seal_ready(true).unwrap();
    wait_for("a failed first attempt", || fs.status().unwrap().failures.iter().any(|f| f.error.contains("held")));
    let frozen = std::fs::read_dir(fs.staging.root().join("outbox")).unwrap().next().unwrap().unwrap().path();
    change(&std::fs::OpenOptions::new().write(true).open(&frozen).unwrap());
    e.store.clear_faults();
    wait_for("the upload to fail", || fs.status().unwrap().failures.iter().any(|f| f.error.contains("changed after sealing")));
    assert_eq!(e.puts(), 0, "nothing was uploaded");
}

/// Review L6: multipart uploads that nothing will complete (a rekey, a restart after
/// NoSuchUpload, a completion refused, a crash between beginning one and recording it) were
/// never aborted, and the bucket billed their parts for ever. The sweep aborts those begun over
/// a week ago, never one a queued upload resumes, nor a recent one (another machine's, live).
#[test]
fn multipart_uploads_abandoned_for_a_week_are_aborted() {
    let e = Env::new();
    let fs = e.fs();
    // No uploader: the queued upload below stays queued.
    let mut e = e;
    e.rt.block_on(e.daemon.take().unwrap().shutdown());
    write_on(&fs, ROOT, "big.raw", b"queued, resuming its multipart upload");
    fs.seal_ready(true).unwrap();
    let opts = crate::store::PutOptions::default();
    let abandoned = e.rt.block_on(e.store.create_multipart("v/d/abandoned", &opts)).unwrap();
    let resumed = e.rt.block_on(e.store.create_multipart("v/d/resumed", &opts)).unwrap();
    assert_eq!(fs.core().db.conn().execute("UPDATE uploads SET mp_upload_id=?1", rusqlite::params![resumed]).unwrap(), 1);
    let outside = e.rt.block_on(e.store.create_multipart("other-prefix/x", &opts)).unwrap();
    e.store.age_multipart_uploads(8 * 86_400_000);
    let live = e.rt.block_on(e.store.create_multipart("v/d/live", &opts)).unwrap();
    let n = e.rt.block_on(fs.sweep_multipart(Duration::from_secs(7 * 86_400))).unwrap();
    assert_eq!(n, 1);
    let left: Vec<String> = e.store.multipart_ids().into_iter().map(|(_, id)| id).collect();
    assert!(!left.contains(&abandoned), "the abandoned upload is aborted");
    for id in [&resumed, &live, &outside] {
        assert!(left.contains(id), "{id} is kept: {left:?}");
    }
}

/// Regression (review N9): a file saved more often than its upload takes (a catalog, a
/// password database) had each version on the wire cancelled by the next save: none ever
/// reached the bucket, and `flush --wait` never returned while the saves went on. The version
/// on the wire goes on and is recorded when it lands; a rebuild meanwhile shows it.
#[test]
fn a_file_rewritten_faster_than_it_uploads_still_gets_versions_into_the_bucket() {
    let e = Env::new();
    let fs = e.fs();
    *e.store.latency.lock().unwrap() = Duration::from_millis(400);
    let ino = e.write_file(ROOT, "catalog.db", &data(50_000, 0));
    let t = Instant::now();
    let mut k = 0u8;
    let mut saved = Vec::new();
    while t.elapsed() < Duration::from_secs(4) {
        k += 1;
        let v = data(50_000 + k as usize, k);
        rewrite_on(&fs, ino, &v);
        saved.push(v);
        fs.seal_ready(true).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_ne!(fs.state_of(ino).unwrap().unwrap().1, State::Uploaded, "still being saved");
    let versions = fs.status().unwrap().uploads_since_mount;
    assert!(versions >= 2, "versions recorded while the file was saved over and over: {versions}");
    // The machine is lost now: a rebuild shows one of the saved versions, not nothing.
    flush_journal(&e);
    let (_d2, d2) = fresh_machine(&e);
    let got = read_on(&d2.fs, "catalog.db");
    assert!(saved.contains(&got), "the rebuilt file is one of the saved versions");
    e.rt.block_on(d2.shutdown());
    *e.store.latency.lock().unwrap() = Duration::ZERO;
    e.wait_uploaded();
    assert_eq!(e.read_all(ino).unwrap(), *saved.last().unwrap());
    flush_journal(&e);
    let (_d3, d3) = fresh_machine(&e);
    assert_eq!(read_on(&d3.fs, "catalog.db"), *saved.last().unwrap(), "the last save once it landed");
    assert_eq!(names_of(&d3.fs), ["catalog.db"]);
    e.rt.block_on(d3.shutdown());
}

/// Before the local copy is released, the stored object is checked (size and this version's
/// header): an object that is not what was sent (cut short on the way, replaced behind our
/// back) is left alone and the version is uploaded again under a new key, from the copy still
/// here. Without the check the file was marked uploaded and read back as EIO.
#[test]
fn a_stored_object_that_is_not_ours_is_never_trusted() {
    let e = Env::new();
    let fs = e.fs();
    let d = data(9000, 44);
    e.store.truncate_next_put();
    let ino = e.write_file(ROOT, "x.jpg", &d);
    fs.seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    let final_key = fs.getattr(ino).unwrap().object_key.unwrap();
    let objects = e.store.snapshot();
    let data_keys: Vec<&String> = objects.keys().filter(|k| k.starts_with("v/d/")).collect();
    assert_eq!(data_keys.len(), 2, "the short object stays, the version went to a new key: {data_keys:?}");
    let short = data_keys.iter().find(|k| ***k != final_key).unwrap();
    assert!(objects[*short].body.len() < objects[&final_key].body.len());
    assert!(fs.store.counts()["HeadObject"] >= 2, "checked after each upload");
    assert_eq!(e.read_all(ino).unwrap(), d);
}
