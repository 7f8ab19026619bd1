//! Encryption format v1 (specified byte by byte in `docs/FORMAT.md`).
//!
//! Role: everything cryptographic lives here and nowhere else — the vault key pair and its
//! passphrase wrapping (Argon2id), per-file data keys wrapped to the vault public key
//! (ephemeral X25519 + HKDF-SHA256 + AES-256-GCM), the STREAM content encryption in 64 KiB
//! segments, the encrypted per-object metadata, and the keyed path hash of earlier builds'
//! object keys. It knows nothing of FUSE, S3 or SQLite.
//!
//! Invariants: a data key is generated fresh for every sealed file version and never reused;
//! every segment authenticates the whole header (so segments cannot move between objects) and
//! its own index and last-flag (so truncation and reordering fail); the header commits to the
//! data key, so one ciphertext cannot decrypt to two plaintexts under two keys.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

pub mod sign;
pub mod vault;
pub use vault::{fingerprint, fingerprint_matches, VaultDescriptor, VaultKeys, MAX_DESCRIPTOR_BYTES};

/// Plaintext bytes per STREAM segment. 64 KiB keeps a random 4 KiB read within one segment
/// fetch while the 16-byte tag overhead stays at 0.02%.
pub const SEGMENT: u64 = 65536;
pub const TAG: u64 = 16;
pub const MAGIC: &[u8; 6] = b"CVAULT";
/// Version of an object body (docs/FORMAT.md, section 4): unchanged since format 1.
pub const FORMAT_VERSION: u16 = 1;
/// Version of the vault as a whole (descriptor, bucket layout, journal and snapshots;
/// docs/FORMAT.md). 2: random per-version object keys and conditional writes, journal times with
/// a clock floor, `discard` records, snapshots saying what they have seen of every machine.
/// Vaults of format 1 are read and written by this build; a 0.1 build refuses format 2.
pub const VAULT_FORMAT: u16 = 2;
/// log2(SEGMENT), stored in the header so a future format can change it.
const SEG_LOG2: u8 = 16;
pub const HEADER_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not a coldvault object (bad magic)")]
    BadMagic,
    #[error("object written by format version {0}; this coldvault reads version {FORMAT_VERSION} only — upgrade coldvault")]
    NewerVersion(u16),
    #[error("vault written by vault format {0}; this coldvault knows vault formats up to {VAULT_FORMAT} — upgrade coldvault")]
    NewerVault(u16),
    #[error("authentication failed: object is tampered, truncated, or encrypted to another vault")]
    Auth,
    #[error("wrong passphrase (or corrupted vault key)")]
    WrongPassphrase,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, CryptoError>;

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; 32];
    hk.expand(info, &mut out).expect("32 bytes is a valid HKDF length");
    out
}

fn gcm(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key).expect("32-byte key")
}

/// Wrap `secret` to an X25519 public key: the "sealed box" used for data keys and the name key.
/// Returns (ephemeral public key, AES-GCM ciphertext of the secret with tag).
pub fn seal_to(recipient: &PublicKey, secret: &[u8; 32], aad: &[u8]) -> ([u8; 32], [u8; 48]) {
    seal_to_with(StaticSecret::random_from_rng(rand::rngs::OsRng), recipient, secret, aad)
}

fn seal_to_with(eph: StaticSecret, recipient: &PublicKey, secret: &[u8; 32], aad: &[u8]) -> ([u8; 32], [u8; 48]) {
    let eph_pub = PublicKey::from(&eph);
    let shared = eph.diffie_hellman(recipient);
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let mut kek = hkdf32(&salt, shared.as_bytes(), b"coldvault/v1/wrap");
    // A zero nonce is safe: the KEK is unique to this ephemeral key and encrypts one message.
    let ct = gcm(&kek).encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: secret, aad }).expect("encrypt");
    kek.zeroize();
    let mut out = [0u8; 48];
    out.copy_from_slice(&ct);
    (*eph_pub.as_bytes(), out)
}

