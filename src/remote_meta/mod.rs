//! Metadata in the bucket: the journal of namespace changes, index snapshots, and the replay
//! that rebuilds the tree from them — so the bucket alone (plus the passphrase) is a complete
//! backup, and write-only machines can still describe what they did.
//!
//! * Every namespace change (upload completed, mkdir, symlink, rename, remove, attribute or
//!   xattr change) is appended to the `journal` table in the same lock as the change itself.
//! * The journal task (`run`) uploads pending entries as one encrypted object per batch,
//!   `P j/<machine>/<first seq>-<last seq>`, every `journal_interval` or 1,000 entries, on
//!   `flush` and at unmount. Re-uploading a batch after a crash writes the same key.
//! * After `snapshot_every` entries, or half as many as the last snapshot had if that is more
//!   (and at least daily while changes happen), the whole index is uploaded as
//!   `P s/<machine>/<covered seq>`; with delete rights, older journal batches and
//!   snapshots of this machine are then removed (compaction).
//! * Replay (`Tree::apply`) = latest snapshot per machine + later batches in order + objects in
//!   `P d/` that no entry mentions (uploads whose journal batch was lost), read with HeadObject
//!   (works on archived objects too; nothing is restored).
//!
//! All objects use the file format of docs/FORMAT.md (sealed to the vault public key), so a
//! write-only mount can write them and only the passphrase can read them.

use crate::crypto::sign::{self, MachineSigner};
use crate::crypto::{self, Header, ObjectMeta, Opened, VaultKeys};
use crate::store::{ObjectStore, PutOptions, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;

pub mod journal;
pub mod read;
pub mod trust;
pub use journal::JournalConfig;

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

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("S3: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {err}")]
    Crypto { what: String, err: crypto::CryptoError },
    #[error("{0}")]
    Malformed(String),
    #[error("this mount has no private key (write-only): it cannot read the bucket's metadata")]
    WriteOnly,
    /// A snapshot changed or vanished while being read (a machine replacing or compacting it):
    /// the rebuild starts over once, then reports this.
    #[error("{0}")]
    Changed(String),
}

/// Refuse paths that could escape the vault or a restore directory.
/// A path from the bucket as it may be printed on a terminal: control characters (a forged name
/// could carry `\r` or escape sequences that hide or fake lines of output) are escaped.
pub fn shown(p: &str) -> std::borrow::Cow<'_, str> {
    if p.chars().any(char::is_control) {
        std::borrow::Cow::Owned(p.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect())
    } else {
        std::borrow::Cow::Borrowed(p)
    }
}

