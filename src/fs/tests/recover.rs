//! Tests of restarts and start-up repair: the state machine across restarts, crashes and power cuts mid-seal or mid-delete, a clock set back.

use super::*;

#[test]
fn state_machine_survives_restarts() {
    let mut e = Env::new();
    let d = data(300_000, 1);
    let ino = e.write_file(ROOT, "photo.jpg", &d);
    assert_eq!(e.fs().state_of(ino).unwrap().unwrap().1, State::Dirty);
    // Restart while dirty: the spool survives and is sealed later.
    e.restart();
    assert_eq!(e.fs().state_of(ino).unwrap().unwrap().1, State::Dirty);
    assert_eq!(e.read_all(ino).unwrap(), d);
    // Seal with uploads blocked, restart while sealed: the outbox survives and uploads.
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503".into()));
    assert_eq!(e.fs().seal_ready(true).unwrap(), 1);
    assert!(e.fs().state_of(ino).unwrap().unwrap().1.in_outbox());
    assert!(!e.fs().staging.spool_path(ino).exists(), "plaintext spool removed after sealing");
    assert_eq!(e.read_all(ino).unwrap(), d, "readable from the outbox");
    e.restart();
    e.store.clear_faults();
    e.wait_state(ino, State::Uploaded);
    e.fs().group_commit().unwrap();
    assert_eq!(std::fs::read_dir(e.dir.path().join("outbox")).unwrap().count(), 0, "local copy released");
    assert_eq!(e.store.snapshot().keys().filter(|k| k.starts_with("v/d/")).count(), 1);
    assert_eq!(e.read_all(ino).unwrap(), d, "read back from S3");
    e.restart();
    assert_eq!(e.read_all(ino).unwrap(), d, "read back after restart");
}

/// Regression (review N12): a `failed` upload row under a `sealed` inode (a crash between two
/// commits of an older build) was advanced by nothing, and `flush --wait` waited on it for
/// ever; an inode in the outbox whose row is gone read ENOENT. Start-up reconciles both.
#[test]
fn split_upload_states_are_reconciled_at_start_up() {
    let mut e = Env::new();
    e.store.fail_op("PutObject", 1, StoreError::Permanent { code: "AccessDenied".into(), message: "denied".into() });
    let d = data(3000, 7);
    let a = e.write_file(ROOT, "a.jpg", &d);
    e.fs().seal_ready(true).unwrap();
    e.wait_state(a, State::Failed);
    // As the older build could leave it: the row failed, the inode still sealed.
    {
        let fs = e.fs();
        let c = fs.core();
        let mut i = c.db.get(a).unwrap().unwrap();
        i.state = State::Sealed;
        c.db.update(&i).unwrap();
    }
    // And a file uploaded once, then sealed again with its queued row and staged file lost.
    let v1 = data(4000, 8);
    let (b, _) = upload_one(&e, "b.jpg", &v1);
    {
        let fs = e.fs();
        let c = fs.core();
        let mut i = c.db.get(b).unwrap().unwrap();
        i.state = State::Sealed;
        i.content_gen += 1;
        i.size = 1;
        c.db.update(&i).unwrap();
    }
    e.restart();
    let fs = e.fs();
    assert_eq!(fs.state_of(a).unwrap().unwrap().1, State::Failed, "the inode follows its failed row");
    assert_eq!(fs.state_of(b).unwrap().unwrap().1, State::Uploaded, "the file is its last uploaded version");
    assert_eq!(e.read_all(b).unwrap(), v1);
    match flush_wait(&e, Duration::from_secs(20)) {
        crate::control::Reply::Flushed { failed_files: 1, .. } => {}
        other => panic!("flush --wait: {other:?}"),
    }
    assert_eq!(fs.retry_failed().unwrap(), 1);
    e.wait_state(a, State::Uploaded);
    assert_eq!(e.read_all(a).unwrap(), d);
}

