//! Restoring files from the bucket into a local folder (`coldvault get`), safely whatever the
//! vault's tree says, and in bounded memory whatever the files' sizes.
//!
//! A backup is read after a breach, on a new machine, often as root, from a bucket that others
//! may have written to. So:
//! * Every folder below the destination is opened one name at a time, relative to its parent's
//!   descriptor, with `O_NOFOLLOW | O_DIRECTORY`: a symbolic link in the way — planted in the
//!   destination beforehand, or made earlier by this very restore — is refused, never followed.
//!   (Paths were also checked as text by the replay: no `..`, nothing absolute.)
//! * A file is written under a fresh name in its folder (`O_CREAT | O_EXCL | O_NOFOLLOW`, a
//!   random suffix), its mode and times are set through its descriptor, and it is renamed over
//!   its final name only once its SHA-256 matched: a file that fails is never left under its
//!   final name, and its partial copy is removed.
//! * Symbolic links are created with their target verbatim and never followed.
//! * setuid and setgid bits are dropped unless owners are restored too (`preserve_owner`, root
//!   only): a restore as root must not create setuid-root programs out of a bucket.
//! * Objects are read with ranged GETs of whole segments (`sealed::Plaintext`, read ahead
//!   within a budget), each chunk authenticated, hashed and written as it arrives: memory does
//!   not grow with the file.

