//! Model-based tests (proptest): one machine (`Op`), the widened model (`WOp`: folders, held handles, xattrs, failures), several machines (`MOp`).

use super::*;

/// One step of the model-based test: what a user or the machine does.
#[derive(Clone, Debug)]
enum Op {
    /// create or overwrite (O_TRUNC) `name` with `len` bytes
    Write {
        name: u8,
        len: u16,
        seed: u8,
    },
    /// write 100 bytes at `off` into an existing file (no O_TRUNC)
    Patch {
        name: u8,
        off: u16,
        seed: u8,
    },
    Truncate {
        name: u8,
        len: u16,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Unlink {
        name: u8,
    },
    /// seal, upload and journal everything
    Flush,
    /// the daemon stops and starts again on the same cache dir
    Restart,
    /// everything is flushed, the disk dies, and a new machine rebuilt from the bucket goes on
    Recover,
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..4, 0u16..3000, any::<u8>()).prop_map(|(name, len, seed)| Op::Write { name, len, seed }),
        2 => (0u8..4, 0u16..3000, any::<u8>()).prop_map(|(name, off, seed)| Op::Patch { name, off, seed }),
        1 => (0u8..4, 0u16..3000).prop_map(|(name, len)| Op::Truncate { name, len }),
        2 => (0u8..4, 0u8..4).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (0u8..4).prop_map(|name| Op::Unlink { name }),
        2 => Just(Op::Flush),
        1 => Just(Op::Restart),
        2 => Just(Op::Recover),
    ]
}

/// The live tree of `fs`: names and contents, read through the filesystem.
fn contents_of(fs: &Fs) -> BTreeMap<String, Vec<u8>> {
    fs.readdir(ROOT).unwrap().into_iter().filter(|i| i.kind == Kind::File).map(|i| (i.name.clone(), read_all_on(fs, i.ino))).collect()
}

/// The machine a model test acts through: the `Env`'s own daemon until the first recovery,
/// then the newest machine rebuilt from the bucket on a cache dir of its own.
struct Machine {
    current: Option<(tempfile::TempDir, Daemon)>,
    own: Option<Arc<Fs>>,
}

impl Machine {
    fn new(e: &Env) -> Machine {
        Machine { current: None, own: Some(e.daemon.as_ref().unwrap().fs.clone()) }
    }

    fn fs(&self) -> Arc<Fs> {
        self.current.as_ref().map(|c| c.1.fs.clone()).or_else(|| self.own.clone()).unwrap()
    }

    /// The daemon stops and starts again on the same cache dir.
    fn restart(&mut self, e: &mut Env) {
        if let Some((dir, d)) = self.current.take() {
            e.rt.block_on(d.shutdown());
            let d = Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), cfg(dir.path()), fast_upload()).unwrap();
            self.current = Some((dir, d));
        } else {
            e.restart();
            self.own = Some(e.daemon.as_ref().unwrap().fs.clone());
        }
    }

    /// The disk dies (everything was flushed first): a new machine rebuilt from the bucket goes
    /// on. The `Env`'s daemon is left alone: its disk "died".
    fn recover(&mut self, e: &Env) {
        if let Some((_dir, d)) = self.current.take() {
            e.rt.block_on(d.shutdown());
        }
        self.own = None;
        self.current = Some(fresh_machine(e));
    }

    fn stop(mut self, e: &Env) {
        if let Some((_dir, d)) = self.current.take() {
            e.rt.block_on(d.shutdown());
        }
    }
}

