//! The rebuild: the namespace replayed from the bucket alone — the newest believed snapshot
//! of each machine, every machine's journal after what the base covers, merged by time, and
//! the data objects no entry mentions (versions whose journal batch was lost), adopted.

use super::codec::open_fetched;
use super::{check_path, object_meta, parse_seq_key, read, shown, stops_rebuild, trust, Batch, Entry, Node, NodeKind, Record, RemoteError, Tree};
use crate::crypto::sign;
use crate::crypto::{self, VaultKeys};
use crate::store::{ObjectStore, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use x25519_dalek::StaticSecret;

/// Journal batches of one machine fetched ahead of the one being applied (each at most 1,000
/// records, about 0.5 MB)…
const BATCHES_AHEAD: usize = 4;
/// …while the batches fetched ahead, all machines together, are listed at most this large (a
/// bucket with thousands of machine ids cannot make a rebuild hold thousands of bodies).
const AHEAD_BYTES: u64 = 64 << 20;
/// A listed batch larger than this is refused unread (review N3): a batch holds at most
/// `journal::BATCH_BYTES` of records, and records of older builds (1,000 a batch, whatever
/// their size) stay below it unless their extended attributes ran to tens of kilobytes each.
pub(super) const MAX_BATCH_BYTES: u64 = 64 << 20;

type Fetch = tokio::task::JoinHandle<Result<(bytes::Bytes, std::collections::HashMap<String, String>), StoreError>>;

/// One machine's journal after what the base covers: its batches still to read, those being
/// fetched, the records of the one being applied (with the role of the machine that signed
/// them), and the highest sequence number taken so far.
#[derive(Default)]
struct Stream {
    /// (first, last, key, listed size)
    batches: std::collections::VecDeque<(i64, i64, String, u64)>,
    fetching: std::collections::VecDeque<(i64, i64, String, u64, Fetch)>,
    recs: std::collections::VecDeque<(Record, trust::Role)>,
    done: i64,
    /// The highest record number of the batches read so far (not what a snapshot covered).
    read_to: i64,
    /// Per batch, by its last record number: when it landed in the bucket (ms, from the
    /// listing; 0: not said).
    landed: BTreeMap<i64, i64>,
}

impl Drop for Stream {
    /// A rebuild that stops leaves no GET running.
    fn drop(&mut self) {
        for (.., t) in &self.fetching {
            t.abort();
        }
    }
}

/// What a rebuild, and every stream of it, reads with.
struct Reader<'a> {
    store: &'a Arc<dyn ObjectStore>,
    keys: &'a VaultKeys,
    sk: &'a StaticSecret,
    trust: &'a trust::Trust,
    prefix: &'a str,
    progress: Progress<'a>,
}

/// What the streams of a rebuild share while they are read.
#[derive(Default)]
struct Merge {
    refused: Vec<String>,
    /// Listed bytes of the batches being fetched ahead, all machines together.
    ahead: u64,
    fetched: usize,
    /// Batches to read, all machines together.
    total: usize,
}

impl Stream {
    /// Read batches until there is a record to apply; its time, or `None` at the stream's end.
    /// A batch that cannot be read, is not signed by a key the vault allows for this machine,
    /// or does not match its key is reported and skipped; a gap in the sequence numbers is
    /// reported.
    async fn refill(&mut self, r: &Reader<'_>, m: &str, st: &mut Merge) -> Result<Option<i64>, RemoteError> {
        while self.recs.is_empty() {
            while self.fetching.len() < BATCHES_AHEAD {
                let Some(&(_, _, _, size)) = self.batches.front() else { break };
                if !self.fetching.is_empty() && st.ahead + size > AHEAD_BYTES {
                    break;
                }
                let (first, last, key, size) = self.batches.pop_front().expect("a batch");
                st.ahead += size;
                let (store, k) = (r.store.clone(), key.clone());
                self.fetching.push_back((first, last, key, size, tokio::spawn(async move { store.get_with_metadata(&k, size).await })));
            }
            let Some((first, last, key, size, task)) = self.fetching.pop_front() else { return Ok(None) };
            st.ahead -= size;
            st.fetched += 1;
            (r.progress)("journal", st.fetched, st.total);
            let got = task.await.map_err(|e| RemoteError::Malformed(format!("journal batch {key}: download task: {e}")))?;
            let (got, sig) = match got {
                Ok((body, md)) => {
                    let w = match body.get(..crypto::HEADER_LEN) {
                        Some(h) => r.trust.check(&r.keys.public, &key[r.prefix.len()..], Some(m), h, md.get(sign::META).map(String::as_str)),
                        None => Err(trust::Refusal::ShorterThanHeader),
                    };
                    (Ok(body), Some(w))
                }
                Err(e) => (Err(e), None),
            };
            // Its signature first: nothing of a batch not believed is decrypted or parsed (review N3).
            let writer = match sig {
                Some(Ok(w)) => Some(w),
                Some(Err(e)) => {
                    st.refused.push(format!("journal batch {key} (records {first}..{last}) is not believed: {e}; its changes are not in this tree"));
                    continue;
                }
                None => None,
            };
            let b: Batch = match open_fetched(r.keys, &key, got)? {
                Ok(b) => b,
                Err(e) => {
                    st.refused.push(format!("journal batch {key} (records {first}..{last}) cannot be read ({e}); its changes are not in this tree"));
                    continue;
                }
            };
            // Not downloaded: `open_fetched` said so above (or stopped the rebuild).
            let Some(writer) = writer else { continue };
            if b.machine != m || b.records.iter().any(|r| r.seq < first || r.seq > last) {
                st.refused
                    .push(format!("journal batch {key} does not match its key (machine {:?}, records outside {first}..{last}); ignored", b.machine));
                continue;
            }
            // A gap is reported between believed batches: a forged batch far ahead makes none.
            let next = self.done.saturating_add(1);
            if first > next {
                st.refused.push(format!("journal of machine {m}: records {next}..{} are missing; changes they made are not in this tree", first - 1));
            }
            // A batch that repeats numbers an earlier batch held: a machine re-sends a batch
            // only whole, under the same key, so two copies of one cache dir (a cloned VM, a
            // restored backup) wrote this journal with other batch sizes. Said, never silent:
            // the first batch's records are kept, the repeated ones of this batch are not.
            if first <= self.read_to {
                st.refused.push(format!(
                    "journal of machine {m}: batch {key} repeats records {first}..{} that an earlier batch holds (two copies of this machine's cache dir wrote its journal: a cloned VM or a restored backup); those changes of this batch are not in this tree",
                    last.min(self.read_to)
                ));
            }
            self.read_to = self.read_to.max(last);
            let done = self.done;
            self.recs.extend(b.records.into_iter().filter(|r| r.seq > done).map(|r| (r, writer.role)));
            self.done = self.recs.iter().map(|(r, _)| r.seq).max().unwrap_or(done).max(done);
        }
        Ok(self.recs.front().map(|(r, _)| r.ts_ms))
    }
}

