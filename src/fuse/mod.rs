//! `fuser::Filesystem` over `fs::Fs`: unpack the request, call `Fs`, reply. Nothing else.
//!
//! Callbacks that may touch the network (open of an archived file, the first write into an
//! uploaded file opened for writing without O_TRUNC, reads of remote content) move their reply
//! into a blocking task so the dispatch threads never wait on S3; everything else is local
//! (SQLite, staging disk) and runs inline.

use crate::clock::Nanos;
use crate::fs::{Fs, FsError};
use crate::meta::{Inode, Kind};
use crate::vault::Special;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attribute/entry cache time given to the kernel. coldvault is the only writer of its own
/// namespace, so a short TTL is safe and saves a getattr round trip per stat.
const TTL: Duration = Duration::from_secs(1);
/// `__FMODE_EXEC` in the flags of an OPEN: the kernel opens the file to run it (execve, or
/// as the interpreter of a script or binfmt_misc entry).
const FMODE_EXEC: i32 = 0x20;
pub const MAX_WRITE: u32 = 1 << 20;

pub struct ColdFs {
    fs: Arc<Fs>,
}

impl ColdFs {
    fn attr(&self, i: &Inode) -> FileAttr {
        attr_full(&self.fs, i)
    }
}

/// Attributes with the real link count of directories (2 + subdirectories).
fn attr_full(fs: &Fs, i: &Inode) -> FileAttr {
    let mut a = attr(i);
    if i.kind == Kind::Dir && i.ino < crate::fs::CTL_DIR {
        a.nlink = fs.dir_nlink(i.ino);
    }
    a
}

impl ColdFs {
    pub fn new(fs: Arc<Fs>) -> ColdFs {
        ColdFs { fs }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn ts(ns: Nanos) -> SystemTime {
    crate::clock::from_nanos(ns)
}

/// A time the kernel sent in a request. fuser 0.18 turns the kernel's `(secs < 0, nsecs)` into
/// `EPOCH - (|secs| s + nsecs ns)` instead of `EPOCH - |secs| s + nsecs ns` (its src/time.rs,
/// `system_time_from_time`), so -0.999999995 s arrives as -1.000000005 s; undo that here.
/// (Replies are converted correctly.) tests/e2e/test_write_path.py sets such times through a
/// real mount, so a fuser that fixes it shows up as a failing test, not as shifted times.
fn to_ns(t: SystemTime) -> Nanos {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(_) => crate::clock::to_nanos(t),
        Err(e) => -(e.duration().as_secs() as Nanos) * 1_000_000_000 + e.duration().subsec_nanos() as Nanos,
    }
}

fn time_or_now(t: Option<TimeOrNow>) -> Option<Nanos> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(s) => to_ns(s),
        TimeOrNow::Now => crate::fs::now_ns(),
    })
}

/// File type and device number of an inode.
fn type_and_rdev(i: &Inode) -> (FileType, u32) {
    match i.kind {
        Kind::File => (FileType::RegularFile, 0),
        Kind::Dir => (FileType::Directory, 0),
        Kind::Symlink => (FileType::Symlink, 0),
        Kind::Special => match Special::parse(i.target.as_deref().unwrap_or_default()) {
            Special::Sock => (FileType::Socket, 0),
            Special::Chr(rdev) => (FileType::CharDevice, rdev),
            Special::Blk(rdev) => (FileType::BlockDevice, rdev),
            Special::Fifo => (FileType::NamedPipe, 0),
        },
    }
}

pub fn attr(i: &Inode) -> FileAttr {
    let (kind, rdev) = type_and_rdev(i);
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: ts(i.atime_ns),
        mtime: ts(i.mtime_ns),
        ctime: ts(i.ctime_ns),
        crtime: ts(i.ctime_ns),
        kind,
        perm: i.mode as u16,
        // An unlinked file still open (parent 0) has no links left.
        nlink: if i.parent == 0 && i.ino != 1 {
            0
        } else if i.kind == Kind::Dir {
            2
        } else {
            1
        },
        uid: i.uid,
        gid: i.gid,
        rdev,
        blksize: 65536,
        flags: 0,
    }
}

