#!/usr/bin/env bash
# coldvault quickstart: install everything, create a vault, mount it.
#
#   scripts/quickstart.sh [MOUNTPOINT]          # default mount point: ~/coldvault
#   scripts/quickstart.sh --stop [MOUNTPOINT]   # unmount, stop the local S3 server
#
# Where the vault lives:
#   * COLDVAULT_BUCKET unset: a local S3 server (s3s-fs) is started on 127.0.0.1:$COLDVAULT_LOCAL_PORT
#     (default 9390), storing its data in ~/.local/share/coldvault/s3, with a bucket "coldvault".
#   * COLDVAULT_BUCKET=name [COLDVAULT_ENDPOINT=url]: that bucket on AWS (credentials from the
#     standard AWS chain) or on the S3-compatible endpoint given.
# Passphrase: COLDVAULT_PASSPHRASE, else a prompt on a terminal, else (no terminal) a random one
# written to ~/.config/coldvault/passphrase (mode 0600) — back it up, or nothing can be restored.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
stop=0
if [ "${1:-}" = "--stop" ]; then stop=1; shift; fi
mnt="${1:-$HOME/coldvault}"
cfgdir="${XDG_CONFIG_HOME:-$HOME/.config}/coldvault"
cfg="$cfgdir/config.toml"
data="${XDG_DATA_HOME:-$HOME/.local/share}/coldvault/s3"
port="${COLDVAULT_LOCAL_PORT:-9390}"
local_s3=0
[ -z "${COLDVAULT_BUCKET:-}" ] && local_s3=1
creds="$data/credentials"
if [ $local_s3 = 1 ]; then
  # The local server's credentials: random, made once, kept 0600 beside its data (anyone on
  # this machine can reach a loopback port; published test credentials would let them in).
  # s3s-fs takes them as arguments, which other users can see in `ps` unless /proc is mounted
  # with hidepid=2: on a machine shared with others, use a real S3 bucket (COLDVAULT_BUCKET).
  new_creds=0
  if [ ! -s "$creds" ]; then
    (umask 077; mkdir -p "$data"; chmod 700 "$data"; rm -f "$creds" "$creds.tmp"
     printf 'AWS_ACCESS_KEY_ID=cv%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
       "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$creds.tmp" && mv "$creds.tmp" "$creds")
    new_creds=1
  fi
  if [ ! -O "$creds" ] || [ "$(stat -c %a "$creds")" != 600 ]; then
    echo "quickstart: $creds must be yours and mode 0600; not used" >&2
    exit 1
  fi
  # Read as data, never run as shell code.
  AWS_ACCESS_KEY_ID=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$creds")
  AWS_SECRET_ACCESS_KEY=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$creds")
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=us-east-1 COLDVAULT_S3_KEY="$AWS_ACCESS_KEY_ID" COLDVAULT_S3_SECRET="$AWS_SECRET_ACCESS_KEY"
  # A server an earlier quickstart started with the old fixed test credentials: restart it with these.
  if [ $new_creds = 1 ] && [ $stop = 0 ] && [ -f "$data/.server.pid" ] && kill -0 "$(cat "$data/.server.pid")" 2>/dev/null; then
    echo "==> restarting the local S3 server with credentials of its own (a mount using the old ones must be remounted)"
    "$repo/scripts/s3-server.sh" stop "$data"
  fi
fi

if [ $stop = 1 ]; then
  if grep -qs " $(realpath "$mnt") " /proc/self/mountinfo; then coldvault unmount "$mnt"; fi
  [ $local_s3 = 1 ] && "$repo/scripts/s3-server.sh" stop "$data"
  exit 0
fi

echo "==> installing dependencies"
# The quickstart needs neither the client tools nor the POSIX suites the tests use.
export COLDVAULT_SKIP_CLIENTS=1 COLDVAULT_SKIP_POSIX=1 COLDVAULT_SKIP_PYTHON=1
if [ $local_s3 = 1 ]; then "$repo/scripts/install-deps.sh"; else COLDVAULT_SKIP_S3S=1 "$repo/scripts/install-deps.sh"; fi
echo "==> building and installing coldvault"
cargo install --locked --path "$repo" --quiet

if [ $local_s3 = 1 ]; then
  if ! (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
    echo "==> starting a local S3 server on 127.0.0.1:$port (data: $data)"
    mkdir -p "$data/store/coldvault"
    "$repo/scripts/s3-server.sh" start s3s-fs "$port" "$data"
  fi
  bucket=coldvault endpoint="http://127.0.0.1:$port"
else
  bucket="$COLDVAULT_BUCKET" endpoint="${COLDVAULT_ENDPOINT:-}"
fi

pass_args=()
if [ -z "${COLDVAULT_PASSPHRASE:-}" ] && ! { : >/dev/tty; } 2>/dev/null; then
  mkdir -p "$cfgdir"
  if [ ! -s "$cfgdir/passphrase" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 > "$cfgdir/passphrase")
    echo "==> no terminal: generated a passphrase in $cfgdir/passphrase — back it up!"
  fi
  pass_args=(--passphrase-file "$cfgdir/passphrase")
fi

if [ ! -f "$cfg" ]; then
  echo "==> creating a vault in bucket $bucket${endpoint:+ at $endpoint}"
  init=(coldvault init --bucket "$bucket" --config "$cfg")
  [ -n "$endpoint" ] && init+=(--endpoint-url "$endpoint")
  "${init[@]}" "${pass_args[@]}"
fi

mkdir -p "$mnt"
if grep -qs " $(realpath "$mnt") " /proc/self/mountinfo; then
  echo "==> $mnt is already mounted"
else
  echo "==> mounting at $mnt"
  coldvault mount --config "$cfg" "${pass_args[@]}" "$mnt"
fi
coldvault status "$mnt"
cat <<MSG

coldvault is mounted at $mnt. Copy, export or rsync files into it; they are encrypted and
uploaded in the background.
  coldvault status $mnt          what is pending
  coldvault flush --wait $mnt    wait until everything is in S3
  scripts/quickstart.sh --stop $mnt   unmount (and stop the local S3 server)
MSG
if [ $local_s3 = 1 ]; then
  echo "  (ls/get/verify talk to the local S3 server with the credentials in $creds: set -a; . $creds; set +a)"
fi
