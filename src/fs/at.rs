//! The vault as it was at a time, inside the mount: `.coldvault/at/<TIME>/…`, read-only.
//!
//! Looking up `.coldvault/at/2026-11-20T10:00` (or `2026-11-20T10-00`, the form a Windows or
//! macOS client can type: `:` is not allowed in their names) replays every machine's journal
//! from the bucket up to that time (`remote_meta::history`, what `coldvault get --at` reads)
//! and shows the tree it made: a Finder or Explorer user on the share can drag an older version
//! out. Its files read their version's object; one in an archive tier answers EAGAIN and has
//! one restore requested, as any archived file does (`check_restore`, keyed by the view's
//! inode number), with `NAME.restore-status` beside it.
//!
//! A view is made once per name and kept for the mount's life (at most `MAX_VIEWS`, and at
//! most `MAX_VIEW_BYTES` of memory for all of them: the oldest go then, and their inode
//! numbers answer ENOENT; a file of theirs still open reads on, and numbers are never reused). Its inode numbers are
//! `AT_BASE + (view << 32) + node`: far above real inodes and below `STATUS_BIT`, so a view
//! file's status file is its number with `STATUS_BIT`, as for real files.

use super::{Fs, FsError, Result, CTL_DIR, STATUS_BIT};
use crate::clock::Nanos;
use crate::meta::{Inode, Kind, State};
use crate::remote_meta::{Node, NodeKind, Tree};
use crate::store::ObjectStore;
use crate::vault::StorageClass;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `.coldvault/at`.
pub const CTL_AT: u64 = CTL_DIR + 2;
/// The first inode number of the views.
pub const AT_BASE: u64 = CTL_DIR + (1 << 52);
const VIEW_SHIFT: u32 = 32;
/// Views kept at once…
pub(super) const MAX_VIEWS: usize = 16;
/// …and the memory they may hold together (`View::bytes`); the view made last is kept
/// whatever its size.
const MAX_VIEW_BYTES: usize = 512 << 20;

/// Whether `ino` is a node of a view (a status file's base included).
pub fn is_view_ino(ino: u64) -> bool {
    (AT_BASE..STATUS_BIT).contains(&(ino & !STATUS_BIT))
}

fn split(ino: u64) -> (usize, usize) {
    let rel = (ino & !STATUS_BIT) - AT_BASE;
    ((rel >> VIEW_SHIFT) as usize, (rel & ((1 << VIEW_SHIFT) - 1)) as usize)
}

fn ino_of(view: usize, node: usize) -> u64 {
    AT_BASE + ((view as u64) << VIEW_SHIFT) + node as u64
}

/// A tree as it was at a time, numbered: node 0 is its root, every folder's children follow
/// it in name order.
pub(super) struct View {
    name: String,
    at_ms: i64,
    nodes: Vec<VNode>,
    /// About how much memory it holds.
    bytes: usize,
}

struct VNode {
    /// Its parent's index (the root's: 0).
    parent: usize,
    name: String,
    node: Node,
    /// Indexes of its children, in name order.
    children: Vec<usize>,
}