pub fn open_from(sk: &StaticSecret, eph_pub: &[u8; 32], wrapped: &[u8; 48], aad: &[u8]) -> Result<[u8; 32]> {
    let eph_pub = PublicKey::from(*eph_pub);
    let shared = sk.diffie_hellman(&eph_pub);
    if !shared.was_contributory() {
        return Err(CryptoError::Auth);
    }
    let recipient = PublicKey::from(sk);
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let mut kek = hkdf32(&salt, shared.as_bytes(), b"coldvault/v1/wrap");
    let pt = gcm(&kek).decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: wrapped, aad }).map_err(|_| CryptoError::Auth);
    kek.zeroize();
    let pt = pt?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&pt);
    Ok(out)
}

/// Keys derived from one file version's data key.
struct FileKeys {
    content: [u8; 32],
    meta: [u8; 32],
    commit: [u8; 32],
}

impl FileKeys {
    fn derive(dk: &[u8; 32]) -> Self {
        FileKeys {
            content: hkdf32(b"", dk, b"coldvault/v1/content"),
            meta: hkdf32(b"", dk, b"coldvault/v1/meta"),
            commit: hkdf32(b"", dk, b"coldvault/v1/commit"),
        }
    }
}

impl Drop for FileKeys {
    fn drop(&mut self) {
        self.content.zeroize();
        self.meta.zeroize();
    }
}

/// The 128-byte object header. Layout in docs/FORMAT.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub bytes: [u8; HEADER_LEN],
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(CryptoError::Malformed("header shorter than 128 bytes".into()));
        }
        if &b[0..6] != MAGIC {
            return Err(CryptoError::BadMagic);
        }
        let v = u16::from_be_bytes([b[6], b[7]]);
        if v > FORMAT_VERSION {
            return Err(CryptoError::NewerVersion(v));
        }
        if v != FORMAT_VERSION || b[8] != SEG_LOG2 {
            return Err(CryptoError::Malformed(format!("unsupported version {v} / segment size 2^{}", b[8])));
        }
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(&b[..HEADER_LEN]);
        Ok(Header { bytes })
    }
}

/// Number of STREAM segments for a plaintext of `size` bytes (an empty file has one, empty, final segment).
pub fn segment_count(size: u64) -> u64 {
    if size == 0 {
        1
    } else {
        size.div_ceil(SEGMENT)
    }
}

/// Ciphertext length of a plaintext of `size` bytes.
/// Saturating: a size read from the bucket (a journal entry says any u64) never overflows; a
/// saturated length matches no object (review L5).
pub fn encrypted_len(size: u64) -> u64 {
    (HEADER_LEN as u64).saturating_add(size).saturating_add(segment_count(size).saturating_mul(TAG))
}

/// Plaintext length of a v1 object of `enc_len` bytes (None if no plaintext has that length).
pub fn plaintext_len(enc_len: u64) -> Option<u64> {
    let body = enc_len.checked_sub(HEADER_LEN as u64)?;
    let n = body.div_ceil(SEGMENT + TAG).max(1);
    let size = body.checked_sub(n * TAG)?;
    (encrypted_len(size) == enc_len).then_some(size)
}

fn seg_nonce(prefix: &[u8; 7], idx: u64, last: bool) -> Result<[u8; 12]> {
    let idx: u32 = idx.try_into().map_err(|_| CryptoError::Malformed("file too large for STREAM BE32".into()))?;
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&idx.to_be_bytes());
    n[11] = last as u8;
    Ok(n)
}

/// Per-object plaintext metadata; travels encrypted in the object's user metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub path: String,
    pub size: u64,
    #[serde(with = "crate::clock::nanos_json")]
    pub mtime_ns: crate::clock::Nanos,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub sha256: String,
    /// When this version was sealed (ms since the epoch; 0 in objects of builds before it):
    /// among versions of one path that reached the bucket but not the journal, a rebuild takes
    /// the newest (docs/FORMAT.md, section 3).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sealed_ms: i64,
    /// The object key of the version this one replaced (absent for a new file and in objects
    /// of builds before it): a rebuild puts a version its journal never mentioned where that
    /// one is now, and never adopts that one as a file of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The result of sealing one file: header, encrypted metadata, and the plaintext digest.
pub struct Sealed {
    pub header: Header,
    pub sha256: [u8; 32],
    pub enc_len: u64,
    dk: [u8; 32],
    meta: MetaOnce,
}