/// Runs `ops` against a real daemon on the fake store and an in-memory model of what a user
/// must see, comparing after every step (and on every new machine after a recovery).
fn run_model(ops: &[Op]) {
    let mut e = Env::new();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut machine = Machine::new(&e);
    let name_of = |n: u8| format!("n{n}");
    for (step, op) in ops.iter().enumerate() {
        let fs = machine.fs();
        match op {
            Op::Write { name, len, seed } => {
                let d = data(*len as usize, *seed);
                match fs.lookup(ROOT, OsStr::new(&name_of(*name))) {
                    Ok(i) => rewrite_on(&fs, i.ino, &d),
                    Err(_) => {
                        write_on(&fs, ROOT, &name_of(*name), &d);
                    }
                }
                model.insert(name_of(*name), d);
            }
            Op::Patch { name, off, seed } => {
                let Some(cur) = model.get_mut(&name_of(*name)) else { continue };
                let ino = fs.lookup(ROOT, OsStr::new(&name_of(*name))).unwrap().ino;
                let off = (*off as usize).min(cur.len());
                let d = data(100, *seed);
                let fh = fs.open(ino, true, false, 0).unwrap().0;
                fs.write(fh, off as u64, &d).unwrap();
                fs.release(fh).unwrap();
                if cur.len() < off + 100 {
                    cur.resize(off + 100, 0);
                }
                cur[off..off + 100].copy_from_slice(&d);
            }
            Op::Truncate { name, len } => {
                let Some(cur) = model.get_mut(&name_of(*name)) else { continue };
                let ino = fs.lookup(ROOT, OsStr::new(&name_of(*name))).unwrap().ino;
                fs.setattr(ino, None, None, None, Some(*len as u64), None, None).unwrap();
                cur.resize(*len as usize, 0);
            }
            Op::Rename { from, to } => {
                let Some(d) = model.get(&name_of(*from)).cloned() else { continue };
                fs.rename(ROOT, OsStr::new(&name_of(*from)), ROOT, OsStr::new(&name_of(*to)), false).unwrap();
                model.remove(&name_of(*from));
                model.insert(name_of(*to), d);
            }
            Op::Unlink { name } => {
                if model.remove(&name_of(*name)).is_some() {
                    fs.unlink(ROOT, OsStr::new(&name_of(*name))).unwrap();
                }
            }
            Op::Flush => settle_machine(&e, &fs),
            Op::Restart => machine.restart(&mut e),
            Op::Recover => {
                settle_machine(&e, &fs);
                drop(fs);
                machine.recover(&e);
            }
        }
        assert_eq!(contents_of(&machine.fs()), model, "after step {step}: {op:?}\nops: {ops:?}");
    }
    machine.stop(&e);
}

/// Model-based: random sequences of writes, overwrites, partial writes, truncates, renames,
/// unlinks, flushes, restarts and recoveries on new machines (each rebuilt from the bucket and
/// then used) always show exactly what the model says.
#[test]
fn model_random_operations_restarts_and_recoveries() {
    use proptest::prelude::*;
    let cfg = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(cfg, |(ops in proptest::collection::vec(op_strategy(), 1..30))| {
        run_model(&ops);
    });
}

/// Sequences the model-based test found (kept as regression tests).
#[test]
fn model_regressions() {
    use Op::*;
    // The second recovery replayed the dead machine's older journal over the newer state.
    run_model(&[
        Write { name: 0, len: 10, seed: 1 },
        Write { name: 1, len: 10, seed: 2 },
        Recover,
        Unlink { name: 0 },
        Rename { from: 1, to: 2 },
        Recover,
        Recover,
    ]);
}

/// Where a step of the widened model acts: `n0`..`n3` at the root, or `d/n0`..`d/n3` in the
/// one folder (which may not exist).
#[derive(Clone, Copy, Debug)]
struct Place {
    dir: bool,
    name: u8,
}

impl Place {
    fn path(self) -> String {
        if self.dir {
            format!("d/n{}", self.name)
        } else {
            format!("n{}", self.name)
        }
    }
}

/// One step of the widened model: a folder, handles held across steps (unlink and rename while
/// open), extended attributes and failing uploads, beside writes, restarts and recoveries.
#[derive(Clone, Debug)]
enum WOp {
    /// create `at`, or overwrite it (O_TRUNC, same inode)
    Write {
        at: Place,
        len: u16,
        seed: u8,
    },
    Rename {
        from: Place,
        to: Place,
    },
    Unlink {
        at: Place,
    },
    Mkdir,
    /// remove the folder: ENOTEMPTY while it holds a file
    Rmdir,
    /// open `at` for reading and keep the handle
    Hold {
        at: Place,
    },
    /// read a held handle (the `k`-th, modulo how many are held) from its start
    ReadHeld {
        k: u8,
    },
    Release {
        k: u8,
    },
    SetXattr {
        at: Place,
        value: u8,
    },
    /// the next PutObject fails as a dropped connection, or is stored and its answer lost
    FailNextPut {
        lost: bool,
    },
    Flush,
    Restart,
    Recover,
}

