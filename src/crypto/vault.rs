//! The vault key pair: creation, passphrase wrapping (Argon2id), unlocking.
//!
//! The descriptor is public-safe: it is stored in the bucket (`PREFIX/coldvault/vault.json`) and
//! in the local config. Only the passphrase turns it into a secret key.

use super::{gcm, open_from, seal_to, CryptoError, Result};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

const SECRET_AAD: &[u8] = b"coldvault/v1/vault-secret";
const NAME_KEY_AAD: &[u8] = b"coldvault/v1/name-key";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB. 64 MiB by default: the floor DESIGN.md sets for offline guessing cost.
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    pub salt: String,
}

/// The largest `vault.json` read (one is about 1 KiB).
pub const MAX_DESCRIPTOR_BYTES: u64 = 64 << 10;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultDescriptor {
    pub format: u16,
    pub vault_id: String,
    pub public_key: String,
    pub argon2: Argon2Params,
    pub secret_nonce: String,
    pub wrapped_secret: String,
    pub name_key_eph: String,
    pub name_key_wrapped: String,
    /// The vault's own word that it signs its metadata (`remote_meta::trust::mark_signing`):
    /// a machine joining it refuses a copy whose statements are gone. Absent in vaults made
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs: Option<String>,
}

/// Unlocked (or write-only) key material of a vault.
pub struct VaultKeys {
    pub public: PublicKey,
    /// None in write-only mode: such a mount can encrypt but never decrypt.
    pub secret: Option<StaticSecret>,
    /// Key of the path hash that names objects.
    pub name_key: [u8; 32],
}

impl Drop for VaultKeys {
    fn drop(&mut self) {
        self.name_key.zeroize();
    }
}

/// The largest Argon2id costs accepted from a descriptor (4 GiB, 64 passes, 16 lanes): far
/// above the defaults (64 MiB, 3, 1), low enough that a descriptor swapped in the bucket
/// cannot make an unlock take all the memory of the machine or run for hours.
const MAX_M_KIB: u32 = 4 << 20;
const MAX_T: u32 = 64;
const MAX_P: u32 = 16;

fn argon2_key(pass: &[u8], p: &Argon2Params) -> Result<[u8; 32]> {
    let salt = B64.decode(&p.salt).map_err(|e| CryptoError::Malformed(format!("salt: {e}")))?;
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32)).map_err(|e| CryptoError::Malformed(format!("argon2 params: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(pass, &salt, &mut out).map_err(|e| CryptoError::Malformed(format!("argon2: {e}")))?;
    Ok(out)
}

fn b32(s: &str, what: &str) -> Result<[u8; 32]> {
    let v = B64.decode(s).map_err(|e| CryptoError::Malformed(format!("{what}: {e}")))?;
    v.try_into().map_err(|_| CryptoError::Malformed(format!("{what}: wrong length")))
}

/// A short, printable fingerprint of a vault's public key (`coldvault key fingerprint`): a
/// write-only machine is set up with it, so that a `vault.json` swapped in the bucket (another
/// public key: backups only its author could read) is refused.
pub fn fingerprint(pk: &PublicKey) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::new_with_prefix(b"coldvault/v1/fingerprint\0").chain_update(pk.as_bytes()).finalize();
    let hexed = hex::encode(&h[..16]);
    hexed.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("hex")).collect::<Vec<_>>().join("-")
}

/// Whether `given` (as typed: any case, with or without dashes and spaces) is `pk`'s fingerprint.
pub fn fingerprint_matches(pk: &PublicKey, given: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect::<String>();
    norm(given) == norm(&fingerprint(pk))
}

impl VaultDescriptor {
    /// The descriptor as a write-only machine keeps it: the public key and parameters, without
    /// the passphrase-wrapped private key and name key.
    pub fn public_only(&self) -> VaultDescriptor {
        VaultDescriptor {
            secret_nonce: String::new(),
            wrapped_secret: String::new(),
            name_key_eph: String::new(),
            name_key_wrapped: String::new(),
            ..self.clone()
        }
    }

    /// Whether this descriptor carries the wrapped private key (false: a write-only machine's).
    pub fn has_secret(&self) -> bool {
        !self.wrapped_secret.is_empty()
    }

    /// The vault's public key; refuses a vault of a newer format than this build knows, so
    /// that a write-only mount never writes into a layout it does not understand.
    pub fn public_key(&self) -> Result<PublicKey> {
        self.check_format()?;
        let pk = PublicKey::from(b32(&self.public_key, "public_key")?);
        // A point of small order makes every key agreement with it a known value: whatever is
        // sealed to it could be opened by anyone (review L7).
        if !StaticSecret::random_from_rng(rand::rngs::OsRng).diffie_hellman(&pk).was_contributory() {
            return Err(CryptoError::Malformed("public_key is a point of small order, not a vault's key".into()));
        }
        Ok(pk)
    }

