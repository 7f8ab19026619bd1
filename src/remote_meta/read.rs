//! Reading a snapshot without holding it: it is fetched and authenticated a few chunks at a time
//! (`sealed::Plaintext`) and fed to a JSON parser on a blocking thread, which hands each
//! entry to the tree as soon as it is parsed. Memory stays at a few chunks plus the tree,
//! however many files the snapshot lists (a 1,000,000-file snapshot is about 460 MB).
//!
//! The fields of a snapshot may come in any order (`SnapshotWriter` puts the entries first;
//! snapshots of earlier builds put them after `machine`, `covers_seq` and `ts_ms`), so the
//! parser is a serde visitor over the top-level object, not a scan of known offsets.

use super::trust::{Refusal, Role, Writer};
use super::{Entry, RemoteError, Tree};
use crate::sealed::{Budget, Plaintext, ReadError};
use crate::store::ObjectStore;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use x25519_dalek::StaticSecret;

/// What a snapshot says besides its entries.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    pub machine: String,
    pub covers_seq: i64,
    pub ts_ms: i64,
    pub dead_keys: Vec<String>,
    pub seen: BTreeMap<String, i64>,
    pub entries: u64,
    /// Paths removed recently: (path, when, by which machine if not this one).
    pub tombstones: Vec<(String, i64, Option<String>)>,
    /// Who signed it (set by `stream` once its header was checked).
    pub writer: Option<Writer>,
}

impl SnapshotInfo {
    /// What this snapshot reflects of each machine's journal. A write-only machine never read
    /// the bucket: what it says of other machines' journals is not believed; nor what an
    /// adopted (unsigned) snapshot says of them.
    pub fn reflects(&self) -> BTreeMap<String, i64> {
        let mut s = self.seen.clone();
        if self.writer.as_ref().is_some_and(|w| w.role == Role::WriteOnly || w.adopted) {
            s.retain(|m, _| *m == self.machine);
        }
        let own = s.entry(self.machine.clone()).or_insert(0);
        *own = (*own).max(self.covers_seq);
        s
    }
}

/// Parse a snapshot's JSON from `r`, calling `on_entry` with each entry in order (entries are
/// parsed and dropped when it is `None`). The whole input is read: anything after the
/// document is an error.
pub fn parse<R: Read, F: FnMut(Entry, EntryMeta)>(r: R, on_entry: Option<F>) -> serde_json::Result<SnapshotInfo> {
    let mut de = serde_json::Deserializer::from_reader(r);
    let info = Top { on_entry }.deserialize(&mut de)?;
    de.end()?;
    Ok(info)
}

struct Top<F> {
    on_entry: Option<F>,
}

impl<'de, F: FnMut(Entry, EntryMeta)> DeserializeSeed<'de> for Top<F> {
    type Value = SnapshotInfo;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<SnapshotInfo, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Entry, EntryMeta)> Visitor<'de> for Top<F> {
    type Value = SnapshotInfo;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a snapshot object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<SnapshotInfo, A::Error> {
        let (mut machine, mut covers_seq, mut ts_ms, mut dead_keys, mut seen, mut entries) = (None, None, None, None, None, None);
        let mut tombstones = None;
        while let Some(k) = m.next_key::<String>()? {
            // A field given twice is refused, as the derived parser of the whole document did.
            fn once<'de, A: MapAccess<'de>, T: serde::Deserialize<'de>>(m: &mut A, slot: &mut Option<T>, name: &'static str) -> Result<(), A::Error> {
                if slot.is_some() {
                    return Err(de::Error::duplicate_field(name));
                }
                *slot = Some(m.next_value()?);
                Ok(())
            }
            match k.as_str() {
                "entries" if entries.is_some() => return Err(de::Error::duplicate_field("entries")),
                "entries" => entries = Some(m.next_value_seed(Entries { on_entry: self.on_entry.as_mut() })?),
                "machine" => once(&mut m, &mut machine, "machine")?,
                "covers_seq" => once(&mut m, &mut covers_seq, "covers_seq")?,
                "ts_ms" => once(&mut m, &mut ts_ms, "ts_ms")?,
                "dead_keys" => once(&mut m, &mut dead_keys, "dead_keys")?,
                "seen" => once(&mut m, &mut seen, "seen")?,
                "tombstones" => once(&mut m, &mut tombstones, "tombstones")?,
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(SnapshotInfo {
            machine: machine.ok_or_else(|| de::Error::missing_field("machine"))?,
            covers_seq: covers_seq.ok_or_else(|| de::Error::missing_field("covers_seq"))?,
            ts_ms: ts_ms.ok_or_else(|| de::Error::missing_field("ts_ms"))?,
            entries: entries.ok_or_else(|| de::Error::missing_field("entries"))?,
            dead_keys: dead_keys.unwrap_or_default(),
            seen: seen.unwrap_or_default(),
            tombstones: tombstones.unwrap_or_default(),
            writer: None,
        })
    }
}

