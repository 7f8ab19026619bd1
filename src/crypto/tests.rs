use super::*;

fn vault() -> (VaultDescriptor, VaultKeys) {
    // Low Argon2 cost keeps unit tests fast; the parameters travel in the descriptor.
    VaultDescriptor::create_with_cost(b"pw", 1024, 1)
}

fn enc(keys: &VaultKeys, data: &[u8]) -> (Sealed, Vec<u8>) {
    let mut out = Vec::new();
    let s = encrypt_stream(&keys.public, data.len() as u64, &mut &data[..], &mut out).unwrap();
    (s, out)
}

fn dec(keys: &VaultKeys, size: u64, body: &[u8]) -> Result<Vec<u8>> {
    let h = Header::parse(body)?;
    let o = Opened::open(keys.secret.as_ref().unwrap(), &h)?;
    o.decrypt_all(size, body)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn roundtrip_sizes() {
    let (_, k) = vault();
    for n in [0, 1, 100, SEGMENT as usize - 1, SEGMENT as usize, SEGMENT as usize + 1, 3 * SEGMENT as usize, 200_000] {
        let d = data(n);
        let (s, body) = enc(&k, &d);
        assert_eq!(body.len() as u64, encrypted_len(n as u64), "size {n}");
        assert_eq!(s.enc_len, body.len() as u64);
        assert_eq!(dec(&k, n as u64, &body).unwrap(), d, "size {n}");
        assert_eq!(hex::encode(s.sha256), sha256_hex(&d));
    }
}

/// An object sealed while its plaintext is written, length unknown (how snapshots are
/// written), is the same format: it has the length `encrypted_len` gives and decrypts whole,
/// at sizes around segment boundaries and whatever the pieces it was written in.
#[test]
fn sealing_while_writing_gives_the_same_format() {
    let (_, k) = vault();
    for n in [0, 1, SEGMENT as usize - 1, SEGMENT as usize, SEGMENT as usize + 1, 2 * SEGMENT as usize, 3 * SEGMENT as usize + 7] {
        let d = data(n);
        for piece in [1usize, 1000, SEGMENT as usize, 200_000] {
            if piece == 1 && n > 70_000 {
                continue;
            }
            let mut w = StreamSealer::new(&k.public, Vec::new()).unwrap();
            for c in d.chunks(piece) {
                w.write_all(c).unwrap();
            }
            let (body, len) = w.finish().unwrap();
            assert_eq!(len, body.len() as u64);
            assert_eq!(plaintext_len(len), Some(n as u64), "size {n}, pieces of {piece}");
            assert_eq!(dec(&k, n as u64, &body).unwrap(), d, "size {n}, pieces of {piece}");
            // Its last segment is flagged: cut after a whole segment, the object fails.
            if n > SEGMENT as usize {
                let cut = &body[..(HEADER_LEN as u64 + SEGMENT + TAG) as usize];
                assert!(dec(&k, SEGMENT, cut).is_err(), "size {n}: a truncated object opened");
            }
        }
    }
}

#[test]
fn flipped_bit_fails() {
    let (_, k) = vault();
    let d = data(150_000);
    let (_, body) = enc(&k, &d);
    for pos in [0, 10, 50, 100, 127, 128, 129, 70_000, body.len() - 1] {
        let mut b = body.clone();
        b[pos] ^= 0x01;
        assert!(dec(&k, d.len() as u64, &b).is_err(), "flip at {pos} must fail");
    }
}

#[test]
fn truncation_fails_even_at_segment_boundary() {
    let (_, k) = vault();
    let d = data(3 * SEGMENT as usize);
    let (_, body) = enc(&k, &d);
    // Drop the last segment entirely and pretend the file was 2 segments long.
    let two = HEADER_LEN + 2 * (SEGMENT + TAG) as usize;
    assert!(dec(&k, 2 * SEGMENT, &body[..two]).is_err());
    assert!(dec(&k, d.len() as u64, &body[..body.len() - 1]).is_err());
}

#[test]
fn swapped_segments_fail() {
    let (_, k) = vault();
    let d = data(3 * SEGMENT as usize);
    let (_, body) = enc(&k, &d);
    let seg = (SEGMENT + TAG) as usize;
    let mut b = body.clone();
    let (a, c) = (HEADER_LEN, HEADER_LEN + seg);
    let first: Vec<u8> = b[a..a + seg].to_vec();
    let second: Vec<u8> = b[c..c + seg].to_vec();
    b[a..a + seg].copy_from_slice(&second);
    b[c..c + seg].copy_from_slice(&first);
    assert!(dec(&k, d.len() as u64, &b).is_err());
}

#[test]
fn swapped_objects_and_spliced_segments_fail() {
    let (_, k) = vault();
    let d = data(2 * SEGMENT as usize);
    let (_, a) = enc(&k, &d);
    let (_, b) = enc(&k, &d);
    // Header of A with the segments of B (same plaintext, same vault).
    let mut x = a[..HEADER_LEN].to_vec();
    x.extend_from_slice(&b[HEADER_LEN..]);
    assert!(dec(&k, d.len() as u64, &x).is_err());
    // One segment of B spliced into A.
    let mut y = a.clone();
    let seg = (SEGMENT + TAG) as usize;
    y[HEADER_LEN..HEADER_LEN + seg].copy_from_slice(&b[HEADER_LEN..HEADER_LEN + seg]);
    assert!(dec(&k, d.len() as u64, &y).is_err());
}

#[test]
fn other_vault_cannot_decrypt() {
    let (_, k1) = vault();
    let (_, k2) = vault();
    let (_, body) = enc(&k1, b"secret photo");
    assert!(matches!(dec(&k2, 12, &body), Err(CryptoError::Auth)));
}

#[test]
fn wrong_passphrase_is_reported_as_such() {
    let (d, _) = vault();
    assert!(matches!(d.unlock(b"not it"), Err(CryptoError::WrongPassphrase)));
    let k = d.unlock(b"pw").unwrap();
    assert!(k.secret.is_some());
}

#[test]
fn unlock_recovers_name_key_and_rewrap_keeps_keys() {
    let (d, k) = vault();
    let k2 = d.unlock(b"pw").unwrap();
    assert_eq!(k.name_key, k2.name_key);
    let d2 = d.rewrap(&k2, b"new pw");
    assert!(matches!(d2.unlock(b"pw"), Err(CryptoError::WrongPassphrase)));
    let k3 = d2.unlock(b"new pw").unwrap();
    assert_eq!(k3.public, k.public);
    assert_eq!(k3.name_key, k.name_key);
}

/// New vaults are format 2; a vault of a newer format is refused by name before anything is
/// read or written (a write-only mount included), and a format-1 vault still unlocks
/// (tests/format_v1.rs, tests/e2e/test_format_v1_vault.py).
#[test]
fn newer_vault_format_is_refused_clearly() {
    let (mut d, _) = VaultDescriptor::create_with_cost(b"pw", 64, 1);
    assert_eq!(d.format, 2);
    d.format = 3;
    let e = d.unlock(b"pw").err().expect("a format-3 vault was unlocked");
    assert!(matches!(e, CryptoError::NewerVault(3)));
    assert!(e.to_string().contains("upgrade coldvault"), "{e}");
    assert!(matches!(d.public_key(), Err(CryptoError::NewerVault(3))));
    d.format = 1;
    assert!(d.unlock(b"pw").is_ok());
}

/// A descriptor from the bucket is checked before anything acts on it: a vault id that would
/// name a cache folder elsewhere, or Argon2id costs meant to exhaust memory or time, are refused
/// at once (the 1 TiB one without trying to allocate it), with the value named.
#[test]
fn a_descriptor_from_the_bucket_is_checked_before_use() {
    let (good, _) = VaultDescriptor::create_with_cost(b"pw", 64, 1);
    for (what, d) in [
        ("vault_id", VaultDescriptor { vault_id: "/etc".into(), ..good.clone() }),
        ("vault_id", VaultDescriptor { vault_id: "../../.ssh".into(), ..good.clone() }),
        ("vault_id", VaultDescriptor { vault_id: String::new(), ..good.clone() }),
        ("vault_id", VaultDescriptor { vault_id: "a".repeat(65), ..good.clone() }),
        ("argon2", VaultDescriptor { argon2: super::vault::Argon2Params { m_kib: u32::MAX, ..good.argon2.clone() }, ..good.clone() }),
        ("argon2", VaultDescriptor { argon2: super::vault::Argon2Params { t: 1_000_000, ..good.argon2.clone() }, ..good.clone() }),
        ("argon2", VaultDescriptor { argon2: super::vault::Argon2Params { p: 0, ..good.argon2.clone() }, ..good.clone() }),
    ] {
        let e = d.unlock(b"pw").err().unwrap_or_else(|| panic!("{d:?} was unlocked"));
        assert!(e.to_string().contains(what), "{e}");
        assert!(d.public_key().is_err(), "{d:?}");
    }
    assert!(good.unlock(b"pw").is_ok());
    // A public key of small order (here 0 and 1, points every key agreement maps to a known
    // value): nothing is sealed to it (review L7).
    for bad in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let d = VaultDescriptor { public_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bad), ..good.clone() };
        let e = d.public_key().err().unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(e.to_string().contains("small order"), "{e}");
    }
}

