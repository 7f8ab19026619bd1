//! `coldvault policy`: print the minimal IAM policy for a mode (write-only, mount, restore or admin).

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct PolicyArgs {
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value = "")]
    prefix: String,
    /// write-only (PutObject, never over an object), mount (a full mount, no Delete), restore
    /// (read and RestoreObject) or admin (everything, Delete included; `full` is its old name).
    #[arg(long, default_value = "admin")]
    mode: String,
    /// write-only: limit journal batches and snapshots to this machine's own id (printed by
    /// `init --write-only`), so its credential cannot write under another machine's.
    #[arg(long, value_name = "ID")]
    machine: Option<String>,
}

pub fn run(a: PolicyArgs) -> Result<()> {
    println!("{}", policy(&a.bucket, &a.prefix, &a.mode, a.machine.as_deref())?);
    Ok(())
}

fn policy(bucket: &str, prefix: &str, mode: &str, machine: Option<&str>) -> Result<String> {
    if let Some(m) = machine {
        if mode != "write-only" {
            bail!("--machine limits a write-only credential to its machine's journal; mode {mode} takes no --machine");
        }
        if !coldvault::crypto::sign::is_machine_id(m) {
            bail!("--machine {m:?} is not a machine id (16 hex digits, as `init --write-only` prints)");
        }
    }
    let p = coldvault::config::normalize_prefix(prefix)?;
    let objects = format!("arn:aws:s3:::{bucket}/{p}*");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let list = serde_json::json!({
        "Sid": "ListVault", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn,
        "Condition": {"StringLike": {"s3:prefix": [format!("{p}*")]}}
    });
    let writable: Vec<String> = match machine {
        Some(m) => {
            vec![format!("arn:aws:s3:::{bucket}/{p}d/*"), format!("arn:aws:s3:::{bucket}/{p}j/{m}/*"), format!("arn:aws:s3:::{bucket}/{p}s/{m}/*")]
        }
        None => ["d", "j", "s"].iter().map(|d| format!("arn:aws:s3:::{bucket}/{p}{d}/*")).collect(),
    };
    let statements = match mode {
        // PutObject covers CreateMultipartUpload, UploadPart and CompleteMultipartUpload; only
        // where a machine puts data objects, journal batches and snapshots (not `vault.json`,
        // not the vault's statements under `m/`: a leaked write-only credential can neither
        // replace the descriptor nor litter the statements). A request that creates an object
        // (PutObject, CompleteMultipartUpload) must say If-None-Match, so a leaked credential
        // cannot overwrite any object, of this machine or another (security review N7; every
        // PUT coldvault makes says it); CreateMultipartUpload and UploadPart cannot say it and
        // create nothing (`s3:ObjectCreationOperation` false), as AWS's guide to enforcing
        // conditional writes does it. Plus reading the public vault descriptor, for
        // `init --write-only` (which checks it against the fingerprint given).
        "write-only" => vec![
            serde_json::json!({"Sid": "CreateOnlyNewObjects", "Effect": "Allow", "Action": ["s3:PutObject"],
                "Resource": writable, "Condition": {"Null": {"s3:if-none-match": "false"}}}),
            serde_json::json!({"Sid": "UploadParts", "Effect": "Allow", "Action": ["s3:PutObject"],
                "Resource": writable, "Condition": {"Bool": {"s3:ObjectCreationOperation": "false"}}}),
            serde_json::json!({"Sid": "ReadDescriptor", "Effect": "Allow", "Action": ["s3:GetObject"],
                "Resource": format!("arn:aws:s3:::{bucket}/{p}coldvault/vault.json")}),
        ],
        "restore" => vec![
            serde_json::json!({"Sid": "ReadVault", "Effect": "Allow", "Action": ["s3:GetObject", "s3:RestoreObject"], "Resource": objects}),
            list,
        ],
        // What a full mount needs, and no Delete: a leaked mount credential cannot remove a
        // version. (The mount's removal of its older snapshots then fails with a warning; they
        // stay until someone with `admin` rights removes them.)
        "mount" => vec![
            serde_json::json!({"Sid": "Vault", "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:RestoreObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": objects}),
            list,
            // The weekly sweep of multipart uploads abandoned for over a week (their parts are
            // billed until aborted).
            serde_json::json!({"Sid": "SweepMultipart", "Effect": "Allow", "Action": ["s3:ListBucketMultipartUploads"], "Resource": bucket_arn}),
        ],
        // Everything a mount does, and Delete (the mount removes its older snapshots; `prune`),
        // and the bucket's lifecycle rules (`lifecycle --apply` reads them to keep the others).
        // `full` is its earlier name.
        "admin" | "full" => vec![
            serde_json::json!({"Sid": "Vault", "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:RestoreObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": objects}),
            list,
            // The weekly sweep of multipart uploads abandoned for over a week (their parts are
            // billed until aborted).
            serde_json::json!({"Sid": "SweepMultipart", "Effect": "Allow", "Action": ["s3:ListBucketMultipartUploads"], "Resource": bucket_arn}),
            serde_json::json!({"Sid": "Lifecycle", "Effect": "Allow", "Action": ["s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"], "Resource": bucket_arn}),
        ],
        other => bail!("unknown mode {other:?}: write-only, mount, restore or admin"),
    };
    Ok(serde_json::to_string_pretty(&serde_json::json!({"Version": "2012-10-17", "Statement": statements}))?)
}
