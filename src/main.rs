//! The `coldvault` command line: parse flags into a validated configuration and hand over to
//! the library. `anyhow` lives here and in `config` only.

// Every `unsafe` block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use coldvault::config::{self, Config};
use coldvault::control::{self, Reply, Request};
use coldvault::crypto::{CryptoError, VaultDescriptor, VaultKeys};
use coldvault::store::{s3::S3Store, ObjectStore, PutOptions, StoreError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

mod offline;
mod share;

#[derive(Parser)]
#[command(name = "coldvault", version, about = "Mount an S3 bucket as an encrypted, write-mostly folder")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct PassArgs {
    /// Read the passphrase from this file (first line). Otherwise COLDVAULT_PASSPHRASE, or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Internal: the passphrase arrives on stdin (used when the daemon forks itself).
    #[arg(long, hide = true)]
    passphrase_stdin: bool,
    /// Use a recovery key (from `coldvault key export-recovery`) instead of the passphrase.
    #[arg(long)]
    recovery_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a vault: key pair, wrapped private key and descriptor in the bucket, local config.
    Init {
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        endpoint_url: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Storage class for files no rule matches.
        #[arg(long, default_value = "STANDARD")]
        default_storage_class: String,
        #[command(flatten)]
        pass: PassArgs,
        /// Set up a write-only machine: it keeps only the vault's public key (no passphrase,
        /// no private key), read from the bucket's vault.json and checked against --fingerprint.
        #[arg(long, requires = "fingerprint")]
        write_only: bool,
        /// The vault's fingerprint, from `coldvault key fingerprint` on a full machine.
        #[arg(long, requires = "write_only")]
        fingerprint: Option<String>,
    },
    /// Mount the vault at MOUNTPOINT (a daemon unless --foreground).
    Mount {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// Seconds a closed file must stay untouched before it is encrypted and queued.
        #[arg(long)]
        settle: Option<f64>,
        /// Bytes of uploaded objects kept locally for reads (e.g. 2G). Default 0.
        #[arg(long, default_value = "0")]
        read_cache: String,
        /// The most file content all readers together may have requested from S3 ahead of what
        /// they read (e.g. 256M): the memory that reading back may use; one file reads at most
        /// half of it ahead. Default 128M.
        #[arg(long, default_value = "128M")]
        read_ahead: String,
        /// The largest file accepted (e.g. 500G): writing or truncating beyond it fails with
        /// EFBIG ("File too large"). Default and maximum: what fits in one S3 object (5 TiB).
        #[arg(long)]
        max_file_size: Option<String>,
        /// The most bytes of file content one user may have waiting for upload on the staging
        /// disk (e.g. 50G): writes beyond it fail with EDQUOT ("Disk quota exceeded") until
        /// uploads catch up, so one writer cannot fill the disk for all. Default: none.
        #[arg(long)]
        staging_quota: Option<String>,
        #[arg(long)]
        foreground: bool,
        /// Let other users (e.g. Samba's smbd) access the mount.
        #[arg(long)]
        allow_other: bool,
        /// Objects uploaded concurrently.
        #[arg(long, default_value_t = 4)]
        upload_concurrency: usize,
        /// Cap upload bandwidth, bytes per second (e.g. 2M). Default: unlimited.
        #[arg(long)]
        upload_bandwidth: Option<String>,
        /// Storage class for paths matching GLOB (e.g. 'raw/**=DEEP_ARCHIVE'); repeatable, before the config's rules.
        #[arg(long = "class-rule", value_name = "GLOB=CLASS")]
        class_rules: Vec<String>,
        /// Seconds between status checks of pending restores (default: by tier, minutes to an hour).
        #[arg(long)]
        restore_poll: Option<f64>,
        /// Download restored objects into the cache so they stay readable after the restore expires.
        #[arg(long)]
        fetch_restored: bool,
        /// Daily budget for restores triggered by opening files (e.g. 10GiB). Overrides the config.
        #[arg(long)]
        restore_budget: Option<String>,
        /// Seconds between storage-class refreshes by listing the bucket (0: off). Overrides the config.
        #[arg(long)]
        class_refresh: Option<f64>,
        /// Write-only: needs only the vault's public key (no passphrase) and only s3:PutObject.
        #[arg(long)]
        write_only: bool,
        /// Override the config's S3 endpoint for this mount (e.g. a gateway or proxy).
        #[arg(long)]
        endpoint_url: Option<String>,
        mountpoint: PathBuf,
    },
    /// List the vault from the bucket (no mount needed).
    Ls {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// List everything below the path.
        #[arg(short = 'R', long)]
        recursive: bool,
        vault_path: Option<String>,
    },
    /// Decrypt files or folders from the bucket into a local directory (no mount needed).
    Get {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// Request restores of archived files instead of only reporting them.
        #[arg(long)]
        restore: bool,
        /// Restore owners (uid, gid) and keep setuid/setgid bits; root only. Without it,
        /// files belong to whoever runs `get` and setuid/setgid bits are dropped.
        #[arg(long)]
        preserve_owner: bool,
        /// Files downloaded at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// VAULT_PATH... LOCAL_DIR
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Check that every uploaded file in the index is in the bucket with the right size and class.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// Also download, decrypt and check the SHA-256 of every non-archived object.
        #[arg(long)]
        deep: bool,
    },
    /// Print the minimal IAM policy for a mode: full, write-only or restore.
    Policy {
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "full")]
        mode: String,
    },
    /// Print a tested smb.conf share section for re-exporting a mount with Samba.
    Share {
        /// Share name.
        #[arg(long = "samba", value_name = "NAME")]
        samba: String,
        mountpoint: PathBuf,
        /// Samba module directory to check for the VFS modules the section uses (default: the
        /// MODULESDIR of the local `smbd -b`).
        #[arg(long, value_name = "DIR")]
        modules_dir: Option<PathBuf>,
        /// Print the section without checking the local Samba (e.g. for another machine).
        #[arg(long)]
        no_check: bool,
    },
    /// Manage the vault key.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Which machines' signing keys the vault believes (run on a full machine).
    Machine {
        #[command(subcommand)]
        cmd: MachineCmd,
    },
    /// Request restores of archived files or whole folders inside a mount.
    Restore {
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
    },
    /// Unmount; pending uploads stay queued and resume on the next mount.
    Unmount { mountpoint: PathBuf },
    /// Seal everything written so far; with --wait, return once it is all in S3.
    Flush {
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds, naming what is still pending (uploads
        /// go on in the background).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
        mountpoint: PathBuf,
    },
    /// Show pending uploads, failures and S3 request counts.
    Status {
        #[arg(long)]
        json: bool,
        mountpoint: PathBuf,
    },
    /// Requeue uploads parked after a permanent error (once the cause is fixed).
    Retry { mountpoint: PathBuf },
}

