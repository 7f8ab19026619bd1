use super::codec::open_plain;
use super::*;
use crate::crypto::sign::{self, MachineSigner};
use crate::crypto::{ObjectMeta, VaultKeys};
use crate::store::{ObjectStore, PutOptions};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;

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
        saw: None,
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

/// A vault of unsigned metadata in a memory store, for rebuild tests of journal records alone.
struct Bare {
    keys: VaultKeys,
    rt: tokio::runtime::Runtime,
    store: Arc<crate::store::memory::MemoryStore>,
}

impl Bare {
    fn new() -> Bare {
        let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Bare { keys, rt, store: crate::store::memory::MemoryStore::new() }
    }

    /// Puts a journal batch of `machine` (unsigned); its key.
    fn batch(&self, machine: &str, recs: Vec<Record>) -> String {
        self.rt.block_on(MetaSink { store: self.store.as_ref(), keys: &self.keys, signer: None, prefix: "v/" }.put_batch(machine, recs)).unwrap()
    }

    fn rebuild(&self) -> Result<Tree, RemoteError> {
        self.rt.block_on(rebuild(&(self.store.clone() as Arc<dyn ObjectStore>), &self.keys, "v/", &|_, _, _| {}))
    }

    fn history(&self, at: Option<i64>, watch: &[&str]) -> history::History {
        let watch: Vec<String> = watch.iter().map(|s| s.to_string()).collect();
        self.rt.block_on(history(&(self.store.clone() as Arc<dyn ObjectStore>), &self.keys, "v/", &|_, _, _| {}, at, &watch)).unwrap()
    }
}

/// A journal record making folder `path`.
fn mkdir_rec(seq: i64, ts_ms: i64, path: &str) -> Record {
    Record { seq, ts_ms, entry: Entry::Mkdir { path: path.into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 } }
}

/// A machine makes a folder where another machine, unseen, put a file: the folder is made and
/// the file kept beside it as a conflict copy (it was dropped without a word).
#[test]
fn a_folder_made_over_another_machines_file_keeps_the_file_as_a_copy() {
    let v = Bare::new();
    v.batch("aaaaaaaa11111111", vec![rec(1, 10, file("D", "v/d/k1"))]);
    v.batch("bbbbbbbb22222222", vec![mkdir_rec(1, 20, "D"), mkdir_rec(2, 21, "D/sub")]);
    let t = v.rebuild().unwrap();
    assert_eq!(t.nodes["D"].kind, NodeKind::Dir);
    assert!(t.nodes.contains_key("D/sub"));
    let copies: Vec<(&String, &Node)> = t.nodes.iter().filter(|(k, _)| k.starts_with("D (conflict from aaaaaaaa ")).collect();
    assert_eq!(copies.len(), 1, "{:?}", t.nodes.keys());
    assert_eq!(copies[0].1.key.as_deref(), Some("v/d/k1"));
    assert!(t.conflicts.iter().any(|c| c.contains("made a folder here")), "{:?}", t.conflicts);
}

/// Clock skew is reported: a machine whose records are stamped an hour ahead of the rebuilding
/// machine's clock wins every conflict against other machines' newer changes, and the rebuild
/// names it (before, nothing showed it). A clock a second ahead says nothing.
#[test]
fn a_machine_whose_clock_runs_ahead_is_named_by_the_rebuild() {
    let v = Bare::new();
    let now = crate::clock::now_ms();
    v.batch("fastclock", vec![mkdir_rec(1, now + 3_600_000, "a")]);
    v.batch("goodclock", vec![mkdir_rec(1, now + 1_000, "b")]);
    let tree = v.rebuild().unwrap();
    let said = tree.conflicts.iter().find(|c| c.contains("machine fastclock's clock is ahead")).unwrap_or_else(|| panic!("{:?}", tree.conflicts));
    let mins: i64 = said.split("by ").nth(1).and_then(|r| r.split(" min").next()).and_then(|m| m.parse().ok()).unwrap_or(-1);
    assert!((55..=60).contains(&mins), "{said}");
    assert!(!tree.conflicts.iter().any(|c| c.contains("goodclock")), "{:?}", tree.conflicts);
}

/// Two live copies of one cache dir (a cloned VM) write one machine's journal with other batch
/// sizes: their keys never collide, so `If-None-Match` cannot stop them, and a rebuild took the
/// first batch's records and skipped the other copy's without a word. It says so now, naming
/// the batch.
#[test]
fn a_journal_written_by_two_copies_of_one_cache_dir_is_reported() {
    let v = Bare::new();
    let mk = |seq: i64, path: &str| mkdir_rec(seq, seq, path);
    v.batch("m1", vec![mk(1, "shared"), mk(2, "copy-a"), mk(3, "copy-a/x")]);
    let clone = v.batch("m1", vec![mk(2, "copy-b"), mk(3, "copy-b/y"), mk(4, "copy-b/z")]);
    let tree = v.rebuild().unwrap();
    assert!(tree.nodes.contains_key("copy-a/x"));
    assert!(tree.refused.iter().any(|r| r.contains(&clone) && r.contains("repeats records 2..3") && r.contains("two copies")), "{:?}", tree.refused);
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
    rt.block_on(
        MetaSink { store: store.as_ref(), keys: &keys, signer: None, prefix: "v/" }.put_batch("m1", vec![rec(1, "photos"), rec(2, "photos/2019")]),
    )
    .unwrap();
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
        saw: None,
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
    let want = read::SnapshotInfo {
        machine: "m0".into(),
        covers_seq: 9,
        ts_ms: 77,
        dead_keys: vec!["v/d/dead".into()],
        seen,
        entries: 300,
        tombstones: vec![],
        writer: None,
    };
    for doc in [&streamed, &old] {
        for step in [1, 7, 65_536] {
            let mut got = Vec::new();
            let info = read::parse(Trickle(doc, step), Some(|e: Entry, _: read::EntryMeta| got.push(e))).unwrap();
            assert_eq!(info, want);
            assert!(got == entries, "step {step}");
            assert_eq!(read::parse(Trickle(doc, step), None::<fn(Entry, read::EntryMeta)>).unwrap(), want);
        }
    }
}

