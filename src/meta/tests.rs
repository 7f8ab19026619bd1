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
        owner: None,
    }
}

#[test]
fn durable_settings_are_in_force() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(&d.path().join("i.db"), 0, 0, 0).unwrap();
    let mode: String = db.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = db.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
    assert_eq!(sync, 1, "synchronous=NORMAL: commits survive a crash; `sync` makes them survive power loss");
    let auto: i64 = db.conn().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
    assert_eq!(auto, 0, "no checkpoint (and WAL sync) behind the group commit's back");
    let limit: i64 = db.conn().query_row("PRAGMA journal_size_limit", [], |r| r.get(0)).unwrap();
    assert_eq!(limit, WAL_SIZE_LIMIT, "a WAL that grew is cut back when it starts over");
    // `sync` fsyncs the WAL, writes nothing and can run any number of times.
    let changes = db.conn().total_changes();
    for n in 1..=3 {
        db.sync().unwrap();
        assert_eq!(db.syncs(), n);
    }
    assert_eq!(db.conn().total_changes(), changes);
    db.syncer().checkpoint().unwrap();
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

/// Regression (ingest was O(N²)): the per-file lookups of the upload path use indexes, never a
/// scan of every inode or upload.
#[test]
fn upload_path_queries_use_indexes() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(&d.path().join("i.db"), 0, 0, 0).unwrap();
    let plan = |sql: &str| -> String {
        let mut st = db.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        st.query_map([], |r| r.get::<_, String>(3)).unwrap().map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    for (sql, index) in [
        ("SELECT id FROM uploads WHERE ino=1", "uploads_ino"),
        ("SELECT id FROM uploads WHERE state IN ('queued','uploading') AND next_try_ms <= 5 ORDER BY next_try_ms, id LIMIT 8", "uploads_due"),
        ("UPDATE inodes SET storage_class='GLACIER' WHERE object_key='k' AND state='uploaded'", "inodes_object_key"),
        (
            "SELECT ino, content_gen, dirty_ms FROM inodes WHERE state='dirty' AND dirty_ms <= 9 AND (dirty_ms, ino) > (1, 2) AND parent != 0 ORDER BY dirty_ms, ino LIMIT 256",
            "inodes_state_dirty_ms",
        ),
        ("SELECT count(*) FROM inodes WHERE state='uploaded'", "inodes_state_dirty_ms"),
        // The staging quota's sum (`staged_bytes_of`), every second per writing user.
        (
            "SELECT COALESCE(sum(size),0) FROM inodes WHERE uid=1000 AND kind=1 AND state IN ('dirty','local','sealed','uploading','failed')",
            "inodes_staged_uid",
        ),
        // The snapshot's walk: a folder's next subfolder, and its other entries.
        ("SELECT ino FROM inodes WHERE parent=7 AND kind = 2 AND ino > 9 AND ino != 1 ORDER BY ino LIMIT 1", "inodes_parent_kind"),
        ("SELECT ino FROM inodes WHERE parent=7 AND kind != 2 AND ino != 1", "inodes_parent"),
    ] {
        let p = plan(sql);
        assert!(p.contains(index) && !p.contains("SCAN"), "{sql}: {p}");
    }
}

