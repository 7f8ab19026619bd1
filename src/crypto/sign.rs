//! Signatures (docs/FORMAT.md, section 8): who wrote an object, and whom the vault allows.
//!
//! * Every machine (cache dir) has an Ed25519 key of its own, kept in its index. It signs the
//!   header of each object it puts (data objects, journal batches, snapshots), bound to the
//!   vault and to the object's key: `x-amz-meta-cvs = "<machine>.<base64 signature>"`. The
//!   header commits to the object's data key and is in the AAD of every segment, so its
//!   signature covers the whole content.
//! * The vault's own signing key is derived from its X25519 private key, so only a holder of
//!   the passphrase (or recovery key) can make one, and a reader that can decrypt knows its
//!   public half without trusting anything in the bucket. It signs *statements*: which machine
//!   keys the vault allows, which are revoked, which unsigned objects of older builds it adopted.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

const OBJECT_CTX: &[u8] = b"coldvault/v2/object-signature\0";
const STATEMENT_CTX: &[u8] = b"coldvault/v2/statement\0";
const VAULT_SIGNING_INFO: &[u8] = b"coldvault/v2/vault-signing-key";

/// The user-metadata name of an object's signature (`x-amz-meta-cvs`).
pub const META: &str = "cvs";

/// A machine's signing key and the machine id it signs as.
pub struct MachineSigner {
    machine: String,
    key: SigningKey,
}

impl MachineSigner {
    pub fn new(machine: &str, seed: &[u8; 32]) -> MachineSigner {
        MachineSigner { machine: machine.to_string(), key: SigningKey::from_bytes(seed) }
    }

    /// A fresh random seed, to be kept (base64) in the machine's index.
    pub fn generate_seed() -> [u8; 32] {
        rand::random()
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// What `coldvault machine allow` takes on a full machine: `<machine>:<public key>`.
    pub fn token(&self) -> String {
        format!("{}:{}", self.machine, B64URL.encode(self.public().as_bytes()))
    }

    /// The value of `x-amz-meta-cvs` for the object at `rel_key` (its key below the vault
    /// prefix) whose 128-byte header is `header`.
    pub fn sign_object(&self, vault: &PublicKey, rel_key: &str, header: &[u8]) -> String {
        let sig = self.key.sign(&object_message(vault, rel_key, header));
        format!("{}.{}", self.machine, B64.encode(sig.to_bytes()))
    }
}

/// Why a machine token or a statement object was not accepted; `Display` is the sentence
/// shown to the user (`coldvault machine allow`) or noted by a rebuild.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("a machine token is MACHINE:KEY, as `coldvault status` prints it")]
    TokenShape,
    #[error("{0:?} is not a machine id (16 hex digits)")]
    NotMachineId(String),
    #[error("the key part of the token is not 32 bytes of base64url")]
    TokenKeyNotBase64,
    #[error("the key part of the token is not an Ed25519 public key")]
    TokenKeyNotEd25519,
    #[error("not a statement: {0}")]
    NotStatement(String),
    #[error("its signature is not 64 bytes of base64")]
    StatementSignatureShape,
    #[error("its signature is not the vault's (forged, or moved from another key)")]
    NotVaultSigned,
}

/// Parse a token printed by `coldvault status` / `machine token`.
pub fn parse_token(t: &str) -> Result<(String, VerifyingKey), SignError> {
    let (m, k) = t.trim().split_once(':').ok_or(SignError::TokenShape)?;
    if !is_machine_id(m) {
        return Err(SignError::NotMachineId(m.to_string()));
    }
    let kb: [u8; 32] = B64URL.decode(k).ok().and_then(|v| v.try_into().ok()).ok_or(SignError::TokenKeyNotBase64)?;
    let vk = VerifyingKey::from_bytes(&kb).map_err(|_| SignError::TokenKeyNotEd25519)?;
    Ok((m.to_string(), vk))
}

