//! The open-handle table: open (and O_TRUNC), write, flush/fsync/release and `persist`, which commits a close's size and state (a crash of the daemon keeps it; `fsync` and the group commit make it survive power loss); `materialize`, which brings a writer's old content in on first need.

use super::{now_ms, now_ns, Core, Fs, FsError, Handle, OpenFile, Result, Source, CTL_DIR};
use crate::crypto::SEGMENT;
use crate::meta::Db;
use crate::meta::Inode;
use crate::meta::Kind;
use crate::meta::State;
use crate::store::StoreError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

impl Fs {
    // ------------------------------------------------------------------ open / close

    pub(super) fn alloc_handle(c: &mut Core, ino: u64, write: bool) -> u64 {
        let fh = c.next_fh;
        c.next_fh += 1;
        c.handles.insert(fh, Handle { ino, write, virt: None, reader: None, pid: 0, exec: false, view: None });
        fh
    }

    /// Make sure the file's plaintext is in its spool (state dirty). `empty`: start from
    /// nothing (O_TRUNC) instead of fetching the old content.
    pub(super) fn ensure_spool(&self, ino: u64, empty: bool) -> Result<()> {
        // The content can move while it is copied (an upload completing releases the sealed
        // file; a truncate starts a new generation): look again rather than fail the open.
        for _ in 0..5 {
            match self.ensure_spool_once(ino, empty) {
                Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(false) => continue,
                Ok(true) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(FsError::Invalid("the file kept changing while it was opened"))
    }

    /// One attempt of `ensure_spool`: false when the file changed meanwhile.
    fn ensure_spool_once(&self, ino: u64, empty: bool) -> Result<bool> {
        let (i, src) = {
            let mut c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            if i.state.has_spool() {
                return Ok(true);
            }
            if empty || i.size == 0 {
                return self.become_dirty_empty(&mut c, i).map(|_| true);
            }
            let src = self.source_of(&c, &i)?;
            (i, src)
        };
        // The old content is about to be staged again: charged to the file's owner.
        self.charge(i.uid, i.size)?;
        // Decrypt the old content outside the lock into a fetch file, then adopt it.
        let tmp = self.staging.fetch_path(ino);
        let fetch = || -> Result<()> {
            use sha2::Digest;
            let out = File::create(&tmp)?;
            // From S3: one reader for the whole file, so that it reads ahead.
            let reader = match &src {
                Source::Remote(k) => Some(self.reads.remote_reader(&i, k)?),
                _ => None,
            };
            let mut digest = sha2::Sha256::new();
            let mut off = 0u64;
            while off < i.size {
                let n = (i.size - off).min(16 * SEGMENT);
                let data = match &reader {
                    Some(r) => self.reads.read_remote(&i, r, off, n)?,
                    None => self.reads.read_source(&i, &src, off, n)?.into(),
                };
                digest.update(&data);
                out.write_all_at(&data, off)?;
                off += data.len() as u64;
                if data.is_empty() {
                    break;
                }
            }
            // The old content goes into the new version: it must be the version's (review,
            // minor: a local copy that rotted on the staging disk was copied into every later
            // version). A read-cache copy that is not is dropped, and the content fetched from
            // the bucket; a frozen version not uploaded yet has no other copy: EIO, by name.
            let want = i.sha256.as_deref().filter(|s| !s.is_empty());
            if off == i.size && want.is_some_and(|w| w != hex::encode(digest.finalize())) {
                let path = self.core().db.path_of(i.ino).unwrap_or_default();
                return Err(match &src {
                    Source::Plain(p) | Source::Local(p) if i.state == State::Uploaded => {
                        tracing::error!(path = %path, copy = %p.display(), "the read cache's copy of this file does not match its version's SHA-256 (damaged on the staging disk); dropped, the content is fetched from the bucket");
                        let _ = std::fs::remove_file(p);
                        FsError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "damaged read-cache copy dropped"))
                    }
                    _ => {
                        tracing::error!(path = %path, "the staged content of this file does not match the SHA-256 recorded when it was sealed (damaged on the staging disk); refusing to copy it into a new version");
                        FsError::Io(std::io::Error::from_raw_os_error(libc::EIO))
                    }
                });
            }
            Ok(out.sync_all()?)
        };
        if let Err(e) = fetch() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut c = self.core();
        let mut cur = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        if cur.content_gen != i.content_gen || cur.state.has_spool() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(cur.state.has_spool());
        }
        let ups = c.db.uploads_for_ino(ino)?;
        self.staging.adopt_fetch(&tmp, ino)?;
        let tx = c.db.begin()?;
        let ups = Self::supersede_uploads(&tx, &ups)?;
        cur.state = State::Dirty;
        cur.content_gen += 1;
        cur.dirty_ms = now_ms();
        Db::save(&tx, &cur)?;
        Db::delete_restore(&tx, ino)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        for u in &ups {
            for p in self.staging.version_files(u.ino, u.content_gen) {
                Self::remove_when_durable(&mut c, p);
            }
        }
        Ok(true)
    }

    /// Start a new, empty version of a file that has no spool (O_TRUNC over a sealed or
    /// uploaded file): the empty spool first, then one commit that discards the queued
    /// uploads and makes the file dirty (a failure in between leaves the old version whole).
    pub(super) fn become_dirty_empty(&self, c: &mut Core, mut i: Inode) -> Result<()> {
        self.swap_in_empty_spool(c, i.ino)?;
        let old = i.clone();
        let ups = c.db.uploads_for_ino(i.ino)?;
        i.state = State::Dirty;
        i.size = 0;
        i.content_gen += 1;
        i.dirty_ms = now_ms();
        i.mtime_ns = now_ns();
        let tx = c.db.begin()?;
        let ups = Self::supersede_uploads(&tx, &ups)?;
        Db::save(&tx, &i)?;
        Db::delete_restore(&tx, i.ino)?;
        tx.commit().map_err(crate::meta::MetaError::from)?;
        self.forget_versions(c, Some(&old), &ups);
        Ok(())
    }

    /// A new empty spool for `ino`; the old one (if any) is moved aside and deleted once the
    /// change is durable, so a power cut that loses the truncation still finds the content.
    pub(super) fn swap_in_empty_spool(&self, c: &mut Core, ino: u64) -> Result<File> {
        self.move_spool_aside(c, ino);
        Ok(self.staging.create_spool(ino)?)
    }

    /// Open an existing file. Returns the handle number and whether the kernel must bypass its
    /// page cache (virtual files, whose content changes). `pid` is the opener (cost guard).
    pub fn open(&self, ino: u64, write: bool, trunc: bool, pid: u32) -> Result<(u64, bool)> {
        if ino >= CTL_DIR {
            if write {
                return Err(if super::at::is_view_ino(ino) { FsError::ReadOnly } else { FsError::NotPermitted("status files are read-only") });
            }
            if super::at::is_view_ino(ino) && ino & super::STATUS_BIT == 0 {
                return self.open_view(ino, pid);
            }
            let mut c = self.core();
            let (i, content) = self.virtual_inode(&c, ino)?;
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let fh = Self::alloc_handle(&mut c, ino, false);
            c.handles.get_mut(&fh).expect("just added").virt = Some(Arc::new(content));
            return Ok((fh, true));
        }
        {
            let c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            drop(c);
            // O_TRUNC needs nothing of the old content; nor does an open for writing of an
            // uploaded file: its first write or read does (`materialize`), so an overwrite that
            // truncates after opening (Samba, robocopy, Finder) fetches nothing and needs no
            // restore. Reading, or copying a sealed file's content in, does.
            let lazy = write && !trunc && i.state == State::Uploaded;
            if !(lazy || write && trunc) {
                self.check_readable(&i, pid)?;
            }
        }
        // A running program's file is not cut: ETXTBSY, as Linux answers. The kernel checks
        // that itself before a writer's OPEN, but for O_RDONLY|O_TRUNC only after it, and with
        // ATOMIC_O_TRUNC it has by then taken the file for truncated and dropped its pages,
        // which the program still maps: it dies (SIGBUS), and once it is gone the kernel's own
        // check lets the open through (pjdfstest open::etxtbsy, now and then on a busy machine).
        if trunc && self.core().open.get(&ino).is_some_and(|o| o.execs > 0) {
            return Err(FsError::TextBusy);
        }
        let fh = self.open_real(ino, write, trunc)?;
        // For the folder read-ahead, which follows each reading process: resolved now, while
        // the opening thread is alive (not for writers: it costs a read of /proc; a writer's
        // is the opener as FUSE named it, for the restore its first write may request).
        let pid = if write { pid } else { super::ahead::process_of(pid) };
        if let Some(h) = self.core().handles.get_mut(&fh) {
            h.pid = pid;
        }
        Ok((fh, false))
    }

    /// Open a file of a view (`at.rs`) for reading: its version's object, restored first if it
    /// is in an archive tier (EAGAIN, one request, a status file beside it).
    fn open_view(&self, ino: u64, pid: u32) -> Result<(u64, bool)> {
        let i = self.view_inode(ino)?;
        match i.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => {}
            _ => return Err(FsError::NotPermitted("not a regular file")),
        }
        if i.size > 0 {
            if self.keys.secret.is_none() {
                return Err(FsError::WriteOnly);
            }
            self.check_restore(&i, pid)?;
        }
        let mut c = self.core();
        let fh = Self::alloc_handle(&mut c, ino, false);
        if let Some(h) = c.handles.get_mut(&fh) {
            h.view = Some(Arc::new(i));
        }
        Ok((fh, false))
    }

    /// Whether the old content of `i` can be read now: a write-only mount refuses; an archived
    /// object answers EAGAIN and has a restore requested (`check_restore`). A file with a spool
    /// or an empty one needs nothing.
    pub(super) fn check_readable(&self, i: &Inode, pid: u32) -> Result<()> {
        if i.state.has_spool() || i.size == 0 {
            return Ok(());
        }
        if self.keys.secret.is_none() {
            return Err(self.write_only_refusal(i));
        }
        if i.state == State::Uploaded {
            self.check_restore(i, pid)?;
        }
        Ok(())
    }

    /// `open` by execve (the kernel's OPEN carries __FMODE_EXEC): a read handle that counts as
    /// a running program until it is released, so that an O_TRUNC open meanwhile gets ETXTBSY.
    pub fn open_exec(&self, ino: u64, pid: u32) -> Result<(u64, bool)> {
        let (fh, direct) = self.open(ino, false, false, pid)?;
        let mut c = self.core();
        if let Some(h) = c.handles.get_mut(&fh) {
            h.exec = true;
        }
        if let Some(o) = c.open.get_mut(&ino) {
            o.execs += 1;
        }
        Ok((fh, direct))
    }

    pub(super) fn write_only_refusal(&self, i: &Inode) -> FsError {
        let path = self.core().db.path_of(i.ino).unwrap_or_default();
        tracing::warn!(path = %path, "refusing to read: this mount is write-only (no private key); its content is only readable with the passphrase");
        FsError::WriteOnly
    }

    pub(super) fn open_real(&self, ino: u64, write: bool, trunc: bool) -> Result<u64> {
        let mut tries = 0;
        let (mut c, i) = loop {
            let c = self.core();
            let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
            // A writer gets its spool before it is counted below, under this lock (counted, it
            // keeps the sealer away); but an uploaded file opened without O_TRUNC gets it from
            // the first write or read that needs the old content (`materialize`).
            if !write || i.state.has_spool() || (!trunc && i.state == State::Uploaded) {
                break (c, i);
            }
            drop(c);
            // The sealer may freeze the spool between `ensure_spool` and this lock (the writer
            // is not counted yet), or an upload release the sealed file: look again.
            tries += 1;
            if tries > 5 {
                return Err(FsError::Invalid("the file kept changing while it was opened"));
            }
            self.ensure_spool(ino, trunc)?;
        };
        // The size as open handles have it: writes not yet closed count (the index has the
        // size of the last close; an O_TRUNC while another process writes must still cut).
        let size_now = c.open.get(&ino).filter(|o| o.spool.is_some()).map_or(i.size, |o| o.size);
        if write && trunc && size_now != 0 {
            // A new empty spool; the old content stays (moved aside) until this is durable, so
            // a power cut before then finds it whole (review N5: with the file open elsewhere,
            // a `tail -f` or Samba, the shared spool was cut in place and a power cut kept the
            // partial new content). Handles open elsewhere read and write the new spool from
            // their next call on (they look it up each time).
            let fresh = self.swap_in_empty_spool(&mut c, ino)?;
            if let Some(o) = c.open.get_mut(&ino).filter(|o| o.spool.is_some()) {
                o.spool = Some(Arc::new(fresh));
            }
            if let Some(o) = c.open.get_mut(&ino) {
                o.size = 0;
                o.cuts += 1;
                o.touch();
            } else {
                let mut i = i.clone();
                i.size = 0;
                i.content_gen += 1;
                i.dirty_ms = now_ms();
                i.mtime_ns = now_ns();
                c.db.update(&i)?;
            }
        }
        let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
        let spool = if i.state.has_spool() {
            match c.open.get(&ino).and_then(|o| o.spool.clone()) {
                Some(s) => Some(s),
                None => Some(Arc::new(self.staging.open_spool(ino)?)),
            }
        } else {
            None
        };
        let o = c.open.entry(ino).or_insert(OpenFile {
            handles: 0,
            writers: 0,
            execs: 0,
            uid: i.uid,
            spool: None,
            size: i.size,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
            changes: 0,
            committed: 0,
            cuts: 0,
        });
        if o.spool.is_none() {
            if let Some(s) = spool {
                o.spool = Some(s);
                o.size = i.size;
                o.mtime_ns = i.mtime_ns;
                o.ctime_ns = i.ctime_ns;
            }
        }
        o.handles += 1;
        if write {
            o.writers += 1;
        }
        Ok(Self::alloc_handle(&mut c, ino, write))
    }

    /// Give the open file of write handle `fh` its spool, with the old content: an uploaded
    /// file opened for writing without O_TRUNC fetches nothing at open, and its first write or
    /// read comes here (a truncate to 0 before that starts an empty spool instead, `truncate`).
    /// The copy is made outside the lock (`ensure_spool`); the counted writer keeps the sealer
    /// from freezing it before it is attached. An archived object answers EAGAIN and has one
    /// restore requested, as an open for reading would.
    pub(super) fn materialize(&self, fh: u64) -> Result<()> {
        for _ in 0..5 {
            let (i, pid) = {
                let mut c = self.core();
                let (ino, pid) = c.handles.get(&fh).map(|h| (h.ino, h.pid)).ok_or(FsError::BadHandle)?;
                let i = c.db.get(ino)?.ok_or(FsError::NotFound)?;
                if self.attach_spool(&mut c, &i)? {
                    return Ok(());
                }
                (i, pid)
            };
            self.check_readable(&i, pid)?;
            match self.ensure_spool(i.ino, false) {
                // The index thought the object readable: a lifecycle rule moved it.
                Err(FsError::Store(StoreError::Archived)) => {
                    self.discover_archived(i.ino);
                    return Err(FsError::Archived);
                }
                r => r?,
            }
        }
        Err(FsError::Invalid("the file kept changing while it was opened"))
    }

    /// Once file `i` has a spool (state dirty), its open handles share it: attach it to the
    /// open file if it has none yet (writers that opened it uploaded without O_TRUNC, readers
    /// of the old version), with the size and times it has. False if the file has no spool.
    pub(super) fn attach_spool(&self, c: &mut Core, i: &Inode) -> Result<bool> {
        let Some(o) = c.open.get_mut(&i.ino) else { return Ok(i.state.has_spool()) };
        if o.spool.is_some() {
            return Ok(true);
        }
        if !i.state.has_spool() {
            return Ok(false);
        }
        o.spool = Some(Arc::new(self.staging.open_spool(i.ino)?));
        o.size = i.size;
        o.mtime_ns = i.mtime_ns;
        o.ctime_ns = i.ctime_ns;
        Ok(true)
    }

    /// Whether a write through `fh` lands in a spool already (no old content to fetch first):
    /// FUSE answers those on the dispatch thread.
    pub fn writes_locally(&self, fh: u64) -> bool {
        let c = self.core();
        c.handles.get(&fh).is_some_and(|h| c.open.get(&h.ino).is_some_and(|o| o.spool.is_some()))
    }

    /// Make what was written through this file durable (spool fsync + index commit).
    pub(super) fn persist(&self, ino: u64) -> Result<()> {
        let (spool, target) = {
            let c = self.core();
            match c.open.get(&ino) {
                Some(o) if o.pending() => (o.spool.clone(), o.changes),
                _ => return Ok(()),
            }
        };
        #[cfg(test)]
        if let Some(hook) = self.persist_hook.lock().unwrap().take() {
            hook();
        }
        // The bytes are in the kernel (they survive a crash of the daemon); `fsync` and the
        // group commit make them survive power loss. Here only the index is brought up to date.
        drop(spool);
        let mut c = self.core();
        let (size, mtime, ctime) = match c.open.get(&ino) {
            // Another close made at least these changes durable meanwhile.
            Some(o) if o.committed < target => (o.size, o.mtime_ns, o.ctime_ns),
            _ => return Ok(()),
        };
        if let Some(mut i) = c.db.get(ino)? {
            i.size = size;
            i.mtime_ns = mtime;
            i.ctime_ns = ctime;
            i.state = State::Dirty;
            i.content_gen += 1;
            i.dirty_ms = now_ms();
            c.db.update(&i)?;
        }
        // Only now, after the commit, do the changes up to `target` survive a crash.
        if let Some(o) = c.open.get_mut(&ino) {
            o.committed = o.committed.max(target);
        }
        Ok(())
    }

    pub(super) fn handle_ino(&self, fh: u64) -> Result<(u64, bool)> {
        let c = self.core();
        c.handles.get(&fh).map(|h| (h.ino, h.write)).ok_or(FsError::BadHandle)
    }

    /// close(): durable before it returns.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let (ino, write) = self.handle_ino(fh)?;
        if write {
            self.persist(ino)?;
        }
        Ok(())
    }

    /// fsync(): everything written before it, to this file and any other, survives power loss.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let (ino, _) = self.handle_ino(fh)?;
        self.persist(ino)?;
        self.sync_durable()
    }

    /// A file may grow to `size` bytes (EFBIG beyond `max_file_size`: such a file could never
    /// be uploaded, and a sparse one would be encrypted in full).
    pub(super) fn check_size(&self, size: u64) -> Result<()> {
        if size > self.cfg.max_file_size {
            tracing::warn!(size, limit = self.cfg.max_file_size, "refused a file larger than the mount accepts (EFBIG)");
            return Err(FsError::TooBig(self.cfg.max_file_size));
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let (ino, write) = self.handle_ino(fh)?;
        let r = if write { self.persist(ino) } else { Ok(()) };
        let mut c = self.core();
        let exec = c.handles.remove(&fh).is_some_and(|h| h.exec);
        let last = if let Some(o) = c.open.get_mut(&ino) {
            o.handles = o.handles.saturating_sub(1);
            if write {
                o.writers = o.writers.saturating_sub(1);
            }
            if exec {
                o.execs = o.execs.saturating_sub(1);
            }
            o.handles == 0
        } else {
            false
        };
        if last {
            c.open.remove(&ino);
            if let Some(i) = c.db.get(ino)? {
                if i.parent == 0 {
                    Db::delete_inode(c.db.conn(), ino)?;
                    self.drop_content(&mut c, ino)?;
                    // Its upload rows went when it was unlinked (`remove_inode`), so
                    // `drop_content` found none: its frozen version and read-cache copy go here
                    // (review L5: they stayed until the next start).
                    let staged = if i.state.in_outbox() || i.state == State::Failed { vec![(ino, i.content_gen)] } else { vec![] };
                    for (ino, gen) in staged {
                        for p in self.staging.version_files(ino, gen) {
                            Self::remove_when_durable(&mut c, p);
                        }
                    }
                    self.forget_versions(&mut c, Some(&i), &[]);
                }
            }
        }
        r
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let (ino, write) = self.handle_ino(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        let end = offset.saturating_add(data.len() as u64);
        self.check_size(end)?;
        let found = {
            let c = self.core();
            let o = c.open.get(&ino).ok_or(FsError::BadHandle)?;
            (o.spool.clone(), o.uid, o.size, o.cuts)
        };
        let (spool, uid, size, cuts) = match found {
            (Some(spool), uid, size, cuts) => (spool, uid, size, cuts),
            // Opened without O_TRUNC and not written yet: the old content comes in first.
            (None, ..) => {
                self.materialize(fh)?;
                let c = self.core();
                let o = c.open.get(&ino).ok_or(FsError::BadHandle)?;
                (o.spool.clone().ok_or(FsError::BadHandle)?, o.uid, o.size, o.cuts)
            }
        };
        self.charge(uid, end.saturating_sub(size))?;
        if let Err(e) = spool.write_all_at(data, offset) {
            // Deleted files give their space back at the next sync (like a journalling
            // filesystem, which commits and retries before it answers ENOSPC).
            if e.raw_os_error() != Some(libc::ENOSPC) {
                return Err(e.into());
            }
            self.sync_durable()?;
            spool.write_all_at(data, offset)?;
        }
        #[cfg(test)]
        if let Some(hook) = self.write_hook.lock().unwrap().take() {
            hook();
        }
        let mut c = self.core();
        c.written = true;
        if let Some(o) = c.open.get_mut(&ino) {
            if o.cuts != cuts {
                // A truncate (or an O_TRUNC elsewhere) came between: it may have cut these
                // bytes or swapped the spool. Written again under the lock, the write is
                // simply after it, as a local file system orders the two.
                if let Some(sp) = &o.spool {
                    sp.write_all_at(data, offset)?;
                }
            }
            o.size = o.size.max(offset + data.len() as u64);
            o.mtime_ns = now_ns();
            o.ctime_ns = o.mtime_ns;
            o.touch();
        }
        Ok(data.len())
    }
}