/// How far ahead of the rebuilding machine's clock a machine's record must be stamped for the
/// rebuild to report that machine's clock (NTP keeps clocks within a second; five minutes is a
/// clock that is wrong, not a race).
const CLOCK_AHEAD_REPORTED: i64 = 5 * 60_000;

/// What a record or snapshot time counts towards the importer's clock floor: a write-only
/// machine's clock cannot push it more than a day ahead of the importer's.
fn floor_time(ts_ms: i64, write_only: bool) -> i64 {
    if write_only {
        ts_ms.min(crate::clock::now_ms().saturating_add(86_400_000))
    } else {
        ts_ms
    }
}

/// What a replay tells its observer, with the tree as it is then.
pub(super) enum Step<'a> {
    /// A record was applied: its machine, its time, and the path and key of the version it
    /// uploaded, if it did.
    Applied { machine: &'a str, ts: i64, upload: Option<(&'a str, &'a str)>, discard: Option<&'a str> },
    /// Every record stamped at or before the mark is applied, and none after it.
    Mark,
}

/// Told of each step of a replay.
type Seen<'a> = dyn FnMut(&Tree, Step<'_>) + Send + 'a;

/// Where a replay stops (`stop`: before the first record stamped after it; `None`: at the end)
/// and when it tells its observer `Step::Mark`.
#[derive(Clone, Copy, Default)]
pub(super) struct Ends {
    pub stop: Option<i64>,
    pub mark: Option<i64>,
}

/// Progress callback: (what, done, total).
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// Rebuild the namespace from the bucket: snapshots, journal batches, unmentioned objects.
///
/// Runs GETs as tasks of the current runtime (`tokio::spawn`): drive it on a multi-thread
/// runtime, or with `Runtime::block_on`.
pub async fn rebuild(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, prefix: &str, progress: Progress<'_>) -> Result<Tree, RemoteError> {
    // A snapshot that cannot be read may be one a live machine replaced or compacted while it
    // was read: the second try lists again, and only then goes on without what still fails.
    match rebuild_once(store, keys, prefix, progress, false).await {
        Err(RemoteError::Changed(why)) => {
            tracing::warn!("{why}; reading the vault's metadata again");
            rebuild_once(store, keys, prefix, progress, true).await
        }
        r => r,
    }
}

/// The vault's history (`history.rs`): every machine's journal replayed from its first record,
/// stopped before the first record stamped after `at` (`None`: replayed to its end), following
/// the versions the paths `watch` held. Unlike `rebuild`, no snapshot is read (each covers the
/// journal up to its time, so a cut before it could not use it) and objects no record mentions
/// are not adopted: the history is what the journals say.
pub async fn history(
    store: &Arc<dyn ObjectStore>,
    keys: &VaultKeys,
    prefix: &str,
    progress: Progress<'_>,
    at: Option<i64>,
    watch: &[String],
) -> Result<super::history::History, RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let trust = trust::Trust::load(store, sk, prefix).await?;
    let notes = trust.problems.clone();
    let r = Reader { store, keys, sk, trust: &trust, prefix, progress };
    let mut w = super::history::Watcher::new(watch);
    let ends = Ends { stop: at, mark: None };
    let tree = r
        .replay_all(notes, ends, &mut |t, step| {
            if let Step::Applied { machine, ts, upload, .. } = step {
                w.seen(t, machine, ts, upload)
            }
        })
        .await?;
    Ok(super::history::History { tree, versions: w.versions })
}

