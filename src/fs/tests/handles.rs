//! Tests of the open-handle table (`fs/handles.rs`): open, write, flush, fsync, truncate, release, a writer's old content, the durability of a close.

use super::*;

/// Samba (robocopy, Finder, many apps) overwrites a file by opening it for writing without
/// O_TRUNC and then truncating it to 0: a new version that fetches nothing of the old one
/// (issue 24). An open for writing closed without a write changes nothing.
#[test]
fn an_open_for_writing_then_truncate_to_zero_fetches_nothing() {
    let e = Env::new();
    let (ino, _) = upload_one(&e, "doc.bin", &data(300_000, 22));
    let fs = e.fs();
    let gets = e.store.calls_of("GetObject");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(fs.state_of(ino).unwrap().map(|x| x.1), Some(State::Uploaded), "no new version");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 300_000, "the old size until the truncate");
    fs.setattr(ino, None, None, None, Some(0), None, None).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 0);
    fs.write(fh, 0, b"new version").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 11);
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(e.store.calls_of("GetObject"), gets, "nothing of the old version was fetched");
    fs.seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), b"new version");
    assert_eq!(e.puts(), 2, "the new version is an object of its own");
}

/// A handle opened for writing reads the old content (from the bucket, as a reader does, until
/// its first write brings it into the spool); a truncate to a non-zero size, smaller or larger, keeps the old bytes below it.
#[test]
fn reads_and_nonzero_truncates_through_a_write_handle_keep_the_old_content() {
    let e = Env::new();
    let old = data(300_000, 23);
    let (a, _) = upload_one(&e, "cat.db", &old);
    let (b, _) = upload_one(&e, "log.txt", &old);
    let (c, _) = upload_one(&e, "grow.bin", &old);
    let fs = e.fs();
    let gets = e.store.calls_of("GetObject");
    let (fh, _) = fs.open(a, true, false, 0).unwrap();
    assert_eq!(e.store.calls_of("GetObject"), gets, "the open fetched nothing");
    assert_eq!(fs.read(fh, 0, 4096).unwrap(), &old[..4096]);
    assert!(e.store.calls_of("GetObject") > gets, "the read fetched the old content");
    assert_eq!(fs.read(fh, 290_000, 65536).unwrap(), &old[290_000..]);
    fs.write(fh, 10, b"EDIT").unwrap();
    assert_eq!(fs.getattr(a).unwrap().size, 300_000);
    fs.release(fh).unwrap();
    let mut want = old.clone();
    want[10..14].copy_from_slice(b"EDIT");
    assert!(e.read_all(a).unwrap() == want, "the edit in the old content");

    let (fh, _) = fs.open(b, true, false, 0).unwrap();
    fs.setattr(b, None, None, None, Some(1000), None, None).unwrap();
    assert_eq!(fs.getattr(b).unwrap().size, 1000);
    fs.write(fh, 1000, b"tail").unwrap();
    fs.release(fh).unwrap();
    let mut want = old[..1000].to_vec();
    want.extend_from_slice(b"tail");
    assert_eq!(e.read_all(b).unwrap(), want);

    let (fh, _) = fs.open(c, true, false, 0).unwrap();
    fs.setattr(c, None, None, None, Some(400_000), None, None).unwrap();
    assert_eq!(fs.getattr(c).unwrap().size, 400_000);
    fs.release(fh).unwrap();
    let mut want = old.clone();
    want.resize(400_000, 0);
    assert!(e.read_all(c).unwrap() == want, "the old content, then zeros");
}

/// Review: reading through a handle opened O_RDWR that never writes copied the file in and
/// made it dirty: the same bytes were uploaded again as a new version (for an archived file,
/// after a restore). It reads as a reader would, and no version is made.
#[test]
fn reading_through_a_write_handle_that_never_writes_makes_no_version() {
    let e = Env::new();
    let old = data(100_000, 24);
    let (ino, key) = upload_one(&e, "cat.db", &old);
    let fs = e.fs();
    let puts = e.puts();
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    assert_eq!(fs.read(fh, 0, 4096).unwrap(), &old[..4096]);
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    fs.seal_ready(true).unwrap();
    assert_eq!(fs.state_of(ino).unwrap().unwrap().1, State::Uploaded);
    assert_eq!(fs.getattr(ino).unwrap().object_key.unwrap(), key);
    assert_eq!(e.puts(), puts, "nothing uploaded again");
}