fn wop_strategy() -> impl proptest::strategy::Strategy<Value = WOp> {
    use proptest::prelude::*;
    let place = || (any::<bool>(), 0u8..3).prop_map(|(dir, name)| Place { dir, name });
    prop_oneof![
        4 => (place(), 0u16..3000, any::<u8>()).prop_map(|(at, len, seed)| WOp::Write { at, len, seed }),
        2 => (place(), place()).prop_map(|(from, to)| WOp::Rename { from, to }),
        2 => place().prop_map(|at| WOp::Unlink { at }),
        2 => Just(WOp::Mkdir),
        1 => Just(WOp::Rmdir),
        2 => place().prop_map(|at| WOp::Hold { at }),
        2 => any::<u8>().prop_map(|k| WOp::ReadHeld { k }),
        1 => any::<u8>().prop_map(|k| WOp::Release { k }),
        2 => (place(), any::<u8>()).prop_map(|(at, value)| WOp::SetXattr { at, value }),
        1 => any::<bool>().prop_map(|lost| WOp::FailNextPut { lost }),
        2 => Just(WOp::Flush),
        1 => Just(WOp::Restart),
        1 => Just(WOp::Recover),
    ]
}

/// Whether the folder exists, and each live path's content and `user.k` attribute.
type WView = (bool, BTreeMap<String, (Vec<u8>, Option<u8>)>);

/// What a user must see: live paths with their content and `user.k` attribute, whether the
/// folder exists, and what each held handle reads.
#[derive(Default)]
struct WModel {
    dir: bool,
    names: BTreeMap<String, usize>,
    files: HashMap<usize, (Vec<u8>, Option<u8>)>,
    held: Vec<(u64, usize)>,
    next: usize,
}

impl WModel {
    fn view(&self) -> WView {
        (self.dir, self.names.iter().map(|(p, id)| (p.clone(), self.files[id].clone())).collect())
    }
}

/// The same view, read through `fs`.
fn wview_of(fs: &Fs) -> WView {
    let mut out = BTreeMap::new();
    let mut dir = false;
    let add = |prefix: &str, parent: u64, out: &mut BTreeMap<String, (Vec<u8>, Option<u8>)>| {
        for i in fs.readdir(parent).unwrap() {
            if i.kind == Kind::File {
                let x = fs.getxattr(i.ino, OsStr::new("user.k")).ok().map(|v| v[0]);
                out.insert(format!("{prefix}{}", i.name), (read_all_on(fs, i.ino), x));
            }
        }
    };
    add("", ROOT, &mut out);
    if let Ok(d) = fs.lookup(ROOT, OsStr::new("d")) {
        dir = true;
        add("d/", d.ino, &mut out);
    }
    (dir, out)
}

/// Seal, upload and journal everything, retrying the journal upload a failure injected by
/// `FailNextPut` may have hit.
fn wsettle(e: &Env, fs: &Arc<Fs>) {
    fs.seal_ready(true).unwrap();
    wait_for("uploads", || fs.status().unwrap().pending_files == 0);
    for attempt in 0.. {
        match e.rt.block_on(fs.journal_uploader().flush()) {
            Ok(_) => break,
            Err(err) if attempt < 3 => eprintln!("journal upload failed once ({err}); again"),
            Err(err) => panic!("journal upload keeps failing: {err}"),
        }
    }
}

fn parent_of(fs: &Fs, at: Place) -> Option<u64> {
    if at.dir {
        fs.lookup(ROOT, OsStr::new("d")).ok().map(|d| d.ino)
    } else {
        Some(ROOT)
    }
}

fn name_of(at: Place) -> String {
    format!("n{}", at.name)
}