#[derive(Subcommand)]
enum MachineCmd {
    /// Allow a machine's signing key: TOKEN is what `coldvault status` prints on that machine.
    Allow {
        token: String,
        /// The machine holds the passphrase: its snapshots may be the base of a rebuild. By
        /// default a machine allowed here is write-only.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Stop believing what a machine signs (a lost or compromised machine), whole or after a
    /// sequence number (its journal up to it stays believed).
    Revoke {
        machine: String,
        #[arg(long)]
        after_seq: Option<i64>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Adopt the journal batches and snapshots in the bucket now, signed or not: for a machine
    /// of an older build that wrote into the vault after it started signing (upgrade it too).
    Adopt {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// List the machines the vault allows, and the machines writing to it that it does not.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Change the passphrase (locally and in the bucket).
    Passwd {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// Read the new passphrase from this file (otherwise a prompt).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Print a recovery key: with it (and the bucket) the vault opens without the passphrase.
    ExportRecovery {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Print the vault's fingerprint, for `coldvault init --write-only --fingerprint`.
    Fingerprint {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

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

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { bucket, prefix, endpoint_url, region, config, default_storage_class, pass, write_only, fingerprint } => {
            let t = InitTarget { bucket, prefix, endpoint_url, region, config, class: default_storage_class };
            match fingerprint {
                Some(fp) if write_only => cmd_init_write_only(t, &fp),
                _ => cmd_init(t, pass),
            }
        }
        Cmd::Mount {
            config,
            cache_dir,
            pass,
            settle,
            read_cache,
            read_ahead,
            max_file_size,
            staging_quota,
            foreground,
            allow_other,
            upload_concurrency,
            upload_bandwidth,
            class_rules,
            restore_poll,
            fetch_restored,
            restore_budget,
            class_refresh,
            write_only,
            endpoint_url,
            mountpoint,
        } => cmd_mount(MountArgs {
            config,
            cache_dir,
            pass,
            settle,
            read_cache,
            read_ahead,
            max_file_size,
            staging_quota,
            foreground,
            allow_other,
            upload_concurrency,
            upload_bandwidth,
            class_rules,
            restore_poll,
            fetch_restored,
            restore_budget,
            class_refresh,
            write_only,
            endpoint_url,
            mountpoint,
        }),
        Cmd::Ls { config, pass, recursive, vault_path } => {
            let (cfg, keys) = load_unlocked(config, &pass)?;
            let rt = runtime()?;
            rt.block_on(async {
                let store: Arc<dyn ObjectStore> = Arc::new(connect(&cfg).await?);
                offline::ls(&store, &keys, &cfg, vault_path, recursive).await
            })
        }
        Cmd::Get { config, pass, restore, preserve_owner, jobs, mut args } => {
            let dest = PathBuf::from(args.pop().expect("two or more"));
            let (cfg, keys) = load_unlocked(config, &pass)?;
            let rt = runtime()?;
            rt.block_on(async {
                let store: Arc<dyn ObjectStore> = Arc::new(connect(&cfg).await?);
                offline::get(store, &keys, &cfg, &args, &dest, &offline::GetOptions { restore, preserve_owner, jobs }).await
            })
        }
        Cmd::Verify { config, cache_dir, pass, deep } => {
            let cfg_path = config.unwrap_or_else(config::default_config_path);
            let cfg = Config::load(&cfg_path)?;
            let cache = cache_dir.unwrap_or_else(|| cfg.default_cache_dir());
            // Without an index here, what to check is read from the bucket: that needs the key.
            let keys = if deep || !cache.join("index.db").exists() { Some(keys_for(&cfg, &pass)?) } else { None };
            let rt = runtime()?;
            rt.block_on(async {
                let store: Arc<dyn ObjectStore> = Arc::new(connect(&cfg).await?);
                offline::verify(store, keys.as_ref(), &cfg, &cache, deep).await
            })
        }
        Cmd::Share { samba, mountpoint, modules_dir, no_check } => {
            let mp = std::fs::canonicalize(&mountpoint).with_context(|| format!("{} does not exist", mountpoint.display()))?;
            if samba.is_empty() || samba.contains([']', '[', '/', '\\']) {
                bail!("invalid share name {samba:?}");
            }
            // smb.conf substitutes %-variables in `path` and `root preexec`, and a line break ends a value.
            if mp.to_string_lossy().contains(['%', '\n', '\r']) {
                bail!("{} contains % or a line break, which smb.conf cannot express: share a mount point whose path has neither", mp.display());
            }
            if !no_check {
                let dir = match modules_dir {
                    Some(d) => d,
                    None => share::samba_modules_dir()?,
                };
                share::check_vfs_modules(&dir)?;
            }
            print!("{}", share::samba_section(&samba, &mp.to_string_lossy()));
            Ok(())
        }
        Cmd::Policy { bucket, prefix, mode } => {
            println!("{}", offline::policy(&bucket, &prefix, &mode)?);
            Ok(())
        }
        Cmd::Key { cmd } => match cmd {
            KeyCmd::Passwd { config, pass, new_passphrase_file } => {
                let cfg_path = config.unwrap_or_else(config::default_config_path);
                let mut cfg = Config::load(&cfg_path)?;
                if cfg.write_only || !cfg.vault.has_secret() {
                    bail!("this is a write-only machine: its config holds no private key to re-wrap; change the passphrase on a full machine");
                }
                let keys = keys_for(&cfg, &pass)?;
                let new = passphrase(&PassArgs { passphrase_file: new_passphrase_file, passphrase_stdin: false, recovery_key_file: None }, true)?;
                cfg.vault = cfg.vault.rewrap(&keys, new.as_bytes());
                let rt = runtime()?;
                rt.block_on(async {
                    let store = connect(&cfg).await?;
                    offline::put_descriptor(&store, &cfg).await
                })?;
                cfg.save(&cfg_path)?;
                println!("passphrase changed (here and in the bucket's vault descriptor)");
                Ok(())
            }
            KeyCmd::Fingerprint { config } => {
                let cfg = Config::load(&config.unwrap_or_else(config::default_config_path))?;
                println!("{}", coldvault::crypto::fingerprint(&cfg.vault.public_key()?));
                Ok(())
            }
            KeyCmd::ExportRecovery { config, pass } => {
                let cfg = Config::load(&config.unwrap_or_else(config::default_config_path))?;
                let keys = keys_for(&cfg, &pass)?;
                println!("{}", offline::recovery_key(&keys));
                eprintln!("Write this down and keep it offline: with it and the bucket, anyone can read the vault.");
                Ok(())
            }
        },
        Cmd::Machine { cmd } => cmd_machine(cmd),
        Cmd::Restore { tier, days, dry_run, paths } => cmd_restore(tier, days, dry_run, paths),
        Cmd::Unmount { mountpoint } => cmd_unmount(&mountpoint),
        Cmd::Flush { wait, timeout, mountpoint } => {
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
        Cmd::Status { json, mountpoint } => {
            let rt = runtime()?;
            match rt.block_on(control::call(&mountpoint, &Request::Status))? {
                Reply::Status(s) => {
                    if json {
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
        Cmd::Retry { mountpoint } => {
            let rt = runtime()?;
            match rt.block_on(control::call(&mountpoint, &Request::RetryFailed))? {
                Reply::Retried { uploads } => {
                    println!("requeued {uploads} failed upload(s)");
                    Ok(())
                }
                Reply::Error { message } => bail!(message),
                other => bail!("unexpected reply {other:?}"),
            }
        }
    }
}

fn human(b: u64) -> String {
    coldvault::restore::human_bytes(b)
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

// ---------------------------------------------------------------- machines

fn cmd_machine(cmd: MachineCmd) -> Result<()> {
    use coldvault::crypto::sign::key_id;
    use coldvault::remote_meta::trust;
    let (config, pass) = match &cmd {
        MachineCmd::Allow { config, pass, .. }
        | MachineCmd::Revoke { config, pass, .. }
        | MachineCmd::List { config, pass }
        | MachineCmd::Adopt { config, pass } => (config, pass),
    };
    let cfg_path = config.clone().unwrap_or_else(config::default_config_path);
    let (mut cfg, keys) = load_unlocked(Some(cfg_path.clone()), pass)?;
    let sk = keys.secret.as_ref().expect("unlocked");
    let listing = matches!(cmd, MachineCmd::List { .. });
    let rt = runtime()?;
    let signed = rt.block_on(async {
        let store: Arc<dyn coldvault::store::ObjectStore> = Arc::new(connect(&cfg).await?);
        let t = trust::Trust::load(&store, sk, &cfg.prefix).await.map_err(|e| anyhow!("reading the vault's statements: {e}"))?;
        for p in &t.problems {
            eprintln!("coldvault: {p}");
        }
        // Adopting what is in the bucket now is what a vault starting to sign does; a vault this
        // machine saw signing whose statements are all gone must not adopt what replaced them.
        let start_signing = |what: &str| -> Result<()> {
            if cfg.signed && !t.signed {
                bail!("this vault signs its metadata, but none of its statements is left under {}m/ (deleted?); {what} would adopt whatever is in the bucket now: refused", cfg.prefix);
            }
            Ok(())
        };
        match cmd {
            MachineCmd::Allow { token, full, .. } => {
                let (m, vk) = coldvault::crypto::sign::parse_token(&token).map_err(|e| anyhow!(e))?;
                let role = if full { trust::Role::Full } else { trust::Role::WriteOnly };
                if let Some(other) = t.machines.get(&m).and_then(|v| v.iter().find(|k| k.key != vk)) {
                    bail!(
                        "machine {m} already has a key allowed ({}, {:?}): a token naming it with another key is not that machine (each cache dir has its own id and key)",
                        key_id(&other.key),
                        other.role
                    );
                }
                if let Some(k) = t.machines.get(&m).and_then(|v| v.iter().find(|k| k.key == vk)) {
                    if k.revoked.is_some() {
                        bail!("machine {m}'s key {} was revoked; a revoked key is not allowed again (the machine gets a new key with a new cache dir)", key_id(&vk));
                    }
                    if k.role != role {
                        bail!("machine {m}'s key {} is already allowed as {:?}; revoke it and let the machine make a new key (a new cache dir) to change its role", key_id(&vk), k.role);
                    }
                }
                if !t.signed {
                    start_signing("allowing a machine")?;
                    let n = trust::adopt_existing(&store, sk, &cfg.prefix).await?;
                    println!("this vault now signs: {n} unsigned journal batch(es) and snapshot(s) of earlier builds adopted");
                }
                let key = trust::enroll(store.as_ref(), sk, &cfg.prefix, &m, &vk, role).await?;
                println!("machine {m} allowed ({}, key {}): {key}", if full { "full" } else { "write-only" }, key_id(&vk));
            }
            MachineCmd::Revoke { machine, after_seq, .. } => {
                let ks = t.machines.get(&machine).filter(|v| !v.is_empty()).ok_or_else(|| anyhow!("the vault allows no key for machine {machine}"))?;
                for k in ks {
                    let key = trust::revoke(&store, sk, &cfg.prefix, &machine, &k.key, after_seq).await?;
                    let kept = after_seq.map(|n| format!(" after record {n} (its journal batches and snapshots up to it that are in the bucket now stay believed)")).unwrap_or_default();
                    println!("revoked key {} of machine {machine}{kept}: {key}", key_id(&k.key));
                }
            }
            MachineCmd::Adopt { .. } => {
                start_signing("adopting")?;
                let n = trust::adopt_existing(&store, sk, &cfg.prefix).await?;
                println!("{n} journal batch(es) and snapshot(s) in the bucket now adopted: rebuilds believe them signed or not");
            }
            MachineCmd::List { .. } => {
                println!("vault signing: {}", if t.signed { "on" } else { "off (no machine of this build has mounted it yet)" });
                for (m, ks) in &t.machines {
                    for k in ks {
                        let state = match &k.revoked {
                            None => "allowed".to_string(),
                            Some(kept) if kept.is_empty() => "revoked".to_string(),
                            Some(kept) => format!("revoked ({} object(s) it wrote before stay believed)", kept.len()),
                        };
                        println!("{m}  key {}  {:?}  {state}", key_id(&k.key), k.role);
                    }
                }
                let mut writing = std::collections::BTreeSet::new();
                for sub in ["j/", "s/"] {
                    for o in store.list(&format!("{}{sub}", cfg.prefix)).await? {
                        if let Some((m, _, _)) = coldvault::remote_meta::parse_seq_key(&o.key[cfg.prefix.len() + 2..]) {
                            writing.insert(m);
                        }
                    }
                }
                for m in writing.iter().filter(|m| !t.machines.contains_key(*m)) {
                    println!("{m}  not allowed: it wrote journal batches or snapshots; what it signed is not believed");
                }
            }
        }
        if !listing {
            // What vault.json says, signed if the vault has not yet (and the bucket's agrees).
            trust::sign_descriptor_once(&store, sk, &cfg.prefix, &t, &cfg.vault).await;
        }
        // Every subcommand but `list` leaves the vault signing.
        Ok::<_, anyhow::Error>(t.signed || !listing)
    })?;
    if signed && !cfg.signed {
        // From now on this machine refuses a copy of the vault whose statements are gone.
        cfg.signed = true;
        cfg.save(&cfg_path)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- passphrase

fn read_tty_line(prompt: &str) -> Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| anyhow!("no passphrase given and no terminal to ask on: use --passphrase-file F or COLDVAULT_PASSPHRASE"))?;
    write!(tty, "{prompt}")?;
    tty.flush()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is a plain C struct of integers and arrays; all-zero is a valid value.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the life of `tty`, and `old` is a valid, writable termios.
    let is_tty = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if is_tty {
        let mut new = old;
        new.c_lflag &= !libc::ECHO;
        // SAFETY: `fd` is open, `new` is a valid termios read from it with ECHO cleared.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &new) };
    }
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    if is_tty {
        // SAFETY: restores the termios read from the same open `fd` above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    writeln!(tty)?;
    r?;
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string()))
}

fn passphrase(p: &PassArgs, confirm: bool) -> Result<Zeroizing<String>> {
    let pw = if let Some(f) = &p.passphrase_file {
        let s = Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("cannot read passphrase file {}", f.display()))?);
        Zeroizing::new(s.lines().next().unwrap_or("").to_string())
    } else if p.passphrase_stdin {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut s)?;
        Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_string())
    } else if let Ok(v) = std::env::var("COLDVAULT_PASSPHRASE") {
        Zeroizing::new(v)
    } else {
        let a = read_tty_line("Vault passphrase: ")?;
        if confirm {
            let b = read_tty_line("Repeat passphrase: ")?;
            if *a != *b {
                bail!("the passphrases do not match");
            }
        }
        a
    };
    if pw.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(pw)
}

/// Keys for a command that reads the vault: a recovery key file, or the passphrase.
fn keys_for(cfg: &Config, pass: &PassArgs) -> Result<VaultKeys> {
    if let Some(f) = &pass.recovery_key_file {
        let k = Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("cannot read recovery key file {}", f.display()))?);
        return offline::parse_recovery_key(&k, &cfg.vault.public_key()?);
    }
    if cfg.write_only {
        bail!("this is a write-only machine (coldvault init --write-only): it holds no private key, so it cannot decrypt; use a full machine, or --recovery-key-file");
    }
    let pw = passphrase(pass, false)?;
    unlock(&cfg.vault, &pw)
}

fn load_unlocked(config: Option<PathBuf>, pass: &PassArgs) -> Result<(Config, VaultKeys)> {
    let cfg = Config::load(&config.unwrap_or_else(config::default_config_path))?;
    let keys = keys_for(&cfg, pass)?;
    Ok((cfg, keys))
}

fn unlock(d: &VaultDescriptor, pw: &str) -> Result<VaultKeys> {
    d.unlock(pw.as_bytes()).map_err(|e| match e {
        CryptoError::WrongPassphrase => anyhow!("wrong passphrase"),
        other => anyhow!("cannot unlock the vault key: {other}"),
    })
}

// ---------------------------------------------------------------- S3 helpers

fn explain_store(e: StoreError, cfg_bucket: &str, endpoint: &Option<String>) -> anyhow::Error {
    let where_ = endpoint.clone().unwrap_or_else(|| "AWS S3".into());
    match e {
        StoreError::NotFound => anyhow!("bucket {cfg_bucket:?} does not exist at {where_}"),
        StoreError::Permanent { code, message } if code == "NoSuchBucket" => anyhow!("bucket {cfg_bucket:?} does not exist at {where_}: {message}"),
        StoreError::Permanent { code, message } => anyhow!("S3 at {where_} refused access to bucket {cfg_bucket:?}: {code} {message}"),
        StoreError::Retryable(m) => anyhow!("cannot reach S3 at {where_}: {m}"),
        other => anyhow!("S3 at {where_}: {other}"),
    }
}

async fn connect(cfg: &Config) -> Result<S3Store> {
    let store = S3Store::connect(&cfg.s3_settings()).await;
    match tokio::time::timeout(Duration::from_secs(30), store.check_bucket()).await {
        Err(_) => bail!("cannot reach S3 at {}: timed out after 30 s", cfg.endpoint_url.clone().unwrap_or_else(|| "AWS S3".into())),
        Ok(Err(e)) => Err(explain_store(e, &cfg.bucket, &cfg.endpoint_url)),
        Ok(Ok(())) => Ok(store),
    }
}

// ---------------------------------------------------------------- init

/// Where `init` sets a vault up, as given on its command line.
struct InitTarget {
    bucket: String,
    prefix: String,
    endpoint_url: Option<String>,
    region: Option<String>,
    config: Option<PathBuf>,
    class: String,
}

/// The config `init` is about to write, with its settings checked and defaults filled in; its
/// vault is a placeholder until the real one is created, joined or read. Refuses to overwrite
/// an existing config.
fn init_config(t: InitTarget, write_only: bool) -> Result<(PathBuf, Config)> {
    let InitTarget { bucket, prefix, endpoint_url, region, config, class } = t;
    let path = config.unwrap_or_else(config::default_config_path);
    if path.exists() {
        bail!("config {} already exists; pass --config to create another vault's config", path.display());
    }
    let prefix = config::normalize_prefix(&prefix)?;
    let endpoint_url = endpoint_url.or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).filter(|s| !s.is_empty());
    let class = class.to_ascii_uppercase();
    coldvault::rules::validate_class(&class).map_err(|e| anyhow!(e))?;
    let placeholder = VaultDescriptor::create_with_cost(b"probe", 8, 1).0;
    let cfg = Config {
        bucket,
        prefix,
        path_style: endpoint_url.is_some(),
        endpoint_url,
        region,
        default_storage_class: class,
        settle_secs: 3.0,
        rules: Vec::new(),
        small_file_threshold: "128KiB".into(),
        small_file_class: "STANDARD".into(),
        restore: config::RestoreSettings::default(),
        ignore: None,
        name_key: String::new(),
        vault: if write_only { placeholder.public_only() } else { placeholder },
        write_only,
        signed: false,
    };
    Ok((path, cfg))
}

fn cmd_init(t: InitTarget, pass: PassArgs) -> Result<()> {
    let (path, probe) = init_config(t, false)?;
    let pw = passphrase(&pass, true)?;
    let rt = runtime()?;
    let key = format!("{}coldvault/vault.json", probe.prefix);
    // An existing vault (a new machine, or after losing this one): join it with its passphrase.
    let existing = rt.block_on(async {
        let store = connect(&probe).await?;
        match store.get_object(&key).await {
            Ok(body) => Ok::<_, anyhow::Error>((store, Some(body))),
            Err(StoreError::NotFound) => Ok((store, None)),
            Err(e) => Err(explain_store(e, &probe.bucket, &probe.endpoint_url)),
        }
    })?;
    let (store, existing) = existing;
    let joined = existing.is_some();
    let (desc, keys) = match existing {
        Some(body) => {
            let desc: VaultDescriptor =
                serde_json::from_slice(&body).with_context(|| format!("s3://{}/{key} is not a coldvault descriptor", probe.bucket))?;
            let keys = unlock(&desc, &pw)?;
            (desc, keys)
        }
        None => VaultDescriptor::create(pw.as_bytes()),
    };
    use base64::Engine;
    let mut cfg = Config { name_key: base64::engine::general_purpose::STANDARD.encode(keys.name_key), vault: desc.clone(), ..probe };
    cfg.validate()?;
    let sk = keys.secret.as_ref().expect("an unlocked or new vault's key");
    let store: Arc<dyn coldvault::store::ObjectStore> = Arc::new(store);
    if joined {
        // A machine joining a vault that signs refuses, from now on, a copy without statements;
        // and a vault.json that differs from what the vault signed of it.
        let t = rt
            .block_on(coldvault::remote_meta::trust::Trust::load(&store, sk, &cfg.prefix))
            .map_err(|e| anyhow!("reading the vault's statements: {e}"))?;
        match &t.descriptor {
            Some(s) if !s.matches(&desc) => {
                bail!("s3://{}/{key} differs from what the vault signed of it (its vault_id, format or name key were replaced); nothing written", cfg.bucket)
            }
            // Signing, but what it signed of vault.json is gone or unreadable: nothing to check
            // the descriptor against (a vault of an older build signs it at its first full mount).
            None if t.signed => bail!(
                "the vault signs its metadata, but its signature of s3://{}/{key} (under {}m/vault-) is missing or unreadable: the descriptor cannot be checked; nothing written (a full mount of one of its machines signs it again)",
                cfg.bucket,
                cfg.prefix
            ),
            _ => {}
        }
        cfg.signed = t.signed;
    } else {
        let body = serde_json::to_vec_pretty(&desc)?;
        rt.block_on(store.put_object(&key, body.into(), &PutOptions { storage_class: "STANDARD".into(), ..Default::default() }))
            .map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))?;
        // A new vault signs from the start: its (empty) adoption statement says so, and it signs
        // what its vault.json says.
        rt.block_on(coldvault::remote_meta::trust::adopt_existing(&store, sk, &cfg.prefix))
            .map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))?;
        rt.block_on(coldvault::remote_meta::trust::sign_descriptor(store.as_ref(), sk, &cfg.prefix, &desc))
            .map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))?;
        cfg.signed = true;
    }
    if joined {
        cfg.save(&path)?;
        println!("joined existing vault {} in s3://{}/{}", desc.vault_id, cfg.bucket, cfg.prefix);
        println!("config written to {}; `coldvault mount` with an empty cache dir rebuilds the tree from the bucket", path.display());
        return Ok(());
    }
    cfg.save(&path)?;
    println!("created vault {} in s3://{}/{}", desc.vault_id, cfg.bucket, cfg.prefix);
    println!("config written to {}", path.display());
    println!("keep your passphrase safe: without it nothing in this vault can be decrypted");
    Ok(())
}