    /// What a descriptor read from a bucket (anyone who can write there can replace it) must
    /// satisfy before anything acts on it: a format this build knows, a vault id that is a
    /// plain name (it becomes a cache folder's name: `/etc` or `../x` would not be), and
    /// Argon2id costs that cannot exhaust the machine's memory or time at unlock.
    fn check_format(&self) -> Result<()> {
        if self.format > super::VAULT_FORMAT {
            return Err(CryptoError::NewerVault(self.format));
        }
        let id_ok = !self.vault_id.is_empty()
            && self.vault_id.len() <= 64
            && self.vault_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(CryptoError::Malformed(format!("vault_id {:?}: not 1-64 letters, digits, '-' or '_'", self.vault_id)));
        }
        let a = &self.argon2;
        if a.m_kib > MAX_M_KIB || a.t == 0 || a.t > MAX_T || a.p == 0 || a.p > MAX_P {
            return Err(CryptoError::Malformed(format!(
                "argon2 costs m_kib={} t={} p={} are outside what coldvault accepts (m_kib <= {MAX_M_KIB}, 1 <= t <= {MAX_T}, 1 <= p <= {MAX_P})",
                a.m_kib, a.t, a.p
            )));
        }
        Ok(())
    }

    /// Create a new vault protected by `passphrase`.
    pub fn create(passphrase: &[u8]) -> (VaultDescriptor, VaultKeys) {
        Self::create_with_cost(passphrase, 65536, 3)
    }

    pub fn create_with_cost(passphrase: &[u8], m_kib: u32, t: u32) -> (VaultDescriptor, VaultKeys) {
        let sk = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let pk = PublicKey::from(&sk);
        let mut name_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut name_key);
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let params = Argon2Params { m_kib, t, p: 1, salt: B64.encode(salt) };
        let mut kek = argon2_key(passphrase, &params).expect("valid fresh params");
        let wrapped = gcm(&kek).encrypt(Nonce::from_slice(&nonce), Payload { msg: &sk.to_bytes(), aad: SECRET_AAD }).expect("encrypt");
        kek.zeroize();
        let (eph, nk_wrapped) = seal_to(&pk, &name_key, NAME_KEY_AAD);
        let d = VaultDescriptor {
            format: super::VAULT_FORMAT,
            vault_id: hex::encode(id),
            public_key: B64.encode(pk.as_bytes()),
            argon2: params,
            secret_nonce: B64.encode(nonce),
            wrapped_secret: B64.encode(wrapped),
            name_key_eph: B64.encode(eph),
            name_key_wrapped: B64.encode(nk_wrapped),
            signs: None,
        };
        (d, VaultKeys { public: pk, secret: Some(sk), name_key })
    }

    /// Unlock with the passphrase. A wrong passphrase is `CryptoError::WrongPassphrase`.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<VaultKeys> {
        self.check_format()?;
        let mut kek = argon2_key(passphrase, &self.argon2)?;
        let nonce = B64.decode(&self.secret_nonce).map_err(|e| CryptoError::Malformed(format!("nonce: {e}")))?;
        if nonce.len() != 12 {
            return Err(CryptoError::Malformed("nonce length".into()));
        }
        let wrapped = B64.decode(&self.wrapped_secret).map_err(|e| CryptoError::Malformed(format!("secret: {e}")))?;
        let pt = gcm(&kek).decrypt(Nonce::from_slice(&nonce), Payload { msg: &wrapped, aad: SECRET_AAD }).map_err(|_| CryptoError::WrongPassphrase);
        kek.zeroize();
        let mut pt = pt?;
        if pt.len() != 32 {
            pt.zeroize();
            return Err(CryptoError::Malformed("the wrapped secret key is not 32 bytes".into()));
        }
        let mut skb = [0u8; 32];
        skb.copy_from_slice(&pt);
        pt.zeroize();
        let sk = StaticSecret::from(skb);
        skb.zeroize();
        let pk = self.public_key()?;
        if PublicKey::from(&sk) != pk {
            return Err(CryptoError::Malformed("secret key does not match public key".into()));
        }
        let eph = b32(&self.name_key_eph, "name_key_eph")?;
        let wr: [u8; 48] = B64
            .decode(&self.name_key_wrapped)
            .map_err(|e| CryptoError::Malformed(format!("name key: {e}")))?
            .try_into()
            .map_err(|_| CryptoError::Malformed("name key length".into()))?;
        let name_key = open_from(&sk, &eph, &wr, NAME_KEY_AAD)?;
        Ok(VaultKeys { public: pk, secret: Some(sk), name_key })
    }

    /// Re-wrap the secret key under a new passphrase (same key pair, same name key).
    pub fn rewrap(&self, keys: &VaultKeys, new_passphrase: &[u8]) -> VaultDescriptor {
        let sk = keys.secret.as_ref().expect("rewrap needs the secret key");
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let params = Argon2Params { salt: B64.encode(salt), ..self.argon2.clone() };
        let mut kek = argon2_key(new_passphrase, &params).expect("valid params");
        let wrapped = gcm(&kek).encrypt(Nonce::from_slice(&nonce), Payload { msg: &sk.to_bytes(), aad: SECRET_AAD }).expect("encrypt");
        kek.zeroize();
        VaultDescriptor { argon2: params, secret_nonce: B64.encode(nonce), wrapped_secret: B64.encode(wrapped), ..self.clone() }
    }
}

impl VaultKeys {
    /// Write-only keys: public key and name key, no secret.
    pub fn write_only(public: PublicKey, name_key: [u8; 32]) -> VaultKeys {
        VaultKeys { public, secret: None, name_key }
    }
}
