//! Tests of sealing (`fs/seal.rs`): settled files frozen into the outbox in batches, a fresh object key per version, junk kept local.

use super::*;

/// The sealer reads dirty files a page at a time: a flush seals every one of several pages,
/// the periodic pass none that has not settled, and a file still open for writing waits.
#[test]
fn sealing_pages_through_many_dirty_files() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503".into()));
    let n = 2 * 256 + 7;
    let inos: Vec<u64> = (0..n).map(|k| e.write_file(ROOT, &format!("f{k}"), &data(100, k as u8))).collect();
    let (held, fh) = e.fs().create(ROOT, OsStr::new("open"), 0o644, 0, 0).unwrap();
    e.fs().write(fh, 0, b"still writing").unwrap();
    assert_eq!(e.fs().seal_ready(false).unwrap(), 0, "nothing has settled (settle is an hour here)");
    assert_eq!(e.fs().seal_ready(true).unwrap(), n);
    for ino in inos {
        assert!(e.fs().state_of(ino).unwrap().unwrap().1.in_outbox(), "inode {ino} sealed");
    }
    assert_eq!(e.fs().state_of(held.ino).unwrap().unwrap().1, State::Dirty, "open for writing: not sealed");
    e.fs().release(fh).unwrap();
    assert_eq!(e.fs().seal_ready(true).unwrap(), 1);
}

#[test]
fn rename_before_seal_uploads_once_under_final_name() {
    let e = Env::new();
    let d = data(5000, 5);
    // rsync's pattern: write a temp file, set times, rename over the final name.
    let ino = e.write_file(ROOT, ".photo.jpg.XyZ123", &d);
    e.fs().setattr(ino, None, None, None, None, Some(1_000_000_007), Some(1_546_300_800_123_456_789)).unwrap();
    e.fs().rename(ROOT, OsStr::new(".photo.jpg.XyZ123"), ROOT, OsStr::new("photo.jpg"), false).unwrap();
    e.fs().seal_ready(true).unwrap();
    e.wait_uploaded();
    assert_eq!(e.puts(), 1);
    let snap = e.store.snapshot();
    // One data object; a journal batch may or may not have gone up yet.
    assert_eq!(snap.keys().filter(|k| k.starts_with("v/d/")).count(), 1, "{:?}", snap.keys());
    let key = e.fs().getattr(ino).unwrap().object_key.unwrap();
    let obj = &snap[&key];
    let h = crate::crypto::Header::parse(&B64.decode(&obj.metadata["cvh"]).unwrap()).unwrap();
    let o = Opened::open(e.keys.secret.as_ref().unwrap(), &h).unwrap();
    let m = o.decrypt_meta(&B64.decode(&obj.metadata["cvm"]).unwrap()).unwrap();
    assert_eq!(m.path, "photo.jpg");
    assert_eq!(m.mtime_ns, 1_546_300_800_123_456_789);
    assert_eq!(e.fs().getattr(ino).unwrap().mtime_ns, 1_546_300_800_123_456_789);
}

#[test]
fn rewrite_before_seal_uploads_only_final_content() {
    let e = Env::new();
    let ino = e.write_file(ROOT, "doc.txt", b"first version");
    let fs = e.fs();
    let fh = fs.open(ino, true, true, 0).unwrap().0;
    fs.write(fh, 0, b"second").unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    assert_eq!(e.puts(), 1);
    assert_eq!(e.read_all(ino).unwrap(), b"second");
}

#[test]
fn rewrite_after_seal_cancels_the_stale_upload() {
    let e = Env::new();
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("503".into()));
    let ino = e.write_file(ROOT, "doc.txt", b"old old old");
    e.fs().seal_ready(true).unwrap();
    // Partial rewrite of a sealed file: old bytes come back from the outbox. Rewritten while its
    // upload waits for a retry, not while an attempt is on the wire (that one would go on and
    // be recorded as a version of its own: a_file_rewritten_faster_than_it_uploads…).
    wait_for("the failed attempt back in the queue", || {
        e.fs().core().db.uploads().unwrap().iter().any(|u| u.state == UploadState::Queued && u.attempts >= 1)
    });
    let fs = e.fs();
    let fh = fs.open(ino, true, false, 0).unwrap().0;
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(e.read_all(ino).unwrap(), b"new old old");
    e.store.clear_faults();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    assert_eq!(e.read_all(ino).unwrap(), b"new old old");
    assert_eq!(e.puts(), 1, "{:?}", e.store.snapshot().keys());
}

