//! The read path: plaintext spool, local sealed copy, or the object in S3 through the handle's
//! `sealed::Reader` (read-ahead while the reader goes forward, chunks fetched and decrypted off
//! the FUSE threads, one memory budget for the mount); every segment authenticated.
//!
//! Two halves, cut along the core lock. `impl Fs` here is the POSIX face: it looks up the
//! handle and the inode under `core`, chooses where the content is (`source_of`) and keeps
//! each handle's reader in the handle table. `Reads` reads content once it is told which
//! inode and where: it owns the read budget, the folder read-ahead's state (`ahead.rs`) and
//! what decrypting needs (the store, the vault's keys, the runtime), and never takes `core`,
//! so it can be built and tested without an `Fs`.

use super::{ahead, Core, Fs, FsError, Result, Source};
use crate::crypto;
use crate::crypto::Header;
use crate::crypto::Opened;
use crate::crypto::VaultKeys;
use crate::crypto::HEADER_LEN;
use crate::crypto::SEGMENT;
use crate::meta::Inode;
use crate::meta::State;
use crate::sealed::{Object, ReadError, Reader};
use crate::store::ObjectStore;
use crate::store::StoreError;
use crate::vault::header;
use crate::vault::StorageClass;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

impl Fs {
    // ------------------------------------------------------------------ reading

    pub(super) fn source_of(&self, c: &Core, i: &Inode) -> Result<Source> {
        if i.state.in_outbox() {
            let ups = c.db.uploads_for_ino(i.ino)?;
            return match ups.iter().find(|u| u.content_gen == i.content_gen) {
                Some(u) => Ok(if u.dk.is_some() { Source::Plain(self.staged_version(u)) } else { Source::Local(self.staged_version(u)) }),
                // Deleted while open: its upload was cancelled, its frozen plaintext stays for
                // the open handles until the last close (else they read ENOENT).
                None if i.parent == 0 && self.staging.frozen_path(i.ino, i.content_gen).exists() => {
                    Ok(Source::Plain(self.staging.frozen_path(i.ino, i.content_gen)))
                }
                None => Err(FsError::NotFound),
            };
        }
        if i.state == State::Uploaded {
            let h = i.header.as_deref().ok_or(FsError::Invalid("no header"))?;
            let cached = self.staging.rcache_plain_path(header::commitment(h));
            if cached.exists() {
                return Ok(Source::Plain(cached));
            }
            let cached = self.staging.rcache_path(header::commitment(h));
            if cached.exists() {
                return Ok(Source::Local(cached));
            }
            // An archived object's GET fails (`read` turns that into EAGAIN and a restore).
            let key = i.object_key.clone().ok_or(FsError::Invalid("no object key"))?;
            return Ok(Source::Remote(key));
        }
        Err(FsError::Invalid("file has no readable content"))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let virt = self.core().handles.get(&fh).and_then(|h| h.virt.clone());
        if let Some(v) = virt {
            return Ok(virt_slice(&v, offset, size));
        }
        let (ino, _) = self.handle_ino(fh)?;
        if super::at::is_view_ino(ino) {
            return self.read_view(fh, ino, offset, size);
        }
        match self.read_inner(fh, offset, size) {
            Err(FsError::Store(StoreError::Archived)) => {
                // The index thought the object readable: a lifecycle rule moved it. Learn its
                // class and request a restore as an open would have.
                let (ino, _) = self.handle_ino(fh)?;
                self.discover_archived(ino);
                Err(FsError::Archived)
            }
            r => r,
        }
    }

    /// `read`, if it can be answered without waiting: the handle reads an object in S3 whose
    /// data has arrived (read-ahead), or a virtual file. `None`: call `read` on a thread that
    /// may wait (it finds the chunks this call requested).
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Bytes>> {
        let (i, reader) = {
            let c = self.core();
            let h = c.handles.get(&fh)?;
            if let Some(v) = &h.virt {
                return Some(Ok(virt_slice(v, offset, size)));
            }
            let reader = h.reader.clone()?;
            if c.open.get(&h.ino).is_some_and(|o| o.spool.is_some()) {
                return None;
            }
            let i = Self::get_inode(&c, h.ino).ok()?;
            if i.state != State::Uploaded {
                return None;
            }
            (i, reader)
        };
        {
            // Still the object this handle's reader reads (the file was not uploaded again).
            let r = reader.lock().unwrap_or_else(|p| p.into_inner());
            if i.object_key.as_deref() != Some(r.object().key()) || i.header.as_deref().is_some_and(|h| h != r.object().header()) {
                return None;
            }
        }
        if offset >= i.size || size == 0 {
            return Some(Ok(Bytes::new()));
        }
        let len = (size as u64).min(i.size - offset);
        match crate::sealed::read_ready(&reader, offset, len)? {
            Ok(b) => Some(Ok(b)),
            // Failures (an archived object: EAGAIN and a restore) are `read`'s to handle.
            Err(_) => None,
        }
    }

