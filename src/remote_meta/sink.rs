//! What a machine puts in the bucket's metadata: journal batches and snapshots, signed and
//! never over an object already there (`MetaSink`), large files in parts (`put_file`), and
//! the removal of its snapshots a newer one makes redundant (`compact`).

use super::{off_runtime, open_json, parse_seq_key, seal_json, Batch, Record};
use crate::crypto::sign::{self, MachineSigner};
use crate::crypto::{self, VaultKeys};
use crate::store::{ObjectStore, PutOptions, StoreError};

/// Where a machine puts its journal batches and snapshots: the store, the vault's public key
/// (they are sealed to it), the machine's signing key (always, in a mount; `None` writes them
/// unsigned, as builds before signatures did, for tests), and the vault's prefix.
pub struct MetaSink<'a> {
    pub store: &'a dyn ObjectStore,
    pub keys: &'a VaultKeys,
    pub signer: Option<&'a MachineSigner>,
    pub prefix: &'a str,
}

impl MetaSink<'_> {
    fn opts(&self, key: &str, header: &[u8]) -> PutOptions {
        let metadata = self
            .signer
            .map(|s| vec![(sign::META.to_string(), s.sign_object(&self.keys.public, &key[self.prefix.len()..], header))])
            .unwrap_or_default();
        PutOptions { storage_class: "STANDARD".into(), metadata, ..Default::default() }
    }

    /// Upload a batch of journal records under a key derived from its sequence range, never
    /// over an object already there (review N3: a cache dir restored from a backup or cloned
    /// with a VM hands out the same sequence numbers again, and overwrote the journal). An
    /// object found at the key is this machine's own earlier attempt (a lost response) when it
    /// holds the same records; anything else is another copy of this machine: `JournalFork`,
    /// and nothing is overwritten (the next mount takes a new machine id, `check_fork`). A
    /// write-only machine cannot read the object and counts it as its own.
    pub async fn put_batch(&self, machine: &str, records: Vec<Record>) -> Result<String, StoreError> {
        self.put_batch_attempt(machine, records, true).await
    }

    /// `put_batch`, told whether this index put this batch before (`again`): a write-only
    /// machine, which cannot read what is at the key, counts it as its own only then; else it
    /// is another copy of this machine (a cache dir lost and a new one taking the machine id
    /// the config names, or a copied config): `JournalFork`.
    pub async fn put_batch_attempt(&self, machine: &str, records: Vec<Record>, again: bool) -> Result<String, StoreError> {
        let (first, last) = (records.first().map_or(0, |r| r.seq), records.last().map_or(0, |r| r.seq));
        let key = format!("{}j/{machine}/{first:016}-{last:016}", self.prefix);
        let batch = Batch { machine: machine.to_string(), records };
        let body = seal_json(self.keys, &batch);
        let opts = PutOptions { if_none_match: true, ..self.opts(&key, &body[..crypto::HEADER_LEN]) };
        match self.store.put_object(&key, body.into(), &opts).await {
            Err(StoreError::AlreadyExists) if self.keys.secret.is_some() => {
                let there = self.store.get_object(&key, super::rebuild::MAX_BATCH_BYTES).await?;
                match open_json::<Batch>(self.keys, &key, &there) {
                    Ok(b) if b.records == batch.records => Ok(key),
                    _ => Err(StoreError::Permanent {
                        code: "JournalFork".into(),
                        message: format!(
                            "{key} holds other changes than this index's: another copy of this machine's cache dir (restored from a backup, or a cloned VM) wrote this machine's journal. Nothing was overwritten; restart the mount: it takes a new machine id"
                        ),
                    }),
                }
            }
            Err(StoreError::AlreadyExists) if again => Ok(key),
            Err(StoreError::AlreadyExists) => Err(StoreError::Permanent {
                code: "JournalFork".into(),
                message: format!(
                    "{key} is already in the bucket, and this index never put it: another copy of this machine (the same machine id) wrote its journal. Nothing was overwritten; restart the mount: it takes a new machine id"
                ),
            }),
            r => r.map(|_| key),
        }
    }

    /// Upload a sealed snapshot (`SnapshotWriter`'s output, `len` bytes of `file`) under its key.
    pub async fn put_snapshot(&self, machine: &str, covers_seq: i64, file: &std::fs::File, len: u64) -> Result<String, StoreError> {
        use std::os::unix::fs::FileExt;
        let key = format!("{}s/{machine}/{covers_seq:016}", self.prefix);
        let mut header = [0u8; crypto::HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(|e| StoreError::Permanent { code: "LocalRead".into(), message: format!("{key}: {e}") })?;
        // Never over an object already there (see `put_batch`): one at this key is this
        // machine's earlier attempt, or a copy's, which the journal batches tell apart.
        match put_file(self.store, &key, file, len, &PutOptions { if_none_match: true, ..self.opts(&key, &header) }).await {
            // Not recorded as taken: the next flush takes one covering more records.
            Err(StoreError::AlreadyExists) => Err(StoreError::Permanent {
                code: "SnapshotExists".into(),
                message: format!("{key} is already in the bucket (an earlier attempt, or another copy of this cache dir); left as it is"),
            }),
            r => r.map(|_| key),
        }
    }
}

/// Upload `len` bytes of `file` as the object `key`: one PUT up to the multipart threshold,
/// otherwise parts sent one after another (memory: one part), the upload aborted if one fails.
pub async fn put_file(store: &dyn ObjectStore, key: &str, file: &std::fs::File, len: u64, opts: &PutOptions) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let read = |start: u64, n: u64| -> Result<bytes::Bytes, StoreError> {
        off_runtime(|| {
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, start).map_err(|e| StoreError::Permanent { code: "LocalRead".into(), message: format!("{key}: {e}") })?;
            Ok(buf.into())
        })
    };
    if len <= crate::upload::MULTIPART_THRESHOLD {
        return store.put_object(key, read(0, len)?, opts).await;
    }
    let part = crate::upload::part_size(len);
    let id = store.create_multipart(key, opts).await?;
    let mut parts = Vec::new();
    let sent: Result<(), StoreError> = async {
        for (k, start) in (0..len).step_by(part as usize).enumerate() {
            let n = (k + 1) as i32;
            parts.push((n, store.upload_part(key, &id, n, read(start, part.min(len - start))?).await?));
        }
        store.complete_multipart(key, &id, &parts, opts.if_none_match).await
    }
    .await;
    if sent.is_err() {
        if let Err(e) = store.abort_multipart(key, &id).await {
            tracing::warn!(key, error = %e, "could not abort a failed multipart upload (an AbortIncompleteMultipartUpload rule on the bucket removes its parts)");
        }
    }
    sent
}

/// Delete this machine's journal batches and snapshots that `covers_seq` makes redundant.
/// Remove this machine's snapshots older than the one covering `covers_seq`. Journal batches
/// are kept: another machine's later snapshot may have seen less of this journal than this
/// snapshot covers, and replay on top of that snapshot needs the records in between.
pub async fn compact(store: &dyn ObjectStore, prefix: &str, machine: &str, covers_seq: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    for o in store.list(&format!("{prefix}s/{machine}/")).await? {
        if let Some((_, _, last)) = parse_seq_key(&o.key[prefix.len() + 2..]) {
            if last < covers_seq {
                store.delete_object(&o.key).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}
