//! Commands that work on the bucket without a mount: `ls`, `get`, `verify`, `policy`, `key`.
//! Part of the binary (anyhow is allowed here).

use anyhow::{anyhow, bail, Context, Result};
use coldvault::config::Config;
use coldvault::crypto::{self, Header, Opened, VaultKeys};
use coldvault::remote_meta::{self, NodeKind, Tree};
use coldvault::store::{ObjectStore, PutOptions, StoreError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub async fn load_tree(store: &dyn ObjectStore, keys: &VaultKeys, cfg: &Config) -> Result<Tree> {
    let progress = |what: &str, done: usize, total: usize| {
        if total >= 200 && (done.is_multiple_of(200) || done == total) {
            eprintln!("reading the vault: {what} {done}/{total}");
        }
    };
    let tree = remote_meta::rebuild(store, keys, &cfg.prefix, &progress).await.map_err(|e| anyhow!("reading the vault's metadata: {e}"))?;
    for r in &tree.refused {
        eprintln!("coldvault: {r}");
    }
    Ok(tree)
}

fn norm(p: &str) -> Result<String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    remote_meta::check_path(t).map_err(|e| anyhow!("vault path: {e}"))?;
    Ok(t.to_string())
}

fn mode_str(kind: NodeKind, mode: u32) -> String {
    let t = match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Special => 'p',
        NodeKind::File => '-',
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

pub async fn ls(store: &dyn ObjectStore, keys: &VaultKeys, cfg: &Config, path: Option<String>, recursive: bool) -> Result<()> {
    let tree = load_tree(store, keys, cfg).await?;
    let base = norm(path.as_deref().unwrap_or(""))?;
    if !base.is_empty() && !tree.nodes.contains_key(&base) {
        bail!("{base}: no such file or folder in the vault");
    }
    let prefix = if base.is_empty() { String::new() } else { format!("{base}/") };
    let mut shown = 0;
    for (p, n) in &tree.nodes {
        let listed = if tree.nodes.get(&base).is_some_and(|b| b.kind != NodeKind::Dir) {
            *p == base
        } else {
            p.starts_with(&prefix) && (recursive || !p[prefix.len()..].contains('/'))
        };
        if !listed {
            continue;
        }
        let when = coldvault::restore::fmt_ms(i64::try_from(n.mtime_ns.div_euclid(1_000_000)).unwrap_or(i64::MAX));
        let class = n.class.clone().unwrap_or_default();
        let name = match &n.target {
            Some(t) => format!("{p} -> {t}"),
            None => p.clone(),
        };
        println!("{} {:>12} {} {:<19} {}", mode_str(n.kind, n.mode), n.size, &when[..16], class, name);
        shown += 1;
    }
    if shown == 0 && !base.is_empty() && tree.nodes.get(&base).is_some_and(|b| b.kind == NodeKind::Dir) {
        eprintln!("{base}: empty folder");
    }
    Ok(())
}

/// Decrypt one object's body, checking its length, authentication and SHA-256.
pub fn decrypt_checked(keys: &VaultKeys, key: &str, size: u64, sha: &str, body: &[u8]) -> Result<Vec<u8>> {
    let sk = keys.secret.as_ref().ok_or_else(|| anyhow!("no private key"))?;
    let h = Header::parse(body).map_err(|e| anyhow!("object {key}: {e}"))?;
    let o = Opened::open(sk, &h).map_err(|e| anyhow!("object {key}: {e}"))?;
    let pt = o.decrypt_all(size, body).map_err(|e| anyhow!("object {key}: {e}"))?;
    let got = hex::encode(Sha256::digest(&pt));
    if !sha.is_empty() && got != sha {
        bail!("object {key}: SHA-256 mismatch (tampered or wrong version)");
    }
    Ok(pt)
}

fn set_times_and_mode(p: &Path, mtime_ns: coldvault::clock::Nanos, mode: u32) -> Result<()> {
    let t = coldvault::clock::from_nanos(mtime_ns);
    let f = std::fs::File::options().write(true).open(p)?;
    f.set_modified(t)?;
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))?;
    Ok(())
}