/// What prune must know of every version (`history::Lifetimes`): every machine's journal
/// replayed from its first record to its end, with the files' keys taken at `cut` (ms), and
/// each machine's newest believed snapshot.
pub async fn lifetimes(
    store: &Arc<dyn ObjectStore>,
    keys: &VaultKeys,
    prefix: &str,
    progress: Progress<'_>,
    cut: i64,
) -> Result<super::history::Lifetimes, RemoteError> {
    use super::history::Lifetimes;
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let trust = trust::Trust::load(store, sk, prefix).await?;
    let mut notes = trust.problems.clone();
    let r = Reader { store, keys, sk, trust: &trust, prefix, progress };
    let mut l = Lifetimes::default();
    for s in r.latest_signed(&mut notes).await? {
        l.snapshots.insert(s.machine.clone(), s.seq);
        let (t, _, _) = r.read_only_snapshot(&s, true).await?;
        l.in_snapshots.extend(Lifetimes::held(&t));
    }
    let ends = Ends { stop: None, mark: Some(cut) };
    let tree = r
        .replay_all(notes, ends, &mut |t, step| match step {
            Step::Applied { machine, ts, upload, discard } => {
                let key = upload.map(|(p, k)| (Some(p), k)).or(discard.map(|k| (None, k)));
                l.applied(machine, ts, key, cut)
            }
            Step::Mark => {
                l.live_at_cut = Lifetimes::held(t);
                l.passed = true;
            }
        })
        .await?;
    l.live = Lifetimes::held(&tree);
    l.tree = tree;
    Ok(l)
}

async fn rebuild_once(
    store: &Arc<dyn ObjectStore>,
    keys: &VaultKeys,
    prefix: &str,
    progress: Progress<'_>,
    last_try: bool,
) -> Result<Tree, RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let trust = trust::Trust::load(store, sk, prefix).await?;
    let mut notes = trust.problems.clone();
    let r = Reader { store, keys, sk, trust: &trust, prefix, progress };
    let latest_signed = r.latest_signed(&mut notes).await?;
    // The base: the newest snapshot of a full machine that records what it saw of every
    // machine — the state of the vault as of that moment; every machine's later records are
    // replayed on top. Vaults whose snapshots predate `seen` start from all of them, each
    // covering its own journal. Snapshots are streamed, never held: with one snapshot (one
    // machine, the usual case) it is the base and is applied as it is read; with several, a
    // first pass reads what each says besides its entries, and a second applies the base's.
    let (mut tree, mut loaded, base) = match &latest_signed[..] {
        [only] => r.read_only_snapshot(only, last_try).await?,
        several => r.read_snapshots(several, last_try).await?,
    };
    let covered = start_from_base(&mut tree, &mut loaded, &base);
    let (streams, total) = r.list_journals(&mut tree, &mut notes, &loaded, &covered).await?;
    r.replay_journals(&mut tree, streams, total, covered).await?;
    r.adopt_orphans(&mut tree).await?;
    notes.append(&mut tree.refused);
    tree.refused = notes;
    tree.applying = None;
    tree.applying_ts = 0;
    Ok(tree)
}

/// A machine's newest snapshot that the rebuild believes, as listed and chosen: read from
/// `key` (`len` bytes listed), covering `machine`'s journal up to `seq`, with the signature it
/// was chosen by (`None`: a vault of an older build, which believes every snapshot), and
/// whether a write-only machine wrote it.
struct SnapshotCandidate {
    key: String,
    len: u64,
    machine: String,
    seq: i64,
    sig: Option<String>,
    write_only: bool,
}

/// A snapshot must say what its key says: the machine and sequence number it covers.
fn matches_key(info: read::SnapshotInfo, m: &str, seq: i64) -> Result<read::SnapshotInfo, String> {
    if info.machine == m && info.covers_seq == seq {
        Ok(info)
    } else {
        Err(format!("it does not match its key (machine {:?}, covers_seq {})", info.machine, info.covers_seq))
    }
}

/// The snapshots a rebuild starts from: the tree their entries made, what each of those read
/// says besides its entries, and which of them are the base (indexes into the second).
type Snapshots = (Tree, Vec<read::SnapshotInfo>, Vec<usize>);

