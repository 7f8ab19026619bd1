//! The read path: plaintext spool, local sealed copy or the object in S3 (segment cache, read-ahead), decrypting and authenticating every segment.

use super::*;

impl Fs {
    // ------------------------------------------------------------------ reading

    pub(super) fn source_of(&self, c: &Core, i: &Inode) -> Result<Source> {
        if i.state.in_outbox() {
            let ups = c.db.uploads_for_ino(i.ino)?;
            let u = ups.iter().find(|u| u.content_gen == i.content_gen).ok_or(FsError::NotFound)?;
            return Ok(if u.dk.is_some() { Source::Plain(self.staged_version(u)) } else { Source::Local(self.staged_version(u)) });
        }
        if i.state == State::Uploaded {
            let h = i.header.as_deref().ok_or(FsError::Invalid("no header"))?;
            let cached = self.staging.rcache_plain_path(&h[96..128]);
            if cached.exists() {
                return Ok(Source::Plain(cached));
            }
            let cached = self.staging.rcache_path(&h[96..128]);
            if cached.exists() {
                return Ok(Source::Local(cached));
            }
            let key = i.object_key.clone().ok_or(FsError::Invalid("no object key"))?;
            if i.storage_class.as_deref().is_some_and(crate::store::is_archive_class) {
                // Issue 3 adds restores; until the object is restored its bytes are unreadable.
                return Ok(Source::Remote(key));
            }
            return Ok(Source::Remote(key));
        }
        Err(FsError::Invalid("file has no readable content"))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let virt = self.core().handles.get(&fh).and_then(|h| h.virt.clone());
        if let Some(v) = virt {
            let start = (offset as usize).min(v.len());
            let end = (start + size as usize).min(v.len());
            return Ok(v[start..end].to_vec());
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

    pub(super) fn read_inner(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
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

    pub(super) fn read_once(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (ino, _) = self.handle_ino(fh)?;
        let (i, spool, src) = {
            let c = self.core();
            let i = Self::get_inode(&c, ino)?;
            let spool = c.open.get(&ino).and_then(|o| o.spool.clone());
            let src = if spool.is_none() && !i.state.has_spool() { Some(self.source_of(&c, &i)?) } else { None };
            (i, spool, src)
        };
        if offset >= i.size {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(i.size - offset);
        if let Some(sp) = spool {
            return read_plain(&sp, offset, len);
        }
        match src {
            None => read_plain(&self.staging.open_spool(ino)?, offset, len),
            Some(src) => self.read_source(&i, &src, offset, len),
        }
    }

    /// Read plaintext [offset, offset+len) of `i` from where its content is.
    pub(super) fn read_source(&self, i: &Inode, src: &Source, offset: u64, len: u64) -> Result<Vec<u8>> {
        match src {
            Source::Plain(p) => read_plain(&File::open(p)?, offset, len),
            _ => self.read_encrypted(i, src, offset, len),
        }
    }

    /// Read plaintext [offset, offset+len) of `i` from an encrypted copy, segment by segment.
    pub(super) fn read_encrypted(&self, i: &Inode, src: &Source, offset: u64, len: u64) -> Result<Vec<u8>> {
        let sk = self.keys.secret.as_ref().ok_or(FsError::WriteOnly)?;
        let header = match (src, &i.header) {
            (Source::Plain(_), _) => return Err(FsError::Invalid("a plaintext source is not decrypted")),
            (Source::Remote(_), Some(h)) => Header::parse(h)?,
            // The local copy of an uploaded version (`--fetch-restored`) is read under the
            // header the index recorded for it, never under its own: a copy of another object
            // fails authentication instead of answering with that object's plaintext. (An
            // encrypted outbox file of an earlier build is a version not uploaded yet, whose
            // header only that file holds.)
            (Source::Local(_), Some(h)) if i.state == State::Uploaded => Header::parse(h)?,
            (Source::Local(p), _) => {
                let f = File::open(p)?;
                let mut b = [0u8; HEADER_LEN];
                f.read_exact_at(&mut b, 0)?;
                Header::parse(&b)?
            }
            (Source::Remote(k), None) => {
                let b = self.rt.block_on(self.store.get_range(k, 0, HEADER_LEN as u64))?;
                Header::parse(&b)?
            }
        };
        let opened = Opened::open(sk, &header).map_err(|e| self.log_bad_object(i, src, e))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&header.bytes[96..112]);
        let size = i.size;
        let first = offset / SEGMENT;
        let last = (offset + len - 1) / SEGMENT;
        let nseg = crypto::segment_count(size);
        let mut out = Vec::with_capacity(len as usize);
        let mut s = first;
        while s <= last {
            let seg = match self.segs.get(&(id, s)) {
                Some(p) => p,
                None => {
                    // Miss: fetch a run of segments in one request and cache them all.
                    let upto = match src {
                        Source::Remote(_) => (s + READ_AHEAD_SEGMENTS).min(nseg).max(last + 1).min(nseg),
                        Source::Local(_) | Source::Plain(_) => last + 1,
                    };
                    let (start, _) = crypto::segment_cipher_range(size, s);
                    let (_, end) = crypto::segment_cipher_range(size, upto - 1);
                    let raw = match src {
                        Source::Local(p) => {
                            let f = File::open(p)?;
                            let mut b = vec![0u8; (end - start) as usize];
                            f.read_exact_at(&mut b, start).map_err(|e| {
                                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                    self.log_bad_object(i, src, crypto::CryptoError::Auth).into()
                                } else {
                                    FsError::Io(e)
                                }
                            })?;
                            b
                        }
                        Source::Remote(k) => self.rt.block_on(self.store.get_range(k, start, end))?.to_vec(),
                        Source::Plain(_) => return Err(FsError::Invalid("a plaintext source is not decrypted")),
                    };
                    if raw.len() as u64 != end - start {
                        return Err(self.log_bad_object(i, src, crypto::CryptoError::Auth).into());
                    }
                    let mut result = None;
                    for j in s..upto {
                        let (a, b) = crypto::segment_cipher_range(size, j);
                        let pt = opened
                            .decrypt_segment(size, j, &raw[(a - start) as usize..(b - start) as usize])
                            .map_err(|e| self.log_bad_object(i, src, e))?;
                        let pt = Arc::new(pt);
                        if j == s {
                            result = Some(pt.clone());
                        }
                        self.segs.insert((id, j), pt);
                    }
                    result.expect("at least one segment")
                }
            };
            let seg_start = s * SEGMENT;
            let from = offset.max(seg_start) - seg_start;
            let to = (offset + len).min(seg_start + seg.len() as u64) - seg_start;
            if from < to {
                out.extend_from_slice(&seg[from as usize..to as usize]);
            }
            s += 1;
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
