//! Tests of namespace operations (`fs/namespace.rs`): mkdir, rename, unlink, links and special files, each one transaction with its journal record.

use super::*;

#[test]
fn namespace_operations() {
    let e = Env::new();
    let fs = e.fs();
    let dir = fs.mkdir(ROOT, OsStr::new("photos"), 0o755, 0, 0).unwrap();
    let sub = fs.mkdir(dir.ino, OsStr::new("2019"), 0o755, 0, 0).unwrap();
    let f = e.write_file(sub.ino, "a.jpg", b"x");
    assert_eq!(fs.mkdir(ROOT, OsStr::new("photos"), 0o755, 0, 0).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(fs.rmdir(ROOT, OsStr::new("photos")).unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(fs.rename(ROOT, OsStr::new("photos"), sub.ino, OsStr::new("loop"), false).unwrap_err().errno(), libc::EINVAL);
    fs.rename(ROOT, OsStr::new("photos"), ROOT, OsStr::new("pictures"), false).unwrap();
    assert_eq!(fs.lookup(ROOT, OsStr::new("photos")).unwrap_err().errno(), libc::ENOENT);
    let p = fs.lookup(ROOT, OsStr::new("pictures")).unwrap();
    assert_eq!(p.ino, dir.ino, "inode numbers are stable across renames");
    assert_eq!(fs.core().db.path_of(f).unwrap(), "pictures/2019/a.jpg");
    let long = "x".repeat(256);
    assert_eq!(fs.mkdir(ROOT, OsStr::new(&long), 0o755, 0, 0).unwrap_err().errno(), libc::ENAMETOOLONG);
    let s = fs.symlink(ROOT, OsStr::new("link"), std::path::Path::new("pictures/2019"), 0, 0).unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap(), "pictures/2019");
    fs.unlink(sub.ino, OsStr::new("a.jpg")).unwrap();
    assert!(!fs.staging.spool_path(f).exists());
    fs.setxattr(ROOT, OsStr::new("user.DOSATTRIB"), b"\x00\x01", 0).unwrap();
    assert_eq!(fs.getxattr(ROOT, OsStr::new("user.DOSATTRIB")).unwrap(), b"\x00\x01");
    assert_eq!(fs.listxattr(ROOT).unwrap(), b"user.DOSATTRIB\0");
}

/// Regression (a review of the narrowed inode update): a move to another folder under a new
/// name, beside an entry of that name in the old folder, failed with EIO — the row passed
/// through (old folder, new name) between two statements. With and without a file to replace.
#[test]
fn a_move_to_another_folder_under_a_name_taken_in_the_old_one() {
    let e = Env::new();
    let fs = e.fs();
    let inbox = fs.mkdir(ROOT, OsStr::new("inbox"), 0o755, 0, 0).unwrap().ino;
    let year = fs.mkdir(ROOT, OsStr::new("2024"), 0o755, 0, 0).unwrap().ino;
    let a = e.write_file(inbox, "a.jpg", &data(100, 1));
    let b = e.write_file(inbox, "b.jpg", &data(100, 2));
    fs.rename(inbox, OsStr::new("a.jpg"), year, OsStr::new("b.jpg"), false).unwrap();
    let c = e.write_file(inbox, "c.jpg", &data(100, 3));
    let old = e.write_file(year, "c.jpg", &data(100, 4));
    fs.rename(inbox, OsStr::new("b.jpg"), year, OsStr::new("c.jpg"), false).unwrap();
    let names = |d: u64| fs.readdir(d).unwrap().into_iter().map(|i| (i.name, i.ino)).collect::<std::collections::BTreeMap<_, _>>();
    assert_eq!(names(inbox), [("c.jpg".to_string(), c)].into());
    assert_eq!(names(year), [("b.jpg".to_string(), a), ("c.jpg".to_string(), b)].into());
    assert!(fs.state_of(old).unwrap().is_none(), "the replaced file is gone");
    assert_eq!(e.read_all(a).unwrap(), data(100, 1));
}

#[test]
fn special_files_live_in_the_index_and_survive_a_rebuild() {
    let e = Env::new();
    let fs = e.fs();
    let p = fs.mknod(ROOT, OsStr::new("pipe"), libc::S_IFIFO | 0o640, 0, 0, 0).unwrap();
    let d = fs.mknod(ROOT, OsStr::new("null"), libc::S_IFCHR | 0o666, 0x0103, 0, 0).unwrap();
    let r = fs.mknod(ROOT, OsStr::new("plain"), libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
    assert_eq!(p.kind, Kind::Special);
    assert_eq!(d.target.as_deref(), Some("chr:259"));
    assert_eq!(r.kind, Kind::File);
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    let got = d2.fs.resolve("null").unwrap();
    assert_eq!((got.kind, got.target.as_deref(), got.mode), (Kind::Special, Some("chr:259"), 0o666));
    assert_eq!(d2.fs.resolve("pipe").unwrap().target.as_deref(), Some("fifo:0"));
    e.rt.block_on(d2.shutdown());
}

/// Regression (review N16): renaming a folder checked only the folder's own new path, so the
/// files in it could end up beyond the longest path a version can carry; they were parked, and
/// rebuilds adopted them at their old paths. Such a rename is ENAMETOOLONG and changes nothing.
#[test]
fn a_folder_rename_that_would_push_its_files_past_the_longest_path_is_refused() {
    let e = Env::new();
    let fs = e.fs();
    let d = fs.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap();
    let long = "f".repeat(200);
    let mut parent = d.ino;
    for _ in 0..4 {
        parent = fs.mkdir(parent, OsStr::new(&long), 0o755, 0, 0).unwrap().ino;
    }
    write_on(&fs, parent, "x.txt", b"deep");
    let deep = fs.path_of(fs.resolve(&format!("d/{l}/{l}/{l}/{l}/x.txt", l = long)).unwrap().ino);
    assert!(deep.len() <= MAX_PATH);
    let room = MAX_PATH - deep.len();
    let too_long = "n".repeat(room + 2);
    let err = fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new(&too_long), false).unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    assert!(fs.resolve(&deep).is_ok(), "nothing moved");
    let fits = "n".repeat(room + 1);
    fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new(&fits), false).unwrap();
}

