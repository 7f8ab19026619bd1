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

#[cfg(test)]
mod tests {
    use super::*;

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
