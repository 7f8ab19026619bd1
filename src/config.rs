//! Configuration: the TOML file written by `coldvault init` and read by every other command.
//!
//! The file holds the bucket settings, the vault descriptor (public key, passphrase-wrapped
//! private key) and the name key (needed to compute object keys, also by write-only mounts).
//! It is written with mode 0600.

use crate::crypto::VaultDescriptor;
use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default = "default_class")]
    pub default_storage_class: String,
    #[serde(default = "default_settle")]
    pub settle_secs: f64,
    /// Storage class per path; first match wins.
    #[serde(default)]
    pub rules: Vec<crate::rules::ClassRule>,
    /// Files smaller than this never go to GLACIER / DEEP_ARCHIVE (minimum billable size).
    #[serde(default = "default_small")]
    pub small_file_threshold: String,
    #[serde(default = "default_class")]
    pub small_file_class: String,
    #[serde(default)]
    pub restore: RestoreSettings,
    /// File-name globs kept local and never uploaded (default: fs::DEFAULT_IGNORE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Name key, base64 (legacy object keys of format 1). Empty on a write-only machine.
    pub name_key: String,
    pub vault: VaultDescriptor,
    /// A write-only machine's config (`coldvault init --write-only`): the vault's public key
    /// only, pinned by its fingerprint; no wrapped private key, no name key, no passphrase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_only: bool,
    /// This machine has seen the vault sign its metadata (docs/FORMAT.md, section 8): a bucket
    /// without its statements is refused rather than read as a vault of an older build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed: bool,
    /// Every object this machine writes is locked this many days (S3 Object Lock; the bucket
    /// must have it enabled: `init` checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock_days: Option<u32>,
    /// COMPLIANCE: not even the account's root can shorten the lock; GOVERNANCE (the default):
    /// a user allowed `s3:BypassGovernanceRetention` can.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub object_lock_compliance: bool,
    /// Per machine, the highest journal record this machine has seen the bucket hold (believed),
    /// the last time it read the vault: a later read that finds less reports a rollback (someone
    /// deleted the newest batches; review N8).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub journal_heads: BTreeMap<String, i64>,
    /// The vault's revocations this machine has seen (statement key below the prefix → the
    /// signed statement): one deleted from the bucket still applies to what this machine reads
    /// (`remote_meta::remembered`; review N2).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, String>,
    /// This machine's id in the bucket, drawn by `init --write-only` so that a policy can limit
    /// its credential to its own journal (`coldvault policy --mode write-only --machine ID`);
    /// `None`: drawn by the first mount and kept in the cache dir's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// The file this config was read from (not stored in it).
    #[serde(skip)]
    pub loaded_from: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSettings {
    pub glacier_tier: String,
    pub deep_archive_tier: String,
    pub days: i32,
    /// Bytes of open-triggered restores allowed per day, e.g. "10GiB".
    pub daily_budget: String,
    /// Extra process names that never trigger a restore.
    pub indexers: Vec<String>,
    pub status_suffix: String,
    /// Hours between ListObjectsV2 storage-class refreshes (0: off).
    pub class_refresh_hours: f64,
}

impl Default for RestoreSettings {
    fn default() -> Self {
        RestoreSettings {
            glacier_tier: "Standard".into(),
            deep_archive_tier: "Bulk".into(),
            days: 7,
            daily_budget: "10GiB".into(),
            indexers: Vec::new(),
            status_suffix: ".restore-status".into(),
            class_refresh_hours: 24.0,
        }
    }
}

fn default_small() -> String {
    "128KiB".into()
}

fn default_class() -> String {
    "STANDARD".into()
}
fn default_settle() -> f64 {
    3.0
}

pub fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(fallback),
    }
}

pub fn default_config_path() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("coldvault").join("config.toml")
}