#[test]
fn new_file_at_a_renamed_files_old_path_never_overwrites_it() {
    let e = Env::new();
    let old = data(100_000, 40);
    let (a, key_a) = upload_one(&e, "a.jpg", &old);
    e.fs().rename(ROOT, OsStr::new("a.jpg"), ROOT, OsStr::new("b.jpg"), false).unwrap();
    let new = data(100_000, 41);
    let (a2, key_a2) = upload_one(&e, "a.jpg", &new);
    assert_ne!(key_a, key_a2, "the renamed file's object is still in use");
    assert_eq!(e.store.version_count(&key_a), 1, "not overwritten");
    assert_eq!(e.read_all(a).unwrap(), old);
    assert_eq!(e.read_all(a2).unwrap(), new);
}

/// Every version has an object of its own: a rewrite never touches the previous version's
/// object, and no key is derived from the path.
#[test]
fn every_version_gets_its_own_object_and_old_ones_stay() {
    let e = Env::new();
    let (ino, k1) = upload_one(&e, "a.jpg", &data(10_000, 1));
    let fs = e.fs();
    let fh = fs.open(ino, true, true, 0).unwrap().0;
    fs.write(fh, 0, &data(20_000, 2)).unwrap();
    fs.release(fh).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    let k2 = fs.getattr(ino).unwrap().object_key.unwrap();
    assert_ne!(k1, k2);
    assert_eq!((e.store.version_count(&k1), e.store.version_count(&k2)), (1, 1));
    assert!(fs.dead_keys().unwrap().contains(&k1), "the old version is recorded as not live");
    // Two files with the same name in different lives (unlink, create) differ too.
    fs.unlink(ROOT, OsStr::new("a.jpg")).unwrap();
    let (_, k3) = upload_one(&e, "a.jpg", &data(10_000, 1));
    assert!(k3 != k1 && k3 != k2);
    for k in [&k1, &k2, &k3] {
        assert!(!k.contains("a.jpg") && k.len() == "v/d/".len() + 32, "{k}");
    }
}

/// Seals commit a batch of files in one transaction; a file whose spool cannot be frozen fails
/// alone (its error kept for `status`), the others of its batch are sealed and uploaded, and
/// it is sealed once the obstacle is gone.
#[test]
fn a_file_that_cannot_be_frozen_does_not_hold_back_its_batch() {
    let e = Env::new();
    let fs = e.fs();
    let inos: Vec<u64> = (0..5).map(|k| e.write_file(ROOT, &format!("f{k}.jpg"), &data(3000, k))).collect();
    // Something in the way of the second file's frozen name: its rename fails.
    let gen = fs.state_of(inos[1]).unwrap().unwrap().0;
    let blocker = fs.staging.frozen_path(inos[1], gen);
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    assert_eq!(fs.seal_ready(true).unwrap(), 4);
    assert_eq!(fs.state_of(inos[1]).unwrap().unwrap().1, State::Dirty);
    assert!(fs.seal_failure(inos[1]).is_some(), "the failure is kept for status");
    for (k, &ino) in inos.iter().enumerate() {
        if k != 1 {
            e.wait_state(ino, State::Uploaded);
        }
    }
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(fs.seal_ready(true).unwrap(), 1);
    e.wait_uploaded();
    assert_eq!(e.read_all(inos[1]).unwrap(), data(3000, 1));
    assert!(fs.seal_failure(inos[1]).is_none());
}

/// Regression: `flush` sealing while the sealer thread sealed the same file wrote one outbox
/// file with two data keys (the index recorded one header, S3 got the other's segments).
#[test]
fn concurrent_sealing_never_mixes_two_encryptions() {
    let e = Env::new();
    let mut inos = Vec::new();
    for k in 0..40 {
        inos.push((e.write_file(ROOT, &format!("f{k}"), &data(150_000 + k, k as u8)), k));
    }
    let fs = e.fs();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let fs = fs.clone();
            sc.spawn(move || fs.seal_ready(true).unwrap());
        }
    });
    e.wait_uploaded();
    for (ino, k) in inos {
        assert_eq!(e.read_all(ino).unwrap(), data(150_000 + k, k as u8), "file f{k}");
    }
    assert_eq!(e.puts(), 40, "each file sealed and uploaded once");
}

