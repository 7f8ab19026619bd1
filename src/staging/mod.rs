//! The staging area on local disk, under the cache dir:
//!
//! * `spool/<ino>`: plaintext of a dirty file, written in place by FUSE writes.
//! * `outbox/<ino>.<gen>.plain`: the frozen plaintext of a sealed version (the spool, renamed;
//!   immutable), from which the uploader encrypts the same bytes on every retry
//!   (`crypto::VersionCipher`); `outbox/<ino>.<gen>.cv`, an encrypted object, only as builds
//!   before frozen plaintexts left it (still uploaded).
//! * `rcache/<id>.cv`: uploaded objects kept for reads when `--read-cache` is non-zero.
//! * `spool/<ino>.<random>.fetch`: old content being materialized for a partial rewrite.
//! * `spool/<ino>.<ns>.dropped`: the spool of a file deleted or truncated away, kept until
//!   the deletion survives power loss (start-up takes it back if the index still needs it).
//!
//! Invariant: a file's staged bytes are removed only after the index no longer points at them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes of the reserve file (see `Staging::ensure_reserve`).
pub const RESERVE: u64 = 8 << 20;

pub struct Staging {
    /// Held open for `syncfs`: a writeback error is reported once per open file description,
    /// so one kept from the start sees every error since (a fresh one would miss those
    /// another sync already consumed).
    root_fd: File,
    root: PathBuf,
    spool: PathBuf,
    outbox: PathBuf,
    rcache: PathBuf,
    /// Bytes in the read cache as of its last listing plus what was kept since (`u64::MAX`:
    /// not listed yet). Files removed elsewhere only make it high: one listing more.
    rcache_bytes: std::sync::atomic::AtomicU64,
    /// Listings of the read cache so far (tests).
    pub rcache_listings: std::sync::atomic::AtomicU64,
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

impl Staging {
    pub fn open(root: &Path) -> io::Result<Staging> {
        for d in [root.to_path_buf(), root.join("spool"), root.join("outbox"), root.join("rcache")] {
            fs::create_dir_all(&d)?;
            // Plaintext lives here until sealed: owner-only.
            fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        Ok(Staging {
            root_fd: File::open(root)?,
            root: root.to_path_buf(),
            spool: root.join("spool"),
            outbox: root.join("outbox"),
            rcache: root.join("rcache"),
            rcache_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            rcache_listings: Default::default(),
        })
    }

    /// A file of `RESERVE` bytes kept on the staging disk, like a filesystem's reserved
    /// blocks: when the disk is full, giving it up lets the index record a deletion (`rm`
    /// must always work). Re-created once there is room again.
    pub fn ensure_reserve(&self) {
        let p = self.root.join("reserve");
        if p.metadata().is_ok_and(|m| m.len() == RESERVE) {
            return;
        }
        let ok = self.free_bytes().is_ok_and(|free| free > 4 * RESERVE);
        if ok {
            let r = (|| -> io::Result<()> {
                let mut f = File::create(&p)?;
                io::Write::write_all(&mut f, &vec![0u8; RESERVE as usize])?;
                f.sync_all()
            })();
            if r.is_err() {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// Give up the reserve (the disk is full). Returns whether there was one.
    pub fn release_reserve(&self) -> bool {
        fs::remove_file(self.root.join("reserve")).is_ok()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn spool_path(&self, ino: u64) -> PathBuf {
        self.spool.join(ino.to_string())
    }

    pub fn spool_len(&self, ino: u64) -> Option<u64> {
        fs::metadata(self.spool_path(ino)).ok().map(|m| m.len())
    }

    pub fn create_spool(&self, ino: u64) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(self.spool_path(ino))
    }

    pub fn open_spool(&self, ino: u64) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(self.spool_path(ino))
    }

    pub fn remove_spool(&self, ino: u64) {
        let _ = fs::remove_file(self.spool_path(ino));
    }

    /// Move the spool of `ino` out of the way (its file was deleted, or starts again empty):
    /// the caller deletes the returned file once the change is durable. None if there was none.
    pub fn drop_spool(&self, ino: u64) -> Option<PathBuf> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let to = self.spool.join(format!("{ino}.{stamp}.dropped"));
        fs::rename(self.spool_path(ino), &to).ok().map(|_| to)
    }

    /// Earlier contents of `ino`'s spool that a power cut may have left behind its index
    /// (dropped spools, and frozen versions of generation `gen` and later): (modified, length,
    /// path).
    pub fn lost_spools(&self, ino: u64, min_gen: i64) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
        let mut found = Vec::new();
        let dropped = format!("{ino}.");
        for (dir, frozen) in [(&self.spool, false), (&self.outbox, true)] {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix(&dropped) else { continue };
                let ok = if frozen {
                    rest.strip_suffix(".plain").and_then(|g| g.parse::<i64>().ok()).is_some_and(|g| g >= min_gen)
                } else {
                    rest.strip_suffix(".dropped").is_some_and(|t| t.parse::<u128>().is_ok())
                };
                if ok {
                    if let Ok((t, len)) = e.metadata().and_then(|m| Ok((m.modified()?, m.len()))) {
                        found.push((t, len, e.path()));
                    }
                }
            }
        }
        found
    }

