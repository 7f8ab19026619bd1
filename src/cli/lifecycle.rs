//! `coldvault lifecycle`: the bucket lifecycle rules a vault wants (`store::lifecycle`),
//! printed for `aws s3api put-bucket-lifecycle-configuration` or applied beside the bucket's
//! other rules.

use super::runtime;
use super::s3::connect;
use anyhow::{anyhow, bail, Result};
use clap::Args;
use coldvault::config::Config;
use coldvault::store::lifecycle::{self, ID_PREFIX};
use std::path::PathBuf;

#[derive(Args)]
pub struct LifecycleArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the rules as JSON (for `aws s3api put-bucket-lifecycle-configuration
    /// --lifecycle-configuration file://rules.json`: that call replaces every rule of the bucket).
    #[arg(long, conflicts_with = "apply")]
    print: bool,
    /// Put the rules in the bucket, replacing this vault's earlier ones and keeping the
    /// bucket's other rules (admin credentials with s3:Get/PutLifecycleConfiguration).
    #[arg(long)]
    apply: bool,
    /// Move file data to CLASS DAYS after upload, e.g. `--transition 30=GLACIER_IR
    /// --transition 180=DEEP_ARCHIVE` (metadata never moves: every rebuild reads it). Opening
    /// a moved file then starts a restore, as for files written to that class.
    #[arg(long, value_parser = lifecycle::parse_transition, value_name = "DAYS=CLASS")]
    transition: Vec<(i32, String)>,
    /// In a versioned bucket (Object Lock), remove a version this many days after a delete
    /// (prune's) made it noncurrent, and the delete markers left; default 30 when the vault
    /// has an Object Lock retention, else no such rule. Locked versions stay until their
    /// retention ends whatever this says.
    #[arg(long, value_name = "DAYS")]
    noncurrent_days: Option<i32>,
}

pub fn run(a: LifecycleArgs) -> Result<()> {
    if !a.print && !a.apply {
        bail!("say --print (show the rules) or --apply (put them in the bucket)");
    }
    let cfg = Config::load(&a.config.unwrap_or_else(coldvault::config::default_config_path))?;
    let noncurrent = a.noncurrent_days.or(cfg.object_lock_days.map(|_| 30));
    let rules = lifecycle::rules(&cfg.prefix, &a.transition, noncurrent).map_err(|e| anyhow!("--transition: {e}"))?;
    if a.print {
        println!("{}", serde_json::to_string_pretty(&lifecycle::to_json(&rules))?);
        return Ok(());
    }
    let rt = runtime()?;
    rt.block_on(async {
        let store = connect(&cfg).await?;
        let ours = format!("{ID_PREFIX}{}:", cfg.prefix);
        let kept = store.apply_lifecycle(&ours, &rules).await.map_err(|e| anyhow!("putting the lifecycle rules in bucket {}: {e}", cfg.bucket))?;
        for r in &rules {
            println!("applied {}", r.id);
        }
        println!("kept the bucket's {kept} other rules");
        Ok(())
    })
}
