//! coldvault: an S3 bucket mounted as an encrypted, write-mostly folder.
//!
//! Module map (data flows top to bottom; each arrow points one way — see docs/ARCHITECTURE.md):
//!
//! * [`fuse`]    — `fuser::Filesystem` adapter: translate requests, call [`fs`], reply.
//! * [`fs`]      — POSIX semantics without FUSE: handles, sealing, reads, errno mapping.
//! * [`meta`]    — SQLite index and upload journal (WAL, synchronous=FULL).
//! * [`staging`] — spool (plaintext), outbox (frozen plaintext of sealed versions) and read-cache files.
//! * [`crypto`]  — vault keys, STREAM encryption (object format 1, vault format 2), metadata.
//! * [`remote_meta`] — journal of namespace changes and index snapshots in the bucket; rebuild.
//! * [`restore`] — archive tiers: restore states, costs, times, cost guard, status-file text.
//! * [`sealed`]  — reading a sealed object in ranged GETs, segment by segment, in bounded memory.
//! * [`rules`]   — storage class per path (globs, small-file guard, object tags).
//! * [`upload`]  — durable upload queue: PutObject / resumable multipart, retry with backoff.
//! * [`store`]   — the `ObjectStore` trait: aws-sdk-s3, the in-memory fake, request counting.
//! * [`config`]  — TOML config + vault descriptor on disk.
//! * [`control`] — the daemon's local control socket (`status`, `flush`).
//! * [`daemon`]  — wiring for `coldvault mount`: store, fs, uploader, sealer, FUSE session.
//! * [`fuzz`]    — every parser of bucket input, as the fuzz targets and the corpus replay call it.
//! * [`sync`]    — the core's locks, swapped for shuttle's in the model-checked tests.
//! * [`vault`]   — the vocabulary every layer shares: storage classes, restore tiers and states,
//!   upload states, special files, header fields. A leaf: it imports nothing of the crate.
//! * [`clock`], [`text`] — times and sizes as the index, the bucket and the user see them.

// Every `unsafe` block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod clock;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod extract;
pub mod fs;
pub mod fuse;
#[doc(hidden)]
pub mod fuzz;
pub mod meta;
pub mod remote_meta;
pub mod restore;
pub mod rules;
pub mod sealed;
pub mod staging;
pub mod store;
pub mod sync;
pub mod text;
pub mod upload;
pub mod vault;