/// The reply to a lookup of a name that does not exist, cached by the kernel: inode 0.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 65536,
        flags: 0,
    }
}

fn file_type(i: &Inode) -> FileType {
    type_and_rdev(i).0
}

const GEN: Generation = Generation(0);

/// readdir offset cookie of a child: its inode number (children are listed in inode order),
/// shifted past "." and "..". Entries removed or added between two readdir calls (rm -rf
/// listing while unlinking) then never shift the listing, so nothing is skipped or repeated.
fn cookie(ino: u64) -> u64 {
    ino + 2
}

/// The inode number after which a listing resumes at FUSE offset `offset` (0, 1 and 2 are the
/// start, `.` and `..`).
fn after_cookie(offset: u64) -> u64 {
    offset.saturating_sub(2)
}

/// Entries read from the index per readdir call: more than a reply buffer holds (about 30
/// with attributes in 4 KiB), few enough that a page costs little when most is left out.
const READDIR_PAGE: usize = 128;

impl fuser::Filesystem for ColdFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // READDIRPLUS: `ls -l` and rsync's directory scans get attributes with the listing
        // instead of one LOOKUP per entry. PARALLEL_DIROPS: lookups in one folder run in parallel.
        // ATOMIC_O_TRUNC: O_TRUNC reaches `open`; without it the kernel opens without it and
        // truncates afterwards, so every overwrite (`cp`, `>`, an export over an old one) would
        // first fetch the old content — a download, or a restore of an archived file.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS
                | fuser::InitFlags::FUSE_READDIRPLUS_AUTO
                | fuser::InitFlags::FUSE_PARALLEL_DIROPS
                | fuser::InitFlags::FUSE_ATOMIC_O_TRUNC,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // A new view of the past (`.coldvault/at/TIME`) replays the journals from S3: off
        // this thread.
        if self.fs.lookup_may_wait(parent.0) {
            let (fs, name) = (self.fs.clone(), name.to_owned());
            self.fs.runtime().spawn_blocking(move || match fs.lookup(parent.0, &name) {
                Ok(i) => reply.entry(&TTL, &attr_full(&fs, &i), GEN),
                Err(e) => reply.error(errno(&e)),
            });
            return;
        }
        match self.fs.lookup(parent.0, name) {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), GEN),
            // A name that does not exist is remembered by the kernel for TTL (an entry with
            // inode 0), so the lookups that rsync, cp and Samba make before every create do not
            // each cost a round trip. Every real name comes and goes through the kernel, which
            // drops the negative entry then; status files appear when the daemon starts a
            // restore, so a missing one is never remembered.
            Err(FsError::NotFound) if !self.fs.is_virtual_name(name) => reply.entry(&TTL, &negative_entry(), GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
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
        let fs = self.fs.clone();
        let (a, m) = (time_or_now(atime), time_or_now(mtime));
        // A truncate of a remote file may need its old bytes: keep the network off this thread.
        let work = move || match fs.setattr(ino.0, mode, uid, gid, size, a, m) {
            Ok(i) => reply.attr(&TTL, &attr_full(&fs, &i)),
            Err(e) => reply.error(errno(&e)),
        };
        if size.is_some() {
            self.fs.runtime().spawn_blocking(work);
        } else {
            work();
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.fs.mkdir(parent.0, name, mode & !umask, req.uid(), req.gid()) {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let mode = (mode & libc::S_IFMT) | (mode & !umask & 0o7777);
        match self.fs.mknod(parent.0, name, mode, rdev, req.uid(), req.gid()) {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        match self.fs.symlink(parent.0, link_name, target, req.uid(), req.gid()) {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        match self.fs.rename(parent.0, name, newparent.0, newname, flags.contains(RenameFlags::RENAME_NOREPLACE)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // Hard links are refused: one object per path (docs/SEMANTICS.md).
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let trunc = flags.0 & libc::O_TRUNC != 0;
        // With ATOMIC_O_TRUNC the kernel takes every O_TRUNC open it passes on as truncated
        // here, O_RDONLY|O_TRUNC too (it sends no truncate after it; Linux truncates then):
        // such an open truncates as a writer's does, and commits at its close like one.
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || trunc;
        let exec = flags.0 & FMODE_EXEC != 0;
        let pid = req.pid();
        let fs = self.fs.clone();
        // May ask S3 (restore status) or copy a sealed file's content for a writer: off the
        // dispatch thread. An uploaded file opened for writing fetches nothing (its first
        // write or read does).
        let open = move || if exec { fs.open_exec(ino.0, pid) } else { fs.open(ino.0, write, trunc, pid) };
        self.fs.runtime().spawn_blocking(move || match open() {
            // Virtual status files change under the kernel's feet: bypass its page cache.
            Ok((fh, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        });
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
        // Data that has arrived (read-ahead) is answered here; a read that would wait for S3
        // moves to a blocking task.
        if let Some(r) = self.fs.read_now(fh.0, offset, size) {
            return match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let fs = self.fs.clone();
        self.fs.runtime().spawn_blocking(move || match fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The first write through a handle opened without O_TRUNC may fetch the old content
        // (a partial rewrite of an uploaded file): off the dispatch thread.
        if !self.fs.writes_locally(fh.0) {
            let (fs, data) = (self.fs.clone(), data.to_vec());
            self.fs.runtime().spawn_blocking(move || match fs.write(fh.0, offset, &data) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            });
            return;
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
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
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// fsync of a folder (after a rename into it, say): every change so far survives power
    /// loss. Without it the kernel takes ENOSYS as success and stops asking.
    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.fs.sync_durable() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let kids = match self.fs.readdir_after(ino.0, after_cookie(offset), READDIR_PAGE) {
            Ok(k) => k,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = self.fs.getattr(ino.0).map(|i| i.parent).unwrap_or(1);
        let dots = [(ino.0, FileType::Directory, ".".to_string()), (parent, FileType::Directory, "..".to_string())];
        let entries = dots.into_iter().enumerate().map(|(k, (i, t, n))| (k as u64 + 1, i, t, n));
        let children = kids.into_iter().map(|i| (cookie(i.ino), i.ino, file_type(&i), i.name));
        for (off, i, k, n) in entries.chain(children).filter(|e| e.0 > offset) {
            if reply.add(INodeNo(i), off, k, n) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let kids = match self.fs.readdir_after(ino.0, after_cookie(offset), READDIR_PAGE) {
            Ok(k) => k,
            Err(e) => return reply.error(errno(&e)),
        };
        let me = match self.fs.getattr(ino.0) {
            Ok(i) => i,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = self.fs.getattr(me.parent).unwrap_or_else(|_| me.clone());
        let dots = [(1u64, ".".to_string(), me), (2u64, "..".to_string(), parent)];
        let children = kids.into_iter().map(|i| (cookie(i.ino), i.name.clone(), i));
        for (off, n, i) in dots.into_iter().chain(children).filter(|e| e.0 > offset) {
            if reply.add(INodeNo(i.ino), off, n, &TTL, &self.attr(&i), GEN) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => {
                reply.statfs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize as u32, crate::fs::MAX_NAME as u32, s.f_frsize as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _offset: u64, _length: u64, _mode: i32, reply: ReplyEmpty) {
        // Preallocation means nothing for a spool that is encrypted and uploaded anyway; say so
        // the same way every time (Samba and cp fall back to plain writes).
        reply.error(Errno::EOPNOTSUPP);
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctl means anything here; answer as a regular file on a local filesystem does
        // (ENOTTY: Python's open() asks TCGETS of every file), quietly.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; nothing more to decide here.
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _flags: i32, reply: ReplyCreate) {
        match self.fs.create(parent.0, name, mode & !umask, req.uid(), req.gid()) {
            Ok((i, fh)) => reply.created(&TTL, &self.attr(&i), GEN, FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

pub struct MountOptions {
    pub allow_other: bool,
    pub threads: usize,
}

pub fn session(fs: Arc<Fs>, mountpoint: &Path, opts: &MountOptions) -> std::io::Result<fuser::Session<ColdFs>> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("coldvault".into()),
        fuser::MountOption::Subtype("coldvault".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if opts.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = opts.threads > 1;
    fuser::Session::new(ColdFs::new(fs), mountpoint, &cfg)
}