impl View {
    fn new(name: &str, at_ms: i64, tree: &Tree) -> View {
        let mut nodes = vec![VNode { parent: 0, name: name.to_string(), node: Node::dir(0o755, 0, 0, 0), children: Vec::new() }];
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        // In path order, a folder comes before what it holds (the tree makes every parent).
        for (path, n) in &tree.nodes {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, name)) => match index.get(p) {
                    Some(&i) => (i, name),
                    None => continue,
                },
                None => (0, path.as_str()),
            };
            let i = nodes.len();
            // A view shows no extended attributes: their text is not kept.
            let node = Node { xattrs: None, ..n.clone() };
            nodes.push(VNode { parent, name: name.to_string(), node, children: Vec::new() });
            index.insert(path, i);
        }
        for i in 1..nodes.len() {
            let p = nodes[i].parent;
            nodes[p].children.push(i);
        }
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let bytes = nodes
            .iter()
            .map(|v| {
                let n = &v.node;
                std::mem::size_of::<VNode>()
                    + v.name.len()
                    + v.children.len() * std::mem::size_of::<usize>()
                    + text(&n.key)
                    + text(&n.class)
                    + text(&n.sha256)
                    + text(&n.target)
                    + text(&n.owner)
                    + n.header.as_ref().map_or(0, Vec::len)
            })
            .sum();
        // Inode order is readdir's order: children by index, which is path order.
        View { name: name.to_string(), at_ms, nodes, bytes }
    }

    /// Node `idx`'s path in the vault.
    fn path(&self, mut idx: usize) -> Option<String> {
        let mut names = Vec::new();
        while idx != 0 {
            let v = self.nodes.get(idx)?;
            names.push(v.name.as_str());
            idx = v.parent;
        }
        names.reverse();
        Some(names.join("/"))
    }

    /// Node `idx` as an inode of view `view` (read-only: no write bits).
    fn inode(&self, view: usize, idx: usize) -> Option<Inode> {
        let v = self.nodes.get(idx)?;
        let n = &v.node;
        let kind = match n.kind {
            NodeKind::File => Kind::File,
            NodeKind::Dir => Kind::Dir,
            NodeKind::Symlink => Kind::Symlink,
            NodeKind::Special => Kind::Special,
        };
        let t: Nanos = if idx == 0 { self.at_ms as Nanos * 1_000_000 } else { n.mtime_ns };
        Some(Inode {
            ino: ino_of(view, idx),
            parent: if idx == 0 { CTL_AT } else { ino_of(view, v.parent) },
            name: v.name.clone(),
            kind,
            mode: if idx == 0 { 0o555 } else { n.mode & !0o222 },
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            atime_ns: t,
            mtime_ns: t,
            ctime_ns: t,
            target: n.target.clone(),
            state: if kind == Kind::File && n.key.is_some() { State::Uploaded } else { State::None },
            content_gen: 0,
            dirty_ms: 0,
            object_key: n.key.clone(),
            storage_class: n.class.as_deref().map(StorageClass::parse),
            header: n.header.clone(),
            sha256: n.sha256.clone(),
            xattrs: None,
            owner: n.owner.clone(),
        })
    }
}

/// The views of this mount, by view number (`None`: dropped).
#[derive(Default)]
pub(super) struct Views(Mutex<Vec<Option<Arc<View>>>>);

impl Views {
    fn get(&self, view: usize) -> Option<Arc<View>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(view).cloned().flatten()
    }

    fn named(&self, name: &str) -> Option<(usize, Arc<View>)> {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().enumerate().find_map(|(i, x)| x.as_ref().filter(|x| x.name == name).map(|x| (i, x.clone())))
    }

    /// Keep `view` (at most `max_views` and `max_bytes` with those kept, dropping the oldest).
    fn add(&self, view: View, max_views: usize, max_bytes: usize) -> (usize, Arc<View>) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Made twice at once (two lookups of a new name): the first stays.
        if let Some((i, x)) = v.iter().enumerate().find_map(|(i, x)| x.as_ref().filter(|x| x.name == view.name).map(|x| (i, x.clone()))) {
            return (i, x);
        }
        let mut live: std::collections::VecDeque<usize> = v.iter().enumerate().filter(|(_, x)| x.is_some()).map(|(i, _)| i).collect();
        let mut bytes: usize = live.iter().filter_map(|&i| v[i].as_ref()).map(|x| x.bytes).sum::<usize>() + view.bytes;
        while live.len() >= max_views || (bytes > max_bytes && !live.is_empty()) {
            let Some(i) = live.pop_front() else { break };
            bytes -= v[i].take().map_or(0, |x| x.bytes);
        }
        let view = Arc::new(view);
        v.push(Some(view.clone()));
        (v.len() - 1, view)
    }

    fn all(&self) -> Vec<(usize, Arc<View>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().enumerate().filter_map(|(i, x)| x.clone().map(|x| (i, x))).collect()
    }
}

