#!/usr/bin/env bash
# Install everything coldvault's build, tests and quickstart need. Idempotent; safe to re-run.
#   Debian packages: fuse3 (fusermount3), rsync, procps (pgrep); for the client tests samba,
#                    smbclient, exiftool, rawtherapee (rawtherapee-cli), stress-ng
#   PyPI: moto[server] (archive-tier test server), pytest, smbprotocol (robocopy-style mirror)
#   crates.io: s3s-fs 0.14.1 (fast local S3 server; the newest release needs a newer rustc)
# Set COLDVAULT_SKIP_S3S=1 to skip the s3s-fs build (about 7 minutes on 2 cores).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

pkgs=()
command -v fusermount3 >/dev/null || pkgs+=(fuse3)
command -v rsync >/dev/null || pkgs+=(rsync)
command -v pgrep >/dev/null || pkgs+=(procps)
command -v gcc >/dev/null || pkgs+=(gcc)
dpkg -s libacl1-dev >/dev/null 2>&1 || pkgs+=(libacl1-dev)  # pjdfstest links libacl
if [ "${COLDVAULT_SKIP_CLIENTS:-0}" != 1 ]; then
  command -v smbd >/dev/null || pkgs+=(samba)
  command -v smbclient >/dev/null || pkgs+=(smbclient)
  command -v exiftool >/dev/null || pkgs+=(libimage-exiftool-perl)
  command -v rawtherapee-cli >/dev/null || pkgs+=(rawtherapee)
  command -v stress-ng >/dev/null || pkgs+=(stress-ng)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Debian's samba package may start a system smbd; the tests run their own on loopback.
  $SUDO pkill -x smbd 2>/dev/null || true
  $SUDO pkill -x nmbd 2>/dev/null || true
fi

if ! python3 -c "import moto, pytest, boto3, cryptography, flask, smbclient" 2>/dev/null; then
  echo "install-deps: pip install moto[server] pytest smbprotocol"
  python3 -m pip install -q 'moto[server]==5.2.1' 'pytest>=8,<10' 'smbprotocol>=1.13,<2'
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
echo "install-deps: ok"