#[test]
fn junk_files_stay_local_and_are_never_uploaded() {
    let e = Env::new();
    let fs = e.fs();
    for n in [".DS_Store", "._IMG_0001.JPG", "Thumbs.db", "desktop.ini", "~$report.docx", ".report.txt.swp", "notes.txt~"] {
        e.write_file(ROOT, n, b"junk");
    }
    let tmp = e.write_file(ROOT, "~$draft.docx", b"real content");
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    assert_eq!(e.puts(), 0, "nothing uploaded");
    let st = fs.status().unwrap();
    assert_eq!((st.pending_files, st.local_only_files), (0, 8));
    assert_eq!(e.read_all(tmp).unwrap(), b"real content", "still readable locally");
    // Saved over a real name (Office's temp-then-rename): now it is uploaded.
    fs.rename(ROOT, OsStr::new("~$draft.docx"), ROOT, OsStr::new("draft.docx"), false).unwrap();
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    assert_eq!(e.puts(), 1);
    assert_eq!(fs.state_of(tmp).unwrap().unwrap().1, State::Uploaded);
}

/// Sealing makes no second copy of a file: the spool itself becomes the sealed version's
/// plaintext (same inode, renamed), the uploader encrypts from it, and what lands in the
/// bucket decrypts to the file. (Before, sealing wrote an encrypted copy of the whole file
/// first: a 150 MB file on a 256 MiB staging disk could never be sealed.)
#[test]
fn sealing_renames_the_spool_and_the_uploader_encrypts_from_it() {
    use std::os::unix::fs::MetadataExt;
    let e = Env::new();
    let fs = e.fs();
    // Above the multipart threshold, so parts are encrypted range by range from the plaintext.
    let d = data(9 << 20, 4);
    e.store.fail_op("PutObject", u64::MAX, StoreError::Retryable("held".into()));
    e.store.fail_op("CreateMultipartUpload", u64::MAX, StoreError::Retryable("held".into()));
    let ino = e.write_file(ROOT, "big.mov", &d);
    let spool_ino = std::fs::metadata(fs.staging.spool_path(ino)).unwrap().ino();
    assert_eq!(fs.seal_ready(true).unwrap(), 1);
    let outbox: Vec<_> = std::fs::read_dir(fs.staging.root().join("outbox")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(std::fs::metadata(&outbox[0]).unwrap().ino(), spool_ino, "the sealed version is the spool, renamed, not a copy");
    assert!(!fs.staging.spool_path(ino).exists());
    // A sealed file reads from its frozen plaintext (no private key needed).
    assert_eq!(e.read_all(ino).unwrap(), d);
    e.store.clear_faults();
    e.wait_state(ino, State::Uploaded);
    assert!(std::fs::read_dir(fs.staging.root().join("outbox")).unwrap().next().is_some(), "kept until the completion is durable");
    fs.group_commit().unwrap();
    assert!(std::fs::read_dir(fs.staging.root().join("outbox")).unwrap().next().is_none(), "released after the upload");
    // The object in the bucket decrypts to the file.
    let key = fs.getattr(ino).unwrap().object_key.unwrap();
    let obj = e.store.snapshot()[&key].body.clone();
    let h = Header::parse(&obj).unwrap();
    let o = Opened::open(e.keys.secret.as_ref().unwrap(), &h).unwrap();
    assert_eq!(o.decrypt_all(d.len() as u64, &obj).unwrap(), d);
}

// ---------------------------------------------------------------- a bare `Sealer`
//
// No `Fs`, no daemon, no store, no sleep: a temporary index and staging area with dirty files
// put in them directly, and the sealer driven by hand.

struct Bench {
    _dir: tempfile::TempDir,
    keys: Arc<VaultKeys>,
    index: Arc<index::Index>,
    staging: Arc<Staging>,
    wakeup: Arc<tokio::sync::Notify>,
    sealer: crate::fs::seal::Sealer,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(VaultDescriptor::create_with_cost(b"pw", 1024, 1).1);
        let mut cfg = FsConfig::for_tests(dir.path());
        cfg.ignore = DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect();
        cfg.policy.rules = vec![crate::rules::parse_rule("raw/**=DEEP_ARCHIVE").unwrap()];
        let staging = Arc::new(Staging::open(dir.path()).unwrap());
        let index = Arc::new(index::Index::new(Db::open(&dir.path().join("index.db"), now_ns(), 0, 0).unwrap()));
        let wakeup = Arc::new(tokio::sync::Notify::new());
        let sealer = crate::fs::seal::Sealer::new(index.clone(), staging.clone(), keys.public, &cfg, wakeup.clone());
        Bench { _dir: dir, keys, index, staging, wakeup, sealer }
    }

    /// A closed dirty file under `parent` whose last change was `age_ms` ago: its committed
    /// size is `data`'s length, and its spool holds `data` followed by `extra` bytes no close
    /// committed.
    fn dirty(&self, parent: u64, name: &str, data: &[u8], extra: &[u8], age_ms: i64) -> u64 {
        let i = Inode { size: data.len() as u64, content_gen: 1, dirty_ms: now_ms() - age_ms, ..node(parent, name, Kind::File, State::Dirty) };
        let ino = self.index.core().db.insert(&i).unwrap().ino;
        let f = self.staging.create_spool(ino).unwrap();
        f.write_all_at(&[data, extra].concat(), 0).unwrap();
        ino
    }

    fn dir(&self, name: &str) -> u64 {
        self.index.core().db.insert(&Inode { mode: 0o755, ..node(ROOT, name, Kind::Dir, State::Local) }).unwrap().ino
    }

    fn inode(&self, ino: u64) -> Inode {
        self.index.core().db.get(ino).unwrap().unwrap()
    }

    fn uploads(&self, ino: u64) -> Vec<Upload> {
        self.index.core().db.uploads_for_ino(ino).unwrap()
    }

    /// Whether the uploader was woken (and the wakeup consumed).
    fn woken(&self) -> bool {
        let mut n = std::pin::pin!(self.wakeup.notified());
        n.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
    }
}