/// The one metadata a version's key seals, under its one (zero) nonce: sealing other metadata
/// with it would reuse the nonce (review L9), so a second, different one is a bug, refused
/// loudly; the same one again gives the same bytes.
#[derive(Default)]
struct MetaOnce(std::sync::OnceLock<(Vec<u8>, Vec<u8>)>);

impl MetaOnce {
    fn seal(&self, meta_key: &[u8; 32], header: &[u8], meta: &ObjectMeta) -> Vec<u8> {
        let json = serde_json::to_vec(meta).expect("serialize");
        let (first, ct) = self.0.get_or_init(|| {
            let ct = gcm(meta_key).encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: &json, aad: header }).expect("encrypt");
            (json.clone(), ct)
        });
        assert!(*first == json, "a version's metadata sealed twice, differently: its key has one nonce");
        ct.clone()
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.dk.zeroize();
    }
}

impl Sealed {
    /// Encrypt the metadata under this version's key (`cvm` user-metadata value, raw bytes).
    pub fn encrypt_meta(&self, meta: &ObjectMeta) -> Vec<u8> {
        let keys = FileKeys::derive(&self.dk);
        self.meta.seal(&keys.meta, &self.header.bytes, meta)
    }
}

/// Encrypt `size` bytes read from `input` into `output` as one v1 object.
/// `size` must be the exact plaintext length; the reader is read exactly that far.
pub fn encrypt_stream<R: Read, W: Write>(vault_pub: &PublicKey, size: u64, input: &mut R, output: &mut W) -> Result<Sealed> {
    let mut dk = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut dk);
    let mut prefix = [0u8; 7];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let eph = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let r = encrypt_stream_with(vault_pub, size, input, output, dk, prefix, eph);
    dk.zeroize();
    r
}

/// `encrypt_stream` with caller-chosen randomness. Only for test vectors: reusing `dk` or
/// `prefix` across files breaks the format's security.
#[doc(hidden)]
pub fn encrypt_stream_with<R: Read, W: Write>(
    vault_pub: &PublicKey,
    size: u64,
    input: &mut R,
    output: &mut W,
    dk: [u8; 32],
    prefix: [u8; 7],
    eph: StaticSecret,
) -> Result<Sealed> {
    let vc = VersionCipher::with(vault_pub, size, dk, prefix, eph);
    let header = vc.header.clone();
    output.write_all(&header.bytes)?;
    let cipher = gcm(&vc.keys.content);
    let n = segment_count(size);
    let mut buf = vec![0u8; SEGMENT as usize];
    let mut hasher = Sha256::new();
    let mut enc_len = HEADER_LEN as u64;
    for i in 0..n {
        let len = if i == n - 1 { (size - i * SEGMENT) as usize } else { SEGMENT as usize };
        input.read_exact(&mut buf[..len])?;
        hasher.update(&buf[..len]);
        let nonce = seg_nonce(&prefix, i, i == n - 1)?;
        let ct = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: &buf[..len], aad: &header.bytes }).expect("encrypt");
        output.write_all(&ct)?;
        enc_len += ct.len() as u64;
    }
    Ok(Sealed { header, sha256: hasher.finalize().into(), enc_len, dk, meta: MetaOnce::default() })
}

/// One file version's encryption, fixed when the version is sealed and reproducible from its
/// data key and header: the uploader encrypts any byte range of the object straight from the
/// frozen plaintext, as often as retries and resumed multipart uploads need, and always gets
/// the same bytes. No encrypted copy of the file is ever written to the local disk.
///
/// The data key is secret: it stays in the local index only while the version waits for its
/// upload (beside the plaintext it protects) and is dropped with the upload row.
pub struct VersionCipher {
    header: Header,
    keys: FileKeys,
    size: u64,
    dk: [u8; 32],
    meta: MetaOnce,
}

impl Drop for VersionCipher {
    fn drop(&mut self) {
        self.dk.zeroize();
    }
}

