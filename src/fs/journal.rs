//! The bucket's view of the index: journal records written with each change, snapshots, and rebuilding the index from a tree read back from the bucket.

use super::{now_ms, now_ns, Core, Fs, FsConfig, FsError, Result, SEAL_HEADROOM};
use crate::clock::Nanos;
use crate::meta::Db;
use crate::meta::Inode;
use crate::meta::Kind;
use crate::meta::State;
use crate::meta::ROOT;
use crate::staging::Staging;
use crate::store::ObjectStore;
use crate::vault::StorageClass;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::HashMap;

use crate::meta::IndexResult;
use crate::remote_meta::journal::{JournalIndex, SnapshotDue, SnapshotFile};

/// How long snapshots remember a removed path: another machine's upload of it older than the
/// removal, but not seen by it, arriving later than that is replayed as a resurrection (the
/// safe side: nothing lost, a deleted file back).
const TOMBSTONE_DAYS: i64 = 90;

impl JournalIndex for Fs {
    fn journal_forked(&self) -> IndexResult<()> {
        let c = self.core();
        c.db.set_setting("journal_forked", "1")?;
        // The refused batch never landed: a later try of it is no retry of ours.
        c.db.set_setting("journal_attempt", "")?;
        Ok(c.db.sync()?)
    }

    fn machine(&self) -> IndexResult<String> {
        Ok(self.machine_id()?)
    }

    fn batch_attempted(&self, first: i64, last: i64) -> IndexResult<bool> {
        let c = self.core();
        let this = format!("{first}-{last}");
        let before = c.db.setting("journal_attempt")?.is_some_and(|v| v == this);
        if !before {
            c.db.set_setting("journal_attempt", &this)?;
        }
        Ok(before)
    }

    fn write_snapshot(&self, machine: &str) -> IndexResult<SnapshotFile> {
        Ok(self.snapshot_to_file(machine)?)
    }