/// What a snapshot says of an entry besides the entry itself.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EntryMeta {
    /// The machine whose entries made it, when not the snapshot's own.
    pub by: Option<String>,
    /// When it was last changed (ms; absent in snapshots of builds before it).
    pub at: Option<i64>,
}

/// A snapshot entry, and what the snapshot says of it.
#[derive(serde::Deserialize)]
struct ByEntry {
    #[serde(flatten)]
    entry: Entry,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    at: Option<i64>,
}

/// The `entries` array, handed out one entry at a time; its value is how many there were.
struct Entries<'f, F> {
    on_entry: Option<&'f mut F>,
}

impl<'de, F: FnMut(Entry, EntryMeta)> DeserializeSeed<'de> for Entries<'_, F> {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Entry, EntryMeta)> Visitor<'de> for Entries<'_, F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        let mut f = self.on_entry;
        // Skipped entries are parsed all the same: a snapshot that one pass accepts, the next
        // must too.
        while let Some(e) = s.next_element::<ByEntry>()? {
            if let Some(f) = f.as_mut() {
                f(e.entry, EntryMeta { by: e.by, at: e.at });
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Plaintext segments arriving over a channel, read as one stream.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    buf: bytes::Bytes,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(b) => (self.buf, self.at) = (b, 0),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Read snapshot `key` (`enc_len` bytes in the listing) from the bucket. With a tree, each entry
/// is applied to it as it is parsed, and the tree is handed back whatever happens (the caller
/// decides what a snapshot that failed half-way leaves). The outer error stops the rebuild (a
/// transient S3 error, expired credentials); the inner one is this snapshot's own problem
/// (missing, tampered, truncated, malformed, not signed by a machine the vault allows).
/// `check` is given the snapshot's header before anything of it reaches the parser (and the
/// tree): it says who signed it, or why it is not believed.
pub async fn stream(
    store: &Arc<dyn ObjectStore>,
    sk: &StaticSecret,
    key: &str,
    enc_len: u64,
    tree: Option<Tree>,
    check: &(dyn Fn(&[u8]) -> Result<Writer, Refusal> + Sync),
) -> Result<(Option<Tree>, Result<SnapshotInfo, String>), RemoteError> {
    let Some(size) = crate::crypto::plaintext_len(enc_len) else {
        return Ok((tree, Err(format!("impossible object length {enc_len}"))));
    };
    // Chunks of up to `sealed::CHUNK_MAX`: two waiting for the parser are enough to keep it busy.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
    let parser = tokio::task::spawn_blocking(move || {
        let mut tree = tree;
        let r = ChannelReader { rx, buf: bytes::Bytes::new(), at: 0 };
        let parsed = match tree.as_mut() {
            Some(t) => parse(
                r,
                Some(|e: Entry, meta: EntryMeta| {
                    // A full machine's snapshot says which machine made each node it imported;
                    // a write-only machine's is all its own.
                    t.applying_ts = meta.at.unwrap_or(0);
                    match (&t.applying, meta.by) {
                        // A revoked machine's files as another machine's snapshot holds them may
                        // hold what it wrote after its revocation: its own believed batches
                        // give them instead (`start_from_base`). A write-only machine's are
                        // weighed as its own entries are (review N2).
                        (Some((_, false)), Some(by)) if t.revoked.contains_key(&by) => {}
                        (Some((_, false)), Some(by)) => {
                            let wo = t.write_only.contains(&by);
                            let own = t.applying.replace((by, wo));
                            t.apply_owned(e);
                            t.applying = own;
                        }
                        _ => t.apply_owned(e),
                    }
                    t.applying_ts = 0;
                }),
            ),
            None => parse(r, None::<fn(Entry, EntryMeta)>),
        };
        (tree, parsed)
    });
    let mut writer = None;
    let failed = match Plaintext::open(store.clone(), sk, key, size, None, Budget::new(crate::sealed::DEFAULT_BUDGET)).await {
        Err(e) => Some(e),
        Ok(mut pt) => match check(pt.object().header()) {
            Err(why) => Some(ReadError::Corrupt(format!("object {key}: {why}"))),
            Ok(w) => {
                writer = Some(w);
                loop {
                    match pt.next().await {
                        // A closed channel: the parser stopped early, on an error of its own.
                        Ok(Some(b)) => {
                            if tx.send(b).await.is_err() {
                                break None;
                            }
                        }
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                }
            }
        },
    };
    drop(tx);
    let (tree, parsed) = parser.await.map_err(|e| RemoteError::Malformed(format!("snapshot {key}: parser: {e}")))?;
    let res = match failed {
        // Not the snapshot's fault: the rebuild stops, to be run again whole (`stops_rebuild`).
        Some(ReadError::Store(e)) if super::stops_rebuild(&e) => return Err(e.into()),
        Some(e @ ReadError::Task(_)) => return Err(RemoteError::Malformed(format!("snapshot {key}: {e}"))),
        // The snapshot's own problem: gone, archived, refused, not what it must be.
        Some(e) => Err(e.to_string()),
        None => parsed.map(|i| SnapshotInfo { writer, ..i }).map_err(|e| e.to_string()),
    };
    Ok((tree, res))
}