/// What a parser of the whole document refused is refused here too: anything after it, a
/// second `entries` (which would apply entries twice) or any other field given twice, a missing
/// field, a cut-off document, an unknown operation.
#[test]
fn a_malformed_snapshot_is_refused() {
    let ok = br#"{"entries":[{"op":"remove","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#;
    assert!(read::parse(&ok[..], None::<fn(Entry, read::EntryMeta)>).is_ok());
    let bad: [&[u8]; 6] = [
        br#"{"entries":[],"machine":"m","covers_seq":1,"ts_ms":2} {"entries":[]}"#,
        br#"{"entries":[{"op":"remove","path":"a"}],"entries":[{"op":"remove","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#,
        br#"{"entries":[],"covers_seq":1,"ts_ms":2}"#,
        &ok[..ok.len() - 1],
        br#"{"entries":[{"op":"no_such_op","path":"a"}],"machine":"m","covers_seq":1,"ts_ms":2}"#,
        br#"{"entries":[],"machine":"m","covers_seq":1,"ts_ms":2,"machine":"n"}"#,
    ];
    for doc in bad {
        assert!(read::parse(doc, None::<fn(Entry, read::EntryMeta)>).is_err(), "accepted {}", String::from_utf8_lossy(doc));
        assert!(read::parse(doc, Some(|_: Entry, _: read::EntryMeta| {})).is_err(), "accepted {}", String::from_utf8_lossy(doc));
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
    let size = crypto::plaintext_len(len).unwrap();
    let segments = crypto::segment_count(size);
    assert!(segments * crypto::SEGMENT > 2 * crate::sealed::INITIAL_WINDOW, "the snapshot must span several ranged GETs ({len} bytes)");
    let key = "v/s/m0/0000000000000009";
    store.plant(key, &body);
    let rec = Record { seq: 10, ts_ms: 78, entry: Entry::Mkdir { path: "later".into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 } };
    rt.block_on(MetaSink { store: store.as_ref(), keys: &keys, signer: None, prefix: "v/" }.put_batch("m0", vec![rec])).unwrap();

    let before = store.calls_of("GetObject");
    let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).unwrap();
    assert_eq!(tree.nodes.values().filter(|n| n.kind == NodeKind::File).count(), n as usize);
    assert!(tree.nodes.contains_key("later") && tree.refused.is_empty(), "{:?}", tree.refused);
    assert_eq!(tree.seen.get("m0"), Some(&10));
    // Its header, then its chunks (at least two, never more than one per MiB), and the batch.
    let gets = store.calls_of("GetObject") - before;
    assert!(gets >= 4 && gets <= 2 + size.div_ceil(crate::sealed::INITIAL_WINDOW), "{gets} GETs for a snapshot of {size} bytes");

    // Its last segment, fetched well after the first chunk was parsed and applied.
    let mut tampered = body.clone();
    let (s, _) = crypto::segment_cipher_range(size, segments - 1);
    tampered[s as usize + 10] ^= 1;
    store.plant(key, &tampered);
    let tree = rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})).unwrap();
    assert_eq!(tree.nodes.values().filter(|n| n.kind == NodeKind::File).count(), 0, "a half-read snapshot left files in the tree");
    assert!(tree.nodes.contains_key("later"));
    assert!(tree.refused.iter().any(|r| r.contains(key) && r.contains("cannot be read")), "{:?}", tree.refused);

    // What is not the snapshot's fault never leaves it out: a transient error, or a server that
    // ignores ranges, on any one GET of the rebuild (the snapshot's chunks among them) either
    // stops the rebuild, or the GET is asked for again and the snapshot is applied whole (a
    // chunk read ahead that failed is fetched again when the parser reaches it).
    store.plant(key, &body);
    for call in 1..=gets + 1 {
        for err in [StoreError::Retryable("connection reset".into()), StoreError::Permanent { code: "RangeIgnored".into(), message: String::new() }] {
            store.clear_faults();
            store.fail_call(call, err);
            match rt.block_on(rebuild(&dyn_store, &keys, "v/", &|_, _, _| {})) {
                Err(_) => {}
                Ok(t) => assert!(
                    t.refused.is_empty() && t.nodes.values().filter(|n| n.kind == NodeKind::File).count() == n as usize,
                    "call {call}: a rebuild went on without a snapshot it could not fetch: {:?}",
                    t.refused
                ),
            }
        }
    }
    store.clear_faults();
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

// ---------------------------------------------------------------- signatures (trust.rs)

/// A vault in memory with one enrolled machine, for the signature tests.
struct Signed {
    rt: tokio::runtime::Runtime,
    store: Arc<crate::store::memory::MemoryStore>,
    keys: VaultKeys,
}

impl Signed {
    /// `signed`: the vault started signing (an empty adoption), as one created by this build.
    fn new(signed: bool) -> Signed {
        let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
        let v = Signed {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            store: crate::store::memory::MemoryStore::new(),
            keys,
        };
        if signed {
            v.rt.block_on(trust::start_signing(&v.dyn_store(), v.sk(), "v/")).unwrap();
        }
        v
    }
    /// What `coldvault machine adopt --machine M --yes` adopts: M's unsigned objects.
    fn adopt(&self, machine: &str) -> usize {
        let store = self.dyn_store();
        let t = self.rt.block_on(trust::Trust::load(&store, self.sk(), "v/")).unwrap();
        let s = self.rt.block_on(trust::survey(&store, "v/", &t)).unwrap();
        let objects = s.unsigned.get(machine).map(|o| o.iter().map(|(k, l)| (k.clone(), l.hash.clone())).collect()).unwrap_or_default();
        self.rt.block_on(trust::adopt(&store, self.sk(), "v/", objects)).unwrap()
    }
    /// A signed vault allowing a full machine A (0xa) and a write-only machine W (0xc).
    fn full_and_write_only() -> (Signed, MachineSigner, MachineSigner) {
        let v = Signed::new(true);
        let (a, w) = (machine(0xa), machine(0xc));
        v.allow(&a, trust::Role::Full);
        v.allow(&w, trust::Role::WriteOnly);
        (v, a, w)
    }
    fn sink<'a>(&'a self, by: Option<&'a MachineSigner>) -> MetaSink<'a> {
        MetaSink { store: self.store.as_ref(), keys: &self.keys, signer: by, prefix: "v/" }
    }
    fn dyn_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }
    fn sk(&self) -> &x25519_dalek::StaticSecret {
        self.keys.secret.as_ref().unwrap()
    }
    fn allow(&self, m: &MachineSigner, role: trust::Role) {
        self.rt.block_on(trust::enroll(self.store.as_ref(), self.sk(), "v/", m.machine(), &m.public(), role)).unwrap();
    }
    fn batch(&self, by: Option<&MachineSigner>, machine: &str, recs: Vec<Record>) -> String {
        self.rt.block_on(self.sink(by).put_batch(machine, recs)).unwrap()
    }
    /// A snapshot of `machine` covering `covers` at `ts_ms`: (entries, dead keys, seen).
    fn snapshot(&self, by: Option<&MachineSigner>, machine: &str, covers: i64, ts_ms: i64, doc: (&[Entry], &[&str], &[(&str, i64)])) -> String {
        let (entries, dead, seen) = doc;
        use std::io::Write as _;
        let mut w = SnapshotWriter::new(&self.keys, Vec::new()).unwrap();
        for e in entries {
            w.entry(e).unwrap();
        }
        for k in dead {
            w.dead_key(k).unwrap();
        }
        let seen = seen.iter().map(|(m, q)| (m.to_string(), *q)).collect();
        let (body, len) = w.finish(machine, covers, ts_ms, &seen).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&body).unwrap();
        self.rt.block_on(self.sink(by).put_snapshot(machine, covers, &f, len)).unwrap()
    }
    /// A data object nothing mentions (an upload whose journal batch never went up).
    fn orphan(&self, by: Option<&MachineSigner>, key: &str, path: &str) {
        let c = crypto::VersionCipher::new(&self.keys.public, 3);
        let meta =
            ObjectMeta { path: path.into(), size: 3, mtime_ns: 1, mode: 0o644, uid: 0, gid: 0, sha256: String::new(), sealed_ms: 0, prev: None };
        let mut md = vec![("cvh".to_string(), B64.encode(c.header().bytes)), ("cvm".to_string(), B64.encode(c.encrypt_meta(&meta)))];
        if let Some(s) = by {
            md.push((sign::META.into(), s.sign_object(&self.keys.public, &key["v/".len()..], &c.header().bytes)));
        }
        let opts = PutOptions { storage_class: "STANDARD".into(), metadata: md, ..Default::default() };
        self.rt.block_on(self.store.put_object(key, vec![0u8; 200].into(), &opts)).unwrap();
    }
    fn rebuild(&self) -> Tree {
        self.rt.block_on(rebuild(&self.dyn_store(), &self.keys, "v/", &|_, _, _| {})).unwrap()
    }
}