    fn pending_journal(&self, limit: usize) -> IndexResult<Vec<crate::remote_meta::Record>> {
        let rows = self.core().db.journal_pending(limit)?;
        if !rows.is_empty() {
            // What goes to the bucket must never be ahead of the index on disk: a power cut
            // that lost these records would hand their sequence numbers out again.
            self.sync_durable()?;
        }
        Ok(rows
            .into_iter()
            .filter_map(|(seq, ts_ms, json)| match serde_json::from_str(&json) {
                Ok(entry) => Some(crate::remote_meta::Record { seq, ts_ms, entry }),
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable journal row skipped");
                    None
                }
            })
            .collect())
    }

    fn journal_sent(&self, last_seq: i64, n: u64) -> IndexResult<()> {
        let c = self.core();
        c.db.journal_delete_upto(last_seq)?;
        let since: u64 = c.db.setting("since_snapshot")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        c.db.set_setting("since_snapshot", &(since + n).to_string())?;
        Ok(())
    }

    fn snapshot_due(&self) -> IndexResult<SnapshotDue> {
        let c = self.core();
        let since = c.db.setting("since_snapshot")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let entries = c.db.setting("last_snapshot_entries")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let last = match c.db.setting("last_snapshot_ms")? {
            Some(v) => v.parse().unwrap_or(0),
            None => {
                // Count the age from the first use, not from 1970.
                c.db.set_setting("last_snapshot_ms", &now_ms().to_string())?;
                now_ms()
            }
        };
        Ok(SnapshotDue { since, last_ms: last, last_entries: entries })
    }

    fn snapshot_taken(&self, entries: u64, bytes: u64) -> IndexResult<()> {
        let c = self.core();
        c.db.set_setting("since_snapshot", "0")?;
        c.db.set_setting("last_snapshot_entries", &entries.to_string())?;
        c.db.set_setting("last_snapshot_bytes", &bytes.to_string())?;
        c.db.set_setting("last_snapshot_ms", &now_ms().to_string())?;
        c.db.prune_tombstones(now_ms() - TOMBSTONE_DAYS * 86_400_000)?;
        Ok(())
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
impl Fs {
    /// Tests: the journal uploader of the daemon serving this filesystem, the one its journal
    /// task and `flush --wait` share (and whose lock serialises them), for helpers that hold
    /// only the `Fs`.
    pub(crate) fn journal_uploader(&self) -> std::sync::Arc<crate::remote_meta::journal::JournalUploader> {
        self.daemon_journal.get().and_then(|w| w.upgrade()).expect("a running daemon serves this filesystem")
    }
}

impl Fs {
    // ------------------------------------------------------------------ journal (metadata in the bucket)

    /// Append a namespace change to the journal (called with `core` held, right after the change).
    /// Journal a change inside its operation's transaction: if the record cannot be written,
    /// the operation fails and nothing of it is kept.
    pub(super) fn record_in_op(c: &Core, e: crate::remote_meta::Entry) -> Result<()> {
        Db::journal_append(c.db.conn(), now_ms(), &serde_json::to_string(&e).expect("serialize"))?;
        match &e {
            crate::remote_meta::Entry::Remove { path, .. } | crate::remote_meta::Entry::Rename { from: path, .. } => {
                Db::add_tombstone(c.db.conn(), path, None, None)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Journal an attribute change (chmod, chown, utimens, xattrs) inside its operation's
    /// transaction. A file whose content is not uploaded yet needs none: its `upload` record
    /// will carry the final attributes.
    pub(super) fn record_attr_in_op(c: &Core, i: &Inode) -> Result<()> {
        if i.kind == Kind::File && i.state != State::Uploaded {
            return Ok(());
        }
        let path = c.db.path_of(i.ino)?;
        Self::record_in_op(
            c,
            crate::remote_meta::Entry::Attr { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns, xattrs: i.xattrs.clone() },
        )
    }

    pub fn machine_id(&self) -> Result<String> {
        Ok(self.signer.machine().to_string())
    }

    /// Before a full mount opens an index it has used before: if the bucket holds journal
    /// batches or snapshots of this machine id beyond every sequence number the index has
    /// handed out, this cache dir is an older copy of the machine's (restored from a backup, a
    /// cloned VM) and the bucket's journal went on without it (review N3). Writing on under the
    /// same id would hand those numbers out again and hide or mix two histories, so the index
    /// takes a new machine id and signing key: its changes from now on are another machine's,
    /// merged as any two machines' are. Returns what it did, for the log. A bucket that cannot
    /// be listed is not a reason to refuse the mount (the conditional writes still catch a
    /// fork, `MetaSink::put_batch`).
    pub fn fork_check(cfg: &FsConfig, store: &dyn ObjectStore, rt: &tokio::runtime::Handle, may_list: bool) -> Result<Option<String>> {
        let path = cfg.cache_dir.join("index.db");
        if !path.exists() {
            return Ok(None);
        }
        // SAFETY: getuid/getgid take no arguments, cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let db = Db::open(&path, now_ns(), uid, gid)?;
        let Some(machine) = db.setting("machine_id")? else { return Ok(None) };
        let local = db.journal_max_seq()?;
        let forked = db.setting("journal_forked")?.is_some_and(|v| v == "1");
        let mut remote = 0i64;
        // A fork already found (by an upload) needs no listing, which a write-only credential
        // may not make (`may_list` false: only such a fork is acted on).
        for kind in ["j", "s"].into_iter().filter(|_| !forked && may_list) {
            let under = format!("{}{kind}/{machine}/", cfg.prefix);
            let listed = match rt.block_on(store.list(&under)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list this machine's journal to check that this cache dir is not an older copy");
                    return Ok(None);
                }
            };
            for o in listed {
                if let Some((_, _, last)) = crate::remote_meta::parse_seq_key(&o.key[cfg.prefix.len() + 2..]) {
                    remote = remote.max(last);
                }
            }
        }
        if remote <= local && !forked {
            return Ok(None);
        }
        let fresh = hex::encode(rand::random::<[u8; 8]>());
        // What this index holds of the old id's journal is what it sent of it (the past both
        // copies share): its snapshots say so, and a rebuild replays the rest of that journal,
        // which only the other copy wrote, on top of them (else all of it, over newer state).
        let sent = db.journal_pending(1)?.first().map(|r| r.0 - 1).unwrap_or(local);
        let mut seen: std::collections::BTreeMap<String, i64> =
            db.setting("imported_seen")?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
        let s = seen.entry(machine.clone()).or_insert(0);
        *s = (*s).max(sent);
        db.set_setting("imported_seen", &serde_json::to_string(&seen).expect("json"))?;
        db.set_setting("machine_id", &fresh)?;
        db.set_setting("signing_key", "")?;
        db.set_setting("journal_forked", "0")?;
        db.sync()?;
        let seen = if remote > local {
            format!("the bucket holds its journal up to record {remote}, this index only up to {local}")
        } else {
            "another copy wrote journal batches this index did not".to_string()
        };
        Ok(Some(format!(
            "this cache dir is a copy of machine {machine}'s (restored from a backup, or a cloned VM): {seen}. Nothing was overwritten; this index goes on as a new machine {fresh}, and what the other copy changed is not in it (mount with an empty cache dir to rebuild the whole vault from the bucket)"
        )))
    }

    /// This cache dir's machine id and signing key, drawn at random the first time (or the id
    /// the config names, `configured`) and kept in its index (machine ids of earlier builds are
    /// kept; their key is added).
    pub(super) fn load_signer(db: &Db, configured: Option<&str>) -> Result<crate::crypto::sign::MachineSigner> {
        let machine = match db.setting("machine_id")? {
            Some(m) => {
                if configured.is_some_and(|c| c != m) {
                    tracing::warn!(index = %m, config = ?configured, "this cache dir's machine id is not the one the config names (a copied cache dir, or one made before the config named it): it keeps its own; a policy limited to the config's id refuses its uploads");
                }
                m
            }
            None => {
                let m = configured.map(str::to_string).unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
                db.set_setting("machine_id", &m)?;
                m
            }
        };
        let seed = match db.setting("signing_key")?.and_then(|s| B64.decode(s).ok()).and_then(|v| <[u8; 32]>::try_from(v).ok()) {
            Some(s) => zeroize::Zeroizing::new(s),
            None => {
                let s = zeroize::Zeroizing::new(crate::crypto::sign::MachineSigner::generate_seed());
                db.set_setting("signing_key", &B64.encode(*s))?;
                s
            }
        };
        Ok(crate::crypto::sign::MachineSigner::new(&machine, &seed))
    }

    pub fn journal_pending_count(&self) -> Result<u64> {
        Ok(self.core().db.journal_len()?)
    }

    /// A consistent view of the index as it is on disk, for a snapshot: synced under the lock
    /// it is opened under, after the staged files (as `sync_durable` orders them), so it never
    /// describes a change a power cut could still undo (see `pending_journal`).
    fn durable_view(&self) -> Result<crate::meta::ReadView> {
        self.staging.syncfs()?;
        let c = self.core();
        c.db.sync()?;
        Ok(c.db.read_view()?)
    }

    /// `f` on the entry that recreates each uploaded file, folder, link and special file of
    /// the view, folders first. A file whose next version is still pending is described by
    /// its newest durable one (it must not vanish from a rebuild meanwhile); one with none yet
    /// is left out (its upload record will add it).
    fn snapshot_entries(v: &Db, mut f: impl FnMut(&crate::remote_meta::Entry, Option<&str>, i64) -> Result<()>) -> Result<()> {
        use crate::remote_meta::Entry;
        v.walk(|path, i| {
            if let Err(why) = crate::remote_meta::check_path(path) {
                // A rebuild would refuse the entry (and then not adopt its object either).
                tracing::warn!(ino = i.ino, "left out of the snapshot: {why}");
                return Ok(());
            }
            let path = path.to_string();
            let e = match i.kind {
                Kind::Dir => Entry::Mkdir { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns },
                Kind::Symlink => Entry::Symlink { path, target: i.target.clone().unwrap_or_default(), uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns },
                Kind::Special => {
                    Entry::Special { path, special: i.target.clone().unwrap_or_default(), mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns }
                }
                Kind::File if i.state == State::Uploaded => Entry::Upload {
                    path,
                    key: i.object_key.clone().unwrap_or_default(),
                    size: i.size,
                    mtime_ns: i.mtime_ns,
                    mode: i.mode,
                    uid: i.uid,
                    gid: i.gid,
                    class: i.storage_class.clone().unwrap_or_default().to_string(),
                    sha256: i.sha256.clone().unwrap_or_default(),
                    header: i.header.as_ref().map(|h| B64.encode(h)).unwrap_or_default(),
                    xattrs: i.xattrs.clone(),
                    saw: None,
                },
                Kind::File => match v.latest_version(i.ino)? {
                    Some(ver) => Entry::Upload {
                        path,
                        key: ver.object_key,
                        size: ver.size,
                        mtime_ns: ver.mtime_ns,
                        mode: ver.mode,
                        uid: ver.uid,
                        gid: ver.gid,
                        class: ver.storage_class.to_string(),
                        sha256: ver.sha256,
                        header: B64.encode(ver.header),
                        xattrs: i.xattrs.clone(),
                        saw: None,
                    },
                    None => return Ok(()),
                },
            };
            // When the change it describes was journaled, as a replay would stamp it: its last
            // rename or attribute change (ctime), or the upload of its version (the Upload
            // record's time, later than the writes it holds); imported, where it was made.
            let mut at = (i.ctime_ns / 1_000_000) as i64;
            if let crate::remote_meta::Entry::Upload { key, .. } = &e {
                // A file: when it was put where it is (its upload or a rename), never a chmod
                // or touch since (`placed`); indexes of builds before it, as they said.
                at = match Db::placed_ms(v.conn(), i.ino)? {
                    Some(ms) => ms,
                    None => at.max(v.version_uploaded_ms(key)?.unwrap_or(0)),
                };
            }
            f(&e, i.owner.as_deref(), at)
        })
    }

    /// The uploaded namespace as a tree, and the journal sequence number it reflects (what a
    /// snapshot taken now holds, in memory: for tests and tools, not for the daemon).
    pub fn export_tree(&self) -> Result<(crate::remote_meta::Tree, i64)> {
        let v = self.durable_view()?;
        let mut t = crate::remote_meta::Tree::default();
        Self::snapshot_entries(&v, |e, _, _| {
            t.apply(e);
            Ok(())
        })?;
        Ok((t, v.journal_max_seq()?))
    }

    /// Write a snapshot of the index as it is on disk now into an unnamed temporary file in
    /// the cache folder, sealed to the vault key, one entry at a time: memory does not grow
    /// with the index (the file does: a few hundred bytes per file), and the index stays
    /// writable meanwhile (the view is a read transaction of its own). Staged files come
    /// first: with too little room on the staging disk, no snapshot (journal batches still go
    /// up, and a rebuild replays them instead).
    pub fn snapshot_to_file(&self, machine: &str) -> Result<SnapshotFile> {
        let last: u64 = self.core().db.setting("last_snapshot_bytes")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let need = last + last / 2 + 2 * SEAL_HEADROOM;
        let free = self.staging.free_bytes()?;
        if free < need {
            return Err(FsError::Io(std::io::Error::other(format!(
                "the staging disk has {} MiB free, a snapshot needs about {} MiB: not taken (journal batches still go up)",
                free >> 20,
                need >> 20
            ))));
        }
        let v = self.durable_view()?;
        let covers_seq = v.journal_max_seq()?;
        // After every record the view holds (they were stamped before it was opened), and never
        // before what this index imported.
        let floor = v.setting("clock_floor_ms")?.and_then(|x| x.parse::<i64>().ok()).unwrap_or(0);
        let ts_ms = now_ms().max(floor.saturating_add(1));
        let sink = SnapshotSink { file: unnamed_file(&self.cfg.cache_dir)?, unflushed: 0, staging: &self.staging };
        let mut w = crate::remote_meta::SnapshotWriter::new(&self.keys, std::io::BufWriter::with_capacity(1 << 20, sink))?;
        Self::snapshot_entries(&v, |e, by, at| Ok(w.entry_at(e, by, Some(at))?))?;
        let mut dead = Ok(());
        v.each_dead_key(|k| {
            dead = w.dead_key(k);
            dead.is_ok()
        })?;
        dead?;
        w.tombstones(v.recent_tombstones(now_ms() - TOMBSTONE_DAYS * 86_400_000)?);
        let mut seen: std::collections::BTreeMap<String, i64> =
            v.setting("imported_seen")?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
        seen.insert(machine.to_string(), covers_seq);
        let entries = w.entries();
        let (out, len) = w.finish(machine, covers_seq, ts_ms, &seen)?;
        let file = out.into_inner().map_err(|e| e.into_error())?.file;
        Ok(SnapshotFile { file, len, covers_seq, entries })
    }

    /// A fresh index (only the root) that was never filled: a rebuild from the bucket applies.
    pub fn needs_rebuild(&self) -> Result<bool> {
        let c = self.core();
        if c.db.setting("initialized")?.is_some() {
            return Ok(false);
        }
        let n = c.db.inode_count()?;
        if n > 0 {
            c.db.set_setting("initialized", "1")?;
            return Ok(false);
        }
        Ok(true)
    }

    pub fn dead_keys(&self) -> Result<Vec<String>> {
        Ok(self.core().db.dead_keys()?)
    }

    pub fn mark_initialized(&self) -> Result<()> {
        Ok(self.core().db.set_setting("initialized", "1")?)
    }

    /// Fill an empty index from a replayed tree (one transaction). Returns (dirs, files, links).
    pub fn import_tree(&self, t: &crate::remote_meta::Tree) -> Result<(usize, usize, usize)> {
        use crate::remote_meta::NodeKind;
        let mut c = self.core();
        let now = now_ns();
        let tx = c.db.begin()?;
        let mut inos: HashMap<String, u64> = HashMap::new();
        inos.insert(String::new(), ROOT);
        let (mut d, mut f, mut l) = (0, 0, 0);
        // BTreeMap order puts "a" before "a/b": parents are inserted first.
        for (path, n) in &t.nodes {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n),
                None => (String::new(), path.as_str()),
            };
            let Some(&pino) = inos.get(&parent) else { continue };
            let (kind, state) = match n.kind {
                NodeKind::Dir => (Kind::Dir, State::None),
                NodeKind::Symlink => (Kind::Symlink, State::None),
                NodeKind::Special => (Kind::Special, State::None),
                NodeKind::File => (Kind::File, State::Uploaded),
            };
            let ino = Db::insert_full(
                &tx,
                &Inode {
                    ino: 0,
                    parent: pino,
                    name: name.to_string(),
                    kind,
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    size: n.size,
                    atime_ns: n.mtime_ns,
                    mtime_ns: n.mtime_ns,
                    // When the entry that made it was made, on whichever machine: what the next
                    // snapshot says of it (`at`), for other machines' records to be weighed with.
                    ctime_ns: if n.changed_ms > 0 { n.changed_ms as Nanos * 1_000_000 } else { now },
                    target: n.target.clone(),
                    state,
                    content_gen: 1,
                    dirty_ms: 0,
                    object_key: n.key.clone(),
                    storage_class: n.class.as_deref().map(StorageClass::parse),
                    header: n.header.clone(),
                    sha256: n.sha256.clone(),
                    xattrs: n.xattrs.clone(),
                    owner: n.owner.clone(),
                },
            )?;
            match n.kind {
                NodeKind::Dir => {
                    d += 1;
                    inos.insert(path.clone(), ino);
                }
                NodeKind::File => {
                    f += 1;
                    if let Some(key) = &n.key {
                        let v = crate::meta::Version {
                            object_key: key.clone(),
                            ino,
                            size: n.size,
                            mtime_ns: n.mtime_ns,
                            mode: n.mode,
                            uid: n.uid,
                            gid: n.gid,
                            storage_class: n.class.as_deref().map(StorageClass::parse).unwrap_or_default(),
                            sha256: n.sha256.clone().unwrap_or_default(),
                            header: n.header.clone().unwrap_or_default(),
                        };
                        // Uploaded when the entry that made it was made (0: unknown).
                        Db::add_version(&tx, &v, n.changed_ms)?;
                        if n.changed_ms > 0 {
                            Db::set_placed(&tx, ino, n.changed_ms)?;
                        }
                    }
                }
                NodeKind::Symlink | NodeKind::Special => l += 1,
            }
        }
        // Keys the bucket holds but no live file uses stay dead in this index's snapshots too.
        let live: std::collections::HashSet<&str> = t.nodes.values().filter_map(|n| n.key.as_deref()).collect();
        for k in t.mentioned.iter().filter(|k| !live.contains(k.as_str())) {
            Db::add_dead_key(&tx, k)?;
        }
        Db::set_setting_in(&tx, "initialized", "1")?;
        // What this index was built from: its snapshots say so (so a later rebuild replays only
        // what came after), and its own changes are stamped after all of it.
        Db::set_setting_in(&tx, "imported_seen", &serde_json::to_string(&t.seen).expect("json"))?;
        for (path, (ts, m)) in &t.tombstones {
            Db::add_tombstone(&tx, path, Some(*ts), Some(m))?;
        }
        Db::set_setting_in(&tx, "clock_floor_ms", &t.max_ts.to_string())?;
        let shown: Vec<&String> = t.conflicts.iter().take(super::status::MAX_CONFLICTS_KEPT).collect();
        Db::set_setting_in(&tx, "rebuild_conflicts", &serde_json::to_string(&shown).expect("json"))?;
        Db::set_setting_in(&tx, "rebuild_conflicts_total", &t.conflicts.len().to_string())?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        Ok((d, f, l))
    }
}

/// A file in `dir` with no name (O_TMPFILE; where the file system lacks it, a random name
/// removed at once): nothing else can open it, and a crash leaves nothing behind.
fn unnamed_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(dir) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
            let p = dir.join(format!("snapshot.{:016x}.tmp", rand::random::<u64>()));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&p)?;
            std::fs::remove_file(&p)?;
            Ok(f)
        }
        r => r,
    }
}

/// Where a snapshot is written: its pages are sent to disk every 8 MiB (so that a `syncfs` of
/// the staging disk — an fsync, the group commit — never waits for hundreds of MB at once),
/// and it is abandoned when the staging disk runs short, since staged files come first.
struct SnapshotSink<'a> {
    file: std::fs::File,
    unflushed: u64,
    staging: &'a Staging,
}

impl std::io::Write for SnapshotSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(b)?;
        self.unflushed += n as u64;
        if self.unflushed >= 8 << 20 {
            self.unflushed = 0;
            use std::os::fd::AsRawFd;
            // SAFETY: a plain system call on a file descriptor this struct owns; it only starts
            // writeback of the file's dirty pages (no memory is passed).
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            if self.staging.free_bytes()? < 2 * SEAL_HEADROOM {
                return Err(std::io::Error::other("the staging disk is nearly full: snapshot abandoned (staged files come first)"));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
