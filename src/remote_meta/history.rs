//! The vault's history from the bucket alone: every machine's journal replayed from its first
//! record with the rules of a rebuild (`Tree::apply`, the merge by time), either cut at a time
//! (the tree as it was then: `coldvault ls --at`, `get --at`) or watched path by path (each
//! version a path held, from when to when: `coldvault ls --versions`).
//!
//! Times are those of the journal records: an upload counts from when it landed in the bucket,
//! a rename or a deletion from when it was made. Journal batches are never deleted (`compact`
//! removes older snapshots only), so a vault written by this format holds its whole history; a
//! machine's journal that starts later than its first record (a vault of an early build, which
//! compacted its journal) is reported, and its history starts where it does.

use super::{Node, NodeKind, Tree};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One version of a file as a path held it.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// The path that held it.
    pub path: String,
    /// The path its upload asked for: another one when the version was kept as a conflict copy.
    pub asked: String,
    /// From when the path held it (ms, the record's time) …
    pub from_ms: i64,
    /// … until when (`None`: it still does, as of the end of the replay).
    pub to_ms: Option<i64>,
    /// The machine whose change made the path hold it.
    pub machine: String,
    /// The file as it was: its object key, size, class at upload, times and mode.
    pub node: Node,
}

/// What a history replay found.
#[derive(Default)]
pub struct History {
    /// The tree as of the cut (or as of the newest record).
    pub tree: Tree,
    /// The versions the watched paths held, oldest first.
    pub versions: Vec<Version>,
}

/// Follows the watched paths through the replay, one record at a time.
pub(super) struct Watcher {
    watch: BTreeSet<String>,
    /// Per watched path, the version it holds now (an index into `versions`).
    holds: BTreeMap<String, usize>,
    /// Conflict copies made of uploads to a watched path, and that path.
    asked: BTreeMap<String, String>,
    pub(super) versions: Vec<Version>,
}

impl Watcher {
    pub(super) fn new(paths: &[String]) -> Watcher {
        Watcher { watch: paths.iter().cloned().collect(), holds: BTreeMap::new(), asked: BTreeMap::new(), versions: Vec::new() }
    }

    /// After a record of `machine` made at `ts` was applied to `tree`; `upload`: the path and key
    /// of the version it uploaded, if it did.
    pub(super) fn seen(&mut self, tree: &Tree, machine: &str, ts: i64, upload: Option<(&str, &str)>) {
        // An upload to a watched path that did not land there was kept as a conflict copy (two
        // machines wrote the path): that copy's versions belong to the path's history too.
        if let Some((p, k)) = upload {
            if self.watch.contains(p) && tree.nodes.get(p).and_then(|n| n.key.as_deref()) != Some(k) {
                if let Some((copy, _)) = tree.nodes.iter().find(|(_, n)| n.key.as_deref() == Some(k)) {
                    self.asked.insert(copy.clone(), p.to_string());
                    self.watch.insert(copy.clone());
                }
            }
        }
        let mut follow = Vec::new();
        for p in &self.watch {
            let now = tree.nodes.get(p).filter(|n| n.kind == NodeKind::File && n.key.is_some());
            let was = self.holds.get(p).map(|&i| &self.versions[i].node);
            if was.map(|n| &n.key) == now.map(|n| &n.key) {
                continue;
            }
            if let Some(i) = self.holds.remove(p) {
                self.versions[i].to_ms = Some(ts);
                // The version went on under another name (renamed, or kept as a conflict copy
                // when another machine's version took the path): it is followed there.
                let (key, asked) = (self.versions[i].node.key.clone(), self.versions[i].asked.clone());
                if let Some((moved, _)) = tree.nodes.iter().find(|(q, n)| n.key == key && *q != p) {
                    if !self.watch.contains(moved) {
                        self.asked.insert(moved.clone(), asked);
                        follow.push(moved.clone());
                    }
                }
            }
            if let Some(n) = now {
                self.holds.insert(p.clone(), self.versions.len());
                self.versions.push(held(p, &self.asked, n, ts, machine));
            }
        }
        // A path followed from now on starts with the version it holds now.
        for p in follow {
            self.watch.insert(p.clone());
            if let Some(n) = tree.nodes.get(&p).filter(|n| n.kind == NodeKind::File && n.key.is_some()) {
                self.holds.insert(p.clone(), self.versions.len());
                self.versions.push(held(&p, &self.asked, n, ts, machine));
            }
        }
    }
}

/// The version `n` that path `p` holds from `ts` on, made so by `machine`'s record.
fn held(p: &str, asked: &BTreeMap<String, String>, n: &Node, ts: i64, machine: &str) -> Version {
    Version {
        path: p.to_string(),
        asked: asked.get(p).cloned().unwrap_or_else(|| p.to_string()),
        from_ms: ts,
        to_ms: None,
        machine: n.owner.clone().unwrap_or_else(|| machine.to_string()),
        node: n.clone(),
    }
}

/// When each version was held, as far as prune must know (`remote_meta::lifetimes`): keys are
/// unique per version and a file's key only ever moves (rename) or goes (overwrite, removal),
/// so a version held at any time since the cut is one held at the cut or uploaded after it.
#[derive(Default)]
pub struct Lifetimes {
    /// The tree at the end of the replay.
    pub tree: Tree,
    /// Keys files hold at the end of the replay.
    pub live: HashSet<String>,
    /// Keys files held at the cut.
    pub live_at_cut: HashSet<String>,
    /// Keys a record stamped after the cut uploaded or set aside.
    pub after_cut: HashSet<String>,
    /// Per key a journal names: the path its upload was for (empty: set aside unused, a
    /// `Discard`), the record's time and machine.
    pub named: HashMap<String, Named>,
    /// Per machine, the time of its newest record.
    pub newest: BTreeMap<String, i64>,
    /// Per machine, the sequence number its newest believed snapshot covers.
    pub snapshots: BTreeMap<String, i64>,
    /// Keys the files of each machine's newest believed snapshot hold: what a mount still
    /// running shows, though other machines replaced them since (a mount reads the bucket's
    /// changes only when it rebuilds).
    pub in_snapshots: HashSet<String>,
    /// The replay has passed the cut: what it applies from now on counts as after it, whatever
    /// its stamp (a machine whose clock stepped back stamps a later record earlier).
    pub passed: bool,
}

/// Where and when a journal named a version.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    pub path: String,
    pub ts: i64,
    pub machine: String,
}

impl Lifetimes {
    /// After a record (`key`: the version it uploaded for `path`, or set aside unused when
    /// `path` is None).
    pub(super) fn applied(&mut self, machine: &str, ts: i64, key: Option<(Option<&str>, &str)>, cut: i64) {
        let n = self.newest.entry(machine.to_string()).or_insert(ts);
        *n = (*n).max(ts);
        if let Some((path, key)) = key {
            if ts > cut || self.passed {
                self.after_cut.insert(key.to_string());
            }
            self.named.insert(key.to_string(), Named { path: path.unwrap_or_default().to_string(), ts, machine: machine.to_string() });
        }
    }

    /// The keys `tree`'s files hold.
    pub(super) fn held(tree: &Tree) -> HashSet<String> {
        tree.nodes.values().filter_map(|n| n.key.clone()).collect()
    }
}