impl VersionCipher {
    /// A fresh version of `size` plaintext bytes: new data key, nonce prefix and ephemeral key.
    pub fn new(vault_pub: &PublicKey, size: u64) -> VersionCipher {
        let mut dk = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut dk);
        let mut prefix = [0u8; 7];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let eph = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let c = Self::with(vault_pub, size, dk, prefix, eph);
        dk.zeroize();
        c
    }

    /// `new` with caller-chosen randomness. Only for test vectors.
    #[doc(hidden)]
    pub fn with(vault_pub: &PublicKey, size: u64, dk: [u8; 32], prefix: [u8; 7], eph: StaticSecret) -> VersionCipher {
        let keys = FileKeys::derive(&dk);
        let mut h = [0u8; HEADER_LEN];
        h[0..6].copy_from_slice(MAGIC);
        h[6..8].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        h[8] = SEG_LOG2;
        let (eph, wrapped) = seal_to_with(eph, vault_pub, &dk, &h[0..9]);
        h[9..41].copy_from_slice(&eph);
        h[41..89].copy_from_slice(&wrapped);
        let header = build_header(h, &prefix, &keys.commit);
        VersionCipher { header, keys, size, dk, meta: MetaOnce::default() }
    }

    /// The cipher of a sealed version, from the data key and header recorded with its upload.
    /// Refuses a key that does not match the header's commitment.
    pub fn resume(dk: &[u8], header: &[u8], size: u64) -> Result<VersionCipher> {
        let dk: [u8; 32] = dk.try_into().map_err(|_| CryptoError::Malformed("data key length".into()))?;
        let header = Header::parse(header)?;
        let keys = FileKeys::derive(&dk);
        if !subtle_eq::ct_eq(&keys.commit, &header.bytes[96..128]) {
            return Err(CryptoError::Auth);
        }
        Ok(VersionCipher { header, keys, size, dk, meta: MetaOnce::default() })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The metadata `encrypt_meta` sealed for this version (what a machine that has only its
    /// data key, as in its upload queue, can read back of it).
    pub fn decrypt_meta(&self, ct: &[u8]) -> Result<ObjectMeta> {
        let pt = gcm(&self.keys.meta)
            .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: ct, aad: &self.header.bytes })
            .map_err(|_| CryptoError::Auth)?;
        serde_json::from_slice(&pt).map_err(|e| CryptoError::Malformed(format!("metadata: {e}")))
    }

    pub fn data_key(&self) -> &[u8; 32] {
        &self.dk
    }

    pub fn enc_len(&self) -> u64 {
        encrypted_len(self.size)
    }

    /// Encrypt the metadata under this version's key (`cvm` user-metadata value, raw bytes).
    pub fn encrypt_meta(&self, meta: &ObjectMeta) -> Vec<u8> {
        // Zero nonce: the meta key is unique to this data key and encrypts exactly one message.
        self.meta.seal(&self.keys.meta, &self.header.bytes, meta)
    }

    /// Object bytes [start, start + len), encrypted from `plain` (the version's plaintext,
    /// `size` bytes; a shorter file reads as zeros past its end, as a sparse tail does).
    pub fn encrypt_range(&self, plain: &std::fs::File, start: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let end = start.checked_add(len).filter(|e| *e <= self.enc_len()).ok_or_else(|| CryptoError::Malformed("range beyond the object".into()))?;
        let mut out = Vec::with_capacity(len as usize);
        if start < HEADER_LEN as u64 {
            out.extend_from_slice(&self.header.bytes[start as usize..end.min(HEADER_LEN as u64) as usize]);
        }
        if end <= HEADER_LEN as u64 {
            return Ok(out);
        }
        let n = segment_count(self.size);
        let first = start.saturating_sub(HEADER_LEN as u64) / (SEGMENT + TAG);
        let last = ((end - 1 - HEADER_LEN as u64) / (SEGMENT + TAG)).min(n - 1);
        let cipher = gcm(&self.keys.content);
        let mut buf = vec![0u8; SEGMENT as usize];
        for i in first..=last {
            let plen = if i == n - 1 { (self.size - i * SEGMENT) as usize } else { SEGMENT as usize };
            let mut got = 0;
            while got < plen {
                let k = plain.read_at(&mut buf[got..plen], i * SEGMENT + got as u64)?;
                if k == 0 {
                    buf[got..plen].fill(0);
                    break;
                }
                got += k;
            }
            let nonce = seg_nonce(&self.header.nonce_prefix(), i, i == n - 1)?;
            let ct = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: &buf[..plen], aad: &self.header.bytes }).expect("encrypt");
            let (a, b) = segment_cipher_range(self.size, i);
            let (from, to) = (start.max(a), end.min(b));
            out.extend_from_slice(&ct[(from - a) as usize..(to - a) as usize]);
        }
        buf.zeroize();
        debug_assert_eq!(out.len() as u64, len);
        Ok(out)
    }
}

