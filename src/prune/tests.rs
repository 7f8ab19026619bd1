//! Prune on a memory store and a fake clock: journals whose records are stamped in days, data
//! objects whose upload times are set to match, and `now` chosen by the test.

use super::{execute, parse_duration, plan, Hold, Plan, Rules, DAY_MS};
use crate::crypto::VaultKeys;
use crate::remote_meta::history::Lifetimes;
use crate::remote_meta::{lifetimes, rebuild, Entry, MetaSink, Record};
use crate::store::memory::MemoryStore;
use crate::store::{ListEntry, ObjectStore, PutOptions, StoreError};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Day 0 of the fake clock (2025-01-01).
const T0: i64 = 1_735_689_600_000;
const MIB: u64 = 1 << 20;

fn day(d: i64) -> i64 {
    T0 + d * DAY_MS
}

struct Vault {
    keys: VaultKeys,
    rt: tokio::runtime::Runtime,
    store: Arc<MemoryStore>,
    seq: std::cell::Cell<i64>,
}

impl Vault {
    fn new() -> Vault {
        let (_, keys) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Vault { keys, rt, store: MemoryStore::new(), seq: std::cell::Cell::new(0) }
    }

    fn dyn_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// A record of machine m1 stamped on day `d`, in a batch of its own that landed then.
    fn record(&self, d: i64, entry: Entry) {
        self.record_landed(d, d, entry)
    }

    /// A record stamped on day `d` whose batch landed in the bucket on day `landed`.
    fn record_landed(&self, d: i64, landed: i64, entry: Entry) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let sink = MetaSink { store: self.store.as_ref(), keys: &self.keys, signer: None, prefix: "v/" };
        let key = self.rt.block_on(sink.put_batch("m1", vec![Record { seq, ts_ms: day(d), entry }])).unwrap();
        self.store.set_modified(&key, day(landed));
    }

    /// The data object `v/d/NAME` (`size` bytes of `class`) written on day `d`.
    fn object(&self, name: &str, size: u64, class: &str, d: i64) -> String {
        let key = format!("v/d/{name}");
        let opts = PutOptions { storage_class: class.into(), ..Default::default() };
        self.rt.block_on(self.store.put_object(&key, Bytes::from(vec![0u8; size as usize]), &opts)).unwrap();
        self.store.set_modified(&key, day(d));
        key
    }

    /// File `path` uploaded on day `d` as a new object of `class` over version `saw`.
    fn upload(&self, path: &str, name: &str, class: &str, d: i64, saw: Option<&str>) -> String {
        let key = self.object(name, MIB, class, d);
        self.record(d, upload_entry(path, &key, class, Some(saw.map(|k| format!("v/d/{k}")).unwrap_or_default())));
        key
    }

    fn plan(&self, now: i64, rules: &Rules) -> Plan {
        self.rt.block_on(async {
            let store = self.dyn_store();
            let l = lifetimes(&store, &self.keys, "v/", &|_, _, _| {}, now - rules.keep_within_ms).await.unwrap();
            let rebuilt: HashSet<String> =
                rebuild(&store, &self.keys, "v/", &|_, _, _| {}).await.unwrap().nodes.values().filter_map(|n| n.key.clone()).collect();
            let data = store.list("v/d/").await.unwrap();
            let snaps = store.list("v/s/").await.unwrap();
            plan(&l, &rebuilt, &data, &snaps, "v/", now, rules)
        })
    }

    fn keys_left(&self) -> Vec<String> {
        self.store.snapshot().into_keys().filter(|k| k.starts_with("v/d/")).collect()
    }
}

/// The record of a 1 MiB upload of `path` as object `key` of `class`, over version `saw`.
fn upload_entry(path: &str, key: &str, class: &str, saw: Option<String>) -> Entry {
    Entry::Upload {
        path: path.into(),
        key: key.into(),
        size: MIB,
        mtime_ns: 1,
        mode: 0o644,
        uid: 0,
        gid: 0,
        class: class.into(),
        sha256: "ab".repeat(32),
        header: String::new(),
        xattrs: None,
        saw,
    }
}

fn rules(keep_within_days: i64) -> Rules {
    Rules { keep_within_ms: keep_within_days * DAY_MS, keep_last: 0, allow_early_deletion: false, lock_days: None }
}

fn doomed(p: &Plan) -> Vec<&str> {
    p.delete.iter().map(|d| d.key.strip_prefix("v/d/").unwrap()).collect()
}

