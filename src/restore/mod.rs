//! Archive tiers: what a restore costs and how long it takes, the cost guard, and the text of
//! the `NAME.restore-status` placeholder files. Which classes need a restore is
//! `vault::StorageClass::needs_restore`; the record of a restore is `vault::Restore`.
//!
//! Pure logic only: the restore *state* lives in the index (`meta`, table `restores`), the
//! requests go through `fs`/`store`. Times and prices are AWS's published figures for
//! us-east-1 (2024); they are estimates and the status file says so.

use crate::store::HeadInfo;
use crate::vault::{ItArchive, StorageClass, Tier};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// Tier for automatic restores of GLACIER / DEEP_ARCHIVE objects.
    pub glacier_tier: Tier,
    pub deep_archive_tier: Tier,
    /// Days a restored copy stays available (not sent for Intelligent-Tiering).
    pub days: i32,
    /// Bytes of open-triggered restores allowed per UTC day.
    pub daily_budget: u64,
    /// Extra process names that never trigger a restore.
    pub indexers: Vec<String>,
    /// Suffix of the placeholder status files.
    pub suffix: String,
    /// Poll interval overriding the per-tier default (`--restore-poll`).
    pub poll_override: Option<Duration>,
    /// Download restored objects into the local cache so they stay readable after expiry.
    pub fetch_restored: bool,
    /// ListObjectsV2 refresh of storage classes (None: off).
    pub class_refresh: Option<Duration>,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            glacier_tier: Tier::Standard,
            deep_archive_tier: Tier::Bulk,
            days: 7,
            daily_budget: 10 << 30,
            indexers: Vec::new(),
            suffix: ".restore-status".into(),
            poll_override: None,
            fetch_restored: false,
            class_refresh: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

pub mod poller;

use crate::clock::{fmt_ms, parse_http_date};
use crate::text::human_bytes;
pub use crate::vault::{RState, Restore};

/// Published worst-case time for a restore to complete.
pub fn expected_duration(class: &StorageClass, tier: Tier) -> Duration {
    let h = |n: u64| Duration::from_secs(n * 3600);
    match (class, tier) {
        (StorageClass::Glacier, Tier::Expedited) => Duration::from_secs(5 * 60),
        (StorageClass::Glacier, Tier::Standard) => h(5),
        (StorageClass::Glacier, _) => h(12),
        (StorageClass::DeepArchive, Tier::Standard) => h(12),
        (StorageClass::DeepArchive, _) => h(48),
        (StorageClass::IntelligentTiering(Some(ItArchive::DeepArchiveAccess)), _) => h(12),
        _ => h(5), // Intelligent-Tiering Archive Access
    }
}

/// How often the poller asks S3 about a pending restore of this tier.
pub fn poll_interval(tier: Tier) -> Duration {
    match tier {
        Tier::Expedited => Duration::from_secs(60),
        Tier::Standard => Duration::from_secs(15 * 60),
        Tier::Bulk => Duration::from_secs(3600),
    }
}

/// (USD per GiB retrieved, USD per 1,000 requests).
fn prices(class: &StorageClass, tier: Tier) -> (f64, f64) {
    match (class, tier) {
        (StorageClass::Glacier, Tier::Expedited) => (0.03, 10.0),
        (StorageClass::Glacier, Tier::Standard) => (0.01, 0.05),
        (StorageClass::Glacier, _) => (0.0, 0.025),
        (StorageClass::DeepArchive, Tier::Standard) => (0.02, 0.10),
        (StorageClass::DeepArchive, _) => (0.0025, 0.025),
        _ => (0.0, 0.0), // Intelligent-Tiering restores carry no retrieval fee
    }
}

/// Estimated retrieval cost in USD of restoring `bytes` in `files` objects.
pub fn cost_estimate(class: &StorageClass, tier: Tier, bytes: u64, files: u64) -> f64 {
    let (per_gib, per_k) = prices(class, tier);
    bytes as f64 / (1u64 << 30) as f64 * per_gib + files as f64 / 1000.0 * per_k
}

/// Default tier for automatic restores of a class.
pub fn default_tier(class: &StorageClass, glacier: Tier, deep: Tier) -> Tier {
    match class {
        StorageClass::DeepArchive => deep,
        StorageClass::Glacier => glacier,
        _ => Tier::Standard,
    }
}

/// Fold a HeadObject answer into a restore record (at `now`, ms).
pub fn apply_head(r: &mut Restore, h: &HeadInfo, now: i64) {
    r.last_check_ms = now;
    let class = h.class();
    if !class.needs_restore() && !class.is_intelligent_tiering() {
        // Moved back out of the archive tier: readable, nothing to wait for.
        r.state = RState::Ready;
        r.expiry_ms = None;
        r.expiry_text = Some(format!("indefinitely (now in {class})"));
        return;
    }
    match &h.restore {
        Some(rs) if !rs.ongoing => {
            r.state = RState::Ready;
            r.expiry_text = rs.expiry.clone();
            r.expiry_ms = rs.expiry.as_deref().and_then(parse_http_date);
        }
        Some(_) => r.state = RState::InProgress,
        None if class == StorageClass::IntelligentTiering(None) => {
            // Intelligent-Tiering moved it back to a frequent-access tier.
            r.state = RState::Ready;
            r.expiry_ms = None;
            r.expiry_text = Some("indefinitely (back in a frequent-access tier)".into());
        }
        None => {}
    }
}

