//! The local journal of namespace changes waiting to go to the bucket.

use super::*;

impl Db {
    // ---- journal of namespace changes (uploaded to the bucket in batches) ----

    /// Append a journal record stamped `ts_ms`, raised above the clock floor (the newest
    /// time this index imported from the bucket), so that changes made after a rebuild sort
    /// after everything they were built on, even when this machine's clock is behind.
    pub fn journal_append(conn: &Connection, ts_ms: i64, entry_json: &str) -> Result<()> {
        conn.exec(
            "INSERT INTO journal(ts_ms, entry) VALUES(max(?1, coalesce((SELECT CAST(value AS INTEGER) FROM settings WHERE key='clock_floor_ms'), 0) + 1), ?2)",
            params![ts_ms, entry_json],
        )?;
        Ok(())
    }

    pub fn journal_pending(&self, limit: usize) -> Result<Vec<(i64, i64, String)>> {
        let mut st = self.conn.prepare_cached("SELECT seq, ts_ms, entry FROM journal ORDER BY seq LIMIT ?1")?;
        let r = st.query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn journal_delete_upto(&self, seq: i64) -> Result<()> {
        self.conn.exec("DELETE FROM journal WHERE seq <= ?1", params![seq])?;
        Ok(())
    }

    /// Highest journal sequence number ever assigned (sent or not).
    /// `path` was removed by the journal record just appended (its time), or by `machine`'s
    /// record at `ts_ms` (imported).
    pub fn add_tombstone(conn: &Connection, path: &str, ts_ms: Option<i64>, machine: Option<&str>) -> Result<()> {
        match ts_ms {
            Some(t) => conn.execute("INSERT OR REPLACE INTO tombstones(path, ts_ms, machine) VALUES(?1, ?2, ?3)", params![path, t, machine])?,
            None => conn.execute(
                "INSERT OR REPLACE INTO tombstones(path, ts_ms, machine) SELECT ?1, ts_ms, NULL FROM journal WHERE seq = last_insert_rowid()",
                params![path],
            )?,
        };
        Ok(())
    }

    /// Tombstones since `since_ms`.
    pub fn recent_tombstones(&self, since_ms: i64) -> Result<Vec<(String, i64, Option<String>)>> {
        let mut st = self.conn.prepare_cached("SELECT path, ts_ms, machine FROM tombstones WHERE ts_ms >= ?1 ORDER BY path")?;
        let r = st.query_map(params![since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    /// Forget tombstones older than `before_ms`.
    pub fn prune_tombstones(&self, before_ms: i64) -> Result<()> {
        self.conn.execute("DELETE FROM tombstones WHERE ts_ms < ?1", params![before_ms])?;
        Ok(())
    }

    pub fn journal_max_seq(&self) -> Result<i64> {
        Ok(self.conn.row("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='journal'), 0)", [], |r| r.get(0))?)
    }

    /// Bytes of file content owned by `uid` that are on the staging disk only (written, sealed,
    /// uploading, failed, or kept local by the ignore list), as the index records them.
    pub fn staged_bytes_of(&self, uid: u32) -> Result<u64> {
        Ok(self.conn.row(
            "SELECT COALESCE(sum(size),0) FROM inodes WHERE uid=?1 AND kind=?2 AND state IN ('dirty','local','sealed','uploading','failed')",
            params![uid, Kind::File as i64],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Records waiting to be uploaded.
    pub fn journal_len(&self) -> Result<u64> {
        Ok(self.conn.row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))? as u64)
    }
}