use sha2::Digest;
use std::future::Future;

/// A node of `kind` named `name` under `parent`, as the filesystem makes one, in `state`.
fn node(parent: u64, name: &str, kind: Kind, state: State) -> Inode {
    Inode { state, dirty_ms: 0, ..Fs::new_inode(parent, name, kind, 0o644, 0, 0) }
}

/// One settled file becomes one queued version: its spool renamed (not copied) to the frozen
/// plaintext, a fresh key under the prefix that names nothing of the path, the class its path
/// calls for, a header and metadata only the vault's private key opens, and the uploader woken.
#[test]
fn a_bare_sealer_queues_a_settled_file_as_one_version_only_the_vault_key_opens() {
    let b = Bench::new();
    let raw = b.dir("raw");
    let d = data(70_000, 3);
    let ino = b.dirty(raw, "IMG_0001.CR3", &d, b"", 10_000_000);
    assert!(!b.woken());
    assert_eq!(b.sealer.seal_ready(false).unwrap(), 1);
    assert!(b.woken(), "the uploader is woken for the new version");
    let i = b.inode(ino);
    assert_eq!(i.state, State::Sealed);
    assert_eq!(i.sha256.as_deref(), Some(hex::encode(sha2::Sha256::digest(&d)).as_str()));
    assert_eq!(b.staging.spool_len(ino), None, "the spool is gone: renamed");
    assert_eq!(std::fs::read(b.staging.frozen_path(ino, 1)).unwrap(), d);
    let ups = b.uploads(ino);
    assert_eq!(ups.len(), 1);
    let u = &ups[0];
    assert_eq!((u.state, u.size, u.path.as_str()), (UploadState::Queued, d.len() as u64, "raw/IMG_0001.CR3"));
    assert!(u.object_key.starts_with("v/d/") && !u.object_key.contains("IMG"), "{}", u.object_key);
    assert_eq!(u.storage_class, StorageClass::DeepArchive);
    let h = Header::parse(&u.header).unwrap();
    let opened = Opened::open(b.keys.secret.as_ref().unwrap(), &h).unwrap();
    let md: Vec<(String, String)> = serde_json::from_str(&u.metadata).unwrap();
    let cvm = &md.iter().find(|(k, _)| k == "cvm").unwrap().1;
    let meta = opened.decrypt_meta(&B64.decode(cvm).unwrap()).unwrap();
    assert_eq!((meta.path.as_str(), meta.size), ("raw/IMG_0001.CR3", d.len() as u64));
    assert_eq!(Some(meta.sha256), i.sha256);
    let other = VaultDescriptor::create_with_cost(b"pw", 1024, 1).1;
    assert!(Opened::open(other.secret.as_ref().unwrap(), &h).is_err(), "another vault's key opens nothing");
}

