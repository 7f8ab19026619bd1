//! `coldvault get`: decrypt files or folders from the bucket into a local directory (no mount
//! needed), several at once, resuming where an earlier run stopped, with progress on a terminal.

use super::pass::{load_unlocked, PassArgs};
use super::runtime;
use super::tree::{load_tree_at, norm, parse_at, wanted};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use coldvault::config::Config;
use coldvault::crypto::VaultKeys;
use coldvault::extract::{self, Dest};
use coldvault::remote_meta::{self, NodeKind};
use coldvault::sealed::{self, Budget};
use coldvault::store::{ObjectStore, StoreError};
use coldvault::vault::{StorageClass, Tier};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct GetArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    #[command(flatten)]
    options: GetOptions,
    /// VAULT_PATH... LOCAL_DIR
    #[arg(required = true, num_args = 2..)]
    args: Vec<String>,
}

pub fn run(a: GetArgs) -> Result<()> {
    let GetArgs { config, pass, options, mut args } = a;
    let dest = PathBuf::from(args.pop().expect("two or more"));
    let (cfg, keys) = load_unlocked(config, &pass)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = super::s3::connect_vault(&cfg).await?;
        get(store, &keys, &cfg, &args, &dest, &options).await
    })
}

/// How one file of a `get` ended.
enum Got {
    Written(u64),
    AlreadyThere,
    Archived(String),
    Failed(String),
}

/// Options of `coldvault get`.
#[derive(Args)]
struct GetOptions {
    /// The files and folders as they were at this time (UTC: 2026-11-20T10:00): from the
    /// journal of every machine of the vault, so an older version, or a file deleted since,
    /// comes back.
    #[arg(long, value_parser = parse_at)]
    at: Option<i64>,
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
    /// Restore what the write-only machine ID wrote as it wrote it. Without it, such files
    /// come back without execute, setuid or setgid bits and never owned by root, and nothing
    /// of theirs in a dot folder or named with a dot (`.git/hooks`, `.ssh`, `.bashrc`) is
    /// written: a stolen write-only machine cannot plant code in a restored tree. Repeat for
    /// several machines.
    #[arg(long = "trust-machine", value_name = "ID")]
    trust_machines: Vec<String>,
}

/// What `get` did to what untrusted write-only machines wrote (review N6), per machine.
#[derive(Default)]
struct Tamed {
    /// Items restored with execute, setuid, setgid and root ownership taken away.
    restored: u64,
    /// Items under a dot name not written, and one of them.
    held_back: u64,
    example: String,
}

/// What the downloads of one `get` share: the bucket, the keys and one read-ahead budget.
struct Fetch {
    store: Arc<dyn ObjectStore>,
    keys: VaultKeys,
    budget: Budget,
}

/// Restore the file `vp` of the vault to `rel` below the destination.
async fn get_one(
    f: Arc<Fetch>,
    dest: Arc<Dest>,
    (vp, rel): (String, String),
    n: remote_meta::Node,
    restore: Option<(String, Option<i32>)>,
    progress: Arc<Progress>,
) -> Got {
    let w = wanted(&n);
    let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
    let shown = remote_meta::shown(&vp);
    if dest.already_restored(&rel, &w, a) {
        progress.skipped(n.size);
        return Got::AlreadyThere;
    }
    let mut part = match dest.create_file(&rel) {
        Ok(p) => p,
        Err(e) => return Got::Failed(format!("{shown}: {e}")),
    };
    let store = &f.store;
    match extract::fetch_to(store.clone(), &f.keys, &w, part.file(), &progress.bytes, &f.budget).await {
        Ok(()) => {}
        Err(extract::ExtractError::Store(StoreError::Archived)) => {
            let class = n.class.clone().unwrap_or_default();
            let mut note = format!("{shown} ({class}): archived, not restored");
            if let Some((tier, days)) = restore {
                match store.restore_object(&w.key, days, &tier).await {
                    Ok(()) | Err(StoreError::RestoreInProgress) => {
                        note.push_str(&format!("; restore requested ({tier}), run `get` again when it is done"))
                    }
                    Err(e) => note.push_str(&format!("; restore request failed: {e}")),
                }
            }
            return Got::Archived(note);
        }
        Err(e) => return Got::Failed(format!("{shown}: {e}")),
    }
    match part.commit(a) {
        Ok(()) => {
            progress.files.fetch_add(1, Ordering::Relaxed);
            Got::Written(n.size)
        }
        Err(e) => Got::Failed(format!("{shown}: {e}")),
    }
}

/// Counters of a running `get`, shown on a terminal.
#[derive(Default)]
struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    skipped_bytes: AtomicU64,
}

