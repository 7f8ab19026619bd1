//! Prune: which of the vault's objects can go, and what deleting them costs.
//!
//! A version goes when no file has held it for longer than `keep_within` (and it is not among
//! the `keep_last` newest uploaded for its path), unless it is still inside its storage
//! class's minimum duration (deleting it would be charged for the rest of it; allowed only when
//! asked) or its Object Lock retention (never). Keys are unique per version and a key only ever
//! moves (rename) or goes (overwrite, removal), so "held at some time since the cut" is "held at
//! the cut, or uploaded after it": `remote_meta::lifetimes` finds both in one replay.
//!
//! Kept whatever the rules say: every version a file holds now, in the journals' replay or in
//! a rebuild (snapshot, journals and adopted objects: what a mount would see), or in any
//! machine's newest snapshot (what a mount still running shows: it reads other machines'
//! changes only when it rebuilds); every object no
//! journal names (a rebuild adopts those: an upload whose journal batch never landed); and
//! every journal batch (they are the history, and hold no file data). Older snapshots of a
//! machine whose newer one is believed are removed.
//!
//! The plan is made from the bucket alone and acted on one object at a time, data first: an
//! interrupted prune has removed only objects a re-run would remove too.

use crate::remote_meta::history::Lifetimes;
use crate::remote_meta::parse_seq_key;
use crate::store::{ListEntry, ObjectStore, StoreError};
use crate::vault::StorageClass;
use std::collections::{BTreeMap, HashSet};

const DAY_MS: i64 = 86_400_000;

/// What the user asked prune to keep.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Versions superseded less than this long ago stay (ms).
    pub keep_within_ms: i64,
    /// The newest versions uploaded for each path that stay, however old (its current one
    /// counts as one; a removed file keeps its last ones too).
    pub keep_last: usize,
    /// Delete versions still inside their class's minimum duration (the rest of it is charged).
    pub allow_early_deletion: bool,
    /// The vault's Object Lock retention (days from each object's upload).
    pub lock_days: Option<u32>,
}

/// A version to delete.
#[derive(Clone, Debug, PartialEq)]
pub struct Doomed {
    pub key: String,
    pub size: u64,
    pub class: StorageClass,
    /// The path it was uploaded for (empty: set aside unused, never a file's).
    pub path: String,
    /// What deleting it now is charged for the rest of its class's minimum duration (USD).
    pub early_charge: f64,
}

/// Why a superseded version stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Inside its storage class's minimum duration.
    MinimumDuration,
    /// Inside its Object Lock retention.
    ObjectLock,
}

/// A version prune would delete but keeps, and until when.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub key: String,
    pub size: u64,
    pub class: StorageClass,
    pub until_ms: i64,
    pub hold: Hold,
}

/// What prune found and will do.
#[derive(Default, Debug)]
pub struct Plan {
    pub delete: Vec<Doomed>,
    pub held: Vec<Held>,
    /// Versions the rules keep: (count, bytes).
    pub kept: (u64, u64),
    /// Objects no journal names, kept: (count, bytes).
    pub orphans: (u64, u64),
    /// Older snapshots of machines whose newer snapshot is believed.
    pub snapshots: Vec<ListEntry>,
    /// Machines whose newest record is older than the cut, and its time: a change one of them
    /// made since and has not sent yet could name a version this prune removes.
    pub quiet: Vec<(String, i64)>,
}

impl Plan {
    pub fn delete_bytes(&self) -> u64 {
        self.delete.iter().map(|d| d.size).sum::<u64>() + self.snapshots.iter().map(|s| s.size).sum::<u64>()
    }
    pub fn early_charge(&self) -> f64 {
        self.delete.iter().map(|d| d.early_charge).sum()
    }
}

