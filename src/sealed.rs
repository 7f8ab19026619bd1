//! Reading sealed objects (docs/FORMAT.md section 4) from the bucket ahead of their reader.
//!
//! One engine serves every reader of file content: the mount's `read`, `get`, `verify --deep`
//! and the rebuild's snapshots. A `Reader` of one object fetches whole segments with ranged
//! GETs ("chunks"); each chunk is fetched, authenticated and decrypted in a task of its own,
//! off the caller's thread, and its plaintext handed to whoever waits for it.
//!
//! * A reader that moves forward grows a read-ahead window, from `INITIAL_WINDOW` doubling with
//!   every request up to its maximum, so that several chunks of up to `CHUNK_MAX` are in flight
//!   while the caller consumes the one before.
//! * A seek (a read outside what is buffered) drops what was ahead and fetches only the
//!   segments asked for; once the reader has read on from there for `SEEK_RAMP`, it ramps up
//!   again. Random reads stay cheap.
//! * All readers of a process share one `Budget` of bytes: read-ahead is only requested while
//!   the budget has room, so memory stays bounded however many files are read at once. What a
//!   caller waits for now is always fetched.
//!
//! Every chunk is checked: its length (a short object fails), the object's header when the
//! chunk starts at the beginning (another object under the key fails by name), and every
//! segment's tag, the last one as the last (a truncated object fails).

use crate::crypto::{self, Header, Opened, HEADER_LEN, SEGMENT};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use x25519_dalek::StaticSecret;

/// Read-ahead of a reader that has just started going forward (a file of up to 1 MiB comes in
/// one GET)…
pub const INITIAL_WINDOW: u64 = 1 << 20;
/// …doubled with every request, up to this much per reader (or half the budget)…
pub const MAX_WINDOW: u64 = 64 << 20;
/// …in GETs of at most this many bytes of plaintext.
pub const CHUNK_MAX: u64 = 8 << 20;
/// The budget of `get`, `verify --deep` and the rebuild (which must stay under 150 MiB of RSS
/// whatever they read, the passphrase's 64 MiB of Argon2id included). The mount's is
/// `--read-ahead`, 128 MiB by default: reading at 1 GB/s from a server that takes 30-70 ms per
/// 8 MiB under load needs some 64 MiB in flight for one reader (docs/BENCHMARKS.md), and half
/// the budget is one reader's most.
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// After a seek, the bytes a reader must read on from there before it reads ahead again: the
/// kernel turns one small random read into a couple of reads in a row (its own read-ahead),
/// which are no reason to fetch a MiB.
const SEEK_RAMP: u64 = 512 << 10;
/// What a reader keeps behind its position: reads that arrive a little out of order (the
/// kernel's read-ahead requests, served by several FUSE threads) are still served. Beyond the
/// budget, a reader holds at most this and the segments of one read.
const BEHIND: u64 = 512 << 10;

#[derive(Debug, Clone, thiserror::Error)]
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

/// Bytes of plaintext requested ahead of readers, shared by all of them, and the buffers of
/// finished chunks kept for the next ones while reads are under way: a fresh buffer of several
/// MiB costs a page fault per 4 KiB as it fills and a TLB shootdown on every core when it is
/// unmapped, which cost more CPU than decrypting it. The buffers are freed once no chunk is
/// left (`used` back at 0), so an idle mount holds none.
#[derive(Clone)]
pub struct Budget(Arc<BudgetInner>);

struct BudgetInner {
    limit: u64,
    used: AtomicU64,
    /// Free buffers by size class: class k holds `class_capacity(k)` bytes (2^k segments).
    pool: Mutex<[Vec<Vec<u8>>; CLASSES]>,
    pooled: AtomicU64,
    /// Chunks requested so far.
    requested: AtomicU64,
}

/// Size classes of chunk buffers: 1 to `CHUNK_MAX` segments, by powers of two.
const CLASSES: usize = (CHUNK_MAX / SEGMENT).trailing_zeros() as usize + 1;

fn class_of(segs: u64) -> usize {
    (segs.max(1).next_power_of_two().trailing_zeros() as usize).min(CLASSES - 1)
}

