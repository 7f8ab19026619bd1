//! Tests of `status` and `flush --wait` (`fs/status.rs`): failures listed and counted, open and deleted files, a timeout.

use super::*;

/// `status` lists the first 100 upload failures (it used to load every queued upload, a
/// million rows after a long outage) and still counts every failed file.
#[test]
fn status_lists_the_first_failures_and_counts_them_all() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Permanent { code: "AccessDenied".into(), message: "no".into() });
    let n = 130;
    for k in 0..n {
        e.write_file(ROOT, &format!("f{k}"), &data(10, k as u8));
    }
    e.fs().seal_ready(true).unwrap();
    wait_for("every upload failed", || e.fs().status().unwrap().failed_files == n);
    let s = e.fs().status().unwrap();
    assert_eq!(s.failures.len(), 100);
    assert!(s.failures.iter().all(|f| f.state == "failed" && f.error.contains("AccessDenied")), "{:?}", &s.failures[..2]);
}

/// Regression (review N8): `flush --wait` never returned while a deleted file was still open
/// (a log rotated under `tail -f`, Samba holding a handle): nothing of it is ever uploaded.
/// A file held open for writing is named instead of waited on.
#[test]
fn flush_wait_returns_for_deleted_open_files_and_names_open_writers() {
    let e = Env::new();
    let fs = e.fs();
    upload_one(&e, "old.log", &data(5000, 1));
    let old = fs.resolve("old.log").unwrap().ino;
    let (reader, _) = fs.open(old, false, false, 0).unwrap();
    // A file written, still open, then deleted (dirty orphan), and an uploaded one deleted
    // under a reader.
    let (i, writer) = fs.create(ROOT, OsStr::new("new.log"), 0o644, 0, 0).unwrap();
    fs.write(writer, 0, b"rotated away").unwrap();
    fs.flush(writer).unwrap();
    fs.unlink(ROOT, OsStr::new("new.log")).unwrap();
    fs.unlink(ROOT, OsStr::new("old.log")).unwrap();
    e.write_file(ROOT, "kept.txt", b"kept");
    match flush_wait(&e, Duration::from_secs(20)) {
        crate::control::Reply::Flushed { failed_files: 0, still_open_for_write: 0, .. } => {}
        other => panic!("flush --wait: {other:?}"),
    }
    assert_eq!(read_on(&fs, "kept.txt"), b"kept");
    assert_eq!(fs.state_of(fs.resolve("kept.txt").unwrap().ino).unwrap().unwrap().1, State::Uploaded);
    // A file held open for writing is named, and everything else is flushed.
    let (_, held) = fs.create(ROOT, OsStr::new("db.sqlite"), 0o644, 0, 0).unwrap();
    fs.write(held, 0, b"open").unwrap();
    fs.flush(held).unwrap();
    e.write_file(ROOT, "other.txt", b"other");
    match flush_wait(&e, Duration::from_secs(20)) {
        crate::control::Reply::Flushed { still_open_for_write: 1, open_for_write, .. } => assert_eq!(open_for_write, vec!["db.sqlite".to_string()]),
        other => panic!("flush --wait: {other:?}"),
    }
    assert_eq!(fs.state_of(fs.resolve("other.txt").unwrap().ino).unwrap().unwrap().1, State::Uploaded);
    for fh in [reader, writer, held] {
        fs.release(fh).unwrap();
    }
    assert!(fs.state_of(i.ino).unwrap().is_none(), "the orphan went with its last close");
}

/// `flush --wait --timeout` answers in time, naming the file it still waits on and why.
#[test]
fn flush_wait_with_a_timeout_names_what_it_still_waits_on() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503 SlowDown".into()));
    e.write_file(ROOT, "stuck.jpg", &data(1000, 5));
    match flush_wait(&e, Duration::from_secs(2)) {
        crate::control::Reply::Error { message } => {
            assert!(message.contains("timed out") && message.contains("stuck.jpg"), "{message}");
            assert!(message.contains("SlowDown"), "the last error is named: {message}");
        }
        other => panic!("flush --wait: {other:?}"),
    }
    e.store.clear_faults();
    match flush_wait(&e, Duration::from_secs(20)) {
        crate::control::Reply::Flushed { failed_files: 0, .. } => {}
        other => panic!("flush --wait: {other:?}"),
    }
}
