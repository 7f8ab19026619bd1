//! dropfs: a power-loss test rig in the spirit of LazyFS.
//!
//! `dropfs BACKING MOUNTPOINT [--control PATH] [--direct-io] [--strict-fsyncdir] [--trace]`
//!
//! A FUSE passthrough over the directory BACKING in which
//! * every metadata operation (create, mkdir, rename, unlink, link, chmod, ...) is applied to
//!   BACKING at once, like a journaling file system that commits metadata in order;
//! * file DATA (writes, truncations, fallocate) stays in memory, per backing inode, layered over
//!   the backing file, until that file is fsync'ed / fdatasync'ed (or written through an O_SYNC /
//!   O_DSYNC descriptor), or until any directory is fsync'ed (FUSE never sees syncfs(2), see
//!   README.md; `--strict-fsyncdir` turns that off);
//! * a "cut" (the control file appears, or SIGUSR1) drops every unsynced byte of every file at
//!   once, detaches the mount and exits: BACKING then holds exactly what was synced plus every
//!   metadata operation.
//!
//! SIGTERM / SIGINT and an external `umount` are a clean shutdown: everything is flushed first.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, Session, TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::from_secs(1);

/// A backing inode: (st_dev, st_ino). Pending data is keyed by it, so it survives forget,
/// renames and hard links. Every key we hold state for also has an open descriptor on it, so the
/// backing file system cannot reuse the number while we remember it.
type Key = (u64, u64);

// ---------------------------------------------------------------------------------------------
// System call helpers
// ---------------------------------------------------------------------------------------------

fn last_errno() -> Errno {
    Errno::from(io::Error::last_os_error())
}