    pub(super) fn read_inner(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        // Sealing or an upload completing may move the content (spool -> outbox -> S3) between
        // choosing the source and opening it: look again rather than fail the read.
        let mut tries = 0;
        loop {
            match self.read_once(fh, offset, size) {
                Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    pub(super) fn read_once(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let (ino, _) = self.handle_ino(fh)?;
        let (i, spool, src) = {
            let c = self.core();
            let i = Self::get_inode(&c, ino)?;
            let spool = c.open.get(&ino).and_then(|o| o.spool.clone());
            // A writer that has written nothing yet (an uploaded file opened without O_TRUNC)
            // reads the old content where a reader would: reading copies nothing in, and makes
            // no new version (review: reading through O_RDWR re-uploaded the same bytes).
            let src = if spool.is_none() && !i.state.has_spool() { Some(self.source_of(&c, &i)?) } else { None };
            (i, spool, src)
        };
        if offset >= i.size || size == 0 {
            return Ok(Bytes::new());
        }
        let len = (size as u64).min(i.size - offset);
        if let Some(sp) = spool {
            return read_plain(&sp, offset, len).map(Bytes::from);
        }
        match src {
            None => read_plain(&self.staging.open_spool(ino)?, offset, len).map(Bytes::from),
            Some(Source::Remote(key)) => {
                let reader = self.handle_reader(fh, &i, &key, offset)?;
                self.reads.read_remote(&i, &reader, offset, len)
            }
            Some(src) => self.reads.read_source(&i, &src, offset, len).map(Bytes::from),
        }
    }

    /// A read of a view's file (`at.rs`): its version's object, by the handle's reader. An
    /// object a lifecycle rule archived since answers EAGAIN and has a restore requested.
    fn read_view(&self, fh: u64, ino: u64, offset: u64, size: u32) -> Result<Bytes> {
        let opened = self.core().handles.get(&fh).and_then(|h| h.view.clone());
        let i = match opened {
            Some(i) => i,
            None => Arc::new(self.view_inode(ino)?),
        };
        if offset >= i.size || size == 0 {
            return Ok(Bytes::new());
        }
        let len = (size as u64).min(i.size - offset);
        let key = i.object_key.clone().ok_or(FsError::Invalid("no object key"))?;
        let seen = self.core().handles.get(&fh).and_then(|h| h.reader.clone());
        let reader = match seen {
            Some(r) => r,
            None => {
                let r = self.reads.remote_reader(&i, &key)?;
                let mut c = self.core();
                let h = c.handles.get_mut(&fh).ok_or(FsError::BadHandle)?;
                h.reader.get_or_insert(r).clone()
            }
        };
        match self.reads.read_remote(&i, &reader, offset, len) {
            Err(FsError::Store(StoreError::Archived)) => {
                let head = self.rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), self.store.head_object(&key)).await });
                let class = match head {
                    Ok(Ok(h)) => h.class(),
                    _ => StorageClass::Glacier,
                };
                let _ = self.request_restore(&i, &class, 0, None, None, true);
                Err(FsError::Archived)
            }
            r => r,
        }
    }

    /// The reader of handle `fh` for object `key` of `i`: the one its earlier reads used if it
    /// reads that object, else one started ahead for it (`ahead.rs`), else a new one. A first
    /// read near the start tells the folder read-ahead.
    fn handle_reader(&self, fh: u64, i: &Inode, key: &str, offset: u64) -> Result<Arc<std::sync::Mutex<Reader>>> {
        let same = |r: &Arc<std::sync::Mutex<Reader>>| {
            let r = r.lock().unwrap_or_else(|p| p.into_inner());
            r.object().key() == key && i.header.as_deref().is_none_or(|h| h == r.object().header())
        };
        let seen = self.core().handles.get(&fh).and_then(|h| h.reader.clone());
        if let Some(r) = &seen {
            if same(r) {
                return Ok(r.clone());
            }
        }
        let r = match self.reads.adopt_started(i, key) {
            Some(r) => r,
            None => self.reads.remote_reader(i, key)?,
        };
        // The first reads of a handle arrive together (the kernel's read-ahead, several FUSE
        // threads): the first reader stored is the handle's, the others' are dropped.
        let (r, pid) = {
            let mut c = self.core();
            match c.handles.get_mut(&fh) {
                Some(h) => {
                    let unchanged = match (&h.reader, &seen) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    if unchanged {
                        h.reader = Some(r.clone());
                        (r, Some(h.pid))
                    } else {
                        (h.reader.clone().unwrap_or(r), None)
                    }
                }
                None => (r, None),
            }
        };
        // Reading from (near) the start: the folder read-ahead follows this process.
        if let Some(pid) = pid {
            if offset < crate::sealed::INITIAL_WINDOW {
                self.folder_read_began(i, pid);
            }
        }
        Ok(r)
    }
}

