//! `coldvault status`: ask a mount's daemon for its pending uploads, failures, restores,
//! conflicts and S3 request counts, and print them (or the JSON as it came).

use super::{human, runtime};
use anyhow::{bail, Result};
use clap::Args;
use coldvault::control::{self, Reply, Request};
use std::path::PathBuf;

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
    mountpoint: PathBuf,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let rt = runtime()?;
    match rt.block_on(control::call(&a.mountpoint, &Request::Status))? {
        Reply::Status(s) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(())
        }
        Reply::Error { message } => bail!(message),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn print_status(s: &coldvault::fs::Status) {
    let eta = s.eta_seconds.map(|e| format!(", ETA {e}s")).unwrap_or_default();
    println!("pending:  {} file(s), {}{eta}", s.pending_files, human(s.pending_bytes));
    println!("uploaded: {} file(s), {}", s.uploaded_files, human(s.uploaded_bytes));
    println!("failed:   {} file(s)", s.failed_files);
    for f in &s.failures {
        println!("  {} [{} after {} attempt(s)]: {}", f.path, f.state, f.attempts, f.error);
    }
    if !s.restores.is_empty() {
        println!("restores:");
        for r in &s.restores {
            let when = match r.state.as_str() {
                "ready" => format!("until {}", r.available_until.clone().unwrap_or_default()),
                "refused" | "failed" => r.reason.clone().unwrap_or_default(),
                _ => format!("expected by {}", r.expected_ready_by),
            };
            println!("  {} [{}; {} {}; {}]: {when}", r.path, r.state, r.class, r.tier, human(r.size));
        }
    }
    if s.conflicts_total > 0 {
        println!(
            "conflicts: {} between machines, settled when this index was rebuilt (conflict copies are named \"NAME (conflict from MACHINE DATE)\"):",
            s.conflicts_total
        );
        for c in &s.conflicts {
            println!("  {c}");
        }
        if s.conflicts_total > s.conflicts.len() as u64 {
            println!("  ... and {} more (all in the mount's log)", s.conflicts_total - s.conflicts.len() as u64);
        }
    }
    if !s.machine_token.is_empty() {
        println!(
            "machine:  {} (a write-only machine's uploads are believed once a full machine ran `coldvault machine allow` with it)",
            s.machine_token
        );
    }
    let reqs: Vec<String> = s.requests.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("S3 requests since mount: {}", if reqs.is_empty() { "none".into() } else { reqs.join(" ") });
}
