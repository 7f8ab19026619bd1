//! Tests of attributes (`fs/attrs.rs`): readdir in pages, and times outside 1970–2262 through restart, upload and rebuild.

use super::*;

/// Times past 2262 (and before 1970) are kept exactly: through the index, a restart, the
/// upload's journal record and object metadata, an attribute change after the upload, and a
/// rebuild on a new machine (smbtorture's `smb2.timestamps` sets 10,000,000,000 s and
/// 15,032,385,535 s; an i64 of nanoseconds read them back as 1653 and 2446 → garbage).
#[test]
fn times_beyond_2262_and_before_1970_survive_restart_upload_and_rebuild() {
    let mut e = Env::new();
    let far: crate::clock::Nanos = 15_032_385_535 * 1_000_000_000 + 999_999_999;
    let farther: crate::clock::Nanos = 10_000_000_000 * 1_000_000_000;
    let before: crate::clock::Nanos = -11_644_473_600 * 1_000_000_000; // 1601, FILETIME 0
    let fs = e.fs();
    let a = e.write_file(ROOT, "a.jpg", &data(1000, 9));
    let d = fs.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino;
    fs.setattr(a, None, None, None, None, Some(before), Some(far)).unwrap();
    fs.setattr(d, None, None, None, None, None, Some(before)).unwrap();
    assert_eq!(fs.getattr(a).unwrap().mtime_ns, far);
    drop(fs);
    e.restart();
    let fs = e.fs();
    assert_eq!((fs.getattr(a).unwrap().atime_ns, fs.getattr(a).unwrap().mtime_ns), (before, far), "after a restart");
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    let b = e.write_file(ROOT, "b.jpg", &data(1000, 10));
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    fs.setattr(b, None, None, None, None, None, Some(farther)).unwrap();
    flush_journal(&e);
    let (_dir, d2) = fresh_machine(&e);
    let f2 = d2.fs.clone();
    assert_eq!(f2.resolve("a.jpg").unwrap().mtime_ns, far, "upload record");
    assert_eq!(f2.resolve("b.jpg").unwrap().mtime_ns, farther, "attr record");
    assert_eq!(f2.resolve("d").unwrap().mtime_ns, before, "folder");
    drop(f2);
    e.rt.block_on(d2.shutdown());
}

/// A listing read page by page (as FUSE does, resuming after the last inode it got) gives
/// every entry once, in order, with files created and removed between pages handled as a
/// local filesystem does (entries present throughout are listed exactly once).
#[test]
fn readdir_pages_list_every_entry_once() {
    let e = Env::new();
    let fs = e.fs();
    let d = fs.mkdir(ROOT, OsStr::new("big"), 0o755, 0, 0).unwrap();
    for k in 0..300 {
        let (_, fh) = fs.create(d.ino, OsStr::new(&format!("f{k:03}")), 0o644, 0, 0).unwrap();
        fs.release(fh).unwrap();
    }
    let mut seen = Vec::new();
    let (mut after, mut changed) = (0, false);
    loop {
        let page = fs.readdir_after(d.ino, after, 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().unwrap().ino;
        seen.extend(page.into_iter().map(|i| i.name));
        if seen.len() >= 100 && !changed {
            changed = true;
            // Changes between pages: an entry already listed goes, a new one comes.
            fs.unlink(d.ino, OsStr::new("f000")).unwrap();
            let (_, fh) = fs.create(d.ino, OsStr::new("new"), 0o644, 0, 0).unwrap();
            fs.release(fh).unwrap();
        }
    }
    let want: Vec<String> = (0..300).map(|k| format!("f{k:03}")).chain(["new".to_string()]).collect();
    assert_eq!(seen, want);
}

/// Extended attributes within ext4's limits (review N4): a name of at most 255 bytes, a value
/// and all of a file's names and values at most 64 KiB; what they grow by counts in the owner's
/// staging quota; and however many changes are made, no journal batch goes past what a
/// rebuild reads, which shows the last value.
#[test]
fn extended_attributes_stay_within_ext4s_limits_and_the_quota() {
    let mut e = Env::new();
    let fs = e.fs();
    // Uploaded: its attribute changes are journaled one by one.
    let (ino, _) = upload_one(&e, "a.jpg", b"x");
    let errno = |r: Result<()>| r.err().map(|e| e.errno());
    let long = format!("user.{}", "n".repeat(251));
    assert_eq!(errno(fs.setxattr(ino, OsStr::new(&long), b"v", 0)), Some(libc::ERANGE));
    assert_eq!(errno(fs.setxattr(ino, OsStr::new(&long[..255]), b"v", 0)), None);
    assert_eq!(errno(fs.setxattr(ino, OsStr::new("user.big"), &vec![1; (64 << 10) + 1], 0)), Some(libc::E2BIG));
    assert_eq!(errno(fs.setxattr(ino, OsStr::new("user.a"), &vec![1; 60 << 10], 0)), None);
    assert_eq!(errno(fs.setxattr(ino, OsStr::new("user.b"), &vec![2; 5 << 10], 0)), Some(libc::ENOSPC));
    // Replacing a value counts it once, and room freed is room again.
    assert_eq!(errno(fs.setxattr(ino, OsStr::new("user.a"), &vec![3; 58 << 10], 0)), None);
    fs.removexattr(ino, OsStr::new(&long[..255])).unwrap();
    assert_eq!(errno(fs.setxattr(ino, OsStr::new("user.b"), &vec![2; 5 << 10], 0)), None);
    assert_eq!(fs.getxattr(ino, OsStr::new("user.a")).unwrap(), vec![3; 58 << 10]);

    // Many changes of a large attribute: batches stay within what a rebuild reads.
    for k in 0..200u32 {
        fs.setxattr(ino, OsStr::new("user.a"), &vec![(k % 251) as u8; 58 << 10], 0).unwrap();
    }
    flush_journal(&e);
    let batches: Vec<usize> = e.store.snapshot().into_iter().filter(|(k, _)| k.starts_with("v/j/")).map(|(_, o)| o.body.len()).collect();
    assert!(batches.len() > 2 && batches.iter().all(|&n| n < 9 << 20), "{batches:?}");
    drop(fs);
    let (_d, other) = fresh_machine(&e);
    let i = other.fs.resolve("a.jpg").unwrap();
    assert_eq!(other.fs.getxattr(i.ino, OsStr::new("user.a")).unwrap(), vec![199u8; 58 << 10]);
    e.rt.block_on(other.shutdown());

    // With a staging quota, the growth is charged to the file's owner.
    e.restart_with(|c| c.staging_quota = Some(1 << 20));
    let fs = e.fs();
    let big = e.write_file(ROOT, "big.bin", &vec![0; (1 << 20) - 1000]);
    let small = e.write_file(ROOT, "small.txt", b"s");
    assert_eq!(errno(fs.setxattr(small, OsStr::new("user.c"), &vec![1; 8 << 10], 0)), Some(libc::EDQUOT));
    assert_eq!(errno(fs.setxattr(small, OsStr::new("user.c"), &[1; 100], 0)), None);
    let _ = big;
}