impl Reader<'_> {
    /// An empty tree that knows whom the vault believes how: what a base snapshot says of a
    /// revoked or write-only machine's files is weighed by it as it is applied.
    fn new_tree(&self) -> Tree {
        Tree {
            signed: self.trust.signed,
            revoked: self.trust.revoked.clone(),
            revocations: self.trust.revocation_objects.clone(),
            write_only: self.trust.write_only_machines(),
            ..Tree::default()
        }
    }

    /// Per machine, its newest snapshot that a machine the vault allows signed: a forged one
    /// with a higher number must not hide the real one. Each is checked by its signature (a
    /// HEAD) and header (its first 128 bytes) before it is chosen, and again against the header
    /// it is read with. Snapshots passed over are said in `notes`.
    async fn latest_signed(&self, notes: &mut Vec<String>) -> Result<Vec<SnapshotCandidate>, RemoteError> {
        let (store, keys, trust, prefix) = (self.store, self.keys, self.trust, self.prefix);
        let snaps = store.list(&format!("{prefix}s/")).await?;
        let mut per_machine: BTreeMap<String, Vec<(i64, String, u64)>> = BTreeMap::new();
        for o in &snaps {
            if let Some((m, seq, _)) = parse_seq_key(&o.key[prefix.len() + 2..]) {
                per_machine.entry(m).or_default().push((seq, o.key.clone(), o.size));
            }
        }
        let mut latest_signed: Vec<SnapshotCandidate> = Vec::new();
        for (m, mut cands) in per_machine {
            cands.sort_by_key(|c| std::cmp::Reverse(c.0));
            let mut unread: Option<(usize, String)> = None;
            for (seq, key, len) in cands {
                // A vault of an older build believes every snapshot: its newest is read, unchecked.
                if !trust.signed {
                    latest_signed.push(SnapshotCandidate { key, len, machine: m.clone(), seq, sig: None, write_only: false });
                    break;
                }
                // Not even a HEAD for what could not be believed (review N12).
                if !trust.worth_reading(&key[prefix.len()..], &m) {
                    unread.get_or_insert((0, key.clone())).0 += 1;
                    continue;
                }
                let got = async {
                    let h = store.head_object(&key).await?;
                    let header = store.get_range(&key, 0, crypto::HEADER_LEN as u64).await?;
                    Ok::<_, StoreError>((h.metadata.get(sign::META).cloned(), header))
                }
                .await;
                let (sig, header) = match got {
                    Ok(x) => x,
                    Err(e) if stops_rebuild(&e) => return Err(e.into()),
                    Err(e) => {
                        notes.push(format!("snapshot {key} cannot be read ({e}); an older one of machine {m} is read instead, if any"));
                        continue;
                    }
                };
                match trust.check(&keys.public, &key[prefix.len()..], Some(&m), &header, sig.as_deref()) {
                    Ok(w) => {
                        let write_only = w.role == trust::Role::WriteOnly;
                        latest_signed.push(SnapshotCandidate { key, len, machine: m.clone(), seq, sig, write_only });
                        break;
                    }
                    Err(e) => notes.push(format!("snapshot {key} is not believed: {e}; an older one of machine {m} is read instead, if any")),
                }
            }
            if let Some((n, key)) = unread {
                notes.push(format!("snapshots of machine {m}: {n}, e.g. {key}, not read: the vault allows no key of that machine (or revoked it), and adopted none of them"));
            }
        }
        Ok(latest_signed)
    }

    /// What a snapshot's header is checked with as it is read: the signature it was chosen by.
    fn checker(&self, c: &SnapshotCandidate) -> impl Fn(&[u8]) -> Result<trust::Writer, trust::Refusal> + Sync + '_ {
        let rel = c.key[self.prefix.len()..].to_string();
        let m = c.machine.clone();
        let sig = c.sig.clone();
        let (trust, keys) = (self.trust, self.keys);
        move |h: &[u8]| trust.check(&keys.public, &rel, Some(&m), h, sig.as_deref())
    }

    /// One snapshot (one machine, the usual case): it is the base, applied as it is read.
    async fn read_only_snapshot(&self, c: &SnapshotCandidate, last_try: bool) -> Result<Snapshots, RemoteError> {
        let (mut loaded, mut base) = (Vec::new(), Vec::new());
        let mut tree = self.new_tree();
        let SnapshotCandidate { key, len, machine: m, seq, write_only: wo, .. } = c;
        (self.progress)("snapshot", 1, 1);
        tree.applying = Some((m.clone(), *wo));
        let (t, r) = read::stream(self.store, self.sk, key, *len, Some(tree), &self.checker(c)).await?;
        tree = t.expect("the tree comes back");
        match r.and_then(|i| matches_key(i, m, *seq)) {
            Ok(info) => {
                loaded.push(info);
                base.push(0);
            }
            Err(e) if !last_try => return Err(RemoteError::Changed(format!("snapshot {key} cannot be read ({e})"))),
            Err(e) => {
                // Nothing it applied before failing stays, not even what it refused.
                tree = self.new_tree();
                tree.refused.push(format!("snapshot {key} cannot be read ({e}); replaying without it"));
            }
        }
        Ok((tree, loaded, base))
    }

    /// Several snapshots (or none): a first pass reads what each says besides its entries, and
    /// a second applies the base's.
    async fn read_snapshots(&self, latest_signed: &[SnapshotCandidate], last_try: bool) -> Result<Snapshots, RemoteError> {
        let mut loaded: Vec<read::SnapshotInfo> = Vec::new();
        let mut tree = self.new_tree();
        let mut read_from: Vec<usize> = Vec::new();
        for (i, c) in latest_signed.iter().enumerate() {
            let SnapshotCandidate { key, len, machine: m, seq, .. } = c;
            (self.progress)("snapshot", i + 1, latest_signed.len());
            match read::stream(self.store, self.sk, key, *len, None, &self.checker(c)).await?.1.and_then(|i| matches_key(i, m, *seq)) {
                Ok(info) => {
                    loaded.push(info);
                    read_from.push(i);
                }
                Err(e) if !last_try => return Err(RemoteError::Changed(format!("snapshot {key} cannot be read ({e})"))),
                Err(e) => tree.refused.push(format!("snapshot {key} cannot be read ({e}); replaying without it")),
            }
        }
        let mut order: Vec<usize> = (0..loaded.len()).collect();
        order.sort_by_key(|&i| (loaded[i].ts_ms, loaded[i].machine.clone()));
        // A write-only machine never read the bucket: its snapshot describes its own stream
        // only, and is never the base.
        let full = |i: usize| loaded[i].writer.as_ref().is_none_or(|w| w.role == trust::Role::Full);
        // An adopted snapshot (unsigned, in a vault that signs) is the base only when no
        // machine's signed snapshot can be (review N1).
        let signed = |i: usize| loaded[i].writer.as_ref().is_none_or(|w| !w.adopted);
        let base = match order.iter().rposition(|&i| !loaded[i].seen.is_empty() && full(i) && signed(i)) {
            Some(b) => vec![order[b]],
            None => match order.iter().rposition(|&i| !loaded[i].seen.is_empty() && full(i)) {
                Some(b) => vec![order[b]],
                None => order,
            },
        };
        for &b in &base {
            let c = &latest_signed[read_from[b]];
            let SnapshotCandidate { key, len, machine: m, write_only: wo, .. } = c;
            tree.applying = Some((m.clone(), *wo));
            (self.progress)("snapshot entries", 1, 1);
            let (t, r) = read::stream(self.store, self.sk, key, *len, Some(tree), &self.checker(c)).await?;
            tree = t.expect("the tree comes back");
            match r {
                Ok(info) if info == loaded[b] => {}
                Ok(_) => return Err(RemoteError::Changed(format!("snapshot {key} changed between two reads; run the rebuild again"))),
                Err(e) => return Err(RemoteError::Changed(format!("snapshot {key} could be read once but not twice ({e}); run the rebuild again"))),
            }
        }
        Ok((tree, loaded, base))
    }
}

