//! Folder read-ahead. When the files of a folder are read one after another from their first
//! byte, in listing or in name order (`cp -r`, rsync, a folder dragged out of a Samba share), the
//! beginnings of the next files are requested before they are opened: a copy that reads one
//! file at a time then waits for S3 once, not once per file.
//!
//! Only the first `sealed::INITIAL_WINDOW` of each file is requested, for at most `FILES_AHEAD`
//! files, and only while a quarter of the mount's read budget has room; files that are
//! archived, local or empty are skipped. What nobody opens is dropped after `STARTED_TTL` (its GETs are the cost of
//! a guess that was wrong: at most `FILES_AHEAD` beginnings when a reader stops).
//!
//! The state (`FolderAhead`: recent readings per folder, readers started ahead) is `Reads`'s,
//! behind its own lock, never held while taking `core`. Only the look-up of a folder's files
//! in the index is `Fs`'s (`Fs::folder_read_began`), done under `core` between two holds of
//! that lock: `Reads::began` says whom to follow, `Reads::start_ahead` starts the readers.

use super::{Fs, Reads, Source};
use crate::meta::Inode;
use crate::meta::State;
use crate::sealed::Reader;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Files whose beginnings are requested ahead of one reading a folder in order.
const FILES_AHEAD: usize = 16;
/// Readers started ahead and not yet opened hold at most this share of the read budget (the
/// reads under way come first)…
const STARTED_SHARE: u64 = 4;
/// …and are dropped after this long.
const STARTED_TTL: Duration = Duration::from_secs(3);
/// A reader started ahead that has waited this long makes room when the share is full.
const STALE: Duration = Duration::from_secs(1);
/// Per folder, how many of the files whose reading began there last are remembered, and for how
/// long.
const RECENT: usize = 64;
const RECENT_TTL: Duration = Duration::from_secs(10);
/// Folders remembered at most (all forgotten beyond).
const FOLDERS: usize = 1024;

type SharedReader = Arc<std::sync::Mutex<Reader>>;

#[derive(Default)]
pub(super) struct FolderAhead {
    /// Per folder, the files whose reading began there last, by which process and when,
    /// oldest first.
    recent: HashMap<u64, VecDeque<(u64, u32, Instant)>>,
    /// Readers started ahead, oldest first.
    started: VecDeque<(u64, Instant, SharedReader)>,
}

impl FolderAhead {
    fn expire(&mut self) {
        while self.started.front().is_some_and(|(_, at, _)| at.elapsed() > STARTED_TTL) {
            self.started.pop_front();
        }
    }
}

/// What a folder's recent readings say when the reading of one of its files begins
/// (`Reads::began`): `Fs` looks up from them, in the index, which files to request ahead.
pub(super) struct Began {
    /// Files of the folder whose reading this process began there a moment ago.
    pub(super) mine: Vec<u64>,
    /// Files of the folder other processes began while this one was reading it.
    pub(super) others: Vec<u64>,
}

