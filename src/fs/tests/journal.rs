//! Tests of the bucket's view of the index (`fs/journal.rs`): journal records, snapshots, rebuilds on new machines, several machines, conflicts.

use super::*;

#[test]
fn rebuild_replays_renames_deletions_and_attributes() {
    let e = Env::new();
    let fs = e.fs();
    let photos = fs.mkdir(ROOT, OsStr::new("photos"), 0o750, 0, 0).unwrap();
    let y = fs.mkdir(photos.ino, OsStr::new("2019"), 0o755, 0, 0).unwrap();
    let a = e.write_file(y.ino, "a.jpg", &data(70_000, 50));
    let b = e.write_file(y.ino, "b.jpg", &data(1000, 51));
    let _c = e.write_file(ROOT, "c.txt", b"c");
    fs.symlink(ROOT, OsStr::new("latest"), std::path::Path::new("photos/2019"), 0, 0).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    // After upload: rename a file, rename a folder, delete, chmod/utimens, xattr, empty dir.
    fs.rename(y.ino, OsStr::new("a.jpg"), y.ino, OsStr::new("a-renamed.jpg"), false).unwrap();
    fs.rename(ROOT, OsStr::new("photos"), ROOT, OsStr::new("pictures"), false).unwrap();
    fs.unlink(ROOT, OsStr::new("c.txt")).unwrap();
    fs.setattr(b, Some(0o600), None, None, None, None, Some(1_546_300_800_987_654_321)).unwrap();
    fs.setxattr(a, OsStr::new("user.DOSATTRIB"), b"\x20", 0).unwrap();
    fs.mkdir(ROOT, OsStr::new("empty"), 0o700, 0, 0).unwrap();
    // A new file at the renamed file's old path gets its own object.
    let a2 = e.write_file(y.ino, "a.jpg", &data(5000, 52));
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    let want = tree_of(&fs);
    let got = tree_of(&d2.fs);
    assert_eq!(got.iter().map(|x| &x.0).collect::<Vec<_>>(), want.iter().map(|x| &x.0).collect::<Vec<_>>());
    for ((p, w), (_, g)) in want.iter().zip(got.iter()) {
        assert_eq!(w.mode, g.mode, "{p}");
        assert_eq!(w.size, g.size, "{p}");
        assert_eq!(w.key, g.key, "{p}");
        assert_eq!(w.xattrs, g.xattrs, "{p}");
        if w.kind != crate::remote_meta::NodeKind::Dir {
            assert_eq!(w.mtime_ns, g.mtime_ns, "{p}");
        }
    }
    let f2 = d2.fs.clone();
    let b2 = f2.resolve("pictures/2019/b.jpg").unwrap();
    assert_eq!((b2.mode, b2.mtime_ns), (0o600, 1_546_300_800_987_654_321));
    assert!(f2.resolve("c.txt").is_err());
    assert_eq!(f2.readlink(f2.resolve("latest").unwrap().ino).unwrap(), "photos/2019");
    // Content reads back on the new machine.
    let ra = f2.resolve("pictures/2019/a-renamed.jpg").unwrap();
    let (fh, _) = f2.open(ra.ino, false, false, 0).unwrap();
    assert_eq!(f2.read(fh, 0, 100_000).unwrap(), data(70_000, 50));
    f2.release(fh).unwrap();
    let _ = (a2, b);
    e.rt.block_on(d2.shutdown());
}

#[test]
fn rebuild_finds_uploads_whose_journal_was_lost_and_refuses_unsafe_paths() {
    let e = Env::new();
    let d = data(3000, 60);
    upload_one(&e, "kept.jpg", &d);
    // No journal flush: the Upload entry never reached the bucket (a crash).
    // A crafted object whose encrypted metadata names a path outside the vault.
    let evil = b"root::0:0::/root:/bin/sh";
    let mut body = Vec::new();
    let sealed = crate::crypto::encrypt_stream(&e.keys.public, evil.len() as u64, &mut &evil[..], &mut body).unwrap();
    let m = crate::crypto::ObjectMeta {
        path: "../../etc/passwd".into(),
        size: evil.len() as u64,
        mtime_ns: 0,
        mode: 0o644,
        uid: 0,
        gid: 0,
        sha256: hex::encode(sealed.sha256),
        sealed_ms: 0,
        prev: None,
    };
    let md = vec![("cvh".to_string(), B64.encode(sealed.header.bytes)), ("cvm".to_string(), B64.encode(sealed.encrypt_meta(&m)))];
    e.rt.block_on(e.store.put_object(
        "v/d/evil",
        body.into(),
        &crate::store::PutOptions { storage_class: "STANDARD".into(), metadata: md, tagging: None, if_none_match: false },
    ))
    .unwrap();
    let tree =
        e.rt.block_on(crate::remote_meta::rebuild(&(e.store.clone() as Arc<dyn crate::store::ObjectStore>), &e.keys, "v/", &|_, _, _| {})).unwrap();
    assert!(tree.nodes.contains_key("kept.jpg"), "found by listing + HeadObject");
    assert_eq!(tree.nodes.len(), 1);
    assert!(tree.refused.iter().any(|r| r.contains("..")), "{:?}", tree.refused);
}

#[test]
fn snapshots_replace_older_snapshots_and_rebuild_from_them() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.journal.snapshot_every = 5;
    });
    let fs = e.fs();
    for k in 0..4 {
        e.write_file(ROOT, &format!("f{k}"), &data(100, k));
    }
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    flush_journal(&e); // 4 entries: no snapshot yet
    fs.rename(ROOT, OsStr::new("f0"), ROOT, OsStr::new("g0"), false).unwrap();
    fs.unlink(ROOT, OsStr::new("f1")).unwrap();
    flush_journal(&e); // 6 entries: snapshot
    fs.unlink(ROOT, OsStr::new("f3")).unwrap();
    for k in 4..10 {
        e.write_file(ROOT, &format!("f{k}"), &data(100, k));
    }
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    flush_journal(&e); // 7 more: a second snapshot replaces the first
    let keys: Vec<String> = e.store.snapshot().into_keys().collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("v/s/")).count(), 1, "older snapshots removed: {keys:?}");
    // Journal batches stay: another machine's snapshot may have seen less of this journal.
    assert_eq!(keys.iter().filter(|k| k.starts_with("v/j/")).count(), 3, "{keys:?}");
    fs.rename(ROOT, OsStr::new("f2"), ROOT, OsStr::new("g2"), false).unwrap();
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    assert_eq!(
        d2.fs.store.counts()["GetObject"],
        3,
        "the snapshot's header (checked before it is chosen), the snapshot, the one batch after it; nothing older"
    );
    let names: Vec<String> = d2.fs.readdir(ROOT).unwrap().into_iter().map(|i| i.name).collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["f4", "f5", "f6", "f7", "f8", "f9", "g0", "g2"]);
    e.rt.block_on(d2.shutdown());
}

