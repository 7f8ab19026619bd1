//! Tests of `Reads` (`fs/read.rs`, `fs/ahead.rs`) alone: no `Fs`, no index, no daemon and no
//! sleep. Objects are encrypted as the uploader encrypts them (a fresh `VersionCipher`,
//! `encrypt_range` over the frozen plaintext) and planted in a `MemoryStore`; each inode is
//! what the index records once the upload completed (key, size, header).

use super::*;
use crate::fs::ahead::Began;
use bytes::Bytes;
use std::io::Write;

/// A `Reads` on its own, over an in-memory bucket.
struct Bare {
    store: Arc<MemoryStore>,
    keys: Arc<VaultKeys>,
    reads: Reads,
    /// Drives the readers' GETs; dropped after `reads` (fields drop in order).
    _rt: tokio::runtime::Runtime,
}

impl Bare {
    fn new() -> Bare {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (_, keys) = VaultDescriptor::create_with_cost(b"pw", 1024, 1);
        let keys = Arc::new(keys);
        let store = MemoryStore::new();
        let reads = Reads::new(store.clone(), keys.clone(), rt.handle().clone(), 4 << 20);
        Bare { store, keys, reads, _rt: rt }
    }

    /// The object of a version of `d` as the uploader sends it (every byte of it), and the
    /// version's header.
    fn seal(&self, d: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut frozen = tempfile::tempfile().unwrap();
        frozen.write_all(d).unwrap();
        let c = crypto::VersionCipher::new(&self.keys.public, d.len() as u64);
        (c.encrypt_range(&frozen, 0, c.enc_len()).unwrap(), c.header().bytes.to_vec())
    }

    /// `d` uploaded under `key` as file `ino`: the inode the index holds afterwards.
    fn upload(&self, ino: u64, key: &str, d: &[u8]) -> Inode {
        let (body, header) = self.seal(d);
        self.store.plant(key, &body);
        uploaded(ino, key, d.len() as u64, header)
    }

    /// Plaintext [offset, offset+len) of `i`, through a new reader as a handle's first read.
    fn read(&self, i: &Inode, offset: u64, len: u64) -> Result<Bytes> {
        let r = self.reads.remote_reader(i, i.object_key.as_deref().unwrap())?;
        self.reads.read_remote(i, &r, offset, len)
    }
}

fn uploaded(ino: u64, key: &str, size: u64, header: Vec<u8>) -> Inode {
    let mut i = Fs::new_inode(ROOT, &format!("f{ino}"), Kind::File, 0o644, 0, 0);
    i.ino = ino;
    i.state = State::Uploaded;
    i.size = size;
    i.object_key = Some(key.into());
    i.header = Some(header);
    i
}

/// A refusal as the caller sees it: an authentication error, EIO to the application.
fn refused(r: Result<impl AsRef<[u8]>>) {
    match r {
        Err(e) => {
            assert!(matches!(e, FsError::Crypto(crypto::CryptoError::Auth)), "{e:?}");
            assert_eq!(e.errno(), libc::EIO);
        }
        Ok(b) => panic!("a bad object answered {} bytes", b.as_ref().len()),
    }
}

/// What the uploader sent reads back byte for byte from anywhere in the file: across segment
/// boundaries, from an unaligned offset, to the file's last byte; from the bucket and from an
/// encrypted local copy alike.
#[test]
fn an_uploaded_object_reads_back_at_any_offset() {
    let b = Bare::new();
    let d = data(200_000, 7);
    let i = b.upload(2, "v/d/a", &d);
    let (off, len) = (65_000u64, 70_001u64); // segment 0's end to segment 2's start
    assert_eq!(&b.read(&i, off, len).unwrap()[..], &d[off as usize..(off + len) as usize]);
    assert_eq!(&b.read(&i, 199_999, 1).unwrap()[..], &d[199_999..]);
    assert_eq!(&b.read(&i, 0, d.len() as u64).unwrap()[..], &d[..]);
    // The same object kept on the staging disk (the read cache of an earlier build).
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("copy.cv");
    std::fs::write(&local, &b.store.snapshot()["v/d/a"].body).unwrap();
    let got = b.reads.read_source(&i, &Source::Local(local.clone()), off, len).unwrap();
    assert_eq!(&got[..], &d[off as usize..(off + len) as usize]);
    // A read of no bytes (FUSE may ask for 0) answers none, at the start too.
    assert!(b.reads.read_source(&i, &Source::Local(local), 0, 0).unwrap().is_empty());
}

