//! Metadata objects as bytes: a JSON document sealed to the vault's public key
//! (docs/FORMAT.md) and opened with its private key, a snapshot written entry by entry
//! (`SnapshotWriter`), and the encrypted user metadata of a data object (`object_meta`).

use super::{stops_rebuild, Entry, RemoteError};
use crate::crypto::{self, Header, ObjectMeta, Opened, VaultKeys};
use crate::store::StoreError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;

/// A snapshot written entry by entry into a sealed object (the JSON of `Snapshot`, its fields
/// in another order), so that memory stays at one entry and one segment however large the
/// index: entries first, then dead keys, then `finish` with the fields known at the end.
pub struct SnapshotWriter<W: std::io::Write> {
    out: std::io::BufWriter<crypto::StreamSealer<W>>,
    in_dead_keys: bool,
    first: bool,
    entries: u64,
    tombstones: Vec<(String, i64, Option<String>)>,
}

impl<W: std::io::Write> SnapshotWriter<W> {
    pub fn new(keys: &VaultKeys, out: W) -> std::io::Result<SnapshotWriter<W>> {
        let mut out =
            std::io::BufWriter::with_capacity(crypto::SEGMENT as usize, crypto::StreamSealer::new(&keys.public, out).map_err(std::io::Error::other)?);
        out.write_all(b"{\"entries\":[")?;
        Ok(SnapshotWriter { out, in_dead_keys: false, first: true, entries: 0, tombstones: Vec::new() })
    }

    fn comma(&mut self) -> std::io::Result<()> {
        if !std::mem::replace(&mut self.first, false) {
            self.out.write_all(b",")?;
        }
        Ok(())
    }

    pub fn entry(&mut self, e: &Entry) -> std::io::Result<()> {
        self.entry_by(e, None)
    }

    /// An entry that another machine's journal or snapshot made (`by`: that machine): the entry
    /// object gets a `"by"` field (builds before it ignore it).
    pub fn entry_by(&mut self, e: &Entry, by: Option<&str>) -> std::io::Result<()> {
        self.entry_at(e, by, None)
    }

    /// `entry_by`, with the time the node was last changed (`"at"`, ms): a rebuild compares it
    /// with the records of machines this snapshot had not seen (builds before it ignore it).
    pub fn entry_at(&mut self, e: &Entry, by: Option<&str>, at: Option<i64>) -> std::io::Result<()> {
        assert!(!self.in_dead_keys, "snapshot entries come before dead keys");
        self.comma()?;
        if by.is_none() && at.is_none() {
            serde_json::to_writer(&mut self.out, e)?;
        } else {
            let mut v = serde_json::to_vec(e)?;
            v.pop(); // the object's closing brace
            self.out.write_all(&v)?;
            if let Some(m) = by {
                self.out.write_all(b",\"by\":")?;
                serde_json::to_writer(&mut self.out, m)?;
            }
            if let Some(t) = at {
                write!(self.out, ",\"at\":{t}")?;
            }
            self.out.write_all(b"}")?;
        }
        self.entries += 1;
        Ok(())
    }

    fn end_entries(&mut self) -> std::io::Result<()> {
        if !self.in_dead_keys {
            self.out.write_all(b"],\"dead_keys\":[")?;
            self.in_dead_keys = true;
            self.first = true;
        }
        Ok(())
    }

