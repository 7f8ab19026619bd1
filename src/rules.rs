//! Storage class per path: rules (`raw/** = DEEP_ARCHIVE`), first match wins, with a small-file
//! guard (archive classes bill a minimum object size, so small files fall back) and optional
//! object tags for bucket lifecycle rules.
//!
//! Globs: `*` matches within one path component, `?` one character, `**` any number of
//! components. A pattern without `/` matches the file name in any folder (`*.CR2`).

use crate::vault::StorageClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    pub glob: String,
    pub class: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct ClassPolicy {
    pub rules: Vec<ClassRule>,
    pub default_class: String,
    /// Files smaller than this never go to an archive class (GLACIER, DEEP_ARCHIVE).
    pub small_file_threshold: u64,
    pub small_file_class: String,
}

impl ClassPolicy {
    /// (storage class, tags) for a file at `path` of `size` bytes.
    /// Archive classes (those that need a restore) bill a minimum object size: the small-file
    /// guard keeps tiny files out of them.
    pub fn choose(&self, path: &str, size: u64) -> (StorageClass, BTreeMap<String, String>) {
        let (class, tags) = self
            .rules
            .iter()
            .find(|r| matches(&r.glob, path))
            .map(|r| (StorageClass::parse(&r.class), r.tags.clone()))
            .unwrap_or_else(|| (StorageClass::parse(&self.default_class), BTreeMap::new()));
        if class.needs_restore() && size < self.small_file_threshold {
            return (StorageClass::parse(&self.small_file_class), tags);
        }
        (class, tags)
    }
}

/// Parse `GLOB=CLASS` from the command line.
pub fn parse_rule(s: &str) -> Result<ClassRule, String> {
    let (g, c) = s.rsplit_once('=').ok_or_else(|| format!("--class-rule {s:?}: expected GLOB=CLASS"))?;
    let (g, c) = (g.trim(), c.trim().to_ascii_uppercase());
    if g.is_empty() {
        return Err(format!("--class-rule {s:?}: empty glob"));
    }
    validate_class(&c)?;
    Ok(ClassRule { glob: g.to_string(), class: c, tags: BTreeMap::new() })
}

pub fn validate_class(c: &str) -> Result<(), String> {
    StorageClass::choose(c).map(drop).map_err(|e| e.to_string())
}

/// URL-encoded tag set for PutObject's `Tagging`.
pub fn tagging(tags: &BTreeMap<String, String>) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    Some(tags.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&"))
}

pub fn matches(glob: &str, path: &str) -> bool {
    let glob = glob.trim_start_matches('/');
    if !glob.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return component(glob.as_bytes(), name.as_bytes());
    }
    let g: Vec<&str> = glob.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    segments(&g, &p)
}

fn segments(g: &[&str], p: &[&str]) -> bool {
    match g.first() {
        None => p.is_empty(),
        Some(&"**") => (0..=p.len()).any(|k| segments(&g[1..], &p[k..])),
        Some(s) => !p.is_empty() && component(s.as_bytes(), p[0].as_bytes()) && segments(&g[1..], &p[1..]),
    }
}

fn component(g: &[u8], s: &[u8]) -> bool {
    match g.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| component(&g[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && component(&g[1..], &s[utf8_len(s[0])..]),
        Some(c) => s.first() == Some(c) && component(&g[1..], &s[1..]),
    }
}

fn utf8_len(b: u8) -> usize {
    match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ClassPolicy {
        ClassPolicy {
            rules: vec![
                parse_rule("raw/**=DEEP_ARCHIVE").unwrap(),
                parse_rule("catalog/**=standard_ia").unwrap(),
                ClassRule { glob: "*.CR2".into(), class: "GLACIER".into(), tags: [("tier".to_string(), "cold raw".to_string())].into() },
            ],
            default_class: "STANDARD".into(),
            small_file_threshold: 128 * 1024,
            small_file_class: "STANDARD_IA".into(),
        }
    }

    #[test]
    fn first_match_wins_and_small_files_fall_back() {
        let p = policy();
        assert_eq!(p.choose("raw/2019/a.CR2", 1 << 20).0, "DEEP_ARCHIVE");
        assert_eq!(p.choose("raw/2019/a.CR2", 1000).0, "STANDARD_IA", "small-file guard");
        assert_eq!(p.choose("catalog/x.lrcat", 10).0, "STANDARD_IA");
        let (c, t) = p.choose("other/b.CR2", 1 << 20);
        assert_eq!(c, "GLACIER");
        assert_eq!(tagging(&t).unwrap(), "tier=cold%20raw");
        assert_eq!(p.choose("other/b.jpg", 1 << 20).0, "STANDARD");
    }

    #[test]
    fn globs() {
        assert!(matches("raw/**", "raw/a"));
        assert!(matches("raw/**", "raw/a/b/c"));
        assert!(!matches("raw/**", "rawx/a"));
        assert!(matches("**/*.jpg", "a/b/c.jpg"));
        assert!(matches("**/*.jpg", "c.jpg"));
        assert!(matches("a/*/c", "a/ü/c"));
        assert!(!matches("a/*/c", "a/b/x/c"));
        assert!(matches("*.CR?", "x/y/IMG.CR2"));
        assert!(parse_rule("raw=NOPE").is_err());
        assert!(parse_rule("nothing").is_err());
    }
}