fn machine(n: u8) -> MachineSigner {
    MachineSigner::new(&format!("{n:016x}"), &[n; 32])
}

fn mkdir(seq: i64, path: &str) -> Record {
    Record { seq, ts_ms: seq, entry: Entry::Mkdir { path: path.into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 } }
}

fn refused_for<'a>(t: &'a Tree, key: &str) -> &'a str {
    t.refused.iter().find(|r| r.contains(key)).map(String::as_str).unwrap_or_else(|| panic!("{key} not reported in {:?}", t.refused))
}

/// In a signed vault a rebuild believes a journal batch only when a key the vault allows for
/// the machine its key names signed it, for that key: an unsigned batch, one signed by a key
/// the vault does not list, one signed as another machine, and an allowed machine's batch
/// copied under another key are each refused by name, and change nothing; batches of machines
/// the vault allows no key for are not even downloaded.
#[test]
fn a_signed_vault_believes_only_batches_its_machines_signed() {
    let v = Signed::new(true);
    let a = machine(0xa);
    v.allow(&a, trust::Role::Full);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "photos"), mkdir(2, "photos/2019")]);
    let unsigned = v.batch(None, a.machine(), vec![mkdir(6, "evil-unsigned")]);
    // Under machine ids the vault allows no key for: not even downloaded (review N3).
    let unknown = v.batch(None, "00000000000000ee", vec![mkdir(1, "evil-unknown")]);
    let stranger = machine(0xb);
    let not_allowed = v.batch(Some(&stranger), stranger.machine(), vec![mkdir(1, "evil-stranger")]);
    // The stranger's key, writing into A's stream.
    let impostor = MachineSigner::new(a.machine(), &[0xb; 32]);
    let wrong_key = v.batch(Some(&impostor), a.machine(), vec![mkdir(3, "evil-impostor")]);
    // Another allowed machine's stream, signed by A.
    let d = machine(0xd);
    v.allow(&d, trust::Role::Full);
    let as_other = v.batch(Some(&a), d.machine(), vec![mkdir(2, "evil-as-other")]);
    // A's genuine batch and signature, copied under another sequence range.
    let (body, md) = v.rt.block_on(v.store.get_with_metadata("v/j/000000000000000a/0000000000000001-0000000000000002", u64::MAX)).unwrap();
    let moved = "v/j/000000000000000a/0000000000000004-0000000000000005";
    let opts = PutOptions { storage_class: "STANDARD".into(), metadata: md.into_iter().collect(), ..Default::default() };
    v.rt.block_on(v.store.put_object(moved, body, &opts)).unwrap();

    let requests = || v.store.calls_of("GetObject") + v.store.calls_of("HeadObject");
    let before = requests();
    let t = v.rebuild();
    let cost = requests() - before;
    assert!(t.nodes.contains_key("photos/2019"), "{:?}", t.refused);
    let names: Vec<&String> = t.nodes.keys().collect();
    assert_eq!(names, ["photos", "photos/2019"], "{:?}", t.refused);
    assert!(refused_for(&t, &unsigned).contains("unsigned"));
    for k in [&unknown, &not_allowed] {
        assert!(refused_for(&t, k).contains("not read: the vault allows no key of that machine"), "{:?}", t.refused);
    }
    assert!(refused_for(&t, &wrong_key).contains("does not verify"));
    assert!(refused_for(&t, &as_other).contains("another machine's name"));
    assert!(refused_for(&t, moved).contains("does not verify"));
    // What the unknown machines' batches cost: nothing but their listing entries.
    for k in [&unknown, &not_allowed] {
        v.rt.block_on(v.store.delete_object(k)).unwrap();
    }
    let before = requests();
    v.rebuild();
    assert_eq!(requests() - before, cost, "the batches of machines the vault allows no key for were read");
}

/// A forged snapshot cannot hide a machine's files: unsigned it is refused; signed by an
/// allowed write-only machine, what it says it saw of other machines and the keys it calls
/// dead apply to its own stream and objects only, and it is never the base.
#[test]
fn a_snapshot_cannot_hide_another_machines_files() {
    let (v, a, w) = Signed::full_and_write_only();
    let mut e = upload_entry(1);
    if let Entry::Upload { key, .. } = &mut e {
        *key = "v/d/000000000000000000000000000000a1".into();
    }
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "photos"), Record { seq: 2, ts_ms: 2, entry: e }]);
    // A's upload whose record never went up: adopted from its signed metadata…
    v.orphan(Some(&a), "v/d/000000000000000000000000000000a2", "photos/orphan.jpg");
    // …unless an unsigned object or a write-only machine says otherwise.
    let forged = v.snapshot(None, a.machine(), 999, i64::MAX / 2, (&[], &["v/d/000000000000000000000000000000a2"], &[(a.machine(), 999)]));
    v.snapshot(
        Some(&w),
        w.machine(),
        5,
        i64::MAX / 2,
        (
            &[Entry::Mkdir { path: "from-w".into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 }],
            &["v/d/000000000000000000000000000000a2"],
            &[(a.machine(), 999)],
        ),
    );
    let t = v.rebuild();
    for p in ["photos", "photos/000/IMG_000001.CR2", "photos/orphan.jpg", "from-w"] {
        assert!(t.nodes.contains_key(p), "{p} missing; refused: {:?}", t.refused);
    }
    assert!(refused_for(&t, &forged).contains("unsigned"));
    // A write-only machine's dead key does hide its own orphan.
    v.orphan(Some(&w), "v/d/000000000000000000000000000000c1", "w-rewritten.jpg");
    v.snapshot(Some(&w), w.machine(), 6, 10, (&[], &["v/d/000000000000000000000000000000c1"], &[]));
    let t = v.rebuild();
    assert!(!t.nodes.contains_key("w-rewritten.jpg"), "a write-only machine's own dead version came back");
    assert!(t.nodes.contains_key("photos/orphan.jpg"));
}

