//! Which objects in the bucket a rebuild believes (docs/FORMAT.md, section 8).
//!
//! Anyone who can put objects under the prefix can make objects that decrypt: the vault's
//! public key is public. So every data object, journal batch and snapshot carries its writer's
//! signature (`crypto::sign`), and the vault key signs statements under `P m/`:
//! * `m/<machine>-<key id>.enroll`: this machine key may write this machine's stream
//!   (`full`: a machine holding the passphrase; `write-only`: its snapshots only describe its
//!   own stream, and what it says is dead hides only its own objects);
//! * `m/<machine>-<key id>-<ms>.revoke`: that key is no longer believed (after a sequence number, or
//!   at all);
//! * `m/adopt-<ms>`: the unsigned batches and snapshots of older builds that were in the bucket
//!   when the vault started signing, each by the SHA-256 of its header. A vault created by this
//!   build starts with an empty one. Its presence is what makes the vault *signed*: from then
//!   on an unsigned object that it does not list is refused.
//!
//! Only a machine with the private key can write a statement, and only such a machine can
//! read the bucket's metadata at all, so the rebuild needs nothing from the bucket to know the
//! vault's signing key.

use super::RemoteError;
use crate::crypto::sign::{self, MachineSigner};
use crate::store::{ObjectStore, PutOptions, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Full,
    WriteOnly,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrollment {
    machine: String,
    key: String,
    role: Role,
    ts_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocation {
    machine: String,
    key: String,
    /// Asked for: the machine's journal up to this sequence number stays believed (written
    /// before the machine was lost); `None`: nothing it signed is.
    after_seq: Option<i64>,
    /// What stays believed, exactly: its batches and snapshots up to `after_seq` that were in the
    /// bucket at revocation (key below the prefix → hex SHA-256 of the header). A thief of the
    /// key cannot add to it, whatever sequence numbers it puts in new keys.
    keep: BTreeMap<String, String>,
    ts_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Adoption {
    ts_ms: i64,
    /// Object key below the prefix → hex SHA-256 of its 128-byte header.
    objects: BTreeMap<String, String>,
}

/// What of `vault.json` the vault signs (`m/vault-<ms>`): everything but the passphrase wrap of
/// the private key (its Argon2id parameters, salt, nonce and wrapped secret change with the
/// passphrase, and a wrong one fails the unlock anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDescriptor {
    pub format: u16,
    pub vault_id: String,
    pub public_key: String,
    pub name_key_eph: String,
    pub name_key_wrapped: String,
    pub ts_ms: i64,
}

impl SignedDescriptor {
    pub fn of(d: &crate::crypto::VaultDescriptor) -> SignedDescriptor {
        SignedDescriptor {
            format: d.format,
            vault_id: d.vault_id.clone(),
            public_key: d.public_key.clone(),
            name_key_eph: d.name_key_eph.clone(),
            name_key_wrapped: d.name_key_wrapped.clone(),
            ts_ms: 0,
        }
    }

    /// Whether `d` says what the vault signed (times aside).
    pub fn matches(&self, d: &crate::crypto::VaultDescriptor) -> bool {
        SignedDescriptor { ts_ms: 0, ..self.clone() } == SignedDescriptor::of(d)
    }
}

/// Sign what `vault.json` says (a new vault; a vault that started signing without it).
pub async fn sign_descriptor(store: &dyn ObjectStore, sk: &StaticSecret, prefix: &str, d: &crate::crypto::VaultDescriptor) -> Result<(), StoreError> {
    let ts_ms = crate::clock::now_ms();
    put_statement(store, sk, prefix, &format!("m/vault-{ts_ms:016}"), &SignedDescriptor { ts_ms, ..SignedDescriptor::of(d) }).await
}

/// Where the mark that a vault signs (`VaultDescriptor::signs`) says it is: in `vault.json`.
const SIGNS_REL: &str = "coldvault/vault.json#signs";

/// The mark `vault.json` carries once its vault signs: the vault's statement of its own id.
pub fn mark_signing(sk: &StaticSecret, d: &crate::crypto::VaultDescriptor) -> String {
    String::from_utf8(sign::sign_statement(sk, SIGNS_REL, &d.vault_id)).expect("json is text")
}

/// Whether `d` says its vault signs (`None`: it does not say; an error: it says so in a mark
/// that is not the vault's, or not for this vault).
pub fn marks_signing(sk: &StaticSecret, d: &crate::crypto::VaultDescriptor) -> Result<bool, String> {
    let Some(mark) = &d.signs else { return Ok(false) };
    match sign::open_statement(sk, SIGNS_REL, mark.as_bytes()) {
        Ok(id) if id == d.vault_id => Ok(true),
        Ok(id) => Err(format!("its mark that the vault signs names vault {id:?}, not {:?}", d.vault_id)),
        Err(e) => Err(format!("its mark that the vault signs is not the vault's ({e})")),
    }
}

/// An adoption or revocation larger than this is refused unread (it lists about 100 bytes per
/// object)…
const MAX_LIST_STATEMENT: u64 = 256 << 20;
/// …and an enrollment larger than this.
const MAX_ENROLL_STATEMENT: u64 = 4 << 10;
/// Header GETs in flight while adopting a vault's unsigned objects.
const ADOPT_PARALLEL: usize = 16;

/// One allowed machine key.
#[derive(Clone, Debug)]
pub struct AllowedKey {
    pub key: VerifyingKey,
    pub role: Role,
    pub ts_ms: i64,
    /// Revoked: only these objects (key below the prefix → hex SHA-256 of the header) stay
    /// believed; empty when revoked whole. Several revocations: what all of them keep.
    pub revoked: Option<BTreeMap<String, String>>,
}

/// Why a rebuild does not believe an object (`Trust::check`) or a statement (`Trust::load`):
/// the security verdict. `Display` is the sentence the rebuild reports (after the object's
/// name), so users and tests read the same words as before this was a type.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned, and not one of the objects of older builds this vault adopted when it started signing")]
    Unadopted,
    #[error("its signature (x-amz-meta-cvs) is malformed")]
    MalformedSignature,
    #[error("signed as machine {0}, but stored under another machine's name")]
    OtherStream(String),
    #[error("signed by machine {0}, which this vault does not allow (if it is yours: `coldvault machine allow` its token on a full machine)")]
    NotAllowed(String),
    #[error("its signature does not verify with any key allowed for machine {0} (forged, or moved from another key)")]
    BadSignature(String),
    #[error("signed by machine {machine} with key {key_id}, which was revoked (and this object is not one it kept)")]
    Revoked { machine: String, key_id: String },
    /// The object is too short to hold the header a signature covers.
    #[error("shorter than a header")]
    ShorterThanHeader,
    /// A statement whose vault signature does not hold (or that is no statement at all).
    #[error(transparent)]
    Statement(#[from] sign::SignError),
    /// A statement whose body is not what its kind holds (the JSON parser's words).
    #[error("{0}")]
    Body(String),
    #[error("key is not 32 bytes of base64")]
    KeyNotBase64,
    #[error("key is not an Ed25519 public key")]
    KeyNotEd25519,
    #[error("its content does not match its key")]
    NotItsKey,
}

/// Who wrote an object that passed `Trust::check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The signing machine; `None` for an unsigned object of an older build.
    pub machine: Option<String>,
    pub role: Role,
    /// Unsigned in a vault that signs, believed because the user adopted it: it never
    /// outranks what machines signed (a snapshot of it is not a rebuild's base while a signed
    /// one is, and vouches for no other machine's journal).
    pub adopted: bool,
}

#[derive(Default, Debug)]
pub struct Trust {
    /// The vault has started signing: an object with a statement's name is listed under `m/`
    /// (valid or not: what cannot be read fails closed).
    pub signed: bool,
    pub machines: BTreeMap<String, Vec<AllowedKey>>,
    adopted: HashMap<String, String>,
    /// What the vault signed of its descriptor: the newest `m/vault-<ms>`.
    pub descriptor: Option<SignedDescriptor>,
    /// Statements that could not be read or verified, by name.
    pub problems: Vec<String>,
    /// Machines with a revoked key, and the highest journal record of theirs still believed
    /// (0: revoked whole): their journals end there on purpose, which is no rollback.
    pub revoked: BTreeMap<String, i64>,
    /// Machines some adopted object is named for.
    adopted_machines: std::collections::BTreeSet<String>,
    /// The revocations believed, as their statement objects (key below the prefix → object):
    /// what a machine keeps so that deleting one from the bucket undoes nothing (review N2).
    pub revocation_objects: BTreeMap<String, String>,
}

fn enroll_key(machine: &str, vk: &VerifyingKey) -> String {
    format!("m/{machine}-{}.enroll", sign::key_id(vk))
}

/// Revocations are named by their time too: a later, stricter one never collides with an
/// earlier one (statements are never overwritten).
fn revoke_key(machine: &str, vk: &VerifyingKey, ts_ms: i64) -> String {
    format!("m/{machine}-{}-{ts_ms:016}.revoke", sign::key_id(vk))
}

/// What kind of statement a name under `m/` is, if it is one coldvault writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Enroll,
    Revoke,
    Adopt,
    Vault,
}