/// Reading the content of a file, given its inode and where that content is (`Source`): the
/// remote readers, the encrypted local copies, the bookkeeping of readers started ahead, and
/// the memory all of them share. It holds no lock of the core and takes none.
pub(super) struct Reads {
    /// The store objects are read from (the mount's `Counted` store: `status` counts its GETs).
    store: Arc<dyn ObjectStore>,
    /// The vault's keys, of which only the secret is used: shared with `Fs` rather than copied,
    /// so that the one copy of the secret is zeroed when the keys are dropped. `None` secret: a
    /// write-only mount, whose reads of uploaded or encrypted content fail (`WriteOnly`).
    keys: Arc<VaultKeys>,
    /// The runtime readers fetch and decrypt on; `Reads` blocks on it from FUSE threads.
    rt: tokio::runtime::Handle,
    /// What all readers of remote content may request ahead of what they read.
    pub(super) budget: crate::sealed::Budget,
    /// Folder read-ahead (`ahead.rs`); its lock is never held while taking `core`'s.
    pub(super) ahead: std::sync::Mutex<ahead::FolderAhead>,
    /// `budget.requested()` when memory was last handed back after reads.
    pub(super) trimmed: AtomicU64,
}

impl Reads {
    /// Reads through `store` with the secret of `keys`, on `rt`, requesting at most
    /// `read_ahead` bytes ahead of all readers together (`FsConfig::read_ahead`).
    pub(super) fn new(store: Arc<dyn ObjectStore>, keys: Arc<VaultKeys>, rt: tokio::runtime::Handle, read_ahead: u64) -> Reads {
        Reads { store, keys, rt, budget: crate::sealed::Budget::new(read_ahead), ahead: Default::default(), trimmed: Default::default() }
    }

    /// A new reader of object `key` holding the content of `i`, under the header the index
    /// recorded for it (a different object under the key fails authentication).
    pub(super) fn remote_reader(&self, i: &Inode, key: &str) -> Result<Arc<std::sync::Mutex<Reader>>> {
        let sk = self.keys.secret.as_ref().ok_or(FsError::WriteOnly)?;
        let store = self.store.clone();
        let obj = match i.header.as_deref() {
            Some(h) => Object::new(store, sk, key, i.size, h),
            // An index of an early build without the header: read from the object.
            None => self.rt.block_on(Object::fetch(store, sk, key, i.size)),
        }
        .map_err(|e| self.read_failed(i, e))?;
        Ok(Arc::new(std::sync::Mutex::new(Reader::new(obj, self.budget.clone(), self.rt.clone()))))
    }

    /// Plaintext [offset, offset+len) of `i` through `reader`.
    pub(super) fn read_remote(&self, i: &Inode, reader: &std::sync::Mutex<Reader>, offset: u64, len: u64) -> Result<Bytes> {
        self.rt.block_on(crate::sealed::read_at(reader, offset, len)).map_err(|e| self.read_failed(i, e))
    }

