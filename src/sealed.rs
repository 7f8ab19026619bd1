//! Reading a sealed object (docs/FORMAT.md) from the bucket a few segments at a time: ranged
//! GETs of `CHUNK_SEGMENTS` segments, `CHUNKS_IN_FLIGHT` of them in flight, each segment
//! authenticated as it is handed out. Memory stays at a few chunks whatever the object's size.
//! Used by `get` and `verify --deep` (file contents) and by the rebuild (snapshots).

use crate::crypto::{self, Header, Opened};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use x25519_dalek::StaticSecret;

/// Segments per ranged GET (4 MiB of plaintext)…
pub const CHUNK_SEGMENTS: u64 = 64;
/// …and GETs of one object in flight at once.
pub const CHUNKS_IN_FLIGHT: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object is not what it must be: short, another object's header, a segment that does
    /// not authenticate.
    #[error("{0}")]
    Corrupt(String),
    /// A download task panicked or was cancelled.
    #[error("download task: {0}")]
    Task(String),
}

/// The plaintext segments of one object, in order. The last one is authenticated as the last
/// (a truncated object fails), and the object must be exactly `encrypted_len(size)` long.
pub struct Segments<'k> {
    store: Arc<dyn ObjectStore>,
    sk: &'k StaticSecret,
    key: String,
    size: u64,
    want_header: Option<Vec<u8>>,
    /// Segments in the object, chunks in the object, next chunk to request.
    n: u64,
    chunks: u64,
    requested: u64,
    pending: InFlight,
    opened: Option<Opened>,
    /// The object's header, once the first chunk has arrived.
    header: Option<Vec<u8>>,
    /// The chunk being handed out, the offset of its next segment, that segment's index.
    body: Bytes,
    at: usize,
    seg: u64,
    /// Set by the first error: nothing more is handed out after it.
    failed: bool,
}

impl<'k> Segments<'k> {
    /// `size`: the plaintext length (recorded, or `plaintext_len` of the listed length).
    /// `want_header`: the header recorded for this version, which the object must carry.
    pub fn new(store: Arc<dyn ObjectStore>, sk: &'k StaticSecret, key: &str, size: u64, want_header: Option<Vec<u8>>) -> Segments<'k> {
        let n = crypto::segment_count(size);
        Segments {
            store,
            sk,
            key: key.to_string(),
            size,
            want_header,
            n,
            chunks: n.div_ceil(CHUNK_SEGMENTS),
            requested: 0,
            pending: InFlight(VecDeque::new()),
            opened: None,
            header: None,
            body: Bytes::new(),
            at: 0,
            seg: 0,
            failed: false,
        }
    }

    /// Ciphertext range of chunk `c`: segments [c*K, min((c+1)*K, n)); the first also carries
    /// the header.
    fn range(&self, c: u64) -> (u64, u64) {
        let first = c * CHUNK_SEGMENTS;
        let last = ((c + 1) * CHUNK_SEGMENTS).min(self.n) - 1;
        let start = if c == 0 { 0 } else { crypto::segment_cipher_range(self.size, first).0 };
        (start, crypto::segment_cipher_range(self.size, last).1)
    }

    fn corrupt(&self, why: String) -> ReadError {
        ReadError::Corrupt(format!("object {}: {why}", self.key))
    }

    /// The object's 128-byte header, known once the first segment has been handed out.
    pub fn header(&self) -> Option<&[u8]> {
        self.header.as_deref()
    }

    /// The next segment's plaintext; `None` once the last has been handed out. After an error,
    /// every call fails.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        if self.failed {
            return Err(self.corrupt("read again after an error".into()));
        }
        let r = self.next_segment().await;
        self.failed = r.is_err();
        r
    }

    async fn next_segment(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        if self.seg >= self.n {
            return Ok(None);
        }
        if self.seg.is_multiple_of(CHUNK_SEGMENTS) {
            self.next_chunk().await?;
        }
        let (cs, ce) = crypto::segment_cipher_range(self.size, self.seg);
        let len = (ce - cs) as usize;
        let o = self.opened.as_ref().expect("opened with the first chunk");
        let pt = o
            .decrypt_segment(self.size, self.seg, &self.body[self.at..self.at + len])
            .map_err(|e| self.corrupt(format!("segment {}: {e}", self.seg)))?;
        self.at += len;
        self.seg += 1;
        Ok(Some(pt))
    }

    async fn next_chunk(&mut self) -> Result<(), ReadError> {
        let c = self.seg / CHUNK_SEGMENTS;
        while self.requested < self.chunks && self.pending.0.len() < CHUNKS_IN_FLIGHT {
            let (s, e) = self.range(self.requested);
            let st = self.store.clone();
            let key = self.key.clone();
            self.pending.0.push_back(tokio::spawn(async move { st.get_range(&key, s, e).await }));
            self.requested += 1;
        }
        let task = self.pending.0.pop_front().expect("a chunk in flight");
        let body = task.await.map_err(|e| ReadError::Task(e.to_string()))??;
        let (s, e) = self.range(c);
        if body.len() as u64 != e - s {
            return Err(self.corrupt(format!("{} bytes where {} were expected: shorter than its recorded size", s + body.len() as u64, e)));
        }
        self.at = 0;
        if c == 0 {
            let h = Header::parse(&body).map_err(|e| self.corrupt(e.to_string()))?;
            if self.want_header.as_deref().is_some_and(|want| want != &h.bytes[..]) {
                return Err(self.corrupt("its header is not the one recorded for this version (another object under its key)".into()));
            }
            self.opened = Some(Opened::open(self.sk, &h).map_err(|e| self.corrupt(e.to_string()))?);
            self.header = Some(h.bytes.to_vec());
            self.at = crypto::HEADER_LEN;
        }
        self.body = body;
        Ok(())
    }
}

/// GETs still in flight when a read ends early are cancelled, not left running.
struct InFlight(VecDeque<tokio::task::JoinHandle<Result<Bytes, StoreError>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