/// A changed, shortened or substituted object answers no bytes at all: an authentication
/// error (EIO), from the bucket and from a local copy.
#[test]
fn a_tampered_object_is_refused() {
    let b = Bare::new();
    let d = data(200_000, 8);
    let i = b.upload(2, "v/d/a", &d);
    let orig = b.store.snapshot()["v/d/a"].body.clone();
    // One bit flipped in the second segment.
    let mut bad = orig.to_vec();
    bad[HEADER_LEN + 65_552 + 10] ^= 0x80;
    b.store.replace_body("v/d/a", bad.clone().into());
    refused(b.read(&i, 65_000, 70_001));
    // Cut short.
    b.store.replace_body("v/d/a", orig.slice(..orig.len() - 100));
    refused(b.read(&i, 150_000, 50_000));
    // Another object of the vault under this key: the header is not the recorded one.
    let (other, _) = b.seal(&data(200_000, 9));
    b.store.replace_body("v/d/a", other.clone().into());
    refused(b.read(&i, 0, 4096));
    // The same, from local copies.
    let dir = tempfile::tempdir().unwrap();
    for (n, body) in [bad, other].into_iter().enumerate() {
        let p = dir.path().join(format!("{n}.cv"));
        std::fs::write(&p, body).unwrap();
        refused(b.reads.read_source(&i, &Source::Local(p), 65_000, 70_001));
    }
    // The object put back reads again: the refusals were the object's, not the reader's.
    b.store.replace_body("v/d/a", orig);
    assert_eq!(&b.read(&i, 65_000, 70_001).unwrap()[..], &d[65_000..135_001]);
}

/// A reader started ahead of an open is handed to the open only if it reads the version the
/// index now records (same object key, same header); either way it is taken out of the
/// started list, so a stale one is never handed out later.
#[test]
fn a_reader_started_ahead_is_adopted_only_for_the_same_object() {
    let b = Bare::new();
    let d = data(300_000, 10);
    let i = b.upload(5, "v/d/a", &d);
    b.reads.start_ahead(vec![i.clone()]);
    assert_eq!(b.reads.started_ahead(), vec![5]);
    let r = b.reads.adopt_started(&i, "v/d/a").expect("the reader started for this version");
    assert!(b.reads.started_ahead().is_empty());
    assert_eq!(&b.reads.read_remote(&i, &r, 1_000, 100_000).unwrap()[..], &d[1_000..101_000]);
    assert!(b.reads.adopt_started(&i, "v/d/a").is_none(), "adopted once only");

    // The file was uploaded again (new key and header) before the open: not adopted.
    b.reads.start_ahead(vec![i.clone()]);
    let newer = b.upload(5, "v/d/b", &data(300_000, 11));
    assert!(b.reads.adopt_started(&newer, "v/d/b").is_none(), "a reader of the old version was adopted");
    assert!(b.reads.started_ahead().is_empty(), "the stale reader was left in the started list");

    // Same key, another header (another object under the key): not adopted either.
    b.reads.start_ahead(vec![i.clone()]);
    let (_, other_header) = b.seal(&d);
    let forged = uploaded(5, "v/d/a", d.len() as u64, other_header);
    assert!(b.reads.adopt_started(&forged, "v/d/a").is_none(), "a reader under another header was adopted");
    // Nor is a reader adopted for another file.
    b.reads.start_ahead(vec![i.clone()]);
    assert!(b.reads.adopt_started(&uploaded(6, "v/d/a", d.len() as u64, i.header.clone().unwrap()), "v/d/a").is_none());
    assert_eq!(b.reads.started_ahead(), vec![5]);
}

/// Folder read-ahead follows a process that reads a folder file after file: the first file
/// it begins gives nothing to follow, the next ones name what it began there; files another
/// process began meanwhile are named (they are not read ahead again). (That those another
/// process began before are not named is not checked: it would take a clock that moved
/// between two calls, and this test does not sleep.)
#[test]
fn folder_read_ahead_follows_one_process_through_a_folder() {
    let b = Bare::new();
    let file = |ino: u64, parent: u64| Inode { parent, ..uploaded(ino, "v/d/x", 1, vec![0; HEADER_LEN]) };
    let (copier, other) = (100, 200);
    assert!(b.reads.began(&file(10, 1), other).is_none(), "first file of another process");
    assert!(b.reads.began(&file(11, 1), copier).is_none(), "first file of the copier: nothing to follow");
    let Began { mine, .. } = b.reads.began(&file(12, 1), copier).expect("the copier's second file");
    assert_eq!(mine, vec![11]);
    assert!(b.reads.began(&file(20, 1), other).is_some(), "the other process follows its own files");
    let Began { mine, others } = b.reads.began(&file(13, 1), copier).unwrap();
    assert_eq!(mine, vec![11, 12]);
    assert!(others.contains(&20), "file 20, begun by another process meanwhile: {others:?}");
    // Another folder is followed on its own.
    assert!(b.reads.began(&file(30, 2), copier).is_none());
}
