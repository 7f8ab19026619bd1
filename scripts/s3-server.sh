#!/usr/bin/env bash
# Start or stop a local S3 server on 127.0.0.1 for tests, benchmarks and the quickstart.
#
#   scripts/s3-server.sh start s3s-fs PORT DATA_DIR   # fast, production-like (no archive classes)
#   scripts/s3-server.sh start moto   PORT DATA_DIR   # storage classes and restores (slow GET)
#   scripts/s3-server.sh stop  DATA_DIR
#
# Credentials of s3s-fs: COLDVAULT_S3_KEY / COLDVAULT_S3_SECRET (the quickstart's random ones),
# else the tests' fixed AWS_ACCESS_KEY_ID=coldvault-test AWS_SECRET_ACCESS_KEY=coldvault-test-secret.
# The pid is kept in DATA_DIR/.server.pid; the log in DATA_DIR/.server.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
KEY="${COLDVAULT_S3_KEY:-coldvault-test}"
SECRET="${COLDVAULT_S3_SECRET:-coldvault-test-secret}"

wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then echo "server exited; log:" >&2; cat "$3" >&2; return 1; fi
    sleep 0.1
  done
  echo "server did not listen on $port within 20 s" >&2
  return 1
}

case "${1:-}" in
  start)
    kind=$2 port=$3 data=$4
    mkdir -p "$data/store"
    log="$data/.server.log"
    case "$kind" in
      s3s-fs)
        command -v s3s-fs >/dev/null || { echo "s3s-fs is not installed: run scripts/install-deps.sh" >&2; exit 1; }
        setsid s3s-fs --host 127.0.0.1 --port "$port" --access-key "$KEY" --secret-key "$SECRET" "$data/store" >"$log" 2>&1 < /dev/null &
        ;;
      moto)
        setsid python3 "$here/moto_server.py" --port "$port" >"$log" 2>&1 < /dev/null &
        ;;
      *) echo "unknown server kind $kind (s3s-fs|moto)" >&2; exit 2 ;;
    esac
    pid=$!
    echo "$pid" > "$data/.server.pid"
    wait_port "$port" "$pid" "$log"
    echo "$kind listening on http://127.0.0.1:$port (pid $pid)"
    ;;
  stop)
    data=$2
    if [ -f "$data/.server.pid" ]; then
      pid=$(cat "$data/.server.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$data/.server.pid"
    fi
    ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
