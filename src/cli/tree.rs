//! The vault's tree as the bucket's journal and snapshots record it, for the commands that work
//! without a mount (`ls`, `get`, `verify`), and the vault paths they are given.

use anyhow::{anyhow, Result};
use coldvault::config::Config;
use coldvault::crypto::VaultKeys;
use coldvault::extract;
use coldvault::remote_meta::{self, Tree};
use coldvault::store::ObjectStore;
use std::sync::Arc;

/// The vault's tree rebuilt from the bucket; what the rebuild refused and the conflicts it settled are printed.
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

/// A vault path as given on the command line: without leading or trailing slashes, checked.
pub fn norm(p: &str) -> Result<String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    remote_meta::check_path(t).map_err(|e| anyhow!("vault path: {e}"))?;
    Ok(t.to_string())
}

/// The index's record of a file version, as `extract` checks it.
pub fn wanted(n: &remote_meta::Node) -> extract::Wanted {
    extract::Wanted { key: n.key.clone().unwrap_or_default(), size: n.size, sha256: n.sha256.clone().unwrap_or_default(), header: n.header.clone() }
}