/// `coldvault init --write-only`: the vault's public key from the bucket's vault.json, checked
/// against the fingerprint given; nothing secret is asked for or kept. Needs s3:GetObject on
/// that one object (`coldvault policy --mode write-only`) and no other read right.
fn cmd_init_write_only(t: InitTarget, fp: &str) -> Result<()> {
    let (path, mut cfg) = init_config(t, true)?;
    let (bucket, prefix) = (cfg.bucket.clone(), cfg.prefix.clone());
    let key = format!("{prefix}coldvault/vault.json");
    let rt = runtime()?;
    // No HeadBucket: a write-only credential may not list the bucket.
    let body = rt.block_on(async { S3Store::connect(&cfg.s3_settings()).await.get_object(&key).await }).map_err(|e| {
        anyhow!("reading s3://{bucket}/{key}: {e} (a write-only machine needs s3:GetObject on that object: `coldvault policy --mode write-only`)")
    })?;
    let desc: VaultDescriptor = serde_json::from_slice(&body).with_context(|| format!("s3://{bucket}/{key} is not a coldvault descriptor"))?;
    let pk = desc.public_key().map_err(|e| anyhow!("s3://{bucket}/{key}: {e}"))?;
    if !coldvault::crypto::fingerprint_matches(&pk, fp) {
        bail!("the vault in s3://{bucket}/{key} does not have fingerprint {fp}: its vault.json may have been replaced (backups made with it could be read by whoever did); nothing written");
    }
    cfg.vault = desc.public_only();
    // Named after the pinned key, not after the descriptor's unpinned vault_id: a swapped
    // descriptor cannot point this machine's cache dir at another vault's.
    cfg.vault.vault_id = format!("wo-{}", &coldvault::crypto::fingerprint(&pk).replace('-', "")[..16]);
    cfg.validate()?;
    cfg.save(&path)?;
    println!("write-only machine set up for vault {} in s3://{bucket}/{prefix} (fingerprint {})", desc.vault_id, coldvault::crypto::fingerprint(&pk));
    println!("config written to {}: it holds the public key only; `coldvault mount` here mounts write-only", path.display());
    Ok(())
}