/// What the base snapshots give the tree besides their entries: the clock floor, their
/// tombstones, and (from every snapshot read) the keys that stay dead. Returns, per machine,
/// how much of its journal the base covers.
fn start_from_base(tree: &mut Tree, loaded: &mut [read::SnapshotInfo], base: &[usize]) -> BTreeMap<String, i64> {
    let mut covered: BTreeMap<String, i64> = BTreeMap::new();
    for &b in base {
        let s = &loaded[b];
        for (m, q) in s.reflects() {
            // What another machine's snapshot holds of a revoked machine's files is not applied
            // (read.rs): its believed batches are replayed from the start instead (review N2).
            if m != s.machine && tree.revoked.contains_key(&m) {
                continue;
            }
            let c = covered.entry(m).or_insert(0);
            *c = (*c).max(q);
        }
        let wo = s.writer.as_ref().is_some_and(|w| w.role == trust::Role::WriteOnly);
        tree.max_ts = tree.max_ts.max(floor_time(s.ts_ms, wo));
        if !wo {
            for (path, at, by) in &s.tombstones {
                tree.note_tombstone(path.clone(), *at, by.clone().unwrap_or_else(|| s.machine.clone()));
            }
        }
    }
    for s in loaded.iter_mut() {
        // Dead keys stay dead whichever snapshot said so (keys are never reused); a write-only
        // machine's hide only objects it signed itself.
        let dead = std::mem::take(&mut s.dead_keys);
        match &s.writer {
            Some(trust::Writer { machine: Some(m), role: trust::Role::WriteOnly, .. }) => tree.dead_of.entry(m.clone()).or_default().extend(dead),
            _ => tree.mentioned.extend(dead),
        }
    }
    covered
}