/// A view's name as a time (ms): `2026-11-20T10:00`, `2026-11-20T10-00`, `2026-11-20`, with
/// seconds or without (UTC).
pub fn parse_view_name(name: &str) -> Option<i64> {
    let fixed = match name.split_once('T') {
        Some((d, t)) => format!("{d}T{}", t.replace('-', ":")),
        None => name.to_string(),
    };
    crate::clock::parse_time(&fixed)
}

impl Fs {
    /// `.coldvault/at/NAME`: the view of that name, made from the bucket if it is new (a replay
    /// of every journal: call it off the FUSE dispatch thread).
    pub fn at_view(&self, name: &str) -> Result<Inode> {
        if let Some((i, v)) = self.views.named(name) {
            return v.inode(i, 0).ok_or(FsError::NotFound);
        }
        let at = parse_view_name(name).ok_or(FsError::NotFound)?;
        if self.keys.secret.is_none() {
            return Err(FsError::WriteOnly);
        }
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let h = self.rt.block_on(crate::remote_meta::history(&store, &self.keys, &self.cfg.prefix, &|_, _, _| {}, Some(at), &[])).map_err(|e| {
            tracing::warn!(view = %name, error = %e, "the vault's history could not be read");
            FsError::Rebuild(e)
        })?;
        h.tree.check_signed(self.cfg.vault_signed, &self.cfg.prefix).map_err(FsError::Rebuild)?;
        for r in &h.tree.refused {
            tracing::warn!(view = %name, "{r}");
        }
        tracing::info!(view = %name, at = %crate::clock::fmt_ms(at), entries = h.tree.nodes.len(), "the vault as it was, shown read-only");
        let (i, v) = self.views.add(View::new(name, at, &h.tree), MAX_VIEWS, MAX_VIEW_BYTES);
        v.inode(i, 0).ok_or(FsError::NotFound)
    }

    /// A view's node, as an inode.
    pub(super) fn view_inode(&self, ino: u64) -> Result<Inode> {
        let (view, idx) = split(ino);
        self.views.get(view).and_then(|v| v.inode(view, idx)).ok_or(FsError::NotFound)
    }

    /// `name` in the view folder `parent`.
    pub(super) fn view_lookup(&self, parent: u64, name: &str) -> Result<Inode> {
        let (view, idx) = split(parent);
        let v = self.views.get(view).ok_or(FsError::NotFound)?;
        let d = v.nodes.get(idx).ok_or(FsError::NotFound)?;
        if d.node.kind != NodeKind::Dir && idx != 0 {
            return Err(FsError::NotDir);
        }
        if let Some(&c) = d.children.iter().find(|&&c| v.nodes[c].name == name) {
            return v.inode(view, c).ok_or(FsError::NotFound);
        }
        // NAME.restore-status beside a file with a visible restore.
        let base = name.strip_suffix(self.cfg.restore.suffix.as_str()).ok_or(FsError::NotFound)?;
        let &c = d.children.iter().find(|&&c| v.nodes[c].name == base).ok_or(FsError::NotFound)?;
        self.getattr(ino_of(view, c) | STATUS_BIT)
    }

