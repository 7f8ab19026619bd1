//! Filesystem errors and their one mapping to errno (`FsError::errno`, an exhaustive match so a
//! new variant forces a decision). The table is repeated for users in docs/SEMANTICS.md.

use crate::crypto::CryptoError;
use crate::meta::MetaError;
use crate::remote_meta::RemoteError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    /// A change inside a read-only view (`.coldvault/at/…`).
    #[error("read-only: the vault as it was at a time cannot be changed")]
    ReadOnly,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name or path too long for the vault's metadata budget")]
    NameTooLong,
    #[error("file names must be valid UTF-8")]
    BadName,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// The file is a program being run, and the operation would cut it (O_TRUNC).
    #[error("text file busy: the file is a running program")]
    TextBusy,
    #[error("this mount cannot decrypt (write-only: no private key)")]
    WriteOnly,
    /// The object sits in an archive tier; a restore is needed before its bytes can be read.
    #[error("object is archived; restore requested or required")]
    Archived,
    /// e.g. POSIX ACLs (system.* xattrs): cp -a and rsync -A treat ENOTSUP as "not here".
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute buffer too small")]
    Range,
    #[error("staging disk: {0}")]
    Io(#[from] std::io::Error),
    #[error("staging disk full: {0}")]
    NoSpace(String),
    #[error("file larger than the {0} bytes this mount accepts")]
    TooBig(u64),
    /// A file's extended attributes would take more than they may (ENOSPC, as on ext4).
    #[error("no room left for this file's extended attributes")]
    XattrsFull,
    /// An extended attribute's value larger than any a file may hold.
    #[error("argument too large")]
    ArgTooBig,
    /// The writing file's owner has this many bytes waiting for upload, its staging quota.
    #[error("over the staging quota of {0} bytes per user")]
    Quota(u64),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("object failed authentication: {0}")]
    Crypto(#[from] CryptoError),
    #[error("S3: {0}")]
    Store(#[from] StoreError),
    /// A full mount with an empty index could not rebuild it from the bucket (it does not start).
    #[error("rebuilding the index from the bucket failed: {0}")]
    Rebuild(RemoteError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::BadName => libc::EILSEQ,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::TextBusy => libc::ETXTBSY,
            FsError::WriteOnly => libc::EACCES,
            FsError::Archived => libc::EAGAIN,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            // ENOSPC and friends pass through; any other local I/O problem is EIO.
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::TooBig(_) => libc::EFBIG,
            FsError::ArgTooBig => libc::E2BIG,
            FsError::XattrsFull => libc::ENOSPC,
            FsError::Quota(_) => libc::EDQUOT,
            // The index cannot grow on a full disk: the caller learns the disk is full.
            FsError::Meta(MetaError::Sql(rusqlite::Error::SqliteFailure(e, _))) if e.code == rusqlite::ErrorCode::DiskFull => libc::ENOSPC,
            FsError::Meta(MetaError::Io(e)) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Meta(_) => libc::EIO,
            // Never wrong bytes: tampered or truncated objects are EIO (and logged).
            FsError::Crypto(_) => libc::EIO,
            FsError::Store(StoreError::Archived) => libc::EAGAIN,
            FsError::Store(StoreError::NotFound) => libc::EIO,
            FsError::Store(_) => libc::EIO,
            // Only at mount (the daemon does not start): EIO, as any failure to read the bucket.
            FsError::Rebuild(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;
