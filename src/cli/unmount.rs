//! `coldvault unmount`: unmount, then wait for the mount's daemon to finish its shutdown so a
//! new mount can take the cache dir; pending uploads stay queued for the next mount.

use super::mounts::is_mounted;
use super::runtime;
use anyhow::{bail, Context, Result};
use coldvault::control::{self, Reply, Request};
use std::path::Path;
use std::time::Duration;

pub fn run(mp: &Path) -> Result<()> {
    let mp = std::fs::canonicalize(mp).with_context(|| format!("{} does not exist", mp.display()))?;
    if !is_mounted(&mp) {
        bail!("{} is not mounted", mp.display());
    }
    let pid = runtime()?.block_on(control::call(&mp, &Request::Pid)).ok().and_then(|r| match r {
        Reply::Pid { pid } => Some(pid),
        _ => None,
    });
    let st = std::process::Command::new("fusermount3").arg("-u").arg(&mp).status();
    if !matches!(st, Ok(s) if s.success()) {
        let st2 = std::process::Command::new("umount").arg(&mp).status();
        if !matches!(st2, Ok(s) if s.success()) {
            bail!("could not unmount {} (files still open?)", mp.display());
        }
    }
    // Wait for the daemon to finish its shutdown so a new mount can take the cache dir.
    if let Some(pid) = pid {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            if std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("unmounted {}; pending uploads stay queued for the next mount", mp.display());
    Ok(())
}