    /// A page of a view folder (`after`: the last inode number the kernel has), then the
    /// status files of its files being restored.
    pub(super) fn view_readdir(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<Inode>> {
        let (view, idx) = split(ino);
        let v = self.views.get(view).ok_or(FsError::NotFound)?;
        let d = v.nodes.get(idx).ok_or(FsError::NotFound)?;
        if d.node.kind != NodeKind::Dir && idx != 0 {
            return Err(FsError::NotDir);
        }
        let mut out: Vec<Inode> =
            d.children.iter().map(|&c| ino_of(view, c)).filter(|&i| i > after).take(limit).filter_map(|i| v.inode(view, split(i).1)).collect();
        if out.len() < limit {
            let c = self.core();
            for &k in &d.children {
                let s = ino_of(view, k) | STATUS_BIT;
                if s > after && out.len() < limit && c.db.restore(ino_of(view, k))?.is_some_and(|r| r.state.visible()) {
                    if let Ok((i, _)) = self.virtual_inode(&c, s) {
                        out.push(i);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `.coldvault/at`: the views made so far, by name.
    pub(super) fn views_listing(&self, after: u64) -> Vec<Inode> {
        self.views.all().into_iter().filter_map(|(i, v)| v.inode(i, 0)).filter(|i| i.ino > after).collect()
    }

    /// The vault path of a view's node, as its status file names it (`@TIME/path`).
    pub(super) fn view_path(&self, ino: u64) -> Option<String> {
        let (view, idx) = split(ino);
        let v = self.views.get(view)?;
        Some(format!("{}/{}/{}", super::CTL_NAME, format_args!("at/{}", v.name), v.path(idx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_names_are_read_in_the_forms_a_share_can_type() {
        let t = crate::clock::parse_time("2026-11-20T10:00").unwrap();
        assert_eq!(parse_view_name("2026-11-20T10:00"), Some(t));
        assert_eq!(parse_view_name("2026-11-20T10-00"), Some(t));
        assert_eq!(parse_view_name("2026-11-20T10-00-30"), Some(t + 30_000));
        assert_eq!(parse_view_name("2026-11-20"), crate::clock::parse_time("2026-11-20"));
        for bad in ["yesterday", "2026-13-01", "", "IMG_0001.jpg"] {
            assert_eq!(parse_view_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn view_inode_numbers_stay_between_the_control_folder_and_status_files() {
        let top = ino_of((1 << 20) - 1, (1 << 32) - 1);
        assert!(top < STATUS_BIT && AT_BASE > CTL_AT && is_view_ino(top) && is_view_ino(top | STATUS_BIT));
        assert!(!is_view_ino(CTL_AT) && !is_view_ino(5) && !is_view_ino(5 | STATUS_BIT));
        assert_eq!(split(ino_of(7, 42) | STATUS_BIT), (7, 42));
    }

    fn tree(files: usize) -> Tree {
        let mut t = Tree::default();
        t.nodes.insert("photos".into(), Node::dir(0o755, 0, 0, 0));
        for i in 0..files {
            let mut n = Node::dir(0o644, 0, 0, 0);
            n.kind = NodeKind::File;
            n.key = Some(format!("v/d/{i:032x}"));
            n.header = Some(vec![0; 200]);
            n.xattrs = Some("x".repeat(1000));
            t.nodes.insert(format!("photos/{i:06}.jpg"), n);
        }
        t
    }

    /// Views are kept within their memory budget, oldest dropped first, the newest always
    /// (review B1); extended attributes are not held.
    #[test]
    fn views_are_kept_within_their_memory() {
        let views = Views::default();
        let one = View::new("2026-01-01", 0, &tree(1000));
        assert!(one.bytes > 1000 * 200 && one.bytes < 1000 * 600, "{}", one.bytes);
        assert_eq!(one.path(one.nodes.len() - 1).as_deref(), Some("photos/000999.jpg"));
        let budget = one.bytes * 5 / 2;
        for d in 1..=3 {
            views.add(View::new(&format!("2026-01-0{d}"), 0, &tree(1000)), MAX_VIEWS, budget);
        }
        let kept: Vec<String> = views.all().into_iter().map(|(_, v)| v.name.clone()).collect();
        assert_eq!(kept, ["2026-01-02", "2026-01-03"]);
        // One bigger than the whole budget is kept alone.
        views.add(View::new("2026-02-01", 0, &tree(3000)), MAX_VIEWS, budget);
        let kept: Vec<String> = views.all().into_iter().map(|(_, v)| v.name.clone()).collect();
        assert_eq!(kept, ["2026-02-01"]);
        // Numbers are not reused: the new view comes after every one made before.
        assert_eq!(views.named("2026-02-01").map(|(i, _)| i), Some(3));
    }
}
