//! `coldvault ls`: list the vault from the bucket (no mount needed), like `ls -l`.

use super::pass::{load_unlocked, PassArgs};
use super::runtime;
use super::s3::connect;
use super::tree::{load_tree, norm};
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
    vault_path: Option<String>,
}

pub fn run(a: LsArgs) -> Result<()> {
    let LsArgs { config, pass, recursive, vault_path } = a;
    let (cfg, keys) = load_unlocked(config, &pass)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(connect(&cfg).await?);
        ls(&store, &keys, &cfg, vault_path, recursive).await
    })
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

async fn ls(store: &Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, path: Option<String>, recursive: bool) -> Result<()> {
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