/// Encrypts a plaintext whose length is not known in advance (a snapshot written entry by
/// entry) as one v1 object, as it is written: a full segment is held back until more bytes
/// arrive or `finish` is called, because the last segment's nonce is flagged as last. Memory:
/// one segment, whatever the length.
pub struct StreamSealer<W: Write> {
    out: W,
    vc: VersionCipher,
    cipher: Aes256Gcm,
    buf: Vec<u8>,
    idx: u64,
    len: u64,
}

impl<W: Write> StreamSealer<W> {
    /// A fresh object (new data key) sealed to `vault_pub`; its header is written at once.
    pub fn new(vault_pub: &PublicKey, mut out: W) -> Result<StreamSealer<W>> {
        // The plaintext length is not part of the header: any `size` builds the same one.
        let vc = VersionCipher::new(vault_pub, 0);
        out.write_all(&vc.header.bytes)?;
        let cipher = gcm(&vc.keys.content);
        Ok(StreamSealer { out, vc, cipher, buf: Vec::with_capacity(SEGMENT as usize), idx: 0, len: HEADER_LEN as u64 })
    }

    fn seal_segment(&mut self, last: bool) -> std::io::Result<()> {
        let nonce = seg_nonce(&self.vc.header.nonce_prefix(), self.idx, last).map_err(std::io::Error::other)?;
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: &self.buf, aad: &self.vc.header.bytes }).expect("encrypt");
        self.out.write_all(&ct)?;
        self.len += ct.len() as u64;
        self.idx += 1;
        self.buf.zeroize();
        self.buf.clear();
        Ok(())
    }

    /// Seal the last segment; returns the output and the object's length.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.seal_segment(true)?;
        self.out.flush()?;
        Ok((self.out, self.len))
    }
}

impl<W: Write> Write for StreamSealer<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.buf.len() == SEGMENT as usize {
            self.seal_segment(false)?;
        }
        let n = data.len().min(SEGMENT as usize - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Writes through what is sealed so far; the held-back segment waits for `finish`.
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// SHA-256 of `size` bytes of `plain` (zeros past its end), read in 1 MiB blocks.
pub fn sha256_file(plain: &std::fs::File, size: u64) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let mut h = Sha256::new();
    // Small: a buffer of 1 MiB or more was mapped and unmapped for every file (glibc's mmap
    // threshold was 1 MiB then; 4 MiB now, set in main), and each unmap interrupts every other
    // CPU to flush its TLB (thousands of small files sealed while an application copies more in).
    let mut buf = vec![0u8; (size as usize).clamp(1, 256 << 10)];
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.len() as u64) as usize;
        let k = plain.read_at(&mut buf[..want], off)?;
        if k == 0 {
            buf[..want].fill(0);
            h.update(&buf[..want]);
            off += want as u64;
            continue;
        }
        h.update(&buf[..k]);
        off += k as u64;
    }
    Ok(h.finalize().into())
}

// Header layout v1 (see docs/FORMAT.md):
//   0..6   magic "CVAULT"
//   6..8   format version, u16 big-endian (1)
//   8      log2(segment size) (16)
//   9..41  ephemeral X25519 public key
//   41..89 wrapped data key: AES-256-GCM(KEK, nonce 0, aad = bytes 0..9) of 32 bytes + 16-byte tag
//   89..96 STREAM nonce prefix (7 random bytes)
//   96..128 key commitment: HKDF(dk, info "coldvault/v1/commit")
fn build_header(mut h: [u8; HEADER_LEN], prefix: &[u8; 7], commit: &[u8; 32]) -> Header {
    h[89..96].copy_from_slice(prefix);
    h[96..128].copy_from_slice(commit);
    Header { bytes: h }
}

impl Header {
    fn nonce_prefix(&self) -> [u8; 7] {
        let mut p = [0u8; 7];
        p.copy_from_slice(&self.bytes[89..96]);
        p
    }
}

/// An opened object: data key unwrapped and commitment checked.
pub struct Opened {
    header: Header,
    keys: FileKeys,
    /// `keys.content` for AES-256-GCM in aws-lc (the same algorithm as `aes-gcm`, which seals;
    /// several times faster, which reading back at network speed needs).
    content: aws_lc_rs::aead::LessSafeKey,
}

