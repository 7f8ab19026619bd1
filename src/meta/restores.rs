//! Restore requests of archived objects and the daily restore budget.

use super::*;

const RESTORE_COLS: &str =
    "ino,object_key,state,class,tier,days,size,requested_ms,expected_ms,expiry_ms,expiry_text,last_check_ms,next_check_ms,attempts,reason,auto";

fn restore_from_row(r: &Row<'_>) -> rusqlite::Result<Restore> {
    let st: String = r.get(2)?;
    Ok(Restore {
        ino: r.get::<_, i64>(0)? as u64,
        object_key: r.get(1)?,
        state: RState::parse(&st).unwrap_or(RState::Failed),
        class: r.get(3)?,
        tier: r.get(4)?,
        days: r.get(5)?,
        size: r.get::<_, i64>(6)? as u64,
        requested_ms: r.get(7)?,
        expected_ms: r.get(8)?,
        expiry_ms: r.get(9)?,
        expiry_text: r.get(10)?,
        last_check_ms: r.get(11)?,
        next_check_ms: r.get(12)?,
        attempts: r.get(13)?,
        reason: r.get(14)?,
        auto: r.get::<_, i64>(15)? != 0,
    })
}

impl Db {
    // ---- restores ----

    pub fn restore(&self, ino: u64) -> Result<Option<Restore>> {
        Ok(self.conn.row(&format!("SELECT {RESTORE_COLS} FROM restores WHERE ino=?1"), params![ino as i64], restore_from_row).optional()?)
    }

    pub fn restores(&self) -> Result<Vec<Restore>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {RESTORE_COLS} FROM restores ORDER BY requested_ms, ino"))?;
        let r = st.query_map([], restore_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    /// Inodes of folder `parent` with a restore whose status file is shown (not expired), above
    /// `after`: one indexed read per listing page (review N18: each page loaded every restore
    /// of the vault, and an inode per restore).
    pub fn restores_in(&self, parent: u64, after: u64) -> Result<Vec<u64>> {
        let mut st = self.conn.prepare_cached(
            "SELECT r.ino FROM inodes i JOIN restores r ON r.ino = i.ino WHERE i.parent = ?1 AND r.state != 'expired' AND r.ino > ?2 ORDER BY r.ino",
        )?;
        let r = st
            .query_map(params![parent as i64, after as i64], |r| r.get::<_, i64>(0))?
            .map(|x| x.map(|i| i as u64))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    pub fn put_restore(&self, r: &Restore) -> Result<()> {
        self.conn.exec(
            &format!("INSERT OR REPLACE INTO restores({RESTORE_COLS}) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)"),
            params![
                r.ino as i64,
                r.object_key,
                r.state.as_str(),
                r.class,
                r.tier,
                r.days,
                r.size as i64,
                r.requested_ms,
                r.expected_ms,
                r.expiry_ms,
                r.expiry_text,
                r.last_check_ms,
                r.next_check_ms,
                r.attempts,
                r.reason,
                r.auto as i64
            ],
        )?;
        Ok(())
    }

    pub fn delete_restore(conn: &Connection, ino: u64) -> Result<()> {
        conn.exec("DELETE FROM restores WHERE ino=?1", [ino as i64])?;
        Ok(())
    }

    /// Bytes of automatic restores requested since `since_ms` (the daily budget).
    pub fn auto_restore_bytes_since(&self, since_ms: i64) -> Result<u64> {
        Ok(self.conn.row(
            "SELECT coalesce(sum(size),0) FROM restores WHERE auto=1 AND requested_ms >= ?1 AND state IN ('requested','in progress','ready','expired')",
            params![since_ms],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}
