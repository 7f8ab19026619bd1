//! `coldvault key`: change the passphrase, print the vault's fingerprint, or export a recovery
//! key; and the recovery key's format (base32 in groups of 4, with a checksum), read back by
//! `--recovery-key-file`.

use super::pass::{keys_for, passphrase, PassArgs};
use super::runtime;
use super::s3::connect;
use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use coldvault::config::{self, Config};
use coldvault::crypto::VaultKeys;
use coldvault::store::{ObjectStore, PutOptions};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeyCmd {
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

pub fn run(cmd: KeyCmd) -> Result<()> {
    match cmd {
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
                put_descriptor(&store, &cfg).await
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
            println!("{}", recovery_key(&keys));
            eprintln!("Write this down and keep it offline: with it and the bucket, anyone can read the vault.");
            Ok(())
        }
    }
}

async fn put_descriptor(store: &dyn ObjectStore, cfg: &Config) -> Result<()> {
    let body = serde_json::to_vec_pretty(&cfg.vault)?;
    store
        .put_object(
            &format!("{}coldvault/vault.json", cfg.prefix),
            body.into(),
            &PutOptions { storage_class: "STANDARD".into(), ..Default::default() },
        )
        .await
        .map_err(|e| anyhow!("updating the vault descriptor in the bucket: {e}"))
}

/// Printable recovery key: the vault's private key and name key, base32 in groups of 4, with a checksum.
fn recovery_key(keys: &VaultKeys) -> String {
    let sk = keys.secret.as_ref().expect("unlocked").to_bytes();
    let mut raw = Vec::with_capacity(68);
    raw.extend_from_slice(&sk);
    raw.extend_from_slice(&keys.name_key);
    let sum = Sha256::digest(&raw);
    raw.extend_from_slice(&sum[..4]);
    let enc = base32(&raw);
    let groups: Vec<String> = enc.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).to_string()).collect();
    format!("CVRK1-{}", groups.join("-"))
}

/// Parse a recovery key back into keys (checksum verified).
pub fn parse_recovery_key(s: &str, public: &x25519_dalek::PublicKey) -> Result<VaultKeys> {
    let t: String = s.trim().trim_start_matches("CVRK1-").chars().filter(|c| *c != '-' && !c.is_whitespace()).collect();
    let raw = unbase32(&t.to_ascii_uppercase()).ok_or_else(|| anyhow!("recovery key: not base32"))?;
    if raw.len() != 68 || Sha256::digest(&raw[..64])[..4] != raw[64..] {
        bail!("recovery key: wrong length or checksum (typo?)");
    }
    let mut sk = [0u8; 32];
    sk.copy_from_slice(&raw[..32]);
    let mut nk = [0u8; 32];
    nk.copy_from_slice(&raw[32..64]);
    let secret = x25519_dalek::StaticSecret::from(sk);
    if x25519_dalek::PublicKey::from(&secret) != *public {
        bail!("recovery key belongs to another vault");
    }
    Ok(VaultKeys { public: *public, secret: Some(secret), name_key: nk })
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = B32.iter().position(|x| *x == c)? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}