// ---------------------------------------------------------------- mount

struct MountArgs {
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    pass: PassArgs,
    settle: Option<f64>,
    read_cache: String,
    read_ahead: String,
    max_file_size: Option<String>,
    staging_quota: Option<String>,
    foreground: bool,
    allow_other: bool,
    upload_concurrency: usize,
    upload_bandwidth: Option<String>,
    class_rules: Vec<String>,
    restore_poll: Option<f64>,
    fetch_restored: bool,
    restore_budget: Option<String>,
    class_refresh: Option<f64>,
    write_only: bool,
    endpoint_url: Option<String>,
    mountpoint: PathBuf,
}

fn cmd_mount(mut a: MountArgs) -> Result<()> {
    let cfg_path = a.config.clone().unwrap_or_else(config::default_config_path);
    let mut cfg = Config::load(&cfg_path)?;
    if let Some(e) = &a.endpoint_url {
        cfg.endpoint_url = Some(e.clone());
        cfg.path_style = true;
    }
    let meta = std::fs::metadata(&a.mountpoint).with_context(|| format!("mount point {} does not exist", a.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", a.mountpoint.display());
    }
    let mountpoint = std::fs::canonicalize(&a.mountpoint)?;
    // Before the passphrase: a mount that would hide files is refused, not started. A coldvault
    // mount already there (live, or left by a crashed daemon) is not such a file: listing it
    // lists the vault, or fails.
    if !is_coldvault_mount(&mountpoint) {
        refuse_hidden_entries(&mountpoint)?;
    }
    let read_cache = config::parse_size(&a.read_cache)?;
    let read_ahead = config::parse_size(&a.read_ahead).context("--read-ahead")?;
    let max_file_size = match &a.max_file_size {
        None => coldvault::fs::MAX_FILE_SIZE,
        Some(s) => {
            let n = config::parse_size(s).context("--max-file-size")?;
            if n > coldvault::fs::MAX_FILE_SIZE {
                bail!("--max-file-size {s}: more than fits in one S3 object ({} bytes)", coldvault::fs::MAX_FILE_SIZE);
            }
            n
        }
    };
    let staging_quota = a.staging_quota.as_deref().map(|s| config::parse_size(s).context("--staging-quota")).transpose()?;
    let settle = a.settle.unwrap_or(cfg.settle_secs);
    if settle.is_nan() || settle < 0.0 {
        bail!("--settle must be >= 0");
    }
    let cache_dir = a.cache_dir.clone().unwrap_or_else(|| cfg.default_cache_dir());
    let (policy, restore_cfg) = archive_settings(&cfg, &a)?;
    if cfg.write_only && !a.write_only {
        if a.pass.recovery_key_file.is_some() {
            bail!("this is a write-only machine: it mounts write-only (without --recovery-key-file)");
        }
        eprintln!("coldvault: a write-only machine (coldvault init --write-only): mounting write-only");
        a.write_only = true;
    }
    // Write-only: the public key and name key from the config are all it needs.
    let (keys, pw) = if a.write_only {
        // A write-only machine's config has no name key (needed only to read format-1 objects).
        let name_key = if cfg.write_only { [0u8; 32] } else { cfg.name_key()? };
        (VaultKeys::write_only(cfg.vault.public_key()?, name_key), Zeroizing::new(String::new()))
    } else if a.pass.recovery_key_file.is_some() {
        (keys_for(&cfg, &a.pass)?, Zeroizing::new(String::new()))
    } else {
        let pw = passphrase(&a.pass, false)?;
        (unlock(&cfg.vault, &pw)?, pw)
    };
    if !a.foreground {
        return spawn_daemon(&a, &cfg_path, &cache_dir, &mountpoint, &pw);
    }
    drop(pw);
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
    let _lock = lock_cache(&cache_dir)?;
    let rt = runtime()?;
    let store = if a.write_only {
        // HeadBucket needs s3:ListBucket, which a write-only machine does not have.
        rt.block_on(S3Store::connect(&cfg.s3_settings()))
    } else {
        rt.block_on(connect(&cfg))?
    };
    let fs_cfg = coldvault::fs::FsConfig {
        cache_dir: cache_dir.clone(),
        settle: Duration::from_secs_f64(settle),
        prefix: cfg.prefix.clone(),
        policy,
        restore: restore_cfg,
        journal: coldvault::remote_meta::JournalConfig { write_only: a.write_only, ..Default::default() },
        ignore: cfg.ignore.clone().unwrap_or_else(|| coldvault::fs::DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect()),
        read_cache,
        read_ahead,
        group_commit: coldvault::fs::GROUP_COMMIT,
        max_file_size,
        vault_signed: cfg.signed,
        staging_quota,
        descriptor: Some(cfg.vault.clone()),
    };
    let bandwidth = a.upload_bandwidth.as_deref().map(config::parse_size).transpose()?;
    let up = coldvault::upload::UploadConfig { concurrency: a.upload_concurrency.max(1), bandwidth, ..Default::default() };
    let mut daemon = coldvault::daemon::Daemon::start(rt.handle(), Arc::new(store), Arc::new(keys), fs_cfg, up)
        .map_err(|e| anyhow!("cannot open the cache dir {}: {e}", cache_dir.display()))?;
    let sock = control::socket_path(&mountpoint)?;
    let mut session =
        coldvault::fuse::session(daemon.fs.clone(), &mountpoint, &coldvault::fuse::MountOptions { allow_other: a.allow_other, threads: 4 })
            .with_context(|| format!("mounting {} failed (is fuse3 installed and /dev/fuse available?)", mountpoint.display()))?;
    if daemon.signing && !cfg.signed {
        // From now on this machine refuses a copy of the vault whose statements are gone.
        match Config::load(&cfg_path) {
            Ok(mut c) => {
                c.signed = true;
                if let Err(e) = c.save(&cfg_path) {
                    tracing::warn!(error = %e, "could not record in the config that the vault signs its metadata");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not record in the config that the vault signs its metadata"),
        }
    }
    let mut unmounter = session.unmount_callable();
    let fuse_thread = std::thread::Builder::new().name("fuse".into()).spawn(move || session.run())?;
    daemon.add_task(rt.spawn({
        let fs = daemon.fs.clone();
        let stop = daemon.stop.subscribe();
        async move {
            if let Err(e) = control::serve(fs, sock, stop).await {
                tracing::error!(error = %e, "control socket failed");
            }
        }
    }));
    tracing::info!(mountpoint = %mountpoint.display(), cache = %cache_dir.display(), bucket = %cfg.bucket, "mounted");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("signal");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if fuse_thread.is_finished() {
                        break;
                    }
                }
            }
        }
    });
    if !fuse_thread.is_finished() {
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed (busy?); lazy-unmounting");
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&mountpoint).status();
        }
    }
    let _ = fuse_thread.join();
    rt.block_on(daemon.shutdown());
    tracing::info!("unmounted; pending uploads stay queued for the next mount");
    Ok(())
}