/// A crash after the seal renamed the spool and before its commit: start-up puts the spool
/// back (before, the file would have been found without a spool and emptied), and the file
/// then seals and uploads intact.
#[test]
fn a_seal_interrupted_before_its_commit_is_undone_at_start_up() {
    let mut e = Env::new();
    let d = data(300_000, 6);
    let ino = e.write_file(ROOT, "a.jpg", &d);
    let fs = e.fs();
    let gen = fs.getattr(ino).unwrap().content_gen;
    let d2 = e.daemon.take().unwrap();
    e.rt.block_on(d2.shutdown());
    fs.staging.freeze_spool(ino, gen).unwrap(); // as if the daemon died right after the rename
    drop(fs);
    e.start();
    assert_eq!(e.read_all(ino).unwrap(), d, "the staged bytes are back");
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

/// A file sealed while its upload is held, then the daemon stopped and the seal's rename undone
/// on disk (as a power cut that kept the index's commit and lost the rename leaves it).
/// Returns the inode and the spool's path; the daemon is stopped.
fn sealed_and_rename_lost(e: &mut Env, d: &[u8]) -> (u64, std::path::PathBuf) {
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("held".into()));
    let ino = e.write_file(ROOT, "a.jpg", d);
    let fs = e.fs();
    let gen = fs.getattr(ino).unwrap().content_gen;
    assert_eq!(fs.seal_ready(true).unwrap(), 1);
    let d2 = e.daemon.take().unwrap();
    e.rt.block_on(d2.shutdown());
    fs.staging.unfreeze_spool(ino, gen).unwrap();
    (ino, fs.staging.spool_path(ino))
}

/// A power cut that kept the seal's commit and lost its rename (the filesystem persisted the
/// index first): start-up finds the spool, checks its size and digest against the recorded
/// version, freezes it, and the version uploads intact.
#[test]
fn a_seal_whose_rename_a_power_cut_lost_is_finished_at_start_up() {
    let mut e = Env::new();
    let d = data(300_000, 11);
    let (ino, _) = sealed_and_rename_lost(&mut e, &d);
    e.store.clear_faults();
    e.start();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), d);
    assert_eq!(e.puts(), 1);
}

/// The same, but the spool on disk is not the version the index recorded (a write after the
/// seal's digest reached the disk, the index lost the seal's commit... or the bytes changed):
/// it is never uploaded under that version's digest; the spool is the file's content again
/// and is sealed and uploaded as a new version.
#[test]
fn a_lost_seal_rename_with_other_bytes_is_sealed_again() {
    let mut e = Env::new();
    let mut d = data(300_000, 12);
    let (ino, spool) = sealed_and_rename_lost(&mut e, &d);
    std::fs::OpenOptions::new().write(true).open(spool).unwrap().write_all_at(b"zzzz", 0).unwrap();
    d[..4].copy_from_slice(b"zzzz");
    e.store.clear_faults();
    e.start();
    assert!(e.read_all(ino).unwrap() == d, "the staged bytes are the file's content");
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.puts(), 1, "one version: the staged bytes, under their own digest");
    assert!(e.read_all(ino).unwrap() == d, "the content is whole");
}

/// A seal cuts a spool with a stale tail to the version's size before freezing it; a power
/// cut can keep the seal's commit and lose both the cut and the rename: start-up checks the
/// digest of the version's bytes, cuts and freezes, and the version uploads intact.
#[test]
fn a_lost_seal_rename_and_cut_are_both_redone() {
    let mut e = Env::new();
    let d = data(300_000, 14);
    let (ino, spool) = sealed_and_rename_lost(&mut e, &d);
    std::fs::OpenOptions::new().write(true).open(spool).unwrap().write_all_at(b"stale tail", d.len() as u64).unwrap();
    e.store.clear_faults();
    e.start();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.puts(), 1);
    assert!(e.read_all(ino).unwrap() == d, "the content is whole");
}