#[test]
fn newer_format_version_is_refused_clearly() {
    let (_, k) = vault();
    let (_, mut body) = enc(&k, b"x");
    body[6..8].copy_from_slice(&2u16.to_be_bytes());
    assert!(matches!(Header::parse(&body), Err(CryptoError::NewerVersion(2))));
    body[0] = b'X';
    assert!(matches!(Header::parse(&body), Err(CryptoError::BadMagic)));
}

#[test]
fn metadata_roundtrip_and_binding() {
    let (_, k) = vault();
    let (s, body) = enc(&k, b"abc");
    let m = ObjectMeta {
        path: "a/b.jpg".into(),
        size: 3,
        mtime_ns: 1_234_567_890_123_456_789,
        mode: 0o644,
        uid: 1,
        gid: 2,
        sha256: sha256_hex(b"abc"),
        sealed_ms: 0,
        prev: None,
    };
    let ct = s.encrypt_meta(&m);
    let h = Header::parse(&body).unwrap();
    let o = Opened::open(k.secret.as_ref().unwrap(), &h).unwrap();
    assert_eq!(o.decrypt_meta(&ct).unwrap(), m);
    // Metadata of one object does not open under another object's header.
    let (_, body2) = enc(&k, b"abc");
    let o2 = Opened::open(k.secret.as_ref().unwrap(), &Header::parse(&body2).unwrap()).unwrap();
    assert!(o2.decrypt_meta(&ct).is_err());
    let mut bad = ct.clone();
    bad[0] ^= 1;
    assert!(o.decrypt_meta(&bad).is_err());
}