/// Storage-class policy and restore settings from the config, with the mount flags on top.
fn archive_settings(cfg: &Config, a: &MountArgs) -> Result<(coldvault::rules::ClassPolicy, coldvault::fs::RestoreConfig)> {
    let mut rules = Vec::new();
    for r in &a.class_rules {
        rules.push(coldvault::rules::parse_rule(r).map_err(|e| anyhow!(e))?);
    }
    rules.extend(cfg.rules.iter().cloned());
    let policy = coldvault::rules::ClassPolicy {
        rules,
        default_class: cfg.default_storage_class.clone(),
        small_file_threshold: config::parse_size(&cfg.small_file_threshold)?,
        small_file_class: cfg.small_file_class.clone(),
    };
    let rs = &cfg.restore;
    let secs = |v: f64, what: &str| -> Result<Duration> {
        if !v.is_finite() || v < 0.0 {
            bail!("{what} must be a number of seconds >= 0");
        }
        Ok(Duration::from_secs_f64(v))
    };
    let class_refresh = match a.class_refresh {
        Some(v) => Some(secs(v, "--class-refresh")?),
        None => Some(secs(rs.class_refresh_hours * 3600.0, "restore.class_refresh_hours")?),
    }
    .filter(|d| !d.is_zero());
    let restore = coldvault::fs::RestoreConfig {
        glacier_tier: tier(&rs.glacier_tier)?,
        deep_archive_tier: tier(&rs.deep_archive_tier)?,
        days: rs.days,
        daily_budget: config::parse_size(a.restore_budget.as_deref().unwrap_or(&rs.daily_budget))?,
        indexers: rs.indexers.clone(),
        suffix: rs.status_suffix.clone(),
        poll_override: a.restore_poll.map(|v| secs(v, "--restore-poll")).transpose()?.filter(|d| !d.is_zero()),
        fetch_restored: a.fetch_restored,
        class_refresh,
    };
    Ok((policy, restore))
}