/// A revoked key is believed for the batches up to the sequence number its revocation names
/// that were in the bucket then, and for nothing else: not a later batch, not one its thief
/// writes afterwards with a low sequence number, not an orphan it signed. Revoked whole,
/// nothing it signed is believed.
#[test]
fn a_revoked_key_is_believed_only_up_to_its_revocation() {
    let v = Signed::new(true);
    let w = machine(0xc);
    v.allow(&w, trust::Role::WriteOnly);
    v.batch(Some(&w), w.machine(), vec![mkdir(1, "before")]);
    let after = v.batch(Some(&w), w.machine(), vec![mkdir(2, "after")]);
    v.orphan(Some(&w), "v/d/000000000000000000000000000000c2", "orphan.jpg");
    v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), Some(1))).unwrap();
    let t = v.rebuild();
    assert!(t.nodes.contains_key("before") && !t.nodes.contains_key("after") && !t.nodes.contains_key("orphan.jpg"), "{:?}", t.refused);
    assert!(refused_for(&t, &after).contains("revoked"));
    // The thief of the key writes into the stream's past (a key with a low number).
    let thief = v.batch(Some(&w), w.machine(), vec![mkdir(1, "stolen-1"), mkdir(2, "stolen")]);
    let t = v.rebuild();
    assert!(t.nodes.contains_key("before") && !t.nodes.contains_key("stolen"), "{:?}", t.refused);
    assert!(refused_for(&t, &thief).contains("revoked"));
    // Keys in another form than coldvault writes are not read at all.
    v.rt.block_on(v.store.put_object(&format!("v/j/{}/0-5", w.machine()), b"x".to_vec().into(), &PutOptions::default())).unwrap();
    assert!(v.rebuild().nodes.contains_key("before"));
    std::thread::sleep(std::time::Duration::from_millis(2));
    v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), None)).unwrap();
    let t = v.rebuild();
    assert!(!t.nodes.contains_key("before"), "{:?}", t.refused);
    assert!(t.refused.iter().any(|r| r.contains("which was revoked;") || r.contains("which was revoked")), "{:?}", t.refused);
}

/// A machine that remembered how far a journal reached is not told of a rollback, on every
/// read from then on, because a key of that journal was revoked (review C1): what the
/// revocation stopped believing ends the journal on purpose. Deleting batches the revocation
/// still believes is a rollback all the same.
#[test]
fn a_revocation_is_no_rollback_but_deleting_what_it_kept_is() {
    let v = Signed::new(true);
    let w = machine(0xc);
    v.allow(&w, trust::Role::WriteOnly);
    let one = v.batch(Some(&w), w.machine(), vec![mkdir(1, "one")]);
    v.batch(Some(&w), w.machine(), vec![mkdir(2, "two")]);
    v.batch(Some(&w), w.machine(), vec![mkdir(3, "three")]);
    let before = Reach::of(&v.rebuild());
    assert_eq!(before.seen.get(w.machine()), Some(&3));
    let heads = before.heads(&BTreeMap::new());
    v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), Some(1))).unwrap();
    let after = Reach::of(&v.rebuild());
    assert_eq!(after.seen.get(w.machine()), Some(&1));
    assert_eq!(after.rolled_back(&heads), Vec::<String>::new());
    // What is remembered from then on stops at the revocation, and stays quiet.
    let heads = after.heads(&heads);
    assert_eq!(heads.get(w.machine()), Some(&1));
    assert!(after.rolled_back(&heads).is_empty());
    // The batch the revocation kept, deleted: a rollback.
    v.rt.block_on(v.store.delete_object(&one)).unwrap();
    let cut = Reach::of(&v.rebuild()).rolled_back(&heads);
    assert!(cut.len() == 1 && cut[0].contains("ROLLBACK") && cut[0].contains(w.machine()), "{cut:?}");
    // Revoked whole: nothing of that journal is expected any more.
    std::thread::sleep(std::time::Duration::from_millis(2));
    v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), None)).unwrap();
    let whole = Reach::of(&v.rebuild());
    assert!(whole.rolled_back(&before.heads(&BTreeMap::new())).is_empty());
}

/// Deleting a revocation from the bucket undoes nothing on a machine that saw it (review N2):
/// what it read then is kept, served in its place, and said to be gone.
#[test]
fn a_deleted_revocation_still_applies_where_it_was_seen() {
    let v = Signed::new(true);
    let w = machine(0xc);
    v.allow(&w, trust::Role::WriteOnly);
    v.batch(Some(&w), w.machine(), vec![mkdir(1, "before")]);
    let stolen = v.batch(Some(&w), w.machine(), vec![mkdir(2, "stolen")]);
    let statement = v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), Some(1))).unwrap();
    let seen = Reach::of(&v.rebuild());
    assert_eq!(seen.revocations.keys().map(|k| format!("v/{k}")).collect::<Vec<_>>(), std::slice::from_ref(&statement));
    v.rt.block_on(v.store.delete_object(&statement)).unwrap();
    // Where it was never seen, the thief's batch is believed again…
    assert!(v.rebuild().nodes.contains_key("stolen"));
    // …where it was, not: the copy kept applies, and its loss is said.
    let store = remembered::Remembered::wrap(v.dyn_store(), "v/", &seen.revocations);
    let t = v.rt.block_on(rebuild(&store, &v.keys, "v/", &|_, _, _| {})).unwrap();
    assert!(t.nodes.contains_key("before") && !t.nodes.contains_key("stolen"), "{:?}", t.refused);
    assert!(refused_for(&t, &stolen).contains("revoked"));
    assert!(refused_for(&t, &statement).contains("gone from the bucket"), "{:?}", t.refused);
}

