//! Tests of the staging quota (`fs/quota.rs`): one user's staged bytes, EDQUOT, another user's own quota.

use super::*;

/// One user's files waiting for upload stay within the staging quota: the write that would
/// cross it gets EDQUOT and leaves what was written whole, a truncate that grows a file is
/// charged too, another user still writes, and once the uploads are done the same user writes
/// again.
#[test]
fn a_users_staged_bytes_stay_within_the_staging_quota() {
    let mut e = Env::new();
    e.restart_with(|c| c.staging_quota = Some(1 << 20));
    let fs = e.fs();
    let (a, fa) = fs.create(ROOT, OsStr::new("a"), 0o644, 1000, 100).unwrap();
    assert_eq!(fs.write(fa, 0, &vec![1u8; 700 << 10]).unwrap(), 700 << 10);
    fs.release(fa).unwrap();
    let (b, fb) = fs.create(ROOT, OsStr::new("b"), 0o644, 1000, 100).unwrap();
    assert_eq!(fs.write(fb, 0, &vec![2u8; 300 << 10]).unwrap(), 300 << 10);
    let err = fs.write(fb, 300 << 10, &vec![2u8; 100 << 10]).unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT, "{err}");
    let err = fs.setattr(b.ino, None, None, None, Some(2 << 20), None, None).unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT, "a growing truncate is charged: {err}");
    fs.release(fb).unwrap();
    assert_eq!(e.read_all(a.ino).unwrap(), vec![1u8; 700 << 10]);
    assert_eq!(e.read_all(b.ino).unwrap(), vec![2u8; 300 << 10]);
    // Another user's quota is their own.
    let (_, fc) = fs.create(ROOT, OsStr::new("c"), 0o644, 1001, 100).unwrap();
    assert_eq!(fs.write(fc, 0, &vec![3u8; 900 << 10]).unwrap(), 900 << 10);
    fs.release(fc).unwrap();
    // Uploaded, the files leave the staging disk: the first user writes again.
    fs.seal_ready(true).unwrap();
    e.wait_uploaded();
    let (_, fd) = fs.create(ROOT, OsStr::new("d"), 0o644, 1000, 100).unwrap();
    assert_eq!(fs.write(fd, 0, &vec![4u8; 900 << 10]).unwrap(), 900 << 10);
    fs.release(fd).unwrap();
    // Writing into part of an uploaded file stages its old content again: charged too (the
    // open alone stages nothing).
    let (fh, _) = fs.open(a.ino, true, false, 0).unwrap();
    let err = fs.write(fh, 0, b"x").unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT, "{err}");
    fs.release(fh).unwrap();
    let (fh, _) = fs.open(a.ino, true, true, 0).unwrap();
    fs.release(fh).unwrap();
}