#[test]
fn unlinked_open_file_stays_usable_until_closed() {
    let mut e = Env::new();
    let fs = e.fs();
    let (i, fh) = fs.create(ROOT, OsStr::new("tmpfile"), 0o600, 0, 0).unwrap();
    fs.write(fh, 0, b"scratch data").unwrap();
    fs.unlink(ROOT, OsStr::new("tmpfile")).unwrap();
    assert!(fs.lookup(ROOT, OsStr::new("tmpfile")).is_err(), "gone from the namespace");
    assert_eq!(fs.getattr(i.ino).unwrap().size, 12, "fstat through the open handle");
    fs.write(fh, 12, b"!").unwrap();
    fs.setattr(i.ino, None, None, None, Some(5), None, None).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), &b"scrat"[..]);
    fs.fsync(fh).unwrap();
    fs.seal_ready(true).unwrap();
    assert_eq!(e.puts(), 0, "an unlinked file is never uploaded");
    fs.release(fh).unwrap();
    assert!(fs.getattr(i.ino).is_err(), "deleted at the last close");
    assert!(!fs.staging.spool_path(i.ino).exists());
    // An orphan left by a crash is cleaned up at start.
    let (j, _fh2) = fs.create(ROOT, OsStr::new("t2"), 0o600, 0, 0).unwrap();
    fs.unlink(ROOT, OsStr::new("t2")).unwrap();
    drop(fs);
    e.restart();
    assert!(e.fs().getattr(j.ino).is_err());
}

/// The durability contract's mechanism: a close commits to the index without syncing it (a
/// crash of the daemon keeps it: see the kill -9 tests); `fsync` syncs the staging
/// filesystem and the index; the group commit does the same when anything changed, and
/// nothing when idle.
#[test]
fn close_commits_fsync_and_the_group_commit_sync() {
    let e = Env::new();
    let fs = e.fs();
    let mark = || fs.core().db.syncs();
    fs.group_commit().unwrap();
    let m0 = mark();
    let ino = e.write_file(ROOT, "a.txt", b"hello");
    assert_eq!(mark(), m0, "a close does not sync");
    assert_eq!(fs.getattr(ino).unwrap().size, 5, "but it is committed");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.write(fh, 5, b" world").unwrap();
    fs.fsync(fh).unwrap();
    let m1 = mark();
    assert_ne!(m1, m0, "fsync syncs the index");
    fs.release(fh).unwrap();
    fs.group_commit().unwrap();
    assert_eq!(mark(), m1, "nothing changed since the fsync");
    e.write_file(ROOT, "b.txt", b"more");
    fs.group_commit().unwrap();
    let m2 = mark();
    assert_ne!(m2, m1, "the group commit syncs what changed since");
    fs.group_commit().unwrap();
    assert_eq!(mark(), m2, "an idle index is not synced again");
}

/// Regression: a truncate while only read handles were open was never committed: the index
/// kept the old size, and the sealed version was the short spool padded back with zeros.
#[test]
fn truncate_with_only_readers_open_is_committed() {
    let e = Env::new();
    let ino = e.write_file(ROOT, "t.txt", b"0123456789");
    let fs = e.fs();
    let (fh, _) = fs.open(ino, false, false, 0).unwrap();
    fs.setattr(ino, None, None, None, Some(3), None, None).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 3);
    fs.seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(e.read_all(ino).unwrap(), b"012");
}

/// Regression: `persist` marked the file clean after its fsync, so a write that landed between
/// choosing what to sync and the fsync was acknowledged by the next `fsync` without ever being
/// synced. Such a write stays pending until an fsync or close that comes after it.
#[test]
fn a_write_racing_a_close_stays_pending_for_the_next_fsync() {
    let e = Env::new();
    let fs = e.fs();
    let (i, h1) = fs.create(ROOT, OsStr::new("r.bin"), 0o644, 0, 0).unwrap();
    fs.write(h1, 0, b"first").unwrap();
    let h2 = fs.open(i.ino, true, false, 0).unwrap().0;
    let racer = fs.clone();
    *fs.persist_hook.lock().unwrap() = Some(Box::new(move || {
        racer.write(h2, 5, b"-second").unwrap();
    }));
    fs.flush(h1).unwrap(); // close(h1) while h2 writes
    assert!(fs.core().open[&i.ino].pending(), "the racing write is not yet durable");
    fs.fsync(h2).unwrap();
    assert!(!fs.core().open[&i.ino].pending());
    fs.release(h1).unwrap();
    fs.release(h2).unwrap();
    assert_eq!(e.read_all(i.ino).unwrap(), b"first-second");
}