impl Reader<'_> {
    /// Every machine's journal after what the base covers (`covered`): one stream per machine,
    /// and how many batches they hold together. A batch too large is refused; a journal that
    /// ends before what a believed snapshot saw of it is said in `notes`.
    async fn list_journals(
        &self,
        tree: &mut Tree,
        notes: &mut Vec<String>,
        loaded: &[read::SnapshotInfo],
        covered: &BTreeMap<String, i64>,
    ) -> Result<(BTreeMap<String, Stream>, usize), RemoteError> {
        let prefix = self.prefix;
        // What each machine's journal must reach, by what the believed snapshots say they saw.
        let mut claimed: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for s in loaded {
            for (m, q) in s.reflects() {
                let c = claimed.entry(m).or_insert((0, String::new()));
                if q > c.0 {
                    *c = (q, s.machine.clone());
                }
            }
        }
        let jl = self.store.list(&format!("{prefix}j/")).await?;
        // Per machine, the listed batches (first, last, key): not yet believed.
        let mut listed: BTreeMap<String, Vec<(i64, i64, String)>> = BTreeMap::new();
        let mut batches: Vec<(String, i64, i64, String, u64, i64)> = Vec::new();
        // Per machine the vault cannot believe, its batches (left unread) and one of their keys.
        let mut unread: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for o in &jl {
            let Some((m, a, b)) = parse_seq_key(&o.key[prefix.len() + 2..]) else { continue };
            if !self.trust.worth_reading(&o.key[prefix.len()..], &m) {
                let u = unread.entry(m).or_insert((0, o.key.clone()));
                u.0 += 1;
                continue;
            }
            listed.entry(m.clone()).or_default().push((a, b, o.key.clone()));
            if b <= covered.get(&m).copied().unwrap_or(0) {
                continue;
            }
            if o.size > MAX_BATCH_BYTES {
                tree.refused.push(format!("journal batch {} is {} bytes, larger than any batch coldvault writes; ignored", o.key, o.size));
                continue;
            }
            batches.push((m, a, b, o.key.clone(), o.size, o.modified_ms));
        }
        for (m, (n, key)) in unread {
            tree.refused.push(format!(
                "journal of machine {m}: {n} batch(es), e.g. {key}, not read: the vault allows no key of that machine (or revoked it), and adopted none of them"
            ));
        }
        // A journal that ends before what a believed snapshot saw of it lost its last batches
        // (removed, or the stream rolled back): reported, since nothing else would show it.
        // The journal reaches record q when a batch that holds it is believed (a junk key with
        // a high number, unsigned, proves nothing: review N8), or the machine's own believed
        // snapshot covers it.
        for (m, (q, by)) in &claimed {
            let own = loaded.iter().filter(|s| s.machine == *m).map(|s| s.covers_seq).max().unwrap_or(0);
            if own >= *q {
                continue;
            }
            let ranges = listed.get(m).map(Vec::as_slice).unwrap_or_default();
            let holder = ranges.iter().find(|(a, b, _)| a <= q && q <= b);
            let reached = match holder {
                Some((_, _, key)) => self.batch_believed(key, m).await?,
                None => false,
            };
            if !reached {
                let h = ranges.iter().map(|r| r.1).filter(|b| b < q).max().unwrap_or(0).max(own);
                notes.push(format!(
                    "journal of machine {m}: the bucket holds it up to record {h}, but the snapshot of machine {by} saw it up to {q}: its later batches were removed or rolled back"
                ));
            }
        }
        batches.sort_by_key(|a| (a.0.clone(), a.1));
        let total = batches.len();
        let mut streams: BTreeMap<String, Stream> = BTreeMap::new();
        for (m, first, last, key, size, landed) in batches {
            let done = covered.get(&m).copied().unwrap_or(0);
            let st = streams.entry(m).or_default();
            st.done = done;
            st.landed.insert(last, landed);
            st.batches.push_back((first, last, key, size));
        }
        Ok((streams, total))
    }

    /// Every machine's journal replayed from its first record (no snapshot read, no object
    /// adopted) within `ends`, telling `seen` of each step; `notes` and what the replay refused
    /// end up in the tree's `refused`.
    async fn replay_all(&self, mut notes: Vec<String>, ends: Ends, seen: &mut Seen<'_>) -> Result<Tree, RemoteError> {
        let mut tree = self.new_tree();
        let (streams, total) = self.list_journals(&mut tree, &mut notes, &[], &BTreeMap::new()).await?;
        self.replay_until(&mut tree, streams, total, BTreeMap::new(), ends, seen).await?;
        notes.append(&mut tree.refused);
        tree.refused = notes;
        tree.applying = None;
        tree.applying_ts = 0;
        Ok(tree)
    }

    /// Whether journal batch `key` of machine `m` is one the vault believes: its signature (a
    /// HEAD) over its header (its first 128 bytes). A batch that cannot be read is not.
    async fn batch_believed(&self, key: &str, m: &str) -> Result<bool, RemoteError> {
        let got = async {
            let h = self.store.head_object(key).await?;
            let header = self.store.get_range(key, 0, crypto::HEADER_LEN as u64).await?;
            Ok::<_, StoreError>((h.metadata.get(sign::META).cloned(), header))
        }
        .await;
        match got {
            Ok((sig, header)) => Ok(self.trust.check(&self.keys.public, &key[self.prefix.len()..], Some(m), &header, sig.as_deref()).is_ok()),
            Err(e) if stops_rebuild(&e) => Err(e.into()),
            Err(_) => Ok(false),
        }
    }

    /// Merge the machines' streams by time (ties by machine id), each stream in its own order:
    /// a change made after a rebuild is stamped after everything that rebuild saw (the clock
    /// floor), so a dead machine's older records never land on top of newer state. Each stream
    /// holds one batch at a time, read when its last record has been applied. The tree starts
    /// from having seen `covered`; machines whose clocks run ahead are listed as conflicts.
    async fn replay_journals(
        &self,
        tree: &mut Tree,
        streams: BTreeMap<String, Stream>,
        total: usize,
        covered: BTreeMap<String, i64>,
    ) -> Result<(), RemoteError> {
        self.replay_until(tree, streams, total, covered, Ends::default(), &mut |_, _| {}).await
    }

    /// `replay_journals`, stopped before the first record stamped after `cut` (every machine's
    /// journal cut there: the heads leave the merge in time order), telling `seen` after each
    /// record: the tree, the machine, the record's time and the path an upload asked for.
    async fn replay_until(
        &self,
        tree: &mut Tree,
        mut streams: BTreeMap<String, Stream>,
        total: usize,
        covered: BTreeMap<String, i64>,
        ends: Ends,
        seen: &mut Seen<'_>,
    ) -> Result<(), RemoteError> {
        let mut merge = Merge { refused: std::mem::take(&mut tree.refused), total, ..Default::default() };
        let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(i64, String)>> = std::collections::BinaryHeap::new();
        for (m, st) in streams.iter_mut() {
            if let Some(ts) = st.refill(self, m, &mut merge).await? {
                heads.push(std::cmp::Reverse((ts, m.clone())));
            }
        }
        tree.seen = covered;
        // Per machine, how far its newest record is ahead of this machine's clock.
        let now = crate::clock::now_ms();
        let mut ahead: BTreeMap<String, i64> = BTreeMap::new();
        let mut marked = ends.mark.is_none();
        while let Some(std::cmp::Reverse((ts, m))) = heads.pop() {
            // The mark comes before the first record stamped after it, or whose batch landed
            // after it (a clock stepped back, or stamps made up: a change that reached the
            // bucket after the mark is never counted before it; an unknown landing counts late).
            let landed = || {
                let st = streams.get(&m)?;
                let seq = st.recs.front()?.0.seq;
                st.landed.range(seq..).next().map(|(_, &t)| t)
            };
            if !marked && ends.mark.is_some_and(|t| ts > t || landed().is_none_or(|l| l == 0 || l > t)) {
                seen(tree, Step::Mark);
                marked = true;
            }
            if ends.stop.is_some_and(|t| ts > t) {
                break;
            }
            let st = streams.get_mut(&m).expect("a stream per head");
            let (r, role) = st.recs.pop_front().expect("a head has a record");
            if r.ts_ms - now > CLOCK_AHEAD_REPORTED {
                let a = ahead.entry(m.clone()).or_insert(0);
                *a = (*a).max(r.ts_ms - now);
            }
            let wo = role == trust::Role::WriteOnly;
            tree.max_ts = tree.max_ts.max(floor_time(r.ts_ms, wo));
            tree.applying = Some((m.clone(), wo));
            tree.applying_ts = r.ts_ms;
            let s = tree.seen.entry(m.clone()).or_insert(0);
            *s = (*s).max(r.seq);
            let asked = match &r.entry {
                Entry::Upload { path, key, .. } => Some((path.clone(), key.clone())),
                _ => None,
            };
            let discard = match &r.entry {
                Entry::Discard { key } => Some(key.clone()),
                _ => None,
            };
            match r.entry {
                Entry::Discard { key } if role == trust::Role::WriteOnly => {
                    tree.dead_of.entry(m.clone()).or_default().insert(key);
                }
                e => tree.apply_owned(e),
            }
            let upload = asked.as_ref().map(|(p, k)| (p.as_str(), k.as_str()));
            seen(tree, Step::Applied { machine: &m, ts: r.ts_ms, upload, discard: discard.as_deref() });
            if let Some(ts) = st.refill(self, &m, &mut merge).await? {
                heads.push(std::cmp::Reverse((ts, m)));
            }
        }
        if !marked {
            seen(tree, Step::Mark);
        }
        tree.applying_ts = 0;
        // Changes are weighed by their machines' clocks: one far ahead wins over newer changes of
        // other machines, and says so (docs/SEMANTICS.md, "Several machines").
        for (m, a) in ahead {
            tree.conflicts.push(format!(
                "machine {m}'s clock is ahead of this one's by {} min or more (its newest record is stamped {}): its changes count as newer than they are against other machines' (check its clock)",
                a / 60_000,
                crate::clock::fmt_ms(now + a)
            ));
        }
        // What the streams refused, then what replaying their records refused.
        merge.refused.append(&mut tree.refused);
        tree.refused = merge.refused;
        Ok(())
    }
}

