use super::*;

/// A snapshot written entry by entry (`SnapshotWriter`, sealed while written) reads back as
/// the `Snapshot` holding the same entries, dead keys and fields, empty or not.
#[test]
fn a_snapshot_written_entry_by_entry_reads_back_whole() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let mut all = vec![Entry::Mkdir { path: "photos".into(), mode: 0o755, uid: 1000, gid: 100, mtime_ns: 1_700_000_000_123_456_789 }];
    // Enough entries for several encryption segments.
    all.extend((0..500).map(upload_entry));
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
    let tree = rt.block_on(rebuild(&(store.clone() as Arc<dyn ObjectStore>), &keys, "v/", &|_, _, _| {})).expect("the rebuild stopped");
    assert!(tree.nodes.contains_key("photos/2019"));
    assert!(tree.refused.iter().any(|r| r.contains("0123456789abcdef0123456789abcdef") && r.contains("skipped")), "{:?}", tree.refused);
    for err in [StoreError::Retryable("connection reset".into()), StoreError::Permanent { code: "HTTP403".into(), message: String::new() }] {
        store.fail_op("HeadObject", 1, err);
        assert!(rt.block_on(rebuild(&(store.clone() as Arc<dyn ObjectStore>), &keys, "v/", &|_, _, _| {})).is_err(), "a partial tree was returned");
    }
}

fn upload_entry(i: u32) -> Entry {
    Entry::Upload {
        path: format!("photos/{:03}/IMG_{i:06}.CR2", i / 1000),
        key: format!("v/d/{i:032x}"),
        size: 25_000_000 + i as u64,
        mtime_ns: 1_700_000_000_000_000_000 + i as i128,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        class: "DEEP_ARCHIVE".into(),
        sha256: "ab".repeat(32),
        header: B64.encode([7u8; 128]),
        xattrs: (i == 3).then(|| "{\"user.x\":\"eQ==\"}".to_string()),
    }
}

/// A reader that hands out a few bytes per call, so that every token of the document is split
/// across reads somewhere.
struct Trickle<'a>(&'a [u8], usize);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(out.len()).min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// The streaming parser gives the same entries and fields as parsing the whole document, with
/// the fields in the order `SnapshotWriter` writes them (entries first) and in the order of
/// earlier builds (`Snapshot`'s own: machine first); with entries skipped, the same fields.
/// (Reads of a few bytes at a time: the reader may hand out any amount.)
#[test]
fn a_snapshot_is_parsed_entry_by_entry_in_either_field_order() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let entries: Vec<Entry> = (0..300).map(upload_entry).collect();
    let seen = BTreeMap::from([("m1".to_string(), 42i64)]);
    let mut w = SnapshotWriter::new(&keys, Vec::new()).unwrap();
    for e in &entries {
        w.entry(e).unwrap();
    }
    w.dead_key("v/d/dead").unwrap();
    let (body, _) = w.finish("m0", 9, 77, &seen).unwrap();
    let streamed = open_plain(&keys, "s", &body).unwrap();
    let old = serde_json::to_vec(&Snapshot {
        machine: "m0".into(),
        covers_seq: 9,
        ts_ms: 77,
        entries: entries.clone(),
        dead_keys: vec!["v/d/dead".into()],
        seen: seen.clone(),
    })
    .unwrap();
    assert!(old.starts_with(b"{\"machine\""), "the old order is not what this test means to cover");
    let want = read::SnapshotInfo { machine: "m0".into(), covers_seq: 9, ts_ms: 77, dead_keys: vec!["v/d/dead".into()], seen, entries: 300 };
    for doc in [&streamed, &old] {
        for step in [1, 7, 65_536] {
            let mut got = Vec::new();
            let info = read::parse(Trickle(doc, step), Some(|e: Entry| got.push(e))).unwrap();
            assert_eq!(info, want);
            assert!(got == entries, "step {step}");
            assert_eq!(read::parse(Trickle(doc, step), None::<fn(Entry)>).unwrap(), want);
        }
    }
}

/// What a parser of the whole document refused is refused here too: anything after it, a
/// second `entries` (which would apply entries twice) or any other field given twice, a missing
/// field, a cut-off document, an unknown operation.
#[test]
fn a_malformed_snapshot_is_refused() {
    let ok = br#"{"entries":[{"op":"remove","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#;
    assert!(read::parse(&ok[..], None::<fn(Entry)>).is_ok());
    let bad: [&[u8]; 6] = [
        br#"{"entries":[],"machine":"m","covers_seq":1,"ts_ms":2} {"entries":[]}"#,
        br#"{"entries":[{"op":"remove","path":"a"}],"entries":[{"op":"remove","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#,
        br#"{"entries":[],"covers_seq":1,"ts_ms":2}"#,
        &ok[..ok.len() - 1],
        br#"{"entries":[{"op":"no_such_op","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#,
        br#"{"entries":[],"machine":"m","covers_seq":1,"ts_ms":2,"machine":"n"}"#,
    ];
    for doc in bad {
        assert!(read::parse(doc, None::<fn(Entry)>).is_err(), "accepted {}", String::from_utf8_lossy(doc));
        assert!(read::parse(doc, Some(|_: Entry| {})).is_err(), "accepted {}", String::from_utf8_lossy(doc));
    }
}

