//! Archive tiers: an open of an archived file asks for one restore; restore bookkeeping; storage classes learned from S3.

use super::{now_ms, Fs, FsError, Result, OPEN_HEAD_INTERVAL_MS};
use crate::meta::Db;
use crate::meta::IndexResult;
use crate::meta::Inode;
use crate::meta::Kind;
use crate::meta::State;
use crate::meta::ROOT;
use crate::restore::poller::RestoreIndex;
use crate::store::ObjectStore;
use crate::vault::header;
use crate::vault::{RState, StorageClass, Tier};
use std::time::Duration;

impl RestoreIndex for Fs {
    fn restores(&self) -> IndexResult<Vec<crate::restore::Restore>> {
        Ok(Fs::restores(self)?)
    }

    fn put_restore(&self, r: &crate::restore::Restore) -> IndexResult<()> {
        Ok(Fs::put_restore(self, r)?)
    }

    fn set_class_by_key(&self, key: &str, class: &StorageClass) -> IndexResult<usize> {
        Ok(self.core().db.set_storage_class_by_key(key, class)?)
    }

    fn restored_copy(&self, ino: u64, key: &str) -> Option<crate::restore::poller::RestoredCopy> {
        let i = self.getattr(ino).ok()?;
        if i.object_key.as_deref() != Some(key) {
            return None;
        }
        let header = i.header?;
        Some(crate::restore::poller::RestoredCopy { path: self.staging.rcache_path(header::commitment(&header)), header, size: i.size })
    }
}

impl Fs {
    // ------------------------------------------------------------------ restores (archive tiers)

