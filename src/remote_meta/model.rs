//! The vocabulary of the bucket's metadata — the entries a journal batch records and a
//! snapshot lists — and the `Tree` they are replayed into: paths, nodes, who made each and
//! when, and what happens when machines that had not seen each other's changes disagree
//! (conflict copies, tombstones, what a write-only machine may change).

use super::{check_path, shown, RemoteError};
use crate::crypto;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// A file version is durable in S3 at `key` and lives at `path`.
    Upload {
        path: String,
        key: String,
        size: u64,
        #[serde(with = "crate::clock::nanos_json")]
        mtime_ns: crate::clock::Nanos,
        mode: u32,
        uid: u32,
        gid: u32,
        class: String,
        sha256: String,
        /// base64 of the 128-byte object header (reads need no extra GET).
        header: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xattrs: Option<String>,
        /// The version of the file at `path` this one replaced, as the writing machine knew it
        /// (`""`: none); absent in snapshots and in records of builds before it. A version
        /// another machine put there that the writer never saw is kept as a conflict copy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saw: Option<String>,
    },
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        #[serde(with = "crate::clock::nanos_json")]
        mtime_ns: crate::clock::Nanos,
    },
    Symlink {
        path: String,
        target: String,
        uid: u32,
        gid: u32,
        #[serde(with = "crate::clock::nanos_json")]
        mtime_ns: crate::clock::Nanos,
    },
    /// FIFO, socket or device node (`special` = `fifo:0`, `sock:0`, `chr:RDEV`, `blk:RDEV`).
    Special {
        path: String,
        special: String,
        mode: u32,
        uid: u32,
        gid: u32,
        #[serde(with = "crate::clock::nanos_json")]
        mtime_ns: crate::clock::Nanos,
    },
    Rename {
        from: String,
        to: String,
        /// The version of the file at `to` this rename replaced, as the renaming machine knew it
        /// (`""`: none, or not a file); absent in records of builds before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saw: Option<String>,
    },
    Remove {
        path: String,
        /// The version of the file this removal removed, as the removing machine knew it (`""`:
        /// none, or not a file); absent in records of builds before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saw: Option<String>,
    },
    /// The object at `key` is no file's live version (a version rewritten or deleted while its
    /// upload was on the wire, which may land after this record): never adopt it.
    Discard { key: String },
    Attr {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        #[serde(with = "crate::clock::nanos_json")]
        mtime_ns: crate::clock::Nanos,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xattrs: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: i64,
    pub ts_ms: i64,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch {
    pub machine: String,
    pub records: Vec<Record>,
}

/// A snapshot object's document, whole. Rebuilds never hold it: they stream it (`read`), and
/// `SnapshotWriter` writes it entry by entry; this form states the format, for tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub machine: String,
    /// Journal entries of this machine up to this sequence number are included.
    pub covers_seq: i64,
    pub ts_ms: i64,
    pub entries: Vec<Entry>,
    /// Keys of objects no live file uses (deleted or replaced files): never resurrected.
    #[serde(default)]
    pub dead_keys: Vec<String>,
    /// For every machine whose journal this snapshot reflects, the highest sequence number it
    /// reflects (its own: `covers_seq`; others': what its index imported when it was rebuilt).
    /// Empty in snapshots of earlier builds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Special,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: crate::clock::Nanos,
    pub size: u64,
    pub key: Option<String>,
    pub class: Option<String>,
    pub sha256: Option<String>,
    pub header: Option<Vec<u8>>,
    pub target: Option<String>,
    pub xattrs: Option<String>,
    /// The machine whose entry made this node what it is (`None`: no machine was named, as
    /// when a tree is replayed outside a rebuild).
    pub owner: Option<String>,
    /// When that entry was made (ms; 0: unknown, as in snapshots of builds before it): what a
    /// record of another machine that never saw this node is compared with (`Tree::apply`).
    pub changed_ms: i64,
}

