//! What a restore may and may not do to the destination, and fetching in bounded chunks.

use super::*;
use crate::sealed::{Budget, CHUNK_MAX, INITIAL_WINDOW};
use crate::store::memory::MemoryStore;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn attrs(mode: u32) -> Attrs {
    Attrs { mode, uid: 0, gid: 0, mtime_ns: 1_600_000_000_123_456_789 }
}

fn nothing_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// A link planted in the destination (by another user, or left there) is never followed: not
/// to create a file, a folder, or to set a folder's mode.
#[test]
fn a_symlink_in_the_destination_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("photos")).unwrap();
    let d = Dest::open(&dest, false).unwrap();
    let e = d.create_file("photos/pwned").err().expect("a file below a link was created");
    assert!(matches!(e, ExtractError::Unsafe(_)) && e.to_string().contains("symbolic link"), "{e}");
    assert!(d.make_dir("photos/sub").is_err());
    assert!(d.symlink("photos/l", "/etc/passwd", attrs(0o777)).is_err());
    assert!(d.finish_dir("photos", attrs(0o777)).is_err());
    assert!(nothing_in(&outside));
    assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777, 0o700, "chmod went through the link");
}

/// The tree itself may say "photos/x is a link to ~/.ssh" and then "photos/x/authorized_keys is
/// a file": the link made first is not followed by the file made next.
#[test]
fn a_link_restored_earlier_is_not_followed_later() {
    let t = tempfile::tempdir().unwrap();
    let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let d = Dest::open(&dest, false).unwrap();
    d.symlink("photos/x", outside.to_str().unwrap(), attrs(0o777)).unwrap();
    assert_eq!(std::fs::read_link(dest.join("photos/x")).unwrap(), outside, "the target is kept verbatim");
    assert!(d.create_file("photos/x/authorized_keys").is_err());
    assert!(nothing_in(&outside));
}

/// A file appears under its name only when committed, with its mode (setuid and setgid
/// dropped) and time; one dropped before leaves nothing, not even its partial copy.
#[test]
fn a_file_is_under_its_name_only_once_committed() {
    let t = tempfile::tempdir().unwrap();
    let d = Dest::open(t.path(), false).unwrap();
    let mut p = d.create_file("a/b/c.bin").unwrap();
    p.file().write_all(b"half").unwrap();
    drop(p);
    assert!(!t.path().join("a/b/c.bin").exists());
    assert!(nothing_in(&t.path().join("a/b")), "the partial copy stays behind");
    let mut p = d.create_file("a/b/c.bin").unwrap();
    p.file().write_all(b"whole").unwrap();
    p.commit(attrs(0o6755)).unwrap();
    let m = std::fs::symlink_metadata(t.path().join("a/b/c.bin")).unwrap();
    assert_eq!(std::fs::read(t.path().join("a/b/c.bin")).unwrap(), b"whole");
    assert_eq!(m.permissions().mode() & 0o7777, 0o755, "setuid/setgid kept without owners");
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(std::fs::read_dir(t.path().join("a/b")).unwrap().count(), 1);
}

/// A second run skips a file only if it is this version: same content (read and hashed, not
/// size and time, which whoever can write the file can set), a regular file with one link and
/// the owner a restore gives; its mode and time are then set as a restore would.
#[test]
fn only_a_file_with_the_recorded_content_counts_as_already_restored() {
    let t = tempfile::tempdir().unwrap();
    let d = Dest::open(t.path(), false).unwrap();
    let w = |body: &[u8]| Wanted { key: "k".into(), size: body.len() as u64, sha256: hex::encode(Sha256::digest(body)), header: None };
    let a = attrs(0o640);
    let p = t.path().join("f");
    std::fs::write(&p, b"right").unwrap();
    assert!(d.already_restored("f", &w(b"right"), a));
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!((m.permissions().mode() & 0o7777, m.mtime_nsec()), (0o640, 123_456_789), "mode and time set as a restore would");
    // Same size and time, other bytes (ransomware, bit rot, another user's planted copy).
    std::fs::write(&p, b"wrong").unwrap();
    let f = File::options().write(true).open(&p).unwrap();
    f.set_modified(crate::clock::from_nanos(a.mtime_ns)).unwrap();
    assert!(!d.already_restored("f", &w(b"right"), a));
    // The right bytes behind a second name, or behind a link: not a file of this restore.
    std::fs::write(&p, b"right").unwrap();
    std::fs::hard_link(&p, t.path().join("g")).unwrap();
    assert!(!d.already_restored("f", &w(b"right"), a));
    std::fs::remove_file(t.path().join("g")).unwrap();
    std::os::unix::fs::symlink(&p, t.path().join("l")).unwrap();
    assert!(!d.already_restored("l", &w(b"right"), a));
    assert!(!d.already_restored("f", &Wanted { sha256: String::new(), ..w(b"right") }, a), "nothing to check against");
    assert!(!d.already_restored("missing", &w(b"right"), a));
}

