use super::*;

/// A snapshot written straight from the tree (`SnapshotOf`, no copy of every entry) is the same
/// JSON, byte for byte, as the `Snapshot` a rebuild reads, and reads back as one.
#[test]
fn snapshot_of_a_tree_is_the_snapshot_json() {
    let mut t = Tree::default();
    t.apply(&Entry::Mkdir { path: "photos".into(), mode: 0o755, uid: 1000, gid: 100, mtime_ns: 1_700_000_000_123_456_789 });
    t.apply(&Entry::Upload {
        path: "photos/IMG_0001.CR2".into(),
        key: "v/d/00112233445566778899aabbccddeeff".into(),
        size: 25_000_000,
        mtime_ns: -1_500_000_001,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        class: "DEEP_ARCHIVE".into(),
        sha256: "ab".repeat(32),
        header: B64.encode([7u8; 128]),
        xattrs: Some("{\"user.x\":\"eQ==\"}".into()),
    });
    t.apply(&Entry::Symlink { path: "latest".into(), target: "photos/IMG_0001.CR2".into(), uid: 0, gid: 0, mtime_ns: 5 });
    let dead = vec!["v/d/ffff".to_string()];
    for seen in [BTreeMap::new(), BTreeMap::from([("m1".to_string(), 42i64)])] {
        let whole = Snapshot { machine: "m0".into(), covers_seq: 9, ts_ms: 77, entries: t.to_entries(), dead_keys: dead.clone(), seen: seen.clone() };
        let streamed = SnapshotOf { machine: "m0", covers_seq: 9, ts_ms: 77, entries: EntriesOf(&t), dead_keys: &dead, seen: &seen };
        let a = serde_json::to_string(&whole).unwrap();
        let b = serde_json::to_string(&streamed).unwrap();
        assert_eq!(a, b);
        let back: Snapshot = serde_json::from_str(&b).unwrap();
        assert_eq!(back.entries.len(), 3);
        assert_eq!(back.seen, seen);
    }
}