/// A power cut after a file's fsynced content was appended to and sealed: the index on disk
/// lost both (a dirty file of the older generation, whose spool is gone), the disk kept the
/// seal's rename. Start-up takes the newest staged content back instead of emptying the file.
#[test]
fn a_seal_of_a_change_lost_in_a_power_cut_keeps_the_staged_content() {
    let mut e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("held".into()));
    let mut d = data(100_000, 21);
    let ino = e.write_file(ROOT, "a.txt", &d);
    let durable = e.durable_index();
    let fs = e.fs();
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.write(fh, d.len() as u64, b"and more").unwrap();
    fs.release(fh).unwrap();
    d.extend_from_slice(b"and more");
    assert_eq!(fs.seal_ready(true).unwrap(), 1);
    drop(fs);
    e.power_cut(durable);
    e.store.clear_faults();
    assert!(e.read_all(ino).unwrap() == d, "the content is whole");
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert!(e.read_all(ino).unwrap() == d, "the content is whole");
}

/// An unlink and a rename over a file, lost in a power cut: the files come back with their
/// content (their spools are deleted only once the change is durable).
#[test]
fn deletions_lost_in_a_power_cut_bring_the_files_back_whole() {
    let mut e = Env::new();
    let (da, db, dd) = (data(50_000, 22), data(60_000, 23), data(70_000, 24));
    let a = e.write_file(ROOT, "a.txt", &da);
    let b = e.write_file(ROOT, "b.txt", &db);
    let d = e.write_file(ROOT, "d.txt", &dd);
    let durable = e.durable_index();
    let fs = e.fs();
    e.write_file(ROOT, "c.txt", b"new");
    fs.unlink(ROOT, OsStr::new("a.txt")).unwrap();
    fs.rename(ROOT, OsStr::new("c.txt"), ROOT, OsStr::new("b.txt"), false).unwrap();
    // `cp other d.txt` whose new bytes only partly reached the disk.
    let (fh, _) = fs.open(d, true, true, 0).unwrap();
    fs.write(fh, 0, b"the start of new content").unwrap();
    fs.release(fh).unwrap();
    drop(fs);
    e.power_cut(durable);
    let fs = e.fs();
    assert!(e.read_all(d).unwrap() == dd, "d.txt has its content from before the lost truncation");
    assert_eq!(fs.lookup(ROOT, OsStr::new("a.txt")).unwrap().ino, a);
    assert_eq!(fs.lookup(ROOT, OsStr::new("b.txt")).unwrap().ino, b);
    assert!(e.read_all(a).unwrap() == da, "a.txt is whole");
    assert!(e.read_all(b).unwrap() == db, "b.txt is whole");
    assert!(fs.lookup(ROOT, OsStr::new("c.txt")).is_err());
    // And once a deletion is durable, the dropped spool goes.
    fs.unlink(ROOT, OsStr::new("a.txt")).unwrap();
    fs.sync_durable().unwrap();
    let mut left: Vec<_> = std::fs::read_dir(fs.staging.root().join("spool")).unwrap().flatten().map(|e| e.file_name()).collect();
    left.sort();
    assert_eq!(left, vec![std::ffi::OsString::from(b.to_string()), std::ffi::OsString::from(d.to_string())]);
}

/// A crash of the daemon right after `rm` forgets the pending removal of the file's read-cache
/// copy (plaintext): start-up removes read-cache entries that no file's version has.
#[test]
fn read_cache_copies_of_deleted_files_go_after_a_crash() {
    let mut e = Env::new();
    let with_cache = |e: &mut Env| {
        let mut c = cfg(e.dir.path());
        c.read_cache = 1 << 20;
        e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap());
    };
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    with_cache(&mut e);
    let keep = data(100_000, 30);
    let (ino, _) = upload_one(&e, "keep", &keep);
    upload_one(&e, "gone", &data(100_000, 31));
    let cached = |e: &Env| std::fs::read_dir(e.dir.path().join("rcache")).unwrap().count();
    assert_eq!(cached(&e), 2);
    e.fs().unlink(ROOT, OsStr::new("gone")).unwrap();
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.crash());
    with_cache(&mut e);
    assert_eq!(cached(&e), 1, "the deleted file's plaintext copy is gone");
    assert!(e.read_all(ino).unwrap() == keep);
    assert_eq!(e.fs().store.counts().get("GetObject"), None, "the kept file still reads from the read cache");
}

