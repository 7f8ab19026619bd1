//! `coldvault ls`: list the vault from the bucket (no mount needed), like `ls -l`.

use super::pass::{load_unlocked, PassArgs};
use super::runtime;
use super::tree::{history, load_tree_at, norm, parse_at};
use anyhow::{bail, Result};
use clap::Args;
use coldvault::config::Config;
use coldvault::crypto::VaultKeys;
use coldvault::remote_meta::{self, NodeKind};
use coldvault::store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct LsArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// List everything below the path.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// The vault as it was at this time (UTC: 2026-11-20T10:00), from every machine's journal.
    #[arg(long, value_parser = parse_at, conflicts_with = "versions")]
    at: Option<i64>,
    /// Every version the file at the path has had (deleted ones too, and those kept as
    /// conflict copies): from when to when, size, class, the machine that wrote it.
    #[arg(long, requires = "vault_path", conflicts_with = "recursive")]
    versions: bool,
    vault_path: Option<String>,
}

pub fn run(a: LsArgs) -> Result<()> {
    let LsArgs { config, pass, recursive, at, versions, vault_path } = a;
    let (cfg, keys) = load_unlocked(config, &pass)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = super::s3::connect_vault(&cfg).await?;
        match vault_path {
            Some(p) if versions => ls_versions(&store, &keys, &cfg, &p).await,
            p => ls(&store, &keys, &cfg, p, recursive, at).await,
        }
    })
}

/// `ls --versions PATH`: one line per version, oldest first.
async fn ls_versions(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, path: &str) -> Result<()> {
    let base = norm(path)?;
    if base.is_empty() {
        bail!("--versions lists the versions of one file: give its path");
    }
    let h = history(store, keys, cfg, None, std::slice::from_ref(&base)).await?;
    if h.versions.is_empty() {
        match h.tree.nodes.get(&base) {
            Some(n) if n.kind == NodeKind::Dir => bail!("{base}: a folder; --versions lists the versions of one file"),
            _ => bail!("{base}: no version of a file with this path in the vault's history"),
        }
    }
    // Versions whose object is gone (pruned) are listed, and said to be.
    let present: std::collections::HashSet<String> = store.list(&format!("{}d/", cfg.prefix)).await?.into_iter().map(|o| o.key).collect();
    println!("{:<19}  {:<19}  {:>12}  {:<19}  {:<16}  path", "from (UTC)", "until", "size", "class at upload", "machine");
    for v in &h.versions {
        let until = v.to_ms.map(|t| coldvault::clock::fmt_ms(t)[..19].to_string()).unwrap_or_else(|| "now".into());
        let mut name = remote_meta::shown(&v.path).into_owned();
        if v.asked != v.path {
            name = format!("{name}  (a conflict copy of {})", remote_meta::shown(&v.asked));
        }
        if !v.node.key.as_ref().is_some_and(|k| present.contains(k)) {
            name.push_str("  (pruned: its object is no longer in the bucket)");
        }
        println!(
            "{:<19}  {:<19}  {:>12}  {:<19}  {:<16}  {name}",
            &coldvault::clock::fmt_ms(v.from_ms)[..19],
            until,
            v.node.size,
            v.node.class.as_deref().unwrap_or("-"),
            v.machine
        );
    }
    Ok(())
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

async fn ls(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, path: Option<String>, recursive: bool, at: Option<i64>) -> Result<()> {
    let tree = load_tree_at(store, keys, cfg, at).await?;
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
        let when = coldvault::clock::fmt_ms(i64::try_from(n.mtime_ns.div_euclid(1_000_000)).unwrap_or(i64::MAX));
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