impl Reads {
    fn ahead(&self) -> std::sync::MutexGuard<'_, FolderAhead> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop what was requested ahead and not opened in time, and the buffers kept for reads
    /// (the group commit calls it). Once reads have stopped, the memory they used goes back to
    /// the system: the allocator keeps freed buffers of several MiB for itself otherwise, and an
    /// idle mount would stay at its reading peak.
    pub(super) fn expire(&self) {
        self.ahead().expire();
        self.budget.trim();
        let requested = self.budget.requested();
        let seen = self.trimmed.swap(requested, std::sync::atomic::Ordering::Relaxed);
        if requested != seen && self.budget.used() == 0 {
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only hands free memory of the allocator back to the system; it
            // touches no memory in use, and glibc's allocator is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// The reader started ahead for `i` if it reads `i`'s current version (object `key`).
    pub(super) fn adopt_started(&self, i: &Inode, key: &str) -> Option<SharedReader> {
        let (_, _, r) = {
            let mut a = self.ahead();
            let pos = a.started.iter().position(|(ino, _, _)| *ino == i.ino)?;
            a.started.remove(pos)?
        };
        let same = {
            let g = r.lock().unwrap_or_else(|p| p.into_inner());
            g.object().key() == key && i.header.as_deref().is_some_and(|h| h == g.object().header())
        };
        same.then_some(r)
    }

    /// The reading of `i` began at its first byte, by process `pid`: remembered for its
    /// folder. `None` if this process began no other file of the folder a moment ago (nothing
    /// to follow); else which files it began there, and which other processes began since.
    pub(super) fn began(&self, i: &Inode, pid: u32) -> Option<Began> {
        let (mine, others): (Vec<u64>, Vec<u64>) = {
            let mut a = self.ahead();
            a.expire();
            if a.recent.len() >= FOLDERS && !a.recent.contains_key(&i.parent) {
                a.recent.clear();
            }
            let r = a.recent.entry(i.parent).or_default();
            while r.front().is_some_and(|(_, _, at)| at.elapsed() > RECENT_TTL) {
                r.pop_front();
            }
            let mine: Vec<u64> = r.iter().filter(|(_, p, _)| *p == pid).map(|(ino, _, _)| *ino).collect();
            // Files other processes began while this one was reading the folder (not before:
            // an earlier copy of the same folder is no reason to stop).
            let since = r.iter().find(|(_, p, _)| *p == pid).map(|(_, _, at)| *at);
            let others = r.iter().filter(|(_, p, at)| *p != pid && since.is_some_and(|s| *at >= s)).map(|(ino, _, _)| *ino).collect();
            r.retain(|(ino, _, _)| *ino != i.ino);
            r.push_back((i.ino, pid, Instant::now()));
            if r.len() > RECENT {
                r.pop_front();
            }
            (mine, others)
        };
        if mine.is_empty() {
            return None;
        }
        Some(Began { mine, others })
    }

    /// Request the beginnings of `next` (files a read would fetch from S3, in the order the
    /// folder is read), as far as the share of the read budget allows.
    pub(super) fn start_ahead(&self, next: Vec<Inode>) {
        // The oldest started are the next to be opened: when the share is full, nothing more
        // is started (rather than dropping those).
        let max = (self.budget.limit() / STARTED_SHARE / crate::sealed::INITIAL_WINDOW).max(2) as usize;
        for f in next {
            {
                let mut a = self.ahead();
                // Full: what has waited a second is a guess that was wrong (a reader that moved
                // on); it makes room.
                while a.started.len() >= max && a.started.front().is_some_and(|(_, at, _)| at.elapsed() > STALE) {
                    a.started.pop_front();
                }
                if a.started.len() >= max {
                    break;
                }
                if a.started.iter().any(|(ino, _, _)| *ino == f.ino) {
                    continue;
                }
            }
            let Some(key) = f.object_key.as_deref() else { continue };
            let Ok(r) = self.remote_reader(&f, key) else { continue };
            if !r.lock().unwrap_or_else(|p| p.into_inner()).start_ahead() {
                break; // the budget is full: reads under way come first
            }
            self.ahead().started.push_back((f.ino, Instant::now(), r));
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
impl Reads {
    /// Files whose beginnings were requested ahead and not opened yet.
    pub(super) fn started_ahead(&self) -> Vec<u64> {
        self.ahead().started.iter().map(|(ino, _, _)| *ino).collect()
    }
}

impl Fs {
    /// The reading of `i` began at its first byte, by process `pid`. If the file before it in
    /// its folder (in listing or in name order) began so a moment ago in the same process,
    /// request the beginnings of the files after it in that order. The folder's recent readings
    /// and the readers are `Reads`'; the files before and after `i` are looked up here, under
    /// `core`, which is never taken with the ahead lock held.
    pub(super) fn folder_read_began(&self, i: &Inode, pid: u32) {
        let Some(Began { mine, others }) = self.reads.began(i, pid) else {
            return;
        };
        // Files another process began a moment ago are not read ahead again, nor past them (the
        // folder is being read in parts: `xargs -P`, robocopy /MT).
        let next: Vec<Inode> = {
            let c = self.core();
            let Some(by_name) =
                [false, true].into_iter().find(|&by_name| c.db.file_before(i, by_name).ok().flatten().is_some_and(|p| mine.contains(&p)))
            else {
                return;
            };
            let Ok(files) = c.db.files_after(i, by_name, FILES_AHEAD) else { return };
            files
                .into_iter()
                .take_while(|f| !others.contains(&f.ino))
                .map(|f| Self::apply_overlay(&c, f))
                // Only what a read would fetch from S3: uploaded, not archived, not kept locally,
                // not being read already.
                .filter(|f| {
                    f.state == State::Uploaded
                        && f.size > 0
                        && f.header.is_some()
                        && !f.storage_class.as_ref().is_some_and(crate::vault::StorageClass::needs_restore)
                        && !c.open.contains_key(&f.ino)
                        && matches!(self.source_of(&c, f), Ok(Source::Remote(_)))
                })
                .collect()
        };
        self.reads.start_ahead(next);
    }
}

/// The process (thread group) of thread `tid`, which FUSE names as the caller: a copier's
/// threads are one reader. `tid` itself if that cannot be read.
pub(super) fn process_of(tid: u32) -> u32 {
    if tid == 0 {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(tid)
}