fn kind_of(rel: &str) -> Option<Kind> {
    let name = rel.strip_prefix("m/")?;
    let dec16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(ms) = name.strip_prefix("adopt-") {
        return dec16(ms).then_some(Kind::Adopt);
    }
    if let Some(ms) = name.strip_prefix("vault-") {
        return dec16(ms).then_some(Kind::Vault);
    }
    if let Some(stem) = name.strip_suffix(".enroll") {
        let (m, k) = stem.split_once('-')?;
        return (sign::is_machine_id(m) && sign::is_machine_id(k)).then_some(Kind::Enroll);
    }
    let stem = name.strip_suffix(".revoke")?;
    let mut parts = stem.split('-');
    let ok = matches!((parts.next(), parts.next(), parts.next(), parts.next()), (Some(m), Some(k), Some(ms), None) if sign::is_machine_id(m) && sign::is_machine_id(k) && dec16(ms));
    ok.then_some(Kind::Revoke)
}

impl Trust {
    /// Read and verify every statement under `P m/`. A statement that fails is reported and
    /// ignored (a forged one must not stop the rebuild); an S3 error other than "gone" stops it.
    /// The vault counts as signing as soon as one object with a statement's name is listed,
    /// valid or not: what cannot be read fails closed (refusing unsigned objects), never open.
    pub async fn load(store: &Arc<dyn ObjectStore>, sk: &StaticSecret, prefix: &str) -> Result<Trust, RemoteError> {
        let mut t = Trust::default();
        let listed = store.list(&format!("{prefix}m/")).await?;
        let mut revocations = Vec::new();
        for o in listed {
            let rel = &o.key[prefix.len()..];
            let Some(kind) = kind_of(rel) else {
                t.problems.push(format!("{}: not a statement coldvault writes; ignored", o.key));
                continue;
            };
            t.signed = true;
            if o.storage_class == super::remembered::LOCAL_COPY {
                t.problems.push(format!("revocation {} is gone from the bucket (deleted?): the copy this machine kept of it still applies", o.key));
            }
            let max = if matches!(kind, Kind::Enroll | Kind::Vault) { MAX_ENROLL_STATEMENT } else { MAX_LIST_STATEMENT };
            if o.size > max {
                t.problems.push(format!("statement {}: {} bytes, larger than any coldvault writes; ignored", o.key, o.size));
                continue;
            }
            let body = match store.get_object(&o.key, o.size).await {
                Ok(b) => b,
                Err(e) if super::stops_rebuild(&e) => return Err(e.into()),
                Err(e) => {
                    t.problems.push(format!("statement {} cannot be read ({e}); ignored", o.key));
                    continue;
                }
            };
            if let Err(e) = t.take(sk, kind, rel, &body, &mut revocations) {
                t.problems.push(format!("statement {}: {e}; ignored", o.key));
            }
        }
        t.finish(revocations);
        Ok(t)
    }

