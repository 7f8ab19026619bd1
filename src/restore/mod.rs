//! Archive tiers: what needs a restore, what a restore costs and how long it takes, the cost
//! guard, and the text of the `NAME.restore-status` placeholder files.
//!
//! Pure logic only: the restore *state* lives in the index (`meta`, table `restores`), the
//! requests go through `fs`/`store`. Times and prices are AWS's published figures for
//! us-east-1 (2024); they are estimates and the status file says so.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// Tier for automatic restores of GLACIER / DEEP_ARCHIVE objects.
    pub glacier_tier: String,
    pub deep_archive_tier: String,
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
            glacier_tier: "Standard".into(),
            deep_archive_tier: "Bulk".into(),
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

/// States of a restore, as stored in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RState {
    /// Recorded; the RestoreObject request has not been accepted by S3 yet (retried).
    Requesting,
    /// S3 accepted the request and is thawing the object.
    InProgress,
    /// The restored copy is readable until `expiry_ms`.
    Ready,
    /// The restored copy expired; the object is archived again.
    Expired,
    /// Not requested: the cost guard or the indexer rule said no (reason recorded).
    Refused,
    /// S3 refused the request permanently (reason recorded).
    Failed,
}

impl RState {
    pub fn as_str(self) -> &'static str {
        match self {
            RState::Requesting => "requested",
            RState::InProgress => "in progress",
            RState::Ready => "ready",
            RState::Expired => "expired",
            RState::Refused => "refused",
            RState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<RState> {
        Some(match s {
            "requested" => RState::Requesting,
            "in progress" => RState::InProgress,
            "ready" => RState::Ready,
            "expired" => RState::Expired,
            "refused" => RState::Refused,
            "failed" => RState::Failed,
            _ => return None,
        })
    }
    /// A status file is shown while the restore is pending, ready, or was refused/failed.
    pub fn visible(self) -> bool {
        !matches!(self, RState::Expired)
    }
    pub fn pending(self) -> bool {
        matches!(self, RState::Requesting | RState::InProgress)
    }
}

/// Storage classes (as the index records them) whose objects need a restore before GET.
/// Intelligent-Tiering archive access tiers are recorded as `INTELLIGENT_TIERING/<status>`.
pub fn needs_restore(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE") || class.starts_with("INTELLIGENT_TIERING/")
}

pub fn is_intelligent_tiering_archive(class: &str) -> bool {
    class.starts_with("INTELLIGENT_TIERING/")
}

pub const TIERS: &[&str] = &["Expedited", "Standard", "Bulk"];

/// Published worst-case time for a restore to complete.
pub fn expected_duration(class: &str, tier: &str) -> Duration {
    let h = |n: u64| Duration::from_secs(n * 3600);
    match (class, tier) {
        ("GLACIER", "Expedited") => Duration::from_secs(5 * 60),
        ("GLACIER", "Standard") => h(5),
        ("GLACIER", _) => h(12),
        ("DEEP_ARCHIVE", "Standard") => h(12),
        ("DEEP_ARCHIVE", _) => h(48),
        (c, _) if c.ends_with("DEEP_ARCHIVE_ACCESS") => h(12),
        _ => h(5), // Intelligent-Tiering Archive Access
    }
}

/// How often the poller asks S3 about a pending restore of this tier.
pub fn poll_interval(tier: &str) -> Duration {
    match tier {
        "Expedited" => Duration::from_secs(60),
        "Standard" => Duration::from_secs(15 * 60),
        _ => Duration::from_secs(3600),
    }
}

/// (USD per GiB retrieved, USD per 1,000 requests).
fn prices(class: &str, tier: &str) -> (f64, f64) {
    match (class, tier) {
        ("GLACIER", "Expedited") => (0.03, 10.0),
        ("GLACIER", "Standard") => (0.01, 0.05),
        ("GLACIER", _) => (0.0, 0.025),
        ("DEEP_ARCHIVE", "Standard") => (0.02, 0.10),
        ("DEEP_ARCHIVE", _) => (0.0025, 0.025),
        _ => (0.0, 0.0), // Intelligent-Tiering restores carry no retrieval fee
    }
}

/// Estimated retrieval cost in USD of restoring `bytes` in `files` objects.
pub fn cost_estimate(class: &str, tier: &str, bytes: u64, files: u64) -> f64 {
    let (per_gib, per_k) = prices(class, tier);
    bytes as f64 / (1u64 << 30) as f64 * per_gib + files as f64 / 1000.0 * per_k
}

/// Default tier for automatic restores of a class.
pub fn default_tier(class: &str, glacier: &str, deep: &str) -> String {
    match class {
        "DEEP_ARCHIVE" => deep.to_string(),
        "GLACIER" => glacier.to_string(),
        _ => "Standard".to_string(),
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

/// Parse an RFC 1123 date as S3 sends it ("Fri, 21 Dec 2012 00:00:00 GMT") to Unix ms.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 5 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<Vec<_>>>()?;
    if hms.len() != 3 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86400) + hms[0] * 3600 + hms[1] * 60 + hms[2]) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// "2026-11-22 03:40:12 UTC"
pub fn fmt_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let s = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// One restore as the index holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Restore {
    pub ino: u64,
    pub object_key: String,
    pub state: RState,
    pub class: String,
    pub tier: String,
    pub days: Option<i32>,
    pub size: u64,
    pub requested_ms: i64,
    pub expected_ms: i64,
    pub expiry_ms: Option<i64>,
    pub expiry_text: Option<String>,
    pub last_check_ms: i64,
    pub next_check_ms: i64,
    pub attempts: i64,
    pub reason: Option<String>,
    /// Triggered by an open (counts against the daily budget) rather than `coldvault restore`.
    pub auto: bool,
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
    let cost = cost_estimate(&r.class, &r.tier, r.size, 1);
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
    fn http_dates_roundtrip() {
        let ms = parse_http_date("Fri, 21 Dec 2012 00:00:00 GMT").unwrap();
        assert_eq!(ms, 1_356_048_000_000);
        assert_eq!(fmt_ms(ms), "2012-12-21 00:00:00 UTC");
        assert_eq!(fmt_ms(parse_http_date("Tue, 24 Nov 2026 03:26:21 GMT").unwrap()), "2026-11-24 03:26:21 UTC");
        assert!(parse_http_date("garbage").is_none());
    }

    #[test]
    fn archive_classes() {
        assert!(needs_restore("DEEP_ARCHIVE") && needs_restore("GLACIER"));
        assert!(needs_restore("INTELLIGENT_TIERING/ARCHIVE_ACCESS"));
        assert!(!needs_restore("GLACIER_IR") && !needs_restore("STANDARD_IA") && !needs_restore("INTELLIGENT_TIERING"));
    }

    #[test]
    fn costs_and_times() {
        let gib = 1u64 << 30;
        assert!((cost_estimate("DEEP_ARCHIVE", "Bulk", 100 * gib, 1) - 0.25).abs() < 0.001);
        assert!((cost_estimate("GLACIER", "Expedited", gib, 1000) - 10.03).abs() < 0.001);
        assert_eq!(expected_duration("DEEP_ARCHIVE", "Bulk"), Duration::from_secs(48 * 3600));
        assert_eq!(expected_duration("GLACIER", "Expedited"), Duration::from_secs(300));
    }

    #[test]
    fn own_process_is_not_an_indexer() {
        assert_eq!(indexer_name(std::process::id(), &[]), None);
        assert!(indexer_name(std::process::id(), &["coldvault".into()]).is_some());
    }
}
