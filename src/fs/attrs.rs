//! Attributes: lookup, getattr/setattr (truncate included), readdir, readlink, extended attributes, statfs, and the virtual status files.

use super::at::{is_view_ino, CTL_AT};
use super::{now_ms, now_ns, Core, Fs, FsError, Result, CTL_DIR, CTL_NAME, CTL_RESTORES, MAX_NAME, STATUS_BIT};
use crate::clock::Nanos;
use crate::meta::Inode;
use crate::meta::Kind;
use crate::meta::State;
use crate::meta::ROOT;
use std::collections::HashMap;

/// The longest extended attribute name, and the most all of a file's take (as on ext4).
const XATTR_NAME_MAX: usize = 255;
const XATTR_SET_MAX: usize = 64 << 10;

impl Fs {
    /// Links of a directory: "." , its entry in the parent, and ".." of each subdirectory.
    pub fn dir_nlink(&self, ino: u64) -> u32 {
        let c = self.core();
        c.db.subdir_count(ino).map(|n| 2 + n as u32).unwrap_or(2)
    }

    pub fn getattr(&self, ino: u64) -> Result<Inode> {
        let c = self.core();
        if ino >= CTL_DIR {
            return self.virtual_inode(&c, ino).map(|(i, _)| i);
        }
        Self::get_inode(&c, ino)
    }

    pub fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> Result<Inode> {
        if name.len() > MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let c = self.core();
        if parent == ROOT && name == CTL_NAME {
            return self.virtual_inode(&c, CTL_DIR).map(|(i, _)| i);
        }
        if parent == CTL_DIR {
            return match name {
                "restores" => self.virtual_inode(&c, CTL_RESTORES).map(|(i, _)| i),
                "at" => self.virtual_inode(&c, CTL_AT).map(|(i, _)| i),
                _ => Err(FsError::NotFound),
            };
        }
        if parent == CTL_AT {
            drop(c);
            return self.at_view(name);
        }
        if is_view_ino(parent) {
            drop(c);
            return self.view_lookup(parent, name);
        }
        match c.db.lookup(parent, name)? {
            Some(i) => Ok(Self::apply_overlay(&c, i)),
            None => {
                // NAME.restore-status beside a file with a visible restore.
                let base = name.strip_suffix(self.cfg.restore.suffix.as_str()).ok_or(FsError::NotFound)?;
                let b = c.db.lookup(parent, base)?.ok_or(FsError::NotFound)?;
                self.virtual_inode(&c, b.ino | STATUS_BIT).map(|(i, _)| i)
            }
        }
    }

    /// Whether a lookup in `parent` may wait for S3 (`.coldvault/at`: a new view replays the
    /// journals): the FUSE layer makes it off its dispatch thread.
    pub fn lookup_may_wait(&self, parent: u64) -> bool {
        parent == CTL_AT
    }

    /// Whether `name` may come into being without a namespace operation through the kernel
    /// (a restore's status file; the control folder): a lookup that misses such a name must
    /// not be cached as missing.
    pub fn is_virtual_name(&self, name: &std::ffi::OsStr) -> bool {
        name.to_str().is_none_or(|n| n.ends_with(self.cfg.restore.suffix.as_str()) || n == CTL_NAME)
    }

    /// Every entry of a directory (tests, small listings).
    pub fn readdir(&self, ino: u64) -> Result<Vec<Inode>> {
        self.readdir_after(ino, 0, usize::MAX)
    }

