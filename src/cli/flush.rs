//! `coldvault flush`: ask a mount's daemon to seal everything written so far; with --wait,
//! return once it is all in S3 (or name what is still open for writing).

use super::runtime;
use anyhow::{bail, Result};
use clap::Args;
use coldvault::control::{self, Reply, Request};
use std::path::PathBuf;

#[derive(Args)]
pub struct FlushArgs {
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds, naming what is still pending (uploads
    /// go on in the background).
    #[arg(long, value_name = "SECS", requires = "wait")]
    timeout: Option<u64>,
    mountpoint: PathBuf,
}

pub fn run(a: FlushArgs) -> Result<()> {
    let FlushArgs { wait, timeout, mountpoint } = a;
    let rt = runtime()?;
    match rt.block_on(control::call(&mountpoint, &Request::Flush { wait, timeout_secs: timeout }))? {
        Reply::Flushed { uploaded_files, failed_files, still_open_for_write, open_for_write } => {
            if failed_files > 0 {
                bail!("{failed_files} file(s) failed to upload and stay staged; see `coldvault status {}`", mountpoint.display());
            }
            if wait && still_open_for_write > 0 {
                // Their content so far is safe on local disk; it uploads once they are closed.
                let mut names = open_for_write.iter().map(|p| format!("  {p}")).collect::<Vec<_>>();
                if still_open_for_write > open_for_write.len() as u64 {
                    names.push(format!("  … and {} more", still_open_for_write - open_for_write.len() as u64));
                }
                bail!(
                    "everything else is in S3; {still_open_for_write} file(s) are still open for writing and upload once closed:\n{}",
                    names.join("\n")
                );
            }
            if wait {
                println!("flushed: everything written before this command is in S3 ({uploaded_files} files uploaded in total)");
            } else {
                println!("sealing started; {still_open_for_write} file(s) still open for writing");
            }
            Ok(())
        }
        Reply::Error { message } => bail!(message),
        other => bail!("unexpected reply {other:?}"),
    }
}