/// One daemon per cache dir: two would corrupt each other's staging.
fn lock_cache(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    // SAFETY: the descriptor belongs to `f`, which stays open (and holds the lock) while we run.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("cache dir {} is in use by another coldvault mount", dir.display());
    }
    Ok(f)
}

fn spawn_daemon(a: &MountArgs, cfg_path: &Path, cache_dir: &Path, mountpoint: &Path, pw: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
    let log_path = cache_dir.join("coldvault.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    // The daemon gets the same flags, minus any passphrase source: the passphrase arrives on
    // its stdin (never in argv or the environment).
    let mut args = std::env::args_os().skip(1).peekable();
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        // Options re-added below with resolved values (and the passphrase file, replaced by stdin).
        const RESET: [&str; 3] = ["--passphrase-file", "--config", "--cache-dir"];
        if s == "--passphrase-stdin" {
            continue;
        }
        if RESET.contains(&s.as_ref()) {
            args.next();
            continue;
        }
        if RESET.iter().any(|o| s.starts_with(&format!("{o}="))) || s == "--foreground" {
            continue;
        }
        cmd.arg(&arg);
    }
    cmd.arg("--foreground").arg("--config").arg(cfg_path).arg("--cache-dir").arg(cache_dir);
    let send_pw = !a.write_only && a.pass.recovery_key_file.is_none();
    if send_pw {
        cmd.arg("--passphrase-stdin");
    }
    cmd.env_remove("COLDVAULT_PASSPHRASE");
    let _ = (a, mountpoint);
    cmd.stdin(std::process::Stdio::piped()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid, which is
    // async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        if send_pw {
            stdin.write_all(pw.as_bytes())?;
        }
    }
    let rt = runtime()?;
    // A first mount on an empty cache rebuilds the index from the bucket: allow it time.
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(st) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("the mount daemon exited ({st}); last log lines from {}:\n{}", log_path.display(), last.join("\n"));
        }
        if rt.block_on(control::call(mountpoint, &Request::Pid)).is_ok() && is_mounted(mountpoint) {
            println!("mounted {} (daemon pid {}, log {})", mountpoint.display(), child.id(), log_path.display());
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the mount daemon did not come up within 30 minutes; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_mounted(mp: &Path) -> bool {
    let target = mp.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))).unwrap_or(false)
}

