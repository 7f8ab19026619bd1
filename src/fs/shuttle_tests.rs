//! Model-checked races of the filesystem core: the real `Fs` (SQLite index, staging files,
//! encryption) driven by shuttle threads that play a writer, the sealer and the uploader.
//! Every acquisition and release of the core's locks is a point where shuttle may switch
//! threads, and it explores those interleavings (random and PCT schedules) far more densely
//! than real threads do. After each run the system is driven to rest and checked against what
//! a user must see: the newest closed content, readable through the mount and in the bucket;
//! no version lost, none overwritten; nothing left behind in the cache dir.
//!
//! Run: `cargo test --release --features shuttle --lib shuttle_` (scripts/test.sh does). A
//! failing schedule is printed by shuttle and can be replayed with `shuttle::replay`.

use super::*;
use crate::crypto::VaultDescriptor;
use crate::crypto::{Header, Opened};
use crate::meta::ROOT;
use crate::store::memory::MemoryStore;
use shuttle::thread;
use std::ffi::OsStr;
use std::sync::OnceLock;

/// Iterations per strategy: each builds a fresh index and cache dir on tmpfs when it can.
const RANDOM_RUNS: usize = 800;
const PCT_RUNS: usize = 800;

fn keys() -> Arc<VaultKeys> {
    static KEYS: OnceLock<Arc<VaultKeys>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(VaultDescriptor::create_with_cost(b"pw", 1024, 1).1)).clone()
}

/// A runtime with a worker of its own: reads of uploaded files fetch in spawned tasks
/// (`sealed::Chunk`), which a current-thread runtime driven only through `Handle::block_on`
/// never runs. Those tasks touch no shuttle primitive.
fn runtime() -> tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()).handle().clone()
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    fs: Arc<Fs>,
}

impl World {
    fn new() -> World {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::Builder::new().prefix("cv-shuttle").tempdir_in(base).unwrap();
        let store = MemoryStore::new();
        let cfg = FsConfig {
            group_commit: crate::fs::GROUP_COMMIT,
            journal: crate::remote_meta::JournalConfig::default(),
            ..FsConfig::for_tests(dir.path())
        };
        let fs = Fs::new(cfg, keys(), Arc::new(Counted::new(store.clone())), runtime()).unwrap();
        World { _dir: dir, store, fs }
    }

    fn write_file(&self, name: &str, data: &[u8]) -> u64 {
        let (i, fh) = self.fs.create(ROOT, OsStr::new(name), 0o644, 0, 0).unwrap();
        self.fs.write(fh, 0, data).unwrap();
        self.fs.release(fh).unwrap();
        i.ino
    }

    /// One pass of the real uploader (`Uploader::step`: mark, encrypt from the frozen copy,
    /// check the row still exists, sign, conditional PUT, check what landed, complete), inline
    /// in this shuttle thread so shuttle schedules each of its index calls.
    fn upload_pass(&self) -> usize {
        let fs = &self.fs;
        let env = crate::upload::UploadEnv {
            store: fs.store.clone(),
            can_read: true,
            prefix: fs.cfg.prefix.clone(),
            signer: fs.signer.clone(),
            vault: fs.keys.public,
            wakeup: fs.upload_wakeup.clone(),
        };
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let cfg = crate::upload::UploadConfig { concurrency: 8, ..Default::default() };
        let up = crate::upload::Uploader::new(fs.upload_book(), env, cfg, stop_rx);
        runtime().block_on(up.step_inline())
    }

    /// Seal and upload until nothing is pending, as the daemon would after the race.
    fn settle(&self) {
        for _ in 0..10 {
            self.fs.seal_ready(true).unwrap();
            self.upload_pass();
            if self.fs.status().unwrap().pending_files == 0 {
                return;
            }
        }
        panic!("never settled: {:?}", self.fs.status().unwrap());
    }

    fn read_all(&self, ino: u64) -> Vec<u8> {
        let (fh, _) = self.fs.open(ino, false, false, 0).unwrap();
        let size = self.fs.getattr(ino).unwrap().size;
        let d = self.fs.read(fh, 0, size as u32 + 1).unwrap();
        self.fs.release(fh).unwrap();
        d.to_vec()
    }

    /// The object the index names for `ino`, decrypted.
    fn object_of(&self, ino: u64) -> Vec<u8> {
        let i = self.fs.getattr(ino).unwrap();
        let key = i.object_key.expect("uploaded");
        let body = self.store.snapshot()[&key].body.clone();
        decrypt(&body, i.size)
    }

