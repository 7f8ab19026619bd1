//! Commands that work on the bucket without a mount: `ls`, `get`, `verify`, `policy`, `key`.
//! Part of the binary (anyhow is allowed here).

use anyhow::{anyhow, bail, Result};
use coldvault::config::Config;
use coldvault::crypto::{self, VaultKeys};
use coldvault::extract::{self, Dest};
use coldvault::remote_meta::{self, NodeKind, Tree};
use coldvault::sealed::{self, Budget};
use coldvault::store::{ObjectStore, PutOptions, StoreError};
use coldvault::vault::{StorageClass, Tier};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub async fn load_tree(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config) -> Result<Tree> {
    let progress = |what: &str, done: usize, total: usize| {
        if total >= 200 && (done.is_multiple_of(200) || done == total) {
            eprintln!("reading the vault: {what} {done}/{total}");
        }
    };
    let tree = remote_meta::rebuild(store, keys, &cfg.prefix, &progress).await.map_err(|e| anyhow!("reading the vault's metadata: {e}"))?;
    tree.check_signed(cfg.signed, &cfg.prefix)?;
    for r in &tree.refused {
        eprintln!("coldvault: {r}");
    }
    for c in &tree.conflicts {
        eprintln!("coldvault: conflict: {c}");
    }
    Ok(tree)
}

/// A tier of the config file (checked when it was loaded; Standard if not).
fn tier_of(t: &str) -> Tier {
    Tier::parse(t).unwrap_or(Tier::Standard)
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

pub async fn ls(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, path: Option<String>, recursive: bool) -> Result<()> {
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
        // Names from the bucket are printed with control characters escaped.
        let name = match &n.target {
            Some(t) => format!("{} -> {}", remote_meta::shown(p), remote_meta::shown(t)),
            None => remote_meta::shown(p).into_owned(),
        };
        println!("{} {:>12} {} {:<19} {}", mode_str(n.kind, n.mode), n.size, &when[..16], class, name);
        shown += 1;
    }
    if shown == 0 && !base.is_empty() && tree.nodes.get(&base).is_some_and(|b| b.kind == NodeKind::Dir) {
        eprintln!("{base}: empty folder");
    }
    Ok(())
}

/// The index's record of a file version, as `extract` checks it.
fn wanted(n: &remote_meta::Node) -> extract::Wanted {
    extract::Wanted { key: n.key.clone().unwrap_or_default(), size: n.size, sha256: n.sha256.clone().unwrap_or_default(), header: n.header.clone() }
}

/// How one file of a `get` ended.
enum Got {
    Written(u64),
    AlreadyThere,
    Archived(String),
    Failed(String),
}

/// Options of `coldvault get`.
pub struct GetOptions {
    /// Request restores of archived files instead of only reporting them.
    pub restore: bool,
    /// Restore owners and keep setuid/setgid bits (root only).
    pub preserve_owner: bool,
    /// Files downloaded at once.
    pub jobs: usize,
}

/// What the downloads of one `get` share: the bucket, the keys and one read-ahead budget.
struct Fetch {
    store: Arc<dyn ObjectStore>,
    keys: VaultKeys,
    budget: Budget,
}

/// Restore the file `vp` of the vault to `rel` below the destination.
async fn get_one(
    f: Arc<Fetch>,
    dest: Arc<Dest>,
    (vp, rel): (String, String),
    n: remote_meta::Node,
    restore: Option<(String, Option<i32>)>,
    progress: Arc<Progress>,
) -> Got {
    let w = wanted(&n);
    let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
    let shown = remote_meta::shown(&vp);
    if dest.already_restored(&rel, &w, a) {
        progress.skipped(n.size);
        return Got::AlreadyThere;
    }
    let mut part = match dest.create_file(&rel) {
        Ok(p) => p,
        Err(e) => return Got::Failed(format!("{shown}: {e}")),
    };
    let store = &f.store;
    match extract::fetch_to(store.clone(), &f.keys, &w, part.file(), &progress.bytes, &f.budget).await {
        Ok(()) => {}
        Err(extract::ExtractError::Store(StoreError::Archived)) => {
            let class = n.class.clone().unwrap_or_default();
            let mut note = format!("{shown} ({class}): archived, not restored");
            if let Some((tier, days)) = restore {
                match store.restore_object(&w.key, days, &tier).await {
                    Ok(()) | Err(StoreError::RestoreInProgress) => {
                        note.push_str(&format!("; restore requested ({tier}), run `get` again when it is done"))
                    }
                    Err(e) => note.push_str(&format!("; restore request failed: {e}")),
                }
            }
            return Got::Archived(note);
        }
        Err(e) => return Got::Failed(format!("{shown}: {e}")),
    }
    match part.commit(a) {
        Ok(()) => {
            progress.files.fetch_add(1, Ordering::Relaxed);
            Got::Written(n.size)
        }
        Err(e) => Got::Failed(format!("{shown}: {e}")),
    }
}