    /// Verify one statement (`body`, found at `rel`) and take what it says.
    fn take(&mut self, sk: &StaticSecret, kind: Kind, rel: &str, body: &[u8], revocations: &mut Vec<Revocation>) -> Result<(), Refusal> {
        let text = sign::open_statement(sk, rel, body)?;
        match kind {
            Kind::Enroll => {
                let e: Enrollment = serde_json::from_str(&text).map_err(|e| Refusal::Body(e.to_string()))?;
                let vk = decode_key(&e.key)?;
                if rel != enroll_key(&e.machine, &vk) {
                    return Err(Refusal::NotItsKey);
                }
                self.machines.entry(e.machine).or_default().push(AllowedKey { key: vk, role: e.role, ts_ms: e.ts_ms, revoked: None });
            }
            Kind::Revoke => {
                let r: Revocation = serde_json::from_str(&text).map_err(|e| Refusal::Body(e.to_string()))?;
                if rel != revoke_key(&r.machine, &decode_key(&r.key)?, r.ts_ms) {
                    return Err(Refusal::NotItsKey);
                }
                if let Ok(object) = std::str::from_utf8(body) {
                    self.revocation_objects.insert(rel.to_string(), object.to_string());
                }
                revocations.push(r);
            }
            Kind::Adopt => {
                let a: Adoption = serde_json::from_str(&text).map_err(|e| Refusal::Body(e.to_string()))?;
                self.adopted.extend(a.objects);
            }
            Kind::Vault => {
                let d: SignedDescriptor = serde_json::from_str(&text).map_err(|e| Refusal::Body(e.to_string()))?;
                if self.descriptor.as_ref().is_none_or(|o| o.ts_ms < d.ts_ms) {
                    self.descriptor = Some(d);
                }
            }
        }
        Ok(())
    }

