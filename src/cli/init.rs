//! `coldvault init`: create a vault (key pair, wrapped private key and descriptor in the bucket,
//! local config), join an existing one, or set up a write-only machine from its public key.

use super::pass::{passphrase, unlock, PassArgs};
use super::runtime;
use super::s3::{connect, explain_store};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use coldvault::config::{self, Config};
use coldvault::crypto::VaultDescriptor;
use coldvault::store::{s3::S3Store, ObjectStore, PutOptions, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    target: InitTarget,
    #[command(flatten)]
    pass: PassArgs,
    /// Set up a write-only machine: it keeps only the vault's public key (no passphrase,
    /// no private key), read from the bucket's vault.json and checked against --fingerprint.
    #[arg(long, requires = "fingerprint")]
    write_only: bool,
    /// The vault's fingerprint, from `coldvault key fingerprint` on a full machine.
    #[arg(long, requires = "write_only")]
    fingerprint: Option<String>,
}

/// Where `init` sets a vault up, as given on its command line.
#[derive(Args)]
struct InitTarget {
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
    /// Lock every object this machine writes for this many days (S3 Object Lock): nobody can
    /// delete or overwrite it until then, whatever credentials leak. The bucket must have
    /// Object Lock enabled (checked now).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
    object_lock_days: Option<u32>,
    /// With --object-lock-days: COMPLIANCE mode (not even the account's root can shorten the
    /// lock) instead of GOVERNANCE (a user allowed s3:BypassGovernanceRetention can).
    #[arg(long, requires = "object_lock_days")]
    object_lock_compliance: bool,
}

pub fn run(a: InitArgs) -> Result<()> {
    match a.fingerprint {
        Some(fp) if a.write_only => cmd_init_write_only(a.target, &fp),
        _ => cmd_init(a.target, a.pass),
    }
}

/// The config `init` is about to write, with its settings checked and defaults filled in; its
/// vault is a placeholder until the real one is created, joined or read. Refuses to overwrite
/// an existing config.
fn init_config(t: InitTarget, write_only: bool) -> Result<(PathBuf, Config)> {
    let InitTarget { bucket, prefix, endpoint_url, region, config, default_storage_class: class, object_lock_days, object_lock_compliance } = t;
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
        object_lock_days,
        object_lock_compliance,
        journal_heads: Default::default(),
        revocations: Default::default(),
        machine_id: None,
        loaded_from: None,
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
        if probe.object_lock_days.is_some() {
            if let Some(why) = store.object_lock_refused().await.map_err(|e| explain_store(e, &probe.bucket, &probe.endpoint_url))? {
                bail!("{why}; nothing written");
            }
        }
        match store.get_object(&key, coldvault::crypto::MAX_DESCRIPTOR_BYTES).await {
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
        // A vault that signed once stays signed for every machine that joins it: its
        // vault.json says so, and its objects carry signatures (review N1).
        let marked =
            coldvault::remote_meta::trust::marks_signing(sk, &desc).map_err(|e| anyhow!("s3://{}/{key}: {e}; nothing written", cfg.bucket))?;
        if !t.signed {
            let s = rt
                .block_on(coldvault::remote_meta::trust::survey(&store, &cfg.prefix, &t))
                .map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))?;
            if !s.signed.is_empty() {
                bail!("{}; nothing written", s.why_not_start(&cfg.prefix).expect("signed objects are a reason"));
            }
            if marked {
                bail!(
                    "this vault signs its metadata (its vault.json says so), but none of its statements is left under {}m/ (deleted?): nothing in it can be told from a forgery{}; nothing written (restore {}m/ from a copy of the bucket or its object versions)",
                    cfg.prefix,
                    s.why_not_start(&cfg.prefix).map(|w| format!(" ({w})")).unwrap_or_default(),
                    cfg.prefix
                );
            }
        }
        cfg.signed = t.signed || marked;
    } else {
        // A new vault only where nothing of one is: a vault.json deleted from a vault in use
        // must not turn a machine's recovery into a new, unrelated vault (review N10).
        let occupied = rt.block_on(async {
            for sub in ["d/", "j/", "s/", "m/"] {
                if let Some(o) = store.list(&format!("{}{sub}", cfg.prefix)).await?.into_iter().next() {
                    return Ok(Some(o.key));
                }
            }
            Ok::<_, StoreError>(None)
        });
        if let Some(k) = occupied.map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))? {
            bail!(
                "s3://{}/{key} is missing, but s3://{}/{k} shows a vault was here (its descriptor deleted?): no new vault is made over it; restore {key} from a copy of the bucket or its object versions, or choose another --prefix",
                cfg.bucket,
                cfg.bucket
            );
        }
        let desc = VaultDescriptor { signs: Some(coldvault::remote_meta::trust::mark_signing(sk, &desc)), ..desc.clone() };
        cfg.vault = desc.clone();
        let body = serde_json::to_vec_pretty(&desc)?;
        rt.block_on(store.put_object(&key, body.into(), &PutOptions { storage_class: "STANDARD".into(), if_none_match: true, ..Default::default() }))
            .map_err(|e| explain_store(e, &cfg.bucket, &cfg.endpoint_url))?;
        // A new vault signs from the start: its (empty) adoption statement says so, and it signs
        // what its vault.json says.
        rt.block_on(coldvault::remote_meta::trust::start_signing(&store, sk, &cfg.prefix))
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
    let body = rt
        .block_on(async { S3Store::connect(&cfg.s3_settings()).await.get_object(&key, coldvault::crypto::MAX_DESCRIPTOR_BYTES).await })
        .map_err(|e| {
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
    // Its machine id, drawn now: a policy can then limit its credential to its own journal.
    let machine = hex::encode(rand::random::<[u8; 8]>());
    cfg.machine_id = Some(machine.clone());
    cfg.validate()?;
    cfg.save(&path)?;
    println!(
        "write-only machine {machine} set up for vault {} in s3://{bucket}/{prefix} (fingerprint {})",
        desc.vault_id,
        coldvault::crypto::fingerprint(&pk)
    );
    println!("config written to {}: it holds the public key only; `coldvault mount` here mounts write-only", path.display());
    let p = prefix.trim_end_matches('/');
    let p = if p.is_empty() { String::new() } else { format!(" --prefix {p}") };
    println!("limit its credential to its own journal and snapshots: coldvault policy --bucket {bucket}{p} --mode write-only --machine {machine}");
    Ok(())
}
