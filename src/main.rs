//! The `coldvault` binary: parse the command line and run the command, each in its own module
//! under `cli/`. `anyhow` lives in the binary (`main.rs`, `cli/`) and in `config` only.

// Every `unsafe` block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Cmd};

mod cli;

/// Buffers of more than 4 MiB (8 MiB upload parts) are mapped and unmapped on their own. By
/// default glibc raises its mmap threshold after each such free, and from then on keeps 8 MiB
/// part buffers in per-thread heaps that it seldom returns: the daemon's peak RSS while
/// uploading a 1 GiB file was ~200 MiB for ~40 MiB of live buffers. A fixed threshold stops
/// that; at 4 MiB (not lower) the body of each small object (a 1 MiB photo is just over 1 MiB
/// encrypted) comes from the heap: mapping and unmapping one per file cost page faults, and
/// each unmap interrupts every other CPU to flush its TLB.
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() {
    bound_malloc_retention();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "coldvault=info,warn".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
    if let Err(e) = run(cli) {
        eprintln!("coldvault: {e:#}");
        std::process::exit(1);
    }
}

/// One function per command.
fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init(a) => cli::init::run(a),
        Cmd::Mount(a) => cli::mount::run(a),
        Cmd::Ls(a) => cli::ls::run(a),
        Cmd::Get(a) => cli::get::run(a),
        Cmd::Verify(a) => cli::verify::run(a),
        Cmd::Share(a) => cli::share::run(a),
        Cmd::Policy(a) => cli::policy::run(a),
        Cmd::Prune(a) => cli::prune::run(a),
        Cmd::Lifecycle(a) => cli::lifecycle::run(a),
        Cmd::Key { cmd } => cli::key::run(cmd),
        Cmd::Machine { cmd } => cli::machine::run(cmd),
        Cmd::Restore(a) => cli::restore::run(a),
        Cmd::Unmount { mountpoint } => cli::unmount::run(&mountpoint),
        Cmd::Flush(a) => cli::flush::run(a),
        Cmd::Status(a) => cli::status::run(a),
        Cmd::Retry { mountpoint } => cli::retry::run(&mountpoint),
    }
}