/// Ciphertext bytes of 2^k whole segments, with the object's header.
fn class_capacity(k: usize) -> usize {
    HEADER_LEN + (1usize << k) * (SEGMENT + crypto::TAG) as usize
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget(Arc::new(BudgetInner {
            limit: limit.max(SEGMENT),
            used: AtomicU64::new(0),
            pool: Mutex::new(Default::default()),
            pooled: AtomicU64::new(0),
            requested: AtomicU64::new(0),
        }))
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Bytes held by chunks now (in flight or waiting to be read).
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Chunks requested since the budget was made (a reader's GETs).
    pub fn requested(&self) -> u64 {
        self.0.requested.load(Ordering::Relaxed)
    }

    /// `n` bytes if the budget has room for them.
    fn try_take(&self, n: u64) -> Option<Lease> {
        let mut cur = self.0.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.0.limit {
                return None;
            }
            match self.0.used.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Lease { budget: self.clone(), n }),
                Err(now) => cur = now,
            }
        }
    }

    /// `n` bytes a caller waits for: taken even beyond the limit (by at most what the callers
    /// waiting at this moment asked for).
    fn take(&self, n: u64) -> Lease {
        self.0.used.fetch_add(n, Ordering::AcqRel);
        Lease { budget: self.clone(), n }
    }

    /// A buffer for the ciphertext of `segs` segments: a pooled one if there is one.
    fn buffer(&self, segs: u64) -> Vec<u8> {
        let need = HEADER_LEN + (segs * (SEGMENT + crypto::TAG)) as usize;
        let k = class_of(segs);
        if class_capacity(k) < need {
            return Vec::with_capacity(need);
        }
        let mut pool = self.0.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = pool[k].pop() {
            self.0.pooled.fetch_sub(b.capacity() as u64, Ordering::Relaxed);
            return b;
        }
        // None of this size: one of another size is of no use now, free it.
        if let Some(other) = pool.iter_mut().find_map(|c| c.pop()) {
            self.0.pooled.fetch_sub(other.capacity() as u64, Ordering::Relaxed);
        }
        drop(pool);
        Vec::with_capacity(class_capacity(k))
    }

    /// A chunk's buffer is free again: kept while reads are under way and what chunks hold
    /// and the pool together stay within the limit, else freed.
    fn give_back(&self, mut b: Vec<u8>) {
        let cap = b.capacity();
        let Some(k) = (0..CLASSES).find(|&k| class_capacity(k) == cap) else { return };
        let used = self.used();
        if used == 0 || used + self.0.pooled.load(Ordering::Relaxed) + cap as u64 > self.0.limit {
            return;
        }
        b.clear();
        self.0.pooled.fetch_add(cap as u64, Ordering::Relaxed);
        self.0.pool.lock().unwrap_or_else(|p| p.into_inner())[k].push(b);
    }

    /// Free the buffers kept for reuse (a mount calls it now and then: a reader that stopped
    /// half-way keeps `used` above 0).
    pub fn trim(&self) {
        self.drain();
    }

    /// Free every pooled buffer (no chunk is left).
    fn drain(&self) {
        let freed: Vec<Vec<u8>> = self.0.pool.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().flat_map(std::mem::take).collect();
        self.0.pooled.fetch_sub(freed.iter().map(|b| b.capacity() as u64).sum(), Ordering::Relaxed);
    }
}

/// Bytes of a budget held by one chunk, given back when it is dropped.
struct Lease {
    budget: Budget,
    n: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.budget.0.used.fetch_sub(self.n, Ordering::AcqRel) == self.n {
            self.budget.drain();
        }
    }
}

/// A chunk's plaintext in its (pooled) buffer, handed out as `Bytes`: the buffer goes back to
/// the pool when the last of them is dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    budget: Budget,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.buf));
    }
}

/// One version of a file in the bucket, opened: its key, its plaintext size and its data key.
pub struct Object {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
    /// Segments in the object (a file of 0 bytes has one, empty).
    n: u64,
    opened: Opened,
}

impl Object {
    /// An object whose header is known (recorded in the index or a journal): it must carry
    /// exactly that header.
    pub fn new(store: Arc<dyn ObjectStore>, sk: &StaticSecret, key: &str, size: u64, header: &[u8]) -> Result<Arc<Object>, ReadError> {
        let corrupt = |e: String| ReadError::Corrupt(format!("object {key}: {e}"));
        let h = Header::parse(header).map_err(|e| corrupt(e.to_string()))?;
        let opened = Opened::open(sk, &h).map_err(|e| corrupt(e.to_string()))?;
        Ok(Arc::new(Object { store, key: key.to_string(), size, n: crypto::segment_count(size), opened }))
    }