/// Regression (review, minor): a partial rewrite copies the old content from the read cache
/// into the new version without checking it: a copy damaged on the staging disk (bit rot, a
/// bad sector) went into every later version in the bucket. It is checked against the
/// version's SHA-256 now; a damaged copy is dropped and the content fetched from the bucket.
#[test]
fn a_damaged_read_cache_copy_never_goes_into_a_new_version() {
    let mut e = Env::new();
    e.restart_with(|c| c.read_cache = 64 << 20);
    let fs = e.fs();
    let d = data(300_000, 7);
    let (ino, _) = upload_one(&e, "photo.jpg", &d);
    let h = fs.getattr(ino).unwrap().header.unwrap();
    let cached = fs.staging.rcache_plain_path(&h[96..128]);
    assert!(cached.exists(), "the uploaded version is in the read cache");
    {
        let f = std::fs::OpenOptions::new().write(true).open(&cached).unwrap();
        f.write_all_at(b"ROT", 150_000).unwrap();
    }
    let gets = e.store.calls_of("GetObject");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.write(fh, 0, b"EDIT").unwrap();
    fs.release(fh).unwrap();
    let mut want = d.clone();
    want[..4].copy_from_slice(b"EDIT");
    assert!(e.read_all(ino).unwrap() == want, "the new version holds the damaged bytes");
    assert!(e.store.calls_of("GetObject") > gets, "the content came from the bucket");
    assert!(!cached.exists(), "the damaged copy is dropped");
}

/// Regression (review N17): the group commit fsynced the index's WAL (and checkpointed it)
/// holding the lock every FUSE operation takes, so every 5 s a getattr or lookup waited for
/// the disk: seconds on a slow staging disk. During that fsync a lookup now answers.
#[test]
fn the_group_commit_syncs_without_stopping_the_file_system() {
    let e = Env::new();
    let fs = e.fs();
    write_on(&fs, ROOT, "a.txt", b"changed since the last group commit");
    let (tx, rx) = std::sync::mpsc::channel();
    let other = fs.clone();
    let wal = {
        let mut p = fs.cfg.cache_dir.join("index.db").into_os_string();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    *crate::meta::WAL_SYNC_HOOK.lock().unwrap() = Some((
        wal,
        Box::new(move || {
            // As another process would, while the fsync runs.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = done_tx.send(other.lookup(ROOT, OsStr::new("a.txt")).is_ok());
            });
            tx.send(done_rx.recv_timeout(Duration::from_secs(10)).ok()).unwrap();
        }),
    ));
    fs.group_commit().unwrap();
    assert_eq!(rx.recv().unwrap(), Some(true), "a lookup during the group commit's fsync answered");
}

/// Regression (review L10): a write's bytes reach the spool outside the lock and its size is
/// recorded after; a truncate to 0 (or an O_TRUNC open elsewhere) in between cut the bytes, and
/// the write then set the size back: the file held zeros, which neither order of the two
/// gives. The write now lands after the truncate, whole.
#[test]
fn a_truncate_racing_a_write_leaves_one_order_of_the_two() {
    for by_open in [false, true] {
        let e = Env::new();
        let fs = e.fs();
        let (i, h) = fs.create(ROOT, OsStr::new("log.txt"), 0o644, 0, 0).unwrap();
        fs.write(h, 0, b"0123456789").unwrap();
        let racer = fs.clone();
        let ino = i.ino;
        *fs.write_hook.lock().unwrap() = Some(Box::new(move || {
            if by_open {
                let (h2, _) = racer.open(ino, true, true, 0).unwrap();
                racer.release(h2).unwrap();
            } else {
                racer.setattr(ino, None, None, None, Some(0), None, None).unwrap();
            }
        }));
        fs.write(h, 10, b"abcdef").unwrap();
        fs.release(h).unwrap();
        let got = e.read_all(i.ino).unwrap();
        let mut want = vec![0u8; 10];
        want.extend_from_slice(b"abcdef");
        assert_eq!(got, want, "truncated by {}: the write after the truncate", if by_open { "O_TRUNC" } else { "truncate" });
    }
}

