//! Every input kept in `fuzz/corpus/<target>/` (the seeds, and whatever the fuzzer found worth
//! keeping, crashes included once fixed) is replayed through its target on every test run, so a
//! parser that regresses on any of them fails here without a fuzzer installed.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` writes the seeds again from the
//! code's own writers (sealed to `coldvault::fuzz::keys()`).

use coldvault::crypto::{self, ObjectMeta, VaultDescriptor};
use coldvault::remote_meta::{self, Batch, Entry, Record, Snapshot, SnapshotWriter};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
}

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    for (name, target) in coldvault::fuzz::TARGETS {
        let dir = corpus().join(name);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} panicked", p.display());
            n += 1;
        }
        assert!(n >= 2, "{name}: no seeds in {}", dir.display());
    }
    // The sealed seeds open with the fuzz keys: the fuzzer starts past authentication.
    let sealed = std::fs::read(corpus().join("sealed_object").join("seed-batch")).unwrap();
    let b: Batch = remote_meta::open_json(coldvault::fuzz::keys(), "v/j/m/1-8", &sealed).expect("the sealed seed opens");
    assert_eq!(b.records.len(), entries().len());
    // The enrollment seed verifies, and the signature beside it with the key it allows.
    let seed = std::fs::read(corpus().join("statement").join("seed-enroll")).unwrap();
    let mut parts = seed.splitn(3, |b| *b == 0);
    let (rel, body, sig) =
        (std::str::from_utf8(parts.next().unwrap()).unwrap(), parts.next().unwrap(), std::str::from_utf8(parts.next().unwrap()).unwrap());
    let keys = coldvault::fuzz::keys();
    let t = coldvault::remote_meta::trust::Trust::from_statements(keys.secret.as_ref().unwrap(), &[(rel, body)]);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let w = t.check(&keys.public, "j/0123456789abcdef/0000000000000001-0000000000000002", Some("0123456789abcdef"), &[7u8; 128], Some(sig));
    assert_eq!(w.map(|w| w.role), Ok(coldvault::remote_meta::trust::Role::WriteOnly));
}

fn entries() -> Vec<Entry> {
    let header = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 128])
    };
    vec![
        Entry::Mkdir { path: "photos".into(), mode: 0o755, uid: 1000, gid: 100, mtime_ns: 1_700_000_000_123_456_789 },
        Entry::Upload {
            path: "photos/IMG_0001.CR2".into(),
            key: "v/d/0123456789abcdef0123456789abcdef".into(),
            size: 25_000_000,
            mtime_ns: -1_500_000_001,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            class: "DEEP_ARCHIVE".into(),
            sha256: "ab".repeat(32),
            header,
            xattrs: Some("{\"user.DOSATTRIB\":\"0x20\"}".into()),
            saw: Some("v/d/00000000000000000000000000000000".into()),
        },
        Entry::Symlink { path: "latest".into(), target: "photos/IMG_0001.CR2".into(), uid: 0, gid: 0, mtime_ns: 5 },
        Entry::Special { path: "photos/fifo".into(), special: "fifo:0".into(), mode: 0o600, uid: 0, gid: 0, mtime_ns: 6 },
        Entry::Rename { from: "photos/IMG_0001.CR2".into(), to: "photos/IMG_0002.CR2".into(), saw: Some(String::new()) },
        Entry::Attr { path: "photos".into(), mode: 0o700, uid: 0, gid: 0, mtime_ns: 7, xattrs: None },
        Entry::Discard { key: "v/d/ffffffffffffffffffffffffffffffff".into() },
        Entry::Remove { path: "latest".into(), saw: None },
    ]
}