/// Runs `ops` against a real daemon on the fake store and `WModel`, comparing after every step.
fn run_wide(ops: &[WOp]) {
    if std::env::var_os("COLDVAULT_MODEL_TRACE").is_some() {
        eprintln!("run_wide {ops:?}");
    }
    let mut e = Env::new();
    let mut m = WModel::default();
    let mut machine = Machine::new(&e);
    for (step, op) in ops.iter().enumerate() {
        let fs = machine.fs();
        match op {
            WOp::Write { at, len, seed } => {
                let Some(parent) = parent_of(&fs, *at) else { continue };
                let d = data(*len as usize, *seed);
                match m.names.get(&at.path()) {
                    Some(id) => {
                        rewrite_on(&fs, fs.lookup(parent, OsStr::new(&name_of(*at))).unwrap().ino, &d);
                        m.files.get_mut(id).unwrap().0 = d;
                    }
                    None => {
                        write_on(&fs, parent, &name_of(*at), &d);
                        m.next += 1;
                        m.files.insert(m.next, (d, None));
                        m.names.insert(at.path(), m.next);
                    }
                }
            }
            WOp::Rename { from, to } => {
                let (Some(pf), Some(pt)) = (parent_of(&fs, *from), parent_of(&fs, *to)) else { continue };
                let Some(id) = m.names.get(&from.path()).copied() else { continue };
                fs.rename(pf, OsStr::new(&name_of(*from)), pt, OsStr::new(&name_of(*to)), false).unwrap();
                m.names.remove(&from.path());
                m.names.insert(to.path(), id);
            }
            WOp::Unlink { at } => {
                let Some(parent) = parent_of(&fs, *at) else { continue };
                if m.names.remove(&at.path()).is_some() {
                    fs.unlink(parent, OsStr::new(&name_of(*at))).unwrap();
                }
            }
            WOp::Mkdir => {
                if !m.dir {
                    fs.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap();
                    m.dir = true;
                }
            }
            WOp::Rmdir => {
                if m.dir {
                    let r = fs.rmdir(ROOT, OsStr::new("d"));
                    if m.names.keys().any(|p| p.starts_with("d/")) {
                        assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOTEMPTY), "step {step}");
                    } else {
                        r.unwrap();
                        m.dir = false;
                    }
                }
            }
            WOp::Hold { at } => {
                let Some(parent) = parent_of(&fs, *at) else { continue };
                let Some(id) = m.names.get(&at.path()).copied() else { continue };
                if m.held.len() < 4 {
                    let ino = fs.lookup(parent, OsStr::new(&name_of(*at))).unwrap().ino;
                    m.held.push((fs.open(ino, false, false, 0).unwrap().0, id));
                }
            }
            WOp::ReadHeld { k } => {
                if !m.held.is_empty() {
                    let (fh, id) = m.held[*k as usize % m.held.len()];
                    let got = fs.read(fh, 0, 1 << 20).unwrap();
                    assert_eq!(&got[..], &m.files[&id].0[..], "step {step}: a held handle reads its file\nops: {ops:?}");
                }
            }
            WOp::Release { k } => {
                if !m.held.is_empty() {
                    let (fh, _) = m.held.remove(*k as usize % m.held.len());
                    fs.release(fh).unwrap();
                }
            }
            WOp::SetXattr { at, value } => {
                let Some(parent) = parent_of(&fs, *at) else { continue };
                let Some(id) = m.names.get(&at.path()).copied() else { continue };
                let ino = fs.lookup(parent, OsStr::new(&name_of(*at))).unwrap().ino;
                fs.setxattr(ino, OsStr::new("user.k"), &[*value], 0).unwrap();
                m.files.get_mut(&id).unwrap().1 = Some(*value);
            }
            WOp::FailNextPut { lost } => {
                if *lost {
                    e.store.lose_next_response("PutObject");
                } else {
                    e.store.fail_op("PutObject", 1, StoreError::Retryable("connection reset".into()));
                }
            }
            WOp::Flush => wsettle(&e, &fs),
            WOp::Restart => {
                // A restart drops every handle, as the kernel does when the daemon goes.
                m.held.clear();
                drop(fs);
                machine.restart(&mut e);
            }
            WOp::Recover => {
                wsettle(&e, &fs);
                m.held.clear();
                drop(fs);
                machine.recover(&e);
            }
        }
        assert_eq!(wview_of(&machine.fs()), m.view(), "after step {step}: {op:?}\nops: {ops:?}");
    }
    e.store.clear_faults();
    machine.stop(&e);
}