    /// What a user checks after the dust settles: the file reads `want` through the mount and
    /// from its object; every data object in the bucket is one of the versions that were
    /// closed (none damaged, none mixed); the staging dirs hold nothing.
    fn check(&self, ino: u64, want: &[u8], versions: &[&[u8]]) {
        self.settle();
        assert_eq!(self.read_all(ino), want, "read through the mount");
        assert_eq!(self.object_of(ino), want, "the file's object in the bucket");
        let objects: Vec<_> = self.store.snapshot().into_iter().filter(|(k, _)| k.starts_with("v/d/")).collect();
        assert_eq!(self.store.versions_under("v/d/"), objects.len(), "an object was written twice");
        for (key, o) in objects {
            let h = Header::parse(&o.body).unwrap();
            let size = versions.iter().map(|v| v.len() as u64).find(|n| crypto::encrypted_len(*n) == o.body.len() as u64);
            let pt = decrypt(&o.body, size.unwrap_or_else(|| panic!("object {key} has no version's size")));
            assert!(versions.contains(&pt.as_slice()), "object {key} ({} bytes, header {:?}) is no closed version", pt.len(), &h.bytes[..8]);
        }
        self.fs.group_commit().unwrap(); // released files go once their commits are durable
        for sub in ["spool", "outbox", "rcache"] {
            let left: Vec<_> =
                std::fs::read_dir(self.fs.staging.root().join(sub)).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
            assert!(left.is_empty(), "{sub}/ still holds {left:?}");
        }
    }
}

fn decrypt(body: &[u8], size: u64) -> Vec<u8> {
    let h = Header::parse(body).unwrap();
    let o = Opened::open(keys().secret.as_ref().unwrap(), &h).unwrap();
    o.decrypt_all(size, body).unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed as usize * 7) % 251) as u8).collect()
}

fn explore(name: &str, f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::check_random(move || g(), RANDOM_RUNS);
    shuttle::check_pct(move || f(), PCT_RUNS, 3);
    eprintln!("{name}: {} random + {} PCT schedules", RANDOM_RUNS, PCT_RUNS);
}

/// A rewrite (O_TRUNC) lands while the sealer freezes the first version and the uploader
/// sends it: the newest version wins in the index and the bucket, the first is intact.
#[test]
fn shuttle_a_rewrite_racing_the_sealer_and_the_uploader_keeps_the_newest_version() {
    explore("rewrite vs seal vs upload", || {
        let w = Arc::new(World::new());
        let (v1, v2) = (data(70_000, 1), data(50_000, 2));
        let ino = w.write_file("a.jpg", &v1);
        let writer = {
            let (w, v2) = (w.clone(), v2.clone());
            thread::spawn(move || {
                let (fh, _) = w.fs.open(ino, true, true, 0).unwrap();
                w.fs.write(fh, 0, &v2).unwrap();
                w.fs.flush(fh).unwrap();
                w.fs.release(fh).unwrap();
            })
        };
        let sealer = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.seal_ready(true).unwrap();
            })
        };
        let uploader = {
            let w = w.clone();
            thread::spawn(move || {
                w.upload_pass();
                w.upload_pass();
            })
        };
        for t in [writer, sealer, uploader] {
            t.join().unwrap();
        }
        w.check(ino, &v2, &[&v1, &v2]);
    });
}

/// A partial rewrite (open without O_TRUNC) of a sealed file while its upload completes: the
/// open (or its first write, once the file is uploaded) copies the sealed version's bytes
/// whether they are still in the outbox or already only in the bucket, and never fails.
#[test]
fn shuttle_a_partial_rewrite_racing_the_upload_keeps_the_old_bytes() {
    explore("partial rewrite vs upload", || {
        let w = Arc::new(World::new());
        let v1 = data(70_000, 3);
        let ino = w.write_file("a.jpg", &v1);
        w.fs.seal_ready(true).unwrap();
        let writer = {
            let w = w.clone();
            thread::spawn(move || {
                let (fh, _) = w.fs.open(ino, true, false, 0).expect("opening a sealed file for writing");
                w.fs.write(fh, 10, b"EDIT").unwrap();
                w.fs.release(fh).unwrap();
            })
        };
        let uploader = {
            let w = w.clone();
            thread::spawn(move || {
                w.upload_pass();
            })
        };
        writer.join().unwrap();
        uploader.join().unwrap();
        let mut v2 = v1.clone();
        v2[10..14].copy_from_slice(b"EDIT");
        w.check(ino, &v2, &[&v1, &v2]);
    });
}

