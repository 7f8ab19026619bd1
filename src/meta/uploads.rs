//! The upload queue, multipart parts, file versions and dead object keys.

use super::*;

const UPLOAD_COLS: &str = "id,ino,content_gen,object_key,path,size,enc_size,storage_class,state,attempts,next_try_ms,last_error,mp_upload_id,metadata,header,sha256,tagging,dk";

fn upload_from_row(r: &Row<'_>) -> rusqlite::Result<Upload> {
    Ok(Upload {
        id: r.get(0)?,
        ino: r.get::<_, i64>(1)? as u64,
        content_gen: r.get(2)?,
        object_key: r.get(3)?,
        path: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        enc_size: r.get::<_, i64>(6)? as u64,
        storage_class: r.get(7)?,
        state: r.get(8)?,
        attempts: r.get(9)?,
        next_try_ms: r.get(10)?,
        last_error: r.get(11)?,
        mp_upload_id: r.get(12)?,
        metadata: r.get(13)?,
        header: r.get(14)?,
        sha256: r.get(15)?,
        tagging: r.get(16)?,
        dk: r.get::<_, Option<Vec<u8>>>(17)?.map(SecretBytes),
    })
}

impl Db {
    // ---- upload queue ----

    pub fn insert_upload(conn: &Connection, u: &Upload) -> Result<i64> {
        conn.exec(
            "INSERT INTO uploads(ino,content_gen,object_key,path,size,enc_size,storage_class,state,attempts,next_try_ms,metadata,header,sha256,tagging,dk) VALUES(?1,?2,?3,?4,?5,?6,?7,'queued',0,0,?8,?9,?10,?11,?12)",
            params![u.ino as i64, u.content_gen, u.object_key, u.path, u.size as i64, u.enc_size as i64, u.storage_class, u.metadata, u.header, u.sha256, u.tagging, u.dk.as_ref().map(|k| &k.0[..])],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn upload(&self, id: i64) -> Result<Option<Upload>> {
        Ok(self.conn.row(&format!("SELECT {UPLOAD_COLS} FROM uploads WHERE id=?1"), params![id], upload_from_row).optional()?)
    }

    /// The first `limit` uploads that failed or were retried after an error: (path, state,
    /// attempts, last error). Only those columns: the queue can hold a million rows.
    pub fn upload_failures(&self, limit: usize) -> Result<Vec<(String, String, i64, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, state, attempts, coalesce(last_error,'') FROM uploads WHERE state='failed' OR last_error IS NOT NULL ORDER BY id LIMIT ?1",
        )?;
        let r = st.query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn uploads(&self) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {UPLOAD_COLS} FROM uploads ORDER BY id"))?;
        let r = st.query_map([], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn uploads_for_ino(&self, ino: u64) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {UPLOAD_COLS} FROM uploads WHERE ino=?1"))?;
        let r = st.query_map(params![ino as i64], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    /// Queued uploads due at `now_ms`, oldest first, excluding ids in `busy`.
    pub fn due_uploads(&self, now_ms: i64, limit: usize) -> Result<Vec<Upload>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {UPLOAD_COLS} FROM uploads WHERE state IN ('queued','uploading') AND next_try_ms <= ?1 ORDER BY next_try_ms, id LIMIT ?2"
        ))?;
        let r = st.query_map(params![now_ms, limit as i64], upload_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn set_upload_state(&self, id: i64, state: UploadState, attempts: i64, next_try_ms: i64, err: Option<&str>) -> Result<()> {
        self.conn.exec(
            "UPDATE uploads SET state=?2, attempts=?3, next_try_ms=?4, last_error=?5 WHERE id=?1",
            params![id, state, attempts, next_try_ms, err],
        )?;
        Ok(())
    }

    pub fn set_mp_upload_id(&self, id: i64, mp: Option<&str>) -> Result<()> {
        self.conn.exec("UPDATE uploads SET mp_upload_id=?2 WHERE id=?1", params![id, mp])?;
        if mp.is_none() {
            self.conn.exec("DELETE FROM parts WHERE upload_id=?1", params![id])?;
        }
        Ok(())
    }

    /// Record a durable file version.
    pub fn add_version(conn: &Connection, v: &Version, uploaded_ms: i64) -> Result<()> {
        conn.exec(
            "INSERT OR REPLACE INTO versions(object_key,ino,size,mtime_ns,mode,uid,gid,storage_class,sha256,header,uploaded_ms)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            params![
                v.object_key,
                v.ino as i64,
                v.size as i64,
                SqlNanos(v.mtime_ns),
                v.mode,
                v.uid,
                v.gid,
                v.storage_class,
                v.sha256,
                v.header,
                uploaded_ms
            ],
        )?;
        Ok(())
    }

    /// When the version at `key` was recorded as uploaded (ms), if it is one of the index's.
    pub fn version_uploaded_ms(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.conn.row("SELECT uploaded_ms FROM versions WHERE object_key=?1", params![key], |r| r.get(0)).optional()?)
    }

    /// The newest durable version of inode `ino`.
    pub fn latest_version(&self, ino: u64) -> Result<Option<Version>> {
        Ok(self
            .conn
            .row(
                "SELECT object_key,size,mtime_ns,mode,uid,gid,storage_class,sha256,header FROM versions WHERE ino=?1 ORDER BY uploaded_ms DESC, rowid DESC LIMIT 1",
                params![ino as i64],
                |r| {
                    Ok(Version {
                        object_key: r.get(0)?,
                        ino,
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get::<_, SqlNanos>(2)?.0,
                        mode: r.get(3)?,
                        uid: r.get(4)?,
                        gid: r.get(5)?,
                        storage_class: r.get(6)?,
                        sha256: r.get(7)?,
                        header: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_upload_key(&self, id: i64, key: &str) -> Result<()> {
        self.conn.exec("UPDATE uploads SET object_key=?2 WHERE id=?1", params![id, key])?;
        Ok(())
    }

    pub fn add_part(&self, id: i64, part_no: i32, etag: &str) -> Result<()> {
        self.conn.exec("INSERT OR REPLACE INTO parts(upload_id,part_no,etag) VALUES(?1,?2,?3)", params![id, part_no, etag])?;
        Ok(())
    }

    pub fn parts(&self, id: i64) -> Result<Vec<(i32, String)>> {
        let mut st = self.conn.prepare_cached("SELECT part_no, etag FROM parts WHERE upload_id=?1 ORDER BY part_no")?;
        let r = st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn delete_upload(conn: &Connection, id: i64) -> Result<()> {
        conn.exec("DELETE FROM parts WHERE upload_id=?1", params![id])?;
        conn.exec("DELETE FROM uploads WHERE id=?1", params![id])?;
        Ok(())
    }

    /// Drop a queued upload whose version is no longer wanted (rewritten, deleted). Its PUT may
    /// still be in flight and land, so its key is recorded as dead: a rebuild must never adopt
    /// that object as a live file.
    pub fn cancel_upload(conn: &Connection, id: i64) -> Result<()> {
        conn.exec("INSERT OR IGNORE INTO dead_keys(key) SELECT object_key FROM uploads WHERE id=?1", params![id])?;
        Self::delete_upload(conn, id)
    }

    /// Object keys no live file uses any more (deleted or replaced): a rebuild must not
    /// resurrect them from the bucket listing. Snapshots carry this list.
    pub fn add_dead_key(conn: &Connection, key: &str) -> Result<()> {
        conn.exec("INSERT OR IGNORE INTO dead_keys(key) VALUES(?1)", params![key])?;
        Ok(())
    }

    /// The key of the version a file's path last showed in the bucket, as this index knows it:
    /// its last uploaded version, else the newest it took over (a file saved over another),
    /// else `""` (what journal records say a change was made over: `Entry::Upload::saw`).
    pub fn seen_key(conn: &Connection, i: &crate::meta::Inode) -> Result<String> {
        if i.kind != crate::meta::Kind::File {
            return Ok(String::new());
        }
        if let Some(k) = &i.object_key {
            return Ok(k.clone());
        }
        let k: Option<String> = conn
            .query_row("SELECT object_key FROM versions WHERE ino=?1 ORDER BY uploaded_ms DESC, rowid DESC LIMIT 1", params![i.ino as i64], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(k.unwrap_or_default())
    }

    /// Every version inode `ino` has had, but `except`, is no live file's any more (the file
    /// was deleted, replaced, or a newer version of it reached the bucket).
    pub fn kill_versions_of(conn: &Connection, ino: u64, except: Option<&str>) -> Result<()> {
        conn.exec(
            "INSERT OR IGNORE INTO dead_keys(key) SELECT object_key FROM versions WHERE ino=?1 AND object_key IS NOT ?2",
            params![ino as i64, except],
        )?;
        Ok(())
    }

    /// The versions of inode `from` become those of `to` (a file saved over another by a
    /// rename: the replaced file's history is the new one's until its own version arrives).
    pub fn move_versions(conn: &Connection, from: u64, to: u64) -> Result<()> {
        conn.exec("UPDATE versions SET ino=?2 WHERE ino=?1", params![from as i64, to as i64])?;
        Ok(())
    }

    pub fn dead_keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_dead_key(|k| {
            out.push(k.to_string());
            true
        })?;
        Ok(out)
    }

    /// `f` on every dead key in order, one at a time, until it returns false.
    pub fn each_dead_key(&self, mut f: impl FnMut(&str) -> bool) -> Result<()> {
        let mut st = self.conn.prepare_cached("SELECT key FROM dead_keys ORDER BY key")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if !f(r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?) {
                break;
            }
        }
        Ok(())
    }

    /// Multipart parts recorded, over all uploads.
    pub fn parts_count(&self) -> Result<u64> {
        Ok(self.conn.row("SELECT count(*) FROM parts", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The system clock went back by `back_ms` (review L8; 0: by an unknown amount, at start):
    /// times this index set before, now in the future, move back with it (or to `now_ms`), so
    /// that a step back of an hour delays no seal (dirty files settle from `dirty_ms`) and no
    /// upload retry (`next_try_ms`, never planned more than `max_wait_ms` ahead) by an hour.
    /// Returns how many rows changed.
    pub fn clamp_future_times(&self, now_ms: i64, back_ms: i64, max_wait_ms: i64) -> Result<usize> {
        let a = self.conn.exec(
            "UPDATE inodes SET dirty_ms = CASE WHEN ?2 > 0 THEN MIN(dirty_ms - ?2, ?1) ELSE ?1 END WHERE state='dirty' AND dirty_ms > ?1",
            params![now_ms, back_ms],
        )?;
        let b = self.conn.exec(
            "UPDATE uploads SET next_try_ms = CASE WHEN ?2 > 0 THEN MIN(next_try_ms - ?2, ?1 + ?3) ELSE ?1 END
             WHERE state IN ('queued','uploading') AND next_try_ms > ?1 + ?3",
            params![now_ms, back_ms, max_wait_ms],
        )?;
        Ok(a + b)
    }

    /// The multipart upload ids queued uploads are using (they resume them).
    pub fn multipart_ids(&self) -> Result<std::collections::HashSet<String>> {
        let mut st = self.conn.prepare_cached("SELECT mp_upload_id FROM uploads WHERE mp_upload_id IS NOT NULL")?;
        let r = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(r)
    }

    /// Queue again every upload parked as failed; returns how many.
    pub fn requeue_failed(&self) -> Result<usize> {
        let n = self.conn.exec("UPDATE uploads SET state='queued', next_try_ms=0 WHERE state='failed'", [])?;
        self.conn.exec("UPDATE inodes SET state='sealed' WHERE state='failed'", [])?;
        Ok(n)
    }
}