    /// Make `p` (a file `lost_spools` found) the spool of `ino` again.
    pub fn restore_spool(&self, ino: u64, p: &Path) -> io::Result<()> {
        fs::rename(p, self.spool_path(ino))
    }

    /// A fresh name for materializing old content: two opens for write of one file at once
    /// each fill their own, and the first to finish is adopted.
    pub fn fetch_path(&self, ino: u64) -> PathBuf {
        self.spool.join(format!("{ino}.{}.fetch", hex::encode(rand::random::<[u8; 6]>())))
    }

    pub fn adopt_fetch(&self, fetched: &Path, ino: u64) -> io::Result<()> {
        fs::rename(fetched, self.spool_path(ino))?;
        fsync_dir(&self.spool)
    }

    /// An encrypted outbox file, as builds before frozen plaintexts wrote them (still read and
    /// uploaded after an upgrade).
    pub fn outbox_path(&self, ino: u64, gen: i64) -> PathBuf {
        self.outbox.join(format!("{ino}.{gen}.cv"))
    }

    /// The frozen plaintext of sealed version `gen`: the spool, renamed. Immutable from then
    /// on; the uploader encrypts from it (`crypto::VersionCipher`).
    pub fn frozen_path(&self, ino: u64, gen: i64) -> PathBuf {
        self.outbox.join(format!("{ino}.{gen}.plain"))
    }

    /// Freeze the spool of `ino` as version `gen`: a rename, so sealing needs no room for a
    /// second copy of the file.
    ///
    /// Not synced here: the group commit syncs the staging filesystem before the index, and
    /// start-up repairs either order a power cut can leave (`Fs::recover`: a frozen file whose
    /// seal is not in the index goes back; a seal in the index whose rename was lost is
    /// redone from the spool when its digest matches).
    pub fn freeze_spool(&self, ino: u64, gen: i64) -> io::Result<()> {
        fs::rename(self.spool_path(ino), self.frozen_path(ino, gen))
    }

    /// Undo `freeze_spool` (its seal did not commit).
    pub fn unfreeze_spool(&self, ino: u64, gen: i64) -> io::Result<()> {
        fs::rename(self.frozen_path(ino, gen), self.spool_path(ino))
    }

    /// Both names a staged version may have (frozen plaintext, or an earlier build's encrypted copy).
    pub fn version_files(&self, ino: u64, gen: i64) -> [PathBuf; 2] {
        [self.frozen_path(ino, gen), self.outbox_path(ino, gen)]
    }

    pub fn remove_outbox(&self, ino: u64, gen: i64) {
        for p in self.version_files(ino, gen) {
            let _ = fs::remove_file(p);
        }
    }

    /// An encrypted read-cache entry (earlier builds).
    pub fn rcache_path(&self, id: &[u8]) -> PathBuf {
        self.rcache.join(format!("{}.cv", hex::encode(id)))
    }