/// A folder everyone may write to (without the sticky bit), as the destination or inside it:
/// others could swap what is restored there, so nothing is written in it.
#[test]
fn a_folder_open_to_everyone_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Dest::open(&open, false).err().expect("an open destination was used");
    assert!(e.to_string().contains("everyone may write"), "{e}");
    let dest = t.path().join("dest");
    std::fs::create_dir_all(dest.join("shared")).unwrap();
    std::fs::set_permissions(dest.join("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = Dest::open(&dest, false).unwrap();
    assert!(d.create_file("shared/x").is_err());
    std::fs::set_permissions(dest.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(d.create_file("shared/x").is_ok(), "with the sticky bit, only its owner can move a file");
}

/// Restoring over a link replaces the link, never what it points to; over a folder, it fails
/// and the folder stays.
#[test]
fn a_file_replaces_a_link_at_its_name_and_never_a_folder() {
    let t = tempfile::tempdir().unwrap();
    let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("target"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.join("target"), dest.join("f")).unwrap();
    std::fs::create_dir_all(dest.join("dir/inside")).unwrap();
    let d = Dest::open(&dest, false).unwrap();
    let mut p = d.create_file("f").unwrap();
    p.file().write_all(b"restored").unwrap();
    p.commit(attrs(0o644)).unwrap();
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    let mut p = d.create_file("dir").unwrap();
    p.file().write_all(b"x").unwrap();
    let e = p.commit(attrs(0o644)).expect_err("a file replaced a folder");
    assert!(e.to_string().contains("is a folder"), "{e}");
    assert!(dest.join("dir/inside").is_dir());
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 2, "a partial copy was left");
}

fn keys() -> crypto::VaultKeys {
    crypto::VaultDescriptor::create_with_cost(b"pw", 1024, 1).1
}

fn sealed(keys: &crypto::VaultKeys, data: &[u8]) -> (Vec<u8>, Wanted) {
    let mut body = Vec::new();
    let s = crypto::encrypt_stream(&keys.public, data.len() as u64, &mut &data[..], &mut body).unwrap();
    let w = Wanted { key: "d/k".into(), size: data.len() as u64, sha256: hex::encode(s.sha256), header: Some(s.header.bytes.to_vec()) };
    (body, w)
}

/// A file of several chunks comes back whole through ranged GETs, whatever its size relative
/// to segments and chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_comes_back_whole_in_chunks() {
    let k = keys();
    for size in [0u64, 1, crypto::SEGMENT, INITIAL_WINDOW, CHUNK_MAX, CHUNK_MAX * 3 + 12345] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let (body, w) = sealed(&k, &data);
        let store = MemoryStore::new();
        store.plant(&w.key, &body);
        let mut out = Vec::new();
        let progress = AtomicU64::new(0);
        fetch_to(store.clone(), &k, &w, &mut out, &progress, &Budget::new(16 << 20)).await.unwrap();
        assert!(out == data, "size {size}");
        assert_eq!(progress.load(Ordering::Relaxed), size);
        // The first MiB in one GET, then larger ones: never more than one per MiB.
        let gets = store.calls_of("GetObject");
        assert!(gets >= 1 && gets <= size.div_ceil(INITIAL_WINDOW).max(1), "size {size}: {gets} GETs");
    }
}

/// What the bucket may hold instead of the recorded version, each refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_object_is_refused() {
    let k = keys();
    let data: Vec<u8> = (0..(INITIAL_WINDOW * 3)).map(|i| (i % 253) as u8).collect();
    let (body, w) = sealed(&k, &data);
    let fetch = |planted: Vec<u8>, w: Wanted| {
        let k = &k;
        async move {
            let store = MemoryStore::new();
            store.plant(&w.key, &planted);
            let mut out = Vec::new();
            fetch_to(store, k, &w, &mut out, &AtomicU64::new(0), &Budget::new(16 << 20)).await
        }
    };
    let short = fetch(body[..body.len() - 100].to_vec(), w.clone()).await;
    assert!(matches!(&short, Err(ExtractError::Corrupt(m)) if m.contains("shorter")), "{short:?}");
    let (other, _) = sealed(&k, &data);
    let swapped = fetch(other, w.clone()).await;
    assert!(matches!(&swapped, Err(ExtractError::Corrupt(m)) if m.contains("header")), "{swapped:?}");
    let mut flipped = body.clone();
    flipped[crypto::HEADER_LEN + 70_000] ^= 1;
    let bad = fetch(flipped, w.clone()).await;
    assert!(matches!(&bad, Err(ExtractError::Corrupt(m)) if m.contains("segment 1")), "{bad:?}");
    let lying = fetch(body.clone(), Wanted { sha256: "00".repeat(32), ..w.clone() }).await;
    assert!(matches!(&lying, Err(ExtractError::Corrupt(m)) if m.contains("SHA-256")), "{lying:?}");
    let missing = {
        let store = MemoryStore::new();
        fetch_to(store, &k, &w, &mut Vec::new(), &AtomicU64::new(0), &Budget::new(16 << 20)).await
    };
    assert!(matches!(missing, Err(ExtractError::Store(StoreError::NotFound))), "{missing:?}");
}
