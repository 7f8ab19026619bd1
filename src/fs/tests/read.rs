//! Tests of the read path (`fs/read.rs`): tampered objects give EIO, the read cache and its budget, a local copy read under the recorded header.

use super::*;

#[test]
fn tampered_objects_give_eio_never_wrong_bytes() {
    let e = Env::new();
    let d = data(200_000, 3);
    let (ino, key) = upload_one(&e, "a", &d);
    let (ino_b, key_b) = upload_one(&e, "b", &data(200_000, 4));
    let orig = e.store.snapshot()[&key].body.clone();
    let eio = |r: Result<Vec<u8>>| match r {
        Err(err) => assert_eq!(err.errno(), libc::EIO, "{err}"),
        Ok(v) => panic!("tampered object returned {} bytes", v.len()),
    };
    // Flipped bit in the second segment.
    let mut b = orig.to_vec();
    b[128 + 65552 + 10] ^= 0x80;
    e.store.replace_body(&key, b.into());
    eio(e.read_all(ino));
    // Truncated.
    e.store.replace_body(&key, orig.slice(..orig.len() - 100));
    eio(e.read_all(ino));
    // Swapped segments.
    let mut b = orig.to_vec();
    let s = 65552;
    let (x, y) = (b[128..128 + s].to_vec(), b[128 + s..128 + 2 * s].to_vec());
    b[128..128 + s].copy_from_slice(&y);
    b[128 + s..128 + 2 * s].copy_from_slice(&x);
    e.store.replace_body(&key, b.into());
    eio(e.read_all(ino));
    // Swapped objects: a's key now holds b's body.
    e.store.replace_body(&key, e.store.snapshot()[&key_b].body.clone());
    eio(e.read_all(ino));
    // Untouched b still reads fine, and restoring a's bytes makes it readable again.
    assert_eq!(e.read_all(ino_b).unwrap(), data(200_000, 4));
    e.store.replace_body(&key, orig);
    assert_eq!(e.read_all(ino).unwrap(), d);
}

#[test]
fn read_cache_keeps_uploaded_objects_local_within_budget() {
    let mut e = Env::new();
    // Restart with a 1 MiB read cache.
    let d = e.daemon.take().unwrap();
    e.rt.block_on(d.shutdown());
    let mut c = cfg(e.dir.path());
    c.read_cache = 1 << 20;
    e.daemon = Some(Daemon::start(e.rt.handle(), e.store.clone(), e.keys.clone(), c, fast_upload()).unwrap());
    let small = data(300_000, 8);
    let (ino, _) = upload_one(&e, "small", &small);
    assert_eq!(e.read_all(ino).unwrap(), small);
    assert_eq!(e.fs().store.counts().get("GetObject"), None, "served from the read cache");
    // Two more objects overflow the 1 MiB budget: the oldest is evicted, reads go to S3.
    let (ino2, _) = upload_one(&e, "b", &data(500_000, 9));
    let _ = upload_one(&e, "c", &data(500_000, 10));
    // Evicted entries go once the uploads' completions are durable (the group commit).
    e.fs().group_commit().unwrap();
    let cached: u64 = std::fs::read_dir(e.dir.path().join("rcache")).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    assert!(cached <= 1 << 20, "read cache over budget: {cached}");
    assert_eq!(e.read_all(ino).unwrap(), small);
    assert_eq!(e.read_all(ino2).unwrap(), data(500_000, 9));
}

/// Review N18: every upload's completion listed the read cache (a stat per cached file) under
/// the index lock, to see whether something had to go. It is listed only when it may be over
/// its budget now, and then brought down to 90 % of it.
#[test]
fn the_read_cache_is_listed_only_when_it_may_be_full() {
    let mut e = Env::new();
    e.restart_with(|c| c.read_cache = 1 << 20);
    let fs = e.fs();
    let listings = || fs.staging.rcache_listings.load(std::sync::atomic::Ordering::Relaxed);
    for k in 0..20u8 {
        upload_one(&e, &format!("f{k}"), &data(20_000, k));
    }
    assert_eq!(listings(), 1, "20 small uploads into a 1 MiB read cache list it once (to learn what is in it)");
    for k in 0..10u8 {
        upload_one(&e, &format!("g{k}"), &data(100_000, k));
    }
    fs.group_commit().unwrap();
    let cached: u64 = std::fs::read_dir(e.dir.path().join("rcache")).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    assert!(cached <= 1 << 20, "read cache over budget: {cached}");
    assert!(listings() <= 4, "{} listings for 10 uploads past the budget", listings());
}

/// A local encrypted copy of an uploaded version that is in fact another object (replaced on
/// disk, or fetched by an earlier build that did not check) is read under the index's header:
/// EIO, never the other object's plaintext.
#[test]
fn a_cached_copy_is_read_under_the_recorded_header() {
    let e = Env::new();
    let d = data(200_000, 34);
    let (ino, _) = upload_one(&e, "a", &d);
    let h = e.fs().getattr(ino).unwrap().header.unwrap();
    let other = data(200_000, 35);
    let mut forged = Vec::new();
    crypto::encrypt_stream(&e.fs().keys.public, other.len() as u64, &mut &other[..], &mut forged).unwrap();
    std::fs::write(e.fs().staging.rcache_path(&h[96..128]), &forged).unwrap();
    let r = e.read_all(ino);
    assert!(matches!(&r, Err(err) if err.errno() == libc::EIO), "{:?}", r.map(|b| b == other));
}