/// Counters of a running `get`, shown on a terminal.
#[derive(Default)]
struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    skipped_bytes: AtomicU64,
}

impl Progress {
    fn skipped(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.skipped_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One status line: files and bytes done, rate, time left.
    fn line(&self, total_files: u64, total_bytes: u64, started: std::time::Instant) -> String {
        let got = self.bytes.load(Ordering::Relaxed);
        let done = got + self.skipped_bytes.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = got as f64 / secs;
        let eta = if rate > 0.0 { format!("{:.0} s left", total_bytes.saturating_sub(done) as f64 / rate) } else { "…".into() };
        format!(
            "{}/{} files, {:.1} of {:.1} MiB, {:.1} MiB/s, {eta}",
            self.files.load(Ordering::Relaxed),
            total_files,
            done as f64 / 1048576.0,
            total_bytes as f64 / 1048576.0,
            rate / 1048576.0
        )
    }
}

pub async fn get(store: Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, paths: &[String], dest: &Path, o: &GetOptions) -> Result<()> {
    let tree = load_tree(&store, keys, cfg).await?;
    let d = Arc::new(Dest::open(dest, o.preserve_owner)?);
    let fetch = Arc::new(Fetch {
        store: store.clone(),
        keys: VaultKeys { public: keys.public, secret: keys.secret.clone(), name_key: keys.name_key },
        budget: Budget::new(sealed::DEFAULT_BUDGET),
    });
    let mut problems: Vec<String> = Vec::new();
    let mut made_dirs: Vec<(String, &remote_meta::Node)> = Vec::new();
    // By destination path: a file selected twice (`get photos photos DIR`) is restored once,
    // and two vault files that would land on one name (`get a/x b/x DIR`) are reported.
    let mut files: std::collections::BTreeMap<String, (String, &remote_meta::Node)> = std::collections::BTreeMap::new();
    let mut links = 0u64;
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
        // In path order: a folder comes before what is in it.
        for (vp, n) in selected {
            if vp.is_empty() {
                continue;
            }
            // Paths from the bucket were checked by the replay; check again where it matters.
            if let Err(e) = remote_meta::check_path(vp) {
                problems.push(format!("refusing {}: {e}", remote_meta::shown(vp)));
                continue;
            }
            let shown = remote_meta::shown(vp);
            let rel = vp[strip..].to_string();
            match n.kind {
                NodeKind::Dir => match d.make_dir(&rel) {
                    Ok(()) => made_dirs.push((rel, n)),
                    Err(e) => problems.push(format!("{shown}: {e}")),
                },
                NodeKind::Special => {
                    // FIFOs, sockets and device nodes are recreated by `mount`, not extracted.
                    eprintln!("coldvault: {shown}: special file ({}) not extracted", remote_meta::shown(n.target.as_deref().unwrap_or_default()));
                }
                NodeKind::Symlink => {
                    let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
                    match d.symlink(&rel, n.target.as_deref().unwrap_or_default(), a) {
                        Ok(()) => links += 1,
                        Err(e) => problems.push(format!("{shown}: {e}")),
                    }
                }
                NodeKind::File => match files.get(&rel) {
                    Some((other, _)) if other != vp => {
                        problems.push(format!("{shown}: not restored, {} lands on the same name", remote_meta::shown(other)))
                    }
                    Some(_) => {}
                    None => {
                        files.insert(rel, (vp.clone(), n));
                    }
                },
            }
        }
    }
    let total_files = files.len() as u64;
    let total_bytes: u64 = files.values().fold(0u64, |t, (_, n)| t.saturating_add(n.size));
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let ticker = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let p = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                eprint!("\r\x1b[K{}", p.line(total_files, total_bytes, started));
            }
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = files.into_iter();
    let (mut written, mut bytes, mut already, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut archived = Vec::new();
    // Files not restored: the folders above them keep a mode that lets the next run finish.
    let mut unfinished: Vec<String> = Vec::new();
    loop {
        while tasks.len() < o.jobs.max(1) {
            let Some((rel, (vp, n))) = queue.next() else { break };
            let class = n.class.clone().unwrap_or_default();
            let restore = o.restore.then(|| {
                let class = StorageClass::parse(&class);
                let tier = coldvault::restore::default_tier(&class, tier_of(&cfg.restore.glacier_tier), tier_of(&cfg.restore.deep_archive_tier));
                (tier.as_str().to_string(), (!class.is_it_archive()).then_some(cfg.restore.days))
            });
            let (f, dd, p) = (fetch.clone(), d.clone(), progress.clone());
            let n = n.clone();
            tasks.spawn(async move {
                let r = get_one(f, dd, (vp, rel.clone()), n, restore, p).await;
                (rel, r)
            });
        }
        let Some(r) = tasks.join_next().await else { break };
        let (rel, got) = r.unwrap_or_else(|e| (String::new(), Got::Failed(format!("a download stopped: {e}"))));
        if matches!(got, Got::Failed(_) | Got::Archived(_)) {
            unfinished.push(rel);
        }
        match got {
            Got::Written(b) => {
                written += 1;
                bytes += b;
            }
            Got::AlreadyThere => already += 1,
            Got::Archived(note) => archived.push(note),
            Got::Failed(m) => {
                failed += 1;
                if ticker.is_some() {
                    eprint!("\r\x1b[K");
                }
                eprintln!("coldvault: {m}");
            }
        }
    }
    if let Some(t) = ticker {
        t.abort();
        eprintln!("\r\x1b[K{}", progress.line(total_files, total_bytes, started));
    }
    // Folder modes and times last (writing into a folder changes its time), innermost first
    // (a read-only folder must not keep its contents from getting theirs).
    for (rel, n) in made_dirs.iter().rev() {
        let below = format!("{rel}/");
        if unfinished.iter().any(|f| f.is_empty() || f.starts_with(&below)) {
            continue;
        }
        let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
        if let Err(e) = d.finish_dir(rel, a) {
            problems.push(format!("{rel}: {e}"));
        }
    }
    if let Err(e) = d.sync() {
        problems.push(e.to_string());
    }
    print!("restored {written} file(s), {bytes} bytes");
    if already > 0 {
        print!(", {already} already there from an earlier run");
    }
    if links > 0 {
        print!(", {links} link(s)");
    }
    println!(", to {}", dest.display());
    for a in &archived {
        println!("archived: {a}");
    }
    for p in &problems {
        eprintln!("coldvault: {p}");
    }
    if failed > 0 || !archived.is_empty() || !tree.refused.is_empty() || !problems.is_empty() {
        bail!(
            "{failed} file(s) failed, {} archived file(s) not restored, {} unsafe entr(y/ies) refused, {} item(s) not written",
            archived.len(),
            tree.refused.len(),
            problems.len()
        );
    }
    Ok(())
}