/// The vault every test here prunes, on day 400 with 30 days kept (the cut is day 370):
/// * a.jpg: written on days 0, 10, 100 (DEEP_ARCHIVE) and 350: its first three versions were
///   superseded before the cut; the third was in DEEP_ARCHIVE for 250 days, past its 180;
/// * b.raw: a DEEP_ARCHIVE version of day 300 replaced on day 320: superseded before the cut,
///   but 100 days into its 180;
/// * c.txt (day 5) removed on day 380, after the cut: it was held inside the window;
/// * d.txt (day 5) removed on day 200;
/// * e.txt (day 5) renamed on day 50: held still, under its new name;
/// * f.txt: written on day 380 and again on day 390: both inside the window;
/// * an object no journal names (an upload whose batch never landed; a rebuild adopts it).
fn vault() -> Vault {
    let v = Vault::new();
    v.upload("a.jpg", "a1", "STANDARD", 0, None);
    v.upload("c.txt", "c1", "STANDARD_IA", 5, None);
    v.upload("d.txt", "d1", "GLACIER", 5, None);
    v.upload("e.txt", "e1", "STANDARD", 5, None);
    v.upload("a.jpg", "a2", "STANDARD", 10, Some("a1"));
    v.record(50, Entry::Rename { from: "e.txt".into(), to: "e-final.txt".into(), saw: Some("v/d/e1".into()) });
    v.upload("a.jpg", "a3", "DEEP_ARCHIVE", 100, Some("a2"));
    v.record(200, Entry::Remove { path: "d.txt".into(), saw: Some("v/d/d1".into()) });
    v.upload("b.raw", "b1", "DEEP_ARCHIVE", 300, None);
    v.upload("b.raw", "b2", "STANDARD", 320, Some("b1"));
    v.upload("a.jpg", "a4", "STANDARD", 350, Some("a3"));
    v.upload("f.txt", "f1", "STANDARD", 380, None);
    v.record(380, Entry::Remove { path: "c.txt".into(), saw: Some("v/d/c1".into()) });
    v.upload("f.txt", "f2", "STANDARD", 390, Some("f1"));
    v.object("orphan", MIB, "STANDARD", 1);
    v
}

/// Exactly the versions superseded before the cut and past their class's minimum go; a
/// DEEP_ARCHIVE version 100 days into its 180 is kept and said to be, until day 480.
#[test]
fn prune_removes_exactly_what_was_superseded_before_the_cut() {
    let v = vault();
    let p = v.plan(day(400), &rules(30));
    assert_eq!(doomed(&p), vec!["a1", "a2", "a3", "d1"]);
    assert_eq!(p.held.len(), 1, "{:?}", p.held);
    assert_eq!((p.held[0].key.as_str(), p.held[0].hold, p.held[0].until_ms), ("v/d/b1", Hold::MinimumDuration, day(480)));
    // a4, b2, c1, e1, f1, f2 kept by the rules; the orphan kept apart.
    assert_eq!(p.kept, (6, 6 * MIB));
    assert_eq!(p.orphans, (1, MIB));
    assert_eq!(p.early_charge(), 0.0);
    assert_eq!(p.delete.iter().find(|d| d.key == "v/d/a3").unwrap().path, "a.jpg");
}

/// Told to, prune deletes the DEEP_ARCHIVE version early and says what the rest of its 180
/// days costs: 80 days of 1 MiB at DEEP_ARCHIVE's price.
#[test]
fn early_deletion_of_deep_archive_only_when_told_and_with_its_charge() {
    let v = vault();
    let p = v.plan(day(400), &Rules { allow_early_deletion: true, ..rules(30) });
    assert_eq!(doomed(&p), vec!["a1", "a2", "a3", "b1", "d1"]);
    let want = (1.0 / 1024.0) * 0.00099 * (80.0 / 30.0);
    assert!((p.early_charge() - want).abs() < 1e-12, "{} != {want}", p.early_charge());
}

/// A longer window keeps more: with 300 days (the cut on day 100), a1 and a2 (superseded on
/// days 10 and 100) go, and d1 (removed on day 200) and a3 stay.
#[test]
fn the_window_and_keep_last_each_keep_what_they_say() {
    let v = vault();
    assert_eq!(doomed(&v.plan(day(400), &rules(300))), vec!["a1", "a2"]);
    assert_eq!(doomed(&v.plan(day(400), &rules(301))), vec!["a1"]);
    // The two newest versions uploaded for each path stay however old, a removed file's too:
    // a3 of a.jpg, d1 of d.txt.
    let p = v.plan(day(400), &Rules { keep_last: 2, ..rules(30) });
    assert_eq!(doomed(&p), vec!["a1", "a2"]);
}