/// One key signs for one machine (review N11): a key allowed again under another machine id is
/// not believed for that id, and said.
#[test]
fn a_key_allowed_for_two_machines_signs_for_the_first_only() {
    let v = Signed::new(true);
    let a = machine(0xa);
    v.allow(&a, trust::Role::Full);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let twin = MachineSigner::new("000000000000000b", &[0xa; 32]);
    assert_eq!(twin.public(), a.public());
    v.allow(&twin, trust::Role::Full);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "mine")]);
    let other = v.batch(Some(&twin), twin.machine(), vec![mkdir(1, "as-twin")]);
    let t = v.rebuild();
    assert!(t.nodes.contains_key("mine") && !t.nodes.contains_key("as-twin"), "{:?}", t.refused);
    assert!(t.refused.iter().any(|r| r.contains("allowed for machine") && r.contains("000000000000000b")), "{:?}", t.refused);
    assert!(refused_for(&t, &other).contains("000000000000000b"));
}

/// A full machine that rebuilt while a write-only machine's key was believed holds its files
/// in its snapshot; once the key is revoked after record 1, what it wrote later does not come
/// back through that snapshot, and what it wrote up to record 1 does (review N2).
#[test]
fn a_revoked_machines_files_are_not_laundered_through_another_machines_snapshot() {
    use std::io::Write as _;
    let (v, a, w) = Signed::full_and_write_only();
    let (k1, k2) = ("v/d/000000000000000000000000000000c1", "v/d/000000000000000000000000000000c2");
    v.batch(Some(&w), w.machine(), vec![rec(1, 10, file("kept.jpg", k1))]);
    v.batch(Some(&w), w.machine(), vec![rec(2, 11, file("stolen.jpg", k2))]);
    // A rebuilt, imported both, and wrote a snapshot of its index.
    let mut wr = SnapshotWriter::new(&v.keys, Vec::new()).unwrap();
    wr.entry(&file("a.jpg", "v/d/000000000000000000000000000000a1")).unwrap();
    wr.entry_by(&file("kept.jpg", k1), Some(w.machine())).unwrap();
    wr.entry_by(&file("stolen.jpg", k2), Some(w.machine())).unwrap();
    let seen = BTreeMap::from([(a.machine().to_string(), 1), (w.machine().to_string(), 2)]);
    let (body, len) = wr.finish(a.machine(), 1, 20, &seen).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&body).unwrap();
    v.rt.block_on(v.sink(Some(&a)).put_snapshot(a.machine(), 1, &f, len)).unwrap();
    assert!(v.rebuild().nodes.contains_key("stolen.jpg"));
    v.rt.block_on(trust::revoke(&v.dyn_store(), v.sk(), "v/", w.machine(), &w.public(), Some(1))).unwrap();
    let t = v.rebuild();
    assert!(t.nodes.contains_key("a.jpg") && t.nodes.contains_key("kept.jpg"), "{:?} {:?}", t.nodes.keys(), t.refused);
    assert!(!t.nodes.contains_key("stolen.jpg"), "laundered through A's snapshot: {:?}", t.refused);
    assert_eq!(t.nodes["kept.jpg"].owner.as_deref(), Some(w.machine()));
}

/// A vault of an older build (no statement) is read as before; once it starts signing, what
/// was in it then stays believed and an unsigned batch written later, or an adopted one
/// replaced by other content, is refused. A statement not signed by the vault is ignored.
#[test]
fn unsigned_objects_of_older_builds_are_adopted_once() {
    let v = Signed::new(false);
    let old = v.batch(None, "000000000000000a", vec![mkdir(1, "old")]);
    v.orphan(None, "v/d/000000000000000000000000000000a3", "old-orphan.jpg");
    let t = v.rebuild();
    assert!(t.nodes.contains_key("old") && t.nodes.contains_key("old-orphan.jpg") && t.refused.is_empty(), "{:?}", t.refused);
    // Nothing is adopted on its own: a first full mount says what is there and stops.
    let me = machine(0xb);
    let e = v.rt.block_on(trust::prepare_full(&v.dyn_store(), v.sk(), "v/", &me, false, None)).unwrap_err();
    assert!(
        matches!(&e, RemoteError::Untrusted(w) if w.contains("1 unsigned") && w.contains("000000000000000a") && w.contains("machine adopt")),
        "{e}"
    );
    assert_eq!(v.store.snapshot().into_keys().filter(|k| k.starts_with("v/m/")).count(), 0, "nothing written");
    assert_eq!(v.adopt("000000000000000a"), 1);
    v.rt.block_on(trust::prepare_full(&v.dyn_store(), v.sk(), "v/", &me, false, None)).unwrap();
    let late = v.batch(None, "000000000000000a", vec![mkdir(2, "late")]);
    // A statement from someone without the vault key.
    let other = crate::crypto::VaultDescriptor::create_with_cost(b"x", 1024, 1).1;
    let forged = crate::crypto::sign::sign_statement(other.secret.as_ref().unwrap(), "m/adopt-0000000000000009", "{\"ts_ms\":9,\"objects\":{}}");
    v.rt.block_on(v.store.put_object("v/m/adopt-0000000000000009", forged.into(), &PutOptions::default())).unwrap();
    let t = v.rebuild();
    assert!(t.nodes.contains_key("old") && !t.nodes.contains_key("late"), "{:?}", t.refused);
    assert!(refused_for(&t, &late).contains("unsigned"));
    assert!(refused_for(&t, "v/m/adopt-0000000000000009").contains("not the vault's"));
    // An unsigned orphan is not adopted in a signed vault (it was never listed).
    assert!(refused_for(&t, "v/d/000000000000000000000000000000a3").contains("unsigned"));
    // The adopted batch's key, now holding other content (a store without conditional writes).
    let body = seal_json(&v.keys, &Batch { machine: "000000000000000a".into(), records: vec![mkdir(1, "swapped")] });
    v.rt.block_on(v.store.put_object(&old, body.into(), &PutOptions::default())).unwrap();
    let t = v.rebuild();
    assert!(!t.nodes.contains_key("swapped") && !t.nodes.contains_key("old"), "{:?}", t.refused);
    assert!(refused_for(&t, &old).contains("unsigned"));
}

/// Batches removed from the end of a journal (a rolled-back or cut stream) are reported when a
/// snapshot saw further; batches missing in the middle are reported as a gap.
#[test]
fn a_journal_cut_short_is_reported() {
    let v = Signed::new(true);
    let (a, b) = (machine(0xa), machine(0xb));
    v.allow(&a, trust::Role::Full);
    v.allow(&b, trust::Role::Full);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "one")]);
    let two = v.batch(Some(&a), a.machine(), vec![mkdir(2, "two")]);
    let three = v.batch(Some(&a), a.machine(), vec![mkdir(3, "three")]);
    v.snapshot(Some(&b), b.machine(), 4, 3, (&[], &[], &[(b.machine(), 4), (a.machine(), 3)]));
    v.rt.block_on(v.store.delete_object(&three)).unwrap();
    // One unsigned junk batch with the highest number a key can hold does not hide the cut
    // (review N8: what a journal reaches was read from the listing, before any signature).
    v.batch(None, a.machine(), vec![mkdir(9_999_999_999_999_999, "junk")]);
    let t = v.rebuild();
    let cut = t.refused.iter().find(|r| r.contains("rolled back")).unwrap_or_else(|| panic!("{:?}", t.refused));
    assert!(cut.contains(a.machine()) && cut.contains("up to record 2") && cut.contains("up to 3"), "{cut}");
    assert!(!t.nodes.contains_key("junk"));
    v.rt.block_on(v.store.delete_object(&two)).unwrap();
    let t = v.rebuild();
    assert!(t.refused.iter().any(|r| r.contains("up to record 1")), "{:?}", t.refused);
}