#[test]
#[ignore = "writes the seed corpus; run by hand after a format change"]
fn write_seeds() {
    let keys = coldvault::fuzz::keys();
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = corpus().join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), data).unwrap();
    };
    let batch = Batch {
        machine: "0123456789abcdef".into(),
        records: entries().into_iter().enumerate().map(|(i, entry)| Record { seq: i as i64 + 1, ts_ms: 1000 + i as i64, entry }).collect(),
    };
    let batch_json = serde_json::to_vec(&batch).unwrap();
    put("journal_batch", "all-ops", &batch_json);
    put("journal_batch", "empty", br#"{"machine":"m","records":[]}"#);

    let mut w = SnapshotWriter::new(keys, Vec::new()).unwrap();
    for e in entries() {
        w.entry(&e).unwrap();
    }
    w.dead_key("v/d/dead").unwrap();
    let (sealed_snapshot, _) = w.finish("0123456789abcdef", 8, 2000, &[("fedcba9876543210".to_string(), 3i64)].into()).unwrap();
    let old = Snapshot {
        machine: "m".into(),
        covers_seq: 8,
        ts_ms: 2000,
        entries: entries(),
        dead_keys: vec!["v/d/dead".into()],
        seen: Default::default(),
    };
    put("snapshot", "old-field-order", &serde_json::to_vec(&old).unwrap());
    put("snapshot", "writer-order", br#"{"entries":[{"op":"mkdir","path":"a","mode":493,"uid":0,"gid":0,"mtime_ns":1}],"dead_keys":["v/d/x"],"machine":"m","covers_seq":1,"ts_ms":2,"seen":{"m":1}}"#);

    put("sealed_object", "batch", &remote_meta::seal_json(keys, &batch));
    put("sealed_object", "snapshot", &sealed_snapshot);
    let mut big = Vec::new();
    crypto::encrypt_stream(&keys.public, 70_000, &mut &vec![b' '; 70_000][..], &mut big).unwrap();
    put("sealed_object", "two-segments", &big);

    let mut body = Vec::new();
    let sealed = crypto::encrypt_stream(&keys.public, 5, &mut &b"hello"[..], &mut body).unwrap();
    let meta = ObjectMeta {
        path: "photos/a.jpg".into(),
        size: 5,
        mtime_ns: 1,
        mode: 0o644,
        uid: 0,
        gid: 0,
        sha256: hex::encode(sealed.sha256),
        sealed_ms: 0,
        prev: None,
    };
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let md = format!("{}\0{}", b64(&sealed.header.bytes), b64(&sealed.encrypt_meta(&meta)));
    put("object_metadata", "valid", md.as_bytes());
    put("object_metadata", "no-meta", b64(&sealed.header.bytes).as_bytes());

    let (desc, _) = VaultDescriptor::create_with_cost(b"seed", 8, 1);
    put("vault_descriptor", "full", &serde_json::to_vec_pretty(&desc).unwrap());
    put("vault_descriptor", "write-only", &serde_json::to_vec_pretty(&desc.public_only()).unwrap());

    // Statements signed by the fuzz vault, each with a batch signature by the machine they name.
    let me = coldvault::fuzz::machine();
    let sig = me.sign_object(&keys.public, "j/0123456789abcdef/0000000000000001-0000000000000002", &[7u8; 128]);
    let kid = crypto::sign::key_id(&me.public());
    let sk = keys.secret.as_ref().unwrap();
    let pubkey = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(me.public().as_bytes())
    };
    let stmt = |rel: &str, body: String| {
        let mut v = rel.as_bytes().to_vec();
        v.push(0);
        v.extend(crypto::sign::sign_statement(sk, rel, &body));
        v.push(0);
        v.extend(sig.as_bytes());
        v
    };
    let enroll = format!("m/0123456789abcdef-{kid}.enroll");
    put("statement", "enroll", &stmt(&enroll, format!(r#"{{"machine":"0123456789abcdef","key":"{pubkey}","role":"write-only","ts_ms":1}}"#)));
    let revoke = format!("m/0123456789abcdef-{kid}-0000000000000002.revoke");
    let keep = format!(r#"{{"j/0123456789abcdef/0000000000000001-0000000000000002":"{}"}}"#, "ab".repeat(32));
    put("statement", "revoke", &stmt(&revoke, format!(r#"{{"machine":"0123456789abcdef","key":"{pubkey}","after_seq":2,"keep":{keep},"ts_ms":2}}"#)));
    put("statement", "adopt", &stmt("m/adopt-0000000000000003", format!(r#"{{"ts_ms":3,"objects":{keep}}}"#)));

    put("object_key", "batch", b"0123456789abcdef/0000000000000001-0000000000000008");
    put("object_key", "snapshot", b"0123456789abcdef/0000000000000008");
    put("object_key", "path", "photos/été 2019/IMG_0001.CR2".as_bytes());
}