/// Model-based, widened: a folder made and removed, files in and out of it, handles held while
/// their file is rewritten, renamed over or unlinked, extended attributes, uploads whose
/// connection drops or whose answer is lost, restarts and recoveries on new machines: what a
/// user sees is always what the model says.
#[test]
fn model_folders_handles_xattrs_and_failures() {
    use proptest::prelude::*;
    let cases = std::env::var("COLDVAULT_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let cfg = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(cfg, |(ops in proptest::collection::vec(wop_strategy(), 1..30))| {
        run_wide(&ops);
    });
}

/// Sequences the widened model found (kept as regression tests).
#[test]
fn model_wide_regressions() {
    use WOp::*;
    let root = |name| Place { dir: false, name };
    run_wide(&[FailNextPut { lost: false }, Recover, Write { at: root(0), len: 904, seed: 118 }, Recover]);
}

/// One step of the several-machines model: machine `m` (0 or 1) acts on a shared name (`s0`..
/// `s2`, which both machines write and delete) or one of its own (`m0_a`, `m0_b`, …).
#[derive(Clone, Debug)]
enum MOp {
    Write {
        m: u8,
        shared: bool,
        k: u8,
        len: u16,
        seed: u8,
    },
    Delete {
        m: u8,
        shared: bool,
        k: u8,
    },
    /// chmod a shared name (changes no version: no event; it moves the file's time)
    Chmod {
        m: u8,
        k: u8,
    },
    /// rename one of its own names over another of its own
    Rename {
        m: u8,
        from: u8,
        to: u8,
    },
    /// seal, upload and journal everything of machine `m` (a snapshot most times)
    Flush {
        m: u8,
    },
    /// machine `m` flushes, its disk dies, and a new machine rebuilt from the bucket takes its place
    Join {
        m: u8,
    },
}

fn mop_strategy() -> impl proptest::strategy::Strategy<Value = MOp> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (0u8..2, any::<bool>(), 0u8..3, 0u16..2000, any::<u8>()).prop_map(|(m, shared, k, len, seed)| MOp::Write { m, shared, k, len, seed }),
        3 => (0u8..2, any::<bool>(), 0u8..3).prop_map(|(m, shared, k)| MOp::Delete { m, shared, k }),
        1 => (0u8..2, 0u8..3).prop_map(|(m, k)| MOp::Chmod { m, k }),
        1 => (0u8..2, 0u8..2, 0u8..2).prop_map(|(m, from, to)| MOp::Rename { m, from, to }),
        4 => (0u8..2).prop_map(|m| MOp::Flush { m }),
        2 => (0u8..2).prop_map(|m| MOp::Join { m }),
    ]
}

/// The rule of docs/SEMANTICS.md ("Several machines"), as a reference: every change is stamped
/// when its record is made (a deletion or rename when it happens, a write when its upload
/// lands) and reaches the bucket with its machine's next journal upload; a rebuild shows, for
/// every shared name, the change with the newest stamp among those in the bucket, and for
/// each machine's own names what that machine had when it last flushed. A version that a
/// change by another machine replaced or removed without having seen it is kept as a conflict
/// copy beside it.
struct ModelEvent {
    stamp: usize,
    /// In the bucket (its machine flushed since).
    visible: bool,
    name: String,
    /// The content written, or `None` for a deletion.
    data: Option<Vec<u8>>,
    machine: u8,
    /// The event whose version the machine's file at `name` held when this was recorded.
    saw: Option<usize>,
}

#[derive(Default)]
struct SeveralModel {
    events: Vec<ModelEvent>,
    /// What each machine shows.
    views: [BTreeMap<String, Vec<u8>>; 2],
    /// Shared names written since the machine's last flush.
    pending: [BTreeMap<String, Vec<u8>>; 2],
    /// Each machine's own names as of its last flush.
    flushed_own: [BTreeMap<String, Vec<u8>>; 2],
    /// Per machine and shared name, the event whose version its file there last uploaded or
    /// imported (what its next record there is made over).
    base: [BTreeMap<String, usize>; 2],
}