/// A snapshot alone (every journal batch gone) rebuilds the whole tree: nested folders, a
/// folder moved into one made after it, an empty folder, a link, a folder of many files —
/// with no object adopted from the listing to make up for an entry the snapshot missed.
#[test]
fn a_snapshot_alone_rebuilds_nested_and_moved_folders() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.journal.snapshot_every = 1;
    });
    let fs = e.fs();
    let a = fs.mkdir(ROOT, OsStr::new("a"), 0o750, 0, 0).unwrap().ino;
    let b = fs.mkdir(a, OsStr::new("b"), 0o700, 0, 0).unwrap().ino;
    e.write_file(b, "x.jpg", &data(70_000, 1));
    let z = fs.mkdir(ROOT, OsStr::new("z"), 0o755, 0, 0).unwrap().ino;
    fs.rename(ROOT, OsStr::new("a"), z, OsStr::new("a"), false).unwrap();
    fs.mkdir(z, OsStr::new("empty"), 0o755, 0, 0).unwrap();
    for k in 0..40 {
        e.write_file(z, &format!("f{k:02}"), &data(100, k));
    }
    e.write_file(ROOT, "top.txt", b"top");
    fs.symlink(z, OsStr::new("latest"), std::path::Path::new("a/b/x.jpg"), 0, 0).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    flush_journal(&e);
    let keys: Vec<String> = e.store.snapshot().into_keys().collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("v/s/")).count(), 1, "{keys:?}");
    for k in keys.iter().filter(|k| k.starts_with("v/j/")) {
        e.rt.block_on(e.store.delete_object(k)).unwrap();
    }
    let (_dir, d2) = fresh_machine(&e);
    assert_eq!(d2.fs.store.counts().get("HeadObject"), Some(&1), "the snapshot's signature only, no object adopted: the snapshot named them all");
    let (t1, t2) = (tree_of(&fs), tree_of(&d2.fs));
    assert_eq!(t1.len(), 3 + 1 + 1 + 40 + 1 + 1, "{:?}", t1.iter().map(|(p, _)| p).collect::<Vec<_>>());
    assert_eq!(t2, t1);
    assert!(t2.iter().any(|(p, n)| p == "z/a/b" && n.mode & 0o7777 == 0o700));
    e.rt.block_on(d2.shutdown());
}

/// A snapshot needs room on the staging disk (it is sealed into a file there first): without
/// room for 1.5x the last one, none is taken and the error says why, while the journal batches
/// still go up; once there is room, the next flush takes it.
#[test]
fn no_snapshot_without_room_for_it_on_the_staging_disk() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.journal.snapshot_every = 1;
    });
    let fs = e.fs();
    e.write_file(ROOT, "a.jpg", &data(1000, 1));
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    // As if the last snapshot had been a petabyte.
    fs.core().db.set_setting("last_snapshot_bytes", &(1u64 << 50).to_string()).unwrap();
    // Every batch goes up: the flush succeeds, and so does `flush --wait` (review N14: it
    // failed whenever a due snapshot could not be written).
    e.rt.block_on(fs.journal_uploader().flush()).expect("a snapshot without room does not fail the flush");
    e.write_file(ROOT, "b.jpg", &data(1000, 2));
    match e.rt.block_on(crate::control::flush(&fs, &fs.journal_uploader(), true, Some(Duration::from_secs(20)))) {
        crate::control::Reply::Flushed { failed_files: 0, .. } => {}
        other => panic!("flush --wait: {other:?}"),
    }
    let keys: Vec<String> = e.store.snapshot().into_keys().collect();
    assert!(keys.iter().any(|k| k.starts_with("v/j/")), "the journal went up: {keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("v/s/")), "no snapshot: {keys:?}");
    fs.core().db.set_setting("last_snapshot_bytes", "0").unwrap();
    flush_journal(&e);
    assert!(e.store.snapshot().keys().any(|k| k.starts_with("v/s/")), "taken once there is room");
}

/// Snapshots come further apart as the index grows (each costs work and memory in proportion
/// to it): after one of N entries, the next waits for N/2 more records, not `snapshot_every`.
#[test]
fn snapshots_wait_for_half_the_last_one_in_new_records() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.journal.snapshot_every = 3;
    });
    let taken = |e: &Env| e.store.snapshot().keys().filter(|k| k.starts_with("v/s/")).cloned().collect::<Vec<_>>();
    for k in 0..20 {
        e.write_file(ROOT, &format!("f{k}"), &data(10, k as u8));
    }
    e.fs().seal_ready(true).unwrap();
    e.wait_uploaded();
    flush_journal(&e); // 20 records: a snapshot of the root and 20 files
    let first = taken(&e);
    assert_eq!(first.len(), 1, "{first:?}");
    let fs = e.fs();
    for k in 0..9 {
        fs.rename(ROOT, OsStr::new(&format!("f{k}")), ROOT, OsStr::new(&format!("g{k}")), false).unwrap();
        flush_journal(&e);
    }
    assert_eq!(taken(&e), first, "9 records after a 21-entry snapshot: not yet (3 would have been enough before)");
    fs.rename(ROOT, OsStr::new("f9"), ROOT, OsStr::new("g9"), false).unwrap();
    flush_journal(&e);
    let second = taken(&e);
    assert!(second.len() == 1 && second != first, "10 records: the next snapshot replaces the first: {second:?}");
}

#[test]
fn two_machines_in_different_folders_both_survive_a_rebuild() {
    let e = Env::new();
    let (_dir_b, b) = fresh_machine(&e);
    let a = e.fs();
    let da = a.mkdir(ROOT, OsStr::new("laptop"), 0o755, 0, 0).unwrap();
    let db_ = b.fs.mkdir(ROOT, OsStr::new("desktop"), 0o755, 0, 0).unwrap();
    e.write_file(da.ino, "a.jpg", &data(1000, 70));
    let (fb, fhb) = b.fs.create(db_.ino, OsStr::new("b.jpg"), 0o644, 0, 0).unwrap();
    b.fs.write(fhb, 0, &data(2000, 71)).unwrap();
    b.fs.release(fhb).unwrap();
    a.seal_ready(true).unwrap();
    b.fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    wait_for("b uploaded", || b.fs.state_of(fb.ino).unwrap().map(|x| x.1) == Some(State::Uploaded));
    a.rename(da.ino, OsStr::new("a.jpg"), da.ino, OsStr::new("a2.jpg"), false).unwrap();
    flush_journal(&e);
    e.rt.block_on(b.journal.flush()).unwrap();
    assert_ne!(a.machine_id().unwrap(), b.fs.machine_id().unwrap());
    let (_dir_c, c) = fresh_machine(&e);
    assert!(c.fs.resolve("laptop/a2.jpg").is_ok());
    assert!(c.fs.resolve("laptop/a.jpg").is_err());
    assert!(c.fs.resolve("desktop/b.jpg").is_ok());
    e.rt.block_on(b.shutdown());
    e.rt.block_on(c.shutdown());
}

