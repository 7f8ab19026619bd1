//! What `/proc/self/mountinfo` says about coldvault mounts: whether a path is mounted, whether
//! a coldvault mount is there, and which mount a path is inside.

use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

pub fn is_mounted(mp: &Path) -> bool {
    let target = mp.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))).unwrap_or(false)
}

/// Whether a coldvault mount, live or left by a crashed daemon, is at `mp` (the same test as
/// [`find_mount`]: `fuse.coldvault` through fusermount3, source `coldvault` when mounted as root).
pub fn is_coldvault_mount(mp: &Path) -> bool {
    let target = mp.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()) && (l.contains(" - fuse.coldvault ") || l.contains(" coldvault "))))
        .unwrap_or(false)
}

/// The coldvault mount point containing `p`, and `p`'s vault-relative path.
pub fn find_mount(p: &Path) -> Result<(PathBuf, String)> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{} does not exist", p.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts: Vec<PathBuf> = info
        .lines()
        .filter(|l| l.contains(" - fuse.coldvault ") || l.contains(" coldvault "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .collect();
    let mut cur = abs.as_path();
    loop {
        if mounts.iter().any(|m| m == cur) {
            let rel = abs.strip_prefix(cur).expect("prefix").to_string_lossy().to_string();
            return Ok((cur.to_path_buf(), rel));
        }
        cur = cur.parent().ok_or_else(|| anyhow!("{} is not inside a coldvault mount", p.display()))?;
    }
}