    /// An object whose header is not known: read from the object itself (one small GET).
    pub async fn fetch(store: Arc<dyn ObjectStore>, sk: &StaticSecret, key: &str, size: u64) -> Result<Arc<Object>, ReadError> {
        let b = store.get_range(key, 0, HEADER_LEN as u64).await?;
        if b.len() < HEADER_LEN {
            return Err(ReadError::Corrupt(format!("object {key}: {} bytes, shorter than a header", b.len())));
        }
        Object::new(store, sk, key, size, &b)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's 128-byte header.
    pub fn header(&self) -> &[u8] {
        &self.opened.header().bytes
    }

    fn corrupt(&self, why: String) -> ReadError {
        ReadError::Corrupt(format!("object {}: {why}", self.key))
    }

    /// Ciphertext range of segments [first, end); from byte 0 (the header) when `first` is 0.
    fn cipher_range(&self, first: u64, end: u64) -> (u64, u64) {
        let start = if first == 0 { 0 } else { crypto::segment_cipher_range(self.size, first).0 };
        (start, crypto::segment_cipher_range(self.size, end - 1).1)
    }

    /// Check and decrypt the ciphertext of segments [first, end) in `buf`, in place: the first
    /// bytes of `buf` are then their plaintext, in order; its length is returned.
    fn decrypt(&self, first: u64, end: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
        let mut from = 0usize;
        if first == 0 {
            if buf[..HEADER_LEN] != self.opened.header().bytes[..] {
                return Err(self.corrupt("its header is not the one recorded for this version (another object under its key)".into()));
            }
            from = HEADER_LEN;
        }
        let mut to = 0usize;
        for j in first..end {
            let (a, b) = crypto::segment_cipher_range(self.size, j);
            let len = (b - a) as usize;
            let plen = self
                .opened
                .decrypt_segment_in_place(self.size, j, &mut buf[from..from + len])
                .map_err(|e| self.corrupt(format!("segment {j}: {e}")))?;
            buf.copy_within(from..from + plen, to);
            from += len;
            to += plen;
        }
        Ok(to)
    }
}

type Outcome = Option<Result<Bytes, ReadError>>;

/// Segments [first, end) of an object: one GET, checked and decrypted in a task of its own.
pub struct Chunk {
    first: u64,
    end: u64,
    rx: watch::Receiver<Outcome>,
    task: tokio::task::AbortHandle,
    _lease: Lease,
}

impl Chunk {
    fn start(obj: Arc<Object>, first: u64, end: u64, lease: Lease, rt: &tokio::runtime::Handle) -> Chunk {
        let (tx, rx) = watch::channel(None);
        let budget = lease.budget.clone();
        budget.0.requested.fetch_add(1, Ordering::Relaxed);
        let task = rt.spawn(async move {
            let r = Chunk::fetch(obj, first, end, budget).await;
            let _ = tx.send(Some(r));
        });
        Chunk { first, end, rx, task: task.abort_handle(), _lease: lease }
    }

    async fn fetch(obj: Arc<Object>, first: u64, end: u64, budget: Budget) -> Result<Bytes, ReadError> {
        let (s, e) = obj.cipher_range(first, end);
        let buf = obj.store.get_range_into(&obj.key, s, e, budget.buffer(end - first)).await?;
        if buf.len() as u64 != e - s {
            let got = s + buf.len() as u64;
            budget.give_back(buf);
            return Err(obj.corrupt(format!("{got} bytes where {e} were expected: shorter than its recorded size")));
        }
        // Decrypted here, on a runtime worker (2 ms for 8 MiB): never on the blocking pool,
        // where the reads waiting for this chunk may hold every thread.
        let mut buf = buf;
        match obj.decrypt(first, end, &mut buf) {
            Ok(len) => Ok(Bytes::from_owner(Pooled { buf, len, budget })),
            Err(e) => {
                budget.give_back(buf);
                Err(e)
            }
        }
    }

    /// Its GET failed: not the object's fault (a transient error, an object archived since).
    fn failed_to_fetch(&self) -> bool {
        match self.rx.borrow().as_ref() {
            Some(r) => matches!(r, Err(ReadError::Store(_) | ReadError::Task(_))),
            // Its task ended without a result (it panicked, or the runtime is stopping).
            None => self.rx.has_changed().is_err(),
        }
    }

