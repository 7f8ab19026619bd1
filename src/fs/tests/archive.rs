//! Tests of archive tiers (`fs/archive.rs`): restores on open, their cost guard and bookkeeping across restarts, storage classes learned from S3.

use super::*;

fn archived_env() -> (Env, u64, Vec<u8>) {
    let e = Env::new();
    *e.store.restore_delay.lock().unwrap() = Duration::from_millis(600);
    let fs = e.fs();
    let raw = fs.mkdir(ROOT, OsStr::new("raw"), 0o755, 0, 0).unwrap();
    let d = data(300_000, 20);
    let ino = e.write_file(raw.ino, "IMG_0001.CR2", &d);
    fs.seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    (e, ino, d)
}

fn open_errno(e: &Env, ino: u64, pid: u32) -> Option<i32> {
    match e.fs().open(ino, false, false, pid) {
        Ok((fh, _)) => {
            e.fs().release(fh).unwrap();
            None
        }
        Err(err) => Some(err.errno()),
    }
}

fn status_file(e: &Env, ino: u64) -> Option<String> {
    let fs = e.fs();
    let i = fs.getattr(ino).unwrap();
    let v = fs.lookup(i.parent, OsStr::new(&format!("{}.restore-status", i.name))).ok()?;
    let (fh, direct) = fs.open(v.ino, false, false, 0).unwrap();
    assert!(direct);
    let t = fs.read(fh, 0, 1 << 20).unwrap();
    fs.release(fh).unwrap();
    Some(String::from_utf8(t.to_vec()).unwrap())
}

#[test]
fn archived_file_restores_once_and_then_reads() {
    let (e, ino, d) = archived_env();
    let key = e.fs().getattr(ino).unwrap().object_key.unwrap();
    assert_eq!(e.store.snapshot()[&key].storage_class, "DEEP_ARCHIVE");
    assert!(status_file(&e, ino).is_none(), "no status file before a restore");
    for _ in 0..11 {
        assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    }
    wait_for("RestoreObject", || e.fs().store.counts().get("RestoreObject") == Some(&1));
    let t = status_file(&e, ino).unwrap();
    assert!(t.contains("tier:              Bulk"), "{t}");
    assert!(t.contains("DEEP_ARCHIVE") && t.contains("expected ready by") && t.contains("cost estimate"), "{t}");
    let names: Vec<String> = e.fs().readdir(e.fs().getattr(ino).unwrap().parent).unwrap().into_iter().map(|i| i.name).collect();
    assert!(names.contains(&"IMG_0001.CR2.restore-status".to_string()), "{names:?}");
    wait_for("restore ready", || open_errno(&e, ino, 0).is_none());
    assert_eq!(e.read_all(ino).unwrap(), d);
    let t = status_file(&e, ino).unwrap();
    assert!(t.contains("state:             ready until"), "{t}");
    assert_eq!(e.fs().store.counts()["RestoreObject"], 1, "exactly one RestoreObject");
    // The listing file at the root knows it too.
    let ctl = e.fs().lookup(ROOT, OsStr::new(".coldvault")).unwrap();
    let l = e.fs().lookup(ctl.ino, OsStr::new("restores")).unwrap();
    let (fh, _) = e.fs().open(l.ino, false, false, 0).unwrap();
    let text = String::from_utf8(e.fs().read(fh, 0, 65536).unwrap().to_vec()).unwrap();
    assert!(text.contains("raw/IMG_0001.CR2\tready"), "{text}");
    // Others read neither the listing, which names files of every folder, nor a status file
    // beside a file they may not read (review L6).
    assert_eq!(l.mode & 0o777, 0o440);
    e.fs().setattr(ino, Some(0o600), None, None, None, None, None).unwrap();
    let s = e.fs().lookup(raw_of(&e, ino), OsStr::new("IMG_0001.CR2.restore-status")).unwrap();
    assert_eq!(s.mode & 0o777, 0o400);
}

fn raw_of(e: &Env, ino: u64) -> u64 {
    e.fs().getattr(ino).unwrap().parent
}

#[test]
fn truncating_rewrite_of_archived_file_needs_no_restore() {
    let (e, ino, _) = archived_env();
    let fs = e.fs();
    let (fh, _) = fs.open(ino, true, true, 0).unwrap();
    fs.write(fh, 0, b"new version").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(e.read_all(ino).unwrap(), b"new version");
    assert_eq!(fs.store.counts().get("RestoreObject"), None);
    assert_eq!(fs.store.counts().get("GetObject"), None);
}

/// The same overwrite of a file in an archive tier: no GET, no restore, a new version.
#[test]
fn an_open_for_writing_then_truncate_to_zero_of_an_archived_file_needs_no_restore() {
    let (e, ino, _) = archived_env();
    let fs = e.fs();
    let gets = e.store.calls_of("GetObject");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.setattr(ino, None, None, None, Some(0), None, None).unwrap();
    fs.write(fh, 0, b"new version").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(e.read_all(ino).unwrap(), b"new version");
    assert_eq!(e.store.calls_of("GetObject"), gets);
    assert!(fs.restores().unwrap().is_empty(), "no restore recorded");
    assert_eq!(fs.store.counts().get("RestoreObject"), None);
    assert!(status_file(&e, ino).is_none());
}

