//! FIFOs, sockets and device nodes: index-only entries with no content, recreated by a rebuild.
//!
//! The index (`inodes.target`) and the journal (`special`) write them as `fifo:0`, `sock:0`,
//! `chr:RDEV` or `blk:RDEV`; [`Special`] is that text parsed once.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Sock,
    Chr(u32),
    Blk(u32),
}

impl Special {
    /// The kind `mode & S_IFMT` asks `mknod` for; None for a regular file or an unknown type.
    pub fn from_mode(mode: u32, rdev: u32) -> Option<Special> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFIFO => Special::Fifo,
            libc::S_IFSOCK => Special::Sock,
            libc::S_IFCHR => Special::Chr(rdev),
            libc::S_IFBLK => Special::Blk(rdev),
            _ => return None,
        })
    }

    /// Parse the stored text; anything unreadable is a FIFO (the harmless kind), as before.
    pub fn parse(s: &str) -> Special {
        let (kind, rdev) = s.split_once(':').unwrap_or((s, "0"));
        let rdev = rdev.parse().unwrap_or(0);
        match kind {
            "sock" => Special::Sock,
            "chr" => Special::Chr(rdev),
            "blk" => Special::Blk(rdev),
            _ => Special::Fifo,
        }
    }

    /// Device number (0 for a FIFO or a socket).
    pub fn rdev(self) -> u32 {
        match self {
            Special::Chr(r) | Special::Blk(r) => r,
            Special::Fifo | Special::Sock => 0,
        }
    }

    /// The file-type bits of `st_mode`.
    pub fn type_bits(self) -> u32 {
        match self {
            Special::Fifo => libc::S_IFIFO,
            Special::Sock => libc::S_IFSOCK,
            Special::Chr(_) => libc::S_IFCHR,
            Special::Blk(_) => libc::S_IFBLK,
        }
    }
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Special::Fifo => f.write_str("fifo:0"),
            Special::Sock => f.write_str("sock:0"),
            Special::Chr(r) => write!(f, "chr:{r}"),
            Special::Blk(r) => write!(f, "blk:{r}"),
        }
    }
}
