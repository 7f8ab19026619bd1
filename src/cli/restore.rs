//! `coldvault restore`: request restores of archived files or whole folders inside a mount,
//! through each mount's daemon: first the estimated bill, then the request.

use super::mounts::find_mount;
use super::{human, runtime};
use anyhow::{bail, Result};
use clap::Args;
use coldvault::control::{self, Reply, Request};
use std::path::PathBuf;

#[derive(Args)]
pub struct RestoreArgs {
    /// Expedited, Standard or Bulk (default: by storage class, from the config).
    #[arg(long)]
    tier: Option<String>,
    /// Days the restored copies stay available (default from the config).
    #[arg(long)]
    days: Option<i32>,
    /// Only print what would be restored and what it would cost.
    #[arg(long)]
    dry_run: bool,
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(a: RestoreArgs) -> Result<()> {
    let RestoreArgs { tier, days, dry_run, paths } = a;
    if let Some(t) = &tier {
        if coldvault::vault::Tier::parse(t).is_none() {
            bail!("unknown tier {t:?}; one of {:?}", coldvault::vault::Tier::NAMES);
        }
    }
    if days.is_some_and(|d| d < 1) {
        bail!("--days must be at least 1");
    }
    let mut by_mount: std::collections::BTreeMap<PathBuf, Vec<String>> = Default::default();
    for p in &paths {
        let (m, rel) = find_mount(p)?;
        by_mount.entry(m).or_default().push(rel);
    }
    let rt = runtime()?;
    for (mnt, rels) in by_mount {
        // First the bill, then the request.
        let plan = rt.block_on(control::call(&mnt, &Request::Restore { paths: rels.clone(), tier: tier.clone(), days, dry_run: true }))?;
        let Reply::Restore { files, bytes, cost_usd, .. } = plan else { bail!("unexpected reply {plan:?}") };
        println!("{files} archived file(s), {} to restore, estimated retrieval cost ${cost_usd:.2}", human(bytes));
        if dry_run || files == 0 {
            continue;
        }
        match rt.block_on(control::call(&mnt, &Request::Restore { paths: rels, tier: tier.clone(), days, dry_run: false }))? {
            Reply::Restore { requested, .. } => {
                println!("requested {requested} restore(s); follow them in `coldvault status {}` or NAME.restore-status", mnt.display())
            }
            Reply::Error { message } => bail!(message),
            other => bail!("unexpected reply {other:?}"),
        }
    }
    Ok(())
}