    pub fn dead_key(&mut self, key: &str) -> std::io::Result<()> {
        self.end_entries()?;
        self.comma()?;
        serde_json::to_writer(&mut self.out, key)?;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Paths removed recently, when, and by which machine (`None`: the snapshot's own), written
    /// by `finish` (`"tombstones"`; builds before it ignore them).
    pub fn tombstones(&mut self, t: Vec<(String, i64, Option<String>)>) {
        self.tombstones = t;
    }

    /// Close the document; returns the output and the sealed object's length.
    pub fn finish(mut self, machine: &str, covers_seq: i64, ts_ms: i64, seen: &BTreeMap<String, i64>) -> std::io::Result<(W, u64)> {
        self.end_entries()?;
        self.out.write_all(b"],\"machine\":")?;
        serde_json::to_writer(&mut self.out, machine)?;
        write!(self.out, ",\"covers_seq\":{covers_seq},\"ts_ms\":{ts_ms}")?;
        if !seen.is_empty() {
            self.out.write_all(b",\"seen\":")?;
            serde_json::to_writer(&mut self.out, seen)?;
        }
        if !self.tombstones.is_empty() {
            self.out.write_all(b",\"tombstones\":")?;
            let t = std::mem::take(&mut self.tombstones);
            serde_json::to_writer(&mut self.out, &t)?;
        }
        self.out.write_all(b"}")?;
        self.out.into_inner().map_err(|e| e.into_error())?.finish()
    }
}

/// Encrypt a JSON document as one vault object (format v1).
pub fn seal_json<T: Serialize>(keys: &VaultKeys, v: &T) -> Vec<u8> {
    let json = serde_json::to_vec(v).expect("serialize");
    let mut out = Vec::with_capacity(json.len() + 256);
    crypto::encrypt_stream(&keys.public, json.len() as u64, &mut &json[..], &mut out).expect("in-memory encryption");
    out
}

pub fn open_json<T: for<'de> Deserialize<'de>>(keys: &VaultKeys, key: &str, body: &[u8]) -> Result<T, RemoteError> {
    let pt = open_plain(keys, key, body)?;
    serde_json::from_slice(&pt).map_err(|e| RemoteError::Malformed(format!("{key}: {e}")))
}

/// The plaintext of a sealed metadata object.
pub(super) fn open_plain(keys: &VaultKeys, key: &str, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let size =
        crypto::plaintext_len(body.len() as u64).ok_or_else(|| RemoteError::Malformed(format!("{key}: impossible object length {}", body.len())))?;
    let cerr = |err| RemoteError::Crypto { what: format!("object {key}"), err };
    let h = Header::parse(body).map_err(cerr)?;
    let o = Opened::open(sk, &h).map_err(cerr)?;
    o.decrypt_all(size, body).map_err(cerr)
}

/// Decrypt an object's user metadata (works on archived objects: HeadObject only).
pub fn object_meta(keys: &VaultKeys, key: &str, md: &std::collections::HashMap<String, String>) -> Result<(ObjectMeta, Vec<u8>), RemoteError> {
    let sk = keys.secret.as_ref().ok_or(RemoteError::WriteOnly)?;
    let get = |n: &str| md.get(n).and_then(|v| B64.decode(v).ok()).ok_or_else(|| RemoteError::Malformed(format!("{key}: no {n} metadata")));
    let hb = get("cvh")?;
    let cerr = |err| RemoteError::Crypto { what: format!("metadata of {key}"), err };
    let h = Header::parse(&hb).map_err(cerr)?;
    let o = Opened::open(sk, &h).map_err(cerr)?;
    Ok((o.decrypt_meta(&get("cvm")?).map_err(cerr)?, hb))
}

/// Decrypt and parse one metadata object once its GET has answered. The outer error stops the
/// rebuild (a transient S3 error: try again later; no private key); the inner one is this
/// object's own problem (missing, refused, tampered, malformed), reported by the caller, which
/// goes on without it.
pub(super) fn open_fetched<T: for<'de> Deserialize<'de>>(
    keys: &VaultKeys,
    key: &str,
    got: Result<bytes::Bytes, StoreError>,
) -> Result<Result<T, String>, RemoteError> {
    let body = match got {
        Ok(b) => b,
        Err(e) if stops_rebuild(&e) => return Err(e.into()),
        Err(e) => return Ok(Err(e.to_string())),
    };
    // The encrypted body goes before the plaintext is parsed.
    let pt = open_plain(keys, key, &body);
    drop(body);
    match pt.and_then(|pt| serde_json::from_slice(&pt).map_err(|e| RemoteError::Malformed(format!("{key}: {e}")))) {
        Ok(v) => Ok(Ok(v)),
        Err(RemoteError::WriteOnly) => Err(RemoteError::WriteOnly),
        Err(e) => Ok(Err(e.to_string())),
    }
}
