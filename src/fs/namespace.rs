//! Namespace operations: create, mkdir, symlink, mknod, unlink, rmdir, rename — each one SQLite transaction with its journal record (`in_op`); staged files are deleted only after the commit.

use super::{check_name, now_ms, now_ns, AfterCommit, Core, Fs, FsError, OpenFile, Result, MAX_PATH};
use crate::crypto::HEADER_LEN;
use crate::meta::Db;
use crate::meta::Inode;
use crate::meta::Kind;
use crate::meta::State;
use crate::meta::Upload;
use crate::meta::ROOT;
use crate::store::ObjectStore;
use crate::vault::header;
use std::sync::Arc;

impl Fs {
    // ------------------------------------------------------------------ namespace

    /// Nothing under `.coldvault` can be changed: the views of the past (`at.rs`) answer
    /// EROFS, the control folder and status files EPERM.
    pub(super) fn changeable(ino: u64) -> Result<()> {
        match ino {
            i if super::at::is_view_ino(i) || i == super::at::CTL_AT => Err(FsError::ReadOnly),
            i if i >= super::CTL_DIR => Err(FsError::NotPermitted("the .coldvault folder is read-only")),
            _ => Ok(()),
        }
    }

    pub(super) fn new_inode(parent: u64, name: &str, kind: Kind, mode: u32, uid: u32, gid: u32) -> Inode {
        let now = now_ns();
        Inode {
            ino: 0,
            parent,
            name: name.to_string(),
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            target: None,
            state: if kind == Kind::File { State::Dirty } else { State::None },
            content_gen: 0,
            dirty_ms: now_ms(),
            object_key: None,
            storage_class: None,
            header: None,
            sha256: None,
            xattrs: None,
            owner: None,
        }
    }

    pub(super) fn check_new_entry(c: &Core, parent: u64, name: &std::ffi::OsStr) -> Result<String> {
        let name = check_name(name)?;
        let p = c.db.get(parent)?.ok_or(FsError::NotFound)?;
        if p.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let ppath = c.db.path_of(parent)?;
        if ppath.len() + 1 + name.len() > MAX_PATH {
            return Err(FsError::NameTooLong);
        }
        if c.db.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        Ok(name.to_string())
    }