/// Regression: two opens for write of one sealed or uploaded file materialized its old content
/// into the same `spool/<ino>.fetch` at once; one could adopt a half-written copy, or keep
/// writing old bytes into the adopted spool over the other's new ones.
#[test]
fn concurrent_partial_rewrites_each_materialize_their_own_copy() {
    for round in 0..3u8 {
        let e = Env::new();
        let old = data(3_000_000, round);
        let (ino, _) = upload_one(&e, "big.bin", &old);
        let fs = e.fs();
        let offsets: Vec<u64> = (0..6).map(|k| 400_000 * k + 17).collect();
        std::thread::scope(|sc| {
            for (k, off) in offsets.iter().enumerate() {
                let fs = fs.clone();
                sc.spawn(move || {
                    let fh = fs.open(ino, true, false, 0).unwrap().0;
                    fs.write(fh, *off, &[b'A' + k as u8]).unwrap();
                    fs.release(fh).unwrap();
                });
            }
        });
        let mut want = old.clone();
        for (k, off) in offsets.iter().enumerate() {
            want[*off as usize] = b'A' + k as u8;
        }
        assert!(e.read_all(ino).unwrap() == want, "round {round}: content after concurrent partial rewrites");
        let spool_dir = fs.staging.root().join("spool");
        let fetches: Vec<_> =
            std::fs::read_dir(spool_dir).unwrap().map(|d| d.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".fetch")).collect();
        assert!(fetches.is_empty(), "{fetches:?}");
    }
}

/// Regression (review L5): a sealed file deleted while open kept its frozen version on the
/// staging disk until the next start (its upload rows were gone, so the last close found
/// nothing to remove).
#[test]
fn a_sealed_file_deleted_while_open_leaves_nothing_staged_after_its_last_close() {
    let e = Env::new();
    let fs = e.fs();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503".into()));
    let d = data(5000, 2);
    let ino = e.write_file(ROOT, "log.txt", &d);
    fs.seal_ready(true).unwrap();
    let (fh, _) = fs.open(ino, false, false, 0).unwrap();
    fs.unlink(ROOT, OsStr::new("log.txt")).unwrap();
    assert_eq!(fs.read(fh, 0, 10_000).unwrap().to_vec(), d, "still readable while open");
    fs.release(fh).unwrap();
    fs.sync_durable().unwrap();
    let left: Vec<_> = std::fs::read_dir(e.dir.path().join("outbox")).unwrap().map(|x| x.unwrap().file_name()).collect();
    assert!(left.is_empty(), "staged files left behind: {left:?}");
}

/// A file may not grow past the mount's limit (S3's 5 TiB object, or lower if set): a write or
/// a truncate beyond it is EFBIG at once and changes nothing ( `truncate -s 16T` through Samba
/// would otherwise stage a file that can never be uploaded, and encrypt 16 TB of zeros).
#[test]
fn a_file_beyond_the_largest_accepted_size_is_efbig() {
    assert!(crypto::encrypted_len(MAX_FILE_SIZE) <= 5 << 40);
    assert!(crypto::encrypted_len(MAX_FILE_SIZE + crypto::SEGMENT) > 5 << 40);
    let mut e = Env::new();
    e.restart_with(|c| c.max_file_size = 1 << 20);
    let fs = e.fs();
    let (i, fh) = fs.create(ROOT, OsStr::new("big"), 0o644, 0, 0).unwrap();
    assert_eq!(fs.write(fh, 0, &vec![7u8; 1 << 20]).unwrap(), 1 << 20);
    let err = fs.write(fh, 1 << 20, b"x").unwrap_err();
    assert_eq!(err.errno(), libc::EFBIG, "{err}");
    assert_eq!(fs.write(fh, u64::MAX - 1, b"xy").unwrap_err().errno(), libc::EFBIG);
    let err = fs.setattr(i.ino, None, None, None, Some(16 << 40), None, None).unwrap_err();
    assert_eq!(err.errno(), libc::EFBIG);
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(i.ino).unwrap().size, 1 << 20);
    assert_eq!(e.read_all(i.ino).unwrap(), vec![7u8; 1 << 20]);
}

#[test]
fn o_trunc_of_a_running_program_is_etxtbsy() {
    let e = Env::new();
    let ino = e.write_file(ROOT, "prog", b"a program's bytes");
    let fs = e.fs();
    let (run, _) = fs.open_exec(ino, 0).unwrap();
    // O_TRUNC, O_RDONLY|O_TRUNC included, is refused while the program runs: the kernel would
    // otherwise drop the pages it maps before its own ETXTBSY check.
    assert_eq!(fs.open(ino, true, true, 0).unwrap_err().errno(), libc::ETXTBSY);
    let (r, _) = fs.open(ino, false, false, 0).unwrap();
    fs.release(r).unwrap();
    assert_eq!(e.read_all(ino).unwrap(), b"a program's bytes");
    // The program has exited (its handle released): O_TRUNC truncates again.
    fs.release(run).unwrap();
    let fh = fs.open(ino, true, true, 0).unwrap().0;
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 0);
}