/// Regression: write, rename, flush; lose the cache and rebuild; rewrite f1, rm f2, mv f5 h1,
/// create n1, flush; lose the cache again: f1 gave EIO, f2 came back and f5 was there under
/// both names, depending on the random machine ids (the dead machine's older journal was
/// replayed over the newer state). Each recovery must give exactly the live tree, however the
/// machine ids sort and with or without snapshots.
#[test]
fn recovery_after_recovery_gives_the_live_tree() {
    for round in 0..6 {
        let mut e = Env::new();
        if round % 2 == 1 {
            // Snapshots after every few entries: replay starts from them.
            let d = e.daemon.take().unwrap();
            e.rt.block_on(d.shutdown());
            let mut c = cfg(e.dir.path());
            c.journal.snapshot_every = 3;
            e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap());
        }
        let a = e.fs();
        for n in 1..=5u8 {
            write_on(&a, ROOT, &format!("f{n}"), &data(1000, n));
        }
        settle_machine(&e, &a);
        a.rename(ROOT, OsStr::new("f3"), ROOT, OsStr::new("g3"), false).unwrap();
        settle_machine(&e, &a);
        // The disk dies: machine B rebuilds from the bucket and works on.
        let (_db, b) = fresh_machine(&e);
        assert_eq!(names_of(&b.fs), names_of(&a), "round {round}: first recovery");
        let f1 = b.fs.resolve("f1").unwrap().ino;
        rewrite_on(&b.fs, f1, &data(3000, 11));
        b.fs.unlink(ROOT, OsStr::new("f2")).unwrap();
        b.fs.rename(ROOT, OsStr::new("f5"), ROOT, OsStr::new("h1"), false).unwrap();
        write_on(&b.fs, ROOT, "n1", &data(500, 12));
        settle_machine(&e, &b.fs);
        let want = names_of(&b.fs);
        assert_eq!(want, ["f1", "f4", "g3", "h1", "n1"], "round {round}");
        e.rt.block_on(b.shutdown());
        // B's disk dies too: machine C rebuilds, changes, and D rebuilds after it.
        let (_dc, c) = fresh_machine(&e);
        assert_eq!(names_of(&c.fs), want, "round {round}: second recovery");
        assert_eq!(read_on(&c.fs, "f1"), data(3000, 11), "round {round}: f1 has its newest version");
        c.fs.unlink(ROOT, OsStr::new("h1")).unwrap();
        c.fs.rename(ROOT, OsStr::new("g3"), ROOT, OsStr::new("f3"), false).unwrap();
        write_on(&c.fs, ROOT, "f2", &data(700, 13));
        settle_machine(&e, &c.fs);
        let want = names_of(&c.fs);
        e.rt.block_on(c.shutdown());
        let (_dd, d) = fresh_machine(&e);
        assert_eq!(names_of(&d.fs), want, "round {round}: third recovery");
        assert_eq!(read_on(&d.fs, "f2"), data(700, 13), "round {round}");
        e.rt.block_on(d.shutdown());
    }
}

/// Two machines working in different folders at once, snapshots on both, rebuilt again and
/// again: every rebuild holds both machines' latest changes, whichever snapshot is newest.
#[test]
fn two_live_machines_with_snapshots_rebuild_to_both_trees() {
    let mut e = Env::new();
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    let mut ca = cfg(e.dir.path());
    ca.journal.snapshot_every = 3;
    e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), ca, fast_upload()).unwrap());
    let bdir = tempfile::tempdir().unwrap();
    let mut cb = cfg(bdir.path());
    cb.journal.snapshot_every = 4;
    let b = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cb, fast_upload()).unwrap();
    let a = e.fs();
    let fa = a.mkdir(ROOT, OsStr::new("laptop"), 0o755, 0, 0).unwrap().ino;
    let fb = b.fs.mkdir(ROOT, OsStr::new("desktop"), 0o755, 0, 0).unwrap().ino;
    for round in 0..4u8 {
        write_on(&a, fa, &format!("a{round}"), &data(300, round));
        if round > 0 {
            a.unlink(fa, OsStr::new(&format!("a{}", round - 1))).unwrap();
        }
        settle_machine(&e, &a);
        write_on(&b.fs, fb, &format!("b{round}"), &data(400, round));
        if round > 1 {
            b.fs.rename(fb, OsStr::new(&format!("b{}", round - 2)), fb, OsStr::new(&format!("old{round}")), false).unwrap();
        }
        settle_machine(&e, &b.fs);
        let mut want: Vec<String> = names_of(&a).into_iter().filter(|p| p.starts_with("laptop")).collect();
        want.extend(names_of(&b.fs).into_iter().filter(|p| p.starts_with("desktop")));
        want.sort();
        let (_dc, c) = fresh_machine(&e);
        assert_eq!(names_of(&c.fs), want, "round {round}");
        e.rt.block_on(c.shutdown());
    }
    e.rt.block_on(b.shutdown());
}

/// Regression: a snapshot taken while a file's new version was pending left the file out, so a
/// rebuild from it lost the file although its previous version was safe in the bucket.
#[test]
fn snapshot_keeps_the_durable_version_of_a_file_being_rewritten() {
    let mut e = Env::new();
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    let mut c = cfg(e.dir.path());
    c.journal.snapshot_every = 1;
    e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap());
    let v1 = data(50_000, 21);
    let (ino, _) = upload_one(&e, "keep.jpg", &v1);
    let fs = e.fs();
    fs.rename(ROOT, OsStr::new("keep.jpg"), ROOT, OsStr::new("kept.jpg"), false).unwrap();
    // The new version is still on the wire when the snapshot is taken (and the machine dies).
    e.store.delay_next("PutObject", Duration::from_secs(4));
    let puts = fs.store.counts().get("PutObject").copied().unwrap_or(0);
    rewrite_on(&fs, ino, &data(60_000, 22));
    fs.seal_ready(true).unwrap();
    wait_for("the new version's PUT on the wire", || fs.store.counts().get("PutObject").copied().unwrap_or(0) > puts);
    e.rt.block_on(fs.journal_uploader().flush()).unwrap();
    assert_ne!(fs.state_of(ino).unwrap().unwrap().1, State::Uploaded, "still pending at the snapshot");
    let snaps = e.store.snapshot().into_keys().filter(|k| k.starts_with("v/s/")).count();
    assert!(snaps >= 1, "a snapshot was taken");
    let (_d2, d2) = fresh_machine(&e);
    assert_eq!(read_on(&d2.fs, "kept.jpg"), v1, "the durable version survives, under its current name");
    e.rt.block_on(d2.shutdown());
}