impl Opened {
    pub fn open(sk: &StaticSecret, header: &Header) -> Result<Opened> {
        let mut eph = [0u8; 32];
        eph.copy_from_slice(&header.bytes[9..41]);
        let mut wrapped = [0u8; 48];
        wrapped.copy_from_slice(&header.bytes[41..89]);
        let mut dk = open_from(sk, &eph, &wrapped, &header.bytes[0..9])?;
        let keys = FileKeys::derive(&dk);
        dk.zeroize();
        use subtle_eq::ct_eq;
        if !ct_eq(&keys.commit, &header.bytes[96..128]) {
            return Err(CryptoError::Auth);
        }
        let content = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &keys.content).map_err(|_| CryptoError::Auth)?;
        Ok(Opened { header: header.clone(), keys, content: aws_lc_rs::aead::LessSafeKey::new(content) })
    }

    pub fn decrypt_meta(&self, ct: &[u8]) -> Result<ObjectMeta> {
        let pt = gcm(&self.keys.meta)
            .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: ct, aad: &self.header.bytes })
            .map_err(|_| CryptoError::Auth)?;
        serde_json::from_slice(&pt).map_err(|e| CryptoError::Malformed(format!("metadata: {e}")))
    }

    /// Decrypt segment `idx` of an object whose plaintext is `size` bytes long.
    pub fn decrypt_segment(&self, size: u64, idx: u64, ct: &[u8]) -> Result<Vec<u8>> {
        let mut buf = ct.to_vec();
        let n = self.decrypt_segment_in_place(size, idx, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Decrypt segment `idx` in place: `buf` holds its ciphertext and tag; on success its first
    /// `buf.len() - TAG` bytes are the plaintext, whose length is returned.
    pub fn decrypt_segment_in_place(&self, size: u64, idx: u64, buf: &mut [u8]) -> Result<usize> {
        let n = segment_count(size);
        if idx >= n {
            return Err(CryptoError::Malformed("segment index past end".into()));
        }
        if buf.len() < TAG as usize {
            return Err(CryptoError::Auth);
        }
        let nonce = seg_nonce(&self.header.nonce_prefix(), idx, idx == n - 1)?;
        let pt = self
            .content
            .open_in_place(aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce), aws_lc_rs::aead::Aad::from(&self.header.bytes[..]), buf)
            .map_err(|_| CryptoError::Auth)?;
        Ok(pt.len())
    }

    /// The header this object was opened with.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Decrypt a whole object body (header included) and check its length.
    pub fn decrypt_all(&self, size: u64, body: &[u8]) -> Result<Vec<u8>> {
        if body.len() as u64 != encrypted_len(size) || body[..HEADER_LEN] != self.header.bytes {
            return Err(CryptoError::Auth);
        }
        let mut out = Vec::with_capacity(size as usize);
        for i in 0..segment_count(size) {
            let (s, e) = segment_cipher_range(size, i);
            out.extend(self.decrypt_segment(size, i, &body[s as usize..e as usize])?);
        }
        Ok(out)
    }
}

/// Byte range [start, end) of segment `idx`'s ciphertext within the object body.
pub fn segment_cipher_range(size: u64, idx: u64) -> (u64, u64) {
    let start = HEADER_LEN as u64 + idx * (SEGMENT + TAG);
    let plain = if idx == segment_count(size) - 1 { size - idx * SEGMENT } else { SEGMENT };
    (start, start + plain + TAG)
}

mod subtle_eq {
    /// Constant-time comparison (length is public).
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut d = 0u8;
        for (x, y) in a.iter().zip(b) {
            d |= x ^ y;
        }
        d == 0
    }
}

/// Keyed hash of a vault path: how earlier builds named data objects (hex of
/// HMAC-SHA256(name_key, "coldvault/v1/path\0" || path)). New versions get random keys
/// (`Fs::new_object_key`); this stays to check the kept v1 fixtures (docs/FORMAT.md, section 1).
pub fn path_key(name_key: &[u8; 32], path: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(name_key).expect("hmac key");
    m.update(b"coldvault/v1/path\0");
    m.update(path.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests;
