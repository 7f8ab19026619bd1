#!/usr/bin/env bash
# Install everything coldvault's build, tests and quickstart need, then check that each thing is
# really there. Idempotent; safe to re-run. Exits non-zero naming the package when something is
# missing after installing.
#
# Every Debian package is named here explicitly and installed without Recommends: a machine that
# had a package pulled in by something else must not hide a missing line (see `require` below).
#   COLDVAULT_SKIP_CLIENTS=1  skip the client tools (Samba, exiftool, RawTherapee, stress-ng)
#   COLDVAULT_SKIP_POSIX=1    skip the POSIX suites (pjdfstest, fsx from crates.io)
#   COLDVAULT_SKIP_S3S=1      skip the s3s-fs build (about 7 minutes on 2 cores)
#   COLDVAULT_SKIP_PYTHON=1   skip the Python test environment (the quickstart needs none)
#   --bench                   also what scripts/bench.py compares against: rclone, s3fs, bindfs
#                             (a FUSE passthrough), perf, e2fsprogs (its loop-mounted ext4) and the Garage S3 server (crates.io, about 25 minutes on 2 cores)
# The Python packages the tests use live in a virtual environment, $COLDVAULT_VENV (default
# ~/.cache/coldvault/venv), so that a distribution's "externally managed" Python is never touched.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export PATH="$HOME/.cargo/bin:$PATH"
VENV="${COLDVAULT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/coldvault/venv}"

# Samba's module directory as the installed smbd reports it (empty when there is no smbd).
samba_modules_dir() {
  command -v smbd >/dev/null 2>&1 || return 0
  smbd -b 2>/dev/null | sed -n 's/^ *MODULESDIR: *//p' | head -n 1
}

# check SPEC: true when SPEC is satisfied. SPEC is cmd:NAME (on PATH), file:PATH,
# samba-vfs:MODULE (MODULESDIR/vfs/MODULE.so of the installed smbd), py:MODULE (importable by
# python3), venv (python3 can create a virtual environment with pip).
check() {
  local spec=$1
  case "$spec" in
    cmd:*) command -v "${spec#cmd:}" >/dev/null 2>&1 ;;
    file:*) [ -e "${spec#file:}" ] ;;
    samba-vfs:*) local d; d=$(samba_modules_dir); [ -n "$d" ] && [ -f "$d/vfs/${spec#samba-vfs:}.so" ] ;;
    venv) python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ;;
    *) echo "install-deps: bad check $spec" >&2; return 2 ;;
  esac
}

# require PACKAGE CHECK...: PACKAGE is installed unless every CHECK already holds; afterwards
# every CHECK must hold.
declare -a want_pkgs=() reqs=()
require() {
  local pkg=$1; shift
  local c
  for c in "$@"; do
    reqs+=("$pkg $c")
    if ! dpkg -s "$pkg" >/dev/null 2>&1 || ! check "$c"; then
      case " ${want_pkgs[*]:-} " in *" $pkg "*) ;; *) want_pkgs+=("$pkg") ;; esac
    fi
  done
}

# The build: gcc for the C in rusqlite (bundled SQLite) and ring; ca-certificates for HTTPS to S3.
require gcc cmd:gcc
require libc6-dev file:/usr/include/stdio.h
require ca-certificates file:/etc/ssl/certs/ca-certificates.crt
# Mounting: fuser mounts through the fusermount3 helper (no libfuse is linked).
require fuse3 cmd:fusermount3
# The tests and scripts: rsync as a client, pgrep/pkill (procps) to find and stop daemons,
# mount (util-linux) for the small filesystems of the full-disk tests and mountpoint (util-linux)
# for the Samba share's root preexec, getfattr (attr) to read the xattrs Samba stores through
# the mount, and Python with venv support for the e2e suite.
require rsync cmd:rsync
BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1
if [ $BENCH = 1 ]; then
  # scripts/bench.py: the peers (rclone mount and crypt, s3fs), the FUSE floor (bindfs),
  # the file system it runs on (mkfs.ext4) and profiles (perf).
  require rclone cmd:rclone
  require s3fs cmd:s3fs
  require bindfs cmd:bindfs
  require e2fsprogs cmd:mkfs.ext4
  require linux-perf cmd:perf
fi
require procps cmd:pgrep cmd:pkill
require util-linux cmd:mount cmd:umount cmd:mountpoint
require attr cmd:getfattr cmd:setfattr
if [ "${COLDVAULT_SKIP_PYTHON:-0}" != 1 ]; then
  require python3 cmd:python3
  # Debian's python3 lacks ensurepip without python3-venv; another python3 (pyenv, a
  # distribution that ships it whole) has it already.
  check venv || require python3-venv venv