/// Processes that open files for indexing or thumbnails: they never trigger a restore.
pub const KNOWN_INDEXERS: &[&str] = &[
    "tracker-miner-f",
    "tracker-miner",
    "tracker-extract",
    "tracker3",
    "baloo_file",
    "baloo_file_extr",
    "baloorunner",
    "tumblerd",
    "gnome-desktop-th",
    "gdk-pixbuf-thum",
    "totem-video-thu",
    "evince-thumbna",
    "ffmpegthumbnail",
    "kioworker",
    "thumbnail",
    "zeitgeist",
    "recoll",
    "updatedb",
    "plocate",
    "mlocate",
    "clamd",
    "clamscan",
    "mdworker",
    "mds",
];

/// Name of the process `pid` (its `comm`, and the base name of its executable).
pub fn process_names(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        out.push(c.trim().to_string());
    }
    if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        if let Some(a0) = cmd.split(|b| *b == 0).next() {
            let a0 = String::from_utf8_lossy(a0);
            if let Some(base) = a0.rsplit('/').next() {
                out.push(base.to_string());
            }
        }
    }
    out
}

/// If `pid` is a known indexer or thumbnailer (or one of `extra`), its name.
pub fn indexer_name(pid: u32, extra: &[String]) -> Option<String> {
    if pid == 0 {
        return None;
    }
    process_names(pid).into_iter().find(|n| {
        !n.is_empty()
            && (KNOWN_INDEXERS.iter().any(|k| n.starts_with(k) || (k.len() >= 8 && n.contains(k)))
                || extra.iter().any(|k| !k.is_empty() && n.starts_with(k.as_str())))
    })
}

/// The text of `NAME.restore-status`.
pub fn status_text(path: &str, r: &Restore) -> String {
    let mut t = String::new();
    let state = match r.state {
        RState::Ready => format!("ready until {}", r.expiry_text.clone().unwrap_or_else(|| "the restore expires".into())),
        RState::Refused | RState::Failed => format!("{} — {}", r.state.as_str(), r.reason.clone().unwrap_or_default()),
        s => s.as_str().to_string(),
    };
    t.push_str(&format!("coldvault restore status: {path}\n\n"));
    t.push_str(&format!("state:             {state}\n"));
    t.push_str(&format!("storage class:     {}\n", r.class));
    t.push_str(&format!("tier:              {}\n", r.tier));
    t.push_str(&format!("size:              {}\n", human_bytes(r.size)));
    if r.state != RState::Refused {
        t.push_str(&format!("requested at:      {}\n", fmt_ms(r.requested_ms)));
    }
    match r.state {
        RState::Requesting | RState::InProgress => {
            t.push_str(&format!("expected ready by: {} (published worst case for {} from {})\n", fmt_ms(r.expected_ms), r.tier, r.class));
            let days = r.days.map(|d| format!("{d} days after it completes")).unwrap_or_else(|| "until moved back to an archive tier".into());
            t.push_str(&format!("available until:   not yet known (the restored copy stays {days})\n"));
        }
        RState::Ready => {
            t.push_str(&format!("available until:   {}\n", r.expiry_text.clone().unwrap_or_else(|| "unknown".into())));
        }
        _ => {}
    }
    let cost = cost_estimate(&r.class, r.tier, r.size, 1);
    t.push_str(&format!("cost estimate:     ${cost:.4} retrieval (AWS list price; excludes storage of the restored copy)\n\n"));
    let advice = match r.state {
        RState::Requesting | RState::InProgress => {
            "The file becomes readable when S3 finishes the restore; until then opening it fails with EAGAIN (Resource temporarily unavailable)."
        }
        RState::Ready => "The file reads normally now. When the restore expires it returns to its archive tier.",
        RState::Refused => "Nothing was requested. To restore it anyway: coldvault restore PATH (from outside the file's folder is fine).",
        RState::Failed => "S3 refused the restore request. Check the log and permissions (s3:RestoreObject), then: coldvault restore PATH.",
        RState::Expired => "",
    };
    t.push_str(advice);
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_and_times() {
        let gib = 1u64 << 30;
        assert!((cost_estimate(&StorageClass::DeepArchive, Tier::Bulk, 100 * gib, 1) - 0.25).abs() < 0.001);
        assert!((cost_estimate(&StorageClass::Glacier, Tier::Expedited, gib, 1000) - 10.03).abs() < 0.001);
        assert_eq!(expected_duration(&StorageClass::DeepArchive, Tier::Bulk), Duration::from_secs(48 * 3600));
        assert_eq!(expected_duration(&StorageClass::Glacier, Tier::Expedited), Duration::from_secs(300));
        let it_deep = StorageClass::parse("INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS");
        assert_eq!(expected_duration(&it_deep, Tier::Standard), Duration::from_secs(12 * 3600));
    }

    #[test]
    fn own_process_is_not_an_indexer() {
        assert_eq!(indexer_name(std::process::id(), &[]), None);
        assert!(indexer_name(std::process::id(), &["coldvault".into()]).is_some());
    }
}