    /// Ok if `i`'s remote content can be read now; otherwise records/advances a restore and
    /// answers `Archived` (EAGAIN). Called from open, on a blocking thread.
    pub(super) fn check_restore(&self, i: &Inode, pid: u32) -> Result<()> {
        let Some(class) = i.storage_class.clone() else { return Ok(()) };
        if !class.needs_restore() {
            return Ok(());
        }
        if let Some(h) = &i.header {
            let commitment = header::commitment(h);
            if self.staging.rcache_path(commitment).exists() || self.staging.rcache_plain_path(commitment).exists() {
                return Ok(()); // a fetched copy of the restored object, or the version kept after its upload
            }
        }
        let now = now_ms();
        // A row for another object (a view's inode number reused after a remount, or a file
        // rewritten) says nothing of this one.
        let existing = self.core().db.restore(i.ino)?.filter(|r| i.object_key.as_deref() == Some(r.object_key.as_str()));
        match existing {
            Some(r) if r.readable_at(now) => Ok(()),
            Some(mut r) if r.state.pending() => {
                if r.state == RState::InProgress && now - r.last_check_ms >= OPEN_HEAD_INTERVAL_MS {
                    let key = r.object_key.clone();
                    let head = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), self.store.head_object(&key)).await });
                    if let Ok(Ok(h)) = head {
                        crate::restore::apply_head(&mut r, &h, now_ms());
                        self.core().db.put_restore(&r)?;
                        if r.state == RState::Ready {
                            return Ok(());
                        }
                    }
                }
                Err(FsError::Archived)
            }
            _ => {
                self.request_restore(i, &class, pid, None, None, true)?;
                Err(FsError::Archived)
            }
        }
    }

    /// Record a restore request (the restore task sends it). For automatic requests (`auto`),
    /// the indexer rule and the daily budget apply and may record a refusal instead.
    /// Returns true if a request was recorded.
    pub fn request_restore(&self, i: &Inode, class: &StorageClass, pid: u32, tier: Option<Tier>, days: Option<i32>, auto: bool) -> Result<bool> {
        let now = now_ms();
        let rc = &self.cfg.restore;
        let tier = tier.unwrap_or_else(|| crate::restore::default_tier(class, rc.glacier_tier, rc.deep_archive_tier));
        let days = if class.is_it_archive() { None } else { Some(days.unwrap_or(rc.days)) };
        let mut r = crate::restore::Restore {
            ino: i.ino,
            object_key: i.object_key.clone().unwrap_or_default(),
            state: RState::Requesting,
            class: class.clone(),
            tier,
            days,
            size: i.size,
            requested_ms: now,
            expected_ms: now + crate::restore::expected_duration(class, tier).as_millis() as i64,
            expiry_ms: None,
            expiry_text: None,
            last_check_ms: 0,
            next_check_ms: 0,
            attempts: 0,
            reason: None,
            auto,
        };
        let c = self.core();
        // Checked under the lock: concurrent opens and reads (kernel readahead) of one file
        // must produce one request, never two.
        if let Some(cur) = c.db.restore(i.ino)? {
            let live = cur.state.pending() || cur.readable_at(now);
            if live && cur.object_key == r.object_key {
                return Ok(false);
            }
        }
        if auto {
            if let Some(name) = crate::restore::indexer_name(pid, &rc.indexers) {
                r.state = RState::Refused;
                r.reason = Some(format!("opened by {name}, a known indexer or thumbnailer; those never trigger restores"));
                tracing::info!(ino = i.ino, process = %name, "restore refused: indexer");
                c.db.put_restore(&r)?;
                return Ok(false);
            }
            let day_start = now - now.rem_euclid(86_400_000);
            let used = c.db.auto_restore_bytes_since(day_start)?;
            if used + i.size > rc.daily_budget {
                r.state = RState::Refused;
                r.reason = Some(format!(
                    "the daily budget for automatic restores ({}) would be exceeded ({} already requested today, this file {})",
                    crate::text::human_bytes(rc.daily_budget),
                    crate::text::human_bytes(used),
                    crate::text::human_bytes(i.size)
                ));
                tracing::warn!(ino = i.ino, used, budget = rc.daily_budget, "restore refused: daily budget");
                c.db.put_restore(&r)?;
                return Ok(false);
            }
        }
        tracing::info!(ino = i.ino, class = %class, tier = %r.tier, auto, "restore requested");
        c.db.put_restore(&r)?;
        drop(c);
        self.restore_wakeup.notify_one();
        Ok(true)
    }

    /// A GET failed with InvalidObjectState: learn the object's class with HeadObject and
    /// request a restore through the usual rules.
    pub(super) fn discover_archived(&self, ino: u64) {
        let Ok(Some(mut i)) = self.core().db.get(ino) else { return };
        let Some(key) = i.object_key.clone() else { return };
        let head = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), self.store.head_object(&key)).await });
        let Ok(Ok(h)) = head else { return };
        let class = h.class();
        tracing::info!(ino, class = %class, "object moved to an archive tier behind our back");
        i.storage_class = Some(class.clone());
        if self.core().db.update(&i).is_err() {
            return;
        }
        if class.needs_restore() {
            let _ = self.request_restore(&i, &class, 0, None, None, true);
        }
    }

    pub fn restores(&self) -> Result<Vec<crate::restore::Restore>> {
        Ok(self.core().db.restores()?)
    }

    pub fn put_restore(&self, r: &crate::restore::Restore) -> Result<()> {
        // The file may have been deleted or rewritten meanwhile: only keep rows for live objects
        // (a view's file, while its view is shown).
        if super::at::is_view_ino(r.ino) {
            let live = self.view_inode(r.ino).ok().is_some_and(|i| i.object_key.as_deref() == Some(r.object_key.as_str()));
            let c = self.core();
            if live {
                c.db.put_restore(r)?;
            } else {
                Db::delete_restore(c.db.conn(), r.ino)?;
            }
            return Ok(());
        }
        let c = self.core();
        match c.db.get(r.ino)? {
            Some(i) if i.object_key.as_deref() == Some(r.object_key.as_str()) => Ok(c.db.put_restore(r)?),
            _ => Ok(Db::delete_restore(c.db.conn(), r.ino)?),
        }
    }

    /// Resolve a vault path ("a/b", "" for the root) to its inode.
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let c = self.core();
        let mut cur = c.db.get(ROOT)?.ok_or(FsError::NotFound)?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            cur = c.db.lookup(cur.ino, part)?.ok_or(FsError::NotFound)?;
        }
        Ok(cur)
    }

    /// Files at or below `i` whose content is in an archive tier and not readable now.
    pub fn archived_files_below(&self, i: &Inode) -> Result<Vec<Inode>> {
        let c = self.core();
        let files = if i.kind == Kind::Dir { c.db.files_below(i.ino)? } else { vec![i.clone()] };
        let now = now_ms();
        let mut out = Vec::new();
        for f in files {
            let archived = f.state == State::Uploaded && f.storage_class.as_ref().is_some_and(StorageClass::needs_restore);
            if !archived {
                continue;
            }
            let ready = c.db.restore(f.ino)?.is_some_and(|r| r.state.pending() || r.readable_at(now));
            if !ready {
                out.push(f);
            }
        }
        Ok(out)
    }
}
