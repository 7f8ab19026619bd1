//! Wall-clock time as the index and the bucket's journal store it.
//!
//! File times are nanoseconds since the Unix epoch in an `i128` ([`Nanos`]): an `i64` of
//! nanoseconds ends in April 2262, and users (and smbtorture) set times well past it — a
//! Windows client can send any 64-bit FILETIME. Where a time leaves this process it keeps the
//! compact form whenever it fits: an INTEGER in SQLite ([`SqlNanos`]) and a JSON number in the
//! bucket ([`nanos_json`]); only a time outside the `i64` range takes a wider form (a 16-byte
//! BLOB, a decimal string), so the index and the journal of ordinary files are unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (negative: before it).
pub type Nanos = i128;

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> Nanos {
    to_nanos(SystemTime::now())
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

/// A `SystemTime` as nanoseconds since the epoch (exact for every time the platform has).
pub fn to_nanos(t: SystemTime) -> Nanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(e) => -(e.duration().as_nanos() as Nanos),
    }
}

/// Nanoseconds since the epoch as a `SystemTime`; a time the platform cannot hold is clamped
/// to the nearest one it can.
pub fn from_nanos(ns: Nanos) -> SystemTime {
    let (secs, sub) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32);
    let secs = secs.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, sub))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())).and_then(|t| t.checked_add(Duration::from_nanos(sub as u64)))
    };
    t.unwrap_or(if secs >= 0 { UNIX_EPOCH + Duration::from_secs(i32::MAX as u64) } else { UNIX_EPOCH })
}

/// A [`Nanos`] in SQLite: an INTEGER when it fits in 64 bits (every time between 1677 and
/// 2262), else 16 bytes big-endian in a BLOB (SQLite would turn an oversized integer literal
/// into a lossy REAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlNanos(pub Nanos);

impl rusqlite::types::ToSql for SqlNanos {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(ToSqlOutput::Owned(match i64::try_from(self.0) {
            Ok(v) => Value::Integer(v),
            Err(_) => Value::Blob(self.0.to_be_bytes().to_vec()),
        }))
    }
}

impl rusqlite::types::FromSql for SqlNanos {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        use rusqlite::types::{FromSqlError, ValueRef};
        match v {
            ValueRef::Integer(i) => Ok(SqlNanos(i as Nanos)),
            ValueRef::Blob(b) => <[u8; 16]>::try_from(b)
                .map(|a| SqlNanos(i128::from_be_bytes(a)))
                .map_err(|_| FromSqlError::InvalidBlobSize { expected_size: 16, blob_size: b.len() }),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// `#[serde(with = "nanos_json")]`: a [`Nanos`] as a JSON number when it fits in 64 bits (as
/// every earlier build wrote it), else as a decimal string. (Numbers beyond 64 bits cannot pass
/// through serde's internally tagged enums, which journal records are.)
pub mod nanos_json {
    use super::Nanos;
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Nanos, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*v) {
            Ok(n) => s.serialize_i64(n),
            Err(_) => s.serialize_str(&v.to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Nanos, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Nanos;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("nanoseconds since the epoch, as an integer or a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Nanos, E> {
                Ok(v as Nanos)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Nanos, E> {
                Ok(v as Nanos)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Nanos, E> {
                v.parse().map_err(|_| E::custom(format!("not a time in nanoseconds: {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
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

/// A time as a user gives it, in UTC: "2026-11-20", "2026-11-20 10:00", "2026-11-20T10:00:30",
/// "2026-11-20T10:00:30Z", or as `fmt_ms` prints it ("2026-11-20 10:00:30 UTC"). A date alone
/// is its midnight. Unix ms; `None` if it is not one of these.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_suffix(" UTC").or_else(|| s.strip_suffix('Z')).unwrap_or(s);
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let ymd: Vec<&str> = date.split('-').collect();
    let [y, m, d] = ymd[..] else { return None };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || civil_from_days(days_from_civil(y, m, d)) != (y, m, d) {
        return None;
    }
    let secs = match time {
        None => 0,
        Some(t) => {
            let hms: Vec<&str> = t.split(':').collect();
            if !(2..=3).contains(&hms.len()) || hms.iter().any(|x| x.len() != 2) {
                return None;
            }
            let v: Vec<i64> = hms.iter().map(|x| x.parse().ok()).collect::<Option<Vec<_>>>()?;
            let (h, mi, se) = (v[0], v[1], v.get(2).copied().unwrap_or(0));
            if h > 23 || mi > 59 || se > 59 {
                return None;
            }
            h * 3600 + mi * 60 + se
        }
    };
    Some((days_from_civil(y, m, d) * 86400 + secs) * 1000)
}

/// "2026-11-22 03:40:12 UTC"
pub fn fmt_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let s = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_users_write_them() {
        let t = 1_779_271_230_000; // 2026-05-20 10:00:30 UTC
        for s in ["2026-05-20T10:00:30", "2026-05-20 10:00:30", "2026-05-20T10:00:30Z", &fmt_ms(t)] {
            assert_eq!(parse_time(s), Some(t), "{s}");
        }
        assert_eq!(parse_time("2026-05-20T10:00"), Some(t - 30_000));
        assert_eq!(parse_time("2026-05-20"), Some(t - 36_030_000));
        for bad in ["", "yesterday", "2026-5-20", "2026-02-30", "2026-05-20T24:00", "2026-05-20T10:00:30+02:00", "1779271230"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_roundtrip() {
        let ms = parse_http_date("Fri, 21 Dec 2012 00:00:00 GMT").unwrap();
        assert_eq!(ms, 1_356_048_000_000);
        assert_eq!(fmt_ms(ms), "2012-12-21 00:00:00 UTC");
        assert_eq!(fmt_ms(parse_http_date("Tue, 24 Nov 2026 03:26:21 GMT").unwrap()), "2026-11-24 03:26:21 UTC");
        assert!(parse_http_date("garbage").is_none());
    }

    /// The times smbtorture's `smb2.timestamps` sets, and the ends of FILETIME.
    const TIMES_S: [i128; 7] = [-11_644_473_600, -1, 0, 1, 4_294_967_295, 10_000_000_000, 15_032_385_535];

    #[test]
    fn times_past_2262_survive_sqlite_json_and_system_time() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, ns INTEGER NOT NULL)").unwrap();
        for (k, s) in TIMES_S.iter().enumerate() {
            let ns = s * 1_000_000_000 + 123_456_789;
            conn.execute("INSERT INTO t(id, ns) VALUES(?1, ?2)", rusqlite::params![k as i64, SqlNanos(ns)]).unwrap();
            let back: SqlNanos = conn.query_row("SELECT ns FROM t WHERE id=?1", [k as i64], |r| r.get(0)).unwrap();
            assert_eq!(back.0, ns, "SQLite changed {s} s");
            assert_eq!(to_nanos(from_nanos(ns)), ns, "SystemTime changed {s} s");

            #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
            #[serde(tag = "op")]
            enum E {
                T {
                    #[serde(with = "nanos_json")]
                    mtime_ns: Nanos,
                },
            }
            let json = serde_json::to_string(&E::T { mtime_ns: ns }).unwrap();
            assert_eq!(serde_json::from_str::<E>(&json).unwrap(), E::T { mtime_ns: ns }, "{json}");
            if let Ok(small) = i64::try_from(ns) {
                assert_eq!(json, format!(r#"{{"op":"T","mtime_ns":{small}}}"#), "a time that fits stays a plain number");
            }
        }
    }
}