    pub(super) fn touch_dir(c: &Core, dir: u64) -> Result<()> {
        if let Some(mut d) = c.db.get(dir)? {
            let now = now_ns();
            d.mtime_ns = now;
            d.ctime_ns = now;
            c.db.update(&d)?;
        }
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, uid: u32, gid: u32) -> Result<Inode> {
        Self::changeable(parent)?;
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let i = c.db.insert(&Self::new_inode(parent, &name, Kind::Dir, mode, uid, gid))?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            Self::record_in_op(c, crate::remote_meta::Entry::Mkdir { path, mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns })?;
            Ok(i)
        })
    }

    pub fn symlink(&self, parent: u64, name: &std::ffi::OsStr, target: &std::path::Path, uid: u32, gid: u32) -> Result<Inode> {
        Self::changeable(parent)?;
        let target = target.to_str().ok_or(FsError::BadName)?.to_string();
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let mut n = Self::new_inode(parent, &name, Kind::Symlink, 0o777, uid, gid);
            n.size = target.len() as u64;
            n.target = Some(target.clone());
            let i = c.db.insert(&n)?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            Self::record_in_op(c, crate::remote_meta::Entry::Symlink { path, target: target.clone(), uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns })?;
            Ok(i)
        })
    }

    /// mknod: regular files are created empty; FIFOs, sockets and device nodes live in the
    /// index only (nothing to upload) and are journaled so a rebuild recreates them.
    pub fn mknod(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, rdev: u32, uid: u32, gid: u32) -> Result<Inode> {
        Self::changeable(parent)?;
        if matches!(mode & libc::S_IFMT, libc::S_IFREG | 0) {
            let (i, fh) = self.create(parent, name, mode, uid, gid)?;
            self.release(fh)?;
            return Ok(i);
        }
        let special = crate::vault::Special::from_mode(mode, rdev).ok_or(FsError::Invalid("mknod of this file type"))?.to_string();
        let mut c = self.core();
        self.in_op(&mut c, |c| {
            let name = Self::check_new_entry(c, parent, name)?;
            let mut n = Self::new_inode(parent, &name, Kind::Special, mode, uid, gid);
            n.target = Some(special.clone());
            let i = c.db.insert(&n)?;
            Self::touch_dir(c, parent)?;
            let path = c.db.path_of(i.ino)?;
            let entry =
                crate::remote_meta::Entry::Special { path, special: special.clone(), mode: i.mode, uid: i.uid, gid: i.gid, mtime_ns: i.mtime_ns };
            Self::record_in_op(c, entry)?;
            Ok(i)
        })
    }

    pub fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        Self::changeable(parent)?;
        let mut c = self.core();
        self.in_op(&mut c, |c| Self::rmdir_in(c, parent, name))
    }

    pub(super) fn rmdir_in(c: &mut Core, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let d = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if c.db.has_children(d.ino)? {
            return Err(FsError::NotEmpty);
        }
        let path = c.db.path_of(d.ino)?;
        Db::delete_inode(c.db.conn(), d.ino)?;
        Self::record_in_op(c, crate::remote_meta::Entry::Remove { path, saw: Some(String::new()) })?;
        Self::touch_dir(c, parent)?;
        Ok(())
    }

    /// Run one namespace operation as one SQLite transaction (a savepoint, so operations
    /// nest): its index changes and its journal record commit together or not at all, and the
    /// staged files it made unreferenced are deleted only after the commit.
    pub(super) fn in_op<T>(&self, c: &mut Core, mut f: impl FnMut(&mut Core) -> Result<T>) -> Result<T> {
        match self.in_op_once(c, &mut f) {
            // The disk is full and the index cannot grow: give up the reserve and try once more
            // (deleting must work on a full disk: it is how space comes back).
            Err(e) if e.errno() == libc::ENOSPC && c.op_depth == 0 && self.staging.release_reserve() => {
                tracing::warn!("staging disk full: released the reserve so that this change can be recorded");
                self.in_op_once(c, &mut f)
            }
            r => r,
        }
    }

    pub(super) fn in_op_once<T>(&self, c: &mut Core, f: &mut impl FnMut(&mut Core) -> Result<T>) -> Result<T> {
        c.db.op_begin()?;
        c.op_depth += 1;
        let r = f(c).and_then(|v| Ok(c.db.op_commit().map(|_| v)?));
        c.op_depth -= 1;
        if r.is_err() {
            let _ = c.db.op_rollback();
        }
        if c.op_depth == 0 {
            let doomed = std::mem::take(&mut c.after_commit);
            if r.is_ok() {
                for a in doomed {
                    match a {
                        AfterCommit::RemoveWhenDurable(p) => c.after_durable.push(p),
                        AfterCommit::DropSpool(ino) => self.move_spool_aside(c, ino),
                    }
                }
            }
        }
        r
    }

    /// Move the spool of `ino` aside now, or after the enclosing operation commits, and delete
    /// it once that commit is durable (its path is reused by the next content of the inode;
    /// a power cut that takes the change back finds it again: `Fs::refind_spool`).
    pub(super) fn drop_spool(&self, c: &mut Core, ino: u64) {
        if c.op_depth > 0 {
            c.after_commit.push(AfterCommit::DropSpool(ino));
        } else {
            self.move_spool_aside(c, ino);
        }
    }

    /// Move the spool of `ino` aside now (if there is one); it is deleted by the next sync.
    pub(super) fn move_spool_aside(&self, c: &mut Core, ino: u64) {
        if let Some(p) = self.staging.drop_spool(ino) {
            c.after_durable.push(p);
        }
    }

    /// Remove a file's local content and queued uploads (the inode row is the caller's).
    pub(super) fn drop_content(&self, c: &mut Core, ino: u64) -> Result<()> {
        let old = c.db.get(ino)?;
        let ups = c.db.uploads_for_ino(ino)?;
        let tx = c.db.begin()?;
        Self::discard_uploads(&tx, &ups)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        self.forget_versions(c, old.as_ref(), &ups);
        self.drop_spool(c, ino);
        Db::delete_restore(c.db.conn(), ino)?;
        Ok(())
    }

    /// After a commit that discarded `ups` and the version `old` had: their staged files and
    /// read-cache copies go once that commit is durable (plaintext: never kept longer), and
    /// their multipart uploads are aborted.
    pub(super) fn forget_versions(&self, c: &mut Core, old: Option<&Inode>, ups: &[Upload]) {
        if let Some(h) = old.and_then(|i| i.header.as_ref()) {
            if h.len() == HEADER_LEN {
                Self::remove_when_durable(c, self.staging.rcache_plain_path(header::commitment(h)));
                Self::remove_when_durable(c, self.staging.rcache_path(header::commitment(h)));
            }
        }
        for u in ups {
            for p in self.staging.version_files(u.ino, u.content_gen) {
                Self::remove_when_durable(c, p);
            }
            // Write-only credentials lack s3:AbortMultipartUpload: leave it to the bucket's
            // AbortIncompleteMultipartUpload lifecycle rule.
            if let Some(mp) = u.mp_upload_id.as_ref().filter(|_| self.keys.secret.is_some()) {
                // Best effort: the uploader also aborts uploads whose row vanished.
                let store = self.store.clone();
                let (k, mp) = (u.object_key.clone(), mp.clone());
                self.rt.spawn(async move {
                    let _ = store.abort_multipart(&k, &mp).await;
                });
            }
        }
    }

    /// Remove an inode from the namespace. A file that is still open becomes an orphan
    /// (parent 0): its handles keep reading, writing and stat-ing it until the last close,
    /// as POSIX requires; it is never sealed; the last release deletes it.
    pub(super) fn remove_inode(&self, c: &mut Core, i: Inode) -> Result<()> {
        if c.open.contains_key(&i.ino) {
            let mut o = i;
            o.parent = 0;
            o.name = format!("#orphan-{}", o.ino);
            o.ctime_ns = now_ns();
            c.db.update(&o)?;
            let ups = c.db.uploads_for_ino(o.ino)?;
            let tx = c.db.begin()?;
            Self::discard_uploads(&tx, &ups)?;
            tx.commit().map_err(crate::meta::MetaError::from)?;
            // Its staged version stays for the open handles (removed at the last close); a
            // multipart upload of it is aborted now (review L5).
            for u in &ups {
                if let Some(mp) = u.mp_upload_id.as_ref().filter(|_| self.keys.secret.is_some()) {
                    let store = self.store.clone();
                    let (k, mp) = (u.object_key.clone(), mp.clone());
                    self.rt.spawn(async move {
                        let _ = store.abort_multipart(&k, &mp).await;
                    });
                }
            }
            return Ok(());
        }
        Db::delete_inode(c.db.conn(), i.ino)?;
        if i.kind == Kind::File {
            self.drop_content(c, i.ino)?;
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        Self::changeable(parent)?;
        let mut c = self.core();
        self.in_op(&mut c, |c| self.unlink_in(c, parent, name))
    }

    pub(super) fn unlink_in(&self, c: &mut Core, parent: u64, name: &std::ffi::OsStr) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let i = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let path = c.db.path_of(i.ino)?;
        let saw = Db::seen_key(c.db.conn(), &i)?;
        if let Some(k) = &i.object_key {
            Db::add_dead_key(c.db.conn(), k)?;
        }
        // Versions it took over from a file it was saved over go with it too.
        Db::kill_versions_of(c.db.conn(), i.ino, None)?;
        Self::record_in_op(c, crate::remote_meta::Entry::Remove { path, saw: Some(saw) })?;
        self.remove_inode(c, i)?;
        Self::touch_dir(c, parent)?;
        Ok(())
    }

    pub fn rename(&self, parent: u64, name: &std::ffi::OsStr, newparent: u64, newname: &std::ffi::OsStr, noreplace: bool) -> Result<()> {
        Self::changeable(parent)?;
        Self::changeable(newparent)?;
        let mut c = self.core();
        self.in_op(&mut c, |c| self.rename_in(c, parent, name, newparent, newname, noreplace))
    }

    pub(super) fn rename_in(
        &self,
        c: &mut Core,
        parent: u64,
        name: &std::ffi::OsStr,
        newparent: u64,
        newname: &std::ffi::OsStr,
        noreplace: bool,
    ) -> Result<()> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let newname = check_name(newname)?.to_string();
        let mut src = c.db.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let np = c.db.get(newparent)?.ok_or(FsError::NotFound)?;
        if np.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let parent_path = c.db.path_of(newparent)?;
        if parent_path.len() + 1 + newname.len() > MAX_PATH {
            return Err(FsError::NameTooLong);
        }
        let new_len = if parent_path.is_empty() { newname.len() } else { parent_path.len() + 1 + newname.len() };
        // A folder's files move with it: none may end up with a path too long to upload or
        // to describe in a snapshot (review N16: they were parked, then rebuilt at their old
        // paths).
        if src.kind == Kind::Dir && new_len + 1 + c.db.deepest_below(src.ino)? > MAX_PATH && c.db.has_children(src.ino)? {
            return Err(FsError::NameTooLong);
        }
        if src.kind == Kind::Dir {
            // Refuse moving a directory into its own subtree.
            let mut cur = newparent;
            while cur != ROOT {
                if cur == src.ino {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                cur = c.db.get(cur)?.ok_or(FsError::NotFound)?.parent;
            }
        }
        let mut saw = String::new();
        // When the file is placed at its new name: now, if it is in the bucket (a rebuild
        // replays the rename); a file not uploaded yet saved over another keeps that one's
        // time until its own upload (the rebuild sees no rename, only the old version there).
        let mut placed = now_ms();
        // Whose the file is at its new name: this machine's (it moved it there), but a file not
        // uploaded yet saved over another stands for that one's version until its own upload,
        // and is that one's maker's meanwhile (snapshots say so, as a rebuild that sees no
        // rename has it).
        let mut owner = None;
        if let Some(dst) = c.db.lookup(newparent, &newname)? {
            if dst.ino == src.ino {
                return Ok(());
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if c.db.has_children(dst.ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            saw = Db::seen_key(c.db.conn(), &dst)?;
            if src.object_key.is_none() {
                owner = dst.owner.clone();
                if let Some(ms) = Db::placed_ms(c.db.conn(), dst.ino)? {
                    placed = ms;
                }
            }
            self.replace_versions(c, &src, &dst)?;
            self.remove_inode(c, dst)?;
        }
        let from = c.db.path_of(src.ino)?;
        src.parent = newparent;
        src.name = newname;
        src.owner = owner;
        Db::set_placed(c.db.conn(), src.ino, placed)?;
        src.ctime_ns = now_ns();
        if src.state == State::Local && !self.ignored(&src.name) {
            src.state = State::Dirty; // e.g. an editor's temp file saved over the real name
        }
        if src.state == State::Dirty {
            src.dirty_ms = now_ms();
        }
        c.db.update(&src)?;
        let to = c.db.path_of(src.ino)?;
        Self::record_in_op(c, crate::remote_meta::Entry::Rename { from, to, saw: Some(saw) })?;
        Self::touch_dir(c, parent)?;
        if newparent != parent {
            Self::touch_dir(c, newparent)?;
        }
        Ok(())
    }

    /// `src` is renamed over `dst`. A file saved over another (an atomic save: rsync, editors,
    /// Lightroom sidecars) that has no version in the bucket yet takes over the replaced file's
    /// versions: until its own upload completes, the replaced version is still the newest one
    /// in the bucket at that path, so snapshots describe the path by it and it is not dead
    /// (else losing the machine before the upload would lose the file from every rebuild).
    /// Its upload's completion retires them (`complete_uploads`). Otherwise `dst`'s versions
    /// are dead now: the bucket holds a newer file at the path.
    fn replace_versions(&self, c: &mut Core, src: &Inode, dst: &Inode) -> Result<()> {
        let conn = c.db.conn();
        if dst.kind == Kind::File && src.kind == Kind::File && src.object_key.is_none() && c.db.latest_version(src.ino)?.is_none() {
            if let (Some(k), Some(h), None) = (&dst.object_key, &dst.header, c.db.latest_version(dst.ino)?) {
                // An uploaded file recorded before versions were kept: its version first.
                let class = dst.storage_class.clone().unwrap_or_default();
                let v = crate::meta::Version::of(dst, k, &class, dst.sha256.as_deref().unwrap_or_default(), h);
                Db::add_version(conn, &v, 0)?;
            }
            Db::move_versions(conn, dst.ino, src.ino)?;
            return Ok(());
        }
        if let Some(k) = &dst.object_key {
            Db::add_dead_key(conn, k)?;
        }
        Db::kill_versions_of(conn, dst.ino, None)?;
        Ok(())
    }

    pub fn create(&self, parent: u64, name: &std::ffi::OsStr, mode: u32, uid: u32, gid: u32) -> Result<(Inode, u64)> {
        Self::changeable(parent)?;
        let mut c = self.core();
        let name = Self::check_new_entry(&c, parent, name)?;
        // The inode, the parent's times and the spool come into being together: a spool that
        // cannot be made (full disk) leaves no entry behind, and a spool whose inode never
        // committed is an orphan that start-up removes.
        let (mut i, spool) = self.in_op(&mut c, |c| {
            let i = c.db.insert(&Self::new_inode(parent, &name, Kind::File, mode, uid, gid))?;
            Self::touch_dir(c, parent)?;
            let spool = self.staging.create_spool(i.ino)?;
            Ok((i, spool))
        })?;
        i.state = State::Dirty;
        c.open.insert(
            i.ino,
            OpenFile {
                handles: 1,
                writers: 1,
                execs: 0,
                uid: i.uid,
                spool: Some(Arc::new(spool)),
                size: 0,
                mtime_ns: i.mtime_ns,
                ctime_ns: i.ctime_ns,
                changes: 1,
                committed: 0,
                cuts: 0,
            },
        );
        let fh = Self::alloc_handle(&mut c, i.ino, true);
        Ok((i, fh))
    }
}