/// Machine ids are 16 lower-case hex digits (drawn at random by each cache dir).
pub fn is_machine_id(m: &str) -> bool {
    m.len() == 16 && m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What an object signature covers: the vault, the object's key below the prefix, its header.
pub fn object_message(vault: &PublicKey, rel_key: &str, header: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(OBJECT_CTX.len() + 32 + rel_key.len() + 1 + header.len());
    m.extend_from_slice(OBJECT_CTX);
    m.extend_from_slice(vault.as_bytes());
    m.extend_from_slice(rel_key.as_bytes());
    m.push(0);
    m.extend_from_slice(header);
    m
}

/// Split an `x-amz-meta-cvs` value into machine id and signature.
pub fn parse_object_signature(v: &str) -> Option<(String, Signature)> {
    let (m, s) = v.split_once('.')?;
    if !is_machine_id(m) {
        return None;
    }
    let b: [u8; 64] = B64.decode(s).ok()?.try_into().ok()?;
    Some((m.to_string(), Signature::from_bytes(&b)))
}

pub fn verify_object(vk: &VerifyingKey, vault: &PublicKey, rel_key: &str, header: &[u8], sig: &Signature) -> bool {
    vk.verify_strict(&object_message(vault, rel_key, header), sig).is_ok()
}

/// The vault's signing key: HKDF of its X25519 private key.
pub fn vault_signing_key(sk: &StaticSecret) -> SigningKey {
    let mut ikm = sk.to_bytes();
    let mut seed = [0u8; 32];
    Hkdf::<Sha256>::new(None, &ikm).expand(VAULT_SIGNING_INFO, &mut seed).expect("32 bytes");
    ikm.zeroize();
    let k = SigningKey::from_bytes(&seed);
    seed.zeroize();
    k
}

/// A short name for a machine key (16 hex digits), used in statement keys and messages.
pub fn key_id(vk: &VerifyingKey) -> String {
    hex::encode(&Sha256::new_with_prefix(b"coldvault/v2/machine-key\0").chain_update(vk.as_bytes()).finalize()[..8])
}

fn statement_message(vault: &PublicKey, rel_key: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(STATEMENT_CTX.len() + 32 + rel_key.len() + 1 + body.len());
    m.extend_from_slice(STATEMENT_CTX);
    m.extend_from_slice(vault.as_bytes());
    m.extend_from_slice(rel_key.as_bytes());
    m.push(0);
    m.extend_from_slice(body.as_bytes());
    m
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementDoc {
    body: String,
    sig: String,
}

/// A statement object: `{"body": "<JSON text>", "sig": "<base64>"}`, the signature by the vault
/// key over the vault, the statement's key below the prefix and the body's exact bytes.
pub fn sign_statement(vault_sk: &StaticSecret, rel_key: &str, body: &str) -> Vec<u8> {
    let vault = PublicKey::from(vault_sk);
    let sig = vault_signing_key(vault_sk).sign(&statement_message(&vault, rel_key, body));
    serde_json::to_vec(&StatementDoc { body: body.to_string(), sig: B64.encode(sig.to_bytes()) }).expect("json")
}

/// The body of a statement object, if the vault key signed it for this key.
pub fn open_statement(vault_sk: &StaticSecret, rel_key: &str, object: &[u8]) -> Result<String, SignError> {
    let doc: StatementDoc = serde_json::from_slice(object).map_err(|e| SignError::NotStatement(e.to_string()))?;
    let sig: [u8; 64] = B64.decode(&doc.sig).ok().and_then(|v| v.try_into().ok()).ok_or(SignError::StatementSignatureShape)?;
    let vault = PublicKey::from(vault_sk);
    vault_signing_key(vault_sk)
        .verifying_key()
        .verify_strict(&statement_message(&vault, rel_key, &doc.body), &Signature::from_bytes(&sig))
        .map_err(|_| SignError::NotVaultSigned)?;
    Ok(doc.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> StaticSecret {
        StaticSecret::from([7u8; 32])
    }

    /// An object signature verifies for its vault, key and header only.
    #[test]
    fn object_signatures_are_bound_to_vault_key_and_header() {
        let v = PublicKey::from(&vault());
        let s = MachineSigner::new("0123456789abcdef", &[1u8; 32]);
        let h = [9u8; 128];
        let (m, sig) = parse_object_signature(&s.sign_object(&v, "j/0123456789abcdef/1-2", &h)).unwrap();
        assert_eq!(m, "0123456789abcdef");
        assert!(verify_object(&s.public(), &v, "j/0123456789abcdef/1-2", &h, &sig));
        assert!(!verify_object(&s.public(), &v, "j/0123456789abcdef/1-3", &h, &sig), "another key");
        let mut h2 = h;
        h2[5] ^= 1;
        assert!(!verify_object(&s.public(), &v, "j/0123456789abcdef/1-2", &h2, &sig), "another header");
        let other = PublicKey::from(&StaticSecret::from([8u8; 32]));
        assert!(!verify_object(&s.public(), &other, "j/0123456789abcdef/1-2", &h, &sig), "another vault");
        let t = MachineSigner::new("0123456789abcdef", &[2u8; 32]);
        assert!(!verify_object(&t.public(), &v, "j/0123456789abcdef/1-2", &h, &sig), "another machine key");
        assert!(parse_object_signature("notamachine.AAAA").is_none());
    }

    /// A statement opens with its vault key under its own key; moved or edited, it does not.
    #[test]
    fn statements_are_bound_to_their_key() {
        let sk = vault();
        let o = sign_statement(&sk, "m/a.enroll", "{\"x\":1}");
        assert_eq!(open_statement(&sk, "m/a.enroll", &o).unwrap(), "{\"x\":1}");
        assert!(open_statement(&sk, "m/b.enroll", &o).is_err());
        assert!(open_statement(&StaticSecret::from([8u8; 32]), "m/a.enroll", &o).is_err());
        let edited = String::from_utf8(o).unwrap().replace("{\\\"x\\\":1}", "{\\\"x\\\":2}");
        assert!(open_statement(&sk, "m/a.enroll", edited.as_bytes()).is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let s = MachineSigner::new("0123456789abcdef", &[1u8; 32]);
        let (m, k) = parse_token(&s.token()).unwrap();
        assert_eq!((m.as_str(), k), ("0123456789abcdef", s.public()));
        assert!(parse_token("0123456789abcdef").is_err());
        assert!(parse_token("XYZ:AAAA").is_err());
    }
}