/// Two nodes are the same when they describe the same thing; when they were made is history.
impl PartialEq for Node {
    fn eq(&self, o: &Node) -> bool {
        (self.kind, self.mode, self.uid, self.gid, self.mtime_ns, self.size) == (o.kind, o.mode, o.uid, o.gid, o.mtime_ns, o.size)
            && (&self.key, &self.class, &self.sha256, &self.header, &self.target, &self.xattrs, &self.owner)
                == (&o.key, &o.class, &o.sha256, &o.header, &o.target, &o.xattrs, &o.owner)
    }
}

impl Node {
    /// A folder with these attributes, owned by no machine.
    pub fn dir(mode: u32, uid: u32, gid: u32, mtime_ns: crate::clock::Nanos) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode,
            uid,
            gid,
            mtime_ns,
            size: 0,
            key: None,
            class: None,
            sha256: None,
            header: None,
            target: None,
            xattrs: None,
            owner: None,
            changed_ms: 0,
        }
    }
}

/// The vault's namespace as replayed from the bucket. Paths are vault-relative.
#[derive(Default, Debug)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    /// Object keys any snapshot or journal entry mentions (live or not).
    pub mentioned: HashSet<String>,
    /// Keys a write-only machine said no live file uses: they hide only objects it signed.
    pub dead_of: BTreeMap<String, HashSet<String>>,
    /// Entries refused (unsafe paths), with the reason.
    pub refused: Vec<String>,
    /// Per machine, the highest journal sequence number this tree reflects.
    pub seen: BTreeMap<String, i64>,
    /// The newest record or snapshot time replayed (the importing machine's clock floor).
    pub max_ts: i64,
    /// The vault signs its metadata (docs/FORMAT.md, section 8): the tree holds only what
    /// machines it allows signed. False for a vault of an older build — or one whose statements
    /// were deleted: a machine that knows the vault signs refuses such a tree (`check_signed`).
    pub signed: bool,
    /// Whose entries are being applied: the machine, and whether it is write-only. A write-only
    /// machine never read the bucket, so its entries only ever concern what it wrote itself:
    /// they change or remove nodes it owns, or add new ones, and nothing of another machine's.
    pub applying: Option<(String, bool)>,
    /// When the entry being applied was made (ms; 0: unknown).
    pub applying_ts: i64,
    /// What two machines that had not seen each other's changes disagreed on, and how it was
    /// settled (docs/SEMANTICS.md, "Several machines"): shown by the rebuild and `ls`.
    pub conflicts: Vec<String>,
    /// Paths removed, when, and by which machine, as far as the base snapshot and the replay
    /// know (`SnapshotWriter::tombstones`).
    pub tombstones: BTreeMap<String, (i64, String)>,
    /// Machines with a revoked key, and the highest journal record of theirs still believed
    /// (`Trust::revoked`): `rolled_back` does not count the end of what was revoked.
    pub revoked: BTreeMap<String, i64>,
    /// The revocations believed, as statement objects (`Trust::revocation_objects`).
    pub revocations: BTreeMap<String, String>,
    /// Machines the vault allows only as write-only: what they wrote is restored as data
    /// (`coldvault get`; review N6).
    pub write_only: std::collections::BTreeSet<String>,
}

impl Tree {
    /// Refuse a tree read as unsigned from a vault this machine knows signs (its statements were
    /// deleted: unsigned objects were believed).
    pub fn check_signed(&self, pinned: bool, prefix: &str) -> Result<(), RemoteError> {
        if pinned && !self.signed {
            return Err(RemoteError::Malformed(format!(
                "this vault signs its metadata, but none of its statements is left under {prefix}m/ (deleted?): its journal and snapshots cannot be told from forgeries; nothing was read"
            )));
        }
        Ok(())
    }
}

