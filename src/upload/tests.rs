//! The uploader on a temporary index, driven by `Uploader::step` (through `step_inline`): no daemon, no timers, no
//! sleeps. Each test is one thing the upload protocol promises, with the store misbehaving
//! the way real ones do.

use super::*;
use crate::crypto::{VaultDescriptor, VaultKeys};
use crate::fs::{Fs, FsConfig};
use crate::meta::{State, ROOT};
use crate::store::memory::MemoryStore;
use crate::store::Counted;
use std::ffi::OsStr;

struct Book {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store: Arc<MemoryStore>,
    fs: Arc<Fs>,
}

fn keys() -> Arc<VaultKeys> {
    static KEYS: std::sync::OnceLock<Arc<VaultKeys>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Arc::new(VaultDescriptor::create_with_cost(b"pw", 1024, 1).1)).clone()
}

impl Book {
    fn new() -> Book {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let store = MemoryStore::new();
        let fs = Fs::new(FsConfig::for_tests(dir.path()), keys(), Arc::new(Counted::new(store.clone())), rt.handle().clone()).unwrap();
        Book { _dir: dir, rt, store, fs }
    }

    /// A closed file, sealed: one version queued.
    fn sealed(&self, name: &str, data: &[u8]) -> u64 {
        let (i, fh) = self.fs.create(ROOT, OsStr::new(name), 0o644, 0, 0).unwrap();
        self.fs.write(fh, 0, data).unwrap();
        self.fs.release(fh).unwrap();
        self.fs.seal_ready(true).unwrap();
        assert_eq!(self.state(i.ino), State::Sealed);
        i.ino
    }

    fn state(&self, ino: u64) -> State {
        self.fs.state_of(ino).unwrap().unwrap().1
    }

    fn uploader(&self, can_read: bool) -> Arc<Uploader> {
        let env = UploadEnv {
            store: self.fs.store().clone(),
            can_read,
            prefix: self.fs.cfg().prefix.clone(),
            signer: self.fs.signer().clone(),
            vault: self.fs.keys().public,
            wakeup: self.fs.upload_wakeup().clone(),
        };
        // Retries are due at once: the tests step through them instead of waiting.
        let cfg = UploadConfig { base_backoff: Duration::ZERO, max_backoff: Duration::ZERO, ..Default::default() };
        Uploader::new(self.fs.upload_book(), env, cfg, tokio::sync::watch::channel(false).1)
    }

    fn step(&self, up: &Arc<Uploader>) -> usize {
        self.rt.block_on(up.step_inline())
    }

    fn key(&self, ino: u64) -> String {
        self.fs.getattr(ino).unwrap().object_key.unwrap()
    }
}

#[test]
fn one_step_puts_a_signed_version_checks_it_and_records_it() {
    let b = Book::new();
    let ino = b.sealed("a.jpg", &[7u8; 50_000]);
    let up = b.uploader(true);
    assert_eq!(b.step(&up), 1);
    assert_eq!(b.state(ino), State::Uploaded);
    let key = b.key(ino);
    let o = &b.store.snapshot()[&key];
    assert!(o.metadata.get(crate::crypto::sign::META).is_some_and(|s| s.starts_with(b.fs.signer().machine())), "signed by this machine");
    let counts = b.fs.store().counts();
    assert_eq!((counts["PutObject"], counts["HeadObject"]), (1, 1), "one PUT, one HEAD checking what landed");
    assert_eq!(b.step(&up), 0, "nothing left");
}

#[test]
fn a_lost_answer_is_found_in_place_and_not_sent_twice() {
    let b = Book::new();
    let ino = b.sealed("a.jpg", &[8u8; 40_000]);
    b.store.lose_next_response("PutObject");
    let up = b.uploader(true);
    b.step(&up);
    assert_eq!(b.state(ino), State::Sealed, "the version stays queued after a lost answer");
    b.step(&up);
    assert_eq!(b.state(ino), State::Uploaded);
    assert_eq!(b.store.version_count(&b.key(ino)), 1, "the object the lost answer was about is the version, not a second copy");
}

#[test]
fn an_occupied_key_is_never_overwritten_the_version_moves() {
    let b = Book::new();
    let ino = b.sealed("a.jpg", &[9u8; 30_000]);
    let queued = b.fs.upload_book().queued_uploads()[0].object_key.clone();
    b.store.plant(&queued, b"someone else's object");
    let up = b.uploader(true);
    b.step(&up);
    b.step(&up);
    assert_eq!(b.state(ino), State::Uploaded);
    assert_ne!(b.key(ino), queued, "uploaded under a fresh key");
    assert_eq!(&b.store.snapshot()[&queued].body[..], b"someone else's object", "the other object is untouched");
    assert_eq!(b.store.version_count(&queued), 1);
}

#[test]
fn a_write_only_uploader_asks_nothing_of_the_bucket() {
    let b = Book::new();
    let ino = b.sealed("a.jpg", &[10u8; 20_000]);
    let up = b.uploader(false);
    b.step(&up);
    assert_eq!(b.state(ino), State::Uploaded);
    assert_eq!(b.fs.store().counts().get("HeadObject"), None, "no HEAD: PutObject is all a write-only machine may do");
}

#[test]
fn a_permanent_refusal_parks_the_version_and_keeps_its_bytes() {
    let b = Book::new();
    let data = vec![11u8; 25_000];
    let ino = b.sealed("a.jpg", &data);
    b.store.fail_op("PutObject", 1, StoreError::Permanent { code: "AccessDenied".into(), message: "no".into() });
    let up = b.uploader(true);
    b.step(&up);
    assert_eq!(b.state(ino), State::Failed);
    assert_eq!(b.step(&up), 0, "a parked version is not retried by itself");
    let (fh, _) = b.fs.open(ino, false, false, 0).unwrap();
    assert_eq!(b.fs.read(fh, 0, 100_000).unwrap(), &data[..], "still readable from the staging disk");
    b.fs.release(fh).unwrap();
}

#[test]
fn a_version_rewritten_before_its_turn_is_not_sent() {
    let b = Book::new();
    let ino = b.sealed("a.jpg", &[12u8; 10_000]);
    let (fh, _) = b.fs.open(ino, true, true, 0).unwrap();
    b.fs.write(fh, 0, b"new").unwrap();
    b.fs.release(fh).unwrap();
    let up = b.uploader(true);
    assert_eq!(b.step(&up), 0, "the sealed version was cancelled by the rewrite");
    assert_eq!(b.fs.store().counts().get("PutObject"), None);
}
