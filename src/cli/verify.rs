//! `coldvault verify`: check that every file version the index (or, without one, the bucket's
//! journal) records is in the bucket with the right size and class; with --deep, decrypt it.

use super::pass::{keys_for, PassArgs};
use super::runtime;
use super::tree::{load_tree, wanted};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use coldvault::config::{self, Config};
use coldvault::crypto::{self, VaultKeys};
use coldvault::extract;
use coldvault::remote_meta::{self, NodeKind};
use coldvault::sealed::{self, Budget};
use coldvault::store::{ObjectStore, StoreError};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Also download, decrypt and check the SHA-256 of every non-archived object.
    #[arg(long)]
    deep: bool,
}

pub fn run(a: VerifyArgs) -> Result<()> {
    let VerifyArgs { config, cache_dir, pass, deep } = a;
    let cfg_path = config.unwrap_or_else(config::default_config_path);
    let cfg = Config::load(&cfg_path)?;
    let cache = cache_dir.unwrap_or_else(|| cfg.default_cache_dir());
    // Without an index here, what to check is read from the bucket: that needs the key.
    let keys = if deep || !cache.join("index.db").exists() { Some(keys_for(&cfg, &pass)?) } else { None };
    let rt = runtime()?;
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = super::s3::connect_vault(&cfg).await?;
        verify(store, keys.as_ref(), &cfg, &cache, deep).await
    })
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
async fn verify(store: Arc<dyn ObjectStore>, keys: Option<&VaultKeys>, cfg: &Config, cache_dir: &Path, deep: bool) -> Result<()> {
    let db_path = cache_dir.join("index.db");
    let from_index = db_path.exists();
    let mut refused: Vec<String> = Vec::new();
    let files: Vec<Recorded> = if from_index {
        let db = coldvault::meta::Db::open(&db_path, 0, 0, 0)?;
        db.uploaded_files()?
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
        if deep && coldvault::vault::StorageClass::parse(class).needs_restore() {
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