fn rec(seq: i64, ts_ms: i64, entry: Entry) -> Record {
    Record { seq, ts_ms, entry }
}

fn file(path: &str, key: &str) -> Entry {
    let mut e = upload_entry(1);
    if let Entry::Upload { path: p, key: k, .. } = &mut e {
        *p = path.into();
        *k = key.into();
    }
    e
}

/// A write-only machine the vault allows, compromised, with its clock far ahead: it can add
/// files and change or remove what it wrote itself, and nothing another machine wrote — not by
/// replacing, removing, renaming, changing attributes, or putting a folder where a file is.
/// Removing a folder it shares with another machine removes only its own files.
#[test]
fn a_write_only_machine_changes_only_what_it_wrote() {
    let (v, a, w) = Signed::full_and_write_only();
    let dir = |p: &str| Entry::Mkdir { path: p.into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 };
    v.batch(
        Some(&a),
        a.machine(),
        vec![
            rec(1, 10, dir("photos")),
            rec(2, 11, file("photos/a.jpg", "v/d/000000000000000000000000000000a1")),
            rec(3, 12, dir("shared")),
            rec(4, 13, file("shared/a.jpg", "v/d/000000000000000000000000000000a2")),
        ],
    );
    let far = i64::MAX / 4;
    let attr = Entry::Attr { path: "photos/a.jpg".into(), mode: 0o4777, uid: 0, gid: 0, mtime_ns: 9, xattrs: None };
    let link = Entry::Symlink { path: "photos".into(), target: "/etc".into(), uid: 0, gid: 0, mtime_ns: 1 };
    v.batch(
        Some(&w),
        w.machine(),
        vec![
            rec(1, far, file("photos/a.jpg", "v/d/000000000000000000000000000000c1")),
            rec(2, far + 1, Entry::Remove { path: "photos".into(), saw: None }),
            rec(3, far + 2, Entry::Rename { from: "shared".into(), to: "moved".into(), saw: None }),
            rec(4, far + 3, attr),
            rec(5, far + 4, file("photos/a.jpg/inner", "v/d/000000000000000000000000000000c2")),
            rec(6, far + 5, link),
            rec(7, far + 6, file("shared/w/own.jpg", "v/d/000000000000000000000000000000c3")),
            rec(8, far + 7, file("mine.jpg", "v/d/000000000000000000000000000000c4")),
            rec(9, far + 8, Entry::Rename { from: "mine.jpg".into(), to: "mine2.jpg".into(), saw: None }),
            rec(10, far + 9, Entry::Remove { path: "shared".into(), saw: None }),
        ],
    );
    let t = v.rebuild();
    let a_jpg = &t.nodes["photos/a.jpg"];
    assert_eq!(
        (a_jpg.key.as_deref(), a_jpg.mode, a_jpg.kind),
        (Some("v/d/000000000000000000000000000000a1"), 0o644, NodeKind::File),
        "{:?}",
        t.refused
    );
    assert_eq!(t.nodes["photos"].kind, NodeKind::Dir);
    assert!(t.nodes.contains_key("shared/a.jpg") && !t.nodes.contains_key("moved"), "{:?}", t.nodes.keys());
    assert!(!t.nodes.contains_key("shared/w/own.jpg") && !t.nodes.contains_key("shared/w"), "its own files in a shared folder go");
    assert!(t.nodes.contains_key("mine2.jpg") && !t.nodes.contains_key("mine.jpg"));
    // Its version of another machine's file was kept beside it as a conflict copy of its own,
    // which its removal of `photos` then removed (its own file in a shared folder).
    assert!(!t.nodes.keys().any(|k| k.contains("conflict")), "{:?}", t.nodes.keys());
    assert_eq!(t.refused.iter().filter(|r| r.contains("write-only machine")).count(), 4, "{:?}", t.refused);
    assert!(t.max_ts < far, "its clock moved the importer's clock floor");
}

/// Per machine, the newest snapshot an allowed key signed is read: a forged one with a higher
/// number does not hide it, and a signed snapshot that claims another machine or another
/// sequence number than its key is refused.
#[test]
fn a_forged_newer_snapshot_does_not_hide_the_real_one() {
    let (v, a, w) = Signed::full_and_write_only();
    v.snapshot(Some(&a), a.machine(), 3, 5, (&[file("photos/real.jpg", "v/d/000000000000000000000000000000a1")], &[], &[(a.machine(), 3)]));
    let forged = v.snapshot(None, a.machine(), 999, 6, (&[], &[], &[(a.machine(), 999)]));
    let t = v.rebuild();
    assert!(t.nodes.contains_key("photos/real.jpg"), "{:?}", t.refused);
    assert!(refused_for(&t, &forged).contains("unsigned"));
    // W signs a snapshot under its own key whose content says it is A's, far ahead.
    let lying = v.snapshot(Some(&w), w.machine(), 5, 7, (&[], &[], &[]));
    let body = {
        let mut wr = SnapshotWriter::new(&v.keys, Vec::new()).unwrap();
        wr.entry(&file("w.jpg", "v/d/000000000000000000000000000000c1")).unwrap();
        wr.finish(a.machine(), 10_000, 8, &BTreeMap::from([(a.machine().to_string(), 10_000)])).unwrap().0
    };
    let md = vec![(sign::META.to_string(), w.sign_object(&v.keys.public, &lying["v/".len()..], &body[..crypto::HEADER_LEN]))];
    v.rt.block_on(v.store.put_object(&lying, body.into(), &PutOptions { metadata: md, ..Default::default() })).unwrap();
    let t = v.rebuild();
    assert!(t.nodes.contains_key("photos/real.jpg") && !t.nodes.contains_key("w.jpg"), "{:?}", t.refused);
    assert!(refused_for(&t, &lying).contains("does not match its key"));
}

