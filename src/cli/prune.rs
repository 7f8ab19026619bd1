//! `coldvault prune`: delete the versions no file has held for longer than `--keep-within`,
//! printing first what goes, what stays and why, and what early deletion costs (`prune.rs`).

use super::human;
use super::pass::{load_unlocked, PassArgs};
use super::runtime;
use super::tree::{lifetimes, load_tree};
use anyhow::{anyhow, Result};
use clap::Args;
use coldvault::clock::fmt_ms;
use coldvault::prune::{self, Hold, Plan, Rules};
use coldvault::remote_meta::shown;
use coldvault::store::ObjectStore;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct PruneArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Keep every version a file held within this long before now: 90d, 12w, 6m, 1y.
    #[arg(long, value_parser = prune::parse_duration, value_name = "DURATION")]
    keep_within: i64,
    /// Also keep the N newest versions uploaded for each path, however old (its current
    /// version counts as one; a removed file keeps its last N too).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: usize,
    /// Delete versions still inside their storage class's minimum duration (STANDARD_IA and
    /// ONEZONE_IA 30 days, GLACIER_IR and GLACIER 90, DEEP_ARCHIVE 180): S3 charges the rest.
    #[arg(long)]
    allow_early_deletion: bool,
    /// Print what would be deleted, version by version, and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete even though reading the vault reported something wrong (a batch not believed,
    /// records missing, a rollback): without it, prune then only reports.
    #[arg(long)]
    force: bool,
}

pub fn run(a: PruneArgs) -> Result<()> {
    let PruneArgs { config, pass, keep_within, keep_last, allow_early_deletion, dry_run, force } = a;
    let (cfg, keys) = load_unlocked(config, &pass)?;
    let rules = Rules { keep_within_ms: keep_within, keep_last, allow_early_deletion, lock_days: cfg.object_lock_days };
    let rt = runtime()?;
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = super::s3::connect_vault(&cfg).await?;
        let now = coldvault::clock::now_ms();
        let cut = now - keep_within;
        let l = lifetimes(&store, &keys, &cfg, cut).await?;
        // What a mount would see (snapshots, journals, adopted objects) is kept too.
        let tree = load_tree(&store, &keys, &cfg).await?;
        // A vault read with doubts (what the lines above printed) is not pruned unless told:
        // what was refused or is missing could be what would show a version still needed.
        let doubts = l.tree.refused.len() + tree.refused.len() + coldvault::remote_meta::Reach::of(&tree).rolled_back(&cfg.journal_heads).len();
        let rebuilt: HashSet<String> = tree.nodes.into_values().filter_map(|n| n.key).collect();
        let data = store.list(&format!("{}d/", cfg.prefix)).await?;
        let snaps = store.list(&format!("{}s/", cfg.prefix)).await?;
        let plan = prune::plan(&l, &rebuilt, &data, &snaps, &cfg.prefix, now, &rules);
        report(&plan, cut, &rules, dry_run);
        if dry_run {
            println!("--dry-run: nothing was deleted");
            return Ok(());
        }
        if doubts > 0 && !force {
            anyhow::bail!("reading the vault reported {doubts} problems (above): nothing was deleted; look into them, then run prune again with --force to delete anyway");
        }
        if plan.delete.is_empty() && plan.snapshots.is_empty() {
            println!("nothing to delete");
            return Ok(());
        }
        let total = plan.delete.len() + plan.snapshots.len();
        let done = |n: usize, total: usize| {
            if n.is_multiple_of(100) && n < total {
                eprintln!("deleted {n}/{total}");
            }
        };
        match prune::execute(store.as_ref(), &plan, &done).await {
            Ok(n) => {
                println!("deleted {n} objects, {}", human(plan.delete_bytes()));
                Ok(())
            }
            Err((n, key, e)) => Err(anyhow!(
                "deleting {key} failed after {n} of {total} objects were deleted: {e}\nnothing else was touched; run the same prune again to go on"
            )),
        }
    })
}

/// What prune found: what goes, what stays and why, before anything is deleted.
fn report(p: &Plan, cut: i64, rules: &Rules, each: bool) {
    let mut why = format!("versions no file has held since {} (--keep-within)", &fmt_ms(cut)[..16]);
    if rules.keep_last > 0 {
        why.push_str(&format!(", except the {} newest of each path", rules.keep_last));
    }
    println!("prune: {why}");
    let early: Vec<_> = p.delete.iter().filter(|d| d.early_charge > 0.0).collect();
    let mut line = format!("  delete  {} versions, {}", p.delete.len(), human(p.delete.iter().map(|d| d.size).sum()));
    if !early.is_empty() {
        line.push_str(&format!("; {} of them inside their class's minimum duration: early-deletion charge {}", early.len(), usd(p.early_charge())));
    }
    println!("{line}");
    if !p.snapshots.is_empty() {
        println!(
            "          {} older snapshots, {} (a newer one of the same machine is believed)",
            p.snapshots.len(),
            human(p.snapshots.iter().map(|s| s.size).sum())
        );
    }
    for (hold, what) in
        [(Hold::MinimumDuration, "inside their storage class's minimum duration"), (Hold::ObjectLock, "inside their Object Lock retention")]
    {
        let h: Vec<_> = p.held.iter().filter(|h| h.hold == hold).collect();
        if let Some(last) = h.iter().map(|h| h.until_ms).max() {
            let bytes: u64 = h.iter().map(|h| h.size).sum();
            let mut line = format!("  keep    {} versions, {}, {what} (the last until {})", h.len(), human(bytes), &fmt_ms(last)[..10]);
            if hold == Hold::MinimumDuration {
                let now = coldvault::clock::now_ms();
                let charge: f64 = h.iter().map(|h| prune::charge(&h.class, h.size, h.until_ms - now)).sum();
                line.push_str(&format!("; --allow-early-deletion deletes them for {}", usd(charge)));
            }
            println!("{line}");
        }
    }
    println!("  keep    {} versions, {}: held by a file now or since the cut, or among the newest kept", p.kept.0, human(p.kept.1));
    if p.orphans.0 > 0 {
        println!(
            "  keep    {} objects no journal names, {} (uploads whose journal batch never landed: a rebuild adopts them)",
            p.orphans.0,
            human(p.orphans.1)
        );
    }
    println!("  keep    every journal batch (the vault's history; no file data)");
    for (m, t) in &p.quiet {
        println!(
            "  note: machine {m}'s newest record is from {}, before the cut: a change it made offline and has not sent could still name a version this removes",
            &fmt_ms(*t)[..16]
        );
    }
    if each {
        for d in &p.delete {
            let path = if d.path.is_empty() { "(set aside unused)".to_string() } else { shown(&d.path).into_owned() };
            println!("  - {}  {:>10}  {:<13}  {path}", d.key, human(d.size), d.class.as_str());
        }
        for s in &p.snapshots {
            println!("  - {}  {:>10}  snapshot", s.key, human(s.size));
        }
    }
}

/// An estimate in dollars, as a person reads it.
fn usd(x: f64) -> String {
    if x > 0.0 && x < 0.005 {
        "under $0.01".into()
    } else {
        format!("about ${x:.2}")
    }
}