/// Normalize a key prefix: no leading '/', exactly one trailing '/', or empty.
pub fn normalize_prefix(p: &str) -> Result<String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    if t.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        bail!("invalid --prefix {p:?}: empty, '.' or '..' components are not allowed");
    }
    Ok(format!("{t}/"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {} (create one with `coldvault init --bucket BUCKET`)", path.display()))?;
        let mut c: Config = toml::from_str(&text).with_context(|| format!("malformed config {}", path.display()))?;
        c.validate().with_context(|| format!("invalid config {}", path.display()))?;
        c.loaded_from = Some(path.to_path_buf());
        Ok(c)
    }

    /// Records how far a read of the vault reached in each machine's journal in the config at
    /// `path` (`heads`: the new heads from the old, `remote_meta::Reach::heads`): the config is
    /// read again first, so nothing else another command changed meanwhile is lost.
    pub fn remember_heads(path: &Path, heads: impl FnOnce(&BTreeMap<String, i64>) -> BTreeMap<String, i64>) -> Result<()> {
        Config::update(path, |c| {
            let heads = heads(&c.journal_heads);
            let changed = heads != c.journal_heads;
            c.journal_heads = heads;
            changed
        })
    }

    /// Adds the revocations a read of the vault believed (key → statement) to those the config
    /// at `path` keeps; none is ever dropped.
    pub fn remember_revocations(path: &Path, seen: &BTreeMap<String, String>) -> Result<()> {
        Config::update(path, |c| {
            let before = c.revocations.len();
            for (k, v) in seen {
                c.revocations.entry(k.clone()).or_insert_with(|| v.clone());
            }
            c.revocations.len() != before
        })
    }

    /// Reads the config at `path`, lets `change` change it, and writes it back if it says so,
    /// holding an exclusive lock (`path.lock`) throughout: a mount and a command that update
    /// the config at once (the journal heads, the vault's signing) never lose each other's
    /// change.
    pub fn update(path: &Path, change: impl FnOnce(&mut Config) -> bool) -> Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path.with_extension("toml.lock"))?;
        // SAFETY: flock takes a descriptor `lock` owns and keeps open until the end of this
        // function (closing it releases the lock); it touches no memory of ours.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut c = Config::load(path)?;
        if change(&mut c) {
            c.save(path)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.bucket.is_empty() {
            bail!("bucket is empty");
        }
        if let Some(m) = &self.machine_id {
            if !crate::crypto::sign::is_machine_id(m) {
                bail!("machine_id {m:?} is not a machine id (16 hex digits)");
            }
        }
        if crate::vault::StorageClass::choose(&self.default_storage_class).is_err() {
            bail!("unknown default_storage_class {:?}; one of {:?}", self.default_storage_class, crate::vault::StorageClass::CHOOSABLE);
        }
        for r in &self.rules {
            crate::rules::validate_class(&r.class).map_err(|e| anyhow::anyhow!("rule {:?}: {e}", r.glob))?;
        }
        crate::rules::validate_class(&self.small_file_class).map_err(|e| anyhow::anyhow!("small_file_class: {e}"))?;
        parse_size(&self.small_file_threshold).context("small_file_threshold")?;
        parse_size(&self.restore.daily_budget).context("restore.daily_budget")?;
        for t in [&self.restore.glacier_tier, &self.restore.deep_archive_tier] {
            if crate::vault::Tier::parse(t).is_none() {
                bail!("unknown restore tier {t:?}; one of {:?}", crate::vault::Tier::NAMES);
            }
        }
        if self.restore.days < 1 {
            bail!("restore.days must be at least 1");
        }
        if self.restore.status_suffix.is_empty() || self.restore.status_suffix.contains('/') {
            bail!("restore.status_suffix must be a non-empty file-name suffix");
        }
        if self.settle_secs.is_nan() || self.settle_secs < 0.0 {
            bail!("settle_secs must be >= 0");
        }
        if self.write_only {
            if self.vault.has_secret() || !self.name_key.is_empty() {
                bail!("a write-only config holds no private key and no name key, but this one does");
            }
        } else {
            self.name_key()?;
        }
        self.vault.public_key().context("vault.public_key")?;
        Ok(())
    }

    pub fn name_key(&self) -> Result<[u8; 32]> {
        let v = B64.decode(&self.name_key).context("name_key is not base64")?;
        v.try_into().map_err(|_| anyhow::anyhow!("name_key must be 32 bytes"))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let text = toml::to_string_pretty(self)?;
        // A name of its own: two processes saving at once never write into one file.
        let tmp = path.with_extension(format!("toml.tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn default_cache_dir(&self) -> PathBuf {
        xdg_dir("XDG_CACHE_HOME", ".cache").join("coldvault").join(&self.vault.vault_id)
    }

    pub fn s3_settings(&self) -> crate::store::s3::S3Settings {
        crate::store::s3::S3Settings {
            bucket: self.bucket.clone(),
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            object_lock: self.object_lock_days.map(|days| crate::store::s3::ObjectLock { days, compliance: self.object_lock_compliance }),
        }
    }
}

/// Parse sizes like "0", "512M", "10GiB", "1048576".
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let idx = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(idx);
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        u => bail!("bad size unit {u:?} in {s:?}"),
    };
    n.checked_mul(mult).with_context(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    /// Sizes as users write them; one too large for 64 bits is an error, never a wrapped number
    /// (`--max-file-size 16777216T` wrapped to 0 and passed the check against 5 TiB).
    #[test]
    fn sizes_parse_and_overflow_is_refused() {
        assert_eq!(super::parse_size("128KiB").unwrap(), 128 << 10);
        assert_eq!(super::parse_size(" 2G ").unwrap(), 2 << 30);
        assert_eq!(super::parse_size("5T").unwrap(), 5 << 40);
        assert!(super::parse_size("16777216T").is_err());
        assert!(super::parse_size("99999999999999999999").is_err());
        assert!(super::parse_size("3 parsecs").is_err());
    }

    /// Two processes updating one config at once (a mount recording that the vault signs, an
    /// `ls` recording journal heads) lose neither change, and the file stays readable.
    #[test]
    fn concurrent_updates_of_the_config_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let (d, _) = crate::crypto::VaultDescriptor::create_with_cost(b"pw", 8, 1);
        let mut t = toml::Table::new();
        t.insert("bucket".into(), "b".into());
        t.insert("name_key".into(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        t.insert("vault".into(), toml::Value::try_from(&d).unwrap());
        std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
        super::Config::load(&path).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let seen = std::collections::BTreeMap::from([(format!("{t:016x}"), i + 1)]);
                        super::Config::remember_heads(&path, |old| crate::remote_meta::Reach { seen: seen.clone(), ..Default::default() }.heads(old))
                            .unwrap();
                        if t == 0 && i == 10 {
                            super::Config::update(&path, |c| {
                                c.signed = true;
                                true
                            })
                            .unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = super::Config::load(&path).unwrap();
        assert!(c.signed);
        assert_eq!(c.journal_heads.len(), 4);
        assert!(c.journal_heads.values().all(|&q| q == 25), "{:?}", c.journal_heads);
    }
}