pub async fn get(store: &dyn ObjectStore, keys: &VaultKeys, cfg: &Config, paths: &[String], dest: &Path, restore: bool) -> Result<()> {
    let tree = load_tree(store, keys, cfg).await?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut archived = Vec::new();
    let (mut files, mut bytes, mut failed) = (0u64, 0u64, 0u64);
    let mut made_dirs: Vec<(PathBuf, &remote_meta::Node)> = Vec::new();
    for p in paths {
        let base = norm(p)?;
        let root = tree.nodes.get(&base).ok_or_else(|| anyhow!("{p}: no such file or folder in the vault"))?;
        // Like `cp -r`: the selected item's own name appears under DEST.
        let strip = base.rsplit_once('/').map(|(a, _)| a.len() + 1).unwrap_or(0);
        let selected: Vec<(&String, &remote_meta::Node)> = if root.kind == NodeKind::Dir {
            let prefix = format!("{base}/");
            tree.nodes.iter().filter(|(k, _)| **k == base || k.starts_with(&prefix) || base.is_empty()).collect()
        } else {
            vec![(tree.nodes.get_key_value(&base).map(|(k, _)| k).expect("present"), root)]
        };
        for (vp, n) in selected {
            if vp.is_empty() {
                continue;
            }
            // Paths from the bucket were checked by the replay; check again where it matters.
            remote_meta::check_path(vp).map_err(|e| anyhow!("refusing {vp:?}: {e}"))?;
            let rel = &vp[strip..];
            let out: PathBuf = dest.join(rel);
            if !out.starts_with(dest) {
                bail!("refusing {vp:?}: it would land outside {}", dest.display());
            }
            match n.kind {
                NodeKind::Dir => {
                    std::fs::create_dir_all(&out)?;
                    made_dirs.push((out, n));
                }
                NodeKind::Special => {
                    // FIFOs, sockets and device nodes are recreated by `mount`, not extracted.
                    eprintln!("coldvault: {vp}: special file ({}) not extracted", n.target.clone().unwrap_or_default());
                }
                NodeKind::Symlink => {
                    if let Some(parent) = out.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let _ = std::fs::remove_file(&out);
                    std::os::unix::fs::symlink(n.target.clone().unwrap_or_default(), &out)?;
                }
                NodeKind::File => {
                    let key = n.key.clone().unwrap_or_default();
                    let class = n.class.clone().unwrap_or_default();
                    if let Some(parent) = out.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let body = match store.get_object(&key).await {
                        Ok(b) => b,
                        Err(StoreError::Archived) => {
                            let mut note = format!("{vp} ({class}): archived, not restored");
                            if restore {
                                let tier = coldvault::restore::default_tier(&class, &cfg.restore.glacier_tier, &cfg.restore.deep_archive_tier);
                                let days = (!coldvault::restore::is_intelligent_tiering_archive(&class)).then_some(cfg.restore.days);
                                match store.restore_object(&key, days, &tier).await {
                                    Ok(()) | Err(StoreError::RestoreInProgress) => {
                                        note.push_str(&format!("; restore requested ({tier}), run `get` again when it is done"))
                                    }
                                    Err(e) => note.push_str(&format!("; restore request failed: {e}")),
                                }
                            }
                            archived.push(note);
                            continue;
                        }
                        Err(e) => {
                            eprintln!("coldvault: {vp}: {e}");
                            failed += 1;
                            continue;
                        }
                    };
                    match decrypt_checked(keys, &key, n.size, n.sha256.as_deref().unwrap_or(""), &body) {
                        Ok(pt) => {
                            let tmp = out.with_extension("coldvault-part");
                            std::fs::write(&tmp, &pt)?;
                            std::fs::rename(&tmp, &out)?;
                            set_times_and_mode(&out, n.mtime_ns, n.mode)?;
                            files += 1;
                            bytes += pt.len() as u64;
                        }
                        Err(e) => {
                            eprintln!("coldvault: {vp}: {e}");
                            failed += 1;
                        }
                    }
                }
            }
        }
    }
    // Folder modes and times last: writing files into them changed them.
    for (out, n) in made_dirs {
        let _ = std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(n.mode & 0o7777));
        if let Ok(d) = std::fs::File::open(&out) {
            let t = coldvault::clock::from_nanos(n.mtime_ns);
            let _ = d.set_modified(t);
        }
    }
    println!("restored {files} file(s), {bytes} bytes, to {}", dest.display());
    for a in &archived {
        println!("archived: {a}");
    }
    if failed > 0 || !archived.is_empty() || !tree.refused.is_empty() {
        bail!("{failed} file(s) failed, {} archived file(s) not restored, {} unsafe entr(y/ies) refused", archived.len(), tree.refused.len());
    }
    Ok(())
}