    /// A failed read of remote content as the caller sees it; what is not the bucket's or the
    /// network's doing is logged as a refusal.
    fn read_failed(&self, i: &Inode, e: ReadError) -> FsError {
        match e {
            ReadError::Store(e) => FsError::Store(e),
            ReadError::Corrupt(why) => {
                tracing::error!(ino = i.ino, error = %why, "refusing to return data: object failed authentication");
                FsError::Crypto(crypto::CryptoError::Auth)
            }
            ReadError::Task(why) => FsError::Io(std::io::Error::other(why)),
        }
    }

    /// Read plaintext [offset, offset+len) of `i` from where its content is on this machine.
    pub(super) fn read_source(&self, i: &Inode, src: &Source, offset: u64, len: u64) -> Result<Vec<u8>> {
        match src {
            Source::Plain(p) => read_plain(&File::open(p)?, offset, len),
            _ => self.read_encrypted(i, src, offset, len),
        }
    }

    /// Read plaintext [offset, offset+len) of `i` from an encrypted copy on the staging disk,
    /// segment by segment.
    pub(super) fn read_encrypted(&self, i: &Inode, src: &Source, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            // (The segment arithmetic below counts from the last byte read.)
            return Ok(Vec::new());
        }
        let sk = self.keys.secret.as_ref().ok_or(FsError::WriteOnly)?;
        let p = match src {
            Source::Local(p) => p,
            Source::Plain(_) => return Err(FsError::Invalid("a plaintext source is not decrypted")),
            // Remote content is read through a `sealed::Reader` (`read_remote`), never here.
            Source::Remote(_) => return Err(FsError::Invalid("remote content is read through a reader")),
        };
        let f = File::open(p)?;
        let header = match &i.header {
            // The local copy of an uploaded version (`--fetch-restored`) is read under the
            // header the index recorded for it, never under its own: a copy of another object
            // fails authentication instead of answering with that object's plaintext. (An
            // encrypted outbox file of an earlier build is a version not uploaded yet, whose
            // header only that file holds.)
            Some(h) if i.state == State::Uploaded => Header::parse(h)?,
            _ => {
                let mut b = [0u8; HEADER_LEN];
                f.read_exact_at(&mut b, 0)?;
                Header::parse(&b)?
            }
        };
        let opened = Opened::open(sk, &header).map_err(|e| self.log_bad_object(i, src, e))?;
        let size = i.size;
        let first = offset / SEGMENT;
        let last = (offset + len - 1) / SEGMENT;
        let (start, _) = crypto::segment_cipher_range(size, first);
        let (_, end) = crypto::segment_cipher_range(size, last);
        let mut raw = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut raw, start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.log_bad_object(i, src, crypto::CryptoError::Auth).into()
            } else {
                FsError::Io(e)
            }
        })?;
        let mut out = Vec::with_capacity(len as usize);
        for j in first..=last {
            let (a, b) = crypto::segment_cipher_range(size, j);
            let seg =
                opened.decrypt_segment(size, j, &raw[(a - start) as usize..(b - start) as usize]).map_err(|e| self.log_bad_object(i, src, e))?;
            let seg_start = j * SEGMENT;
            let from = offset.max(seg_start) - seg_start;
            let to = (offset + len).min(seg_start + seg.len() as u64) - seg_start;
            if from < to {
                out.extend_from_slice(&seg[from as usize..to as usize]);
            }
        }
        Ok(out)
    }

    pub(super) fn log_bad_object(&self, i: &Inode, src: &Source, e: crypto::CryptoError) -> crypto::CryptoError {
        let what = match src {
            Source::Local(p) | Source::Plain(p) => p.display().to_string(),
            Source::Remote(k) => format!("s3 object {k}"),
        };
        tracing::error!(ino = i.ino, object = %what, error = %e, "refusing to return data: object failed authentication");
        e
    }
}

/// [offset, offset+size) of a virtual file's content (shorter at its end).
fn virt_slice(v: &[u8], offset: u64, size: u32) -> Bytes {
    let start = (offset as usize).min(v.len());
    let end = (start + size as usize).min(v.len());
    Bytes::copy_from_slice(&v[start..end])
}

pub(super) fn read_plain(f: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break; // sparse tail beyond the spool's length reads as zeros
        }
        got += n;
    }
    Ok(buf)
}