    /// One page of a directory listing: up to `limit` entries whose inode number is above
    /// `after`, in inode order (the order of FUSE's offsets), then the status files of the
    /// directory's files being restored (their numbers, with `STATUS_BIT`, sort after every
    /// real inode). Each FUSE readdir call reads one page from the index instead of the whole
    /// directory, so listing a 100,000-file folder stays linear.
    pub fn readdir_after(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<Inode>> {
        let c = self.core();
        if ino == CTL_DIR {
            let mut out = Vec::new();
            for x in [CTL_RESTORES, CTL_AT].into_iter().filter(|&x| x > after) {
                out.push(self.virtual_inode(&c, x)?.0);
            }
            return Ok(out);
        }
        if ino == CTL_AT {
            drop(c);
            return Ok(self.views_listing(after).into_iter().take(limit).collect());
        }
        if is_view_ino(ino) {
            drop(c);
            return self.view_readdir(ino, after, limit);
        }
        let d = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out: Vec<Inode> = if after < STATUS_BIT {
            c.db.children_after(ino, after, limit)?.into_iter().map(|i| Self::apply_overlay(&c, i)).collect()
        } else {
            Vec::new()
        };
        if out.len() < limit {
            let status: Vec<u64> = c.db.restores_in(ino, after.saturating_sub(STATUS_BIT))?.into_iter().map(|r| r | STATUS_BIT).collect();
            for x in status.into_iter().take(limit - out.len()) {
                if let Ok((v, _)) = self.virtual_inode(&c, x) {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// `v` made the status file of `b` (at vault path `path`) whose restore is `r`: its content.
    fn status_file(&self, v: &mut Inode, b: &Inode, r: &crate::restore::Restore, path: &str) -> Vec<u8> {
        v.parent = b.parent;
        v.name = format!("{}{}", b.name, self.cfg.restore.suffix);
        v.kind = Kind::File;
        // Readable by whoever may read the file it speaks of (review L6).
        v.mode = b.mode & 0o444;
        v.uid = b.uid;
        v.gid = b.gid;
        v.mtime_ns = r.last_check_ms.max(r.requested_ms) as Nanos * 1_000_000;
        v.ctime_ns = v.mtime_ns;
        crate::restore::status_text(path, r).into_bytes()
    }

    /// A virtual inode (status file, `.coldvault`, its `restores` listing) and its content.
    pub(super) fn virtual_inode(&self, c: &Core, ino: u64) -> Result<(Inode, Vec<u8>)> {
        let root = c.db.get(ROOT)?.ok_or(FsError::NotFound)?;
        let mut v = Self::new_inode(ROOT, CTL_NAME, Kind::Dir, 0o555, root.uid, root.gid);
        v.ino = ino;
        v.state = State::None;
        v.mtime_ns = now_ns();
        v.ctime_ns = v.mtime_ns;
        let content = match ino {
            CTL_DIR => Vec::new(),
            CTL_AT => {
                v.parent = CTL_DIR;
                v.name = "at".into();
                Vec::new()
            }
            x if is_view_ino(x) && x & STATUS_BIT == 0 => return Ok((self.view_inode(x)?, Vec::new())),
            x if is_view_ino(x) => {
                let b = self.view_inode(x & !STATUS_BIT)?;
                let r =
                    c.db.restore(b.ino)?.filter(|r| r.state.visible() && Some(&r.object_key) == b.object_key.as_ref()).ok_or(FsError::NotFound)?;
                self.status_file(&mut v, &b, &r, &self.view_path(b.ino).unwrap_or_default())
            }
            CTL_RESTORES => {
                v.parent = CTL_DIR;
                v.name = "restores".into();
                v.kind = Kind::File;
                // It names files of every folder: the mount's owner and group only (review L6).
                v.mode = 0o440;
                let mut t = String::from("# path\tstate\tclass\ttier\tsize\trequested\texpected ready / available until\treason\n");
                for r in c.db.restores()? {
                    let path = if is_view_ino(r.ino) { self.view_path(r.ino).unwrap_or_default() } else { c.db.path_of(r.ino).unwrap_or_default() };
                    let when = match r.state {
                        crate::restore::RState::Ready => r.expiry_text.clone().unwrap_or_default(),
                        _ => crate::clock::fmt_ms(r.expected_ms),
                    };
                    t.push_str(&format!(
                        "{path}\t{}\t{}\t{}\t{}\t{}\t{when}\t{}\n",
                        r.state.as_str(),
                        r.class,
                        r.tier,
                        r.size,
                        crate::clock::fmt_ms(r.requested_ms),
                        r.reason.clone().unwrap_or_default()
                    ));
                }
                t.into_bytes()
            }
            x if x & STATUS_BIT != 0 => {
                let base_ino = x & !STATUS_BIT;
                let b = c.db.get(base_ino)?.ok_or(FsError::NotFound)?;
                let r = c.db.restore(base_ino)?.filter(|r| r.state.visible()).ok_or(FsError::NotFound)?;
                self.status_file(&mut v, &b, &r, &c.db.path_of(base_ino)?)
            }
            _ => return Err(FsError::NotFound),
        };
        v.size = content.len() as u64;
        Ok((v, content))
    }

    pub fn readlink(&self, ino: u64) -> Result<String> {
        let i = self.getattr(ino)?;
        i.target.ok_or(FsError::Invalid("not a symlink"))
    }

    /// chmod/chown/truncate/utimens. `None` leaves a field unchanged (UTIME_OMIT).
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime_ns: Option<Nanos>,
        mtime_ns: Option<Nanos>,
    ) -> Result<Inode> {
        Self::changeable(ino)?;
        if let Some(sz) = size {
            self.truncate(ino, sz)?;
        }
        let mut c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let now = now_ns();
        if let Some(m) = mode {
            i.mode = m & 0o7777;
        }
        if let Some(u) = uid {
            i.uid = u;
            // What writes through open handles add is charged to the new owner from now on.
            if let Some(o) = c.open.get_mut(&ino) {
                o.uid = u;
            }
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        if let Some(a) = atime_ns {
            i.atime_ns = a;
        }
        if let Some(m) = mtime_ns {
            i.mtime_ns = m;
            if let Some(o) = c.open.get_mut(&ino) {
                o.mtime_ns = m;
            }
        } else if let Some(o) = c.open.get(&ino) {
            if o.spool.is_some() {
                i.mtime_ns = o.mtime_ns;
            }
        }
        if size.is_none() {
            if let Some(o) = c.open.get(&ino) {
                if o.spool.is_some() {
                    i.size = o.size;
                }
            }
        }
        i.ctime_ns = now;
        if let Some(o) = c.open.get_mut(&ino) {
            o.ctime_ns = now;
        }
        if i.state == State::Dirty {
            // Metadata changes right after a write (robocopy sets times after closing) restart
            // the settle clock, so the file is sealed once, with its final attributes.
            i.dirty_ms = now_ms();
        }
        self.in_op(&mut c, |c| {
            c.db.update(&i)?;
            Self::record_attr_in_op(c, &i)
        })?;
        Ok(Self::apply_overlay(&c, i))
    }

    pub(super) fn truncate(&self, ino: u64, size: u64) -> Result<()> {
        self.check_size(size)?;
        let grows = {
            let c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            let now = c.open.get(&ino).map_or(i.size, |o| o.size);
            (i.uid, size.saturating_sub(now))
        };
        self.charge(grows.0, grows.1)?;
        // Content that is sealed or remote is materialized (or started empty) first, then cut.
        // The sealer may freeze the new spool before this takes the lock again: then look again.
        let mut tries = 0;
        loop {
            let i = {
                let mut c = self.core();
                let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
                if i.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                if i.kind != Kind::File {
                    return Err(FsError::Invalid("truncate of a non-file"));
                }
                // Handles opened without O_TRUNC (no spool yet) share it once there is one.
                self.attach_spool(&mut c, &i)?;
                if let Some(o) = c.open.get_mut(&ino) {
                    if let Some(sp) = &o.spool {
                        sp.set_len(size)?;
                        o.size = size;
                        o.cuts += 1;
                        o.mtime_ns = now_ns();
                        o.ctime_ns = o.mtime_ns;
                        o.touch();
                        let writers = o.writers;
                        drop(c);
                        // With a writer open, its close commits this; with only readers (or
                        // `truncate` by path while someone reads), nobody else would.
                        return if writers == 0 { self.persist(ino) } else { Ok(()) };
                    }
                }
                if i.state.has_spool() {
                    if size == 0 && i.size > 0 {
                        // Not open: a new empty spool; the old content stays until this is durable.
                        drop(self.swap_in_empty_spool(&mut c, ino)?);
                    } else {
                        self.staging.open_spool(ino)?.set_len(size)?;
                    }
                    let mut i = i;
                    i.size = size;
                    i.mtime_ns = now_ns();
                    i.content_gen += 1;
                    i.dirty_ms = now_ms();
                    c.db.update(&i)?;
                    return Ok(());
                }
                i
            };
            tries += 1;
            if tries > 5 {
                return Err(FsError::Invalid("the file kept changing while it was truncated"));
            }
            // A cut to 0 needs none of the old bytes (an overwrite through a handle opened
            // without O_TRUNC: Samba, robocopy, Finder); any other size keeps some of them,
            // which an archived object has to be restored for.
            if size != 0 && i.state == State::Uploaded {
                self.check_readable(&i, 0)?;
            }
            self.ensure_spool(ino, size == 0)?;
        }
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        Ok(self.staging.statvfs()?)
    }

    // ------------------------------------------------------------------ xattrs (Samba DOS attributes)

    /// The bytes a file's extended attributes take, as ext4 counts them against its limit:
    /// each name and value.
    fn xattr_bytes(m: &HashMap<String, String>) -> usize {
        m.iter().map(|(k, v)| k.len() + v.len() / 2).sum()
    }

    pub(super) fn xattr_map(i: &Inode) -> HashMap<String, String> {
        i.xattrs.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    pub fn getxattr(&self, ino: u64, name: &std::ffi::OsStr) -> Result<Vec<u8>> {
        let i = self.getattr(ino)?;
        let m = Self::xattr_map(&i);
        let v = m.get(name.to_str().ok_or(FsError::NoAttr)?).ok_or(FsError::NoAttr)?;
        hex::decode(v).map_err(|_| FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.getattr(ino)?;
        let mut out = Vec::new();
        let mut names: Vec<_> = Self::xattr_map(&i).into_keys().collect();
        names.sort();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &std::ffi::OsStr, value: &[u8], flags: i32) -> Result<()> {
        Self::changeable(ino)?;
        let name = name.to_str().ok_or(FsError::BadName)?;
        if !(name.starts_with("user.") || name.starts_with("security.") || name.starts_with("trusted.")) {
            return Err(FsError::NotSupported("only user.*, security.* and trusted.* attributes are stored"));
        }
        // As ext4 has them (review N4): a name of at most 255 bytes (ERANGE), and all of a
        // file's names and values at most 64 KiB (ENOSPC; E2BIG for one value over it, as the
        // kernel says). Samba's streams_xattr keeps alternate data streams (macOS resource
        // forks) in xattrs: a larger one is refused as on ext4.
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_SET_MAX {
            return Err(FsError::ArgTooBig);
        }
        // What the set grows by, as the file is now: checked and charged to the owner's staging
        // quota (the index and the journal hold it until uploaded) before the change is made.
        let growth = |i: &Inode| -> Result<(HashMap<String, String>, usize)> {
            let m = Self::xattr_map(i);
            let exists = m.contains_key(name);
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoAttr);
            }
            let before = Self::xattr_bytes(&m);
            let after = before - m.get(name).map_or(0, |v| name.len() + v.len() / 2) + name.len() + value.len();
            if after > XATTR_SET_MAX {
                return Err(FsError::XattrsFull);
            }
            Ok((m, after.saturating_sub(before)))
        };
        let first = self.getattr(ino)?;
        let (_, grows) = growth(&first)?;
        self.charge(first.uid, grows as u64)?;
        let mut c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let (mut m, _) = growth(&i)?;
        m.insert(name.to_string(), hex::encode(value));
        i.xattrs = Some(serde_json::to_string(&m).expect("json"));
        i.ctime_ns = now_ns();
        self.in_op(&mut c, |c| {
            c.db.update(&i)?;
            Self::record_attr_in_op(c, &i)
        })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &std::ffi::OsStr) -> Result<()> {
        Self::changeable(ino)?;
        let mut c = self.core();
        let mut i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let mut m = Self::xattr_map(&i);
        if m.remove(name.to_str().ok_or(FsError::NoAttr)?).is_none() {
            return Err(FsError::NoAttr);
        }
        i.xattrs = Some(serde_json::to_string(&m).expect("json"));
        self.in_op(&mut c, |c| {
            c.db.update(&i)?;
            Self::record_attr_in_op(c, &i)
        })?;
        Ok(())
    }
}