    /// A plaintext read-cache entry: an uploaded version's frozen plaintext, kept.
    pub fn rcache_plain_path(&self, id: &[u8]) -> PathBuf {
        self.rcache.join(format!("{}.plain", hex::encode(id)))
    }

    /// Move an uploaded version's staged file into the read cache and evict the oldest entries
    /// beyond `limit` bytes.
    /// Returns the older entries it evicted to stay within `limit`, for the caller to delete
    /// once its commit is durable (an entry kept moments ago may still be needed after a
    /// power cut).
    pub fn keep_in_read_cache(&self, ino: u64, gen: i64, id: &[u8], limit: u64) -> Vec<PathBuf> {
        let mut evicted = Vec::new();
        if fs::rename(self.frozen_path(ino, gen), self.rcache_plain_path(id)).is_err()
            && fs::rename(self.outbox_path(ino, gen), self.rcache_path(id)).is_err()
        {
            return evicted;
        }
        let kept = [self.rcache_plain_path(id), self.rcache_path(id)];
        // The cache is listed (a stat per file) only when it may be over its limit, and then
        // brought down to 90 % of it: not on every upload (review N18: every completion listed
        // it, under the index lock).
        use std::sync::atomic::Ordering::Relaxed;
        let len = kept.iter().find_map(|p| p.metadata().ok()).map_or(0, |m| m.len());
        let known = self.rcache_bytes.load(Relaxed);
        if known != u64::MAX && known.saturating_add(len) <= limit {
            self.rcache_bytes.store(known + len, Relaxed);
            return evicted;
        }
        self.rcache_listings.fetch_add(1, Relaxed);
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = fs::read_dir(&self.rcache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total > limit {
            let low = limit / 10 * 9;
            for (_, len, p) in entries {
                if total <= low {
                    break;
                }
                if !kept.contains(&p) {
                    evicted.push(p);
                    total -= len;
                }
            }
        }
        self.rcache_bytes.store(total, Relaxed);
        evicted
    }

    /// Make every staged byte and rename so far survive power loss: one `syncfs` of the
    /// staging filesystem (what a journalling filesystem's commit does), not one fsync per file.
    pub fn syncfs(&self) -> io::Result<()> {
        // SAFETY: `root_fd` is an open directory descriptor owned by `self` for the whole
        // call; syncfs reads no memory of ours.
        if unsafe { libc::syncfs(self.root_fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // A staging dir on a FUSE file system gets nothing from syncfs (the kernel sends no
        // request but to virtiofs): an fsync of each staging folder reaches it, and costs
        // little elsewhere (their entries are what the renames of seals and cuts changed).
        for d in [&self.spool, &self.outbox, &self.root] {
            File::open(d)?.sync_all()?;
        }
        Ok(())
    }

    /// Remove staging files the index does not reference. Returns how many were removed.
    pub fn remove_orphans(
        &self,
        keep_spool: &std::collections::HashSet<u64>,
        keep_outbox: &std::collections::HashSet<(u64, i64)>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.spool)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let keep = name.parse::<u64>().is_ok_and(|ino| keep_spool.contains(&ino));
            if !keep {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        for e in fs::read_dir(&self.outbox)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let keep = name
                .strip_suffix(".cv")
                .or_else(|| name.strip_suffix(".plain"))
                .and_then(|s| s.split_once('.'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<i64>().ok()?)))
                .is_some_and(|k| keep_outbox.contains(&k));
            if !keep {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Remove read-cache entries whose version id is not in `keep` (a deletion whose removal
    /// a crash of the daemon forgot). Returns how many were removed.
    pub fn remove_rcache_orphans(&self, keep: &std::collections::HashSet<String>) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.rcache)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let id = name.strip_suffix(".plain").or_else(|| name.strip_suffix(".cv")).unwrap_or("");
            if !keep.contains(id) {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Bytes an unprivileged writer can still use on the staging disk.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = self.statvfs()?;
        Ok(st.f_bavail * st.f_frsize)
    }

    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is writable.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}
