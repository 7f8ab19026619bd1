//! `coldvault machine`: which machines' signing keys the vault believes: allow, revoke and list
//! them, or adopt what is in the bucket now (run on a full machine).

use super::pass::{load_unlocked, PassArgs};
use super::runtime;
use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use coldvault::config;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum MachineCmd {
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
    /// Believe the unsigned journal batches and snapshots of these machines that are in the
    /// bucket now: a vault of an older build starting to sign, or a machine of an older build
    /// that wrote into it since (upgrade it too). Shows what each object would change, then
    /// asks (or --yes). Never a machine the vault allows a key for, or whose objects carry
    /// signatures: unsigned objects in its name are someone else's.
    Adopt {
        /// A machine id whose unsigned objects to adopt (as `machine list` names it); repeat
        /// for several.
        #[arg(long = "machine", required = true)]
        machines: Vec<String>,
        /// Adopt without asking, after showing what would change.
        #[arg(long)]
        yes: bool,
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

pub fn run(cmd: MachineCmd) -> Result<()> {
    use coldvault::crypto::sign::key_id;
    use coldvault::remote_meta::trust;
    let (config, pass) = match &cmd {
        MachineCmd::Allow { config, pass, .. }
        | MachineCmd::Revoke { config, pass, .. }
        | MachineCmd::List { config, pass }
        | MachineCmd::Adopt { config, pass, .. } => (config, pass),
    };
    let cfg_path = config.clone().unwrap_or_else(config::default_config_path);
    let (mut cfg, keys) = load_unlocked(Some(cfg_path.clone()), pass)?;
    let sk = keys.secret.as_ref().expect("unlocked");
    let listing = matches!(cmd, MachineCmd::List { .. });
    let rt = runtime()?;
    let signed = rt.block_on(async {
        let store: Arc<dyn coldvault::store::ObjectStore> = super::s3::connect_vault(&cfg).await?;
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
                let (m, vk) = coldvault::crypto::sign::parse_token(&token)?;
                let role = if full { trust::Role::Full } else { trust::Role::WriteOnly };
                if let Some(other) = t.machines.get(&m).and_then(|v| v.iter().find(|k| k.key != vk)) {
                    bail!(
                        "machine {m} already has a key allowed ({}, {:?}): a token naming it with another key is not that machine (each cache dir has its own id and key)",
                        key_id(&other.key),
                        other.role
                    );
                }
                if let Some((other, _)) = t.machines.iter().find(|(o, ks)| **o != m && ks.iter().any(|k| k.key == vk)) {
                    bail!("this key ({}) is allowed for machine {other} already: one key signs for one machine; nothing allowed", key_id(&vk));
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
                    if let Some(why) = trust::survey(&store, &cfg.prefix, &t).await?.why_not_start(&cfg.prefix) {
                        bail!("{why}; nothing allowed");
                    }
                    trust::start_signing(&store, sk, &cfg.prefix).await?;
                    println!("this vault now signs its metadata");
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
            MachineCmd::Adopt { machines, yes, .. } => {
                start_signing("adopting")?;
                let survey = trust::survey(&store, &cfg.prefix, &t).await?;
                if !t.signed && !survey.signed.is_empty() {
                    bail!("{}; nothing adopted", survey.why_not_start(&cfg.prefix).expect("signed objects are a reason"));
                }
                let mut objects = std::collections::BTreeMap::new();
                for m in &machines {
                    if t.machines.contains_key(m) {
                        bail!("the vault allows a key of machine {m}: it signs what it writes, so unsigned objects in its name are not its own (forged?); nothing adopted");
                    }
                    if let Some(k) = survey.signed.get(m) {
                        bail!("{} object(s) in machine {m}'s name carry a signature (e.g. {}{}): unsigned ones beside them are not its own (forged?); nothing adopted", k.len(), cfg.prefix, k[0]);
                    }
                    let Some(found) = survey.unsigned.get(m) else {
                        bail!("nothing unsigned of machine {m} to adopt (`coldvault machine list` names the machines writing to the vault)");
                    };
                    println!("machine {m}: {} unsigned object(s) a rebuild would believe once adopted:", found.len());
                    for (rel, l) in found {
                        println!("  {}{rel}: {}", cfg.prefix, trust::describe(&store, &keys, &cfg.prefix, rel, l).await);
                        objects.insert(rel.clone(), l.hash.clone());
                    }
                }
                let others: Vec<&String> = survey.unsigned.keys().filter(|m| !machines.contains(m)).collect();
                if !others.is_empty() {
                    println!("not adopted (not named): unsigned objects of machine(s) {}", others.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "));
                }
                if !yes && !super::pass::confirm("adopt these objects (rebuilds believe them from now on, as they are now)?")? {
                    bail!("nothing adopted");
                }
                let n = trust::adopt(&store, sk, &cfg.prefix, objects).await?;
                println!("{n} journal batch(es) and snapshot(s) adopted: rebuilds believe them as they are now");
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