/// Env whose journal flushes take a snapshot every time.
fn snapshotting_env() -> Env {
    let mut e = Env::new();
    e.restart_with(|c| c.journal.snapshot_every = 1);
    e
}

/// Regression (durability review N1): an atomic save (a temp file renamed over the file) whose
/// upload never completed, then a snapshot, then the machine lost: a rebuild showed no file at
/// all, though its previous version was intact in the bucket (it counted as dead and the
/// snapshot left the path out).
#[test]
fn an_atomic_save_never_uploaded_keeps_the_previous_version_in_every_rebuild() {
    let e = snapshotting_env();
    let v1 = data(40_000, 31);
    upload_one(&e, "a.txt", &v1);
    let fs = e.fs();
    e.store.delay_next("PutObject", Duration::from_secs(4));
    let puts = fs.store.counts().get("PutObject").copied().unwrap_or(0);
    let v2 = data(45_000, 32);
    e.write_file(ROOT, ".a.txt.XXXX", &v2);
    fs.rename(ROOT, OsStr::new(".a.txt.XXXX"), ROOT, OsStr::new("a.txt"), false).unwrap();
    fs.seal_ready(true).unwrap();
    wait_for("v2's PUT on the wire", || fs.store.counts().get("PutObject").copied().unwrap_or(0) > puts);
    flush_journal(&e);
    assert!(e.store.snapshot().keys().any(|k| k.starts_with("v/s/")), "a snapshot was taken");
    // The machine is lost now: v2 never reaches the journal.
    let (_d2, d2) = fresh_machine(&e);
    assert_eq!(read_on(&d2.fs, "a.txt"), v1, "the previous version is the file after a rebuild");
    e.rt.block_on(d2.shutdown());
    // Once v2 is uploaded and journaled, a rebuild shows v2 and v1 is no live file.
    e.wait_uploaded();
    flush_journal(&e);
    let (_d3, d3) = fresh_machine(&e);
    assert_eq!(read_on(&d3.fs, "a.txt"), v2);
    assert_eq!(names_of(&d3.fs), vec!["a.txt".to_string()], "v1 is not adopted as another file");
    e.rt.block_on(d3.shutdown());
}

/// The other half of N1: a file saved over another and deleted before its own upload takes the
/// replaced version with it; no rebuild brings it back.
#[test]
fn an_atomic_save_deleted_before_upload_brings_back_nothing() {
    let e = snapshotting_env();
    upload_one(&e, "a.txt", &data(40_000, 33));
    let fs = e.fs();
    e.write_file(ROOT, ".a.txt.tmp", &data(45_000, 34));
    fs.rename(ROOT, OsStr::new(".a.txt.tmp"), ROOT, OsStr::new("a.txt"), false).unwrap();
    flush_journal(&e);
    fs.unlink(ROOT, OsStr::new("a.txt")).unwrap();
    flush_journal(&e);
    let (_d2, d2) = fresh_machine(&e);
    assert!(names_of(&d2.fs).is_empty(), "a deleted file came back: {:?}", names_of(&d2.fs));
    e.rt.block_on(d2.shutdown());
}

/// Regression (review N6): a file saved as v2 and v3, both uploaded, and the machine lost
/// before the next journal upload: a rebuild showed v1 (the journaled version held the path and
/// the newer objects were ignored). The newest version that reached the bucket wins.
#[test]
fn versions_uploaded_after_the_last_journal_upload_come_back_newest() {
    let e = Env::new();
    let fs = e.fs();
    let (ino, _) = upload_one(&e, "doc.txt", &data(20_000, 40));
    flush_journal(&e);
    let mut last = Vec::new();
    for seed in [41, 42] {
        std::thread::sleep(Duration::from_millis(5));
        last = data(20_000 + seed as usize, seed);
        rewrite_on(&fs, ino, &last);
        fs.seal_ready(true).unwrap();
        e.wait_state(ino, State::Uploaded);
    }
    assert_eq!(e.puts(), 3, "three versions in the bucket");
    let (_d2, d2) = fresh_machine(&e);
    assert_eq!(read_on(&d2.fs, "doc.txt"), last, "the newest version that reached the bucket");
    assert_eq!(names_of(&d2.fs), vec!["doc.txt".to_string()]);
    e.rt.block_on(d2.shutdown());
}

/// A copy of `e`'s cache dir (the daemon stopped meanwhile, as a backup or a VM image takes it).
fn copy_cache_dir(e: &mut Env) -> tempfile::TempDir {
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    let copy = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", e.dir.path().display())).arg(copy.path()).status().unwrap();
    assert!(ok.success());
    e.start();
    copy
}

/// Regression (review N3): a cache dir restored from last week's backup reused the machine id
/// and its sequence numbers, and its journal batches overwrote or hid the bucket's. Now the
/// mount sees the bucket's journal ahead of its index and goes on as a new machine, and no
/// batch is ever written over another: every file of both copies survives a rebuild.
#[test]
fn a_restored_copy_of_the_cache_dir_never_hides_the_journal_it_fell_behind() {
    let mut e = Env::new();
    upload_one(&e, "a.txt", b"before the backup");
    flush_journal(&e);
    let copy = copy_cache_dir(&mut e);
    for k in 0..3 {
        upload_one(&e, &format!("orig-{k}.txt"), format!("original {k}").as_bytes());
    }
    e.fs().rename(ROOT, OsStr::new("orig-0.txt"), ROOT, OsStr::new("renamed.txt"), false).unwrap();
    flush_journal(&e);
    let machine = e.fs().machine_id().unwrap();
    // The copy comes back (a restored backup) and writes as many changes.
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cfg(copy.path()), fast_upload()).unwrap();
    assert_ne!(d2.fs.machine_id().unwrap(), machine, "the copy goes on as a new machine");
    for k in 0..3 {
        let ino = write_on(&d2.fs, ROOT, &format!("copy-{k}.txt"), format!("copy {k}").as_bytes());
        let _ = ino;
    }
    d2.fs.rename(ROOT, OsStr::new("copy-0.txt"), ROOT, OsStr::new("moved.txt"), false).unwrap();
    settle_machine(&e, &d2.fs);
    e.rt.block_on(d2.shutdown());
    let (_d3, d3) = fresh_machine(&e);
    let mut names = names_of(&d3.fs);
    names.sort();
    assert_eq!(names, ["a.txt", "copy-1.txt", "copy-2.txt", "moved.txt", "orig-1.txt", "orig-2.txt", "renamed.txt"], "every file of both copies");
    assert_eq!(read_on(&d3.fs, "renamed.txt"), b"original 0");
    assert_eq!(read_on(&d3.fs, "moved.txt"), b"copy 0");
    e.rt.block_on(d3.shutdown());
}

