//! Format v1: fixed test vectors and fixtures that every later coldvault must still decrypt.
//!
//! `tests/fixtures/v1/` was produced by coldvault 0.1 (format 1) with the passphrase below;
//! it is never regenerated or deleted (docs/FORMAT.md, "Compatibility"). The same files are
//! decrypted by an independent Python implementation in tests/e2e/test_format_independent.py.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use coldvault::crypto::{self, Header, ObjectMeta, Opened, VaultDescriptor};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use x25519_dalek::{PublicKey, StaticSecret};

const FIXTURE_PASSPHRASE: &str = "coldvault fixture passphrase v1";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn vector_plaintext() -> Vec<u8> {
    // 2 full segments + 100 bytes: exercises middle and last-segment nonces.
    (0..(2 * 65536 + 100)).map(|i: usize| (i % 256) as u8).collect()
}

fn vector_object() -> (Vec<u8>, [u8; 32]) {
    let vault_sk = StaticSecret::from([0x11u8; 32]);
    let vault_pk = PublicKey::from(&vault_sk);
    let pt = vector_plaintext();
    let mut out = Vec::new();
    let s = crypto::encrypt_stream_with(&vault_pk, pt.len() as u64, &mut &pt[..], &mut out, [0x22; 32], [0x33; 7], StaticSecret::from([0x44u8; 32]))
        .unwrap();
    (out, s.sha256)
}

/// Pinned digest of the vector object. If this changes, the format changed: that needs a new
/// format version, not a new digest.
const VECTOR_SHA256: &str = include_str!("fixtures/v1/vector.sha256");

#[test]
fn deterministic_vector_is_stable() {
    let (obj, pt_sha) = vector_object();
    assert_eq!(hex::encode(pt_sha), hex::encode(Sha256::digest(vector_plaintext())));
    assert_eq!(obj.len() as u64, crypto::encrypted_len(vector_plaintext().len() as u64));
    let got = hex::encode(Sha256::digest(&obj));
    assert_eq!(got, VECTOR_SHA256.trim(), "format v1 output changed");
    let h = Header::parse(&obj).unwrap();
    let o = Opened::open(&StaticSecret::from([0x11u8; 32]), &h).unwrap();
    assert_eq!(o.decrypt_all(vector_plaintext().len() as u64, &obj).unwrap(), vector_plaintext());
    // Header fields at their documented offsets.
    assert_eq!(&obj[0..6], b"CVAULT");
    assert_eq!(&obj[6..8], &[0, 1]);
    assert_eq!(obj[8], 16);
    assert_eq!(&obj[9..41], PublicKey::from(&StaticSecret::from([0x44u8; 32])).as_bytes());
    assert_eq!(&obj[89..96], &[0x33; 7]);
}

#[test]
fn v1_fixture_still_decrypts() {
    let dir = fixtures();
    let desc: VaultDescriptor = serde_json::from_slice(&std::fs::read(dir.join("vault.json")).unwrap()).unwrap();
    let keys = desc.unlock(FIXTURE_PASSPHRASE.as_bytes()).unwrap();
    let meta: std::collections::BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(dir.join("object.meta.json")).unwrap()).unwrap();
    let body = std::fs::read(dir.join("object.bin")).unwrap();
    let header = Header::parse(&B64.decode(&meta["cvh"]).unwrap()).unwrap();
    assert_eq!(&body[..crypto::HEADER_LEN], &header.bytes[..]);
    let o = Opened::open(keys.secret.as_ref().unwrap(), &header).unwrap();
    let m: ObjectMeta = o.decrypt_meta(&B64.decode(&meta["cvm"]).unwrap()).unwrap();
    assert_eq!(m.path, "Fotos/2019/Lisboa – día 1/IMG_0001.JPG");
    let pt = o.decrypt_all(m.size, &body).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&pt)), m.sha256);
    let expected = std::fs::read(dir.join("plaintext.bin")).unwrap();
    assert_eq!(pt, expected);
    assert_eq!(crypto::path_key(&keys.name_key, &m.path), std::fs::read_to_string(dir.join("object.key")).unwrap().trim());
}

/// Writes the fixtures once: `COLDVAULT_WRITE_FIXTURES=1 cargo test --release --test format_v1 -- --ignored`.
#[test]
#[ignore]
fn write_v1_fixtures() {
    if std::env::var("COLDVAULT_WRITE_FIXTURES").is_err() {
        return;
    }
    let dir = fixtures();
    std::fs::create_dir_all(&dir).unwrap();
    let (obj, _) = vector_object();
    std::fs::write(dir.join("vector.sha256"), format!("{}\n", hex::encode(Sha256::digest(&obj)))).unwrap();
    std::fs::write(dir.join("vector.bin"), &obj).unwrap();
    if dir.join("vault.json").exists() {
        return; // never regenerate the fixture vault
    }
    let (desc, keys) = VaultDescriptor::create(FIXTURE_PASSPHRASE.as_bytes());
    std::fs::write(dir.join("vault.json"), serde_json::to_vec_pretty(&desc).unwrap()).unwrap();
    let pt: Vec<u8> = (0..(65536 + 4321)).map(|i: usize| ((i * 7 + 3) % 256) as u8).collect();
    let mut body = Vec::new();
    let s = crypto::encrypt_stream(&keys.public, pt.len() as u64, &mut &pt[..], &mut body).unwrap();
    let path = "Fotos/2019/Lisboa – día 1/IMG_0001.JPG";
    let m = ObjectMeta {
        path: path.into(),
        size: pt.len() as u64,
        mtime_ns: 1_546_300_800_123_456_789,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        sha256: hex::encode(s.sha256),
        sealed_ms: 0,
        prev: None,
    };
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("cvh", B64.encode(s.header.bytes));
    meta.insert("cvm", B64.encode(s.encrypt_meta(&m)));
    std::fs::write(dir.join("object.meta.json"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    std::fs::write(dir.join("object.bin"), &body).unwrap();
    std::fs::write(dir.join("plaintext.bin"), &pt).unwrap();
    std::fs::write(dir.join("object.key"), format!("{}\n", crypto::path_key(&keys.name_key, path))).unwrap();
}