impl Tree {
    fn ensure_parents(&mut self, path: &str, uid: u32, gid: u32, mtime_ns: crate::clock::Nanos) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            match self.nodes.get(&acc) {
                Some(n) if n.kind == NodeKind::Dir => {}
                // A file where a folder must be: the folder is made, and a file version is
                // kept beside it as a conflict copy (another machine made a file of the name
                // the entry being applied puts a folder at).
                Some(_) | None => {
                    self.set_file_aside(&acc, &format!("put a folder here (for {})", shown(path)));
                    let mut d = Node::dir(0o755, uid, gid, mtime_ns);
                    d.owner = self.applying.as_ref().map(|a| a.0.clone());
                    self.nodes.insert(acc.clone(), d);
                }
            }
        }
    }

    /// A folder is made at `path`, where a file may be (another machine's, that the entry
    /// being applied never saw): the file is kept beside it as a conflict copy.
    fn set_file_aside(&mut self, path: &str, what: &str) {
        if self.nodes.get(path).is_some_and(|n| n.kind != NodeKind::File) {
            self.nodes.remove(path); // a link or special file is replaced
            return;
        }
        self.move_to_copy(path, |t, n| {
            format!("machine {} {what}; the file machine {} wrote there", t.applying_machine(), n.owner.clone().unwrap_or_default())
        });
    }

    /// Moves the file at `path` (if any) to its conflict copy's name, named by the machine that
    /// made it and when, and lists the conflict: `why` says what happened to it.
    fn move_to_copy(&mut self, path: &str, why: impl FnOnce(&Tree, &Node) -> String) {
        let Some(n) = self.nodes.remove(path) else { return };
        let c = self.copy_name(path, n.owner.as_deref(), n.changed_ms);
        let why = why(self, &n);
        self.conflicts.push(format!("{}: {why} is kept as {}", shown(path), shown(&c)));
        self.nodes.insert(c, n);
    }

    /// The nodes at `path` and below.
    fn subtree(&self, path: &str) -> impl Iterator<Item = (&String, &Node)> {
        let prefix = format!("{path}/");
        self.nodes.get_key_value(path).into_iter().chain(self.nodes.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)))
    }

    /// For a write-only machine's entry: why it may not do what it says, if it may not. It may
    /// add paths, and change or remove what it owns; where a folder it removes holds another
    /// machine's nodes, only its own go.
    fn write_only_refusal(&self, me: &str, e: &Entry) -> Option<String> {
        let theirs = |n: &Node| n.owner.as_deref() != Some(me);
        let other_in = |p: &str| self.subtree(p).any(|(_, n)| theirs(n));
        // No parent may be another machine's file or link (it would become a folder).
        let parent_taken = |p: &str| {
            let mut acc = String::new();
            let parts: Vec<&str> = p.split('/').collect();
            parts[..parts.len() - 1].iter().any(|c| {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(c);
                self.nodes.get(&acc).is_some_and(|n| n.kind != NodeKind::Dir && theirs(n))
            })
        };
        let why = match e {
            Entry::Upload { path, .. } | Entry::Symlink { path, .. } | Entry::Special { path, .. } => {
                (parent_taken(path) || other_in(path)).then(|| format!("{} is another machine's", shown(path)))
            }
            Entry::Mkdir { path, .. } => parent_taken(path).then(|| format!("a parent of {} is another machine's file", shown(path))),
            Entry::Rename { from, to, .. } => (other_in(from) || other_in(to) || parent_taken(to))
                .then(|| format!("{} or {} holds another machine's files", shown(from), shown(to))),
            Entry::Attr { path, .. } => {
                self.nodes.get(path).is_some_and(|n| n.kind != NodeKind::Dir && theirs(n)).then(|| format!("{} is another machine's", shown(path)))
            }
            Entry::Remove { .. } | Entry::Discard { .. } => None,
        };
        why.map(|w| format!("a write-only machine ({me}) changes what it did not write: {w}; not applied"))
    }

    fn has_children(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.nodes.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// `path` was removed by the entry being applied: remembered unless a later removal is.
    fn tombstone(&mut self, path: String) {
        if self.applying_ts > 0 {
            let by = self.applying_machine();
            self.note_tombstone(path, self.applying_ts, by);
        }
    }

    /// `path` was removed at `at` by machine `by`: kept unless a later removal is known.
    pub(super) fn note_tombstone(&mut self, path: String, at: i64, by: String) {
        if self.tombstones.get(&path).is_none_or(|t| t.0 < at) {
            self.tombstones.insert(path, (at, by));
        }
    }

    /// Node `n` was changed after the entry being applied was made, by another machine than
    /// the one applying it (`owner`): that entry never saw it, and the newer change stays.
    /// A change made over this very version (`saw`) saw it, whenever the node was last
    /// touched (a chmod or touch after it moves the node's time, not its version).
    fn newer_unseen(&self, n: &Node, owner: &Option<String>, saw: &Option<String>) -> bool {
        self.applying_ts > 0 && n.changed_ms > self.applying_ts && n.owner != *owner && !(saw.is_some() && n.key == *saw)
    }

    fn applying_machine(&self) -> String {
        self.applying.as_ref().map(|a| a.0.clone()).unwrap_or_else(|| "?".into())
    }

    /// A free name beside `path` for what lost a conflict: `NAME (conflict N).ext`.
    fn conflict_name(&self, path: &str) -> String {
        self.free_name_beside(path, |k| format!("conflict {k}"))
    }

    /// The name of the conflict copy of the version machine `by` made at `at_ms` of `path`:
    /// `NAME (conflict from MACHINE DATE).ext` (the first 8 characters of the machine id; the
    /// time in UTC without colons, which Windows refuses in names), with a number added if that
    /// is taken. Every rebuild gives the same name, whatever snapshot it starts from.
    fn copy_name(&self, path: &str, by: Option<&str>, at_ms: i64) -> String {
        let by: String = by.unwrap_or("unknown").chars().take(8).collect();
        let when = crate::clock::fmt_ms(at_ms).trim_end_matches(" UTC").replace(':', ".");
        self.free_name_beside(path, |k| if k == 1 { format!("conflict from {by} {when}") } else { format!("conflict from {by} {when} {k}") })
    }

    /// The first of `NAME (tag(1)).ext`, `NAME (tag(2)).ext`, ... beside `path` that no node has.
    fn free_name_beside(&self, path: &str, tag: impl Fn(usize) -> String) -> String {
        let (dir, stem, ext) = name_parts(path);
        (1..)
            .map(|k| {
                let n = format!("{stem} ({}){ext}", tag(k));
                if dir.is_empty() {
                    n
                } else {
                    format!("{dir}/{n}")
                }
            })
            .find(|p| !self.nodes.contains_key(p))
            .expect("a free name")
    }

    /// A conflict copy of `path` that holds version `key` (a change made over that version,
    /// replayed after a newer one took the path, continues or ends that copy: the same as when
    /// it is replayed in time order).
    fn copy_holding(&self, path: &str, key: &Option<String>) -> Option<String> {
        let key = key.as_deref().filter(|k| !k.is_empty())?;
        let (dir, stem, _) = name_parts(path);
        let start = if dir.is_empty() { format!("{stem} (conflict from ") } else { format!("{dir}/{stem} (conflict from ") };
        self.nodes
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .find(|(k, n)| n.key.as_deref() == Some(key) && !k[start.len()..].contains('/'))
            .map(|(k, _)| k.clone())
    }

    /// A change made over version `saw` of `path` replaces or removes that version wherever it
    /// is: when another machine's change the maker never saw moved it to a conflict copy
    /// first, the copy goes (in whichever order the two are replayed).
    fn drop_seen_copy(&mut self, path: &str, saw: &Option<String>) {
        if self.nodes.get(path).is_some_and(|n| n.key == *saw) {
            return;
        }
        if let Some(cp) = self.copy_holding(path, saw) {
            self.nodes.remove(&cp);
        }
    }

    /// The entry being applied (by machine `owner`) replaces or removes the file at `path`,
    /// having seen version `saw` there: a version another machine put there that it never saw
    /// is not dropped but moved beside, as a conflict copy. Records without `saw` (builds
    /// before it) are taken as having seen what is there.
    fn keep_unseen(&mut self, path: &str, saw: &Option<String>, owner: &Option<String>, what: &str) {
        let Some(saw) = saw else { return };
        if !self.nodes.get(path).is_some_and(|n| n.kind == NodeKind::File && n.owner != *owner && n.key.as_deref() != Some(saw.as_str())) {
            return;
        }
        self.move_to_copy(path, |t, n| {
            format!(
                "{what} by machine {} at {}, which had not seen the version machine {} wrote at {} (object {}): that version",
                t.applying_machine(),
                crate::clock::fmt_ms(t.applying_ts),
                n.owner.clone().unwrap_or_default(),
                crate::clock::fmt_ms(n.changed_ms),
                n.key.clone().unwrap_or_default()
            )
        });
    }

    fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    pub fn apply(&mut self, e: &Entry) {
        self.apply_owned(e.clone())
    }

    /// `apply`, taking the entry (a snapshot's entries are applied as they are parsed).
    pub fn apply_owned(&mut self, e: Entry) {
        if self.refuse_unsafe_path(&e) {
            return;
        }
        let owner = self.applying.as_ref().map(|a| a.0.clone());
        let mut e = e;
        if let Some((me, true)) = self.applying.clone() {
            if !self.write_only_admits(&me, &mut e) {
                return;
            }
        }
        self.mention(&e);
        match e {
            Entry::Upload { path, key, size, mtime_ns, mode, uid, gid, class, sha256, header, xattrs, saw } => {
                let path = self.upload_path(path, &key, &saw, &owner);
                let header = B64.decode(header).ok().filter(|h| h.len() == crypto::HEADER_LEN);
                let n = Node {
                    kind: NodeKind::File,
                    mode,
                    uid,
                    gid,
                    mtime_ns,
                    size,
                    key: Some(key),
                    class: Some(class),
                    sha256: Some(sha256),
                    header,
                    target: None,
                    xattrs,
                    owner,
                    changed_ms: self.applying_ts,
                };
                self.put_leaf(path, n);
            }
            Entry::Mkdir { path, mode, uid, gid, mtime_ns } => self.apply_mkdir(path, mode, uid, gid, mtime_ns, owner),
            Entry::Symlink { path, target, uid, gid, mtime_ns } => {
                let mut n = Node::dir(0o777, uid, gid, mtime_ns);
                n.kind = NodeKind::Symlink;
                n.size = target.len() as u64;
                n.target = Some(target);
                n.owner = owner;
                n.changed_ms = self.applying_ts;
                self.put_leaf(path, n);
            }
            Entry::Special { path, special, mode, uid, gid, mtime_ns } => {
                let mut n = Node::dir(mode, uid, gid, mtime_ns);
                n.kind = NodeKind::Special;
                n.target = Some(special);
                n.owner = owner;
                n.changed_ms = self.applying_ts;
                self.put_leaf(path, n);
            }
            Entry::Rename { from, to, saw } => self.apply_rename(from, to, saw, owner),
            Entry::Remove { path, saw } => self.apply_remove(path, saw, owner),
            Entry::Discard { .. } => {}
            Entry::Attr { path, mode, uid, gid, mtime_ns, xattrs } => self.apply_attr(path, mode, uid, gid, mtime_ns, xattrs),
        }
    }

    /// Refuses an entry that names a path that could escape the vault (listed in `refused`):
    /// true if it did.
    fn refuse_unsafe_path(&mut self, e: &Entry) -> bool {
        let path_of = |e: &Entry| -> Vec<String> {
            match e {
                Entry::Upload { path, .. }
                | Entry::Mkdir { path, .. }
                | Entry::Symlink { path, .. }
                | Entry::Special { path, .. }
                | Entry::Remove { path, .. }
                | Entry::Attr { path, .. } => vec![path.clone()],
                Entry::Rename { from, to, .. } => vec![from.clone(), to.clone()],
                Entry::Discard { .. } => vec![],
            }
        };
        for p in path_of(e) {
            if let Err(why) = check_path(&p) {
                self.refused.push(format!("refused a journal entry: {why}"));
                return true;
            }
        }
        // A write-only machine names only data objects it wrote (a mount would GET or restore
        // any key it named); every machine's versions carry what their content is checked by.
        let write_only = matches!(self.applying, Some((_, true)));
        let fields = match e {
            Entry::Upload { key, class, header, sha256, .. } => super::check_version(key, class, header, sha256, write_only),
            Entry::Discard { key } if write_only => super::check_version(key, "STANDARD", "", "-", true),
            _ => Ok(()),
        };
        if let Err(why) = fields {
            self.refused.push(format!("refused a journal entry: {why}"));
            return true;
        }
        false
    }

    /// An entry of the write-only machine `me`, before it is applied: false when nothing is
    /// left to do (it is refused, or it is a removal, done here its own way, or it names a folder
    /// that is not only its own); a version of a path that is another machine's is renamed to a
    /// conflict copy (`e` changes).
    fn write_only_admits(&mut self, me: &str, e: &mut Entry) -> bool {
        // A version it wrote of a path another machine's file or folder holds now: kept
        // beside it as a conflict copy (it may add paths; it may not replace another's).
        if let Entry::Upload { path, .. } = &mut *e {
            let theirs = self.subtree(path).any(|(_, n)| n.owner.as_deref() != Some(me));
            if theirs {
                let c = self.copy_name(path, Some(me), self.applying_ts);
                self.conflicts.push(format!(
                    "{}: another machine's; the version the write-only machine {me} uploaded at {} is kept as {}",
                    shown(path),
                    crate::clock::fmt_ms(self.applying_ts),
                    shown(&c)
                ));
                *path = c;
            }
        }
        if let Some(why) = self.write_only_refusal(me, e) {
            self.refused.push(why);
            return false;
        }
        match &*e {
            // A folder it removes keeps what other machines put there (and the folders
            // holding it); a folder it names that exists keeps its attributes.
            Entry::Remove { path, saw } => {
                self.remove_own(me, path, saw);
                false
            }
            // Nor the attributes of a folder that holds another machine's files.
            Entry::Mkdir { path, .. } | Entry::Attr { path, .. }
                if self.nodes.get(path).is_some_and(|n| n.owner.as_deref() != Some(me))
                    || self.subtree(path).any(|(_, n)| n.owner.as_deref() != Some(me)) =>
            {
                false
            }
            _ => true,
        }
    }

    /// The write-only machine `me` removes `path` (having seen version `saw` there): what it
    /// wrote goes, and a folder that holds what other machines put there stays.
    fn remove_own(&mut self, me: &str, path: &str, saw: &Option<String>) {
        // Its own version, a conflict copy by now, goes too.
        if let Some(cp) = self.copy_holding(path, saw).filter(|cp| self.nodes[cp].owner.as_deref() == Some(me)) {
            if self.nodes.get(path).is_none_or(|n| n.key != *saw) {
                self.nodes.remove(&cp);
            }
        }
        let mine: Vec<String> = self.subtree(path).filter(|(_, n)| n.owner.as_deref() == Some(me)).map(|(k, _)| k.clone()).collect();
        for k in mine.into_iter().rev() {
            let keep = self.subtree(&k).any(|(p, n)| *p != k && n.owner.as_deref() != Some(me));
            if !keep {
                self.remove_subtree(&k);
            }
        }
    }

    /// Mentioned once accepted: a refused entry hides no object. A write-only machine's
    /// keys hide only objects it signed itself (`dead_of`).
    fn mention(&mut self, e: &Entry) {
        if let Entry::Upload { key, .. } | Entry::Discard { key } = e {
            match &self.applying {
                Some((me, true)) => {
                    self.dead_of.entry(me.clone()).or_default().insert(key.clone());
                }
                _ => {
                    self.mentioned.insert(key.clone());
                }
            }
        }
    }

    /// Puts a file, link or special file `n` at `path`, making its parents. Only folders have
    /// contents: a link or special file replacing a folder replaces what was in it (else
    /// `photos/x -> ~/.ssh` could keep `photos/x/...`).
    fn put_leaf(&mut self, path: String, n: Node) {
        self.ensure_parents(&path, n.uid, n.gid, n.mtime_ns);
        self.remove_subtree(&path);
        self.nodes.insert(path, n);
    }

    /// Where the version `key` that machine `owner` uploaded for `path`, over version `saw`,
    /// goes: `path`, where the version it replaced was renamed since, or a conflict copy beside
    /// a newer change (listed in `conflicts`).
    fn upload_path(&mut self, path: String, key: &str, saw: &Option<String>, owner: &Option<String>) -> String {
        // The version it replaced was renamed away since (by a machine that had not
        // seen this one, its rename replayed first from a snapshot): the new version
        // follows it, as replaying in time order moves it.
        self.drop_seen_copy(&path, saw);
        let path = match saw.as_deref().filter(|k| !k.is_empty() && !self.nodes.contains_key(&path)) {
            Some(k) => {
                self.nodes.iter().find(|(_, n)| n.kind == NodeKind::File && n.key.as_deref() == Some(k)).map(|(p, _)| p.clone()).unwrap_or(path)
            }
            None => path,
        };
        // A version older than what another machine put at the path since (a snapshot
        // says when), or than a removal of the path made after it by another machine:
        // the newer change stays, and this version is kept beside it, a conflict copy.
        let why = if self.nodes.get(&path).is_some_and(|n| n.kind == NodeKind::Dir) && self.has_children(&path) {
            // A folder that holds files where this machine put a file: the folder and
            // its files stay, and the file goes beside it.
            Some("it is a folder that holds files".to_string())
        } else if let Some((at, by)) = self
            .tombstones
            .get(&path)
            .filter(|(at, by)| !self.nodes.contains_key(&path) && self.applying_ts > 0 && *at > self.applying_ts && owner.as_ref() != Some(by))
        {
            Some(format!("machine {by} removed it at {}", crate::clock::fmt_ms(*at)))
        } else {
            self.nodes
                .get(&path)
                .filter(|n| self.newer_unseen(n, owner, saw))
                .map(|n| format!("machine {} wrote a newer version at {}", n.owner.clone().unwrap_or_default(), crate::clock::fmt_ms(n.changed_ms)))
        };
        match why {
            Some(why) => {
                let c = self.copy_name(&path, owner.as_deref(), self.applying_ts);
                self.conflicts.push(format!(
                    "{}: {why}; the version machine {} uploaded at {} (object {key}) is kept as {}",
                    shown(&path),
                    self.applying_machine(),
                    crate::clock::fmt_ms(self.applying_ts),
                    shown(&c)
                ));
                c
            }
            None => {
                // An older version of another machine's that this one's writer never
                // saw: this one replaces it, and it is kept beside as a conflict copy.
                self.keep_unseen(&path, saw, owner, "replaced by a version");
                path
            }
        }
    }

    fn apply_mkdir(&mut self, path: String, mode: u32, uid: u32, gid: u32, mtime_ns: crate::clock::Nanos, owner: Option<String>) {
        self.ensure_parents(&path, uid, gid, mtime_ns);
        match self.nodes.get_mut(&path) {
            // A folder first created implicitly (as the parent of an earlier entry)
            // takes the attributes its own entry records.
            Some(n) if n.kind == NodeKind::Dir => {
                n.mode = mode;
                n.uid = uid;
                n.gid = gid;
                n.mtime_ns = mtime_ns;
                // A full machine's own entry for a folder makes it that machine's.
                if let Some((m, false)) = &self.applying {
                    n.owner = Some(m.clone());
                }
            }
            _ => {
                self.set_file_aside(&path, "made a folder here");
                let mut d = Node::dir(mode, uid, gid, mtime_ns);
                d.owner = owner;
                d.changed_ms = self.applying_ts;
                self.nodes.insert(path, d);
            }
        }
    }

    fn apply_rename(&mut self, from: String, to: String, saw: Option<String>, owner: Option<String>) {
        if !self.nodes.contains_key(&from) {
            return; // renamed before it was ever uploaded: its Upload names the new path
        }
        self.drop_seen_copy(&to, &saw);
        let moved: Vec<(String, Node)> = {
            let prefix = format!("{from}/");
            let mut v = vec![(from.clone(), self.nodes[&from].clone())];
            v.extend(self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, n)| (k.clone(), n.clone())));
            v
        };
        self.remove_subtree(&from);
        let to = self.rename_target(&from, to, &saw, &owner, &moved[0].1);
        self.remove_subtree(&to);
        let n0 = &moved[0].1;
        self.ensure_parents(&to, n0.uid, n0.gid, n0.mtime_ns);
        for (k, mut n) in moved {
            let nk = format!("{to}{}", &k[from.len()..]);
            if k == from {
                n.changed_ms = n.changed_ms.max(self.applying_ts);
                // The renaming machine put it there: a later change by its writer
                // that never saw the rename is weighed against it as another's.
                if owner.is_some() {
                    n.owner = owner.clone();
                }
            }
            self.nodes.insert(nk, n);
        }
        self.tombstone(from);
    }

    /// Where node `moved`, renamed from `from` to `to` by machine `owner` over version `saw`,
    /// goes: `to`, or a conflict name beside what it must not replace (listed in `conflicts`).
    fn rename_target(&mut self, from: &str, to: String, saw: &Option<String>, owner: &Option<String>, moved: &Node) -> String {
        // A folder renamed over a folder that holds what the renaming machine had not
        // seen (it was empty there): that stays, and the moved folder takes a
        // conflict name beside it.
        if self.nodes.get(&to).is_some_and(|n| n.kind == NodeKind::Dir) && self.has_children(&to) {
            let c = self.conflict_name(&to);
            self.conflicts.push(format!(
                "{}: moved to {} (machine {} renamed a folder over it, but it holds files that machine had not seen)",
                shown(from),
                shown(&c),
                self.applying_machine()
            ));
            c
        } else if let Some(n) = self.nodes.get(&to).filter(|n| n.kind == NodeKind::File && self.newer_unseen(n, owner, saw)) {
            // Over a newer version another machine wrote there unseen: that stays, and
            // the file moved (older) is kept beside it as a conflict copy.
            // Named as the moved node will be: the renaming machine's, at the rename.
            let (o, at) = (owner.clone().or(moved.owner.clone()), moved.changed_ms.max(self.applying_ts));
            let c = self.copy_name(&to, o.as_deref(), at);
            self.conflicts.push(format!(
                "{}: machine {} wrote a newer version at {}; {} renamed there by machine {} at {} is kept as {}",
                shown(&to),
                n.owner.clone().unwrap_or_default(),
                crate::clock::fmt_ms(n.changed_ms),
                shown(from),
                self.applying_machine(),
                crate::clock::fmt_ms(self.applying_ts),
                shown(&c)
            ));
            c
        } else {
            self.keep_unseen(&to, saw, owner, "replaced by a rename");
            to
        }
    }

    fn apply_remove(&mut self, path: String, saw: Option<String>, owner: Option<String>) {
        self.drop_seen_copy(&path, &saw);
        let (newer, dir_with_files) = match self.nodes.get(&path) {
            Some(n) if n.kind == NodeKind::Dir => (None, self.has_children(&path)),
            // A file written after this deletion by a machine the deleting one had not
            // seen (known when a snapshot describes it with its time): newer wins.
            Some(n) if self.newer_unseen(n, &owner, &saw) => (Some((n.owner.clone().unwrap_or_default(), n.changed_ms)), false),
            _ => (None, false),
        };
        if let Some((by, at)) = newer {
            self.conflicts.push(format!(
                "{}: kept the version machine {by} wrote at {}; its deletion by machine {} at {} is older",
                shown(&path),
                crate::clock::fmt_ms(at),
                self.applying_machine(),
                crate::clock::fmt_ms(self.applying_ts)
            ));
        } else if dir_with_files {
            // A machine removes a folder only once it is empty in its view (rmdir): what
            // is in it now, it had not seen.
            self.conflicts.push(format!(
                "{}: folder kept: machine {} removed it, but it holds files that machine had not seen",
                shown(&path),
                self.applying_machine()
            ));
        } else {
            // A version of another machine's the removing machine never saw is kept.
            self.keep_unseen(&path, &saw, &owner, "removed");
            self.remove_subtree(&path);
            self.tombstone(path);
        }
    }

    fn apply_attr(&mut self, path: String, mode: u32, uid: u32, gid: u32, mtime_ns: crate::clock::Nanos, xattrs: Option<String>) {
        // Not a change of version or place: the node's time (`at`) stays.
        if let Some(n) = self.nodes.get_mut(&path) {
            n.mode = mode;
            n.uid = uid;
            n.gid = gid;
            n.mtime_ns = mtime_ns;
            if xattrs.is_some() {
                n.xattrs = xattrs;
            }
        }
    }
}

/// `dir/stem.ext` as (dir, stem, ".ext"); a name with no extension (or only one, `.bashrc`)
/// is all stem.
fn name_parts(path: &str) -> (&str, &str, String) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (dir, s, format!(".{e}")),
        _ => (dir, name, String::new()),
    }
}