/// A reader holds the file open while a writer appends and the sealer runs: the sealer never
/// freezes a spool with a writer or an uncommitted change, and every close is in the final
/// version.
#[test]
fn shuttle_appends_with_a_reader_open_are_never_cut_by_the_sealer() {
    explore("append vs seal with a reader", || {
        let w = Arc::new(World::new());
        let v1 = data(40_000, 4);
        let ino = w.write_file("log.txt", &v1);
        let (rfh, _) = w.fs.open(ino, false, false, 0).unwrap();
        let tail = data(30_000, 5);
        let writer = {
            let (w, tail) = (w.clone(), tail.clone());
            thread::spawn(move || {
                let (fh, _) = w.fs.open(ino, true, false, 0).unwrap();
                w.fs.write(fh, 40_000, &tail).unwrap();
                w.fs.release(fh).unwrap();
            })
        };
        let sealer = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.seal_ready(true).unwrap();
                w.upload_pass();
            })
        };
        writer.join().unwrap();
        sealer.join().unwrap();
        let r = w.fs.read(rfh, 0, 80_000).unwrap();
        let v2 = [v1.clone(), tail].concat();
        assert!(r == v2, "the open reader sees the appended file ({} bytes)", r.len());
        w.fs.release(rfh).unwrap();
        w.check(ino, &v2, &[&v1, &v2]);
    });
}

/// Unlink and rename racing the upload of the file: nothing is left staged, the unlinked
/// file's version is a dead key, and the renamed file keeps its content.
#[test]
fn shuttle_unlink_and_rename_racing_the_upload_leave_nothing_behind() {
    explore("unlink/rename vs upload", || {
        let w = Arc::new(World::new());
        let (va, vb) = (data(20_000, 6), data(30_000, 7));
        let a = w.write_file("a.jpg", &va);
        let b = w.write_file("b.jpg", &vb);
        w.fs.seal_ready(true).unwrap();
        let namer = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.unlink(ROOT, OsStr::new("a.jpg")).unwrap();
                w.fs.rename(ROOT, OsStr::new("b.jpg"), ROOT, OsStr::new("c.jpg"), false).unwrap();
            })
        };
        let uploader = {
            let w = w.clone();
            thread::spawn(move || {
                w.upload_pass();
            })
        };
        namer.join().unwrap();
        uploader.join().unwrap();
        assert!(w.fs.getattr(a).is_err(), "the unlinked file is gone");
        assert_eq!(w.fs.lookup(ROOT, OsStr::new("c.jpg")).unwrap().ino, b);
        w.check(b, &vb, &[&va, &vb]);
    });
}

/// Two partial rewrites of a sealed file at once, with the sealer and the uploader running:
/// each open copies the sealed version into its own fetch file, one of them becomes the
/// spool, and both edits are in the final version.
#[test]
fn shuttle_two_partial_writers_and_the_sealer_lose_no_edit() {
    explore("two writers vs seal vs upload", || {
        let w = Arc::new(World::new());
        let v1 = data(50_000, 8);
        let ino = w.write_file("cat.lrcat", &v1);
        w.fs.seal_ready(true).unwrap();
        let edit = |off: u64, what: &'static [u8]| {
            let w = w.clone();
            thread::spawn(move || {
                let (fh, _) = w.fs.open(ino, true, false, 0).unwrap();
                w.fs.write(fh, off, what).unwrap();
                w.fs.release(fh).unwrap();
            })
        };
        let (a, b) = (edit(0, b"AAAA"), edit(100, b"BBBB"));
        let sealer = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.seal_ready(true).unwrap();
                w.upload_pass();
            })
        };
        for t in [a, b, sealer] {
            t.join().unwrap();
        }
        let with = |edits: &[(usize, &[u8])]| {
            let mut v = v1.clone();
            for (off, e) in edits {
                v[*off..*off + e.len()].copy_from_slice(e);
            }
            v
        };
        let (va, vb, vab) = (with(&[(0, b"AAAA")]), with(&[(100, b"BBBB")]), with(&[(0, b"AAAA"), (100, b"BBBB")]));
        w.check(ino, &vab, &[&v1, &va, &vb, &vab]);
    });
}

/// A truncate while only a reader holds the file open, racing the sealer: the truncate is
/// committed (the sealed version is the short file, not the long one cut or padded), and the
/// reader then sees the short file.
#[test]
fn shuttle_a_truncate_with_a_reader_open_racing_the_sealer_is_kept() {
    explore("truncate vs seal with a reader", || {
        let w = Arc::new(World::new());
        let v1 = data(50_000, 9);
        let ino = w.write_file("a.tif", &v1);
        let (rfh, _) = w.fs.open(ino, false, false, 0).unwrap();
        let truncater = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.setattr(ino, None, None, None, Some(1000), None, None).unwrap();
            })
        };
        let sealer = {
            let w = w.clone();
            thread::spawn(move || {
                w.fs.seal_ready(true).unwrap();
                w.upload_pass();
            })
        };
        truncater.join().unwrap();
        sealer.join().unwrap();
        assert_eq!(w.fs.read(rfh, 0, 60_000).unwrap(), &v1[..1000], "the open reader sees the truncated file");
        w.fs.release(rfh).unwrap();
        w.check(ino, &v1[..1000], &[&v1, &v1[..1000]]);
    });
}
