#!/usr/bin/env bash
# Install everything coldvault's build, tests and quickstart need. Idempotent; safe to re-run.
#   Debian packages: fuse3 (fusermount3), rsync, procps (pgrep)
#   PyPI: moto[server] (archive-tier test server), pytest
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
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if ! python3 -c "import moto, pytest, boto3, cryptography, flask" 2>/dev/null; then
  echo "install-deps: pip install moto[server] pytest"
  python3 -m pip install -q 'moto[server]==5.2.1' 'pytest>=8,<10'
fi

if [ "${COLDVAULT_SKIP_S3S:-0}" != 1 ] && ! command -v s3s-fs >/dev/null; then
  echo "install-deps: cargo install s3s-fs 0.14.1 (takes several minutes)"
  cargo install --locked s3s-fs@0.14.1 --features binary
fi
echo "install-deps: ok"
