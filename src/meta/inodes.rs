//! Inodes and directory entries: lookups, listings, saving, paths.

use super::*;

const INODE_COLS: &str = "ino,parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms,object_key,storage_class,header,sha256,xattrs,owner";

fn inode_from_row(r: &Row<'_>) -> rusqlite::Result<(Inode, i64, String)> {
    Ok((
        Inode {
            ino: r.get::<_, i64>(0)? as u64,
            parent: r.get::<_, i64>(1)? as u64,
            name: r.get(2)?,
            kind: Kind::File,
            mode: r.get::<_, i64>(4)? as u32,
            uid: r.get::<_, i64>(5)? as u32,
            gid: r.get::<_, i64>(6)? as u32,
            size: r.get::<_, i64>(7)? as u64,
            atime_ns: r.get::<_, SqlNanos>(8)?.0,
            mtime_ns: r.get::<_, SqlNanos>(9)?.0,
            ctime_ns: r.get::<_, SqlNanos>(10)?.0,
            target: r.get(11)?,
            state: State::None,
            content_gen: r.get(13)?,
            dirty_ms: r.get(14)?,
            object_key: r.get(15)?,
            storage_class: r.get(16)?,
            header: r.get(17)?,
            sha256: r.get(18)?,
            xattrs: r.get(19)?,
            owner: r.get(20)?,
        },
        r.get(3)?,
        r.get(12)?,
    ))
}

/// `'dirty','sealed'`: the states as an SQL list (fixed names, never user input).
fn state_list(states: &[State]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",")
}

impl Db {
    pub(super) fn query_inode(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Option<Inode>> {
        let r = conn.row(sql, p, inode_from_row).optional()?;
        match r {
            None => Ok(None),
            Some((mut i, k, s)) => {
                i.kind = Kind::from_i64(k)?;
                i.state = State::parse(&s)?;
                Ok(Some(i))
            }
        }
    }

    pub fn get(&self, ino: u64) -> Result<Option<Inode>> {
        Self::query_inode(&self.conn, &format!("SELECT {INODE_COLS} FROM inodes WHERE ino=?1"), params![ino as i64])
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<Inode>> {
        Self::query_inode(
            &self.conn,
            &format!("SELECT {INODE_COLS} FROM inodes WHERE parent=?1 AND name=?2 AND ino != 1"),
            params![parent as i64, name],
        )
    }

    pub fn children(&self, parent: u64) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE parent=?1 AND ino != 1 ORDER BY ino", params![parent as i64])
    }

    /// Up to `limit` children with an inode number above `after`, in inode order.
    pub fn children_after(&self, parent: u64, after: u64, limit: usize) -> Result<Vec<Inode>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.select_inodes("WHERE parent=?1 AND ino > ?2 AND ino != 1 ORDER BY ino LIMIT ?3", params![parent as i64, after as i64, limit])
    }

    /// The regular file of folder `of.parent` just before `of`, in listing (inode) order or
    /// in name order.
    pub fn file_before(&self, of: &Inode, by_name: bool) -> Result<Option<u64>> {
        Ok(self.files_next_to(of, by_name, false, 1)?.first().map(|i| i.ino))
    }

    /// Up to `limit` regular files of folder `of.parent` after `of`, in listing (inode) order
    /// or in name order.
    pub fn files_after(&self, of: &Inode, by_name: bool, limit: usize) -> Result<Vec<Inode>> {
        self.files_next_to(of, by_name, true, limit)
    }

    /// Up to `limit` regular files of `of`'s folder after it (or before it, nearest first), in
    /// inode or name order.
    fn files_next_to(&self, of: &Inode, by_name: bool, after: bool, limit: usize) -> Result<Vec<Inode>> {
        let file = Kind::File as i64;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (col, key) =
            if by_name { ("name", rusqlite::types::Value::Text(of.name.clone())) } else { ("ino", rusqlite::types::Value::Integer(of.ino as i64)) };
        let (cmp, dir) = if after { (">", "") } else { ("<", " DESC") };
        let clause = format!("WHERE parent=?1 AND kind={file} AND {col} {cmp} ?2 AND ino != 1 ORDER BY {col}{dir} LIMIT ?3");
        self.select_inodes(&clause, params![of.parent as i64, key, limit])
    }

    pub fn has_children(&self, parent: u64) -> Result<bool> {
        Ok(self.conn.row("SELECT 1 FROM inodes WHERE parent=?1 AND ino != 1 LIMIT 1", params![parent as i64], |_| Ok(())).optional()?.is_some())
    }

