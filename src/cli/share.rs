//! `coldvault share --samba NAME MOUNTPOINT`: an smb.conf share section for re-exporting a
//! mount to Windows and macOS clients (tested on loopback by tests/e2e/test_samba.py), served
//! only while the vault is mounted (never into the bare mount-point directory), and the
//! check that the Samba installed here has the VFS modules that section loads: without them
//! smbd refuses the whole share ("vfs_init_custom failed"), which clients see only as a share
//! that does not answer.

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct ShareArgs {
    /// Share name.
    #[arg(long = "samba", value_name = "NAME")]
    samba: String,
    mountpoint: PathBuf,
    /// Samba module directory to check for the VFS modules the section uses (default: the
    /// MODULESDIR of the local `smbd -b`).
    #[arg(long, value_name = "DIR")]
    modules_dir: Option<PathBuf>,
    /// Print the section without checking the local Samba (e.g. for another machine).
    #[arg(long)]
    no_check: bool,
}

pub fn run(a: ShareArgs) -> anyhow::Result<()> {
    let ShareArgs { samba, mountpoint, modules_dir, no_check } = a;
    let mp = std::fs::canonicalize(&mountpoint).with_context(|| format!("{} does not exist", mountpoint.display()))?;
    if samba.is_empty() || samba.contains([']', '[', '/', '\\']) {
        bail!("invalid share name {samba:?}");
    }
    // smb.conf substitutes %-variables in `path` and `root preexec`, and a line break ends a value.
    if mp.to_string_lossy().contains(['%', '\n', '\r']) {
        bail!("{} contains % or a line break, which smb.conf cannot express: share a mount point whose path has neither", mp.display());
    }
    if !no_check {
        let dir = match modules_dir {
            Some(d) => d,
            None => samba_modules_dir()?,
        };
        check_vfs_modules(&dir)?;
    }
    print!("{}", samba_section(&samba, &mp.to_string_lossy()));
    Ok(())
}

/// The VFS modules the printed section names in `vfs objects`.
pub const VFS_MODULES: [&str; 3] = ["catia", "fruit", "streams_xattr"];

/// Which package provides the VFS modules, per distribution family (printed in the error).
pub const VFS_PACKAGES: &str = "Debian/Ubuntu: apt-get install samba samba-vfs-modules; \
Fedora/RHEL: dnf install samba; Arch: pacman -S samba; openSUSE: zypper install samba";

#[derive(Debug, thiserror::Error)]
pub enum SambaCheckError {
    #[error("smbd was not found on PATH: Samba is not installed here ({VFS_PACKAGES}); use --modules-dir to check another Samba's modules")]
    NoSmbd,
    #[error("`smbd -b` did not report a MODULESDIR; give the module directory with --modules-dir")]
    NoModulesDir,
    #[error("Samba VFS module(s) {missing} missing from {dir}/vfs: smbd would refuse this share. Install them ({VFS_PACKAGES})", missing = .missing.join(", "), dir = .dir.display())]
    Missing { dir: PathBuf, missing: Vec<String> },
}

/// Samba's module directory, as the installed `smbd -b` reports it.
pub fn samba_modules_dir() -> Result<PathBuf, SambaCheckError> {
    let out = Command::new("smbd").arg("-b").output().map_err(|_| SambaCheckError::NoSmbd)?;
    parse_modules_dir(&String::from_utf8_lossy(&out.stdout)).ok_or(SambaCheckError::NoModulesDir)
}

/// The `MODULESDIR:` line of `smbd -b` output.
fn parse_modules_dir(build_info: &str) -> Option<PathBuf> {
    build_info.lines().find_map(|l| l.trim().strip_prefix("MODULESDIR:")).map(|d| PathBuf::from(d.trim())).filter(|d| !d.as_os_str().is_empty())
}

/// Checks that every module of [`VFS_MODULES`] exists as `DIR/vfs/NAME.so`.
pub fn check_vfs_modules(modules_dir: &Path) -> Result<(), SambaCheckError> {
    let missing: Vec<String> =
        VFS_MODULES.iter().filter(|m| !modules_dir.join("vfs").join(format!("{m}.so")).is_file()).map(|m| m.to_string()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SambaCheckError::Missing { dir: modules_dir.to_path_buf(), missing })
    }
}

/// `s` as one sh word: single-quoted, each `'` as `'\''`. Samba's own escaping of the command
/// (smbrun) leaves single-quoted text alone, so the word reaches the shell as written.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The smb.conf section. `mountpoint` must not contain `%` or a line break (see `main`): smb.conf
/// would substitute the one and end the value at the other.
pub fn samba_section(name: &str, mountpoint: &str) -> String {
    let quoted = sh_quote(mountpoint);
    format!(
        r#"[{name}]
   path = {mountpoint}
   # Only while the vault is mounted: unmounted (daemon stopped or crashed, gateway still
   # booting), writes would land in the bare mount-point directory instead of the vault. A
   # refused connection fails at the client at once (access denied), and the share works again
   # as soon as the vault is mounted, without reloading Samba.
   root preexec = mountpoint -q {quoted}
   root preexec close = yes
   # A connection made while mounted can outlive an unmount (smbd may find the bare directory
   # when it re-enters the path). Make the bare directory immutable, once, as root and while it
   # is unmounted: nothing, not even root, can then write into it, and the vault still mounts
   # over it:  chattr +i {quoted}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modules_dir_from_smbd_build_info() {
        let info = "Paths:\n   SBINDIR: /usr/sbin\n   MODULESDIR: /usr/lib/x86_64-linux-gnu/samba\n   LOCKDIR: /run/samba\n";
        assert_eq!(parse_modules_dir(info), Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/samba")));
        assert_eq!(parse_modules_dir("Paths:\n   SBINDIR: /usr/sbin\n"), None);
    }

    /// Regression: a Samba without samba-vfs-modules made smbd refuse the share; the check names
    /// the missing modules and the package instead.
    #[test]
    fn missing_vfs_modules_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vfs")).unwrap();
        std::fs::write(dir.path().join("vfs/catia.so"), b"").unwrap();
        let err = check_vfs_modules(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fruit, streams_xattr"), "{err}");
        assert!(!err.contains("catia,"), "{err}");
        assert!(err.contains("samba-vfs-modules"), "{err}");
        for m in ["fruit", "streams_xattr"] {
            std::fs::write(dir.path().join(format!("vfs/{m}.so")), b"").unwrap();
        }
        check_vfs_modules(dir.path()).unwrap();
    }

    /// Regression (issue 24, S2): a share of an unmounted vault took writes into the bare
    /// mount-point directory, which the next mount hid; the section refuses a connection unless
    /// the vault is mounted, naming the mount point as one shell word whatever it contains.
    #[test]
    fn the_section_refuses_connections_while_unmounted() {
        let section = samba_section("photos", "/srv/Bob's vault");
        assert!(section.contains("\n   root preexec = mountpoint -q '/srv/Bob'\\''s vault'\n"), "{section}");
        assert!(section.contains("\n   root preexec close = yes\n"), "{section}");
        assert!(section.contains("chattr +i '/srv/Bob'\\''s vault'\n"), "{section}");
    }

    #[test]
    fn the_section_loads_exactly_the_checked_modules() {
        let section = samba_section("photos", "/srv/coldvault");
        let line = section.lines().find(|l| l.trim().starts_with("vfs objects")).unwrap();
        let mut named: Vec<&str> = line.split('=').nth(1).unwrap().split_whitespace().collect();
        named.sort();
        assert_eq!(named, VFS_MODULES);
    }
}