pub async fn verify(store: &dyn ObjectStore, keys: Option<&VaultKeys>, cfg: &Config, cache_dir: &Path, deep: bool) -> Result<()> {
    let db_path = cache_dir.join("index.db");
    if !db_path.exists() {
        bail!("no index at {} (pass --cache-dir, or mount once)", db_path.display());
    }
    let db = coldvault::meta::Db::open(&db_path, 0, 0, 0)?;
    let files = db.select_inodes("WHERE kind=1 AND state='uploaded' ORDER BY ino", [])?;
    let listing = store.list(&format!("{}d/", cfg.prefix)).await?;
    let objects: std::collections::HashMap<String, (u64, String)> = listing.into_iter().map(|o| (o.key, (o.size, o.storage_class))).collect();
    let mut problems = Vec::new();
    let mut checked_deep = 0;
    for f in &files {
        let path = db.path_of(f.ino).unwrap_or_else(|_| format!("inode {}", f.ino));
        let key = f.object_key.clone().unwrap_or_default();
        let Some((size, class)) = objects.get(&key) else {
            problems.push(format!("{path}: object {key} is missing from the bucket"));
            continue;
        };
        if *size != crypto::encrypted_len(f.size) {
            problems.push(format!("{path}: object {key} has {size} bytes, expected {}", crypto::encrypted_len(f.size)));
            continue;
        }
        let want = f.storage_class.clone().unwrap_or_else(|| "STANDARD".into());
        let want_list = want.split('/').next().unwrap_or("").to_string();
        if *class != want_list {
            problems.push(format!("{path}: storage class is {class}, the index says {want}"));
        }
        if deep && !coldvault::restore::needs_restore(class) {
            let keys = keys.ok_or_else(|| anyhow!("--deep needs the passphrase"))?;
            match store.get_object(&key).await {
                Ok(body) => {
                    if let Err(e) = decrypt_checked(keys, &key, f.size, f.sha256.as_deref().unwrap_or(""), &body) {
                        problems.push(format!("{path}: {e}"));
                    }
                    checked_deep += 1;
                }
                Err(e) => problems.push(format!("{path}: reading {key}: {e}")),
            }
        }
    }
    println!("checked {} file(s) against the bucket{}", files.len(), if deep { format!(", decrypted {checked_deep}") } else { String::new() });
    for p in &problems {
        println!("PROBLEM {p}");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    println!("ok");
    Ok(())
}

pub fn policy(bucket: &str, prefix: &str, mode: &str) -> Result<String> {
    let p = coldvault::config::normalize_prefix(prefix)?;
    let objects = format!("arn:aws:s3:::{bucket}/{p}*");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let list = serde_json::json!({
        "Sid": "ListVault", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn,
        "Condition": {"StringLike": {"s3:prefix": [format!("{p}*")]}}
    });
    let statements = match mode {
        // PutObject covers CreateMultipartUpload, UploadPart and CompleteMultipartUpload.
        "write-only" => vec![serde_json::json!({"Sid": "WriteOnly", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": objects})],
        "restore" => vec![
            serde_json::json!({"Sid": "ReadVault", "Effect": "Allow", "Action": ["s3:GetObject", "s3:RestoreObject"], "Resource": objects}),
            list,
        ],
        "full" => vec![
            serde_json::json!({"Sid": "Vault", "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:RestoreObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": objects}),
            list,
        ],
        other => bail!("unknown mode {other:?}: full, write-only or restore"),
    };
    Ok(serde_json::to_string_pretty(&serde_json::json!({"Version": "2012-10-17", "Statement": statements}))?)
}

pub async fn put_descriptor(store: &dyn ObjectStore, cfg: &Config) -> Result<()> {
    let body = serde_json::to_vec_pretty(&cfg.vault)?;
    store
        .put_object(
            &format!("{}coldvault/vault.json", cfg.prefix),
            body.into(),
            &PutOptions { storage_class: "STANDARD".into(), ..Default::default() },
        )
        .await
        .map_err(|e| anyhow!("updating the vault descriptor in the bucket: {e}"))
}

/// Printable recovery key: the vault's private key and name key, base32 in groups of 4, with a checksum.
pub fn recovery_key(keys: &VaultKeys) -> String {
    let sk = keys.secret.as_ref().expect("unlocked").to_bytes();
    let mut raw = Vec::with_capacity(68);
    raw.extend_from_slice(&sk);
    raw.extend_from_slice(&keys.name_key);
    let sum = Sha256::digest(&raw);
    raw.extend_from_slice(&sum[..4]);
    let enc = base32(&raw);
    let groups: Vec<String> = enc.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).to_string()).collect();
    format!("CVRK1-{}", groups.join("-"))
}

/// Parse a recovery key back into keys (checksum verified).
pub fn parse_recovery_key(s: &str, public: &x25519_dalek::PublicKey) -> Result<VaultKeys> {
    let t: String = s.trim().trim_start_matches("CVRK1-").chars().filter(|c| *c != '-' && !c.is_whitespace()).collect();
    let raw = unbase32(&t.to_ascii_uppercase()).ok_or_else(|| anyhow!("recovery key: not base32"))?;
    if raw.len() != 68 || Sha256::digest(&raw[..64])[..4] != raw[64..] {
        bail!("recovery key: wrong length or checksum (typo?)");
    }
    let mut sk = [0u8; 32];
    sk.copy_from_slice(&raw[..32]);
    let mut nk = [0u8; 32];
    nk.copy_from_slice(&raw[32..64]);
    let secret = x25519_dalek::StaticSecret::from(sk);
    if x25519_dalek::PublicKey::from(&secret) != *public {
        bail!("recovery key belongs to another vault");
    }
    Ok(VaultKeys { public: *public, secret: Some(secret), name_key: nk })
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = B32.iter().position(|x| *x == c)? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}