use crate::crypto;
use crate::sealed::{Budget, Plaintext, ReadError};
use crate::store::{ObjectStore, StoreError};
use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Unsafe(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ReadError> for ExtractError {
    fn from(e: ReadError) -> ExtractError {
        match e {
            ReadError::Store(e) => ExtractError::Store(e),
            ReadError::Corrupt(m) => ExtractError::Corrupt(m),
            ReadError::Task(m) => ExtractError::Io(format!("download task: {m}")),
        }
    }
}

type Result<T> = std::result::Result<T, ExtractError>;

fn io_err(what: &str, e: io::Error) -> ExtractError {
    ExtractError::Io(format!("{what}: {e}"))
}

fn cstr(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| ExtractError::Unsafe(format!("{name:?}: NUL in a name")))
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// `openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`: a folder to work below (search
/// permission is enough, as for a path walk), or with `O_RDONLY` instead of `O_PATH` one whose
/// own mode and time are to be set.
fn open_dir_at(dir: &OwnedFd, name: &CStr, to_change: bool) -> io::Result<OwnedFd> {
    let how = if to_change { libc::O_RDONLY } else { libc::O_PATH };
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both alive for
    // the whole call; openat writes no memory of ours.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), how | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat(dir, from, dir, to)`: replaces a file or link at `to` (never following it), fails
/// on a folder there.
fn rename_in(dir: &OwnedFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is open and both names are NUL-terminated strings alive for the call.
    if unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

fn unlink_in(dir: &OwnedFd, name: &CStr) {
    // SAFETY: `dir` is open and `name` NUL-terminated, alive for the call. unlinkat removes a
    // link itself, never what it points to; an error leaves nothing worse behind.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

/// The kind (`S_IFMT` bits) of what is at `name` in `dir`, not following a link (None:
/// nothing there).
fn kind_at(dir: &OwnedFd, name: &CStr) -> io::Result<Option<u32>> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` NUL-terminated and `st` a valid, writable stat buffer, all
    // alive for the call.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let e = last_err();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
    }
    Ok(Some(st.st_mode & libc::S_IFMT))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() }
}

/// The mode bits to set: without owners, setuid and setgid go.
fn mode_bits(mode: u32, preserve_owner: bool) -> u32 {
    if preserve_owner {
        mode & 0o7777
    } else {
        mode & 0o1777
    }
}

/// Give an open file or folder what a restore gives it, through its descriptor: its owner
/// (with `preserve_owner`), then its mode (after the chown, which clears setuid/setgid), then
/// its modification time.
fn set_attrs(f: &File, a: Attrs, preserve_owner: bool) -> io::Result<()> {
    if preserve_owner {
        std::os::unix::fs::fchown(f, Some(a.uid), Some(a.gid))?;
    }
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode_bits(a.mode, preserve_owner)))?;
    f.set_modified(crate::clock::from_nanos(a.mtime_ns))
}

/// A folder anyone may write to without the sticky bit: others could swap what this restore
/// puts there; refused (by its owner's choice, a group may write).
fn refuse_open_to_all(fd: &OwnedFd) -> std::result::Result<(), String> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` a valid, writable stat buffer, both alive for the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(last_err().to_string());
    }
    if st.st_mode & 0o002 != 0 && st.st_mode & 0o1000 == 0 {
        return Err(format!("a folder everyone may write to (mode {:o}): others could replace what is restored there", st.st_mode & 0o7777));
    }
    Ok(())
}

fn timespec(ns: crate::clock::Nanos) -> libc::timespec {
    let secs = ns.div_euclid(1_000_000_000);
    libc::timespec {
        tv_sec: secs.clamp(libc::time_t::MIN as i128, libc::time_t::MAX as i128) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// A fresh name beside `name` for a file or link being made (never an existing one).
fn part_name(name: &str) -> String {
    // Short enough that a 255-byte name still fits: the name is cut to 200 bytes at a
    // character boundary.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}.{}.coldvault-part", &name[..cut], hex::encode(rand::random::<[u8; 6]>()))
}

/// Owner and mode to give what is restored.
#[derive(Clone, Copy, Debug)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: crate::clock::Nanos,
}

/// The destination folder of a restore.
pub struct Dest {
    root: OwnedFd,
    path: PathBuf,
    preserve_owner: bool,
}

impl Dest {
    /// Create (if needed) and open the destination. `preserve_owner` restores owners and keeps
    /// setuid/setgid bits; only root can.
    pub fn open(path: &Path, preserve_owner: bool) -> Result<Dest> {
        if preserve_owner && euid() != 0 {
            return Err(ExtractError::Unsafe("restoring owners (--preserve-owner) needs root".into()));
        }
        // The destination may be reached through links (the user's own choice of where things
        // go), but not through one another user planted there (as in /tmp).
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::MetadataExt;
            if m.file_type().is_symlink() && m.uid() != euid() && m.uid() != 0 {
                return Err(ExtractError::Unsafe(format!("{} is a symbolic link of uid {}: not followed", path.display(), m.uid())));
            }
        }
        std::fs::create_dir_all(path).map_err(|e| io_err(&format!("creating {}", path.display()), e))?;
        let f =
            File::options().read(true).custom_flags(libc::O_DIRECTORY).open(path).map_err(|e| io_err(&format!("opening {}", path.display()), e))?;
        let root = OwnedFd::from(f);
        refuse_open_to_all(&root).map_err(|why| ExtractError::Unsafe(format!("{}: {why}", path.display())))?;
        Ok(Dest { root, path: path.to_path_buf(), preserve_owner })
    }

    /// `rel` below the destination, as it may be printed (control characters escaped).
    fn show(&self, rel: &str) -> String {
        format!("{}", self.path.join(&*crate::remote_meta::shown(rel)).display())
    }

    /// Make what was restored survive a power cut (one `syncfs` of the destination's file
    /// system, as `sync -f` does, not one fsync per file): a run interrupted before is
    /// repaired by the next (`already_restored` checks contents).
    pub fn sync(&self) -> Result<()> {
        // SAFETY: `root` is an open descriptor for the whole call; syncfs reads no memory of ours.
        if unsafe { libc::syncfs(self.root.as_raw_fd()) } != 0 {
            return Err(io_err(&format!("syncing {}", self.path.display()), last_err()));
        }
        Ok(())
    }

    /// Open the folder `rel` ("" is the destination) one name at a time, never following a
    /// link; with `create`, make the missing ones (0700 until `finish_dir` sets their mode).
    fn dir(&self, rel: &str, create: bool) -> Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        let mut walked = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if comp == "." || comp == ".." {
                return Err(ExtractError::Unsafe(format!("{rel:?}: \"{comp}\" in a path")));
            }
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(comp);
            let c = cstr(comp)?;
            let parent = cur.as_ref().unwrap_or(&self.root);
            if create {
                // SAFETY: `parent` is open and `c` NUL-terminated, both alive for the call.
                if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
                    let e = last_err();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(io_err(&format!("creating {}", self.show(&walked)), e));
                    }
                }
            }
            let next = match open_dir_at(parent, &c, false) {
                Ok(fd) => {
                    refuse_open_to_all(&fd).map_err(|why| ExtractError::Unsafe(format!("{}: {why}", self.show(&walked))))?;
                    fd
                }
                Err(e) => {
                    let shown = self.show(&walked);
                    return Err(match kind_at(parent, &c) {
                        Ok(Some(libc::S_IFLNK)) => {
                            ExtractError::Unsafe(format!("{shown} is a symbolic link: not followed, nothing written below it"))
                        }
                        Ok(Some(k)) if k != libc::S_IFDIR => ExtractError::Unsafe(format!("{shown} is in the way: a folder is restored there")),
                        _ => io_err(&format!("opening {shown}"), e),
                    });
                }
            };
            cur = Some(next);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.root.try_clone().map_err(|e| io_err("opening the destination", e)),
        }
    }

    fn split(rel: &str) -> Result<(&str, &str)> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if name.is_empty() || name == "." || name == ".." {
            return Err(ExtractError::Unsafe(format!("{rel:?}: not a name")));
        }
        Ok((parent, name))
    }

    /// Make the folder `rel` and its parents.
    pub fn make_dir(&self, rel: &str) -> Result<()> {
        self.dir(rel, true).map(|_| ())
    }

    /// Give the folder `rel` its mode, owner and time (after its contents are written).
    pub fn finish_dir(&self, rel: &str, a: Attrs) -> Result<()> {
        let (parent, name) = Self::split(rel)?;
        let shown = self.show(rel);
        let fd = open_dir_at(&self.dir(parent, false)?, &cstr(name)?, true).map_err(|e| io_err(&format!("opening {shown}"), e))?;
        set_attrs(&File::from(fd), a, self.preserve_owner).map_err(|e| io_err(&format!("setting the owner, mode and time of {shown}"), e))
    }

    /// The file at `rel` is this version already, restored by an earlier run that was
    /// interrupted: a regular file with one link, of the owner a restore would give it, whose
    /// size and SHA-256 are the recorded ones (checked by reading it: size and time, which
    /// anyone who can write the file can set, are no proof). Its mode and time are then set
    /// as a restore would.
    pub fn already_restored(&self, rel: &str, w: &Wanted, a: Attrs) -> bool {
        if w.sha256.is_empty() {
            return false;
        }
        let Ok((parent, name)) = Self::split(rel) else { return false };
        let (Ok(dir), Ok(c)) = (self.dir(parent, false), cstr(name)) else { return false };
        // SAFETY: `dir` is open and `c` NUL-terminated, both alive for the call.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` was just returned by openat and nothing else owns it.
        let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let Ok(m) = f.metadata() else { return false };
        use std::os::unix::fs::MetadataExt;
        let owner = if self.preserve_owner { a.uid } else { euid() };
        if !m.file_type().is_file() || m.nlink() != 1 || m.uid() != owner || m.len() != w.size {
            return false;
        }
        let mut sha = Sha256::new();
        if io::copy(&mut f, &mut sha).is_err() || hex::encode(sha.finalize()) != w.sha256 {
            return false;
        }
        set_attrs(&f, a, self.preserve_owner).is_ok()
    }

    /// Start the file `rel`: a fresh file beside it, which `Part::commit` renames into place.
    pub fn create_file(&self, rel: &str) -> Result<Part> {
        let (parent, name) = Self::split(rel)?;
        let dir = self.dir(parent, true)?;
        let tmp = cstr(&part_name(name))?;
        // SAFETY: `dir` is open and `tmp` NUL-terminated, both alive for the call.
        let fd = unsafe {
            libc::openat(dir.as_raw_fd(), tmp.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600)
        };
        if fd < 0 {
            return Err(io_err(&format!("creating a file in {}", self.show(parent)), last_err()));
        }
        // SAFETY: `fd` was just returned by openat and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Part { dir, tmp, name: cstr(name)?, file: Some(file), shown: self.show(rel), preserve_owner: self.preserve_owner })
    }

    /// Make the symbolic link `rel` pointing at `target` (verbatim, never followed).
    pub fn symlink(&self, rel: &str, target: &str, a: Attrs) -> Result<()> {
        let (parent, name) = Self::split(rel)?;
        let dir = self.dir(parent, true)?;
        let tmp = cstr(&part_name(name))?;
        let t = cstr(target)?;
        let shown = self.show(rel);
        // SAFETY: `dir` is open; `t` and `tmp` are NUL-terminated, all alive for the call.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), tmp.as_ptr()) } != 0 {
            return Err(io_err(&format!("creating the link {shown}"), last_err()));
        }
        let done = (|| -> io::Result<()> {
            if self.preserve_owner {
                // SAFETY: as above; AT_SYMLINK_NOFOLLOW changes the link itself.
                if unsafe { libc::fchownat(dir.as_raw_fd(), tmp.as_ptr(), a.uid, a.gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                    return Err(last_err());
                }
            }
            let ts = [timespec(a.mtime_ns), timespec(a.mtime_ns)];
            // SAFETY: as above; `ts` is an array of two timespecs alive for the call.
            if unsafe { libc::utimensat(dir.as_raw_fd(), tmp.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                return Err(last_err());
            }
            rename_in(&dir, &tmp, &cstr(name).map_err(io::Error::other)?)
        })();
        if let Err(e) = done {
            unlink_in(&dir, &tmp);
            return Err(io_err(&format!("creating the link {shown}"), e));
        }
        Ok(())
    }
}