/// An object in `P d/` that no snapshot or journal entry mentions, that can be read and is
/// believed: a file version whose journal batch never reached the bucket, to be adopted.
struct Orphan<'a> {
    object: &'a crate::store::ListEntry,
    /// Its storage class, from its HEAD.
    class: String,
    meta: crypto::ObjectMeta,
    header: Vec<u8>,
    writer: trust::Writer,
}

impl Reader<'_> {
    /// Data objects: classes from the listing; objects nothing mentions are read with HEAD, and
    /// those a file can take are adopted.
    async fn adopt_orphans(&self, tree: &mut Tree) -> Result<(), RemoteError> {
        let data = self.store.list(&format!("{}d/", self.prefix)).await?;
        let classes: std::collections::HashMap<&str, &str> = data.iter().map(|o| (o.key.as_str(), o.storage_class.as_str())).collect();
        for n in tree.nodes.values_mut() {
            if let (Some(k), Some(c)) = (&n.key, n.class.as_mut()) {
                if let Some(lc) = classes.get(k.as_str()) {
                    // Keep the Intelligent-Tiering archive detail a HEAD taught us.
                    if !(c.starts_with("INTELLIGENT_TIERING/") && *lc == "INTELLIGENT_TIERING") {
                        *c = lc.to_string();
                    }
                }
            }
        }
        let mut adopt = self.orphans(tree, &data).await?;
        // Full machines' orphans first: a write-only machine's cannot take their path before them;
        // then the newest version of each path first (the last seal wins: review N6, versions that
        // reached the bucket in the journal's last seconds before the machine was lost).
        adopt.sort_by_key(|a| (a.writer.role == trust::Role::WriteOnly, std::cmp::Reverse(a.meta.sealed_ms)));
        // When the version a path's node holds was sealed (0: unknown), read from its object once.
        let mut node_sealed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        // A version another unmentioned one replaced is that file's past, never a file of its own
        // (else it came back at its old path, beside the file that renames took elsewhere).
        let superseded: HashSet<String> = adopt.iter().filter_map(|a| a.meta.prev.clone()).collect();
        // Where each key is now (built once, only if a version names the one it replaced).
        let mut by_key: Option<std::collections::HashMap<String, String>> = None;
        for Orphan { object: o, class, meta: mut m, header, writer } in adopt {
            if superseded.contains(&o.key) {
                continue;
            }
            // The version it replaced is in the tree: this one takes its place, wherever renames
            // recorded after the seal took it (the path in its metadata is where it was sealed).
            let follows = m.prev.as_ref().and_then(|p| {
                let map = by_key.get_or_insert_with(|| tree.nodes.iter().filter_map(|(path, n)| n.key.clone().map(|k| (k, path.clone()))).collect());
                map.get(p).filter(|at| tree.nodes.get(*at).is_some_and(|n| n.key.as_ref() == Some(p))).cloned()
            });
            if let Some(at) = follows {
                tracing::warn!(path = %shown(&at), object = %o.key, "a newer version that reached the bucket but not the journal is taken");
                m.path = at;
            } else if let Some(n) = tree.nodes.get(&m.path) {
                if !self.replaces_held(n, &m, &writer, &o.key, &mut node_sealed).await? {
                    continue;
                }
            }
            node_sealed.insert(o.key.clone(), m.sealed_ms);
            if let Some(map) = by_key.as_mut() {
                map.insert(o.key.clone(), m.path.clone());
            }
            tree.applying = Some((writer.machine.clone().unwrap_or_default(), writer.role == trust::Role::WriteOnly));
            tree.applying_ts = m.sealed_ms;
            tree.apply(&Entry::Upload {
                path: m.path,
                key: o.key.clone(),
                size: m.size,
                mtime_ns: m.mtime_ns,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                class,
                sha256: m.sha256,
                header: B64.encode(header),
                xattrs: None,
                saw: None,
            });
        }
        Ok(())
    }

    /// The objects of `data` that no entry of `tree` mentions, read with HEAD, believed, and not
    /// said dead by their own machine (what cannot be is listed in `tree.refused`).
    async fn orphans<'d>(&self, tree: &mut Tree, data: &'d [crate::store::ListEntry]) -> Result<Vec<Orphan<'d>>, RemoteError> {
        let (store, keys, prefix) = (self.store, self.keys, self.prefix);
        let orphans: Vec<_> = data.iter().filter(|o| !tree.mentioned.contains(&o.key)).collect();
        let total = orphans.len();
        let mut adopt = Vec::new();
        for (k, o) in orphans.into_iter().enumerate() {
            (self.progress)("objects", k + 1, total);
            // An object gone since the listing is reported and skipped; the rest of the vault still
            // rebuilds. Any other error stops the rebuild, to be tried again whole: a HEAD answer
            // has no body, so expired credentials or a skewed clock arrive as a bare 400 or 403,
            // and skipping on those would give a tree without every object left after them.
            let h = match store.head_object(&o.key).await {
                Ok(h) => h,
                Err(StoreError::NotFound) => {
                    tree.refused.push(format!("object {}: gone since the listing; skipped", o.key));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (m, header) = match object_meta(keys, &o.key, &h.metadata) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(object = %o.key, error = %e, "skipping an object whose metadata cannot be read");
                    tree.refused.push(format!("object {}: {e}", o.key));
                    continue;
                }
            };
            let writer = match self.trust.check(&keys.public, &o.key[prefix.len()..], None, &header, h.metadata.get(sign::META).map(String::as_str)) {
                Ok(w) => w,
                Err(e) => {
                    tree.refused.push(format!("object {} (for {}) is not believed: {e}; not adopted", o.key, shown(&m.path)));
                    continue;
                }
            };
            if writer.machine.as_ref().is_some_and(|w| tree.dead_of.get(w).is_some_and(|d| d.contains(&o.key))) {
                continue; // its own machine said no live file uses it
            }
            if let Err(why) = check_path(&m.path) {
                tree.refused.push(format!("object {}: refused {why}", o.key));
                continue;
            }
            adopt.push(Orphan { object: o, class: h.class().to_string(), meta: m, header, writer });
        }
        Ok(adopt)
    }

    /// Whether the orphan `key` (metadata `m`, signed by `writer`) takes the path node `n` holds
    /// (a path the journal, or an adopted newer object, holds keeps its node otherwise).
    /// `node_sealed` remembers when the versions nodes hold were sealed (0: unknown).
    async fn replaces_held(
        &self,
        n: &Node,
        m: &crypto::ObjectMeta,
        writer: &trust::Writer,
        key: &str,
        node_sealed: &mut std::collections::HashMap<String, i64>,
    ) -> Result<bool, RemoteError> {
        // A path the journal (or an adopted newer object) holds keeps its node, unless the
        // node is a file of the same machine whose version was sealed before this one: the
        // machine wrote this version later and was lost before its journal said so.
        let same_machine = writer.machine.is_none() || n.owner.is_none() || n.owner == writer.machine;
        let Some(nk) = n.key.clone().filter(|_| n.kind == NodeKind::File && same_machine && m.sealed_ms > 0) else { return Ok(false) };
        // The node took this path when the entry that put it there was made: after this
        // version was sealed, it came there later (a rename, a newer upload) and stays.
        if n.changed_ms > 0 && n.changed_ms >= m.sealed_ms {
            return Ok(false);
        }
        let held = match node_sealed.get(&nk) {
            Some(t) => *t,
            None => {
                let t = match self.store.head_object(&nk).await {
                    Ok(h) => object_meta(self.keys, &nk, &h.metadata).map(|(nm, _)| nm.sealed_ms).unwrap_or(0),
                    Err(StoreError::NotFound) => 0,
                    Err(e) => return Err(e.into()),
                };
                node_sealed.insert(nk.clone(), t);
                t
            }
        };
        if held == 0 || held >= m.sealed_ms {
            return Ok(false); // an older object for a path that has a newer version or was replaced
        }
        tracing::warn!(path = %shown(&m.path), object = %key, replaced = %nk, "a newer version that reached the bucket but not the journal is taken");
        Ok(true)
    }
}