/// A write into part of an archived file needs its old bytes: EAGAIN and one restore, as an
/// open for reading gets; once restored, the write lands in the old content.
#[test]
fn a_partial_write_into_an_archived_file_asks_for_one_restore() {
    let (e, ino, old) = archived_env();
    let fs = e.fs();
    let gets = e.store.calls_of("GetObject");
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    for _ in 0..3 {
        assert_eq!(fs.write(fh, 10, b"EDIT").unwrap_err().errno(), libc::EAGAIN);
    }
    assert_eq!(fs.getattr(ino).unwrap().size, old.len() as u64);
    fs.release(fh).unwrap();
    assert_eq!(e.store.calls_of("GetObject"), gets, "no GET of an archived object");
    assert_eq!(fs.restores().unwrap().len(), 1);
    wait_for("RestoreObject", || fs.store.counts().get("RestoreObject") == Some(&1));
    wait_for("restore ready", || open_errno(&e, ino, 0).is_none());
    let (fh, _) = fs.open(ino, true, false, 0).unwrap();
    fs.write(fh, 10, b"EDIT").unwrap();
    fs.release(fh).unwrap();
    let mut want = old.clone();
    want[10..14].copy_from_slice(b"EDIT");
    assert!(e.read_all(ino).unwrap() == want, "the edit in the old content");
    assert_eq!(fs.store.counts()["RestoreObject"], 1, "exactly one RestoreObject");
}

#[test]
fn transition_behind_our_back_is_discovered_on_read() {
    let e = Env::new();
    *e.store.restore_delay.lock().unwrap() = Duration::from_millis(300);
    let d = data(200_000, 21);
    let (ino, key) = upload_one(&e, "photo.jpg", &d);
    e.store.set_storage_class(&key, "GLACIER");
    let fs = e.fs();
    let (fh, _) = fs.open(ino, false, false, 0).unwrap();
    assert_eq!(fs.read(fh, 0, 4096).unwrap_err().errno(), libc::EAGAIN);
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().storage_class, Some(StorageClass::parse("GLACIER")));
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    wait_for("restore", || open_errno(&e, ino, 0).is_none());
    assert_eq!(e.read_all(ino).unwrap(), d);
    assert_eq!(fs.store.counts()["RestoreObject"], 1);
    assert!(status_file(&e, ino).unwrap().contains("tier:              Standard"), "GLACIER defaults to Standard");
}

#[test]
fn cost_guard_and_indexers_refuse_automatic_restores() {
    let (e, ino, _) = archived_env();
    // An indexer: a process whose name is a known thumbnailer.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("tracker-miner-fs-3");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
    wait_for("the indexer to exec", || std::fs::read_to_string(format!("/proc/{}/comm", child.id())).is_ok_and(|c| c.starts_with("tracker")));
    assert_eq!(open_errno(&e, ino, child.id()), Some(libc::EAGAIN));
    child.kill().unwrap();
    let _ = child.wait();
    let t = status_file(&e, ino).unwrap();
    assert!(t.contains("refused") && t.contains("indexer"), "{t}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.fs().store.counts().get("RestoreObject"), None, "an indexer never triggers a restore");
    // A normal process then triggers it.
    assert_eq!(open_errno(&e, ino, std::process::id()), Some(libc::EAGAIN));
    wait_for("RestoreObject", || e.fs().store.counts().get("RestoreObject") == Some(&1));

    // The daily budget: a second archived file over the budget is refused.
    let mut e = e;
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    let mut c = cfg(e.dir.path());
    c.restore.daily_budget = 400_000; // the first file (300 kB) already counts today
    c.restore.poll_override = Some(Duration::from_millis(100));
    e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap());
    let raw = e.fs().lookup(ROOT, OsStr::new("raw")).unwrap();
    let ino2 = e.write_file(raw.ino, "IMG_0002.CR2", &data(300_000, 22));
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino2, State::Uploaded);
    assert_eq!(open_errno(&e, ino2, 0), Some(libc::EAGAIN));
    let t = status_file(&e, ino2).unwrap();
    assert!(t.contains("refused") && t.contains("daily budget"), "{t}");
    assert!(t.contains("coldvault restore"), "says how to request it explicitly: {t}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.fs().store.counts().get("RestoreObject"), None, "nothing requested over budget");
    // An explicit request ignores the budget.
    let i2 = e.fs().getattr(ino2).unwrap();
    assert!(e.fs().request_restore(&i2, &StorageClass::DeepArchive, 0, Some(crate::vault::Tier::Standard), Some(2), false).unwrap());
    wait_for("explicit restore sent", || e.fs().store.counts().get("RestoreObject") == Some(&1));
}