fn chk(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

fn cstr(s: &OsStr) -> Result<CString, Errno> {
    CString::new(s.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).unwrap()
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> Result<OwnedFd, Errno> {
    // SAFETY: `name` is a NUL-terminated CStr borrowed for the whole call and `dir` a descriptor the
    // caller keeps open (or AT_FDCWD); openat only reads `name` and writes no memory of ours.
    let fd = chk(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: `fd` was just returned by a successful openat (chk rejected -1) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn statat(dir: RawFd, name: &CStr, flags: libc::c_int) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and borrowed for the call, `st` is a valid, writable stat buffer
    // on our stack, and `dir` a descriptor the caller keeps open; fstatat writes only `st`.
    chk(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn fstat(fd: RawFd) -> Result<libc::stat, Errno> {
    statat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// pread until `buf` is full or end of file; returns the bytes read.
fn pread_full(fd: RawFd, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: `buf[done..]` is a live, writable slice of exactly `buf.len() - done` bytes (done < len),
        // so pread writes only inside `buf`; `fd` is a descriptor the caller keeps open.
        let r = unsafe { libc::pread(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done, (off + done as u64) as libc::off_t) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if r == 0 {
            break;
        }
        done += r as usize;
    }
    Ok(done)
}

fn pwrite_all(fd: RawFd, buf: &[u8], off: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: `buf[done..]` is a live slice of exactly `buf.len() - done` bytes (done < len), so pwrite
        // reads only inside `buf`; `fd` is a descriptor the caller keeps open.
        let r = unsafe { libc::pwrite(fd, buf[done..].as_ptr().cast(), buf.len() - done, (off + done as u64) as libc::off_t) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        done += r as usize;
    }
    Ok(())
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn to_timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

fn kind_of(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr_of(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

// ---------------------------------------------------------------------------------------------
// Unsynced data of one file
// ---------------------------------------------------------------------------------------------

/// The unsynced state of one file, layered over its backing file:
/// * `size`: the file's size as the application sees it;
/// * `floor`: backing bytes at offsets >= floor are invisible (the file was truncated below them
///   since the last sync; they read as zeros unless a page overrides them). floor <= size;
/// * `pages`: 4 KiB pages written since the last sync. Bytes of a page beyond `size` are zero.
struct Pending {
    pages: BTreeMap<u64, Box<[u8]>>,
    size: u64,
    floor: u64,
    /// Time of the last data change; None once times were set explicitly after it.
    mtime: Option<SystemTime>,
    /// Bytes passed to write() since the last sync (for the summary).
    written: u64,
}

impl Pending {
    fn new(backing_size: u64) -> Self {
        Pending { pages: BTreeMap::new(), size: backing_size, floor: backing_size, mtime: None, written: 0 }
    }

    /// The current content of page `idx` as seen through the layers, ignoring `pages`.
    fn base_page(&self, fd: RawFd, idx: u64) -> Result<Box<[u8]>, Errno> {
        let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = idx * PAGE;
        if start < self.floor {
            let n = PAGE.min(self.floor - start) as usize;
            pread_full(fd, &mut b[..n], start)?;
        }
        Ok(b)
    }

    fn read(&self, fd: RawFd, off: u64, len: u64) -> Result<Vec<u8>, Errno> {
        if off >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = self.size.min(off + len);
        let mut b = vec![0u8; (end - off) as usize];
        let bend = end.min(self.floor);
        if off < bend {
            pread_full(fd, &mut b[..(bend - off) as usize], off)?;
        }
        for (&idx, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let ps = idx * PAGE;
            let s = ps.max(off);
            let e = (ps + PAGE).min(end);
            b[(s - off) as usize..(e - off) as usize].copy_from_slice(&page[(s - ps) as usize..(e - ps) as usize]);
        }
        Ok(b)
    }

    fn write(&mut self, fd: RawFd, off: u64, data: &[u8]) -> Result<(), Errno> {
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = pos - idx * PAGE;
            let n = (PAGE - in_page).min(end - pos);
            if !self.pages.contains_key(&idx) {
                let page = if n == PAGE {
                    vec![0u8; PAGE as usize].into_boxed_slice() // fully overwritten: no read
                } else {
                    self.base_page(fd, idx)?
                };
                self.pages.insert(idx, page);
            }
            let page = self.pages.get_mut(&idx).unwrap();
            page[in_page as usize..(in_page + n) as usize].copy_from_slice(&data[(pos - off) as usize..(pos - off + n) as usize]);
            pos += n;
        }
        self.size = self.size.max(end);
        self.mtime = Some(SystemTime::now());
        self.written += data.len() as u64;
        Ok(())
    }

    fn truncate(&mut self, new: u64) {
        if new < self.size {
            drop(self.pages.split_off(&new.div_ceil(PAGE)));
            if !new.is_multiple_of(PAGE) {
                if let Some(page) = self.pages.get_mut(&(new / PAGE)) {
                    page[(new % PAGE) as usize..].fill(0);
                }
            }
            self.floor = self.floor.min(new);
        }
        self.size = new;
        self.mtime = Some(SystemTime::now());
    }

    fn zero_range(&mut self, fd: RawFd, off: u64, len: u64) -> Result<(), Errno> {
        // Only within the current size; chunked so a huge hole does not need one huge buffer.
        let end = (off + len).min(self.size);
        let zeros = vec![0u8; 1 << 20];
        let mut pos = off;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64);
            self.write(fd, pos, &zeros[..n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// Apply to the backing file (no fsync).
    fn apply(&self, fd: RawFd) -> Result<(), Errno> {
        let before = fstat(fd)?;
        if self.floor < before.st_size as u64 {
            // SAFETY: a plain system call on `fd`, which the caller keeps open; no memory is passed.
            chk(unsafe { libc::ftruncate(fd, self.floor as libc::off_t) })?;
        }
        for (&idx, page) in &self.pages {
            let ps = idx * PAGE;
            if ps >= self.size {
                continue;
            }
            pwrite_all(fd, &page[..PAGE.min(self.size - ps) as usize], ps)?;
        }
        // SAFETY: as above: ftruncate takes only the open `fd` and a length; no memory is passed.
        chk(unsafe { libc::ftruncate(fd, self.size as libc::off_t) })?;
        if self.mtime.is_none() {
            // Times were set explicitly after the last data change: keep them.
            let times = [
                libc::timespec { tv_sec: before.st_atime, tv_nsec: before.st_atime_nsec },
                libc::timespec { tv_sec: before.st_mtime, tv_nsec: before.st_mtime_nsec },
            ];
            // SAFETY: `times` is a local array of exactly the two timespecs futimens reads, alive for the call;
            // `fd` is open and futimens writes no memory of ours.
            unsafe { libc::futimens(fd, times.as_ptr()) };
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// File system state
// ---------------------------------------------------------------------------------------------

struct Inode {
    /// O_PATH descriptor of the backing inode: all operations go through it (or through its
    /// parent's), so renames of it or of any ancestor need no bookkeeping.
    fd: OwnedFd,
    key: Key,
    nlookup: u64,
}

/// Open state of one backing regular file (shared by all its handles and hard links).
struct FileState {
    /// Read-write descriptor on the backing file (read-only if it could not be opened so).
    fd: OwnedFd,
    opens: u32,
    pending: Option<Pending>,
}

struct DirEnt {
    ino: u64,
    kind: FileType,
    name: OsString,
}

#[derive(Default)]
struct Stats {
    synced_files: u64,
    synced_bytes: u64,
}

struct State {
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<Key, u64>,
    next_ino: u64,
    files: HashMap<Key, FileState>,
    /// File handle -> backing key.
    handles: HashMap<u64, Key>,
    dirs: HashMap<u64, Vec<DirEnt>>,
    next_fh: u64,
    /// Set by a cut or a clean shutdown: nothing reaches BACKING any more.
    frozen: bool,
    stats: Stats,
}

impl State {
    fn inode_fd(&self, ino: INodeNo) -> Result<RawFd, Errno> {
        self.inodes.get(&ino.0).map(|i| i.fd.as_raw_fd()).ok_or(Errno::ENOENT)
    }

    fn overlay(&self, attr: &mut FileAttr, key: Key) {
        if let Some(p) = self.files.get(&key).and_then(|f| f.pending.as_ref()) {
            attr.size = p.size;
            attr.blocks = attr.blocks.max(p.size.div_ceil(512));
            if let Some(m) = p.mtime {
                attr.mtime = m;
                attr.ctime = m;
            }
        }
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let inode = self.inodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        let st = fstat(inode.fd.as_raw_fd())?;
        let mut a = attr_of(ino.0, &st);
        self.overlay(&mut a, inode.key);
        Ok(a)
    }

    /// Remember (or find) the inode for an O_PATH descriptor and count one lookup.
    fn register(&mut self, fd: OwnedFd) -> Result<FileAttr, Errno> {
        let st = fstat(fd.as_raw_fd())?;
        let key = key_of(&st);
        let ino = match self.by_key.get(&key) {
            Some(&ino) => {
                self.inodes.get_mut(&ino).unwrap().nlookup += 1;
                ino
            }
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.inodes.insert(ino, Inode { fd, key, nlookup: 1 });
                self.by_key.insert(key, ino);
                ino
            }
        };
        let mut a = attr_of(ino, &st);
        self.overlay(&mut a, key);
        Ok(a)
    }

    fn lookup(&mut self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let pfd = self.inode_fd(parent)?;
        let fd = openat(pfd, &cstr(name)?, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.register(fd)
    }

    /// The open state of a regular file, opening the backing file if needed.
    fn file_of_ino(&mut self, ino: INodeNo) -> Result<(Key, &mut FileState), Errno> {
        let inode = self.inodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        let key = inode.key;
        if let std::collections::hash_map::Entry::Vacant(v) = self.files.entry(key) {
            let st = fstat(inode.fd.as_raw_fd())?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            let p = proc_path(inode.fd.as_raw_fd());
            let fd = openat(libc::AT_FDCWD, &p, libc::O_RDWR, 0).or_else(|_| openat(libc::AT_FDCWD, &p, libc::O_RDONLY, 0))?;
            v.insert(FileState { fd, opens: 0, pending: None });
        }
        Ok((key, self.files.get_mut(&key).unwrap()))
    }

    /// Forget a file's open state once nothing needs it: no handle open and either nothing
    /// pending or the file deleted (its pending data can never become visible).
    fn maybe_gc(&mut self, key: Key) {
        if let Some(f) = self.files.get(&key) {
            if f.opens == 0 {
                let gone = fstat(f.fd.as_raw_fd()).map(|st| st.st_nlink == 0).unwrap_or(true);
                if f.pending.is_none() || gone {
                    self.files.remove(&key);
                }
            }
        }
    }

    fn flush_file(&mut self, key: Key, datasync: bool, fsync: bool) -> Result<(), Errno> {
        let Some(f) = self.files.get_mut(&key) else { return Ok(()) };
        let fd = f.fd.as_raw_fd();
        if let Some(p) = f.pending.take() {
            if let Err(e) = p.apply(fd) {
                f.pending = Some(p);
                return Err(e);
            }
            self.stats.synced_files += 1;
            self.stats.synced_bytes += p.written;
        }
        if fsync {
            // SAFETY: `fd` is the descriptor owned by `f.fd`, which stays in `self.files` (open) for the call;
            // fsync/fdatasync take no memory.
            chk(unsafe {
                if datasync {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            })?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), Errno> {
        let keys: Vec<Key> = self.files.iter().filter(|(_, f)| f.pending.is_some()).map(|(k, _)| *k).collect();
        let mut res = Ok(());
        for k in keys {
            if let Err(e) = self.flush_file(k, false, true) {
                res = Err(e);
            }
            self.maybe_gc(k);
        }
        res
    }

    /// Drop every unsynced write: (files, bytes).
    fn drop_all(&mut self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for f in self.files.values_mut() {
            if let Some(p) = f.pending.take() {
                files += 1;
                bytes += p.written;
            }
        }
        (files, bytes)
    }

    fn pending_summary(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for p in self.files.values().filter_map(|f| f.pending.as_ref()) {
            files += 1;
            bytes += p.written;
        }
        (files, bytes)
    }

    /// After creating `name` in `parent` as root, hand it to the caller.
    fn chown_new(&self, pfd: RawFd, name: &CStr, req: &Request) {
        if req.uid() != 0 || req.gid() != 0 {
            // SAFETY: `name` is a NUL-terminated CStr borrowed for the call and `pfd` the parent's descriptor,
            // kept open by the caller; fchownat only reads `name`.
            unsafe { libc::fchownat(pfd, name.as_ptr(), req.uid(), req.gid(), libc::AT_SYMLINK_NOFOLLOW) };
        }
    }

    fn new_handle(&mut self, key: Key) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, key);
        fh
    }
}

struct DropFs {
    st: Arc<Mutex<State>>,
    direct_io: bool,
    strict_fsyncdir: bool,
    trace: bool,
}

fn lock(st: &Mutex<State>) -> MutexGuard<'_, State> {
    st.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lock the state; once frozen (cut), every request fails with EIO and touches nothing.
macro_rules! state {
    ($self:ident, $reply:ident) => {{
        let g = lock(&$self.st);
        if g.frozen {
            $reply.error(Errno::EIO);
            return;
        }
        g
    }};
}

macro_rules! tr {
    ($self:ident, $($arg:tt)*) => {
        if $self.trace { eprintln!("dropfs: {}", format_args!($($arg)*)); }
    };
}

macro_rules! tryr {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

impl DropFs {
    fn open_flags_for(&self, fd: RawFd) -> FopenFlags {
        if !self.direct_io {
            return FopenFlags::empty();
        }
        let mut buf = [0u8; 4096];
        // SAFETY: the temporary `proc_path(fd)` CString lives until the end of this statement, past the call;
        // `buf` is a local array and exactly `buf.len()` is passed, so readlink writes only inside it
        // (it adds no NUL; only the `n` bytes it returns are used).
        let n = unsafe { libc::readlink(proc_path(fd).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 && buf[..n as usize].ends_with(b"-shm") {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        }
    }

    fn entry_after(&self, st: &mut State, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match st.lookup(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for DropFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        Ok(())
    }

    fn destroy(&mut self) {
        // Clean unmount (not a cut): like a real file system, write everything out.
        let mut st = lock(&self.st);
        if !st.frozen {
            let (files, bytes) = st.pending_summary();
            let r = st.flush_all();
            st.frozen = true;
            eprintln!("dropfs: unmounted cleanly: flushed {bytes} pending bytes of {files} files{}", if r.is_err() { " (with errors)" } else { "" });
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = state!(self, reply);
        match st.lookup(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut st = lock(&self.st);
        if let Some(i) = st.inodes.get_mut(&ino.0) {
            i.nlookup = i.nlookup.saturating_sub(nlookup);
            if i.nlookup == 0 {
                let key = i.key;
                st.inodes.remove(&ino.0);
                st.by_key.remove(&key);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = state!(self, reply);
        match st.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = state!(self, reply);
        tr!(self, "setattr ino={} mode={mode:?} uid={uid:?} gid={gid:?} size={size:?}", ino.0);
        let fd = tryr!(reply, st.inode_fd(ino));
        let is_link = tryr!(reply, fstat(fd)).st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let Some(m) = mode {
            if !is_link {
                // SAFETY: the temporary `proc_path(fd)` CString lives until the end of the statement, past the call,
                // and fchmodat only reads it; `fd` is owned by `st.inodes`, which we hold locked.
                tryr!(reply, chk(unsafe { libc::fchmodat(libc::AT_FDCWD, proc_path(fd).as_ptr(), m & 0o7777, 0) }));
            }
        }
        if uid.is_some() || gid.is_some() {
            // SAFETY: `c""` is a static NUL-terminated empty string and `fd` the inode's O_PATH descriptor, owned
            // by `st.inodes` which we hold locked; with AT_EMPTY_PATH fchownat acts on `fd` itself and
            // writes no memory of ours.
            tryr!(
                reply,
                chk(unsafe {
                    libc::fchownat(
                        fd,
                        c"".as_ptr(),
                        uid.unwrap_or(u32::MAX),
                        gid.unwrap_or(u32::MAX),
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
            );
        }
        if let Some(size) = size {
            // Truncation is data: pending until the next fsync of the file.
            let (_, f) = tryr!(reply, st.file_of_ino(ino));
            let ffd = f.fd.as_raw_fd();
            let cur = match &f.pending {
                Some(p) => p.size,
                None => tryr!(reply, fstat(ffd)).st_size as u64,
            };
            if size != cur || f.pending.is_some() {
                let p = match f.pending.as_mut() {
                    Some(p) => p,
                    None => f.pending.insert(Pending::new(cur)),
                };
                p.truncate(size);
            }
            let key = st.inodes[&ino.0].key;
            st.maybe_gc(key);
        }
        if (atime.is_some() || mtime.is_some()) && !is_link {
            let times = [to_timespec(atime), to_timespec(mtime)];
            // SAFETY: `times` is a local array of exactly the two timespecs utimensat reads, and the temporary
            // `proc_path(fd)` CString lives until the end of the statement; both are only read.
            tryr!(reply, chk(unsafe { libc::utimensat(libc::AT_FDCWD, proc_path(fd).as_ptr(), times.as_ptr(), 0) }));
            let key = st.inodes[&ino.0].key;
            if mtime.is_some() {
                if let Some(p) = st.files.get_mut(&key).and_then(|f| f.pending.as_mut()) {
                    p.mtime = None;
                }
            }
        }
        match st.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = state!(self, reply);
        let fd = tryr!(reply, st.inode_fd(ino));
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: `c""` is a static empty C string (readlinkat then reads the link `fd` itself refers to;
        // `fd` is owned by the locked `st`); `buf` holds PATH_MAX + 1 bytes and exactly `buf.len()`
        // is passed, so readlinkat writes only inside it.
        let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            reply.error(last_errno());
        } else {
            reply.data(&buf[..n as usize]);
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let mut st = state!(self, reply);
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(name));
        // SAFETY: `c` is a NUL-terminated CString alive for the call and `pfd` the parent's descriptor, owned
        // by the locked `st`; mknodat only reads `c`.
        tryr!(reply, chk(unsafe { libc::mknodat(pfd, c.as_ptr(), mode & !umask, rdev as libc::dev_t) }));
        st.chown_new(pfd, &c, req);
        self.entry_after(&mut st, parent, name, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut st = state!(self, reply);
        tr!(self, "mkdir {name:?}");
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(name));
        // SAFETY: as above: `c` is a NUL-terminated CString alive for the call, `pfd` is owned by the locked
        // `st`; mkdirat only reads `c`.
        tryr!(reply, chk(unsafe { libc::mkdirat(pfd, c.as_ptr(), mode & !umask & 0o7777) }));
        st.chown_new(pfd, &c, req);
        self.entry_after(&mut st, parent, name, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = state!(self, reply);
        tr!(self, "unlink {name:?}");
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(name));
        let key = statat(pfd, &c, libc::AT_SYMLINK_NOFOLLOW).ok().map(|s| key_of(&s));
        // SAFETY: `c` is a NUL-terminated CString alive for the call, `pfd` is owned by the locked `st`;
        // unlinkat only reads `c`.
        tryr!(reply, chk(unsafe { libc::unlinkat(pfd, c.as_ptr(), 0) }));
        if let Some(k) = key {
            st.maybe_gc(k);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = state!(self, reply);
        tr!(self, "rmdir {name:?}");
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(name));
        // SAFETY: as above: `c` is a NUL-terminated CString alive for the call, `pfd` is owned by the locked
        // `st`; unlinkat only reads `c`.
        tryr!(reply, chk(unsafe { libc::unlinkat(pfd, c.as_ptr(), libc::AT_REMOVEDIR) }));
        reply.ok();
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let mut st = state!(self, reply);
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(link_name));
        let t = tryr!(reply, cstr(target.as_os_str()));
        // SAFETY: `t` and `c` are NUL-terminated CStrings alive for the call and `pfd` the parent's
        // descriptor, owned by the locked `st`; symlinkat only reads the two strings.
        tryr!(reply, chk(unsafe { libc::symlinkat(t.as_ptr(), pfd, c.as_ptr()) }));
        st.chown_new(pfd, &c, req);
        self.entry_after(&mut st, parent, link_name, reply);
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        let mut st = state!(self, reply);
        tr!(self, "rename {name:?} -> {newname:?} flags={flags}");
        let pfd = tryr!(reply, st.inode_fd(parent));
        let npfd = tryr!(reply, st.inode_fd(newparent));
        let c = tryr!(reply, cstr(name));
        let nc = tryr!(reply, cstr(newname));
        let replaced = statat(npfd, &nc, libc::AT_SYMLINK_NOFOLLOW).ok().map(|s| key_of(&s));
        // SAFETY: `c` and `nc` are NUL-terminated CStrings alive for the call, `pfd` and `npfd` descriptors
        // owned by the locked `st`, and the flags a plain integer; renameat2 only reads the names.
        let r = unsafe { libc::syscall(libc::SYS_renameat2, pfd, c.as_ptr(), npfd, nc.as_ptr(), flags.bits() as libc::c_uint) };
        if r < 0 {
            reply.error(last_errno());
            return;
        }
        if let Some(k) = replaced {
            st.maybe_gc(k);
        }
        reply.ok();
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut st = state!(self, reply);
        let fd = tryr!(reply, st.inode_fd(ino));
        let npfd = tryr!(reply, st.inode_fd(newparent));
        let nc = tryr!(reply, cstr(newname));
        // SAFETY: the temporary `proc_path(fd)` CString lives until the end of the statement and `nc` is a
        // NUL-terminated CString alive for the call; `npfd` is owned by the locked `st`. linkat only
        // reads the two names.
        tryr!(reply, chk(unsafe { libc::linkat(libc::AT_FDCWD, proc_path(fd).as_ptr(), npfd, nc.as_ptr(), libc::AT_SYMLINK_FOLLOW) }));
        self.entry_after(&mut st, newparent, newname, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = state!(self, reply);
        tr!(self, "open ino={} flags={:#x}", ino.0, flags.0);
        let (key, f) = tryr!(reply, st.file_of_ino(ino));
        f.opens += 1;
        let ffd = f.fd.as_raw_fd();
        let fh = st.new_handle(key);
        reply.opened(FileHandle(fh), self.open_flags_for(ffd));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = state!(self, reply);
        let key = *tryr!(reply, st.handles.get(&fh.0).ok_or(Errno::EBADF));
        let f = tryr!(reply, st.files.get(&key).ok_or(Errno::EBADF));
        let fd = f.fd.as_raw_fd();
        let data = match &f.pending {
            Some(p) => tryr!(reply, p.read(fd, offset, size as u64)),
            None => {
                let mut b = vec![0u8; size as usize];
                let n = tryr!(reply, pread_full(fd, &mut b, offset));
                b.truncate(n);
                b
            }
        };
        reply.data(&data);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = state!(self, reply);
        tr!(self, "write fh={} off={offset} len={}", fh.0, data.len());
        let key = *tryr!(reply, st.handles.get(&fh.0).ok_or(Errno::EBADF));
        let f = tryr!(reply, st.files.get_mut(&key).ok_or(Errno::EBADF));
        let fd = f.fd.as_raw_fd();
        if f.pending.is_none() {
            let size = tryr!(reply, fstat(fd)).st_size as u64;
            f.pending = Some(Pending::new(size));
        }
        tryr!(reply, f.pending.as_mut().unwrap().write(fd, offset, data));
        if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            tryr!(reply, st.flush_file(key, flags.0 & libc::O_SYNC != libc::O_SYNC, true));
        }
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        // close() does not make data durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.st);
        if let Some(key) = st.handles.remove(&fh.0) {
            if let Some(f) = st.files.get_mut(&key) {
                f.opens = f.opens.saturating_sub(1);
            }
            st.maybe_gc(key);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let mut st = state!(self, reply);
        tr!(self, "fsync fh={} datasync={datasync}", fh.0);
        let key = *tryr!(reply, st.handles.get(&fh.0).ok_or(Errno::EBADF));
        tryr!(reply, st.flush_file(key, datasync, true));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = state!(self, reply);
        let fd = tryr!(reply, st.inode_fd(ino));
        let dfd = tryr!(reply, openat(libc::AT_FDCWD, &proc_path(fd), libc::O_RDONLY | libc::O_DIRECTORY, 0));
        // SAFETY: `dfd` is an open directory descriptor we own; on success the DIR takes it over (hence the
        // `forget` below), on failure it stays ours and drop closes it.
        let dirp = unsafe { libc::fdopendir(dfd.as_raw_fd()) };
        if dirp.is_null() {
            reply.error(last_errno());
            return;
        }
        std::mem::forget(dfd); // owned by dirp now
        let mut ents = Vec::new();
        loop {
            // SAFETY: __errno_location returns a valid pointer to this thread's errno; we only store 0 in it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dirp` is the non-null DIR from fdopendir above and is closed only after the loop.
            let e = unsafe { libc::readdir64(dirp) };
            if e.is_null() {
                break;
            }
            // SAFETY: `e` is non-null and points to the record readdir64 just returned, valid until the
            // next readdir64/closedir on `dirp`. Only its fields are read, through raw pointers (the
            // record is `d_reclen` bytes, maybe shorter than a whole `dirent64`, so no reference to it
            // is made); `d_name` is NUL-terminated within the record and `name` is used only within
            // this iteration.
            let (d_ino, d_type, name) = unsafe {
                (
                    std::ptr::addr_of!((*e).d_ino).read(),
                    std::ptr::addr_of!((*e).d_type).read(),
                    CStr::from_ptr(std::ptr::addr_of!((*e).d_name).cast()),
                )
            };
            let kind = match d_type {
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                libc::DT_FIFO => FileType::NamedPipe,
                libc::DT_SOCK => FileType::Socket,
                libc::DT_CHR => FileType::CharDevice,
                libc::DT_BLK => FileType::BlockDevice,
                libc::DT_REG => FileType::RegularFile,
                _ => {
                    // SAFETY: `dirp` is still open (closed only after the loop); dirfd only reads the DIR.
                    statat(unsafe { libc::dirfd(dirp) }, name, libc::AT_SYMLINK_NOFOLLOW).map(|s| kind_of(s.st_mode)).unwrap_or(FileType::RegularFile)
                }
            };
            ents.push(DirEnt { ino: d_ino, kind, name: OsString::from_vec(name.to_bytes().to_vec()) });
        }
        // SAFETY: `dirp` came from fdopendir and is closed exactly once, here (this also closes the
        // descriptor `dfd` handed over); neither it nor any entry read from it is used afterwards.
        unsafe { libc::closedir(dirp) };
        let fh = st.next_fh;
        st.next_fh += 1;
        st.dirs.insert(fh, ents);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = state!(self, reply);
        let ents = tryr!(reply, st.dirs.get(&fh.0).ok_or(Errno::EBADF));
        for (i, e) in ents.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.st).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let mut st = state!(self, reply);
        tr!(self, "fsyncdir ino={} datasync={datasync}", ino.0);
        // FUSE never delivers syncfs(2) (see README.md), so fsync of any directory stands in
        // for it: every pending write of every file reaches BACKING.
        if !self.strict_fsyncdir {
            tryr!(reply, st.flush_all());
        }
        let fd = tryr!(reply, st.inode_fd(ino));
        let dfd = tryr!(reply, openat(libc::AT_FDCWD, &proc_path(fd), libc::O_RDONLY | libc::O_DIRECTORY, 0));
        // SAFETY: `dfd` is an open descriptor we own until the end of this function; fsync takes no memory.
        tryr!(reply, chk(unsafe { libc::fsync(dfd.as_raw_fd()) }));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = state!(self, reply);
        let fd = tryr!(reply, st.inode_fd(INodeNo::ROOT));
        // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `s` is a valid, writable statvfs on our stack, alive for the call, and `fd` the root's
        // descriptor, owned by the locked `st`; fstatvfs writes only `s`.
        tryr!(reply, chk(unsafe { libc::fstatvfs(fd, &mut s) }));
        reply.statfs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize as u32, s.f_namemax as u32, s.f_frsize as u32);
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let st = state!(self, reply);
        let p = tryr!(reply, xattr_path(&st, ino));
        let n = tryr!(reply, cstr(name));
        // SAFETY: `p` and `n` are NUL-terminated CStrings alive for the call and `value` is a live slice
        // whose exact length is passed; setxattr only reads them.
        tryr!(reply, chk(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) }));
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let st = state!(self, reply);
        let p = tryr!(reply, xattr_path(&st, ino));
        let n = tryr!(reply, cstr(name));
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `p` and `n` are NUL-terminated CStrings alive for the call; `buf` holds `size` bytes and
        // exactly `buf.len()` is passed, so getxattr writes only inside it (nothing if size is 0).
        let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        xattr_reply(r, size, &buf, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let st = state!(self, reply);
        let p = tryr!(reply, xattr_path(&st, ino));
        let mut buf = vec![0u8; size as usize];
        // SAFETY: as above: `p` is a NUL-terminated CString alive for the call; `buf` holds `size` bytes and
        // exactly `buf.len()` is passed, so listxattr writes only inside it (nothing if size is 0).
        let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        xattr_reply(r, size, &buf, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = state!(self, reply);
        let p = tryr!(reply, xattr_path(&st, ino));
        let n = tryr!(reply, cstr(name));
        // SAFETY: `p` and `n` are NUL-terminated CStrings alive for the call; removexattr only reads them.
        tryr!(reply, chk(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }));
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks permissions itself.
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let mut st = state!(self, reply);
        tr!(self, "create {name:?} flags={flags:#x}");
        let pfd = tryr!(reply, st.inode_fd(parent));
        let c = tryr!(reply, cstr(name));
        let existed = statat(pfd, &c, libc::AT_SYMLINK_NOFOLLOW).is_ok();
        let ofl = libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW | (flags & libc::O_EXCL);
        let fd = tryr!(reply, openat(pfd, &c, ofl, (mode & !umask & 0o7777) as libc::mode_t));
        if !existed {
            st.chown_new(pfd, &c, req);
        }
        let path_fd = tryr!(reply, openat(libc::AT_FDCWD, &proc_path(fd.as_raw_fd()), libc::O_PATH, 0));
        let attr = tryr!(reply, st.register(path_fd));
        let key = st.inodes[&attr.ino.0].key;
        let f = st.files.entry(key).or_insert(FileState { fd, opens: 0, pending: None });
        f.opens += 1;
        let ffd = f.fd.as_raw_fd();
        if existed && flags & libc::O_TRUNC != 0 {
            let size = match &f.pending {
                Some(p) => p.size,
                None => fstat(ffd).map(|s| s.st_size as u64).unwrap_or(0),
            };
            f.pending.get_or_insert_with(|| Pending::new(size)).truncate(0);
        }
        let fh = st.new_handle(key);
        let attr = st.attr(attr.ino).unwrap_or(attr);
        reply.created(&TTL, &attr, Generation(0), FileHandle(fh), self.open_flags_for(ffd));
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let mut st = state!(self, reply);
        tr!(self, "fallocate fh={} off={offset} len={length} mode={mode:#x}", fh.0);
        let key = *tryr!(reply, st.handles.get(&fh.0).ok_or(Errno::EBADF));
        let f = tryr!(reply, st.files.get_mut(&key).ok_or(Errno::EBADF));
        let fd = f.fd.as_raw_fd();
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            return;
        }
        if f.pending.is_none() {
            let size = tryr!(reply, fstat(fd)).st_size as u64;
            f.pending = Some(Pending::new(size));
        }
        let p = f.pending.as_mut().unwrap();
        if zero {
            tryr!(reply, p.zero_range(fd, offset, length));
        }
        if !keep && offset + length > p.size {
            // Bytes between the old and new size read as zeros (pages beyond size are zero,
            // backing bytes beyond floor <= size are invisible).
            p.size = offset + length;
            p.mtime = Some(SystemTime::now());
        }
        reply.ok();
    }
}

fn xattr_path(st: &State, ino: INodeNo) -> Result<CString, Errno> {
    let fd = st.inode_fd(ino)?;
    if fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Errno::from_i32(libc::EOPNOTSUPP));
    }
    Ok(proc_path(fd))
}

fn xattr_reply(r: isize, size: u32, buf: &[u8], reply: ReplyXattr) {
    if r < 0 {
        reply.error(last_errno());
    } else if size == 0 {
        reply.size(r as u32);
    } else {
        reply.data(&buf[..r as usize]);
    }
}

// ---------------------------------------------------------------------------------------------
// Signals, the cut, main
// ---------------------------------------------------------------------------------------------

static SIGNAL: AtomicI32 = AtomicI32::new(0);
static SESSION_ENDED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signals() {
    for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is a valid value; without SA_SIGINFO `on_signal` has the one-int
        // signature sa_handler expects and only does an atomic store, which is async-signal-safe;
        // `sa` and its mask are live locals, and a null old-action pointer is allowed.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn detach(mountpoint: &Path) {
    let c = CString::new(mountpoint.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString alive for the call; umount2 only reads it.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        eprintln!("dropfs: umount2({}): {}", mountpoint.display(), io::Error::last_os_error());
    }
}

/// Watches for the control file and signals; a cut never returns (the process exits).
fn watcher(st: Arc<Mutex<State>>, mountpoint: PathBuf, control: PathBuf) {
    loop {
        std::thread::sleep(Duration::from_millis(5));
        if SESSION_ENDED.load(Ordering::SeqCst) {
            return;
        }
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        let by_file = control.symlink_metadata().is_ok();
        if sig == libc::SIGUSR1 || by_file {
            // The cut: under the lock, so no request is half applied; from here on every request
            // fails without touching BACKING.
            {
                let mut g = lock(&st);
                g.frozen = true;
                let dropped = g.drop_all();
                eprintln!(
                    "dropfs: CUT ({}): dropped {} unsynced bytes in {} files; synced before the cut: {} bytes in {} fsyncs",
                    if by_file { "control file" } else { "SIGUSR1" },
                    dropped.1,
                    dropped.0,
                    g.stats.synced_bytes,
                    g.stats.synced_files
                );
            }
            if by_file {
                let _ = std::fs::remove_file(&control);
            }
            detach(&mountpoint);
            // SAFETY: _exit takes a plain status and touches no memory of ours; skipping destructors and
            // atexit handlers is intended (a cut must flush nothing).
            unsafe { libc::_exit(0) };
        } else if sig != 0 {
            let (files, bytes, r) = {
                let mut g = lock(&st);
                let (files, bytes) = g.pending_summary();
                let r = g.flush_all();
                g.frozen = true;
                (files, bytes, r)
            };
            eprintln!(
                "dropfs: signal {sig}: clean shutdown: flushed {bytes} pending bytes of {files} files{}",
                if r.is_err() { " (with errors)" } else { "" }
            );
            detach(&mountpoint);
            // SAFETY: as above: _exit only ends the process; everything was flushed under the lock above.
            unsafe { libc::_exit(0) };
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: dropfs BACKING MOUNTPOINT [--control PATH] [--direct-io] [--strict-fsyncdir] [--trace]\n\
         \n\
         Unsynced file data is kept in memory; a cut (PATH appears, default BACKING/../dropfs.cut,\n\
         or SIGUSR1) drops it all and exits. SIGTERM/SIGINT/umount flush everything first.\n\
         --direct-io        open regular files with FOPEN_DIRECT_IO, except names ending in -shm\n\
         --strict-fsyncdir  fsync of a directory syncs only that directory, not all pending data\n\
         --trace            log data/sync operations to stderr"
    );
    std::process::exit(2);
}

fn main() {
    let mut pos = Vec::new();
    let mut control = None;
    let mut direct_io = false;
    let mut strict_fsyncdir = false;
    let mut trace = std::env::var_os("DROPFS_TRACE").is_some();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--control") => control = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            Some("--direct-io") => direct_io = true,
            Some("--strict-fsyncdir") => strict_fsyncdir = true,
            Some("--trace") => trace = true,
            Some("-h" | "--help") => usage(),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    if pos.len() != 2 {
        usage();
    }
    let backing = std::fs::canonicalize(&pos[0]).unwrap_or_else(|e| {
        eprintln!("dropfs: {}: {e}", pos[0].display());
        std::process::exit(1)
    });
    let mountpoint = std::fs::canonicalize(&pos[1]).unwrap_or_else(|e| {
        eprintln!("dropfs: {}: {e}", pos[1].display());
        std::process::exit(1)
    });
    let control = control.unwrap_or_else(|| backing.parent().unwrap_or(Path::new("/")).join("dropfs.cut"));
    if control.symlink_metadata().is_ok() {
        eprintln!("dropfs: removing stale control file {}", control.display());
        let _ = std::fs::remove_file(&control);
    }

    // Many O_PATH descriptors may be held (one per inode the kernel remembers).
    // SAFETY: an all-zero rlimit is a valid value; getrlimit writes only `rl`, a live local, and
    // setrlimit only reads it.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }

    let root_c = CString::new(backing.as_os_str().as_bytes()).unwrap();
    let root_fd = openat(libc::AT_FDCWD, &root_c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap_or_else(|e| {
        eprintln!("dropfs: open {}: {e:?}", backing.display());
        std::process::exit(1)
    });
    let root_st = fstat(root_fd.as_raw_fd()).unwrap();
    let root_key = key_of(&root_st);
    let mut inodes = HashMap::new();
    inodes.insert(1, Inode { fd: root_fd, key: root_key, nlookup: u64::MAX / 2 });
    let mut by_key = HashMap::new();
    by_key.insert(root_key, 1);
    let st = Arc::new(Mutex::new(State {
        inodes,
        by_key,
        next_ino: 2,
        files: HashMap::new(),
        handles: HashMap::new(),
        dirs: HashMap::new(),
        next_fh: 1,
        frozen: false,
        stats: Stats::default(),
    }));

    install_signals();
    let fs = DropFs { st: st.clone(), direct_io, strict_fsyncdir, trace };
    let mut config = Config::default();
    config.mount_options =
        vec![MountOption::FSName(format!("dropfs:{}", backing.display())), MountOption::Subtype("dropfs".into()), MountOption::DefaultPermissions];
    let session = Session::new(fs, &mountpoint, &config).unwrap_or_else(|e| {
        eprintln!("dropfs: mount on {}: {e}", mountpoint.display());
        std::process::exit(1)
    });
    eprintln!(
        "dropfs: {} mounted on {} (control file {}, {}; pid {})",
        backing.display(),
        mountpoint.display(),
        control.display(),
        if direct_io { "direct_io except *-shm" } else { "write-through page cache" },
        std::process::id()
    );
    let w = {
        let st = st.clone();
        let mp = mountpoint.clone();
        std::thread::spawn(move || watcher(st, mp, control))
    };
    let r = session.run();
    // Unmounted from outside (destroy() flushed everything). If instead a cut or shutdown is in
    // progress, the watcher is past its checks and exits the process itself.
    SESSION_ENDED.store(true, Ordering::SeqCst);
    let _ = w.join();
    if let Err(e) = r {
        eprintln!("dropfs: session: {e}");
        std::process::exit(1);
    }
}