/// Whether a coldvault mount, live or left by a crashed daemon, is at `mp` (the same test as
/// [`find_mount`]: `fuse.coldvault` through fusermount3, source `coldvault` when mounted as root).
fn is_coldvault_mount(mp: &Path) -> bool {
    let target = mp.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()) && (l.contains(" - fuse.coldvault ") || l.contains(" coldvault "))))
        .unwrap_or(false)
}

/// Refuses a mount point whose own directory holds anything: the mount would hide it, and
/// nothing hidden there is ever uploaded (e.g. what a Samba share or a script wrote while the
/// vault was not mounted). The kernel and fusermount3 mount over a non-empty directory without
/// a word, so this is the only place it can be noticed.
fn refuse_hidden_entries(mp: &Path) -> Result<()> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(mp).with_context(|| format!("cannot list the mount point {}", mp.display()))? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let n = names.len();
    let mut shown = names.iter().take(5).map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ");
    if n > 5 {
        shown.push_str(&format!(" and {} more", n - 5));
    }
    bail!(
        "the mount point {mp} is not empty ({n} item(s): {shown}): the mount would hide them and they would never be uploaded; move them out of {mp}, mount, then move them into the mount",
        mp = mp.display()
    )
}

/// The coldvault mount point containing `p`, and `p`'s vault-relative path.
fn find_mount(p: &Path) -> Result<(PathBuf, String)> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{} does not exist", p.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts: Vec<PathBuf> = info
        .lines()
        .filter(|l| l.contains(" - fuse.coldvault ") || l.contains(" coldvault "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .collect();
    let mut cur = abs.as_path();
    loop {
        if mounts.iter().any(|m| m == cur) {
            let rel = abs.strip_prefix(cur).expect("prefix").to_string_lossy().to_string();
            return Ok((cur.to_path_buf(), rel));
        }
        cur = cur.parent().ok_or_else(|| anyhow!("{} is not inside a coldvault mount", p.display()))?;
    }
}

/// A restore tier as a config file names it.
fn tier(t: &str) -> Result<coldvault::vault::Tier> {
    coldvault::vault::Tier::parse(t).ok_or_else(|| anyhow!("unknown restore tier {t:?}; one of {:?}", coldvault::vault::Tier::NAMES))
}

fn cmd_restore(tier: Option<String>, days: Option<i32>, dry_run: bool, paths: Vec<PathBuf>) -> Result<()> {
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

fn cmd_unmount(mp: &Path) -> Result<()> {
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