/// A statement's name taken by an object that is not the vault's (squatted before, or junk
/// written over it) is taken back; another statement of the vault there is an error; a
/// statement written twice is the same statement.
#[test]
fn a_squatted_statement_name_is_taken_back() {
    let v = Signed::new(true);
    let a = machine(0xa);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "photos")]);
    let key = format!("v/m/{}-{}.enroll", a.machine(), sign::key_id(&a.public()));
    v.rt.block_on(v.store.put_object(&key, b"junk".to_vec().into(), &PutOptions::default())).unwrap();
    let t = v.rebuild();
    assert!(!t.nodes.contains_key("photos") && t.refused.iter().any(|r| r.contains(&key)), "junk at the name fails closed: {:?}", t.refused);
    v.allow(&a, trust::Role::Full);
    assert!(v.rebuild().nodes.contains_key("photos"));
    let e = v.rt.block_on(trust::enroll(v.store.as_ref(), v.sk(), "v/", a.machine(), &a.public(), trust::Role::WriteOnly)).unwrap_err();
    assert!(e.to_string().contains("another statement"), "{e}");
    v.allow(&a, trust::Role::Full);
}

/// A write-only key allowed under the id of a machine that has a full key (a token naming
/// another machine) is not believed; a machine that knows the vault signs refuses to adopt
/// or allow anything when the statements are gone.
#[test]
fn a_write_only_key_cannot_pose_as_a_full_machine() {
    let v = Signed::new(true);
    let a = machine(0xa);
    v.allow(&a, trust::Role::Full);
    let impostor = MachineSigner::new(a.machine(), &[0xc; 32]);
    v.allow(&impostor, trust::Role::WriteOnly);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "photos")]);
    let bad = v.batch(Some(&impostor), a.machine(), vec![Record { seq: 2, ts_ms: 2, entry: Entry::Remove { path: "photos".into(), saw: None } }]);
    let t = v.rebuild();
    assert!(t.nodes.contains_key("photos"), "{:?}", t.refused);
    assert!(refused_for(&t, &bad).contains("does not verify"));
    assert!(t.refused.iter().any(|r| r.contains("full and as write-only")), "{:?}", t.refused);
    // The statements deleted: a pinned full machine neither adopts nor allows.
    for k in v.store.snapshot().into_keys().filter(|k| k.starts_with("v/m/")) {
        v.rt.block_on(v.store.delete_object(&k)).unwrap();
    }
    let e = v.rt.block_on(trust::prepare_full(&v.dyn_store(), v.sk(), "v/", &a, true, None)).unwrap_err();
    assert!(e.to_string().contains("none of its statements"), "{e}");
    assert_eq!(v.store.snapshot().into_keys().filter(|k| k.starts_with("v/m/")).count(), 0);
    let t = v.rebuild();
    assert!(t.check_signed(true, "v/").is_err() && t.check_signed(false, "v/").is_ok());
}

/// Review N1: someone who can delete and put objects deletes the statements and plants an
/// unsigned snapshot that says it saw every journal. A full machine that did not know the vault
/// signs (a new one) adopts nothing and allows nothing, saying why; and even adopted by a
/// user, such a snapshot neither becomes the base over a machine's signed snapshot nor hides
/// any signed journal.
#[test]
fn a_forged_unsigned_snapshot_is_never_believed_over_the_signed_history() {
    let v = Signed::new(true);
    let a = machine(0xa);
    v.allow(&a, trust::Role::Full);
    v.batch(Some(&a), a.machine(), vec![mkdir(1, "photos")]);
    v.snapshot(
        Some(&a),
        a.machine(),
        1,
        5,
        (&[Entry::Mkdir { path: "photos".into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 }], &[], &[(a.machine(), 1)]),
    );
    v.batch(Some(&a), a.machine(), vec![mkdir(2, "photos/2026")]);
    let forger = "00000000000000ff";
    let forged = v.snapshot(
        None,
        forger,
        1,
        i64::MAX / 2,
        (&[Entry::Mkdir { path: "planted".into(), mode: 0o755, uid: 0, gid: 0, mtime_ns: 1 }], &[], &[(forger, 1), (a.machine(), 9_999)]),
    );
    // The statements deleted: a new machine adopts nothing, allows nothing, says why.
    let statements: Vec<(String, Vec<u8>)> =
        v.store.snapshot().into_iter().filter(|(k, _)| k.starts_with("v/m/")).map(|(k, o)| (k, o.body.to_vec())).collect();
    for (k, _) in &statements {
        v.rt.block_on(v.store.delete_object(k)).unwrap();
    }
    let me = machine(0xb);
    let e = v.rt.block_on(trust::prepare_full(&v.dyn_store(), v.sk(), "v/", &me, false, None)).unwrap_err();
    assert!(matches!(&e, RemoteError::Untrusted(w) if w.contains("carry a machine's signature") && w.contains(a.machine())), "{e}");
    assert_eq!(v.store.snapshot().into_keys().filter(|k| k.starts_with("v/m/")).count(), 0, "nothing written");
    // The statements back, and the forgery adopted by a user who was shown it: the signed
    // snapshot stays the base, and the signed journal after it is replayed.
    for (k, body) in statements {
        v.rt.block_on(v.store.put_object(&k, body.into(), &PutOptions::default())).unwrap();
    }
    let store = v.dyn_store();
    let t = v.rt.block_on(trust::Trust::load(&store, v.sk(), "v/")).unwrap();
    let survey = v.rt.block_on(trust::survey(&store, "v/", &t)).unwrap();
    let listed = &survey.unsigned[forger][&forged["v/".len()..]];
    let said = v.rt.block_on(trust::describe(&store, &v.keys, "v/", &forged["v/".len()..], listed));
    assert!(said.contains("planted") && said.contains(&format!("{} to record 9999", a.machine())), "{said}");
    assert_eq!(v.adopt(forger), 1);
    let tree = v.rebuild();
    assert!(tree.nodes.contains_key("photos/2026"), "the signed journal was hidden: {:?}", tree.nodes.keys().collect::<Vec<_>>());
    assert_eq!(tree.seen.get(a.machine()), Some(&2));
}

/// A write-only machine cannot hide a full machine's orphan (an upload whose record was lost)
/// by naming its key in an upload record of its own, nor take its path with an orphan of its
/// own; nor change the attributes of a folder it made first that holds another machine's files.
#[test]
fn a_write_only_machine_cannot_hide_orphans_or_take_folders() {
    let (v, a, w) = Signed::full_and_write_only();
    let dir = |p: &str, mode: u32| Entry::Mkdir { path: p.into(), mode, uid: 0, gid: 0, mtime_ns: 1 };
    v.orphan(Some(&a), "v/d/0000000000000000000000000000000a", "lost.jpg");
    v.orphan(Some(&w), "v/d/00000000000000000000000000000001", "lost.jpg");
    let attr = Entry::Attr { path: "docs".into(), mode: 0o777, uid: 0, gid: 0, mtime_ns: 9, xattrs: None };
    v.batch(
        Some(&w),
        w.machine(),
        vec![rec(1, 1, dir("docs", 0o700)), rec(2, 50, file("elsewhere.jpg", "v/d/0000000000000000000000000000000a")), rec(3, 60, attr)],
    );
    v.batch(Some(&a), a.machine(), vec![rec(1, 10, dir("docs", 0o750)), rec(2, 11, file("docs/a.txt", "v/d/000000000000000000000000000000a1"))]);
    let t = v.rebuild();
    assert_eq!(t.nodes["lost.jpg"].key.as_deref(), Some("v/d/0000000000000000000000000000000a"), "{:?}", t.refused);
    assert_eq!((t.nodes["docs"].mode, t.nodes["docs"].owner.as_deref()), (0o750, Some(a.machine())));
}