/// A file being restored: written under a fresh name, renamed into place by `commit`, removed
/// if dropped before.
pub struct Part {
    dir: OwnedFd,
    tmp: CString,
    name: CString,
    file: Option<File>,
    shown: String,
    preserve_owner: bool,
}

impl Part {
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not committed yet")
    }

    /// Set owner, mode and time through the descriptor and move the file to its name (a file
    /// or link there is replaced, never followed; a folder there is an error).
    pub fn commit(mut self, a: Attrs) -> Result<()> {
        let f = self.file.take().expect("committed once");
        let shown = self.shown.clone();
        let r = set_attrs(&f, a, self.preserve_owner).and_then(|()| {
            drop(f);
            rename_in(&self.dir, &self.tmp, &self.name)
        });
        match r {
            Ok(()) => {
                // Renamed: nothing to remove any more.
                self.tmp = CString::default();
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) || e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                Err(ExtractError::Unsafe(format!("{shown} is a folder: the file is not restored over it")))
            }
            Err(e) => Err(io_err(&format!("writing {shown}"), e)),
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            unlink_in(&self.dir, &self.tmp);
        }
    }
}

/// One object to fetch: where it is, and what the index says it holds.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the plaintext (empty: not known, the object's authentication alone).
    pub sha256: String,
    /// The 128-byte header the index recorded for this version: the object must carry it.
    pub header: Option<Vec<u8>>,
}