/// Two live copies of one cache dir (a cloned VM) write batches with the same sequence range:
/// the second is refused, never written over the first, and names the cause.
#[test]
fn a_live_clone_never_overwrites_the_journal_of_the_machine_it_copies() {
    let mut e = Env::new();
    upload_one(&e, "a.txt", b"shared past");
    flush_journal(&e);
    let copy = copy_cache_dir(&mut e);
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cfg(copy.path()), fast_upload()).unwrap();
    assert_eq!(d2.fs.machine_id().unwrap(), e.fs().machine_id().unwrap(), "nothing tells them apart yet");
    upload_one(&e, "orig.txt", b"original");
    flush_journal(&e);
    write_on(&d2.fs, ROOT, "clone.txt", b"clone");
    d2.fs.seal_ready(true).unwrap();
    wait_for("the clone's upload", || d2.fs.status().unwrap().pending_files == 0);
    let err = e.rt.block_on(d2.journal.flush()).unwrap_err().to_string();
    assert!(err.contains("another copy of this machine"), "{err}");
    let (_d3, d3) = fresh_machine(&e);
    assert_eq!(read_on(&d3.fs, "orig.txt"), b"original", "the first copy's journal is intact");
    e.rt.block_on(d3.shutdown());
    // Restarted, the clone goes on as a new machine and its changes reach the bucket too.
    e.rt.block_on(d2.shutdown());
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cfg(copy.path()), fast_upload()).unwrap();
    e.rt.block_on(d2.journal.flush()).unwrap();
    e.rt.block_on(d2.shutdown());
    let (_d4, d4) = fresh_machine(&e);
    assert_eq!(read_on(&d4.fs, "orig.txt"), b"original");
    assert_eq!(read_on(&d4.fs, "clone.txt"), b"clone");
    e.rt.block_on(d4.shutdown());
}

/// Regression (review N2a, issue 24 item 2): machine 1 deletes `shared/x`; a moment later
/// machine 2, which had not seen the deletion, writes a new `shared/x` and takes a snapshot. A
/// rebuild applied machine 1's older deletion on top of machine 2's snapshot: the newer file
/// was gone, and nothing said so. The newer write wins, and the rebuild names the conflict.
#[test]
fn a_deletion_never_removes_a_newer_version_another_machine_wrote() {
    let e = Env::new();
    let m1 = e.fs();
    let shared = m1.mkdir(ROOT, OsStr::new("shared"), 0o755, 0, 0).unwrap().ino;
    write_on(&m1, shared, "x", b"old");
    settle_machine(&e, &m1);
    let (_d2, m2) = second_machine(&e);
    let x2 = m2.fs.resolve("shared/x").unwrap().ino;
    m1.unlink(shared, OsStr::new("x")).unwrap();
    settle_machine(&e, &m1);
    std::thread::sleep(Duration::from_millis(20));
    rewrite_on(&m2.fs, x2, b"newer, from machine 2");
    settle_machine(&e, &m2.fs);
    assert!(e.store.snapshot().keys().any(|k| k.starts_with(&format!("v/s/{}/", m2.fs.machine_id().unwrap()))), "machine 2 took a snapshot");
    let (_d3, m3) = fresh_machine(&e);
    assert_eq!(read_on(&m3.fs, "shared/x"), b"newer, from machine 2");
    e.rt.block_on(m3.shutdown());
    let tree = e.rt.block_on(crate::remote_meta::rebuild(&(e.store.clone() as Arc<dyn ObjectStore>), &e.keys, "v/", &|_, _, _| {})).unwrap();
    assert!(tree.conflicts.iter().any(|c| c.contains("shared/x") && c.contains("older")), "{:?}", tree.conflicts);
    e.rt.block_on(m2.shutdown());
}

/// Two machines change one file without having seen each other's change (a Lightroom catalog
/// sidecar edited on the laptop and on the desktop): the newer version is the file, and the
/// older is kept beside it as `NAME (conflict from MACHINE DATE).ext` (before, it was only in
/// the bucket, out of every listing). Whichever snapshot the rebuild starts from. A later
/// change by a machine that saw both makes no new copy.
#[test]
fn concurrent_versions_of_one_file_keep_the_older_as_a_conflict_copy() {
    for with_snapshot in [false, true] {
        let e = Env::new();
        let m1 = e.fs();
        let p = m1.mkdir(ROOT, OsStr::new("Photos"), 0o755, 0, 0).unwrap().ino;
        let x1 = write_on(&m1, p, "edit.xmp", b"v0");
        settle_machine(&e, &m1);
        let (_d2, m2) = if with_snapshot { second_machine(&e) } else { fresh_machine(&e) };
        let x2 = m2.fs.resolve("Photos/edit.xmp").unwrap().ino;
        rewrite_on(&m1, x1, b"laptop edit");
        settle_machine(&e, &m1);
        std::thread::sleep(Duration::from_millis(20));
        rewrite_on(&m2.fs, x2, b"desktop edit, later");
        settle_machine(&e, &m2.fs);
        let (_d3, m3) = fresh_machine(&e);
        let names = names_of(&m3.fs);
        let m1_id: String = m1.machine_id().unwrap().chars().take(8).collect();
        let copy = names.iter().find(|n| n.starts_with(&format!("Photos/edit (conflict from {m1_id} "))).cloned();
        let copy = copy.unwrap_or_else(|| panic!("no conflict copy of machine 1's version (with snapshot: {with_snapshot}): {names:?}"));
        assert!(copy.ends_with(").xmp"), "{copy}");
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(read_on(&m3.fs, "Photos/edit.xmp"), b"desktop edit, later");
        assert_eq!(read_on(&m3.fs, &copy), b"laptop edit");
        let tree = e.rt.block_on(crate::remote_meta::rebuild(&(e.store.clone() as Arc<dyn ObjectStore>), &e.keys, "v/", &|_, _, _| {})).unwrap();
        assert!(tree.conflicts.iter().any(|c| c.contains("Photos/edit.xmp") && c.contains(&copy)), "{:?}", tree.conflicts);
        let st = m3.fs.status().unwrap();
        assert!(st.conflicts_total >= 1 && st.conflicts.iter().any(|c| c.contains(&copy)), "status shows the conflict: {:?}", st.conflicts);
        // Machine 3 saw both: its change makes no copy, and the copy stays.
        let x3 = m3.fs.resolve("Photos/edit.xmp").unwrap().ino;
        rewrite_on(&m3.fs, x3, b"merged by hand");
        settle_machine(&e, &m3.fs);
        let (_d4, m4) = fresh_machine(&e);
        assert_eq!(names_of(&m4.fs), names, "with snapshot: {with_snapshot}");
        assert_eq!(read_on(&m4.fs, "Photos/edit.xmp"), b"merged by hand");
        for d in [m4, m3, m2] {
            e.rt.block_on(d.shutdown());
        }
    }
}

