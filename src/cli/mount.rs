//! `coldvault mount`: check the mount point and the flags, unlock the vault, then either fork
//! the daemon (and wait until it serves the mount) or, with --foreground, be the daemon.

use super::mounts::{is_coldvault_mount, is_mounted};
use super::pass::{keys_for, passphrase, unlock, PassArgs};
use super::runtime;
use super::s3::connect;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use coldvault::config::{self, Config};
use coldvault::control::{self, Request};
use coldvault::crypto::VaultKeys;
use coldvault::store::s3::S3Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Args)]
pub struct MountArgs {
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
}

pub fn run(mut a: MountArgs) -> Result<()> {
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
        journal_heads: cfg.journal_heads.clone(),
        machine_id: cfg.machine_id.clone(),
        staging_quota,
        descriptor: Some(cfg.vault.clone()),
    };
    let bandwidth = a.upload_bandwidth.as_deref().map(config::parse_size).transpose()?;
    let up = coldvault::upload::UploadConfig { concurrency: a.upload_concurrency.max(1), bandwidth, ..Default::default() };
    let mut daemon = coldvault::daemon::Daemon::start(
        rt.handle(),
        coldvault::remote_meta::remembered::Remembered::wrap(Arc::new(store), &cfg.prefix, &cfg.revocations),
        Arc::new(keys),
        fs_cfg,
        up,
    )
    .map_err(|e| anyhow!("cannot open the cache dir {}: {e}", cache_dir.display()))?;
    let sock = control::socket_path(&mountpoint)?;
    let mut session =
        coldvault::fuse::session(daemon.fs.clone(), &mountpoint, &coldvault::fuse::MountOptions { allow_other: a.allow_other, threads: 4 })
            .with_context(|| format!("mounting {} failed (is fuse3 installed and /dev/fuse available?)", mountpoint.display()))?;
    // How far the journals reached in this mount's rebuild, for the next read to compare.
    if let Some(reach) = &daemon.rebuilt_reach {
        if let Err(e) = Config::remember_heads(&cfg_path, |old| reach.heads(old)) {
            tracing::warn!(error = %e, "could not record in the config how far the vault's journals reach");
        }
        if let Err(e) = Config::remember_revocations(&cfg_path, &reach.revocations) {
            tracing::warn!(error = %e, "could not keep in the config the vault's revocations");
        }
    }
    if daemon.signing && !cfg.signed {
        // From now on this machine refuses a copy of the vault whose statements are gone.
        if let Err(e) = Config::update(&cfg_path, |c| {
            c.signed = true;
            true
        }) {
            tracing::warn!(error = %e, "could not record in the config that the vault signs its metadata");
        }
    }
    let mut unmounter = session.unmount_callable();
    let fuse_thread = std::thread::Builder::new().name("fuse".into()).spawn(move || session.run())?;
    daemon.add_task(rt.spawn({
        let (fs, journal) = (daemon.fs.clone(), daemon.journal.clone());
        let stop = daemon.stop.subscribe();
        async move {
            if let Err(e) = control::serve(fs, journal, sock, stop).await {
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

/// A restore tier as the config file names it (checked when the config was loaded).
fn tier(t: &str) -> Result<coldvault::vault::Tier> {
    coldvault::vault::Tier::parse(t).ok_or_else(|| anyhow::anyhow!("unknown restore tier {t:?}; one of {:?}", coldvault::vault::Tier::NAMES))
}