/// The plan for the vault under `prefix` at `now_ms`: `l` is its replay cut at
/// `now_ms - keep_within_ms`, `rebuilt_live` the keys a rebuild's files hold, `data` and
/// `snaps` the listings of `P d/` and `P s/`.
pub fn plan(
    l: &Lifetimes,
    rebuilt_live: &HashSet<String>,
    data: &[ListEntry],
    snaps: &[ListEntry],
    prefix: &str,
    now_ms: i64,
    rules: &Rules,
) -> Plan {
    let cut = now_ms.saturating_sub(rules.keep_within_ms);
    let mut last: HashSet<&str> = HashSet::new();
    if rules.keep_last > 0 {
        let mut per_path: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
        for (k, n) in &l.named {
            if !n.path.is_empty() {
                per_path.entry(n.path.as_str()).or_default().push((n.ts, k.as_str()));
            }
        }
        for v in per_path.values_mut() {
            v.sort_by(|a, b| b.cmp(a));
            last.extend(v.iter().take(rules.keep_last).map(|(_, k)| *k));
        }
    }
    let mut p = Plan::default();
    for o in data {
        let keep = l.live.contains(&o.key)
            || l.live_at_cut.contains(&o.key)
            || l.after_cut.contains(&o.key)
            || rebuilt_live.contains(&o.key)
            || l.in_snapshots.contains(&o.key)
            || last.contains(o.key.as_str());
        let Some(named) = l.named.get(&o.key) else {
            p.orphans.0 += 1;
            p.orphans.1 += o.size;
            continue;
        };
        if keep {
            p.kept.0 += 1;
            p.kept.1 += o.size;
            continue;
        }
        let class = StorageClass::parse(&o.storage_class);
        // An object whose listing gave no time counts as written now: nothing is deleted early
        // for want of a date.
        let written = if o.modified_ms > 0 { o.modified_ms } else { now_ms };
        if let Some(days) = rules.lock_days {
            let until = written.saturating_add(days as i64 * DAY_MS);
            if until > now_ms {
                p.held.push(Held { key: o.key.clone(), size: o.size, class, until_ms: until, hold: Hold::ObjectLock });
                continue;
            }
        }
        let min_until = written.saturating_add(class.minimum_days() as i64 * DAY_MS);
        let early_charge = if min_until > now_ms { charge(&class, o.size, min_until - now_ms) } else { 0.0 };
        if min_until > now_ms && !rules.allow_early_deletion {
            p.held.push(Held { key: o.key.clone(), size: o.size, class, until_ms: min_until, hold: Hold::MinimumDuration });
            continue;
        }
        p.delete.push(Doomed { key: o.key.clone(), size: o.size, class, path: named.path.clone(), early_charge });
    }
    for s in snaps {
        let Some(rest) = s.key.strip_prefix(prefix).and_then(|r| r.strip_prefix("s/")) else { continue };
        if let Some((m, _, last)) = parse_seq_key(rest) {
            if l.snapshots.get(&m).is_some_and(|&covers| last < covers) {
                p.snapshots.push(s.clone());
            }
        }
    }
    p.quiet = l.newest.iter().filter(|(_, &t)| t < cut).map(|(m, &t)| (m.clone(), t)).collect();
    p.delete.sort_by(|a, b| a.key.cmp(&b.key));
    p
}

/// What S3 charges for deleting `size` bytes of `class` `left_ms` before its minimum duration
/// ends: that storage for the rest of it, at us-east-1 list prices.
pub fn charge(class: &StorageClass, size: u64, left_ms: i64) -> f64 {
    let gb = size as f64 / (1u64 << 30) as f64;
    let months = left_ms.max(0) as f64 / (30.0 * DAY_MS as f64);
    gb * class.usd_per_gb_month() * months
}

/// Deletes what `plan` says, data first, then snapshots; `done(n, total)` after each. An error
/// stops it, with how many objects were deleted: a re-run plans again from the bucket.
pub async fn execute(store: &dyn ObjectStore, plan: &Plan, done: &(dyn Fn(usize, usize) + Sync)) -> Result<usize, (usize, String, StoreError)> {
    let keys: Vec<&str> = plan.delete.iter().map(|d| d.key.as_str()).chain(plan.snapshots.iter().map(|s| s.key.as_str())).collect();
    for (i, k) in keys.iter().enumerate() {
        store.delete_object(k).await.map_err(|e| (i, k.to_string(), e))?;
        done(i + 1, keys.len());
    }
    Ok(keys.len())
}

/// A duration as `prune --keep-within` takes it: a number and a unit, `d` (days), `w`
/// (weeks), `m` (months of 30 days), `y` (years of 365 days) or `h` (hours); in ms.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(unit_at);
    let n: i64 = n.parse().map_err(|_| format!("{s:?} is not a duration: write it as 90d, 12w, 6m or 1y"))?;
    let ms = match unit {
        "h" => 3_600_000,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        "m" => 30 * DAY_MS,
        "y" => 365 * DAY_MS,
        _ => return Err(format!("{s:?} is not a duration: write it as 90d, 12w, 6m or 1y (h, d, w, m, y)")),
    };
    n.checked_mul(ms).ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests;