/// Regressions found by review of the conflict copies: each rebuild, from the newest snapshot
/// of the machine that never saw the other's change or from the journals alone, must give the
/// same tree, and drop no version that no change was made over.
/// 1. A chmod (or touch) after another machine deleted the file it saw: the deletion stands
///    (the snapshot's `at` moved with the chmod, and the deleted file came back).
/// 2. Another machine renames a file over this one's; this one, unaware, rewrites it: the
///    renamed file is kept as a conflict copy (it was dropped without a word: same owner).
/// 3. A folder one machine removed and made a file of, while another put a file in it: the
///    folder and its file stay, the new file is kept beside it (a file or folder was dropped).
#[test]
fn concurrent_changes_give_one_tree_whichever_snapshot_the_rebuild_starts_from() {
    for with_snapshot in [false, true] {
        let mut e = Env::new();
        e.restart_with(|c| c.journal.snapshot_every = if with_snapshot { 1 } else { 1_000_000 });
        let a = e.fs();
        let f = write_on(&a, ROOT, "deleted.txt", b"v1");
        write_on(&a, ROOT, "F.txt", b"F v0");
        write_on(&a, ROOT, "X.txt", b"X, renamed over F by B");
        let d = a.mkdir(ROOT, OsStr::new("D"), 0o755, 0, 0).unwrap().ino;
        write_on(&a, d, "x", b"in D");
        settle_machine(&e, &a);
        let (_db, b) = fresh_machine(&e);
        let fb = b.fs.clone();
        // B: deletes deleted.txt, renames X over F, puts y into D.
        fb.unlink(ROOT, OsStr::new("deleted.txt")).unwrap();
        fb.rename(ROOT, OsStr::new("X.txt"), ROOT, OsStr::new("F.txt"), false).unwrap();
        let db = fb.resolve("D").unwrap().ino;
        write_on(&fb, db, "y", b"B's file in D");
        settle_machine(&e, &fb);
        std::thread::sleep(Duration::from_millis(20));
        // A, unaware: chmods deleted.txt, rewrites F, empties and removes D, makes a file D.
        a.setattr(f, Some(0o600), None, None, None, None, None).unwrap();
        let fa = a.resolve("F.txt").unwrap().ino;
        rewrite_on(&a, fa, b"F, A's rewrite");
        a.unlink(d, OsStr::new("x")).unwrap();
        a.rmdir(ROOT, OsStr::new("D")).unwrap();
        write_on(&a, ROOT, "D", b"A's file D");
        settle_machine(&e, &a);
        let (_dc, c) = fresh_machine(&e);
        let names = names_of(&c.fs);
        let b_id: String = fb.machine_id().unwrap().chars().take(8).collect();
        let a_id: String = a.machine_id().unwrap().chars().take(8).collect();
        let how = format!("with snapshot: {with_snapshot}: {names:?}");
        assert!(!names.iter().any(|n| n.starts_with("deleted")), "1. the deletion stands, {how}");
        assert_eq!(read_on(&c.fs, "F.txt"), b"F, A's rewrite", "{how}");
        let copy = names
            .iter()
            .find(|n| n.starts_with(&format!("F (conflict from {b_id} ")))
            .unwrap_or_else(|| panic!("2. no copy of the renamed file, {how}"));
        assert_eq!(read_on(&c.fs, copy), b"X, renamed over F by B");
        assert_eq!(read_on(&c.fs, "D/y"), b"B's file in D", "3. {how}");
        let copy =
            names.iter().find(|n| n.starts_with(&format!("D (conflict from {a_id} "))).unwrap_or_else(|| panic!("3. no copy of A's file D, {how}"));
        assert_eq!(read_on(&c.fs, copy), b"A's file D");
        assert_eq!(names.len(), 5, "{how}");
        e.rt.block_on(c.shutdown());
        e.rt.block_on(b.shutdown());
    }
}

/// A machine deletes a file whose newer version, written by another machine, it never saw:
/// the deletion (newer) removes the name, and that version is kept as a conflict copy
/// (before, it was gone from every rebuild).
#[test]
fn a_deletion_keeps_a_version_it_never_saw_as_a_conflict_copy() {
    let e = Env::new();
    let m1 = e.fs();
    let x1 = write_on(&m1, ROOT, "notes.txt", b"v0");
    settle_machine(&e, &m1);
    let (_d2, m2) = fresh_machine(&e);
    rewrite_on(&m1, x1, b"v1, written on machine 1");
    settle_machine(&e, &m1);
    std::thread::sleep(Duration::from_millis(20));
    m2.fs.unlink(ROOT, OsStr::new("notes.txt")).unwrap();
    settle_machine(&e, &m2.fs);
    let (_d3, m3) = fresh_machine(&e);
    let names = names_of(&m3.fs);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("notes (conflict from ") && names[0].ends_with(").txt"), "{names:?}");
    assert_eq!(read_on(&m3.fs, &names[0]), b"v1, written on machine 1");
    e.rt.block_on(m3.shutdown());
    e.rt.block_on(m2.shutdown());
}

/// Regression (review N2b): machine 1 empties a folder in its view and removes it; machine 2
/// had put files there that machine 1 never saw. Every rebuild lost machine 2's files. A folder
/// removal removes only an empty folder: what another machine put there stays.
#[test]
fn a_folder_removal_keeps_what_another_machine_put_there() {
    for with_snapshot in [false, true] {
        let e = Env::new();
        let m1 = e.fs();
        let p = m1.mkdir(ROOT, OsStr::new("Photos"), 0o755, 0, 0).unwrap().ino;
        write_on(&m1, p, "mine.jpg", b"m1");
        settle_machine(&e, &m1);
        let (_d2, m2) = if with_snapshot { second_machine(&e) } else { fresh_machine(&e) };
        let p2 = m2.fs.resolve("Photos").unwrap().ino;
        write_on(&m2.fs, p2, "theirs.jpg", b"m2");
        settle_machine(&e, &m2.fs);
        std::thread::sleep(Duration::from_millis(20));
        m1.unlink(p, OsStr::new("mine.jpg")).unwrap();
        m1.rmdir(ROOT, OsStr::new("Photos")).unwrap();
        settle_machine(&e, &m1);
        let (_d3, m3) = fresh_machine(&e);
        assert_eq!(names_of(&m3.fs), ["Photos", "Photos/theirs.jpg"], "with snapshot: {with_snapshot}");
        e.rt.block_on(m3.shutdown());
        e.rt.block_on(m2.shutdown());
    }
}