/// Regression: a rename over an existing file was several commits; failing (or crashing)
/// between removing the destination and moving the source lost the destination. A namespace
/// operation is now one transaction, and staged files it drops are deleted only after it commits.
#[test]
fn a_rename_over_that_fails_midway_loses_nothing() {
    let e = Env::new();
    let fs = e.fs();
    let src = e.write_file(ROOT, "src.jpg", b"new content");
    let dst = e.write_file(ROOT, "target.jpg", b"the only copy of the old content");
    // Fail the step after the destination is removed: moving the source onto its name.
    fs.core()
        .db
        .conn()
        .execute_batch("CREATE TEMP TRIGGER fail_move BEFORE UPDATE OF name ON inodes WHEN NEW.name='target.jpg' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;")
        .unwrap();
    assert!(fs.rename(ROOT, OsStr::new("src.jpg"), ROOT, OsStr::new("target.jpg"), false).is_err());
    assert_eq!(e.read_all(dst).unwrap(), b"the only copy of the old content", "the destination survives");
    assert_eq!(fs.lookup(ROOT, OsStr::new("target.jpg")).unwrap().ino, dst);
    assert_eq!(fs.lookup(ROOT, OsStr::new("src.jpg")).unwrap().ino, src);
    assert_eq!(fs.journal_pending_count().unwrap(), 0, "no journal record of a change that did not happen");
    fs.core().db.conn().execute_batch("DROP TRIGGER fail_move").unwrap();
    fs.rename(ROOT, OsStr::new("src.jpg"), ROOT, OsStr::new("target.jpg"), false).unwrap();
    assert_eq!(e.read_all(src).unwrap(), b"new content");
    assert!(!fs.staging.spool_path(dst).exists(), "the replaced file's staged copy is gone after the commit");
}

/// mkdir, symlink, mknod, create, chmod and xattr changes commit together with their journal
/// record: when the record cannot be written, nothing of the operation is kept (before, the
/// folder or the new mode existed locally while the bucket's journal never learned of it, so a
/// rebuild lost it silently).
#[test]
fn a_namespace_change_and_its_journal_record_commit_together() {
    let e = Env::new();
    let fs = e.fs();
    let (up, _) = upload_one(&e, "up.jpg", &data(1000, 3));
    flush_journal(&e);
    let before = fs.getattr(up).unwrap();
    let root_mtime = fs.getattr(ROOT).unwrap().mtime_ns;
    fs.core()
        .db
        .conn()
        .execute_batch("CREATE TEMP TRIGGER fail_journal BEFORE INSERT ON journal BEGIN SELECT RAISE(ABORT, 'injected failure'); END;")
        .unwrap();
    assert!(fs.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).is_err());
    assert!(fs.symlink(ROOT, OsStr::new("l"), std::path::Path::new("d"), 0, 0).is_err());
    assert!(fs.mknod(ROOT, OsStr::new("p"), libc::S_IFIFO | 0o644, 0, 0, 0).is_err());
    for n in ["d", "l", "p"] {
        assert!(fs.lookup(ROOT, OsStr::new(n)).is_err(), "{n} was kept without its journal record");
    }
    assert_eq!(fs.getattr(ROOT).unwrap().mtime_ns, root_mtime, "the parent is untouched");
    assert!(fs.setattr(up, Some(0o600), None, None, None, None, Some(12_345)).is_err());
    assert!(fs.setxattr(up, OsStr::new("user.rating"), b"5", 0).is_err());
    let after = fs.getattr(up).unwrap();
    assert_eq!(
        (after.mode, after.mtime_ns, after.xattrs),
        (before.mode, before.mtime_ns, before.xattrs),
        "attributes were kept without a journal record"
    );
    fs.core().db.conn().execute_batch("DROP TRIGGER fail_journal").unwrap();
    fs.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap();
    fs.setattr(up, Some(0o600), None, None, None, None, None).unwrap();
    assert_eq!(fs.journal_pending_count().unwrap(), 2);
}