/// The periodic pass seals only what has settled, `flush` (forced) everything closed; a file
/// open for writing, or with a write no close has committed, waits in both; a file deleted
/// while open (no parent) is never sealed and does not hold back the others.
#[test]
fn a_bare_sealer_seals_only_closed_settled_files() {
    let b = Bench::new();
    let old = b.dirty(ROOT, "old.txt", b"settled long ago", b"", 10_000_000);
    let fresh = b.dirty(ROOT, "fresh.txt", b"just written", b"", 0);
    let writing = b.dirty(ROOT, "writing.txt", b"open", b"", 10_000_000);
    let pending = b.dirty(ROOT, "pending.txt", b"closed, change uncommitted", b"", 10_000_000);
    let deleted = b.dirty(0, "gone.txt", b"unlinked while open", b"", 10_000_000);
    {
        let mut c = b.index.core();
        let of = |writers, changes| OpenFile {
            handles: 1,
            writers,
            execs: 0,
            uid: 0,
            spool: None,
            size: 4,
            mtime_ns: 0,
            ctime_ns: 0,
            changes,
            committed: 0,
            cuts: 0,
        };
        c.open.insert(writing, of(1, 0));
        c.open.insert(pending, of(0, 1));
    }
    assert_eq!(b.sealer.seal_ready(false).unwrap(), 1);
    assert_eq!(b.inode(old).state, State::Sealed);
    assert_eq!(b.inode(fresh).state, State::Dirty, "not settled");
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 1, "flush seals the fresh one");
    assert_eq!(b.inode(fresh).state, State::Sealed);
    for ino in [writing, pending, deleted] {
        assert_eq!(b.inode(ino).state, State::Dirty, "inode {ino}");
        assert!(b.uploads(ino).is_empty());
        assert!(b.staging.spool_len(ino).is_some(), "its spool stays");
    }
    b.index.core().open.clear();
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 2, "closed at last");
    assert_eq!(b.inode(deleted).state, State::Dirty, "deleted while open: nothing to seal");
}

/// A spool longer than the committed size (bytes a failed close never committed) is frozen at
/// that size and its digest covers exactly it: the version is what the last close committed.
#[test]
fn a_bare_sealer_freezes_exactly_the_committed_size() {
    let b = Bench::new();
    let ino = b.dirty(ROOT, "a.bin", b"committed", b" and not committed", 10_000_000);
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 1);
    assert_eq!(std::fs::read(b.staging.frozen_path(ino, 1)).unwrap(), b"committed");
    let want = hex::encode(sha2::Sha256::digest(b"committed"));
    assert_eq!(b.uploads(ino)[0].sha256, want);
}

/// Junk a desktop writes beside real files is kept local, never queued.
#[test]
fn a_bare_sealer_keeps_ignored_names_local() {
    let b = Bench::new();
    let junk = b.dirty(ROOT, ".DS_Store", b"finder", b"", 10_000_000);
    let photo = b.dirty(ROOT, "photo.jpg", b"jpeg", b"", 10_000_000);
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 1);
    assert_eq!(b.inode(junk).state, State::Local);
    assert!(b.uploads(junk).is_empty());
    assert_eq!(b.staging.spool_len(junk), Some(6), "still readable here");
    assert_eq!(b.inode(photo).state, State::Sealed);
}

/// The index refuses a batch half-way (a full disk, an I/O error): the whole batch is undone —
/// every spool put back, no upload row, every file still dirty — the failure is kept for
/// `status`, and the next pass, once the index works again, seals them all.
#[test]
fn a_bare_sealer_undoes_a_batch_the_index_refused() {
    let b = Bench::new();
    let inos: Vec<u64> = (0..3).map(|k| b.dirty(ROOT, &format!("f{k}"), &data(5000, k), b"", 10_000_000)).collect();
    b.index
        .core()
        .db
        .conn()
        .execute_batch(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.uploads WHEN (SELECT count(*) FROM main.uploads) >= 1
             BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;",
        )
        .unwrap();
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 0);
    for (k, &ino) in inos.iter().enumerate() {
        assert_eq!(b.inode(ino).state, State::Dirty, "inode {ino}");
        assert!(b.uploads(ino).is_empty(), "inode {ino}: no upload row");
        assert_eq!(b.staging.spool_len(ino), Some(5000), "inode {ino}: its spool is back");
        assert!(!b.staging.frozen_path(ino, 1).exists());
        // The first was recorded and undone with the batch, the second refused, the third
        // not reached (simply sealed next time).
        let why = b.sealer.failure(ino, 1);
        let want = ["undone with the rest of its seal batch", "disk I/O error"].get(k);
        assert_eq!(why.is_some(), want.is_some(), "inode {ino}: {why:?}");
        if let (Some(why), Some(want)) = (&why, want) {
            assert!(why.contains(want), "inode {ino}: {why}");
        }
    }
    b.index.core().db.conn().execute_batch("DROP TRIGGER refuse").unwrap();
    assert_eq!(b.sealer.seal_ready(true).unwrap(), 3);
    for (k, &ino) in inos.iter().enumerate() {
        assert_eq!(std::fs::read(b.staging.frozen_path(ino, 1)).unwrap(), data(5000, k as u8));
        assert!(b.sealer.failure(ino, 1).is_none());
    }
}