/// With Object Lock, no version is deleted before its retention ends, even when early
/// deletion is allowed.
#[test]
fn object_lock_retention_holds_versions_whatever_else_is_allowed() {
    let v = vault();
    let p = v.plan(day(400), &Rules { lock_days: Some(395), allow_early_deletion: true, ..rules(30) });
    // a1 (day 0) and d1 (day 5) are past 395 days; a2 (day 10) is not, nor a3 and b1.
    assert_eq!(doomed(&p), vec!["a1", "d1"]);
    let held: Vec<(&str, Hold)> = p.held.iter().map(|h| (h.key.as_str(), h.hold)).collect();
    assert_eq!(held, vec![("v/d/a2", Hold::ObjectLock), ("v/d/a3", Hold::ObjectLock), ("v/d/b1", Hold::ObjectLock)]);
}

/// Prune acts: exactly the planned objects go. Interrupted after its first delete, a re-run
/// plans the rest and ends where an uninterrupted run would; a third run finds nothing to do.
/// The history still lists what it removed, and the tree inside the window is whole.
#[test]
fn an_interrupted_prune_run_again_ends_where_one_run_would() {
    let v = vault();
    let before = v.keys_left();
    let p = v.plan(day(400), &rules(30));
    v.store.fail_call(2, StoreError::Retryable("connection reset".into()));
    let err = v.rt.block_on(execute(v.store.as_ref(), &p, &|_, _| {})).unwrap_err();
    assert_eq!(err.0, 1, "one object deleted before the failure");
    let again = v.plan(day(400), &rules(30));
    assert_eq!(doomed(&again), vec!["a2", "a3", "d1"]);
    assert_eq!(v.rt.block_on(execute(v.store.as_ref(), &again, &|_, _| {})).unwrap(), 3);
    let gone: Vec<String> = ["a1", "a2", "a3", "d1"].iter().map(|k| format!("v/d/{k}")).collect();
    let want: Vec<String> = before.into_iter().filter(|k| !gone.contains(k)).collect();
    assert_eq!(v.keys_left(), want);
    assert!(v.plan(day(400), &rules(30)).delete.is_empty());
    // Every version inside the window is still there: the tree as of day 375 reads whole.
    let store = v.dyn_store();
    let t = v.rt.block_on(crate::remote_meta::history(&store, &v.keys, "v/", &|_, _, _| {}, Some(day(375)), &[])).unwrap().tree;
    let left: HashSet<String> = v.keys_left().into_iter().collect();
    for (p, n) in &t.nodes {
        if let Some(k) = &n.key {
            assert!(left.contains(k), "{p} as of day 375 lost {k}");
        }
    }
}

/// A machine whose clock stepped back: a record stamped before the cut but made after records
/// stamped after it. What it uploaded counts as uploaded after the cut (replay order, not stamp
/// order, decides), so a version held inside the window is never pruned: a1 was held until a
/// record made after the cut, a2 was uploaded by one.
#[test]
fn a_record_stamped_before_the_cut_but_made_after_it_keeps_its_version() {
    let v = Vault::new();
    v.upload("a.jpg", "a1", "STANDARD", 0, None);
    v.upload("x.txt", "x0", "STANDARD", 390, None);
    // The clock stepped back 300 days: the upload is stamped day 90, then replaced on day 395.
    v.upload("a.jpg", "a2", "STANDARD", 90, Some("a1"));
    v.upload("a.jpg", "a3", "STANDARD", 395, Some("a2"));
    let p = v.plan(day(400), &rules(30));
    assert!(p.delete.is_empty(), "{:?}", doomed(&p));
    assert_eq!(p.kept, (4, 4 * MIB));
}