    /// Plaintext offset of the chunk's first byte.
    pub fn offset(&self) -> u64 {
        self.first * SEGMENT
    }

    /// The chunk's plaintext, once fetched and checked.
    pub async fn data(&self) -> Result<Bytes, ReadError> {
        let mut rx = self.rx.clone();
        let r = rx.wait_for(|o| o.is_some()).await.map_err(|_| ReadError::Task("a chunk's download ended without a result".into()))?;
        r.clone().expect("waited for a result")
    }
}

impl Drop for Chunk {
    /// A chunk nobody will read any more is not fetched to the end.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One reader of one object, reading ahead of it while it goes forward.
pub struct Reader {
    obj: Arc<Object>,
    budget: Budget,
    rt: tokio::runtime::Handle,
    /// Chunks requested, in order and contiguous: segments [front.first, next).
    chunks: VecDeque<Arc<Chunk>>,
    next: u64,
    /// Bytes to keep requested beyond what is read (0 after a seek)…
    window: u64,
    /// …at most this much.
    max_window: u64,
    /// Bytes kept behind the position of the last read.
    behind: u64,
    started: bool,
    /// Segments read in a row since the last seek: [run, reach).
    run: u64,
    reach: u64,
}

impl Reader {
    /// A reader whose chunks run on `rt`.
    pub fn new(obj: Arc<Object>, budget: Budget, rt: tokio::runtime::Handle) -> Reader {
        let max_window = MAX_WINDOW.min(budget.limit() / 2).max(SEGMENT);
        Reader { obj, budget, rt, chunks: VecDeque::new(), next: 0, window: 0, max_window, behind: BEHIND, started: false, run: 0, reach: 0 }
    }

    pub fn object(&self) -> &Arc<Object> {
        &self.obj
    }

    /// The chunks holding segments [first, last], requested now if they were not, and the
    /// read-ahead beyond them when the reader is going forward.
    fn plan_segments(&mut self, first: u64, last: u64) -> Vec<Arc<Chunk>> {
        let n = self.obj.n;
        let last = last.min(n - 1);
        // A chunk whose GET failed (a transient error, an object archived since) is asked for
        // again by the next read that needs it, with everything after it (reads that do not
        // need it leave it alone); a corrupt one stays refused.
        if let Some(bad) = self.chunks.iter().position(|c| c.first <= last && c.end > first && c.failed_to_fetch()) {
            self.next = self.chunks[bad].first;
            self.chunks.truncate(bad);
        }
        // Within what was requested or a little beyond it (reads planned out of order by
        // several FUSE threads; the gap is requested too), or right where the requests ended; a
        // first read within the object's first MiB reads on from its start (most files are
        // read whole, and the first two reads of a file may arrive in either order).
        let lo = self.chunks.front().map_or(self.next, |c| c.first);
        let slack = if self.window > 0 { BEHIND / SEGMENT } else { 2 };
        let near = self.started && first >= lo && first <= self.next + slack;
        let from_start = !self.started && first * SEGMENT < INITIAL_WINDOW;
        if !near && !from_start {
            // A seek: what was ahead is of no use now, and nothing is read ahead until the
            // reader has read on from here for a while.
            self.chunks.clear();
            self.next = first;
            self.window = 0;
            (self.run, self.reach) = (first, first);
        } else if !self.started {
            self.window = INITIAL_WINDOW.min(self.max_window);
        }
        self.started = true;
        self.reach = self.reach.max(last + 1);
        if self.window == 0 && (self.reach - self.run) * SEGMENT >= SEEK_RAMP {
            self.window = INITIAL_WINDOW.min(self.max_window);
        }
        let forward = self.window > 0;
        while self.chunks.front().is_some_and(|c| (c.end * SEGMENT).saturating_add(self.behind) <= first * SEGMENT) {
            self.chunks.pop_front();
        }
        // What the caller waits for: always requested, with the window's first part if the
        // budget has room for it (else as much of it as fits).
        if self.next <= last {
            let ahead = (self.window / SEGMENT).min(CHUNK_MAX / SEGMENT);
            let need = last + 1 - self.next;
            let want = ((last + 1).max(self.next + ahead).min(n)) - self.next;
            let (segs, lease) = match self.take_up_to(want, need) {
                Some(got) => got,
                None => (need, self.budget.take(need * SEGMENT)),
            };
            self.push(self.next + segs, lease);
        }
        // Read-ahead, while the budget has room, in GETs as large as the window allows: the
        // next one goes out once half of it fits in the window, so that a GET is in flight
        // before the data before it runs out.
        if forward {
            let target = (last + 1 + self.window / SEGMENT).min(n);
            while self.next < target {
                let size = (self.window / SEGMENT).clamp(1, CHUNK_MAX / SEGMENT);
                let segs = size.min(n - self.next);
                if self.next + segs.div_ceil(2) > target {
                    break;
                }
                let Some((segs, lease)) = self.take_up_to(segs, INITIAL_WINDOW / SEGMENT) else { break };
                self.push(self.next + segs, lease);
            }
        }
        self.chunks.iter().filter(|c| c.end > first && c.first <= last).cloned().collect()
    }