/// Review of N6: versions swapped by renames after one of them was sealed (`mv a t; mv b a;
/// mv t b` while a's new version was on the wire, the machine lost before its record went
/// up): the newer object of `a` must not replace what the later renames put at `a`.
#[test]
fn a_rename_after_a_seal_keeps_its_place_over_the_unjournaled_version() {
    let e = Env::new();
    let fs = e.fs();
    let (a, _) = upload_one(&e, "a", b"a v1");
    upload_one(&e, "b", b"b v1");
    flush_journal(&e);
    e.store.delay_next("PutObject", Duration::from_secs(3));
    rewrite_on(&fs, a, b"a v2");
    fs.seal_ready(true).unwrap();
    wait_for("a v2 on the wire", || fs.store.counts().get("PutObject").copied().unwrap_or(0) >= 3);
    std::thread::sleep(Duration::from_millis(20));
    fs.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("t"), false).unwrap();
    fs.rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("a"), false).unwrap();
    fs.rename(ROOT, OsStr::new("t"), ROOT, OsStr::new("b"), false).unwrap();
    // The renames reach the bucket; a v2 lands after, and its record never does.
    e.rt.block_on(fs.journal_uploader().flush()).unwrap();
    wait_for("a v2 landed", || e.puts() == 3);
    let (_d2, d2) = fresh_machine(&e);
    assert_eq!(read_on(&d2.fs, "a"), b"b v1", "what the renames put at a");
    assert_eq!(read_on(&d2.fs, "b"), b"a v2", "the newest version of the file now at b");
    e.rt.block_on(d2.shutdown());
}

/// Review of N7: a version whose PUT landed just before kill -9, its row `uploading` (or only
/// `queued`: a power cut loses that), then the file deleted after the restart before the
/// retry. The cancelled row journaled no Discard (no attempt recorded), and the landed object
/// came back as the deleted file.
#[test]
fn a_file_deleted_after_a_crash_mid_upload_stays_deleted() {
    let mut e = snapshotting_env();
    e.store.delay_next("PutObject", Duration::from_millis(800));
    let ino = e.write_file(ROOT, "gone.txt", b"deleted later");
    e.fs().seal_ready(true).unwrap();
    wait_for("the PUT on the wire", || e.fs().store.counts().get("PutObject").copied().unwrap_or(0) >= 1);
    {
        let fs = e.fs();
        let c = fs.core();
        let u = c.db.uploads().unwrap().remove(0);
        // As a power cut leaves it: the row's `uploading` state never reached the disk.
        c.db.set_upload_state(u.id, UploadState::Queued, 0, i64::MAX, None).unwrap();
    }
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.crash());
    std::thread::sleep(Duration::from_millis(1000)); // the PUT lands meanwhile
                                                     // Start-up brings a retry time far ahead back to now (the clock check), so the restarted
                                                     // uploader may try the version at once: it is kept from landing it again before the
                                                     // deletion (under load it sometimes did, and the state below was `uploading`).
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503".into()));
    e.start();
    let st = e.fs().state_of(ino).unwrap().unwrap().1;
    assert!(matches!(st, State::Sealed | State::Uploading), "{st:?}: not uploaded since the restart");
    e.fs().unlink(ROOT, OsStr::new("gone.txt")).unwrap();
    e.store.clear_faults();
    flush_journal(&e);
    let (_d2, d2) = fresh_machine(&e);
    assert!(names_of(&d2.fs).is_empty(), "a deleted file came back: {:?}", names_of(&d2.fs));
    e.rt.block_on(d2.shutdown());
}

/// Review of N3: the cache dir restored from a backup goes on as a new machine and snapshots;
/// a rebuild from that snapshot must not replay the old id's whole journal over it (a file the
/// copy deleted came back, a file it rewrote went back to its old version).
#[test]
fn a_forked_machines_snapshot_covers_the_journal_it_shared() {
    let mut e = Env::new();
    let (x, _) = upload_one(&e, "x", b"x");
    let (doc, _) = upload_one(&e, "doc", b"doc v1");
    let _ = (x, doc);
    flush_journal(&e);
    let copy = copy_cache_dir(&mut e);
    upload_one(&e, "orig.txt", b"original");
    flush_journal(&e);
    let mut c2 = cfg(copy.path());
    c2.journal.snapshot_every = 1;
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c2, fast_upload()).unwrap();
    d2.fs.unlink(ROOT, OsStr::new("x")).unwrap();
    let doc2 = d2.fs.resolve("doc").unwrap().ino;
    rewrite_on(&d2.fs, doc2, b"doc v2");
    settle_machine(&e, &d2.fs);
    e.rt.block_on(d2.shutdown());
    let (_d3, d3) = fresh_machine(&e);
    let mut names = names_of(&d3.fs);
    names.sort();
    assert_eq!(names, ["doc", "orig.txt"]);
    assert_eq!(read_on(&d3.fs, "doc"), b"doc v2");
    e.rt.block_on(d3.shutdown());
}

/// A journal batch that cannot be decrypted (tampered, truncated) is reported by name; the rest
/// of the vault still rebuilds (before, one bad object aborted every rebuild).
#[test]
fn an_unreadable_journal_batch_is_reported_by_name_and_the_rest_rebuilds() {
    let e = Env::new();
    upload_one(&e, "a.jpg", &data(1000, 1));
    flush_journal(&e);
    upload_one(&e, "b.jpg", &data(1000, 2));
    flush_journal(&e);
    let batches: Vec<String> = e.store.snapshot().into_keys().filter(|k| k.starts_with("v/j/")).collect();
    assert_eq!(batches.len(), 2);
    e.store.plant(&batches[1], b"not a coldvault object");
    let tree =
        e.rt.block_on(crate::remote_meta::rebuild(&(e.store.clone() as Arc<dyn crate::store::ObjectStore>), &e.keys, "v/", &|_, _, _| {})).unwrap();
    assert!(tree.nodes.contains_key("a.jpg"));
    assert!(tree.refused.iter().any(|r| r.contains(&batches[1])), "{:?}", tree.refused);
}