/// A read view (what a snapshot is written from) sees the index as committed when it was
/// opened, however long it is read while the daemon goes on changing it; its walk reaches
/// every entry once, folders before what they hold, including a folder moved into one made
/// after it (a lower inode number under a higher one).
#[test]
fn a_read_view_keeps_the_index_as_it_was_when_opened() {
    let d = tempfile::tempdir().unwrap();
    let mut db = Db::open(&d.path().join("i.db"), 0, 0, 0).unwrap();
    let dir = |parent: u64, name: &str| Inode { kind: Kind::Dir, state: State::None, ..file(parent, name) };
    let a = db.insert(&dir(ROOT, "a")).unwrap();
    let b = db.insert(&dir(a.ino, "b")).unwrap();
    db.insert(&file(b.ino, "x")).unwrap();
    let z = db.insert(&dir(ROOT, "z")).unwrap();
    let mut moved = a.clone();
    moved.parent = z.ino;
    db.update(&moved).unwrap();
    for k in 0..300 {
        db.insert(&file(z.ino, &format!("f{k:03}"))).unwrap();
    }
    db.insert(&dir(z.ino, "empty")).unwrap();
    db.insert(&file(ROOT, "top")).unwrap();
    db.set_setting("s", "before").unwrap();
    let view = db.read_view().unwrap();
    // Changes after the view was opened: a file added, one removed, a setting changed.
    db.insert(&file(b.ino, "later")).unwrap();
    let top = db.lookup(ROOT, "top").unwrap().unwrap();
    Db::delete_inode(db.conn(), top.ino).unwrap();
    db.set_setting("s", "after").unwrap();
    let mut seen = Vec::new();
    view.walk(|p, _| -> Result<()> {
        seen.push(p.to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(view.setting("s").unwrap().as_deref(), Some("before"));
    assert!(seen.contains(&"top".to_string()) && !seen.iter().any(|p| p.ends_with("later")), "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "each entry once");
    assert_eq!(seen.len(), 1 + 1 + 1 + 1 + 1 + 300 + 1, "{seen:?}");
    for p in &seen {
        if let Some((parent, _)) = p.rsplit_once('/') {
            let (i, j) = (seen.iter().position(|q| q == parent), seen.iter().position(|q| q == p));
            assert!(i.is_some() && i < j, "{parent} listed after {p}: {seen:?}");
        }
    }
    assert!(seen.contains(&"z/a/b/x".to_string()) && seen.contains(&"z/empty".to_string()), "{seen:?}");
    drop(view);
    assert_eq!(db.setting("s").unwrap().as_deref(), Some("after"));
}

/// An index written by a build before inode owners (no `owner` column) opens, keeps its files
/// (a dirty one: staged content not yet uploaded), and records owners from then on.
#[test]
fn an_index_of_an_earlier_build_opens_with_its_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("i.db");
    {
        let conn = rusqlite::Connection::open(&p).unwrap();
        conn.execute_batch(super::schema::SCHEMA).unwrap();
        assert!(conn.prepare("SELECT owner FROM inodes LIMIT 0").is_err(), "the schema of that build has no owner column");
        conn.execute(
            "INSERT INTO inodes(ino,parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,state) VALUES(2,1,'photo.jpg',?1,420,1000,100,5,0,0,0,'dirty')",
            [Kind::File as i64],
        )
        .unwrap();
    }
    let db = Db::open(&p, 0, 0, 0).unwrap();
    let mut i = db.get(2).unwrap().expect("the file of the earlier build");
    assert_eq!((i.name.as_str(), i.size, i.state, i.owner.clone()), ("photo.jpg", 5, State::Dirty, None));
    i.owner = Some("00000000000000cc".into());
    db.update(&i).unwrap();
    drop(db);
    let db = Db::open(&p, 0, 0, 0).unwrap();
    assert_eq!(db.get(2).unwrap().unwrap().owner.as_deref(), Some("00000000000000cc"));
}

/// Rows an earlier build let through (a restore tier in another case, sent over the control
/// socket unchecked) never make the restores or the upload queue unreadable.
#[test]
fn unexpected_tiers_and_states_from_earlier_builds_are_read_leniently() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("index.db"), 0, 0, 0).unwrap();
    db.conn()
        .execute(
            "INSERT INTO restores(ino,object_key,state,class,tier,size,requested_ms,expected_ms) VALUES(5,'v/d/k','failed','GLACIER','bulk',10,0,0)",
            [],
        )
        .unwrap();
    let r = db.restores().unwrap();
    assert_eq!((r.len(), r[0].tier, r[0].class.clone()), (1, crate::vault::Tier::Standard, crate::vault::StorageClass::Glacier));
    db.conn()
        .execute(
            "INSERT INTO uploads(ino,content_gen,object_key,path,size,enc_size,storage_class,state,attempts,next_try_ms,metadata,header,sha256)
             VALUES(5,1,'v/d/k','a',1,1,'STANDARD','paused',0,0,'[]',x'00','')",
            [],
        )
        .unwrap();
    assert_eq!(db.uploads().unwrap()[0].state, crate::vault::UploadState::Queued);
}