    /// A lease on `want` segments if the budget has room, else on the largest power of two
    /// of them that fits, down to `least` (a reader that finds the budget nearly full still
    /// reads in large GETs, not a segment at a time).
    fn take_up_to(&self, want: u64, least: u64) -> Option<(u64, Lease)> {
        let mut segs = want;
        loop {
            if let Some(l) = self.budget.try_take(segs * SEGMENT) {
                return Some((segs, l));
            }
            let half = (segs / 2).next_power_of_two();
            if segs <= least.max(1) || half >= segs {
                return None;
            }
            segs = half.max(least.max(1)).min(want);
        }
    }

    /// Request the beginning of the object before anyone reads it (the next files of a folder
    /// being copied), if the budget has room for it: false if it has not.
    pub fn start_ahead(&mut self) -> bool {
        if self.started {
            return true;
        }
        let segs = (INITIAL_WINDOW / SEGMENT).min(self.obj.n);
        let Some(lease) = self.budget.try_take(segs * SEGMENT) else { return false };
        self.started = true;
        self.window = INITIAL_WINDOW.min(self.max_window);
        self.push(segs, lease);
        true
    }

    fn push(&mut self, end: u64, lease: Lease) {
        let c = Chunk::start(self.obj.clone(), self.next, end, lease, &self.rt);
        self.chunks.push_back(Arc::new(c));
        self.next = end;
        self.window = (self.window * 2).min(self.max_window);
    }

    /// The chunks holding plaintext [offset, offset + len) (none past the end of the object).
    pub fn plan(&mut self, offset: u64, len: u64) -> Vec<Arc<Chunk>> {
        let end = (offset.saturating_add(len)).min(self.obj.size);
        if offset >= end {
            return Vec::new();
        }
        self.plan_segments(offset / SEGMENT, (end - 1) / SEGMENT)
    }
}

/// Plaintext [offset, offset + len) of `reader`'s object (shorter at its end): a slice of one
/// chunk, without a copy, when it lies within one. The lock is held only to plan, never while
/// waiting, so reads of one reader wait for each other only as long as the data they need is
/// in flight.
pub async fn read_at(reader: &Mutex<Reader>, offset: u64, len: u64) -> Result<Bytes, ReadError> {
    let chunks = reader.lock().unwrap_or_else(|p| p.into_inner()).plan(offset, len);
    let mut parts = Vec::with_capacity(chunks.len());
    for c in &chunks {
        parts.push(c.data().await?);
    }
    Ok(assemble(&chunks, parts, offset, len))
}

/// `read_at` if everything it needs has arrived already (requesting what it needs and the
/// read-ahead either way): `None` when it would wait. A caller that must not wait (a FUSE
/// thread) answers at once, and hands the read to a thread that may wait otherwise.
pub fn read_ready(reader: &Mutex<Reader>, offset: u64, len: u64) -> Option<Result<Bytes, ReadError>> {
    let chunks = reader.lock().unwrap_or_else(|p| p.into_inner()).plan(offset, len);
    let mut parts = Vec::with_capacity(chunks.len());
    for c in &chunks {
        match c.rx.borrow().as_ref()? {
            Ok(d) => parts.push(d.clone()),
            Err(e) => return Some(Err(e.clone())),
        }
    }
    Some(Ok(assemble(&chunks, parts, offset, len)))
}

/// Plaintext [offset, offset + len) out of the data of `chunks`.
fn assemble(chunks: &[Arc<Chunk>], data: Vec<Bytes>, offset: u64, len: u64) -> Bytes {
    let end = offset + len;
    let mut parts: Vec<Bytes> = Vec::with_capacity(chunks.len());
    for (c, d) in chunks.iter().zip(data) {
        let from = offset.max(c.offset()) - c.offset();
        let to = (end.min(c.offset() + d.len() as u64)).saturating_sub(c.offset());
        if from < to {
            parts.push(d.slice(from as usize..to as usize));
        }
    }
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => Bytes::from(parts.concat()),
    }
}

/// The plaintext of one object from start to end, a chunk at a time (`get`, `verify --deep`,
/// snapshots). The last segment is authenticated as the last, so a truncated object fails;
/// after an error nothing more is handed out.
pub struct Plaintext {
    reader: Reader,
    /// Next segment to hand out.
    seg: u64,
    /// The first chunk, when it came with the object's header (`open` without one), and its
    /// share of the budget.
    first: Option<(Bytes, Lease)>,
    failed: bool,
}

impl Plaintext {
    /// `size`: the plaintext length (recorded, or `plaintext_len` of the listed length).
    /// `header`: the header recorded for this version, which the object must carry; `None`:
    /// the object's own, read with its first chunk (one GET for both).
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        sk: &StaticSecret,
        key: &str,
        size: u64,
        header: Option<&[u8]>,
        budget: Budget,
    ) -> Result<Plaintext, ReadError> {
        let rt = tokio::runtime::Handle::current();
        let Some(h) = header else { return Plaintext::open_unknown(store, sk, key, size, budget).await };
        let obj = Object::new(store, sk, key, size, h)?;
        Ok(Plaintext::with(Reader::new(obj, budget, rt), 0, None))
    }

