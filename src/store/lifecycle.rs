//! The lifecycle rules a vault wants of its bucket (`coldvault lifecycle`): abort multipart
//! uploads abandoned for a week (their parts are billed until then), move file data to colder
//! classes by age if asked, and, in a versioned bucket (Object Lock), expire versions made
//! noncurrent by a delete (prune's) some days later and the delete markers left behind.
//!
//! Metadata (`P j/`, `P s/`, `P m/`, `P coldvault/`) is never transitioned: every rebuild reads
//! it, and an archived journal batch would need a restore before a machine could mount.

use crate::vault::StorageClass;
use serde_json::json;

/// A rule's id starts with this and the vault's prefix: `--apply` replaces those rules and
/// keeps every other rule of the bucket.
pub const ID_PREFIX: &str = "coldvault:";

/// One lifecycle rule of a vault.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    /// The key prefix it applies to.
    pub prefix: String,
    pub abort_multipart_days: Option<i32>,
    /// (days after upload, class), by increasing days.
    pub transitions: Vec<(i32, String)>,
    pub noncurrent_days: Option<i32>,
    pub expired_delete_markers: bool,
}

/// The rules for the vault under `prefix`: `transitions` of its file data (days=CLASS), and
/// `noncurrent_days` for a versioned bucket.
pub fn rules(prefix: &str, transitions: &[(i32, String)], noncurrent_days: Option<i32>) -> Result<Vec<Rule>, String> {
    let base = Rule {
        id: String::new(),
        prefix: prefix.to_string(),
        abort_multipart_days: None,
        transitions: vec![],
        noncurrent_days: None,
        expired_delete_markers: false,
    };
    let mut out = vec![Rule { id: format!("{ID_PREFIX}{prefix}:abort-multipart"), abort_multipart_days: Some(7), ..base.clone() }];
    if !transitions.is_empty() {
        let mut t = transitions.to_vec();
        t.sort();
        for (days, class) in &t {
            let c = StorageClass::choose(class).map_err(|e| e.to_string())?;
            if matches!(c, StorageClass::Standard) {
                return Err("STANDARD is where files start: a transition goes to another class".into());
            }
            // S3 refuses a transition to an infrequent-access class before 30 days.
            if matches!(c, StorageClass::StandardIa | StorageClass::OnezoneIa) && *days < 30 {
                return Err(format!("{class} takes objects 30 days or more after upload (S3's rule), not {days}"));
            }
            if *days < 0 {
                return Err(format!("{days} days: a transition is a number of days after upload"));
            }
        }
        if t.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("two transitions on the same day".into());
        }
        out.push(Rule { id: format!("{ID_PREFIX}{prefix}:data-transitions"), prefix: format!("{prefix}d/"), transitions: t, ..base.clone() });
    }
    if let Some(days) = noncurrent_days {
        if days < 1 {
            return Err("--noncurrent-days is at least 1".into());
        }
        out.push(Rule { id: format!("{ID_PREFIX}{prefix}:noncurrent"), noncurrent_days: Some(days), expired_delete_markers: true, ..base });
    }
    Ok(out)
}

/// A `DAYS=CLASS` transition as `--transition` takes it.
pub fn parse_transition(s: &str) -> Result<(i32, String), String> {
    let (d, c) = s.split_once('=').ok_or_else(|| format!("{s:?}: write a transition as DAYS=CLASS, e.g. 30=GLACIER_IR"))?;
    let days: i32 = d.trim().parse().map_err(|_| format!("{s:?}: {d:?} is not a number of days"))?;
    Ok((days, c.trim().to_string()))
}

/// The rules as `aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration` takes them.
pub fn to_json(rules: &[Rule]) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|r| {
            let mut v = json!({"ID": r.id, "Status": "Enabled", "Filter": {"Prefix": r.prefix}});
            if let Some(d) = r.abort_multipart_days {
                v["AbortIncompleteMultipartUpload"] = json!({"DaysAfterInitiation": d});
            }
            if !r.transitions.is_empty() {
                v["Transitions"] = r.transitions.iter().map(|(d, c)| json!({"Days": d, "StorageClass": c})).collect();
            }
            if let Some(d) = r.noncurrent_days {
                v["NoncurrentVersionExpiration"] = json!({"NoncurrentDays": d});
            }
            if r.expired_delete_markers {
                v["Expiration"] = json!({"ExpiredObjectDeleteMarker": true});
            }
            v
        })
        .collect();
    json!({ "Rules": rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_touch_file_data_only_and_follow_s3s_rules() {
        let r = rules("photos/", &[(180, "DEEP_ARCHIVE".into()), (30, "STANDARD_IA".into())], Some(30)).unwrap();
        let ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["coldvault:photos/:abort-multipart", "coldvault:photos/:data-transitions", "coldvault:photos/:noncurrent"]);
        assert_eq!(r[1].prefix, "photos/d/", "metadata is never archived");
        assert_eq!(r[1].transitions, vec![(30, "STANDARD_IA".into()), (180, "DEEP_ARCHIVE".into())]);
        assert_eq!(r[0].prefix, "photos/");
        let j = to_json(&r);
        assert_eq!(j["Rules"][0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"], 7);
        assert_eq!(j["Rules"][2]["Expiration"]["ExpiredObjectDeleteMarker"], true);
        for bad in [
            vec![(10, "STANDARD_IA".to_string())],
            vec![(30, "COLD".into())],
            vec![(30, "STANDARD".into())],
            vec![(90, "GLACIER".into()), (90, "DEEP_ARCHIVE".into())],
        ] {
            assert!(rules("p/", &bad, None).is_err(), "{bad:?}");
        }
        assert!(rules("p/", &[], Some(0)).is_err());
        assert_eq!(parse_transition("90=GLACIER"), Ok((90, "GLACIER".into())));
        assert!(parse_transition("GLACIER").is_err() && parse_transition("x=GLACIER").is_err());
    }
}