#[test]
fn ciphertext_contains_no_plaintext_run() {
    let (_, k) = vault();
    let d = b"IMG_2019_0001.CR2 holiday in Lisbon ".repeat(5000);
    let (_, body) = enc(&k, &d);
    let needle = &d[..16];
    assert!(!body.windows(16).any(|w| w == needle));
}

#[test]
fn path_key_is_keyed_and_stable() {
    let a = path_key(&[1; 32], "photos/2019/a.jpg");
    assert_eq!(a, path_key(&[1; 32], "photos/2019/a.jpg"));
    assert_ne!(a, path_key(&[2; 32], "photos/2019/a.jpg"));
    assert_ne!(a, path_key(&[1; 32], "photos/2019/b.jpg"));
    assert_eq!(a.len(), 64);
}

#[test]
fn single_segment_decrypts_on_its_own() {
    let (_, k) = vault();
    let d = data(5 * SEGMENT as usize + 77);
    let (_, body) = enc(&k, &d);
    let o = Opened::open(k.secret.as_ref().unwrap(), &Header::parse(&body).unwrap()).unwrap();
    for idx in [0u64, 3, 5] {
        let (s, e) = segment_cipher_range(d.len() as u64, idx);
        let pt = o.decrypt_segment(d.len() as u64, idx, &body[s as usize..e as usize]).unwrap();
        let from = (idx * SEGMENT) as usize;
        assert_eq!(pt, &d[from..(from + pt.len())]);
    }
    // The last segment presented as a middle one (wrong last flag) fails.
    let (s, e) = segment_cipher_range(d.len() as u64, 5);
    assert!(o.decrypt_segment(10 * SEGMENT, 5, &body[s as usize..e as usize]).is_err());
}