    async fn open_unknown(store: Arc<dyn ObjectStore>, sk: &StaticSecret, key: &str, size: u64, budget: Budget) -> Result<Plaintext, ReadError> {
        let segs = (INITIAL_WINDOW / SEGMENT).min(crypto::segment_count(size));
        let end = crypto::segment_cipher_range(size, segs - 1).1;
        let lease = budget.take(segs * SEGMENT);
        let mut buf = store.get_range_into(key, 0, end, budget.buffer(segs)).await?;
        if buf.len() < HEADER_LEN {
            return Err(ReadError::Corrupt(format!("object {key}: {} bytes, shorter than a header", buf.len())));
        }
        let obj = Object::new(store, sk, key, size, &buf[..HEADER_LEN])?;
        if buf.len() as u64 != end {
            return Err(obj.corrupt(format!("{} bytes where {end} were expected: shorter than its recorded size", buf.len())));
        }
        let len = obj.decrypt(0, segs, &mut buf)?;
        let data = Bytes::from_owner(Pooled { buf, len, budget: budget.clone() });
        let mut reader = Reader::new(obj, budget, tokio::runtime::Handle::current());
        // Requested up to `segs`, as if by the reader itself: it reads on from there.
        reader.started = true;
        reader.next = segs;
        reader.window = (2 * INITIAL_WINDOW).min(reader.max_window);
        Ok(Plaintext::with(reader, segs, Some((data, lease))))
    }

    fn with(mut reader: Reader, seg: u64, first: Option<(Bytes, Lease)>) -> Plaintext {
        // Read once, in order: nothing is kept behind.
        reader.behind = 0;
        Plaintext { reader, seg, first, failed: false }
    }

    pub fn object(&self) -> &Arc<Object> {
        self.reader.object()
    }

    /// The next piece of plaintext (a chunk); `None` once the last segment has been handed out.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadError> {
        if let Some((data, _lease)) = self.first.take() {
            return Ok(Some(data));
        }
        if self.failed {
            return Err(self.reader.obj.corrupt("read again after an error".into()));
        }
        if self.seg >= self.reader.obj.n {
            return Ok(None);
        }
        let r = self.next_chunk().await;
        self.failed = r.is_err();
        r.map(Some)
    }

    async fn next_chunk(&mut self) -> Result<Bytes, ReadError> {
        let c = self.reader.plan_segments(self.seg, self.seg).into_iter().next().expect("the chunk holding a segment of the object");
        let d = c.data().await?;
        // Chunks start where the one before ended, so this one starts at `seg`.
        debug_assert_eq!(c.first, self.seg);
        self.seg = c.end;
        Ok(d)
    }
}

#[cfg(test)]
mod tests;