impl Progress {
    fn skipped(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.skipped_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One status line: files and bytes done, rate, time left.
    fn line(&self, total_files: u64, total_bytes: u64, started: std::time::Instant) -> String {
        let got = self.bytes.load(Ordering::Relaxed);
        let done = got + self.skipped_bytes.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = got as f64 / secs;
        let eta = if rate > 0.0 { format!("{:.0} s left", total_bytes.saturating_sub(done) as f64 / rate) } else { "…".into() };
        format!(
            "{}/{} files, {:.1} of {:.1} MiB, {:.1} MiB/s, {eta}",
            self.files.load(Ordering::Relaxed),
            total_files,
            done as f64 / 1048576.0,
            total_bytes as f64 / 1048576.0,
            rate / 1048576.0
        )
    }
}

async fn get(store: Arc<dyn ObjectStore>, keys: &VaultKeys, cfg: &Config, paths: &[String], dest: &Path, o: &GetOptions) -> Result<()> {
    let tree = load_tree_at(&store, keys, cfg, o.at).await?;
    let d = Arc::new(Dest::open(dest, o.preserve_owner)?);
    let fetch = Arc::new(Fetch {
        store: store.clone(),
        keys: VaultKeys { public: keys.public, secret: keys.secret.clone(), name_key: keys.name_key },
        budget: Budget::new(sealed::DEFAULT_BUDGET),
    });
    let mut problems: Vec<String> = Vec::new();
    let mut made_dirs: Vec<(String, remote_meta::Node)> = Vec::new();
    // By destination path: a file selected twice (`get photos photos DIR`) is restored once,
    // and two vault files that would land on one name (`get a/x b/x DIR`) are reported.
    let mut files: std::collections::BTreeMap<String, (String, remote_meta::Node)> = std::collections::BTreeMap::new();
    let mut links = 0u64;
    let mut tamed: std::collections::BTreeMap<String, Tamed> = std::collections::BTreeMap::new();
    let (dest_uid, dest_gid) = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dest).map(|m| (m.uid(), m.gid())).unwrap_or((0, 0))
    };
    for p in paths {
        let base = norm(p)?;
        let root = tree.nodes.get(&base).ok_or_else(|| anyhow!("{p}: no such file or folder in the vault"))?;
        // Like `cp -r`: the selected item's own name appears under DEST.
        let strip = base.rsplit_once('/').map(|(a, _)| a.len() + 1).unwrap_or(0);
        let selected: Vec<(&String, &remote_meta::Node)> = if root.kind == NodeKind::Dir {
            let prefix = format!("{base}/");
            tree.nodes.iter().filter(|(k, _)| **k == base || k.starts_with(&prefix) || base.is_empty()).collect()
        } else {
            vec![(tree.nodes.get_key_value(&base).map(|(k, _)| k).expect("present"), root)]
        };
        // In path order: a folder comes before what is in it.
        for (vp, n) in selected {
            if vp.is_empty() {
                continue;
            }
            // Paths from the bucket were checked by the replay; check again where it matters.
            if let Err(e) = remote_meta::check_path(vp) {
                problems.push(format!("refusing {}: {e}", remote_meta::shown(vp)));
                continue;
            }
            let shown = remote_meta::shown(vp);
            let rel = vp[strip..].to_string();
            // What a write-only machine wrote is data, never code or a config a program runs.
            let untrusted = n.owner.as_ref().filter(|m| tree.write_only.contains(*m) && !o.trust_machines.contains(m));
            let n: remote_meta::Node = match untrusted {
                None => n.clone(),
                Some(m) => {
                    let t = tamed.entry(m.clone()).or_default();
                    if vp.split('/').any(|c| c.starts_with('.')) {
                        t.held_back += 1;
                        if t.example.is_empty() {
                            t.example = shown.to_string();
                        }
                        continue;
                    }
                    t.restored += 1;
                    let mut x = n.clone();
                    x.mode &= if x.kind == NodeKind::Dir { !0o7000 } else { !0o7111 };
                    if x.uid == 0 {
                        x.uid = dest_uid;
                    }
                    if x.gid == 0 {
                        x.gid = dest_gid;
                    }
                    x
                }
            };
            match n.kind {
                NodeKind::Dir => match d.make_dir(&rel) {
                    Ok(()) => made_dirs.push((rel, n)),
                    Err(e) => problems.push(format!("{shown}: {e}")),
                },
                NodeKind::Special => {
                    // FIFOs, sockets and device nodes are recreated by `mount`, not extracted.
                    eprintln!("coldvault: {shown}: special file ({}) not extracted", remote_meta::shown(n.target.as_deref().unwrap_or_default()));
                }
                NodeKind::Symlink => {
                    let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
                    match d.symlink(&rel, n.target.as_deref().unwrap_or_default(), a) {
                        Ok(()) => links += 1,
                        Err(e) => problems.push(format!("{shown}: {e}")),
                    }
                }
                NodeKind::File => match files.get(&rel) {
                    Some((other, _)) if other != vp => {
                        problems.push(format!("{shown}: not restored, {} lands on the same name", remote_meta::shown(other)))
                    }
                    Some(_) => {}
                    None => {
                        files.insert(rel, (vp.clone(), n));
                    }
                },
            }
        }
    }
    let total_files = files.len() as u64;
    let total_bytes: u64 = files.values().fold(0u64, |t, (_, n)| t.saturating_add(n.size));
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let ticker = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let p = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                eprint!("\r\x1b[K{}", p.line(total_files, total_bytes, started));
            }
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = files.into_iter();
    let (mut written, mut bytes, mut already, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut archived = Vec::new();
    // Files not restored: the folders above them keep a mode that lets the next run finish.
    let mut unfinished: Vec<String> = Vec::new();
    loop {
        while tasks.len() < o.jobs.max(1) {
            let Some((rel, (vp, n))) = queue.next() else { break };
            let class = n.class.clone().unwrap_or_default();
            let restore = o.restore.then(|| {
                let class = StorageClass::parse(&class);
                let tier = coldvault::restore::default_tier(&class, tier_of(&cfg.restore.glacier_tier), tier_of(&cfg.restore.deep_archive_tier));
                (tier.as_str().to_string(), (!class.is_it_archive()).then_some(cfg.restore.days))
            });
            let (f, dd, p) = (fetch.clone(), d.clone(), progress.clone());
            tasks.spawn(async move {
                let r = get_one(f, dd, (vp, rel.clone()), n, restore, p).await;
                (rel, r)
            });
        }
        let Some(r) = tasks.join_next().await else { break };
        let (rel, got) = r.unwrap_or_else(|e| (String::new(), Got::Failed(format!("a download stopped: {e}"))));
        if matches!(got, Got::Failed(_) | Got::Archived(_)) {
            unfinished.push(rel);
        }
        match got {
            Got::Written(b) => {
                written += 1;
                bytes += b;
            }
            Got::AlreadyThere => already += 1,
            Got::Archived(note) => archived.push(note),
            Got::Failed(m) => {
                failed += 1;
                if ticker.is_some() {
                    eprint!("\r\x1b[K");
                }
                eprintln!("coldvault: {m}");
            }
        }
    }
    if let Some(t) = ticker {
        t.abort();
        eprintln!("\r\x1b[K{}", progress.line(total_files, total_bytes, started));
    }
    // Folder modes and times last (writing into a folder changes its time), innermost first
    // (a read-only folder must not keep its contents from getting theirs).
    for (rel, n) in made_dirs.iter().rev() {
        let below = format!("{rel}/");
        if unfinished.iter().any(|f| f.is_empty() || f.starts_with(&below)) {
            continue;
        }
        let a = extract::Attrs { mode: n.mode, uid: n.uid, gid: n.gid, mtime_ns: n.mtime_ns };
        if let Err(e) = d.finish_dir(rel, a) {
            problems.push(format!("{rel}: {e}"));
        }
    }
    if let Err(e) = d.sync() {
        problems.push(e.to_string());
    }
    print!("restored {written} file(s), {bytes} bytes");
    if already > 0 {
        print!(", {already} already there from an earlier run");
    }
    if links > 0 {
        print!(", {links} link(s)");
    }
    println!(", to {}", dest.display());
    for a in &archived {
        println!("archived: {a}");
    }
    for (m, t) in &tamed {
        println!(
            "written by write-only machine {m}: {} item(s) restored without execute, setuid or setgid bits or root as owner{}; `--trust-machine {m}` restores them as written",
            t.restored,
            if t.held_back > 0 { format!(", {} under a dot name not restored (e.g. {})", t.held_back, t.example) } else { String::new() }
        );
    }
    for p in &problems {
        eprintln!("coldvault: {p}");
    }
    if failed > 0 || !archived.is_empty() || !tree.refused.is_empty() || !problems.is_empty() {
        bail!(
            "{failed} file(s) failed, {} archived file(s) not restored, {} unsafe entr(y/ies) refused, {} item(s) not written",
            archived.len(),
            tree.refused.len(),
            problems.len()
        );
    }
    Ok(())
}

/// A tier of the config file (checked when it was loaded; Standard if not).
fn tier_of(t: &str) -> Tier {
    Tier::parse(t).unwrap_or(Tier::Standard)
}