/// A file imported from a write-only machine's journal keeps that machine as its owner in the
/// index (and in this machine's snapshots, `by`); a rename here, or a new version written here,
/// makes it this machine's.
#[test]
fn imported_files_keep_their_owner_until_rewritten_here() {
    use crate::crypto::sign::MachineSigner;
    let e = Env::new();
    let w = MachineSigner::new("00000000000000cc", &[0xc; 32]);
    let sk = e.keys.secret.as_ref().unwrap();
    e.rt.block_on(crate::remote_meta::trust::enroll(
        e.store.as_ref(),
        sk,
        "v/",
        w.machine(),
        &w.public(),
        crate::remote_meta::trust::Role::WriteOnly,
    ))
    .unwrap();
    let (ino, key) = upload_one(&e, "mine.jpg", &data(1000, 1));
    let header = e.fs().core().db.get(ino).unwrap().unwrap().header.unwrap();
    let entry = crate::remote_meta::Entry::Upload {
        path: "w.jpg".into(),
        key,
        size: 1000,
        mtime_ns: 1,
        mode: 0o644,
        uid: 0,
        gid: 0,
        class: "STANDARD".into(),
        sha256: String::new(),
        header: B64.encode(header),
        xattrs: None,
        saw: None,
    };
    let sink = crate::remote_meta::MetaSink { store: e.store.as_ref(), keys: &e.keys, signer: Some(&w), prefix: "v/" };
    e.rt.block_on(sink.put_batch(w.machine(), vec![crate::remote_meta::Record { seq: 1, ts_ms: 1, entry }])).unwrap();
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    let fs = d2.fs.clone();
    let w_ino = fs.lookup(ROOT, OsStr::new("w.jpg")).unwrap().ino;
    assert_eq!(fs.core().db.get(w_ino).unwrap().unwrap().owner.as_deref(), Some(w.machine()));
    fs.rename(ROOT, OsStr::new("w.jpg"), ROOT, OsStr::new("w2.jpg"), false).unwrap();
    // This machine put it there: a rename makes it this machine's (as a rebuild replaying the
    // rename does), and the write-only machine can no longer change or remove it.
    assert_eq!(fs.core().db.get(w_ino).unwrap().unwrap().owner, None, "a rename makes it this machine's");
    let (fh, _) = fs.open(w_ino, true, true, 0).unwrap();
    fs.write(fh, 0, b"rewritten here").unwrap();
    fs.release(fh).unwrap();
    fs.seal_ready(true).unwrap();
    wait_for("upload", || fs.status().unwrap().pending_files == 0);
    assert_eq!(fs.core().db.get(w_ino).unwrap().unwrap().owner, None, "a version written here is this machine's");
}

/// A mount whose credentials grant no Delete (the `mount` policy): its first compaction is
/// refused, and it says so once and stops trying, instead of a refused delete and a warning
/// after every snapshot; the snapshots themselves go on.
#[test]
fn a_mount_without_delete_rights_stops_compacting_after_one_refusal() {
    let e = snapshotting_env();
    e.store.fail_op("DeleteObject", u64::MAX, StoreError::Permanent { code: "AccessDenied".into(), message: "HTTP 403".into() });
    for k in 0..4 {
        upload_one(&e, &format!("f{k}"), b"x");
        flush_journal(&e);
    }
    let snaps: Vec<String> = e.store.snapshot().keys().filter(|k| k.starts_with("v/s/")).cloned().collect();
    assert!(snaps.len() >= 3, "snapshots go on: {snaps:?}");
    assert_eq!(e.store.calls_of("DeleteObject"), 1, "one refused delete, then no more tries");
}

/// A write-only box whose config names its machine id (`init --write-only`) loses its cache
/// dir: the new index takes that id again and numbers its records from 1. Its first batch
/// finds the old one at its key; a write-only machine cannot read it to compare, and used to
/// count it as its own earlier attempt, dropping its records without a word. It is refused
/// (the index never put that batch), and the restarted mount goes on as a new machine whose
/// records reach the bucket; the old batch is untouched.
#[test]
fn a_write_only_machine_reusing_its_configured_id_never_drops_its_records() {
    let e = Env::new();
    let wo_keys = Arc::new(crate::crypto::VaultKeys::write_only(e.keys.public, e.keys.name_key));
    let with_id = |dir: &std::path::Path| FsConfig { machine_id: Some("0123456789abcdef".into()), ..cfg(dir) };
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d1 = Daemon::start(e.rt.handle(), e.store.clone(), wo_keys.clone(), with_id(first.path()), fast_upload()).unwrap();
    assert_eq!(d1.fs.machine_id().unwrap(), "0123456789abcdef", "the configured id is taken");
    write_on(&d1.fs, ROOT, "before.txt", b"before the disk died");
    settle_machine(&e, &d1.fs);
    e.rt.block_on(d1.shutdown());
    let batches = |m: &str| e.store.snapshot().into_keys().filter(|k| k.starts_with(&format!("v/j/{m}/"))).collect::<Vec<_>>();
    let old = batches("0123456789abcdef");
    let old_body = e.store.snapshot()[&old[0]].body.clone();
    // The cache dir is gone; a new one, same config.
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), wo_keys.clone(), with_id(second.path()), fast_upload()).unwrap();
    write_on(&d2.fs, ROOT, "after.txt", b"after");
    d2.fs.seal_ready(true).unwrap();
    wait_for("the upload", || d2.fs.status().unwrap().pending_files == 0);
    let err = e.rt.block_on(d2.journal.flush()).unwrap_err().to_string();
    assert!(err.contains("another copy of this machine"), "{err}");
    assert_eq!(e.store.snapshot()[&old[0]].body, old_body, "the old batch is untouched");
    e.rt.block_on(d2.shutdown());
    let d2 = Daemon::start(e.rt.handle(), e.store.clone(), wo_keys, with_id(second.path()), fast_upload()).unwrap();
    let fresh = d2.fs.machine_id().unwrap();
    assert_ne!(fresh, "0123456789abcdef", "the restarted mount goes on as a new machine");
    e.rt.block_on(d2.journal.flush()).unwrap();
    e.rt.block_on(d2.shutdown());
    // Each machine's batches hold its own file's record.
    let paths = |m: &str| -> Vec<String> {
        batches(m)
            .iter()
            .flat_map(|k| crate::remote_meta::open_json::<crate::remote_meta::Batch>(&e.keys, k, &e.store.snapshot()[k].body).unwrap().records)
            .filter_map(|r| match r.entry {
                crate::remote_meta::Entry::Upload { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    };
    assert_eq!(paths("0123456789abcdef"), ["before.txt"]);
    assert_eq!(paths(&fresh), ["after.txt"], "its records reached the bucket");
}