    /// Once every statement is read: one role per machine id, then the revocations.
    fn finish(&mut self, revocations: Vec<Revocation>) {
        self.adopted_machines = self.adopted.keys().filter_map(|k| super::parse_seq_key(k.get(2..)?).map(|(m, _, _)| m)).collect();
        // One machine id, one role: a write-only key allowed for a machine that has a full key
        // (a token naming another machine's id) would let it act as that machine's own.
        for (m, ks) in self.machines.iter_mut() {
            if ks.iter().any(|k| k.role == Role::Full) && ks.iter().any(|k| k.role == Role::WriteOnly) {
                self.problems.push(format!("machine {m} has keys allowed as full and as write-only: its write-only keys are not believed"));
                ks.retain(|k| k.role == Role::Full);
            }
        }
        // One key, one machine id: an object signature does not name the machine (format 2), so
        // a key allowed for two ids would sign for both (review N11). The first allowed keeps it.
        let mut first: HashMap<[u8; 32], (i64, String)> = HashMap::new();
        for (m, ks) in &self.machines {
            for k in ks {
                let e = first.entry(k.key.to_bytes()).or_insert((k.ts_ms, m.clone()));
                if (k.ts_ms, m) < (e.0, &e.1) {
                    *e = (k.ts_ms, m.clone());
                }
            }
        }
        let mut twice = Vec::new();
        for (m, ks) in self.machines.iter_mut() {
            ks.retain(|k| {
                let (_, owner) = &first[&k.key.to_bytes()];
                if owner != m {
                    twice
                        .push(format!("key {} is allowed for machine {owner} and again for machine {m}: not believed for {m}", sign::key_id(&k.key)));
                }
                owner == m
            });
        }
        self.problems.append(&mut twice);
        for r in revocations {
            let Ok(vk) = decode_key(&r.key) else { continue };
            for k in self.machines.get_mut(&r.machine).into_iter().flatten().filter(|k| k.key == vk) {
                let until = r.after_seq.unwrap_or(0).max(0);
                self.revoked.entry(r.machine.clone()).and_modify(|q| *q = (*q).min(until)).or_insert(until);
                // Several revocations of one key: only what every one of them keeps stays.
                k.revoked = Some(match k.revoked.take() {
                    None => r.keep.clone(),
                    Some(kept) => kept.into_iter().filter(|(key, h)| r.keep.get(key) == Some(h)).collect(),
                });
            }
        }
    }

    /// What `load` makes of these statements (key below the prefix, object), without a store:
    /// for the fuzz targets (`crate::fuzz`).
    #[doc(hidden)]
    pub fn from_statements(sk: &StaticSecret, statements: &[(&str, &[u8])]) -> Trust {
        let mut t = Trust::default();
        let mut revocations = Vec::new();
        for (rel, body) in statements {
            let Some(kind) = kind_of(rel) else { continue };
            t.signed = true;
            if let Err(e) = t.take(sk, kind, rel, body, &mut revocations) {
                t.problems.push(e.to_string());
            }
        }
        t.finish(revocations);
        t
    }

    /// The machines the vault allows only as write-only.
    pub fn write_only_machines(&self) -> std::collections::BTreeSet<String> {
        self.machines.iter().filter(|(_, ks)| ks.iter().any(|k| k.role == Role::WriteOnly)).map(|(m, _)| m.clone()).collect()
    }

    /// Whether the batch or snapshot at `rel_key` (below the prefix), in machine `m`'s stream,
    /// could be believed at all, before anything of it is read: in a vault that signs, not
    /// when the vault allows no key of that machine, or only revoked ones that did not keep it,
    /// and adopted nothing of it. Junk under an unknown machine's id then costs a rebuild one
    /// listing entry (review N3, N12).
    pub fn worth_reading(&self, rel_key: &str, m: &str) -> bool {
        if !self.signed || self.adopted_machines.contains(m) {
            return true;
        }
        self.machines.get(m).is_some_and(|ks| ks.iter().any(|k| k.revoked.as_ref().is_none_or(|keep| keep.contains_key(rel_key))))
    }