#[test]
fn pending_restores_survive_restart_without_duplicates() {
    let (mut e, ino, d) = archived_env();
    *e.store.restore_delay.lock().unwrap() = Duration::from_secs(2);
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    wait_for("RestoreObject", || e.fs().store.counts().get("RestoreObject") == Some(&1));
    e.restart();
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    assert!(status_file(&e, ino).unwrap().contains("in progress"));
    wait_for("ready after restart", || open_errno(&e, ino, 0).is_none());
    assert_eq!(e.fs().store.counts().get("RestoreObject"), None, "no second request after the restart");
    assert_eq!(e.read_all(ino).unwrap(), d);
}

#[test]
fn restored_copy_expires_and_the_file_is_archived_again() {
    let (e, ino, d) = archived_env();
    *e.store.restore_lifetime.lock().unwrap() = Some(Duration::from_millis(1500));
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    wait_for("ready", || open_errno(&e, ino, 0).is_none());
    assert_eq!(e.read_all(ino).unwrap(), d);
    let t = status_file(&e, ino).unwrap();
    assert!(t.contains("ready until") && t.contains("GMT"), "{t}");
    // After the expiry date the placeholder disappears and the file is archived again.
    wait_for("expired", || status_file(&e, ino).is_none());
    assert_eq!(e.fs().store.counts()["RestoreObject"], 1);
}

#[test]
fn fetch_restored_keeps_the_file_readable_after_expiry() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.restore.fetch_restored = true;
    });
    *e.store.restore_delay.lock().unwrap() = Duration::from_millis(300);
    *e.store.restore_lifetime.lock().unwrap() = Some(Duration::from_millis(3000));
    let raw = e.fs().mkdir(ROOT, OsStr::new("raw"), 0o755, 0, 0).unwrap();
    let d = data(300_000, 30);
    let ino = e.write_file(raw.ino, "x.CR2", &d);
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    wait_for("fetched", || std::fs::read_dir(e.dir.path().join("rcache")).unwrap().count() == 1);
    wait_for("expired", || status_file(&e, ino).is_none());
    let gets = e.fs().store.counts()["GetObject"];
    assert_eq!(e.read_all(ino).unwrap(), d, "readable from the fetched copy after expiry");
    assert_eq!(e.fs().store.counts()["GetObject"], gets, "no S3 read needed");
}

/// Another valid object of the vault (anyone with write access to the bucket can make one)
/// in place of a version: `--fetch-restored` does not keep it, and reads answer EIO while the
/// restore lasts, never its plaintext.
#[test]
fn fetch_restored_keeps_only_this_version() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.restore.fetch_restored = true;
    });
    *e.store.restore_delay.lock().unwrap() = Duration::from_millis(300);
    let raw = e.fs().mkdir(ROOT, OsStr::new("raw"), 0o755, 0, 0).unwrap();
    let d = data(300_000, 32);
    let ino = e.write_file(raw.ino, "x.CR2", &d);
    e.fs().seal_ready(true).unwrap();
    e.wait_state(ino, State::Uploaded);
    let key = e.fs().getattr(ino).unwrap().object_key.unwrap();
    let other = data(300_000, 33);
    let mut forged = Vec::new();
    crypto::encrypt_stream(&e.fs().keys.public, other.len() as u64, &mut &other[..], &mut forged).unwrap();
    e.store.replace_body(&key, forged.into());
    assert_eq!(open_errno(&e, ino, 0), Some(libc::EAGAIN));
    wait_for("ready", || open_errno(&e, ino, 0).is_none());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_dir(e.dir.path().join("rcache")).unwrap().count(), 0, "another object was kept as this version");
    let r = e.read_all(ino);
    assert!(matches!(&r, Err(err) if err.errno() == libc::EIO), "{:?}", r.map(|b| b == other));
}

#[test]
fn class_refresh_learns_transitions_and_tags_are_sent() {
    let mut e = Env::new();
    e.restart_with(|c| {
        c.restore.class_refresh = Some(Duration::from_millis(300));
        c.policy.rules = vec![crate::rules::ClassRule {
            glob: "*.tif".into(),
            class: "STANDARD_IA".into(),
            tags: [("kind".to_string(), "master copy".to_string())].into(),
        }];
    });
    let (ino, key) = upload_one(&e, "a.tif", &data(1000, 31));
    let o = &e.store.snapshot()[&key];
    assert_eq!(o.storage_class, "STANDARD_IA");
    assert_eq!(o.tagging.as_deref(), Some("kind=master%20copy"));
    let heads = e.fs().store.counts().get("HeadObject").copied().unwrap_or(0); // the post-upload check
    e.store.set_storage_class(&key, "DEEP_ARCHIVE");
    wait_for("refresh", || e.fs().getattr(ino).unwrap().storage_class == Some(StorageClass::parse("DEEP_ARCHIVE")));
    assert!(e.fs().store.counts()["ListObjectsV2"] >= 1);
    assert_eq!(e.fs().store.counts().get("HeadObject").copied().unwrap_or(0), heads, "learned from the listing, not per-file HEADs");
}