/// A power cut that kept the upload's completion out of the index but its move into the read
/// cache on disk: start-up moves the file back and the version is queued again.
#[test]
fn a_sealed_version_found_in_the_read_cache_is_queued_again() {
    let mut e = Env::new();
    let d = data(300_000, 13);
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("held".into()));
    let ino = e.write_file(ROOT, "a.jpg", &d);
    let fs = e.fs();
    assert_eq!(fs.seal_ready(true).unwrap(), 1);
    let frozen = std::fs::read_dir(fs.staging.root().join("outbox")).unwrap().next().unwrap().unwrap().path();
    let u = fs.core().db.uploads().unwrap().remove(0);
    let d2 = e.daemon.take().unwrap();
    e.rt.block_on(d2.shutdown());
    std::fs::rename(&frozen, fs.staging.rcache_plain_path(&u.header[96..128])).unwrap();
    drop(fs);
    e.store.clear_faults();
    e.start();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

/// Regression (review L8): the index plans seals and upload retries by the wall clock. With
/// the clock set back an hour (NTP fixing a clock that ran ahead, a VM restored), a dirty file
/// waited an hour longer to settle and a failed upload an hour longer for its retry, and
/// `flush --wait` with them. They are due at once now.
#[test]
fn a_clock_set_back_delays_no_seal_and_no_upload_retry() {
    use crate::upload::UploadQueue;
    let mut e = Env::new();
    e.restart_with(|c| c.settle = Duration::from_secs(5));
    let fs = e.fs();
    // No uploader: the queue is looked at by hand.
    e.rt.block_on(e.daemon.take().unwrap().shutdown());
    let hour = 3_600_000;
    let ahead = now_ms() + hour; // what the clock said before it was set back
    write_on(&fs, ROOT, "queued.txt", b"sealed and queued");
    fs.seal_ready(true).unwrap();
    let a = write_on(&fs, ROOT, "a.txt", b"written while the clock ran an hour ahead");
    {
        let c = fs.core();
        c.db.conn().execute("UPDATE inodes SET dirty_ms=?1 WHERE ino=?2", rusqlite::params![ahead - 6_000, a as i64]).unwrap();
        // A retry that was due a second before the clock was set back.
        assert_eq!(c.db.conn().execute("UPDATE uploads SET next_try_ms=?1", rusqlite::params![ahead - 1_000]).unwrap(), 1);
    }
    fs.index.clock_high.store(ahead, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fs.uploads.due_uploads(10).unwrap().len(), 1, "the retry is due");
    assert_eq!(fs.seal_ready(false).unwrap(), 1, "a.txt settled 6 s after its last write (by the clock then)");
    // Steps forward (and small jitter) change nothing.
    fs.index.clock_high.store(now_ms() - 60_000, std::sync::atomic::Ordering::Relaxed);
    let b = write_on(&fs, ROOT, "b.txt", b"new");
    assert_eq!(fs.seal_ready(false).unwrap(), 0, "b.txt has not settled");
    assert!(fs.core().db.get(b).unwrap().unwrap().state == State::Dirty);
}

/// Regression (review N5): `cp new a` (O_TRUNC) while another handle held `a` open (`tail -f`,
/// Samba, an indexer) cut the shared spool in place; a power cut before the next sync kept the
/// partial new content where SEMANTICS promises the durable old one.
#[test]
fn an_o_trunc_while_the_file_is_open_elsewhere_survives_a_power_cut_whole() {
    let mut e = Env::new();
    let old = data(30_000, 9);
    let ino = e.write_file(ROOT, "a.log", &old);
    let durable = e.durable_index();
    {
        let fs = e.fs();
        let (reader, _) = fs.open(ino, false, false, 0).unwrap();
        let (writer, _) = fs.open(ino, true, true, 0).unwrap();
        fs.write(writer, 0, b"new 10 b..").unwrap();
        assert_eq!(fs.read(reader, 0, 100).unwrap(), &b"new 10 b.."[..], "the reader sees the new content");
        fs.release(writer).unwrap();
        fs.release(reader).unwrap();
    }
    e.power_cut(durable);
    assert_eq!(e.read_all(ino).unwrap(), old, "the durable content comes back whole");
}
