#!/usr/bin/env bash
# Run every coldvault test: unit and integration tests (cargo), then the end-to-end suite
# (pytest) with real FUSE mounts against local S3 servers it starts on 127.0.0.1 and stops.
#   scripts/test.sh            # everything
#   scripts/test.sh -k rsync   # extra arguments go to pytest
# With CI=true a test whose tool is missing fails instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
# The Python test environment install-deps.sh made (moto, pytest, smbprotocol, boto3).
export PATH="${COLDVAULT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/coldvault/venv}/bin:$PATH"
cargo build --release --locked
# The power-loss rig of tests/e2e/test_power_cut.py: a FUSE file system that drops unsynced data.
cargo build --release --locked --manifest-path tests/dropfs/Cargo.toml --target-dir target
cargo test --release --locked
# Model-checked races of the filesystem core (shuttle schedules; src/fs/shuttle_tests.rs).
cargo test --release --locked --features shuttle --lib shuttle_
if [ ! -e /dev/fuse ]; then
  echo "WARNING: /dev/fuse is missing: mount tests will be reported as skipped" >&2
fi
python3 -m pytest -ra tests/e2e "$@"