    /// Whether an object may be believed, and who wrote it. `rel_key`: its key below the
    /// prefix; `stream`: the machine its key names (batches, snapshots); `sig`: its
    /// `x-amz-meta-cvs`.
    pub fn check(&self, vault: &PublicKey, rel_key: &str, stream: Option<&str>, header: &[u8], sig: Option<&str>) -> Result<Writer, Refusal> {
        // A vault of an older build (no statement): believed as before, signed or not.
        if !self.signed {
            return Ok(Writer { machine: None, role: Role::Full, adopted: false });
        }
        let Some(sig) = sig else {
            return match self.adopted.get(rel_key) {
                Some(want) if *want == crate::crypto::sha256_hex(header) => Ok(Writer { machine: None, role: Role::Full, adopted: true }),
                _ => Err(Refusal::Unadopted),
            };
        };
        let (m, s) = sign::parse_object_signature(sig).ok_or(Refusal::MalformedSignature)?;
        if stream.is_some_and(|st| st != m) {
            return Err(Refusal::OtherStream(m));
        }
        let Some(allowed) = self.machines.get(&m).filter(|v| !v.is_empty()) else { return Err(Refusal::NotAllowed(m)) };
        let Some(k) = allowed.iter().find(|k| sign::verify_object(&k.key, vault, rel_key, header, &s)) else { return Err(Refusal::BadSignature(m)) };
        match &k.revoked {
            Some(keep) if keep.get(rel_key) != Some(&crate::crypto::sha256_hex(header)) => {
                Err(Refusal::Revoked { machine: m, key_id: sign::key_id(&k.key) })
            }
            _ => Ok(Writer { machine: Some(m), role: k.role, adopted: false }),
        }
    }
}

fn decode_key(b: &str) -> Result<VerifyingKey, Refusal> {
    let kb: [u8; 32] = B64.decode(b).ok().and_then(|v| v.try_into().ok()).ok_or(Refusal::KeyNotBase64)?;
    VerifyingKey::from_bytes(&kb).map_err(|_| Refusal::KeyNotEd25519)
}

fn text_of(body: &impl Serialize) -> String {
    serde_json::to_string(body).expect("json")
}

