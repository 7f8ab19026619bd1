use super::*;

/// A snapshot written entry by entry (`SnapshotWriter`, sealed while written) reads back as
/// the `Snapshot` holding the same entries, dead keys and fields, empty or not.
#[test]
fn a_snapshot_written_entry_by_entry_reads_back_whole() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let upload = |i: u32| Entry::Upload {
        path: format!("photos/IMG_{i:04}.CR2"),
        key: format!("v/d/{i:032x}"),
        size: 25_000_000 + i as u64,
        mtime_ns: -1_500_000_001,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        class: "DEEP_ARCHIVE".into(),
        sha256: "ab".repeat(32),
        header: B64.encode([7u8; 128]),
        xattrs: (i == 3).then(|| "{\"user.x\":\"eQ==\"}".to_string()),
    };
    let mut all = vec![Entry::Mkdir { path: "photos".into(), mode: 0o755, uid: 1000, gid: 100, mtime_ns: 1_700_000_000_123_456_789 }];
    // Enough entries for several encryption segments.
    all.extend((0..500).map(upload));
    all.push(Entry::Symlink { path: "latest".into(), target: "photos/IMG_0001.CR2".into(), uid: 0, gid: 0, mtime_ns: 5 });
    for (entries, dead, seen) in [
        (vec![], vec![], BTreeMap::new()),
        (all.clone(), vec!["v/d/ffff".to_string(), "v/d/\"quoted\"".to_string()], BTreeMap::from([("m1".to_string(), 42i64)])),
        (all.clone(), vec![], BTreeMap::new()),
    ] {
        let mut w = SnapshotWriter::new(&keys, Vec::new()).unwrap();
        for e in &entries {
            w.entry(e).unwrap();
        }
        for k in &dead {
            w.dead_key(k).unwrap();
        }
        assert_eq!(w.entries(), entries.len() as u64);
        let (body, len) = w.finish("m0", 9, 77, &seen).unwrap();
        assert_eq!(len, body.len() as u64);
        let back: Snapshot = open_json(&keys, "v/s/m0/9", &body).unwrap();
        assert_eq!((back.machine.as_str(), back.covers_seq, back.ts_ms), ("m0", 9, 77));
        assert_eq!(back.entries, entries);
        assert_eq!(back.dead_keys, dead);
        assert_eq!(back.seen, seen);
    }
}

/// Only folders have contents in a replayed tree: a link or special file that replaces a
/// folder takes what was below it along, in whatever order the entries come. (Else a forged or
/// merged journal saying `photos/x -> ~/.ssh` after `photos/x/authorized_keys` left a file
/// below a link, for `get` to write through it.)
#[test]
fn nothing_stays_below_a_link_or_special_file() {
    let file = |path: &str| Entry::Upload {
        path: path.into(),
        key: format!("v/d/{path}"),
        size: 1,
        mtime_ns: 1,
        mode: 0o600,
        uid: 0,
        gid: 0,
        class: "STANDARD".into(),
        sha256: String::new(),
        header: String::new(),
        xattrs: None,
    };
    let link = |path: &str| Entry::Symlink { path: path.into(), target: "/root/.ssh".into(), uid: 0, gid: 0, mtime_ns: 2 };
    let fifo = |path: &str| Entry::Special { path: path.into(), special: "fifo:0".into(), mode: 0o600, uid: 0, gid: 0, mtime_ns: 2 };
    for replacing in [link("photos/x"), fifo("photos/x"), file("photos/x")] {
        for order in [vec![file("photos/x/authorized_keys"), replacing.clone()], vec![replacing.clone(), file("photos/x/authorized_keys")]] {
            let mut t = Tree::default();
            for e in &order {
                t.apply(e);
            }
            for p in t.nodes.keys() {
                if let Some((parent, _)) = p.rsplit_once('/') {
                    assert_eq!(t.nodes[parent].kind, NodeKind::Dir, "{p} is below a {:?} after {order:?}", t.nodes[parent].kind);
                }
            }
        }
    }
}

/// A name from the bucket printed on a terminal cannot move the cursor, erase or fake lines.
#[test]
fn names_are_printed_without_control_characters() {
    let forged = "photos/ok.jpg\r\x1b[2Kcoldvault: ok\n\u{9b}31m";
    let s = shown(forged);
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(s.contains("\\r") && s.contains("\\u{1b}") && s.contains("\\n"), "{s}");
    assert!(matches!(shown("photos/été 2019.jpg"), std::borrow::Cow::Borrowed(_)));
}

/// An object deleted since the listing is reported by name and skipped: the rest of the vault
/// still rebuilds. Any other error on it stops the rebuild rather than give a partial tree (a
/// HEAD's bare 403 may be expired credentials, not this object).
#[test]
fn one_unreadable_object_does_not_stop_a_rebuild() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = crate::store::memory::MemoryStore::new();
    let rec = |seq: i64, path: &str| Record { seq, ts_ms: seq, entry: Entry::Mkdir { path: path.into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 } };
    rt.block_on(put_batch(store.as_ref(), &keys, "v/", "m1", vec![rec(1, "photos"), rec(2, "photos/2019")])).unwrap();
    store.plant("v/d/0123456789abcdef0123456789abcdef", b"an object nothing mentions");
    store.fail_op("HeadObject", 1, StoreError::NotFound);
    let tree = rt.block_on(rebuild(store.as_ref(), &keys, "v/", &|_, _, _| {})).expect("the rebuild stopped");
    assert!(tree.nodes.contains_key("photos/2019"));
    assert!(tree.refused.iter().any(|r| r.contains("0123456789abcdef0123456789abcdef") && r.contains("skipped")), "{:?}", tree.refused);
    for err in [StoreError::Retryable("connection reset".into()), StoreError::Permanent { code: "HTTP403".into(), message: String::new() }] {
        store.fail_op("HeadObject", 1, err);
        assert!(rt.block_on(rebuild(store.as_ref(), &keys, "v/", &|_, _, _| {})).is_err(), "a partial tree was returned");
    }
}
