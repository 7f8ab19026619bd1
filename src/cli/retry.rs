//! `coldvault retry`: ask a mount's daemon to requeue the uploads it parked after a permanent
//! error.

use super::runtime;
use anyhow::{bail, Result};
use coldvault::control::{self, Reply, Request};
use std::path::Path;

pub fn run(mountpoint: &Path) -> Result<()> {
    let rt = runtime()?;
    match rt.block_on(control::call(mountpoint, &Request::RetryFailed))? {
        Reply::Retried { uploads } => {
            println!("requeued {uploads} failed upload(s)");
            Ok(())
        }
        Reply::Error { message } => bail!(message),
        other => bail!("unexpected reply {other:?}"),
    }
}
