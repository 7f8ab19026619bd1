//! coldvault: an S3 bucket mounted as an encrypted, write-mostly folder.
//!
//! Module map, from the FUSE face down to the leaves: a module imports only modules listed below it
//! (tests excepted; the arrows that still cross a layer are listed in docs/ARCHITECTURE.md, "Floors").
//! The binary's `cli/` (one file per command) sits above all of them.
//!
//! * [`fuse`]        — `fuser::Filesystem` adapter: unpack a request, call [`fs`], reply.
//! * [`control`]     — the daemon's local control socket (`status`, `flush`, `retry`, `restore`, `pid`).
//! * [`daemon`]      — wiring for `coldvault mount`: fs, uploader, journal uploader, restore poller, sealer.
//! * [`fs`]          — POSIX semantics without FUSE, one file per concern; the index and its lock order.
//! * [`extract`]     — writing restored files below a destination safely (`get`, `verify --deep`).
//! * [`fuzz`]        — every parser of bucket input, as the fuzz targets and the corpus replay call it.
//! * [`remote_meta`] — journal batches, snapshots and statements in the bucket; the rebuild.
//! * [`upload`]      — the uploader: PutObject / resumable multipart, the post-upload check, backoff.
//! * [`restore`]     — archive tiers: costs, times, cost guard, status-file text; the restore poller.
//! * [`sealed`]      — reading a sealed object in ranged GETs, segment by segment, in bounded memory.
//! * [`config`]      — the TOML config and vault descriptor on disk.
//! * [`store`]       — the `ObjectStore` trait: aws-sdk-s3, the in-memory fake, counting, conformance.
//! * [`meta`]        — the SQLite index and upload journal (WAL, synchronous=NORMAL) and their SQL.
//! * [`crypto`]      — vault keys, STREAM encryption (object format 1, vault format 2), signatures.
//! * [`rules`]       — storage class per path (globs, small-file guard, object tags).
//! * [`staging`]     — spool, outbox (frozen plaintext of sealed versions) and read-cache files.
//! * [`sync`]        — the core's locks, swapped for shuttle's in the model-checked tests.
//! * [`vault`]       — the shared vocabulary: storage classes, tiers, restores, upload states, specials.
//! * [`clock`]       — wall-clock time as the index and the bucket store it; dates.
//! * [`text`]        — sizes in plain words (`human_bytes`).

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
pub mod prune;
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
