//! The fields of a sealed object's 128-byte header that layers other than `crypto` read.
//!
//! Layout (object format 1, docs/FORMAT.md; `crypto` writes and authenticates it): magic and
//! format, the wrapped data key and nonce prefix, then at `96..128` the key commitment. The
//! commitment is unique per version (it is derived from the version's own data key), so the
//! local caches name a version's plaintext or ciphertext copy by it.

/// Length of the header in bytes.
pub const LEN: usize = 128;

/// Where the key commitment sits in the header.
pub const COMMITMENT: std::ops::Range<usize> = 96..128;

/// The version's key commitment: 32 bytes that name this version and no other.
///
/// Panics if `header` is shorter than [`LEN`]: every header the index holds was checked to be
/// that long when it was sealed or read from the bucket.
pub fn commitment(header: &[u8]) -> &[u8] {
    &header[COMMITMENT]
}

/// The commitment if `header` is long enough to hold one.
pub fn try_commitment(header: &[u8]) -> Option<&[u8]> {
    header.get(COMMITMENT)
}
