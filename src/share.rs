//! `coldvault share --samba NAME MOUNTPOINT`: an smb.conf share section for re-exporting a
//! mount to Windows and macOS clients (tested on loopback by tests/e2e/test_samba.py).

pub fn samba_section(name: &str, mountpoint: &str) -> String {
    format!(
        r#"[{name}]
   path = {mountpoint}
   read only = no
   browseable = yes
   # DOS attributes (archive/hidden/read-only/system), creation times and alternate data
   # streams live in user.* xattrs: coldvault keeps them in its index and journals them into
   # the bucket, so they survive a rebuild. Streams are limited to 64 KiB each.
   ea support = yes
   store dos attributes = yes
   map archive = no
   map hidden = no
   map readonly = no
   map system = no
   # macOS Finder: resource forks and Finder info as streams, no ._ AppleDouble files.
   vfs objects = catia fruit streams_xattr
   fruit:metadata = stream
   fruit:resource = stream
   fruit:encoding = native
   fruit:posix_rename = yes
   fruit:veto_appledouble = no
   fruit:delete_empty_adfiles = yes
   fruit:wipe_intentionally_left_blank_rfork = yes
   # Locks and leases are Samba's business: the FUSE mount has no cross-client locking.
   kernel oplocks = no
   kernel share modes = no
   posix locking = no
   # A flush or close is a local fsync (uploads happen later, in the background), so
   # honouring every client flush is cheap and keeps the durability promise.
   strict sync = yes
   # Windows is case-insensitive and case-preserving.
   case sensitive = no
   preserve case = yes
   short preserve case = yes
   # Inode numbers are stable across remounts, so file ids stay valid for clients.
   # statfs reports the staging disk's real free space (Explorer checks it before copying).
"#
    )
}