async fn put_statement(store: &dyn ObjectStore, sk: &StaticSecret, prefix: &str, rel: &str, body: &impl Serialize) -> Result<(), StoreError> {
    let obj = sign::sign_statement(sk, rel, &text_of(body));
    let opts = PutOptions { storage_class: "STANDARD".into(), if_none_match: true, ..Default::default() };
    let key = format!("{prefix}{rel}");
    match store.put_object(&key, obj.into(), &opts).await {
        Ok(()) => Ok(()),
        // Our own earlier attempt (its answer lost) is a statement of the vault saying the same;
        // anything else there is someone squatting the name.
        Err(StoreError::AlreadyExists) => {
            let there = store.get_object(&key, MAX_LIST_STATEMENT).await?;
            let Ok(text) = sign::open_statement(sk, rel, &there) else {
                // Not the vault's: someone squatting the name (or junk written over it). A
                // statement is the vault's alone; this one replaces it.
                tracing::warn!(key, "an object that is not the vault's statement sat at this statement's key: replaced");
                let opts = PutOptions { storage_class: "STANDARD".into(), ..Default::default() };
                return store.put_object(&key, sign::sign_statement(sk, rel, &text_of(body)).into(), &opts).await;
            };
            let same = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|mut v| {
                let mut ours = serde_json::to_value(body).expect("json");
                for x in [&mut v, &mut ours] {
                    if let Some(o) = x.as_object_mut() {
                        o.remove("ts_ms");
                    }
                }
                v == ours
            });
            if same {
                Ok(())
            } else {
                Err(StoreError::Permanent {
                    code: "StatementOccupied".into(),
                    message: format!("{key} already holds another statement of this vault; nothing written"),
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// Allow `vk` to write machine `machine`'s stream.
pub async fn enroll(
    store: &dyn ObjectStore,
    sk: &StaticSecret,
    prefix: &str,
    machine: &str,
    vk: &VerifyingKey,
    role: Role,
) -> Result<String, StoreError> {
    let rel = enroll_key(machine, vk);
    put_statement(
        store,
        sk,
        prefix,
        &rel,
        &Enrollment { machine: machine.into(), key: B64.encode(vk.as_bytes()), role, ts_ms: crate::clock::now_ms() },
    )
    .await?;
    Ok(format!("{prefix}{rel}"))
}

/// One journal batch or snapshot as `headers` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Hex SHA-256 of its 128-byte header.
    pub hash: String,
    /// It carries a machine's signature (`x-amz-meta-cvs`), valid or not.
    pub signed: bool,
    pub size: u64,
}

/// The header of each object listed under these sub-prefixes (`j/`, `s/`, or one machine's
/// `j/M/`, `s/M/`) that `want` accepts (key below the prefix), by key below the prefix: its
/// hash and whether it carries a signature (a HEAD and a ranged GET each).
async fn headers(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    subs: &[String],
    want: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Listed>, StoreError> {
    let mut keys = Vec::new();
    for sub in subs {
        keys.extend(
            store
                .list(&format!("{prefix}{sub}"))
                .await?
                .into_iter()
                .filter(|o| o.size >= crate::crypto::HEADER_LEN as u64 && want(&o.key[prefix.len()..]))
                .map(|o| (o.key, o.size)),
        );
    }
    let mut out = BTreeMap::new();
    let mut set = tokio::task::JoinSet::new();
    let mut it = keys.into_iter();
    loop {
        while set.len() < ADOPT_PARALLEL {
            let Some((k, size)) = it.next() else { break };
            let st = store.clone();
            set.spawn(async move {
                let got = async {
                    let signed = st.head_object(&k).await?.metadata.contains_key(sign::META);
                    let h = st.get_range(&k, 0, crate::crypto::HEADER_LEN as u64).await?;
                    Ok::<_, StoreError>(Listed { hash: crate::crypto::sha256_hex(&h), signed, size })
                }
                .await;
                (k, got)
            });
        }
        let Some(done) = set.join_next().await else { break };
        let (k, got) = done.map_err(|e| StoreError::Retryable(format!("header download task: {e}")))?;
        match got {
            Ok(l) => {
                out.insert(k[prefix.len()..].to_string(), l);
            }
            // Gone since the listing, or archived by a lifecycle rule: not listed.
            Err(StoreError::NotFound | StoreError::Archived) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The journal batches and snapshots in the bucket no statement makes believed yet, by the
/// machine their key names: what `coldvault machine adopt` may adopt (`unsigned`), and the
/// objects that carry a machine's signature (`signed`), which adoption never takes.
#[derive(Debug, Default)]
pub struct Survey {
    pub unsigned: BTreeMap<String, BTreeMap<String, Listed>>,
    pub signed: BTreeMap<String, Vec<String>>,
}

impl Survey {
    /// The unsigned objects, by machine and an example key, as a clause of a refusal.
    fn unsigned_named(&self, prefix: &str) -> String {
        if self.unsigned.is_empty() {
            return String::new();
        }
        let each: Vec<String> = self
            .unsigned
            .iter()
            .map(|(m, o)| format!("machine {m}: {} object(s), e.g. {prefix}{}", o.len(), o.keys().next().map_or("", |k| k)))
            .collect();
        format!(" (unsigned objects there, not believed: {})", each.join("; "))
    }

    /// Why a vault without statements must not start signing on its own (a first mount,
    /// `machine allow`): objects that carry signatures mean it signed once and its statements
    /// were deleted; unsigned ones are adopted only when the user names their machine
    /// (review N1). `None`: nothing there, it may start.
    pub fn why_not_start(&self, prefix: &str) -> Option<String> {
        if let Some((m, keys)) = self.signed.iter().next() {
            let n: usize = self.signed.values().map(Vec::len).sum();
            return Some(format!(
                "this vault signed its metadata ({n} journal batch(es) or snapshot(s) carry a machine's signature, e.g. {prefix}{} of machine {m}), but none of its statements is left under {prefix}m/ (deleted?): nothing is adopted or allowed{}; restore {prefix}m/ from a copy of the bucket (or its object versions)",
                keys[0],
                self.unsigned_named(prefix)
            ));
        }
        if !self.unsigned.is_empty() {
            let ms: Vec<&str> = self.unsigned.keys().map(String::as_str).collect();
            let n: usize = self.unsigned.values().map(BTreeMap::len).sum();
            return Some(format!(
                "this vault holds {n} unsigned journal batch(es) and snapshot(s) (machine(s) {}), written by builds before signatures or by someone else: nothing is believed or adopted on its own; review them with `coldvault machine adopt --machine ID` (it shows what each would change and asks)",
                ms.join(", ")
            ));
        }
        None
    }
}

/// Every journal batch and snapshot in the bucket that `t` does not already believe as adopted,
/// by machine (keys in another form than coldvault writes are left out: a rebuild never reads
/// them).
pub async fn survey(store: &Arc<dyn ObjectStore>, prefix: &str, t: &Trust) -> Result<Survey, StoreError> {
    let all = headers(store, prefix, &["j/".to_string(), "s/".to_string()], |rel| super::parse_seq_key(&rel[2..]).is_some()).await?;
    let mut s = Survey::default();
    for (rel, l) in all {
        let Some((m, _, _)) = super::parse_seq_key(&rel[2..]) else { continue };
        if l.signed {
            s.signed.entry(m).or_default().push(rel);
        } else if t.adopted.get(&rel) != Some(&l.hash) {
            s.unsigned.entry(m).or_default().insert(rel, l);
        }
    }
    Ok(s)
}

/// Believe these unsigned objects (key below the prefix → hex SHA-256 of the header) from now
/// on, as they are: one adoption statement. Returns the number adopted.
pub async fn adopt(store: &Arc<dyn ObjectStore>, sk: &StaticSecret, prefix: &str, objects: BTreeMap<String, String>) -> Result<usize, StoreError> {
    let n = objects.len();
    let ts_ms = crate::clock::now_ms();
    put_statement(store.as_ref(), sk, prefix, &format!("m/adopt-{ts_ms:016}"), &Adoption { ts_ms, objects }).await?;
    Ok(n)
}

/// Start signing a vault that has no statement and nothing to adopt: an empty adoption says
/// it signs from now on.
pub async fn start_signing(store: &Arc<dyn ObjectStore>, sk: &StaticSecret, prefix: &str) -> Result<(), StoreError> {
    adopt(store, sk, prefix, BTreeMap::new()).await.map(|_| ())
}

/// Stop believing what `vk` signs for `machine`: everything, or all but its journal batches and
/// snapshots up to `after_seq` that are in the bucket now (listed in the revocation by header).
pub async fn revoke(
    store: &Arc<dyn ObjectStore>,
    sk: &StaticSecret,
    prefix: &str,
    machine: &str,
    vk: &VerifyingKey,
    after_seq: Option<i64>,
) -> Result<String, StoreError> {
    let keep = match after_seq {
        None => BTreeMap::new(),
        Some(n) => {
            let subs = [format!("j/{machine}/"), format!("s/{machine}/")];
            headers(store, prefix, &subs, |rel| super::parse_seq_key(&rel[2..]).is_some_and(|(m, _, last)| m == machine && last <= n))
                .await?
                .into_iter()
                .map(|(rel, l)| (rel, l.hash))
                .collect()
        }
    };
    let ts_ms = crate::clock::now_ms();
    let rel = revoke_key(machine, vk, ts_ms);
    let r = Revocation { machine: machine.into(), key: B64.encode(vk.as_bytes()), after_seq, keep, ts_ms };
    put_statement(store.as_ref(), sk, prefix, &rel, &r).await?;
    Ok(format!("{prefix}{rel}"))
}

/// Paths an adoption summary names at most per object.
const DESCRIBE_PATHS: usize = 12;

/// What adopting one unsigned object (`rel` below the prefix) would make a rebuild believe,
/// in words: a batch's records (what each does, to which path), a snapshot's tree (how many
/// entries, which paths, which machines' journals it says it saw). Read whole (within the
/// rebuild's bounds), never applied.
pub async fn describe(store: &Arc<dyn ObjectStore>, keys: &crate::crypto::VaultKeys, prefix: &str, rel: &str, l: &Listed) -> String {
    use super::{shown, Entry};
    let key = format!("{prefix}{rel}");
    let name = |e: &Entry| -> String {
        match e {
            Entry::Upload { path, size, .. } => format!("file {} ({size} bytes)", shown(path)),
            Entry::Mkdir { path, .. } => format!("folder {}", shown(path)),
            Entry::Symlink { path, target, .. } => format!("symlink {} -> {}", shown(path), shown(target)),
            Entry::Special { path, .. } => format!("special file {}", shown(path)),
            Entry::Rename { from, to, .. } => format!("rename {} -> {}", shown(from), shown(to)),
            Entry::Remove { path, .. } => format!("remove {}", shown(path)),
            Entry::Discard { key } => format!("discard {}", shown(key)),
            Entry::Attr { path, .. } => format!("attributes of {}", shown(path)),
        }
    };
    let list = |names: Vec<String>, total: usize| -> String {
        let more = total.saturating_sub(names.len());
        let mut s = names.join("; ");
        if more > 0 {
            s.push_str(&format!("; and {more} more"));
        }
        s
    };
    if rel.starts_with("j/") {
        if l.size > super::rebuild::MAX_BATCH_BYTES {
            return format!("a journal batch of {} bytes, more than any coldvault writes: not read", l.size);
        }
        let body = match store.get_object(&key, l.size).await {
            Ok(b) => b,
            Err(e) => return format!("cannot be read: {e}"),
        };
        return match super::open_json::<super::Batch>(keys, &key, &body) {
            Ok(b) => {
                let names = b.records.iter().take(DESCRIBE_PATHS).map(|r| name(&r.entry)).collect();
                format!("journal batch of machine {}, {} record(s): {}", shown(&b.machine), b.records.len(), list(names, b.records.len()))
            }
            Err(e) => format!("cannot be read: {e}"),
        };
    }
    let adopted = |_: &[u8]| Ok(Writer { machine: None, role: Role::Full, adopted: true });
    let Some(sk) = keys.secret.as_ref() else { return "cannot be read without the vault's private key".into() };
    match super::read::stream(store, sk, &key, l.size, Some(super::Tree::default()), &adopted).await {
        Ok((Some(t), Ok(info))) => {
            let names: Vec<String> = t.nodes.keys().take(DESCRIBE_PATHS).map(|p| shown(p).into_owned()).collect();
            let seen: Vec<String> = info.seen.iter().map(|(m, q)| format!("{m} to record {q}")).collect();
            format!(
                "snapshot of machine {} with {} entries ({}), saying it saw the journals of {}",
                shown(&info.machine),
                info.entries,
                list(names, t.nodes.len()),
                if seen.is_empty() { "no machine".to_string() } else { seen.join(", ") }
            )
        }
        Ok((_, Err(e))) => format!("cannot be read: {e}"),
        Ok((None, Ok(_))) => "cannot be read".into(),
        Err(e) => format!("cannot be read: {e}"),
    }
}

/// What a full machine does before it rebuilds or writes: start signing the vault if nobody
/// has (adopting what is there), and allow its own key if it is not allowed yet. `pinned`: this
/// machine knows the vault signs (its config says so); if no statement is left in the bucket,
/// someone deleted them, and what is there now is not adopted.
/// Sign what `vault.json` says, once, if the vault has not: the descriptor this machine's
/// config holds, only if the bucket's agrees with it (a machine that joined through a swapped
/// one must not make the swap permanent). Best effort: logged, never fatal.
pub async fn sign_descriptor_once(store: &Arc<dyn ObjectStore>, sk: &StaticSecret, prefix: &str, t: &Trust, mine: &crate::crypto::VaultDescriptor) {
    if let Some(s) = &t.descriptor {
        if !s.matches(mine) {
            tracing::error!(
                "the vault signed another descriptor (vault_id, format or name key) than this machine's config holds: one of them was replaced"
            );
        }
        return;
    }
    let key = format!("{prefix}coldvault/vault.json");
    let agrees = match store.get_object(&key, crate::crypto::MAX_DESCRIPTOR_BYTES).await {
        Ok(b) => serde_json::from_slice::<crate::crypto::VaultDescriptor>(&b).is_ok_and(|d| SignedDescriptor::of(&d) == SignedDescriptor::of(mine)),
        Err(e) => {
            tracing::warn!(error = %e, "could not read {key} to sign what it says; tried again at the next mount");
            return;
        }
    };
    if !agrees {
        tracing::error!(
            "{key} differs from the descriptor this machine's config holds (vault_id, format or name key): not signed; one of them was replaced"
        );
        return;
    }
    if let Err(e) = sign_descriptor(store.as_ref(), sk, prefix, mine).await {
        tracing::warn!(error = %e, "could not sign what vault.json says; tried again at the next mount");
    }
}

pub async fn prepare_full(
    store: &Arc<dyn ObjectStore>,
    sk: &StaticSecret,
    prefix: &str,
    me: &MachineSigner,
    pinned: bool,
    descriptor: Option<&crate::crypto::VaultDescriptor>,
) -> Result<(), RemoteError> {
    let t = Trust::load(store, sk, prefix).await?;
    if !t.signed && pinned {
        return Err(RemoteError::Untrusted(format!(
            "this vault signs its metadata, but none of its statements is left under {prefix}m/ (deleted?): nothing is adopted or allowed; restore them from a copy of the bucket or its object versions"
        )));
    }
    if !t.signed {
        // Nothing is adopted on its own: what is unsigned there is shown to the user first
        // (`machine adopt`), and what carries signatures says statements were deleted.
        if let Some(why) = survey(store, prefix, &t).await?.why_not_start(prefix) {
            return Err(RemoteError::Untrusted(why));
        }
        start_signing(store, sk, prefix).await?;
        tracing::info!("this vault starts signing its metadata");
    }
    let mine = t.machines.get(me.machine()).and_then(|v| v.iter().find(|k| k.key == me.public()));
    let allowed = match mine {
        Some(AllowedKey { revoked: Some(_), .. }) => Err(RemoteError::Malformed(format!(
            "this machine's signing key ({} of machine {}) was revoked: what it uploads is not believed by a rebuild; mount with a new cache dir to get a new key",
            sign::key_id(&me.public()),
            me.machine()
        ))),
        Some(AllowedKey { role: Role::WriteOnly, .. }) => {
            tracing::warn!(machine = me.machine(), "this machine's key is allowed as write-only: its snapshots are never the base of a rebuild");
            Ok(())
        }
        Some(_) => Ok(()),
        None => {
            let key = enroll(store.as_ref(), sk, prefix, me.machine(), &me.public(), Role::Full).await?;
            tracing::info!(key, machine = me.machine(), "this machine's signing key is now allowed in the vault");
            Ok(())
        }
    };
    if allowed.is_ok() {
        if let Some(d) = descriptor {
            sign_descriptor_once(store, sk, prefix, &t, d).await;
        }
    }
    allowed
}
