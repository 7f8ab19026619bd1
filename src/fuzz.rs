//! Entry points for the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and for the test that
//! replays their corpus on every `cargo test` (`tests/fuzz_corpus.rs`): every parser of what a
//! bucket hands us, fed bytes an attacker chose. Each must return an error, never panic, loop
//! or allocate without bound.
//!
//! Decryption cannot be fuzzed past its authentication tags (the fuzzer cannot forge them), so
//! the sealed targets exercise what comes before: lengths, headers, key unwrapping, segment
//! boundaries. What comes after — the JSON of journal batches and snapshots, and the replay of
//! their entries into a tree — is fuzzed on plaintext.

use crate::crypto::{self, Header, Opened, VaultDescriptor, VaultKeys};
use crate::remote_meta::{self, Batch, Entry, Tree};
use std::sync::OnceLock;

/// The keys of a fixed, public test vault: seeds sealed to it (`tests/fuzz_corpus.rs`) open, so
/// the fuzzer starts from objects that decrypt and mutates from there.
pub fn keys() -> &'static VaultKeys {
    static K: OnceLock<VaultKeys> = OnceLock::new();
    K.get_or_init(|| {
        let secret = x25519_dalek::StaticSecret::from([0x42u8; 32]);
        VaultKeys { public: x25519_dalek::PublicKey::from(&secret), secret: Some(secret), name_key: [0x24u8; 32] }
    })
}

/// A sealed object (docs/FORMAT.md section 2) of any length: header, unwrap, every segment.
pub fn sealed_object(data: &[u8]) {
    let _ = crypto::plaintext_len(data.len() as u64);
    if let Ok(h) = Header::parse(data) {
        if let Ok(o) = Opened::open(keys().secret.as_ref().expect("a full vault"), &h) {
            if let Some(size) = crypto::plaintext_len(data.len() as u64) {
                let _ = o.decrypt_all(size, data);
            }
        }
    }
    let _ = remote_meta::open_json::<Batch>(keys(), "v/j/m/1-1", data);
}

/// An object's user metadata as a HEAD returns it (`cvh`, `cvm`: base64 of the header and of
/// the encrypted metadata), split from the input at its first NUL.
pub fn object_metadata(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let (h, m) = s.split_once('\0').unwrap_or((&s, ""));
    let md = std::collections::HashMap::from([("cvh".to_string(), h.to_string()), ("cvm".to_string(), m.to_string())]);
    let _ = remote_meta::object_meta(keys(), "v/d/x", &md);
}

/// A journal batch's plaintext, and the replay of its records into a tree: as one machine's,
/// then as records of three machines taking turns, one of them write-only (whose records may
/// change only what it made).
pub fn journal_batch(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<Batch>(data) {
        let mut t = Tree::default();
        for r in b.records.iter().cloned() {
            t.apply_owned(r.entry);
        }
        check_tree(&t);
        let mut t = Tree::default();
        for (i, r) in b.records.into_iter().enumerate() {
            t.applying = Some((format!("m{}", i % 3), i % 3 == 2));
            t.apply_owned(r.entry);
        }
        check_tree(&t);
    }
}

/// The machine key the `statement` seeds allow (public, like `keys`).
pub fn machine() -> crate::crypto::sign::MachineSigner {
    crate::crypto::sign::MachineSigner::new("0123456789abcdef", &[0x17u8; 32])
}

/// Statements under `m/` and object signatures: `<key below the prefix> NUL <statement object>
/// NUL <x-amz-meta-cvs value>`. The statement is verified and taken as the rebuild takes it,
/// then the signature is checked with what it allows, for a batch of the seeds' machine.
pub fn statement(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let rel = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let sk = keys().secret.as_ref().expect("a full vault");
    let t = remote_meta::trust::Trust::from_statements(sk, &[(&rel, body)]);
    let header = [7u8; crypto::HEADER_LEN];
    let _ = t.check(&keys().public, "j/0123456789abcdef/0000000000000001-0000000000000002", Some("0123456789abcdef"), &header, Some(&sig));
    let _ = t.check(&keys().public, &rel, None, &header, None);
}

/// A snapshot's plaintext, parsed as the rebuild streams it, each entry applied to a tree.
pub fn snapshot(data: &[u8]) {
    let mut t = Tree::default();
    let _ = remote_meta::read::parse(data, Some(|e: Entry, _: remote_meta::read::EntryMeta| t.apply_owned(e)));
    check_tree(&t);
    let _ = remote_meta::read::parse(data, None::<fn(Entry, remote_meta::read::EntryMeta)>);
}

/// What a replayed tree must be whatever it was fed, for `get` to stay inside its destination:
/// no path that is absolute or has an empty, `.` or `..` component or a NUL, and every parent
/// of a node a folder (else `get` would be asked to write below a link or a file). (Lengths are
/// not asserted: renaming a folder lengthens its contents' paths, in a mount as in a replay,
/// and `get` refuses what the local filesystem does.)
fn check_tree(t: &Tree) {
    for p in t.nodes.keys() {
        let escapes = p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        assert!(!escapes, "unsafe path {p:?} in a replayed tree");
        if let Some((parent, _)) = p.rsplit_once('/') {
            let kind = t.nodes.get(parent).map(|n| n.kind);
            assert_eq!(kind, Some(remote_meta::NodeKind::Dir), "{p:?} is below a {kind:?}");
        }
    }
}

/// `vault.json` as read from the bucket at `init` or join: parsed and checked (unlocking is
/// left out: its cost is bounded by the check, and fuzzing it would only measure Argon2id).
pub fn vault_descriptor(data: &[u8]) {
    if let Ok(d) = serde_json::from_slice::<VaultDescriptor>(data) {
        if let Ok(pk) = d.public_key() {
            let fp = crypto::vault::fingerprint(&pk);
            assert!(crypto::vault::fingerprint_matches(&pk, &fp));
        }
    }
}

/// Keys found in a listing: journal batch and snapshot names, and paths as the replay checks
/// them.
pub fn object_key(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Some((m, a, b)) = remote_meta::parse_seq_key(&s) {
        assert!(!m.contains('/'), "a machine id with a slash from {s:?}");
        let _ = (a, b);
    }
    let _ = remote_meta::check_path(&s);
    let _ = remote_meta::shown(&s);
}

/// A target: bytes in, nothing out but a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("sealed_object", sealed_object),
    ("object_metadata", object_metadata),
    ("journal_batch", journal_batch),
    ("snapshot", snapshot),
    ("vault_descriptor", vault_descriptor),
    ("object_key", object_key),
    ("statement", statement),
];