/// A full machine's snapshot says which machine made each node it imported from the bucket
/// (`by`): a write-only machine's later changes to its own files still apply on top of it, and
/// its changes to the full machine's own files still do not.
#[test]
fn a_write_only_machine_keeps_its_files_through_a_full_machines_snapshot() {
    use std::io::Write as _;
    let (v, a, w) = Signed::full_and_write_only();
    v.batch(Some(&w), w.machine(), vec![rec(1, 10, file("w.jpg", "v/d/000000000000000000000000000000c1"))]);
    // A rebuilt, imported w.jpg, and wrote a snapshot of its index.
    let mut wr = SnapshotWriter::new(&v.keys, Vec::new()).unwrap();
    wr.entry(&file("a.jpg", "v/d/000000000000000000000000000000a1")).unwrap();
    wr.entry_by(&file("w.jpg", "v/d/000000000000000000000000000000c1"), Some(w.machine())).unwrap();
    let seen = BTreeMap::from([(a.machine().to_string(), 1), (w.machine().to_string(), 1)]);
    let (body, len) = wr.finish(a.machine(), 1, 20, &seen).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&body).unwrap();
    v.rt.block_on(v.sink(Some(&a)).put_snapshot(a.machine(), 1, &f, len)).unwrap();
    // Later, W rewrites its file and tries to rewrite A's.
    v.batch(
        Some(&w),
        w.machine(),
        vec![rec(2, 30, file("w.jpg", "v/d/000000000000000000000000000000c2")), rec(3, 31, file("a.jpg", "v/d/000000000000000000000000000000c3"))],
    );
    let t = v.rebuild();
    assert_eq!(t.nodes["w.jpg"].key.as_deref(), Some("v/d/000000000000000000000000000000c2"), "{:?}", t.refused);
    assert_eq!(t.nodes["a.jpg"].key.as_deref(), Some("v/d/000000000000000000000000000000a1"), "{:?}", t.refused);
    assert_eq!(t.nodes["w.jpg"].owner.as_deref(), Some(w.machine()));
    // Its version of A's file is kept beside it.
    assert!(
        t.nodes.iter().any(|(k, n)| k.starts_with("a (conflict from ") && n.key.as_deref() == Some("v/d/000000000000000000000000000000c3")),
        "{:?}",
        t.nodes.keys()
    );
}

/// The history a journal holds: a file written three times by one machine, then deleted, is
/// listed with each version from when to when, and the tree at any moment holds the version of
/// that moment (or nothing, before the first and after the deletion). Replayed from the bucket
/// alone.
#[test]
fn every_version_of_a_file_rewritten_and_deleted_is_listed_and_found_at_its_time() {
    let v = Bare::new();
    let up = |seq, ts, key: &str, saw: Option<&str>| {
        let mut e = file("a.jpg", key);
        if let Entry::Upload { saw: s, size, .. } = &mut e {
            *s = saw.map(str::to_string);
            *size = seq as u64 * 1000;
        }
        rec(seq, ts, e)
    };
    v.batch("m1", vec![up(1, 100, "v/d/k1", None), up(2, 200, "v/d/k2", Some("v/d/k1"))]);
    v.batch("m1", vec![up(3, 300, "v/d/k3", Some("v/d/k2")), rec(4, 400, Entry::Remove { path: "a.jpg".into(), saw: Some("v/d/k3".into()) })]);
    let h = v.history(None, &["a.jpg"]);
    let got: Vec<(&str, i64, Option<i64>, u64, &str)> =
        h.versions.iter().map(|x| (x.node.key.as_deref().unwrap(), x.from_ms, x.to_ms, x.node.size, x.machine.as_str())).collect();
    assert_eq!(got, vec![("v/d/k1", 100, Some(200), 1000, "m1"), ("v/d/k2", 200, Some(300), 2000, "m1"), ("v/d/k3", 300, Some(400), 3000, "m1")]);
    assert!(!h.tree.nodes.contains_key("a.jpg"), "deleted at the end");
    for (at, want) in [(50, None), (100, Some("v/d/k1")), (199, Some("v/d/k1")), (250, Some("v/d/k2")), (399, Some("v/d/k3")), (400, None)] {
        let t = v.history(Some(at), &[]).tree;
        assert_eq!(t.nodes.get("a.jpg").and_then(|n| n.key.as_deref()), want, "at {at}");
    }
}

/// Two machines that had not seen each other's version write one path: the newer takes it and
/// the older is kept as a conflict copy. Both are in the path's history, the copy under its own
/// name, from when it was set aside; a version renamed away is followed under its new name.
#[test]
fn the_history_of_a_path_follows_its_versions_into_conflict_copies_and_renames() {
    let v = Bare::new();
    // Each machine saw no file at "doc" when it uploaded its own.
    let fresh = |key: &str| {
        let mut e = file("doc", key);
        if let Entry::Upload { saw, .. } = &mut e {
            *saw = Some(String::new());
        }
        e
    };
    v.batch("aaaaaaaa11111111", vec![rec(1, 100, fresh("v/d/k1"))]);
    v.batch(
        "bbbbbbbb22222222",
        vec![rec(1, 200, fresh("v/d/k2")), rec(2, 300, Entry::Rename { from: "doc".into(), to: "doc-final".into(), saw: Some(String::new()) })],
    );
    let h = v.history(None, &["doc"]);
    let got: Vec<(&str, &str, &str, i64, Option<i64>)> =
        h.versions.iter().map(|x| (x.path.as_str(), x.asked.as_str(), x.node.key.as_deref().unwrap(), x.from_ms, x.to_ms)).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], ("doc", "doc", "v/d/k1", 100, Some(200)));
    assert_eq!(got[1], ("doc", "doc", "v/d/k2", 200, Some(300)));
    assert!(
        got[2].0.starts_with("doc (conflict from aaaaaaaa ") && got[2].1 == "doc" && got[2].2 == "v/d/k1" && got[2].3 == 200 && got[2].4.is_none(),
        "{got:?}"
    );
    assert_eq!(got[3], ("doc-final", "doc", "v/d/k2", 300, None));
}