pub fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.starts_with('/') {
        return Err(format!("absolute path {p:?}"));
    }
    if p.contains('\0') {
        return Err(format!("path with NUL {p:?}"));
    }
    if p.len() > crate::meta::MAX_PATH {
        return Err(format!("path longer than {} bytes", crate::meta::MAX_PATH));
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("path with an empty, '.' or '..' component {p:?}"));
        }
        if c.len() > crate::meta::MAX_NAME {
            return Err(format!("name longer than {} bytes in {p:?}", crate::meta::MAX_NAME));
        }
    }
    Ok(())
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
    fn dir(mode: u32, uid: u32, gid: u32, mtime_ns: crate::clock::Nanos) -> Node {
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

    /// The nodes at `path` and below.
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
    fn note_tombstone(&mut self, path: String, at: i64, by: String) {
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
        let when = crate::restore::fmt_ms(at_ms).trim_end_matches(" UTC").replace(':', ".");
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
                crate::restore::fmt_ms(t.applying_ts),
                n.owner.clone().unwrap_or_default(),
                crate::restore::fmt_ms(n.changed_ms),
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
        for p in path_of(&e) {
            if let Err(why) = check_path(&p) {
                self.refused.push(format!("refused a journal entry: {why}"));
                return;
            }
        }
        let owner = self.applying.as_ref().map(|a| a.0.clone());
        let mut e = e;
        if let Some((me, true)) = self.applying.clone() {
            // A version it wrote of a path another machine's file or folder holds now: kept
            // beside it as a conflict copy (it may add paths; it may not replace another's).
            if let Entry::Upload { path, .. } = &mut e {
                let theirs = self.subtree(path).any(|(_, n)| n.owner.as_deref() != Some(me.as_str()));
                if theirs {
                    let c = self.copy_name(path, Some(&me), self.applying_ts);
                    self.conflicts.push(format!(
                        "{}: another machine's; the version the write-only machine {me} uploaded at {} is kept as {}",
                        shown(path),
                        crate::restore::fmt_ms(self.applying_ts),
                        shown(&c)
                    ));
                    *path = c;
                }
            }
            if let Some(why) = self.write_only_refusal(&me, &e) {
                self.refused.push(why);
                return;
            }
            match &e {
                // A folder it removes keeps what other machines put there (and the folders
                // holding it); a folder it names that exists keeps its attributes.
                Entry::Remove { path, saw } => {
                    // Its own version, a conflict copy by now, goes too.
                    if let Some(cp) = self.copy_holding(path, saw).filter(|cp| self.nodes[cp].owner.as_deref() == Some(me.as_str())) {
                        if self.nodes.get(path).is_none_or(|n| n.key != *saw) {
                            self.nodes.remove(&cp);
                        }
                    }
                    let mine: Vec<String> =
                        self.subtree(path).filter(|(_, n)| n.owner.as_deref() == Some(me.as_str())).map(|(k, _)| k.clone()).collect();
                    for k in mine.into_iter().rev() {
                        let keep = self.subtree(&k).any(|(p, n)| *p != k && n.owner.as_deref() != Some(me.as_str()));
                        if !keep {
                            self.remove_subtree(&k);
                        }
                    }
                    return;
                }
                // Nor the attributes of a folder that holds another machine's files.
                Entry::Mkdir { path, .. } | Entry::Attr { path, .. }
                    if self.nodes.get(path).is_some_and(|n| n.owner.as_deref() != Some(me.as_str()))
                        || self.subtree(path).any(|(_, n)| n.owner.as_deref() != Some(me.as_str())) =>
                {
                    return
                }
                _ => {}
            }
        }
        // Mentioned once accepted: a refused entry hides no object. A write-only machine's
        // keys hide only objects it signed itself (`dead_of`).
        if let Entry::Upload { key, .. } | Entry::Discard { key } = &e {
            match &self.applying {
                Some((me, true)) => {
                    self.dead_of.entry(me.clone()).or_default().insert(key.clone());
                }
                _ => {
                    self.mentioned.insert(key.clone());
                }
            }
        }
        match e {
            Entry::Upload { path, key, size, mtime_ns, mode, uid, gid, class, sha256, header, xattrs, saw } => {
                // The version it replaced was renamed away since (by a machine that had not
                // seen this one, its rename replayed first from a snapshot): the new version
                // follows it, as replaying in time order moves it.
                self.drop_seen_copy(&path, &saw);
                let path = match saw.as_deref().filter(|k| !k.is_empty() && !self.nodes.contains_key(&path)) {
                    Some(k) => self
                        .nodes
                        .iter()
                        .find(|(_, n)| n.kind == NodeKind::File && n.key.as_deref() == Some(k))
                        .map(|(p, _)| p.clone())
                        .unwrap_or(path),
                    None => path,
                };
                // A version older than what another machine put at the path since (a snapshot
                // says when), or than a removal of the path made after it by another machine:
                // the newer change stays, and this version is kept beside it, a conflict copy.
                let why = if self.nodes.get(&path).is_some_and(|n| n.kind == NodeKind::Dir) && self.has_children(&path) {
                    // A folder that holds files where this machine put a file: the folder and
                    // its files stay, and the file goes beside it.
                    Some("it is a folder that holds files".to_string())
                } else if let Some((at, by)) = self.tombstones.get(&path).filter(|(at, by)| {
                    !self.nodes.contains_key(&path) && self.applying_ts > 0 && *at > self.applying_ts && owner.as_ref() != Some(by)
                }) {
                    Some(format!("machine {by} removed it at {}", crate::restore::fmt_ms(*at)))
                } else {
                    self.nodes.get(&path).filter(|n| self.newer_unseen(n, &owner, &saw)).map(|n| {
                        format!("machine {} wrote a newer version at {}", n.owner.clone().unwrap_or_default(), crate::restore::fmt_ms(n.changed_ms))
                    })
                };
                let path = match why {
                    Some(why) => {
                        let c = self.copy_name(&path, owner.as_deref(), self.applying_ts);
                        self.conflicts.push(format!(
                            "{}: {why}; the version machine {} uploaded at {} (object {key}) is kept as {}",
                            shown(&path),
                            self.applying_machine(),
                            crate::restore::fmt_ms(self.applying_ts),
                            shown(&c)
                        ));
                        c
                    }
                    None => {
                        // An older version of another machine's that this one's writer never
                        // saw: this one replaces it, and it is kept beside as a conflict copy.
                        self.keep_unseen(&path, &saw, &owner, "replaced by a version");
                        path
                    }
                };
                self.ensure_parents(&path, uid, gid, mtime_ns);
                self.remove_subtree(&path);
                let header = B64.decode(header).ok().filter(|h| h.len() == crypto::HEADER_LEN);
                self.nodes.insert(
                    path,
                    Node {
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
                    },
                );
            }
            Entry::Mkdir { path, mode, uid, gid, mtime_ns } => {
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
            Entry::Symlink { path, target, uid, gid, mtime_ns } => {
                self.ensure_parents(&path, uid, gid, mtime_ns);
                // Only folders have contents: a link or special file replacing a folder
                // replaces what was in it (else `photos/x -> ~/.ssh` could keep `photos/x/...`).
                self.remove_subtree(&path);
                let mut n = Node::dir(0o777, uid, gid, mtime_ns);
                n.kind = NodeKind::Symlink;
                n.size = target.len() as u64;
                n.target = Some(target);
                n.owner = owner;
                n.changed_ms = self.applying_ts;
                self.nodes.insert(path, n);
            }
            Entry::Special { path, special, mode, uid, gid, mtime_ns } => {
                self.ensure_parents(&path, uid, gid, mtime_ns);
                self.remove_subtree(&path);
                let mut n = Node::dir(mode, uid, gid, mtime_ns);
                n.kind = NodeKind::Special;
                n.target = Some(special);
                n.owner = owner;
                n.changed_ms = self.applying_ts;
                self.nodes.insert(path, n);
            }
            Entry::Rename { from, to, saw } => {
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
                // A folder renamed over a folder that holds what the renaming machine had not
                // seen (it was empty there): that stays, and the moved folder takes a
                // conflict name beside it.
                let to = if self.nodes.get(&to).is_some_and(|n| n.kind == NodeKind::Dir) && self.has_children(&to) {
                    let c = self.conflict_name(&to);
                    self.conflicts.push(format!(
                        "{}: moved to {} (machine {} renamed a folder over it, but it holds files that machine had not seen)",
                        shown(&from),
                        shown(&c),
                        self.applying_machine()
                    ));
                    c
                } else if let Some(n) = self.nodes.get(&to).filter(|n| n.kind == NodeKind::File && self.newer_unseen(n, &owner, &saw)) {
                    // Over a newer version another machine wrote there unseen: that stays, and
                    // the file moved (older) is kept beside it as a conflict copy.
                    // Named as the moved node will be: the renaming machine's, at the rename.
                    let (o, at) = (owner.clone().or(moved[0].1.owner.clone()), moved[0].1.changed_ms.max(self.applying_ts));
                    let c = self.copy_name(&to, o.as_deref(), at);
                    self.conflicts.push(format!(
                        "{}: machine {} wrote a newer version at {}; {} renamed there by machine {} at {} is kept as {}",
                        shown(&to),
                        n.owner.clone().unwrap_or_default(),
                        crate::restore::fmt_ms(n.changed_ms),
                        shown(&from),
                        self.applying_machine(),
                        crate::restore::fmt_ms(self.applying_ts),
                        shown(&c)
                    ));
                    c
                } else {
                    self.keep_unseen(&to, &saw, &owner, "replaced by a rename");
                    to
                };
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
            Entry::Remove { path, saw } => {
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
                        crate::restore::fmt_ms(at),
                        self.applying_machine(),
                        crate::restore::fmt_ms(self.applying_ts)
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
            Entry::Discard { .. } => {}
            Entry::Attr { path, mode, uid, gid, mtime_ns, xattrs } => {
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

/// A snapshot written entry by entry into a sealed object (the JSON of `Snapshot`, its fields
/// in another order), so that memory stays at one entry and one segment however large the
/// index: entries first, then dead keys, then `finish` with the fields known at the end.
pub struct SnapshotWriter<W: std::io::Write> {
    out: std::io::BufWriter<crypto::StreamSealer<W>>,
    in_dead_keys: bool,
    first: bool,
    entries: u64,
    tombstones: Vec<(String, i64, Option<String>)>,
}

impl<W: std::io::Write> SnapshotWriter<W> {
    pub fn new(keys: &VaultKeys, out: W) -> std::io::Result<SnapshotWriter<W>> {
        let mut out =
            std::io::BufWriter::with_capacity(crypto::SEGMENT as usize, crypto::StreamSealer::new(&keys.public, out).map_err(std::io::Error::other)?);
        out.write_all(b"{\"entries\":[")?;
        Ok(SnapshotWriter { out, in_dead_keys: false, first: true, entries: 0, tombstones: Vec::new() })
    }

    fn comma(&mut self) -> std::io::Result<()> {
        if !std::mem::replace(&mut self.first, false) {
            self.out.write_all(b",")?;
        }
        Ok(())
    }

    pub fn entry(&mut self, e: &Entry) -> std::io::Result<()> {
        self.entry_by(e, None)
    }

    /// An entry that another machine's journal or snapshot made (`by`: that machine): the entry
    /// object gets a `"by"` field (builds before it ignore it).
    pub fn entry_by(&mut self, e: &Entry, by: Option<&str>) -> std::io::Result<()> {
        self.entry_at(e, by, None)
    }

    /// `entry_by`, with the time the node was last changed (`"at"`, ms): a rebuild compares it
    /// with the records of machines this snapshot had not seen (builds before it ignore it).
    pub fn entry_at(&mut self, e: &Entry, by: Option<&str>, at: Option<i64>) -> std::io::Result<()> {
        assert!(!self.in_dead_keys, "snapshot entries come before dead keys");
        self.comma()?;
        if by.is_none() && at.is_none() {
            serde_json::to_writer(&mut self.out, e)?;
        } else {
            let mut v = serde_json::to_vec(e)?;
            v.pop(); // the object's closing brace
            self.out.write_all(&v)?;
            if let Some(m) = by {
                self.out.write_all(b",\"by\":")?;
                serde_json::to_writer(&mut self.out, m)?;
            }
            if let Some(t) = at {
                write!(self.out, ",\"at\":{t}")?;
            }
            self.out.write_all(b"}")?;
        }
        self.entries += 1;
        Ok(())
    }

    fn end_entries(&mut self) -> std::io::Result<()> {
        if !self.in_dead_keys {
            self.out.write_all(b"],\"dead_keys\":[")?;
            self.in_dead_keys = true;
            self.first = true;
        }
        Ok(())
    }

    pub fn dead_key(&mut self, key: &str) -> std::io::Result<()> {
        self.end_entries()?;
        self.comma()?;
        serde_json::to_writer(&mut self.out, key)?;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Paths removed recently, when, and by which machine (`None`: the snapshot's own), written
    /// by `finish` (`"tombstones"`; builds before it ignore them).
    pub fn tombstones(&mut self, t: Vec<(String, i64, Option<String>)>) {
        self.tombstones = t;
    }

    /// Close the document; returns the output and the sealed object's length.
    pub fn finish(mut self, machine: &str, covers_seq: i64, ts_ms: i64, seen: &BTreeMap<String, i64>) -> std::io::Result<(W, u64)> {
        self.end_entries()?;
        self.out.write_all(b"],\"machine\":")?;
        serde_json::to_writer(&mut self.out, machine)?;
        write!(self.out, ",\"covers_seq\":{covers_seq},\"ts_ms\":{ts_ms}")?;
        if !seen.is_empty() {
            self.out.write_all(b",\"seen\":")?;
            serde_json::to_writer(&mut self.out, seen)?;
        }
        if !self.tombstones.is_empty() {
            self.out.write_all(b",\"tombstones\":")?;
            let t = std::mem::take(&mut self.tombstones);
            serde_json::to_writer(&mut self.out, &t)?;
        }
        self.out.write_all(b"}")?;
        self.out.into_inner().map_err(|e| e.into_error())?.finish()
    }
}

/// Encrypt a JSON document as one vault object (format v1).
pub fn seal_json<T: Serialize>(keys: &VaultKeys, v: &T) -> Vec<u8> {
    let json = serde_json::to_vec(v).expect("serialize");
    let mut out = Vec::with_capacity(json.len() + 256);
    crypto::encrypt_stream(&keys.public, json.len() as u64, &mut &json[..], &mut out).expect("in-memory encryption");
    out
}

pub fn open_json<T: for<'de> Deserialize<'de>>(keys: &VaultKeys, key: &str, body: &[u8]) -> Result<T, RemoteError> {
    let pt = open_plain(keys, key, body)?;
    serde_json::from_slice(&pt).map_err(|e| RemoteError::Malformed(format!("{key}: {e}")))
}

/// The plaintext of a sealed metadata object.
fn open_plain(keys: &VaultKeys, key: &str, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let size =
        crypto::plaintext_len(body.len() as u64).ok_or_else(|| RemoteError::Malformed(format!("{key}: impossible object length {}", body.len())))?;
    let cerr = |err| RemoteError::Crypto { what: format!("object {key}"), err };
    let h = Header::parse(body).map_err(cerr)?;
    let o = Opened::open(sk, &h).map_err(cerr)?;
    o.decrypt_all(size, body).map_err(cerr)
}

/// Decrypt an object's user metadata (works on archived objects: HeadObject only).
pub fn object_meta(keys: &VaultKeys, key: &str, md: &std::collections::HashMap<String, String>) -> Result<(ObjectMeta, Vec<u8>), RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let get = |n: &str| md.get(n).and_then(|v| B64.decode(v).ok()).ok_or_else(|| RemoteError::Malformed(format!("{key}: no {n} metadata")));
    let hb = get("cvh")?;
    let cerr = |err| RemoteError::Crypto { what: format!("metadata of {key}"), err };
    let h = Header::parse(&hb).map_err(cerr)?;
    let o = Opened::open(sk, &h).map_err(cerr)?;
    Ok((o.decrypt_meta(&get("cvm")?).map_err(cerr)?, hb))
}

/// Parse `P j/<machine>/<first>-<last>` and `P s/<machine>/<seq>` keys, in the one form
/// coldvault writes them (16 decimal digits each): `0-5` or `+3` would sort a forged batch
/// before the honest ones, or let one range have two keys.
pub fn parse_seq_key(rest: &str) -> Option<(String, i64, i64)> {
    let (machine, tail) = rest.split_once('/')?;
    if machine.is_empty() {
        return None;
    }
    let num = |s: &str| -> Option<i64> { (s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten() };
    match tail.split_once('-') {
        Some((a, b)) => Some((machine.to_string(), num(a)?, num(b)?)),
        None => {
            let s = num(tail)?;
            Some((machine.to_string(), s, s))
        }
    }
}

/// Whether a failed GET of a metadata object (batch or snapshot) stops the rebuild, to be run
/// again whole, rather than leave that object out: a transient error, expired credentials, or
/// a server that ignores ranges are not the object's fault. Anything else (gone, archived —
/// anyone who can put objects can put one in GLACIER, and a lifecycle rule may archive an old
/// snapshot —, refused) is reported with the object's name, and the rebuild goes on.
fn stops_rebuild(e: &StoreError) -> bool {
    e.is_retryable() || matches!(e, StoreError::Permanent { code, .. } if code == "RangeIgnored")
}

/// Decrypt and parse one metadata object once its GET has answered. The outer error stops the
/// rebuild (a transient S3 error: try again later; no private key); the inner one is this
/// object's own problem (missing, refused, tampered, malformed), reported by the caller, which
/// goes on without it.
fn open_fetched<T: for<'de> Deserialize<'de>>(
    keys: &VaultKeys,
    key: &str,
    got: Result<bytes::Bytes, StoreError>,
) -> Result<Result<T, String>, RemoteError> {
    let body = match got {
        Ok(b) => b,
        Err(e) if stops_rebuild(&e) => return Err(e.into()),
        Err(e) => return Ok(Err(e.to_string())),
    };
    // The encrypted body goes before the plaintext is parsed.
    let pt = open_plain(keys, key, &body);
    drop(body);
    match pt.and_then(|pt| serde_json::from_slice(&pt).map_err(|e| RemoteError::Malformed(format!("{key}: {e}")))) {
        Ok(v) => Ok(Ok(v)),
        Err(RemoteError::WriteOnly) => Err(RemoteError::WriteOnly),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Journal batches of one machine fetched ahead of the one being applied (each at most 1,000
/// records, about 0.5 MB)…
const BATCHES_AHEAD: usize = 4;
/// …while the batches fetched ahead, all machines together, are listed at most this large (a
/// bucket with thousands of machine ids cannot make a rebuild hold thousands of bodies).
const AHEAD_BYTES: u64 = 64 << 20;
/// A listed batch larger than this is refused unread: 1,000 records with every extended
/// attribute the kernel allows stay well below it.
const MAX_BATCH_BYTES: u64 = 256 << 20;

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
}

impl Drop for Stream {
    /// A rebuild that stops leaves no GET running.
    fn drop(&mut self) {
        for (.., t) in &self.fetching {
            t.abort();
        }
    }
}

/// What every stream of a rebuild reads with.
struct Reader<'a> {
    store: &'a Arc<dyn ObjectStore>,
    keys: &'a VaultKeys,
    trust: &'a trust::Trust,
    prefix: &'a str,
    progress: Progress<'a>,
    /// Batches to read, all machines together.
    total: usize,
}

/// What the streams of a rebuild share while they are read.
#[derive(Default)]
struct Merge {
    refused: Vec<String>,
    /// Listed bytes of the batches being fetched ahead, all machines together.
    ahead: u64,
    fetched: usize,
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
                self.fetching.push_back((first, last, key, size, tokio::spawn(async move { store.get_with_metadata(&k).await })));
            }
            let Some((first, last, key, size, task)) = self.fetching.pop_front() else { return Ok(None) };
            st.ahead -= size;
            st.fetched += 1;
            (r.progress)("journal", st.fetched, r.total);
            let got = task.await.map_err(|e| RemoteError::Malformed(format!("journal batch {key}: download task: {e}")))?;
            let (got, sig) = match got {
                Ok((body, md)) => {
                    let w = match body.get(..crypto::HEADER_LEN) {
                        Some(h) => r.trust.check(&r.keys.public, &key[r.prefix.len()..], Some(m), h, md.get(sign::META).map(String::as_str)),
                        None => Err("shorter than a header".into()),
                    };
                    (Ok(body), w)
                }
                Err(e) => (Err(e), Err(String::new())),
            };
            let b: Batch = match open_fetched(r.keys, &key, got)? {
                Ok(b) => b,
                Err(e) => {
                    st.refused.push(format!("journal batch {key} (records {first}..{last}) cannot be read ({e}); its changes are not in this tree"));
                    continue;
                }
            };
            let writer = match sig {
                Ok(w) => w,
                Err(e) => {
                    st.refused.push(format!("journal batch {key} (records {first}..{last}) is not believed: {e}; its changes are not in this tree"));
                    continue;
                }
            };
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
    let mut tree = Tree::default();
    // Per machine, its newest snapshot that a machine the vault allows signed: a forged one
    // with a higher number must not hide the real one. Each is checked by its signature (a
    // HEAD) and header (its first 128 bytes) before it is chosen, and again against the header
    // it is read with.
    let snaps = store.list(&format!("{prefix}s/")).await?;
    let mut per_machine: BTreeMap<String, Vec<(i64, String, u64)>> = BTreeMap::new();
    for o in &snaps {
        if let Some((m, seq, _)) = parse_seq_key(&o.key[prefix.len() + 2..]) {
            per_machine.entry(m).or_default().push((seq, o.key.clone(), o.size));
        }
    }
    // (key, listed length, machine, sequence, signature, written by a write-only machine)
    let mut latest_signed: Vec<(String, u64, String, i64, Option<String>, bool)> = Vec::new();
    for (m, mut cands) in per_machine {
        cands.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (seq, key, len) in cands {
            // A vault of an older build believes every snapshot: its newest is read, unchecked.
            if !trust.signed {
                latest_signed.push((key, len, m.clone(), seq, None, false));
                break;
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
                    latest_signed.push((key, len, m.clone(), seq, sig, w.role == trust::Role::WriteOnly));
                    break;
                }
                Err(e) => notes.push(format!("snapshot {key} is not believed: {e}; an older one of machine {m} is read instead, if any")),
            }
        }
    }
    let checker = |key: &str, m: &str, sig: Option<String>| {
        let rel = key[prefix.len()..].to_string();
        let m = m.to_string();
        let trust = &trust;
        move |h: &[u8]| trust.check(&keys.public, &rel, Some(&m), h, sig.as_deref())
    };
    // A snapshot must say what its key says: the machine and sequence number it covers.
    let matches_key = |info: read::SnapshotInfo, m: &str, seq: i64| {
        if info.machine == m && info.covers_seq == seq {
            Ok(info)
        } else {
            Err(format!("it does not match its key (machine {:?}, covers_seq {})", info.machine, info.covers_seq))
        }
    };
    // The base: the newest snapshot of a full machine that records what it saw of every
    // machine — the state of the vault as of that moment; every machine's later records are
    // replayed on top. Vaults whose snapshots predate `seen` start from all of them, each
    // covering its own journal. Snapshots are streamed, never held: with one snapshot (one
    // machine, the usual case) it is the base and is applied as it is read; with several, a
    // first pass reads what each says besides its entries, and a second applies the base's.
    let mut loaded: Vec<read::SnapshotInfo> = Vec::new();
    let mut base: Vec<usize> = Vec::new();
    if let [(key, len, m, seq, sig, wo)] = &latest_signed[..] {
        progress("snapshot", 1, 1);
        tree.applying = Some((m.clone(), *wo));
        let (t, r) = read::stream(store, sk, key, *len, Some(tree), &checker(key, m, sig.clone())).await?;
        tree = t.expect("the tree comes back");
        match r.and_then(|i| matches_key(i, m, *seq)) {
            Ok(info) => {
                loaded.push(info);
                base.push(0);
            }
            Err(e) if !last_try => return Err(RemoteError::Changed(format!("snapshot {key} cannot be read ({e})"))),
            Err(e) => {
                // Nothing it applied before failing stays, not even what it refused.
                tree = Tree::default();
                tree.refused.push(format!("snapshot {key} cannot be read ({e}); replaying without it"));
            }
        }
    } else {
        let mut read_from: Vec<usize> = Vec::new();
        for (i, (key, len, m, seq, sig, _)) in latest_signed.iter().enumerate() {
            progress("snapshot", i + 1, latest_signed.len());
            match read::stream(store, sk, key, *len, None, &checker(key, m, sig.clone())).await?.1.and_then(|i| matches_key(i, m, *seq)) {
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
        base = match order.iter().rposition(|&i| !loaded[i].seen.is_empty() && full(i)) {
            Some(b) => vec![order[b]],
            None => order,
        };
        for &b in &base {
            let (key, len, m, _, sig, wo) = &latest_signed[read_from[b]];
            tree.applying = Some((m.clone(), *wo));
            progress("snapshot entries", 1, 1);
            let (t, r) = read::stream(store, sk, key, *len, Some(tree), &checker(key, m, sig.clone())).await?;
            tree = t.expect("the tree comes back");
            match r {
                Ok(info) if info == loaded[b] => {}
                Ok(_) => return Err(RemoteError::Changed(format!("snapshot {key} changed between two reads; run the rebuild again"))),
                Err(e) => return Err(RemoteError::Changed(format!("snapshot {key} could be read once but not twice ({e}); run the rebuild again"))),
            }
        }
    }
    let mut covered: BTreeMap<String, i64> = BTreeMap::new();
    for &b in &base {
        let s = &loaded[b];
        for (m, q) in s.reflects() {
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
    // What each machine's journal must reach, by what the believed snapshots say they saw.
    let mut claimed: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for s in &loaded {
        for (m, q) in s.reflects() {
            let c = claimed.entry(m).or_insert((0, String::new()));
            if q > c.0 {
                *c = (q, s.machine.clone());
            }
        }
    }
    for s in &mut loaded {
        // Dead keys stay dead whichever snapshot said so (keys are never reused); a write-only
        // machine's hide only objects it signed itself.
        let dead = std::mem::take(&mut s.dead_keys);
        match &s.writer {
            Some(trust::Writer { machine: Some(m), role: trust::Role::WriteOnly }) => tree.dead_of.entry(m.clone()).or_default().extend(dead),
            _ => tree.mentioned.extend(dead),
        }
    }
    // Every machine's journal after what the base covers.
    let jl = store.list(&format!("{prefix}j/")).await?;
    let mut have: BTreeMap<String, i64> = BTreeMap::new();
    for s in &loaded {
        let h = have.entry(s.machine.clone()).or_insert(0);
        *h = (*h).max(s.covers_seq);
    }
    let mut batches: Vec<(String, i64, i64, String, u64)> = Vec::new();
    for o in &jl {
        let Some((m, a, b)) = parse_seq_key(&o.key[prefix.len() + 2..]) else { continue };
        let h = have.entry(m.clone()).or_insert(0);
        *h = (*h).max(b);
        if b <= covered.get(&m).copied().unwrap_or(0) {
            continue;
        }
        if o.size > MAX_BATCH_BYTES {
            tree.refused.push(format!("journal batch {} is {} bytes, larger than any batch coldvault writes; ignored", o.key, o.size));
            continue;
        }
        batches.push((m, a, b, o.key.clone(), o.size));
    }
    // A journal that ends before what a believed snapshot saw of it lost its last batches
    // (removed, or the stream rolled back): reported, since nothing else would show it.
    for (m, (q, by)) in &claimed {
        let h = have.get(m).copied().unwrap_or(0);
        if *q > h {
            notes.push(format!(
                "journal of machine {m}: the bucket holds it up to record {h}, but the snapshot of machine {by} saw it up to {q}: its later batches were removed or rolled back"
            ));
        }
    }
    batches.sort_by_key(|a| (a.0.clone(), a.1));
    let total = batches.len();
    let mut streams: BTreeMap<String, Stream> = BTreeMap::new();
    for (m, first, last, key, size) in batches {
        let done = covered.get(&m).copied().unwrap_or(0);
        let st = streams.entry(m).or_default();
        st.done = done;
        st.batches.push_back((first, last, key, size));
    }
    // Merge the machines' streams by time (ties by machine id), each stream in its own order:
    // a change made after a rebuild is stamped after everything that rebuild saw (the clock
    // floor), so a dead machine's older records never land on top of newer state. Each stream
    // holds one batch at a time, read when its last record has been applied.
    let reader = Reader { store, keys, trust: &trust, prefix, progress, total };
    let mut merge = Merge { refused: std::mem::take(&mut tree.refused), ..Default::default() };
    let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(i64, String)>> = std::collections::BinaryHeap::new();
    for (m, st) in streams.iter_mut() {
        if let Some(ts) = st.refill(&reader, m, &mut merge).await? {
            heads.push(std::cmp::Reverse((ts, m.clone())));
        }
    }
    tree.seen = covered;
    // Per machine, how far its newest record is ahead of this machine's clock.
    let now = crate::clock::now_ms();
    let mut ahead: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(std::cmp::Reverse((_, m))) = heads.pop() {
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
        match r.entry {
            Entry::Discard { key } if role == trust::Role::WriteOnly => {
                tree.dead_of.entry(m.clone()).or_default().insert(key);
            }
            e => tree.apply_owned(e),
        }
        if let Some(ts) = st.refill(&reader, &m, &mut merge).await? {
            heads.push(std::cmp::Reverse((ts, m)));
        }
    }
    tree.applying_ts = 0;
    // Changes are weighed by their machines' clocks: one far ahead wins over newer changes of
    // other machines, and says so (docs/SEMANTICS.md, "Several machines").
    for (m, a) in ahead {
        tree.conflicts.push(format!(
            "machine {m}'s clock is ahead of this one's by {} min or more (its newest record is stamped {}): its changes count as newer than they are against other machines' (check its clock)",
            a / 60_000,
            crate::restore::fmt_ms(now + a)
        ));
    }
    // What the streams refused, then what replaying their records refused.
    merge.refused.append(&mut tree.refused);
    tree.refused = merge.refused;
    // Data objects: classes from the listing; objects nothing mentions are read with HEAD.
    let data = store.list(&format!("{prefix}d/")).await?;
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
    let orphans: Vec<_> = data.iter().filter(|o| !tree.mentioned.contains(&o.key)).collect();
    let total = orphans.len();
    let mut adopt = Vec::new();
    for (k, o) in orphans.into_iter().enumerate() {
        progress("objects", k + 1, total);
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
        let writer = match trust.check(&keys.public, &o.key[prefix.len()..], None, &header, h.metadata.get(sign::META).map(String::as_str)) {
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
        adopt.push((o, h.class().to_string(), m, header, writer));
    }
    // Full machines' orphans first: a write-only machine's cannot take their path before them;
    // then the newest version of each path first (the last seal wins: review N6, versions that
    // reached the bucket in the journal's last seconds before the machine was lost).
    adopt.sort_by_key(|a| (a.4.role == trust::Role::WriteOnly, std::cmp::Reverse(a.2.sealed_ms)));
    // When the version a path's node holds was sealed (0: unknown), read from its object once.
    let mut node_sealed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    // A version another unmentioned one replaced is that file's past, never a file of its own
    // (else it came back at its old path, beside the file that renames took elsewhere).
    let superseded: HashSet<String> = adopt.iter().filter_map(|a| a.2.prev.clone()).collect();
    // Where each key is now (built once, only if a version names the one it replaced).
    let mut by_key: Option<std::collections::HashMap<String, String>> = None;
    for (o, class, mut m, header, writer) in adopt {
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
            // A path the journal (or an adopted newer object) holds keeps its node, unless the
            // node is a file of the same machine whose version was sealed before this one: the
            // machine wrote this version later and was lost before its journal said so.
            let same_machine = writer.machine.is_none() || n.owner.is_none() || n.owner == writer.machine;
            let Some(nk) = n.key.clone().filter(|_| n.kind == NodeKind::File && same_machine && m.sealed_ms > 0) else { continue };
            // The node took this path when the entry that put it there was made: after this
            // version was sealed, it came there later (a rename, a newer upload) and stays.
            if n.changed_ms > 0 && n.changed_ms >= m.sealed_ms {
                continue;
            }
            let held = match node_sealed.get(&nk) {
                Some(t) => *t,
                None => {
                    let t = match store.head_object(&nk).await {
                        Ok(h) => object_meta(keys, &nk, &h.metadata).map(|(nm, _)| nm.sealed_ms).unwrap_or(0),
                        Err(StoreError::NotFound) => 0,
                        Err(e) => return Err(e.into()),
                    };
                    node_sealed.insert(nk.clone(), t);
                    t
                }
            };
            if held == 0 || held >= m.sealed_ms {
                continue; // an older object for a path that has a newer version or was replaced
            }
            tracing::warn!(path = %shown(&m.path), object = %o.key, replaced = %nk, "a newer version that reached the bucket but not the journal is taken");
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
    notes.append(&mut tree.refused);
    tree.refused = notes;
    tree.signed = trust.signed;
    tree.applying = None;
    tree.applying_ts = 0;
    Ok(tree)
}

/// Where a machine puts its journal batches and snapshots: the store, the vault's public key
/// (they are sealed to it), the machine's signing key (always, in a mount; `None` writes them
/// unsigned, as builds before signatures did, for tests), and the vault's prefix.
pub struct MetaSink<'a> {
    pub store: &'a dyn ObjectStore,
    pub keys: &'a VaultKeys,
    pub signer: Option<&'a MachineSigner>,
    pub prefix: &'a str,
}

impl MetaSink<'_> {
    fn opts(&self, key: &str, header: &[u8]) -> PutOptions {
        let metadata = self
            .signer
            .map(|s| vec![(sign::META.to_string(), s.sign_object(&self.keys.public, &key[self.prefix.len()..], header))])
            .unwrap_or_default();
        PutOptions { storage_class: "STANDARD".into(), metadata, ..Default::default() }
    }

    /// Upload a batch of journal records under a key derived from its sequence range, never
    /// over an object already there (review N3: a cache dir restored from a backup or cloned
    /// with a VM hands out the same sequence numbers again, and overwrote the journal). An
    /// object found at the key is this machine's own earlier attempt (a lost response) when it
    /// holds the same records; anything else is another copy of this machine: `JournalFork`,
    /// and nothing is overwritten (the next mount takes a new machine id, `check_fork`). A
    /// write-only machine cannot read the object and counts it as its own.
    pub async fn put_batch(&self, machine: &str, records: Vec<Record>) -> Result<String, StoreError> {
        let (first, last) = (records.first().map_or(0, |r| r.seq), records.last().map_or(0, |r| r.seq));
        let key = format!("{}j/{machine}/{first:016}-{last:016}", self.prefix);
        let batch = Batch { machine: machine.to_string(), records };
        let body = seal_json(self.keys, &batch);
        let opts = PutOptions { if_none_match: true, ..self.opts(&key, &body[..crypto::HEADER_LEN]) };
        match self.store.put_object(&key, body.into(), &opts).await {
            Err(StoreError::AlreadyExists) if self.keys.secret.is_some() => {
                let there = self.store.get_object(&key).await?;
                match open_json::<Batch>(self.keys, &key, &there) {
                    Ok(b) if b.records == batch.records => Ok(key),
                    _ => Err(StoreError::Permanent {
                        code: "JournalFork".into(),
                        message: format!(
                            "{key} holds other changes than this index's: another copy of this machine's cache dir (restored from a backup, or a cloned VM) wrote this machine's journal. Nothing was overwritten; restart the mount: it takes a new machine id"
                        ),
                    }),
                }
            }
            Err(StoreError::AlreadyExists) => Ok(key),
            r => r.map(|_| key),
        }
    }

    /// Upload a sealed snapshot (`SnapshotWriter`'s output, `len` bytes of `file`) under its key.
    pub async fn put_snapshot(&self, machine: &str, covers_seq: i64, file: &std::fs::File, len: u64) -> Result<String, StoreError> {
        use std::os::unix::fs::FileExt;
        let key = format!("{}s/{machine}/{covers_seq:016}", self.prefix);
        let mut header = [0u8; crypto::HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(|e| StoreError::Permanent { code: "LocalRead".into(), message: format!("{key}: {e}") })?;
        // Never over an object already there (see `put_batch`): one at this key is this
        // machine's earlier attempt, or a copy's, which the journal batches tell apart.
        match put_file(self.store, &key, file, len, &PutOptions { if_none_match: true, ..self.opts(&key, &header) }).await {
            // Not recorded as taken: the next flush takes one covering more records.
            Err(StoreError::AlreadyExists) => Err(StoreError::Permanent {
                code: "SnapshotExists".into(),
                message: format!("{key} is already in the bucket (an earlier attempt, or another copy of this cache dir); left as it is"),
            }),
            r => r.map(|_| key),
        }
    }
}

/// Upload `len` bytes of `file` as the object `key`: one PUT up to the multipart threshold,
/// otherwise parts sent one after another (memory: one part), the upload aborted if one fails.
pub async fn put_file(store: &dyn ObjectStore, key: &str, file: &std::fs::File, len: u64, opts: &PutOptions) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let read = |start: u64, n: u64| -> Result<bytes::Bytes, StoreError> {
        off_runtime(|| {
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, start).map_err(|e| StoreError::Permanent { code: "LocalRead".into(), message: format!("{key}: {e}") })?;
            Ok(buf.into())
        })
    };
    if len <= crate::upload::MULTIPART_THRESHOLD {
        return store.put_object(key, read(0, len)?, opts).await;
    }
    let part = crate::upload::part_size(len);
    let id = store.create_multipart(key, opts).await?;
    let mut parts = Vec::new();
    let sent: Result<(), StoreError> = async {
        for (k, start) in (0..len).step_by(part as usize).enumerate() {
            let n = (k + 1) as i32;
            parts.push((n, store.upload_part(key, &id, n, read(start, part.min(len - start))?).await?));
        }
        store.complete_multipart(key, &id, &parts, opts.if_none_match).await
    }
    .await;
    if sent.is_err() {
        if let Err(e) = store.abort_multipart(key, &id).await {
            tracing::warn!(key, error = %e, "could not abort a failed multipart upload (an AbortIncompleteMultipartUpload rule on the bucket removes its parts)");
        }
    }
    sent
}

/// Run blocking work (disk reads, a walk of the index) without stalling the runtime's other
/// tasks: `block_in_place` where the runtime allows it.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Delete this machine's journal batches and snapshots that `covers_seq` makes redundant.
/// Remove this machine's snapshots older than the one covering `covers_seq`. Journal batches
/// are kept: another machine's later snapshot may have seen less of this journal than this
/// snapshot covers, and replay on top of that snapshot needs the records in between.
pub async fn compact(store: &dyn ObjectStore, prefix: &str, machine: &str, covers_seq: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    for o in store.list(&format!("{prefix}s/{machine}/")).await? {
        if let Some((_, _, last)) = parse_seq_key(&o.key[prefix.len() + 2..]) {
            if last < covers_seq {
                store.delete_object(&o.key).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