    /// Every uploaded file, in inode order (`coldvault verify` compares them with the bucket).
    pub fn uploaded_files(&self) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE kind=1 AND state='uploaded' ORDER BY ino", [])
    }

    pub(crate) fn select_inodes(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<Inode>> {
        let mut out = Vec::new();
        self.for_each_inode(clause, p, |i| -> Result<()> {
            out.push(i);
            Ok(())
        })?;
        Ok(out)
    }

    /// `f` on every inode the clause selects, one row at a time (nothing collected).
    pub fn for_each_inode<E: From<MetaError>>(
        &self,
        clause: &str,
        p: impl rusqlite::Params,
        mut f: impl FnMut(Inode) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut st = self.conn.prepare_cached(&format!("SELECT {INODE_COLS} FROM inodes {clause}")).map_err(MetaError::from)?;
        let mut rows = st.query(p).map_err(MetaError::from)?;
        while let Some(r) = rows.next().map_err(MetaError::from)? {
            let (mut i, k, s) = inode_from_row(r).map_err(MetaError::from)?;
            i.kind = Kind::from_i64(k)?;
            i.state = State::parse(&s)?;
            f(i)?;
        }
        Ok(())
    }

    /// `f(path, inode)` on everything under the root, folders before what they hold, depth
    /// first. Memory: the current chain of folders, however many entries a folder has.
    pub fn walk<E: From<MetaError>>(&self, mut f: impl FnMut(&str, &Inode) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        let join = |dir: &str, name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        let not_dirs = format!("WHERE parent=?1 AND kind != {} AND ino != 1", Kind::Dir as i64);
        let next_dir = format!("WHERE parent=?1 AND kind = {} AND ino > ?2 AND ino != 1 ORDER BY ino LIMIT 1", Kind::Dir as i64);
        self.for_each_inode(&not_dirs, params![ROOT as i64], |i| f(&i.name, &i))?;
        // (folder, its path, the last subfolder entered)
        let mut stack: Vec<(u64, String, u64)> = vec![(ROOT, String::new(), 0)];
        while let Some((dir, path, after)) = stack.last_mut() {
            let Some(d) = self.select_inodes(&next_dir, params![*dir as i64, *after as i64])?.pop() else {
                stack.pop();
                continue;
            };
            *after = d.ino;
            let p = join(path, &d.name);
            f(&p, &d)?;
            self.for_each_inode(&not_dirs, params![d.ino as i64], |i| f(&join(&p, &i.name), &i))?;
            stack.push((d.ino, p, 0));
        }
        Ok(())
    }

    /// Insert a new inode; returns it with its fresh number.
    pub fn insert(&mut self, i: &Inode) -> Result<Inode> {
        self.conn.exec(
            "INSERT INTO inodes(parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
            params![i.parent as i64, i.name, i.kind as i64, i.mode, i.uid, i.gid, i.size as i64, SqlNanos(i.atime_ns), SqlNanos(i.mtime_ns), SqlNanos(i.ctime_ns), i.target, i.state.as_str(), i.content_gen, i.dirty_ms],
        )?;
        let mut n = i.clone();
        n.ino = self.conn.last_insert_rowid() as u64;
        Ok(n)
    }

    /// Write every mutable column of `i` back. An UPDATE rewrites the entries of every index
    /// over a column it assigns, changed or not, and each index page it touches is one more
    /// page in the WAL: so the columns no index covers are written by one statement, and each
    /// indexed column (name, parent, state and dirty time, object key) only when its value changed (a chmod
    /// writes 2 pages instead of 5).
    pub fn save(conn: &Connection, i: &Inode) -> Result<()> {
        // Its statements commit together: outside a transaction each would commit on its own
        // (a crash between two would leave half a row, and each commit writes the page again).
        if conn.is_autocommit() {
            let tx = conn.unchecked_transaction()?;
            Self::save_columns(&tx, i)?;
            tx.commit()?;
            return Ok(());
        }
        Self::save_columns(conn, i)
    }

    fn save_columns(conn: &Connection, i: &Inode) -> Result<()> {
        let ino = i.ino as i64;
        let n = conn.exec(
            "UPDATE inodes SET mode=?2,uid=?3,gid=?4,size=?5,atime_ns=?6,mtime_ns=?7,ctime_ns=?8,target=?9,content_gen=?10,storage_class=?11,header=?12,sha256=?13,xattrs=?14,owner=?15 WHERE ino=?1",
            params![ino, i.mode, i.uid, i.gid, i.size as i64, SqlNanos(i.atime_ns), SqlNanos(i.mtime_ns), SqlNanos(i.ctime_ns), i.target, i.content_gen, i.storage_class, i.header, i.sha256, i.xattrs, i.owner],
        )?;
        if n == 0 {
            return Ok(());
        }
        // (parent, name) is in one unique index, parent in two more: a rename within a folder
        // touches only the first. A move to another folder sets both in one statement: set one
        // at a time, the row would pass through (old folder, new name), which another entry
        // may hold (`mv inbox/a.jpg 2024/b.jpg` beside `inbox/b.jpg`).
        conn.exec("UPDATE inodes SET name=?2 WHERE ino=?1 AND parent IS ?3 AND name IS NOT ?2", params![ino, i.name, i.parent as i64])?;
        conn.exec("UPDATE inodes SET parent=?3,name=?2 WHERE ino=?1 AND parent IS NOT ?3", params![ino, i.name, i.parent as i64])?;
        conn.exec(
            "UPDATE inodes SET state=?2,dirty_ms=?3 WHERE ino=?1 AND (state IS NOT ?2 OR dirty_ms IS NOT ?3)",
            params![ino, i.state.as_str(), i.dirty_ms],
        )?;
        conn.exec("UPDATE inodes SET object_key=?2 WHERE ino=?1 AND object_key IS NOT ?2", params![ino, i.object_key])?;
        Ok(())
    }

    pub fn update(&self, i: &Inode) -> Result<()> {
        Self::save(&self.conn, i)
    }

    pub fn delete_inode(conn: &Connection, ino: u64) -> Result<()> {
        conn.exec("DELETE FROM inodes WHERE ino=?1", params![ino as i64])?;
        conn.exec("DELETE FROM placed WHERE ino=?1", params![ino as i64])?;
        Ok(())
    }

    /// File `ino` was put where it is at `ms` (`placed`).
    pub fn set_placed(conn: &Connection, ino: u64, ms: i64) -> Result<()> {
        conn.exec("INSERT OR REPLACE INTO placed(ino, ms) VALUES(?1, ?2)", params![ino as i64, ms])?;
        Ok(())
    }

    /// When file `ino` was put where it is, if known.
    pub fn placed_ms(conn: &Connection, ino: u64) -> Result<Option<i64>> {
        Ok(conn.row("SELECT ms FROM placed WHERE ino=?1", params![ino as i64], |r| r.get(0)).optional()?)
    }

    /// Vault-relative path ("a/b/c.jpg") of an inode.
    pub fn path_of(&self, ino: u64) -> Result<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0;
        while cur != ROOT {
            let (p, n): (i64, String) = self
                .conn
                .row("SELECT parent,name FROM inodes WHERE ino=?1", params![cur as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| MetaError::Corrupt(format!("dangling inode {cur}")))?;
            parts.push(n);
            cur = p as u64;
            guard += 1;
            if guard > 4096 {
                return Err(MetaError::Corrupt("directory cycle".into()));
            }
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// The time of the latest change of any dirty file.
    pub fn newest_dirty_ms(&self) -> Result<Option<i64>> {
        Ok(self.conn.row("SELECT max(dirty_ms) FROM inodes WHERE state='dirty'", [], |r| r.get(0))?)
    }

    /// The sealer's candidates: one page of the dirty files (never orphans: unlinked files
    /// still open have parent 0) whose last change is at or before
    /// `cutoff_ms`, oldest first, after `after` = (dirty_ms, ino) of the previous page's last:
    /// (ino, content_gen, dirty_ms) each.
    pub fn settled_dirty(&self, cutoff_ms: i64, after: (i64, u64), limit: usize) -> Result<Vec<(u64, i64, i64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT ino, content_gen, dirty_ms FROM inodes WHERE state='dirty' AND dirty_ms <= ?1 AND (dirty_ms, ino) > (?2, ?3) AND parent != 0 ORDER BY dirty_ms, ino LIMIT ?4",
        )?;
        let rows =
            st.query_map(params![cutoff_ms, after.0, after.1 as i64, limit as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Unlinked files kept while open (parent 0).
    /// The version headers the index's files have (their read-cache copies are named after them).
    pub fn file_headers(&self) -> Result<Vec<Vec<u8>>> {
        let mut st = self.conn.prepare("SELECT header FROM inodes WHERE header IS NOT NULL")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn orphans(&self) -> Result<Vec<Inode>> {
        self.select_inodes("WHERE parent = 0", [])
    }

    /// Inode numbers of the files in these states (one narrow column: there may be millions).
    pub fn inos_in_state(&self, states: &[State]) -> Result<Vec<u64>> {
        let mut st = self.conn.prepare_cached(&format!("SELECT ino FROM inodes WHERE state IN ({})", state_list(states)))?;
        let r = st.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(r)
    }

    /// The content state of one inode.
    pub fn state(&self, ino: u64) -> Result<Option<State>> {
        let s: Option<String> = self.conn.row("SELECT state FROM inodes WHERE ino=?1", params![ino as i64], |r| r.get(0)).optional()?;
        s.map(|s| State::parse(&s)).transpose()
    }

    pub fn files_in_state(&self, states: &[State]) -> Result<Vec<Inode>> {
        self.select_inodes(&format!("WHERE state IN ({})", state_list(states)), [])
    }

    /// Files (ino, size, class) below `dir` (recursively) — for `coldvault restore DIR`.
    pub fn files_below(&self, dir: u64) -> Result<Vec<Inode>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for c in self.children(d)? {
                match c.kind {
                    Kind::Dir => stack.push(c.ino),
                    Kind::File => out.push(c),
                    Kind::Symlink | Kind::Special => {}
                }
            }
        }
        Ok(out)
    }

    pub fn set_storage_class_by_key(&self, key: &str, class: &StorageClass) -> Result<usize> {
        Ok(self.conn.exec(
            "UPDATE inodes SET storage_class=?2 WHERE object_key=?1 AND state='uploaded' AND coalesce(storage_class,'') != ?2
             AND NOT (?2 = 'INTELLIGENT_TIERING' AND coalesce(storage_class,'') LIKE 'INTELLIGENT_TIERING/%')",
            params![key, class],
        )?)
    }

    /// Subdirectories of `ino` (a directory's link count is two more).
    /// The length in bytes of the longest path below folder `dir`, relative to it (0: empty).
    pub fn deepest_below(&self, dir: u64) -> Result<usize> {
        Ok(self.conn.row(
            "WITH RECURSIVE t(ino, len) AS (
                 SELECT ino, length(CAST(name AS BLOB)) FROM inodes WHERE parent=?1
                 UNION ALL SELECT i.ino, t.len + 1 + length(CAST(i.name AS BLOB)) FROM inodes i JOIN t ON i.parent = t.ino)
             SELECT coalesce(max(len), 0) FROM t",
            params![dir as i64],
            |r| r.get::<_, i64>(0),
        )? as usize)
    }

    pub fn subdir_count(&self, ino: u64) -> Result<u64> {
        Ok(self.conn.row("SELECT count(*) FROM inodes WHERE parent=?1 AND kind=2 AND ino != 1", [ino as i64], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Inodes besides the root.
    pub fn inode_count(&self) -> Result<u64> {
        Ok(self.conn.row("SELECT count(*) FROM inodes WHERE ino != 1", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Insert an inode with every column (content already in the bucket); returns its number.
    pub fn insert_full(conn: &Connection, i: &Inode) -> Result<u64> {
        conn.exec(
            "INSERT INTO inodes(parent,name,kind,mode,uid,gid,size,atime_ns,mtime_ns,ctime_ns,target,state,content_gen,dirty_ms,object_key,storage_class,header,sha256,xattrs,owner)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
            params![
                i.parent as i64, i.name, i.kind as i64, i.mode, i.uid, i.gid, i.size as i64, SqlNanos(i.atime_ns), SqlNanos(i.mtime_ns), SqlNanos(i.ctime_ns), i.target, i.state.as_str(),
                i.content_gen, i.dirty_ms, i.object_key, i.storage_class, i.header, i.sha256, i.xattrs, i.owner
            ],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// Files and bytes per content state, for `status`.
    pub fn counts(&self) -> Result<Counts> {
        let q = |sql: &str| -> Result<(u64, u64)> {
            Ok(self.conn.row(sql, [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64)))?)
        };
        let (pending_files, pending_bytes) = q("SELECT count(*), sum(size) FROM inodes WHERE state IN ('dirty','sealed','uploading')")?;
        let (uploaded_files, uploaded_bytes) = q("SELECT count(*), sum(size) FROM inodes WHERE state='uploaded'")?;
        let (failed_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='failed'")?;
        let (local_only_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='local'")?;
        let (dirty_files, _) = q("SELECT count(*), 0 FROM inodes WHERE state='dirty'")?;
        let (queued_uploads, _) = q("SELECT count(*), 0 FROM uploads WHERE state IN ('queued','uploading')")?;
        Ok(Counts { pending_files, pending_bytes, uploaded_files, uploaded_bytes, failed_files, local_only_files, dirty_files, queued_uploads })
    }
}