/// Fetch, check and decrypt `w` into `out` a chunk at a time (`sealed::Plaintext`, reading
/// ahead within `budget`), counting plaintext bytes written in `progress`. Fails — with nothing to keep — on a missing or archived
/// object, a header other than the recorded one, any segment that does not authenticate, a short
/// object, or a SHA-256 other than the recorded one.
pub async fn fetch_to(
    store: Arc<dyn ObjectStore>,
    keys: &crypto::VaultKeys,
    w: &Wanted,
    out: &mut impl Write,
    progress: &AtomicU64,
    budget: &Budget,
) -> Result<()> {
    let sk = keys.secret.as_ref().ok_or_else(|| ExtractError::Unsafe("no private key".into()))?;
    let mut segs = Plaintext::open(store, sk, &w.key, w.size, w.header.as_deref(), budget.clone()).await?;
    let mut sha = Sha256::new();
    while let Some(pt) = segs.next().await? {
        sha.update(&pt);
        out.write_all(&pt).map_err(|e| io_err("writing", e))?;
        progress.fetch_add(pt.len() as u64, Ordering::Relaxed);
    }
    let got = hex::encode(sha.finalize());
    if !w.sha256.is_empty() && got != w.sha256 {
        return Err(ExtractError::Corrupt(format!("object {}: SHA-256 mismatch (tampered or wrong version)", w.key)));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