/// One file version `verify` checks: what the index (or the bucket's journal) records of it.
struct Recorded {
    path: String,
    class: String,
    want: extract::Wanted,
}

/// `coldvault verify [--deep]`: every file version the index records is in the bucket, with the
/// right size and class; with `--deep`, read, authenticated and hashed. With no index at the
/// cache dir (a new machine, after a disaster: when people run it), what is recorded comes from
/// the bucket's own journal and snapshots, read with the passphrase; storage classes that differ
/// from the recorded upload class are then only noted (a lifecycle rule may have moved them).
pub async fn verify(store: Arc<dyn ObjectStore>, keys: Option<&VaultKeys>, cfg: &Config, cache_dir: &Path, deep: bool) -> Result<()> {
    let db_path = cache_dir.join("index.db");
    let from_index = db_path.exists();
    let mut refused: Vec<String> = Vec::new();
    let files: Vec<Recorded> = if from_index {
        let db = coldvault::meta::Db::open(&db_path, 0, 0, 0)?;
        db.select_inodes("WHERE kind=1 AND state='uploaded' ORDER BY ino", [])?
            .into_iter()
            .map(|f| Recorded {
                path: db.path_of(f.ino).unwrap_or_else(|_| format!("inode {}", f.ino)),
                class: f.storage_class.clone().unwrap_or_default().to_string(),
                want: extract::Wanted { key: f.object_key.unwrap_or_default(), size: f.size, sha256: f.sha256.unwrap_or_default(), header: f.header },
            })
            .collect()
    } else {
        let keys = keys.ok_or_else(|| anyhow!("no index at {}: verifying from the bucket alone needs the passphrase", db_path.display()))?;
        eprintln!("coldvault: no index at {}: checking what the bucket's journal and snapshots record", db_path.display());
        let tree = load_tree(&store, keys, cfg).await?;
        // What the replay could not use (an unreadable batch, a gap, an unsafe path) is a
        // problem to report, after checking everything else.
        refused = tree.refused.clone();
        tree.nodes
            .iter()
            .filter(|(_, n)| n.kind == NodeKind::File)
            .map(|(p, n)| Recorded {
                path: remote_meta::shown(p).into_owned(),
                class: n.class.clone().unwrap_or_else(|| "STANDARD".into()),
                want: wanted(n),
            })
            .collect()
    };
    let listing = store.list(&format!("{}d/", cfg.prefix)).await?;
    let objects: std::collections::HashMap<String, (u64, String)> = listing.into_iter().map(|o| (o.key, (o.size, o.storage_class))).collect();
    let mut problems: Vec<String> = refused.iter().map(|r| format!("the bucket's metadata: {r}")).collect();
    let mut notes = Vec::new();
    let mut checked_deep = 0;
    let budget = Budget::new(sealed::DEFAULT_BUDGET);
    for f in &files {
        let (path, key) = (&f.path, &f.want.key);
        let Some((size, class)) = objects.get(key) else {
            problems.push(format!("{path}: object {key} is missing from the bucket"));
            continue;
        };
        if *size != crypto::encrypted_len(f.want.size) {
            problems.push(format!("{path}: object {key} has {size} bytes, expected {}", crypto::encrypted_len(f.want.size)));
            continue;
        }
        let want_list = f.class.split('/').next().unwrap_or("");
        if class != want_list {
            if from_index {
                problems.push(format!("{path}: storage class is {class}, the index says {}", f.class));
            } else {
                notes.push(format!("{path}: storage class is {class}, uploaded as {}", f.class));
            }
        }
        if deep && StorageClass::parse(class).needs_restore() {
            notes.push(format!("{path}: archived ({class}), not read"));
        } else if deep {
            let keys = keys.ok_or_else(|| anyhow!("--deep needs the passphrase"))?;
            match extract::fetch_to(store.clone(), keys, &f.want, &mut std::io::sink(), &AtomicU64::new(0), &budget).await {
                Ok(()) => checked_deep += 1,
                // In an archive tier the listing does not name (Intelligent-Tiering's): not read.
                Err(extract::ExtractError::Store(StoreError::Archived)) => notes.push(format!("{path}: archived ({class}), not read")),
                Err(e @ extract::ExtractError::Store(_)) => problems.push(format!("{path}: reading {key}: {e}")),
                Err(e) => {
                    problems.push(format!("{path}: {e}"));
                    checked_deep += 1;
                }
            }
        }
    }
    let source = if from_index { "the index" } else { "the bucket's journal" };
    println!(
        "checked {} file(s) recorded in {source} against the bucket{}",
        files.len(),
        if deep { format!(", decrypted {checked_deep}") } else { String::new() }
    );
    for n in &notes {
        println!("note: {n}");
    }
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
    let writable: Vec<String> = ["d", "j", "s"].iter().map(|d| format!("arn:aws:s3:::{bucket}/{p}{d}/*")).collect();
    let statements = match mode {
        // PutObject covers CreateMultipartUpload, UploadPart and CompleteMultipartUpload; only
        // where a machine puts data objects, journal batches and snapshots (not `vault.json`,
        // not the vault's statements under `m/`: a leaked write-only credential can neither
        // replace the descriptor nor litter the statements). Plus reading the public vault
        // descriptor, for `init --write-only` (which checks it against the fingerprint given).
        "write-only" => vec![
            serde_json::json!({"Sid": "WriteOnly", "Effect": "Allow", "Action": ["s3:PutObject"],
                "Resource": writable}),
            serde_json::json!({"Sid": "ReadDescriptor", "Effect": "Allow", "Action": ["s3:GetObject"],
                "Resource": format!("arn:aws:s3:::{bucket}/{p}coldvault/vault.json")}),
        ],
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