/// A rebuilt tree: every name but conflict copies, and the conflict copies as (the name they
/// are a copy of, content), sorted.
type Rebuilt = (BTreeMap<String, Vec<u8>>, Vec<(String, Vec<u8>)>);

impl SeveralModel {
    fn flush(&mut self, m: u8, step: usize) {
        let mi = m as usize;
        for (name, d) in std::mem::take(&mut self.pending[mi]) {
            let saw = self.base[mi].get(&name).copied();
            self.base[mi].insert(name.clone(), self.events.len());
            self.events.push(ModelEvent { stamp: step, visible: true, name, data: Some(d), machine: m, saw });
        }
        for e in self.events.iter_mut().filter(|e| e.machine == m) {
            e.visible = true;
        }
        let own = format!("m{m}_");
        self.flushed_own[mi] = self.views[mi].iter().filter(|(k, _)| k.starts_with(&own)).map(|(k, v)| (k.clone(), v.clone())).collect();
    }

    /// What a rebuild from the bucket shows now, and the event each shared name shows.
    fn rebuilt_with(&self) -> (Rebuilt, BTreeMap<String, usize>) {
        let mut order: Vec<(usize, &ModelEvent)> = self.events.iter().enumerate().filter(|(_, e)| e.visible).collect();
        order.sort_by_key(|(_, e)| e.stamp);
        let mut at: BTreeMap<&str, usize> = BTreeMap::new();
        // (name, event) of each conflict copy
        let mut kept: Vec<(&str, usize)> = Vec::new();
        for (id, e) in order {
            // A change replaces or removes the version it saw, also where that is a copy.
            if at.get(e.name.as_str()).copied() != e.saw {
                kept.retain(|&(n, c)| !(n == e.name && Some(c) == e.saw));
            }
            if let Some(&c) = at.get(e.name.as_str()) {
                if self.events[c].machine != e.machine && Some(c) != e.saw {
                    kept.push((&e.name, c));
                }
            }
            match e.data {
                Some(_) => at.insert(&e.name, id),
                None => at.remove(e.name.as_str()),
            };
        }
        let mut copies: Vec<(String, Vec<u8>)> =
            kept.into_iter().map(|(n, c)| (n.to_string(), self.events[c].data.clone().expect("a version"))).collect();
        let mut out: BTreeMap<String, Vec<u8>> =
            at.iter().map(|(n, &id)| (n.to_string(), self.events[id].data.clone().expect("a version"))).collect();
        for own in &self.flushed_own {
            out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        copies.sort();
        ((out, copies), at.into_iter().map(|(n, id)| (n.to_string(), id)).collect())
    }

    fn rebuilt(&self) -> Rebuilt {
        self.rebuilt_with().0
    }
}

/// A machine's tree with its conflict copies apart (`Rebuilt`).
fn split_copies(t: &BTreeMap<String, Vec<u8>>) -> Rebuilt {
    let (mut names, mut copies) = (BTreeMap::new(), Vec::new());
    for (k, v) in t {
        match k.split_once(" (conflict from ") {
            Some((of, _)) => copies.push((of.to_string(), v.clone())),
            None => {
                names.insert(k.clone(), v.clone());
            }
        }
    }
    copies.sort();
    (names, copies)
}

/// A tree as names and (length, first bytes): readable in a failed assertion.
fn digest(t: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, (usize, Vec<u8>)> {
    t.iter().map(|(k, v)| (k.clone(), (v.len(), v.iter().take(4).copied().collect()))).collect()
}

/// What `digest_rebuilt` gives: names as `digest` does, and each copy as (the name it is a copy
/// of, length, first bytes).
type RebuiltDigest = (BTreeMap<String, (usize, Vec<u8>)>, Vec<(String, usize, Vec<u8>)>);

/// `digest` of a rebuilt tree and its copies.
fn digest_rebuilt(r: &Rebuilt) -> RebuiltDigest {
    (digest(&r.0), r.1.iter().map(|(k, v)| (k.clone(), v.len(), v.iter().take(4).copied().collect())).collect())
}

/// Runs of `run_several` whose rebuilds had a snapshot to start from.
static SEVERAL_WITH_SNAPSHOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs of `run_several` whose last rebuild has a conflict copy.
static SEVERAL_WITH_COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `ops` on two live machines sharing one bucket (each taking snapshots), checking every
/// machine's own view after each step and every rebuild against `SeveralModel`.
/// Returns how many conflict copies the last rebuild shows.
fn run_several(ops: &[MOp]) -> usize {
    let mut e = Env::new();
    e.restart_with(|c| c.journal.snapshot_every = 2);
    let mut dirs: Vec<Option<tempfile::TempDir>> = vec![None, None];
    let (d1, m1) = second_machine(&e);
    dirs[1] = Some(d1);
    let mut machines: Vec<Option<Daemon>> = vec![None, Some(m1)];
    let fs_of =
        |e: &Env, machines: &[Option<Daemon>], m: u8| -> Arc<Fs> { machines[m as usize].as_ref().map(|d| d.fs.clone()).unwrap_or_else(|| e.fs()) };
    let mut model = SeveralModel::default();
    let name_of = |m: u8, shared: bool, k: u8| if shared { format!("s{}", k % 3) } else { format!("m{m}_{}", (b'a' + k % 2) as char) };
    for (step, op) in ops.iter().enumerate() {
        // Distinct stamps: the rule orders changes by time, ties by machine id.
        std::thread::sleep(Duration::from_millis(3));
        match op {
            MOp::Write { m, shared, k, len, seed } => {
                let fs = fs_of(&e, &machines, *m);
                let name = name_of(*m, *shared, *k);
                let d = data(*len as usize, *seed);
                match fs.lookup(ROOT, OsStr::new(&name)) {
                    Ok(i) => rewrite_on(&fs, i.ino, &d),
                    Err(_) => {
                        write_on(&fs, ROOT, &name, &d);
                        // A new file: its first version replaces nothing it saw.
                        model.base[*m as usize].remove(&name);
                    }
                }
                model.views[*m as usize].insert(name.clone(), d.clone());
                if *shared {
                    model.pending[*m as usize].insert(name, d);
                }
            }
            MOp::Delete { m, shared, k } => {
                let name = name_of(*m, *shared, *k);
                if model.views[*m as usize].remove(&name).is_none() {
                    continue;
                }
                fs_of(&e, &machines, *m).unlink(ROOT, OsStr::new(&name)).unwrap();
                if *shared {
                    model.pending[*m as usize].remove(&name);
                    let saw = model.base[*m as usize].remove(&name);
                    model.events.push(ModelEvent { stamp: step, visible: false, name, data: None, machine: *m, saw });
                }
            }
            MOp::Chmod { m, k } => {
                let fs = fs_of(&e, &machines, *m);
                let Ok(i) = fs.lookup(ROOT, OsStr::new(&name_of(*m, true, *k))) else { continue };
                fs.setattr(i.ino, Some(0o600 ^ (i.mode & 0o777 & 0o400)), None, None, None, None, None).unwrap();
            }
            MOp::Rename { m, from, to } => {
                let (from, to) = (name_of(*m, false, *from), name_of(*m, false, *to));
                let view = &mut model.views[*m as usize];
                let Some(d) = view.get(&from).cloned() else { continue };
                fs_of(&e, &machines, *m).rename(ROOT, OsStr::new(&from), ROOT, OsStr::new(&to), false).unwrap();
                view.remove(&from);
                view.insert(to, d);
            }
            MOp::Flush { m } => {
                settle_machine(&e, &fs_of(&e, &machines, *m));
                model.flush(*m, step);
            }
            MOp::Join { m } => {
                settle_machine(&e, &fs_of(&e, &machines, *m));
                model.flush(*m, step);
                if let Some(d) = machines[*m as usize].take() {
                    e.rt.block_on(d.shutdown());
                } else {
                    let d = e.daemon.take().unwrap();
                    e.rt.block_on(d.shutdown());
                }
                let (dir, d) = second_machine(&e);
                dirs[*m as usize] = Some(dir);
                machines[*m as usize] = Some(d);
                let (want, at) = model.rebuilt_with();
                // The new machine shows what the bucket holds: its own names and the others',
                // and conflict copies.
                let got = contents_of(&fs_of(&e, &machines, *m));
                assert_eq!(digest_rebuilt(&split_copies(&got)), digest_rebuilt(&want), "machine {m} rebuilt at step {step}\nops: {ops:?}");
                model.views[*m as usize] = got;
                model.pending[*m as usize].clear();
                model.base[*m as usize] = at;
            }
        }
        for m in 0..2u8 {
            let got = contents_of(&fs_of(&e, &machines, m));
            assert_eq!(digest(&got), digest(&model.views[m as usize]), "machine {m}'s view after step {step}: {op:?}\nops: {ops:?}");
        }
    }
    for m in 0..2u8 {
        settle_machine(&e, &fs_of(&e, &machines, m));
        model.flush(m, ops.len() + m as usize);
        std::thread::sleep(Duration::from_millis(3));
    }
    if e.store.snapshot().keys().any(|k| k.starts_with("v/s/")) {
        SEVERAL_WITH_SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let (_d, fresh) = fresh_machine(&e);
    let copies = model.rebuilt().1.len();
    if copies > 0 {
        SEVERAL_WITH_COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    assert_eq!(
        digest_rebuilt(&split_copies(&contents_of(&fresh.fs))),
        digest_rebuilt(&model.rebuilt()),
        "a new machine rebuilt at the end\nops: {ops:?}"
    );
    e.rt.block_on(fresh.shutdown());
    for d in machines.into_iter().flatten() {
        e.rt.block_on(d.shutdown());
    }
    copies
}

/// Sequences the several-machines model found (kept as regression tests).
#[test]
fn several_machines_regressions() {
    use MOp::*;
    // Two machines write s1 unseen by each other: the rebuild keeps one conflict copy.
    let copies = run_several(&[
        Write { m: 0, shared: true, k: 1, len: 771, seed: 45 },
        Join { m: 1 },
        Write { m: 1, shared: true, k: 1, len: 393, seed: 127 },
        Join { m: 0 },
        Write { m: 0, shared: true, k: 1, len: 1875, seed: 203 },
    ]);
    assert_eq!(copies, 1);
    // A chmod of the older version (by the machine that never saw the newer) changes neither
    // which is the file nor which is the copy, whichever snapshot the rebuild starts from.
    assert_eq!(
        run_several(&[
            Write { m: 0, shared: true, k: 0, len: 0, seed: 0 },
            Write { m: 1, shared: true, k: 0, len: 1, seed: 0 },
            Flush { m: 1 },
            Flush { m: 0 },
            Chmod { m: 1, k: 0 },
        ]),
        1
    );
    run_several(&[
        Write { m: 0, shared: true, k: 2, len: 945, seed: 112 },
        Write { m: 1, shared: true, k: 2, len: 918, seed: 243 },
        Delete { m: 0, shared: true, k: 2 },
        Write { m: 1, shared: true, k: 2, len: 795, seed: 129 },
        Write { m: 0, shared: true, k: 2, len: 977, seed: 81 },
        Join { m: 0 },
        Flush { m: 1 },
        Delete { m: 1, shared: true, k: 2 },
    ]);
}

/// Model-based, several machines: random writes, deletions and renames on two live machines
/// sharing names, flushes (with snapshots), and machines replaced by new ones rebuilt from the
/// bucket; every rebuild follows the rule (`SeveralModel`), whichever snapshot it starts from.
#[test]
fn model_two_machines_follow_the_several_machines_rule() {
    use proptest::prelude::*;
    let cases = std::env::var("COLDVAULT_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24);
    let cfg = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(cfg, |(ops in proptest::collection::vec(mop_strategy(), 1..30))| {
        run_several(&ops);
    });
    let with = SEVERAL_WITH_SNAPSHOTS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(with >= cases as usize / 3, "only {with} of {cases} runs rebuilt from a snapshot");
    let copies = SEVERAL_WITH_COPIES.load(std::sync::atomic::Ordering::Relaxed);
    // (How many runs end with a copy varies with the random cases: about one in four; the
    // regression cases assert that copies are made.)
    eprintln!("{with} of {cases} runs rebuilt from a snapshot; {copies} ended with a conflict copy");
}
