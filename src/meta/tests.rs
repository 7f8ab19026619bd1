use super::*;

fn file(parent: u64, name: &str) -> Inode {
    Inode {
        ino: 0,
        parent,
        name: name.into(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 0,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        target: None,
        state: State::Dirty,
        content_gen: 0,
        dirty_ms: 0,
        object_key: None,
        storage_class: None,
        header: None,
        sha256: None,
        xattrs: None,
    }
}

#[test]
fn durable_settings_are_in_force() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(&d.path().join("i.db"), 0, 0, 0).unwrap();
    let mode: String = db.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = db.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
}

#[test]
fn inode_numbers_are_never_reused_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("i.db");
    let mut db = Db::open(&p, 0, 0, 0).unwrap();
    let a = db.insert(&file(ROOT, "a")).unwrap();
    let b = db.insert(&file(ROOT, "b")).unwrap();
    Db::delete_inode(db.conn(), b.ino).unwrap();
    drop(db);
    let mut db = Db::open(&p, 0, 0, 0).unwrap();
    assert_eq!(db.lookup(ROOT, "a").unwrap().unwrap().ino, a.ino);
    let c = db.insert(&file(ROOT, "c")).unwrap();
    assert!(c.ino > b.ino, "deleted inode number {} reused as {}", b.ino, c.ino);
    assert_eq!(db.path_of(c.ino).unwrap(), "c");
    assert!(db.insert(&file(ROOT, "a")).is_err(), "duplicate directory entry refused");
}
