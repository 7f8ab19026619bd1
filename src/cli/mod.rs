//! The `coldvault` command line: the clap types of the top-level commands, one module per
//! command (its flags and what it does), and the helpers several commands share.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub mod flush;
pub mod get;
pub mod init;
pub mod key;
pub mod lifecycle;
pub mod ls;
pub mod machine;
pub mod mount;
pub mod mounts;
pub mod pass;
pub mod policy;
pub mod prune;
pub mod restore;
pub mod retry;
pub mod s3;
pub mod share;
pub mod status;
pub mod tree;
pub mod unmount;
pub mod verify;

#[derive(Parser)]
#[command(name = "coldvault", version, about = "Mount an S3 bucket as an encrypted, write-mostly folder")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a vault: key pair, wrapped private key and descriptor in the bucket, local config.
    Init(init::InitArgs),
    /// Mount the vault at MOUNTPOINT (a daemon unless --foreground).
    Mount(mount::MountArgs),
    /// List the vault from the bucket (no mount needed).
    Ls(ls::LsArgs),
    /// Decrypt files or folders from the bucket into a local directory (no mount needed).
    Get(get::GetArgs),
    /// Check that every uploaded file in the index is in the bucket with the right size and class.
    Verify(verify::VerifyArgs),
    /// Print the minimal IAM policy for a mode: write-only, mount, restore or admin.
    Policy(policy::PolicyArgs),
    /// Delete versions no file has held for longer than --keep-within (admin credentials).
    Prune(prune::PruneArgs),
    /// The bucket lifecycle rules the vault wants: --print them, or --apply them.
    Lifecycle(lifecycle::LifecycleArgs),
    /// Print a tested smb.conf share section for re-exporting a mount with Samba.
    Share(share::ShareArgs),
    /// Manage the vault key.
    Key {
        #[command(subcommand)]
        cmd: key::KeyCmd,
    },
    /// Which machines' signing keys the vault believes (run on a full machine).
    Machine {
        #[command(subcommand)]
        cmd: machine::MachineCmd,
    },
    /// Request restores of archived files or whole folders inside a mount.
    Restore(restore::RestoreArgs),
    /// Unmount; pending uploads stay queued and resume on the next mount.
    Unmount { mountpoint: PathBuf },
    /// Seal everything written so far; with --wait, return once it is all in S3.
    Flush(flush::FlushArgs),
    /// Show pending uploads, failures and S3 request counts.
    Status(status::StatusArgs),
    /// Requeue uploads parked after a permanent error (once the cause is fixed).
    Retry { mountpoint: PathBuf },
}

/// The tokio runtime a command runs its S3 and control-socket calls on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?)
}

/// A byte count for people (e.g. `1.5 GiB`).
pub fn human(b: u64) -> String {
    coldvault::text::human_bytes(b)
}
