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
    let tree = remote_meta::rebuild(store, keys, &cfg.prefix, &progress("reading the vault"))
        .await
        .map_err(|e| anyhow!("reading the vault's metadata: {e}"))?;
    checked(&tree, cfg, true)?;
    Ok(tree)
}

/// Progress on stderr for large vaults, every 200 objects read.
fn progress(doing: &'static str) -> impl Fn(&str, usize, usize) + Sync {
    move |what: &str, done: usize, total: usize| {
        if total >= 200 && (done.is_multiple_of(200) || done == total) {
            eprintln!("{doing}: {what} {done}/{total}");
        }
    }
}

/// A replayed tree refused unless signed as the config expects; what the replay refused and
/// the conflicts it settled are printed; a rebuilt tree (`whole`: snapshots and journals to
/// their end) is checked against, and remembered in, the config's journal heads.
fn checked(tree: &Tree, cfg: &Config, whole: bool) -> Result<()> {
    tree.check_signed(cfg.signed, &cfg.prefix)?;
    for r in &tree.refused {
        eprintln!("coldvault: {r}");
    }
    for c in &tree.conflicts {
        eprintln!("coldvault: conflict: {c}");
    }
    if whole {
        heads(tree, cfg);
    }
    Ok(())
}

/// A journal that now ends before what this machine saw of it before is said (a rollback:
/// review N8); how far each reaches now is remembered in the config for the next read.
fn heads(tree: &Tree, cfg: &Config) {
    let reach = remote_meta::Reach::of(tree);
    for r in reach.rolled_back(&cfg.journal_heads) {
        eprintln!("coldvault: WARNING: {r}");
    }
    if let Some(path) = &cfg.loaded_from {
        if let Err(e) = Config::remember_heads(path, |old| reach.heads(old)) {
            eprintln!("coldvault: could not record in {} how far the vault's journals reach: {e:#}", path.display());
        }
        if let Err(e) = Config::remember_revocations(path, &reach.revocations) {
            eprintln!("coldvault: could not keep in {} the vault's revocations: {e:#}", path.display());
        }
    }
}

/// The vault's tree as it was at `at` (Unix ms), replayed from every machine's journal
/// (`remote_meta::history`); `None`: as it is now (`load_tree`).
pub async fn load_tree_at(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, at: Option<i64>) -> Result<Tree> {
    let Some(at) = at else { return load_tree(store, keys, cfg).await };
    let h = history(store, keys, cfg, Some(at), &[]).await?;
    eprintln!("the vault as it was at {}", coldvault::clock::fmt_ms(at));
    Ok(h.tree)
}

/// The vault's history from the bucket (`remote_meta::history`), cut at `at`, following the
/// versions of `watch`; what the replay refused and the conflicts it settled are printed.
pub async fn history(
    store: &Arc<dyn ObjectStore>,
    keys: &VaultKeys,
    cfg: &Config,
    at: Option<i64>,
    watch: &[String],
) -> Result<remote_meta::history::History> {
    let h = remote_meta::history(store, keys, &cfg.prefix, &progress("reading the vault's history"), at, watch)
        .await
        .map_err(|e| anyhow!("reading the vault's history: {e}"))?;
    // A replay of journals alone: a machine whose early journal an old build compacted reaches
    // less than a rebuild does, which is no rollback (the heads are a rebuild's to check).
    checked(&h.tree, cfg, false)?;
    Ok(h)
}

/// What prune must know of every version (`remote_meta::lifetimes`), with the files' keys
/// taken at `cut`; refused unless signed as the config expects.
pub async fn lifetimes(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, cut: i64) -> Result<remote_meta::history::Lifetimes> {
    let l = remote_meta::lifetimes(store, keys, &cfg.prefix, &progress("reading the vault's history"), cut)
        .await
        .map_err(|e| anyhow!("reading the vault's history: {e}"))?;
    checked(&l.tree, cfg, false)?;
    Ok(l)
}

/// A time given with `--at`.
pub fn parse_at(s: &str) -> std::result::Result<i64, String> {
    // The forms `.coldvault/at/NAME` takes, so a name copied from there works here.
    coldvault::fs::at::parse_view_name(s)
        .ok_or_else(|| format!("{s:?} is not a time: write it as 2026-11-20, 2026-11-20T10:00 or 2026-11-20T10:00:30 (UTC; or 10-00-30)"))
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