/// The uploader encrypts ranges of a version straight from its plaintext: every range, however
/// it falls on segment and header boundaries, equals the same bytes of the one-pass stream
/// (the pinned v1 vector's randomness), and a cipher resumed from the recorded data key and
/// header produces them again (a retried part is byte-identical).
#[test]
fn ranges_encrypted_from_plaintext_equal_the_stream() {
    use std::io::Write as _;
    let vault_sk = StaticSecret::from([0x11u8; 32]);
    let vault_pk = PublicKey::from(&vault_sk);
    for size in [0u64, 1, 65535, 65536, 65537, 2 * 65536 + 100] {
        let pt: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut stream = Vec::new();
        let s = encrypt_stream_with(&vault_pk, size, &mut &pt[..], &mut stream, [0x22; 32], [0x33; 7], StaticSecret::from([0x44u8; 32])).unwrap();
        let vc = VersionCipher::with(&vault_pk, size, [0x22; 32], [0x33; 7], StaticSecret::from([0x44u8; 32]));
        assert_eq!(vc.header().bytes, s.header.bytes);
        assert_eq!(vc.enc_len(), stream.len() as u64);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&pt).unwrap();
        let again = VersionCipher::resume(vc.data_key(), &vc.header().bytes, size).unwrap();
        let enc = stream.len() as u64;
        let mut cuts = vec![(0, enc), (0, 1), (0, 128), (127, 2), (128, enc - 128)];
        for k in [1u64, 7, 65551, 65552, 65553, 65680, 100_000] {
            if k < enc {
                cuts.push((k, enc - k));
                cuts.push((0, k));
                cuts.push((k / 2, k - k / 2));
            }
        }
        for (a, n) in cuts {
            let want = &stream[a as usize..(a + n) as usize];
            assert_eq!(vc.encrypt_range(&f, a, n).unwrap(), want, "size {size}: range {a}+{n}");
            assert_eq!(again.encrypt_range(&f, a, n).unwrap(), want, "resumed, size {size}: range {a}+{n}");
        }
        assert!(vc.encrypt_range(&f, 0, enc + 1).is_err());
        assert_eq!(sha256_file(&f, size).unwrap(), s.sha256);
        // The opened object decrypts to the plaintext.
        let o = Opened::open(&vault_sk, &Header::parse(&stream).unwrap()).unwrap();
        assert_eq!(o.decrypt_all(size, &stream).unwrap(), pt);
    }
    // A data key that does not belong to the header is refused.
    let vc = VersionCipher::new(&vault_pk, 10);
    assert!(matches!(VersionCipher::resume(&[0u8; 32], &vc.header().bytes, 10), Err(CryptoError::Auth)));
}

/// The fingerprint a write-only machine is set up with: 32 hex digits in groups of 4, the same
/// for the same key however it is typed, different for another key.
#[test]
fn a_fingerprint_pins_one_public_key() {
    let (d, k) = vault();
    let fp = crate::crypto::fingerprint(&k.public);
    assert_eq!(fp.len(), 39);
    assert!(fp.split('-').all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())), "{fp}");
    assert_eq!(fp, crate::crypto::fingerprint(&d.public_key().unwrap()));
    assert!(crate::crypto::fingerprint_matches(&k.public, &fp.to_uppercase().replace('-', " ")));
    let (_, other) = vault();
    assert!(!crate::crypto::fingerprint_matches(&other.public, &fp));
    assert!(!crate::crypto::fingerprint_matches(&k.public, &fp[..30]));
    let public = d.public_only();
    assert!(!public.has_secret() && public.unlock(b"pw").is_err() && public.public_key().unwrap() == k.public);
}

/// Lengths from the bucket are any u64: computing an object's length from one never overflows
/// (review L5), and a length read back is one an object of that plaintext has.
#[test]
fn lengths_from_the_bucket_never_overflow() {
    for size in [u64::MAX, u64::MAX - 1, u64::MAX / 2, 1 << 62] {
        assert!(encrypted_len(size) >= size.min(u64::MAX - 200));
    }
    for e in [u64::MAX, u64::MAX - 1, 0, 127] {
        if let Some(size) = plaintext_len(e) {
            assert_eq!(encrypted_len(size), e);
        }
    }
    assert_eq!(plaintext_len(encrypted_len(5 << 30)), Some(5 << 30));
}

/// A version's metadata key has one nonce: sealing the same metadata again gives the same
/// bytes, and sealing other metadata with it is refused (review L9).
#[test]
fn a_versions_metadata_is_sealed_once() {
    let (_, k) = vault();
    let c = VersionCipher::new(&k.public, 3);
    let m = ObjectMeta { path: "a".into(), size: 3, mtime_ns: 1, mode: 0o644, uid: 0, gid: 0, sha256: String::new(), sealed_ms: 0, prev: None };
    assert_eq!(c.encrypt_meta(&m), c.encrypt_meta(&m));
    let other = ObjectMeta { path: "b".into(), ..m };
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.encrypt_meta(&other))).is_err());
}