fi
if [ "${COLDVAULT_SKIP_POSIX:-0}" != 1 ]; then
  require libacl1-dev file:/usr/include/sys/acl.h   # pjdfstest links libacl
fi
if [ "${COLDVAULT_SKIP_CLIENTS:-0}" != 1 ]; then
  # The Samba gateway: smbd and pdbedit (package samba), and the VFS modules that
  # `coldvault share --samba` configures (package samba-vfs-modules: not pulled in without
  # Recommends, and smbd refuses the share without them).
  require samba cmd:smbd cmd:pdbedit
  require samba-common-bin cmd:testparm cmd:smbcontrol
  require samba-vfs-modules samba-vfs:streams_xattr samba-vfs:fruit samba-vfs:catia
  require smbclient cmd:smbclient
  require e2fsprogs cmd:chattr   # the immutable bare mount point docs/CLIENTS.md recommends
  require samba-testsuite cmd:smbtorture   # smb2.timestamps on the share
  require libimage-exiftool-perl cmd:exiftool
  require rawtherapee cmd:rawtherapee-cli
  require stress-ng cmd:stress-ng
fi

if [ ${#want_pkgs[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${want_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}" >/dev/null
  # Debian's samba package may start a system smbd; the tests run their own on loopback.
  $SUDO pkill -x smbd 2>/dev/null || true
  $SUDO pkill -x nmbd 2>/dev/null || true
fi

missing=0
for r in "${reqs[@]}"; do
  pkg=${r%% *} c=${r#* }
  if ! check "$c"; then
    case "$c" in
      samba-vfs:*) what="Samba VFS module ${c#samba-vfs:} ($(samba_modules_dir)/vfs/${c#samba-vfs:}.so)" ;;
      *) what=${c#*:} ;;
    esac
    echo "install-deps: MISSING $what: install the Debian package $pkg" >&2
    missing=1
  fi
done
[ $missing = 0 ] || exit 1

if [ "${COLDVAULT_SKIP_PYTHON:-0}" != 1 ]; then
  # moto (archive-tier test server), pytest, smbprotocol (robocopy-style mirror), boto3.
  if [ ! -x "$VENV/bin/python3" ]; then
    echo "install-deps: python3 -m venv $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python3" -c "import moto, pytest, boto3, cryptography, flask, smbclient" 2>/dev/null; then
    echo "install-deps: pip install moto[server] pytest smbprotocol (into $VENV)"
    "$VENV/bin/python3" -m pip install -q 'moto[server]==5.2.1' 'pytest>=8,<10' 'smbprotocol>=1.13,<2'
  fi
  "$VENV/bin/python3" -c "import moto, pytest, boto3, cryptography, flask, smbclient" \
    || { echo "install-deps: MISSING Python packages in $VENV" >&2; exit 1; }
  # The AWS CLI, for the test that runs docs/AWS.md's walk-through against moto: in a venv of
  # its own (it pins botocore, which would fight boto3's in the test venv).
  AWSCLI="$HOME/.cache/coldvault/awscli"
  if [ ! -x "$AWSCLI/bin/aws" ]; then
    echo "install-deps: pip install awscli (into $AWSCLI)"
    python3 -m venv "$AWSCLI"
    "$AWSCLI/bin/python3" -m pip install -q 'awscli>=1.36,<2'
  fi
  "$AWSCLI/bin/aws" --version >/dev/null 2>&1 || { echo "install-deps: MISSING the AWS CLI in $AWSCLI" >&2; exit 1; }
fi

# POSIX peer suites (crates.io).
if [ "${COLDVAULT_SKIP_POSIX:-0}" != 1 ]; then
  command -v pjdfstest >/dev/null || { echo "install-deps: cargo install pjdfstest"; cargo install --locked pjdfstest@0.2.2; }
  command -v fsx >/dev/null || { echo "install-deps: cargo install fsx"; cargo install --locked fsx@0.3.2; }
fi

if [ "${COLDVAULT_SKIP_S3S:-0}" != 1 ] && ! command -v s3s-fs >/dev/null; then
  echo "install-deps: cargo install s3s-fs 0.14.1 (takes several minutes)"
  cargo install --locked s3s-fs@0.14.1 --features binary
fi
if [ $BENCH = 1 ] && ! command -v garage >/dev/null; then
  echo "install-deps: cargo install garage 2.5.0 (the benchmark's S3 server; takes a long time)"
  cargo install --locked garage@2.5.0
fi
echo "install-deps: ok"