/// A removal stamped long before the cut whose batch landed after it (a clock reset, or stamps
/// made up by a machine that may write but not delete): what it removed was held inside the
/// window, and stays (review A2: the replay counted it by its stamp and pruned the file).
#[test]
fn a_change_that_landed_after_the_cut_counts_after_it_whatever_its_stamp() {
    let v = Vault::new();
    v.upload("a.jpg", "a1", "STANDARD", 0, None);
    v.upload("x.txt", "x1", "STANDARD", 5, None);
    v.upload("a.jpg", "a2", "STANDARD", 10, Some("a1"));
    v.record_landed(20, 395, Entry::Remove { path: "x.txt".into(), saw: Some("v/d/x1".into()) });
    assert_eq!(doomed(&v.plan(day(400), &rules(30))), vec!["a1"]);
}

/// Older snapshots of a machine whose newer snapshot is believed go; those of a machine
/// without a believed snapshot, and anything not a snapshot key, stay.
#[test]
fn older_snapshots_go_when_a_newer_one_is_believed() {
    let l = Lifetimes { snapshots: BTreeMap::from([("m1".to_string(), 9)]), ..Default::default() };
    let e = |k: &str| ListEntry { key: k.into(), size: 10, storage_class: "STANDARD".into(), modified_ms: 0 };
    let snaps = [e("v/s/m1/0000000000000003"), e("v/s/m1/0000000000000009"), e("v/s/m2/0000000000000001"), e("v/s/m1/junk")];
    let p = plan(&l, &HashSet::new(), &[], &snaps, "v/", day(1), &rules(30));
    let keys: Vec<&str> = p.snapshots.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, vec!["v/s/m1/0000000000000003"]);
}

/// A machine silent since before the cut is named: a change it made offline and has not sent
/// could name a version prune removes.
#[test]
fn machines_silent_since_before_the_cut_are_named() {
    let v = vault();
    let p = v.plan(day(400), &rules(5));
    assert_eq!(p.quiet, vec![("m1".to_string(), day(390))]);
    assert!(v.plan(day(400), &rules(30)).quiet.is_empty());
}

#[test]
fn durations_are_read_with_their_unit() {
    assert_eq!(parse_duration("90d"), Ok(90 * DAY_MS));
    assert_eq!(parse_duration("2w"), Ok(14 * DAY_MS));
    assert_eq!(parse_duration("6m"), Ok(180 * DAY_MS));
    assert_eq!(parse_duration("1y"), Ok(365 * DAY_MS));
    assert_eq!(parse_duration("12h"), Ok(12 * 3_600_000));
    for bad in ["", "d", "90", "90 days", "-3d", "99999999999999999y"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

/// A mount still running on another machine shows what it rebuilt from, and reads other
/// machines' changes only at its next rebuild: a version its newest snapshot holds stays,
/// however long ago the journals replaced it (review A1: prune deleted it, and that mount's
/// reads then failed).
#[test]
fn a_version_another_machines_newest_snapshot_holds_stays() {
    use crate::remote_meta::SnapshotWriter;
    let v = vault();
    let stale = upload_entry("a.jpg", "v/d/a1", "STANDARD", None);
    let snapshot = |machine: &str, covers: i64, ts: i64, files: &[(&str, &str)], seen: &[(&str, i64)]| {
        let mut w = SnapshotWriter::new(&v.keys, Vec::new()).unwrap();
        for (path, key) in files {
            let mut e = stale.clone();
            if let Entry::Upload { path: p, key: k, .. } = &mut e {
                *p = path.to_string();
                *k = format!("v/d/{key}");
            }
            w.entry(&e).unwrap();
        }
        let seen: BTreeMap<String, i64> = seen.iter().map(|(m, q)| (m.to_string(), *q)).collect();
        let (body, _) = w.finish(machine, covers, ts, &seen).unwrap();
        let key = format!("v/s/{machine}/{covers:016}");
        v.rt.block_on(v.store.put_object(&key, body.into(), &PutOptions::default())).unwrap();
    };
    // m2 mounted on day 5 and has not rebuilt since: its snapshot still shows a1.
    snapshot("m2", 1, day(5), &[("a.jpg", "a1")], &[("m2", 1)]);
    // m1's newer snapshot is the rebuild's base: the tree as the journals leave it.
    let now = [("a.jpg", "a4"), ("b.raw", "b2"), ("e-final.txt", "e1"), ("f.txt", "f2")];
    snapshot("m1", v.seq.get(), day(395), &now, &[("m1", v.seq.get()), ("m2", 1)]);
    let p = v.plan(day(400), &rules(30));
    assert_eq!(doomed(&p), vec!["a2", "a3", "d1"], "a1 stays: machine m2's mount still shows it");
}