/// A snapshot of several chunks is read in ranged GETs, never whole. One that fails half-way
/// (a segment tampered with in its second chunk) leaves nothing of what its first chunk
/// applied: the tree is what the journal alone says, and the snapshot is named as refused.
#[test]
fn a_snapshot_is_streamed_and_one_that_fails_half_way_leaves_nothing() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = crate::store::memory::MemoryStore::new();
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let n = 20_000u32;
    let mut w = SnapshotWriter::new(&keys, Vec::new()).unwrap();
    for i in 0..n {
        w.entry(&upload_entry(i)).unwrap();
    }
    let (body, len) = w.finish("m0", 9, 77, &BTreeMap::new()).unwrap();
    let chunks = crypto::segment_count(crypto::plaintext_len(len).unwrap()).div_ceil(crate::sealed::CHUNK_SEGMENTS);
    assert!(chunks >= 2, "the snapshot must span several ranged GETs ({len} bytes)");
    let key = "v/s/m0/0000000000000009";
    store.plant(key, &body);
    let rec = Record { seq: 10, ts_ms: 78, entry: Entry::Mkdir { path: "later".into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 } };
    rt.block_on(put_batch(store.as_ref(), &keys, "v/", "m0", vec![rec])).unwrap();

    let before = store.calls_of("GetObject");
    let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).unwrap();
    assert_eq!(tree.nodes.values().filter(|n| n.kind == NodeKind::File).count(), n as usize);
    assert!(tree.nodes.contains_key("later") && tree.refused.is_empty(), "{:?}", tree.refused);
    assert_eq!(tree.seen.get("m0"), Some(&10));
    assert_eq!(store.calls_of("GetObject") - before, chunks + 1, "one GET per chunk, one for the batch");

    let mut tampered = body.clone();
    let (s, _) = crypto::segment_cipher_range(crypto::plaintext_len(len).unwrap(), crate::sealed::CHUNK_SEGMENTS + 1);
    tampered[s as usize + 10] ^= 1;
    store.plant(key, &tampered);
    let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).unwrap();
    assert_eq!(tree.nodes.values().filter(|n| n.kind == NodeKind::File).count(), 0, "a half-read snapshot left files in the tree");
    assert!(tree.nodes.contains_key("later"));
    assert!(tree.refused.iter().any(|r| r.contains(key) && r.contains("cannot be read")), "{:?}", tree.refused);

    // What is not the snapshot's fault stops the rebuild instead of leaving it out: a transient
    // error, or a server that ignores ranges, on a chunk after the first (call 1 is the listing).
    store.plant(key, &body);
    for err in [StoreError::Retryable("connection reset".into()), StoreError::Permanent { code: "RangeIgnored".into(), message: String::new() }] {
        store.fail_call(3, err);
        let r = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {}));
        assert!(r.is_err(), "a rebuild went on without a snapshot it could not fetch: {:?}", r.map(|t| t.refused));
    }
    // An archived snapshot (put there by anyone with PutObject, or by a lifecycle rule) is the
    // snapshot's own problem: reported, and the rest rebuilds.
    store.set_storage_class(key, "GLACIER");
    let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).expect("an archived snapshot stopped the rebuild");
    assert!(tree.nodes.contains_key("later") && tree.refused.iter().any(|r| r.contains(key)), "{:?}", tree.refused);
    // The same for a journal batch.
    store.fail_op("GetObject", 1, StoreError::Retryable("connection reset".into()));
    store.plant(key, b"");
    let r = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {}));
    assert!(
        matches!(r, Err(RemoteError::Store(StoreError::Retryable(_)))),
        "a rebuild went on without a batch it could not fetch: {:?}",
        r.map(|t| t.refused)
    );
}

/// With several machines' snapshots, the base is the newest that records what it saw of every
/// machine, and only its entries are applied (each snapshot is read once for its fields, the
/// base a second time for its entries); snapshots of earlier builds (no `seen`) are all
/// applied. Dead keys count from every snapshot.
#[test]
fn several_snapshots_are_streamed_twice_and_only_the_base_applied() {
    let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mkdir = |p: &str| Entry::Mkdir { path: p.into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 };
    let snap = |entries: &[Entry], dead: &[&str], machine: &str, ts: i64, seen: &[(&str, i64)]| {
        let mut w = SnapshotWriter::new(&keys, Vec::new()).unwrap();
        for e in entries {
            w.entry(e).unwrap();
        }
        for d in dead {
            w.dead_key(d).unwrap();
        }
        w.finish(machine, 5, ts, &seen.iter().map(|(m, q)| (m.to_string(), *q)).collect()).unwrap().0
    };
    for legacy in [false, true] {
        let store = crate::store::memory::MemoryStore::new();
        let seen_m1: &[(&str, i64)] = if legacy { &[] } else { &[("m0", 5), ("m1", 5)] };
        store.plant("v/s/m0/0000000000000005", &snap(&[mkdir("a"), mkdir("a/deleted-since")], &["v/d/dead0"], "m0", 100, &[]));
        store.plant("v/s/m1/0000000000000005", &snap(&[mkdir("a"), mkdir("b")], &["v/d/dead1"], "m1", 200, seen_m1));
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).unwrap();
        assert!(tree.nodes.contains_key("a") && tree.nodes.contains_key("b"), "legacy {legacy}: {:?}", tree.nodes.keys());
        assert_eq!(tree.nodes.contains_key("a/deleted-since"), legacy, "only the base's entries are applied");
        assert!(tree.mentioned.contains("v/d/dead0") && tree.mentioned.contains("v/d/dead1"));
        assert_eq!(store.calls_of("GetObject"), if legacy { 4 } else { 3 }, "legacy {legacy}: each read for its fields, the base(s) again");
        assert!(tree.refused.is_empty(), "{:?}", tree.refused);
    }
}
