#!/usr/bin/env bash
# Self-test of dropfs (run as root). Builds nothing: expects the binary at $DROPFS, default
# /work/main/target/release/dropfs (cargo build --release --offline
# --manifest-path tests/dropfs/Cargo.toml --target-dir target).
#
#   tests/dropfs/selftest.sh              # file checks + SQLite checks, both open modes
#   KEEP=1 tests/dropfs/selftest.sh       # keep the temporary directory
set -uo pipefail

DROPFS=${DROPFS:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/dropfs}
[ -x "$DROPFS" ] || { echo "no dropfs binary at $DROPFS" >&2; exit 2; }
T=$(mktemp -d /tmp/dropfs-selftest.XXXXXX)
B=$T/backing
M=$T/mnt
CUT=$T/dropfs.cut
mkdir -p "$B" "$M"
FAILS=0
PID=
SQLPID=

cleanup() {
    [ -n "$SQLPID" ] && kill "$SQLPID" 2>/dev/null
    [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null && kill "$PID"
    grep -q " $M " /proc/mounts && umount -l "$M"
    if [ -z "${KEEP:-}" ]; then rm -rf "$T"; else echo "kept $T"; fi
}
trap cleanup EXIT

ok()   { echo "PASS  $*"; }
bad()  { echo "FAIL  $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

mount_dropfs() {   # mount_dropfs [dropfs options...]
    "$DROPFS" "$B" "$M" "$@" 2>>"$T/dropfs.log" &
    PID=$!
    for _ in $(seq 200); do grep -q " $M fuse" /proc/mounts && return 0; sleep 0.02; done
    echo "mount failed:"; cat "$T/dropfs.log"; exit 1
}

cut() {   # cut file|signal
    if [ "$1" = signal ]; then kill -USR1 "$PID"; else touch "$CUT"; fi
    for _ in $(seq 500); do kill -0 "$PID" 2>/dev/null || break; sleep 0.01; done
    if kill -0 "$PID" 2>/dev/null; then bad "dropfs exits after the cut"; kill "$PID"; fi
    wait "$PID" 2>/dev/null
    PID=
    check "mount is gone after the cut" bash -c "! grep -q ' $M ' /proc/mounts"
    check "control file removed" test ! -e "$CUT"
    tail -n 1 "$T/dropfs.log"
}

size()    { stat -c %s "$1"; }
content() { cat "$1" 2>/dev/null; }

echo "== phase 1: files (page-cache mode), cut by control file"
mount_dropfs
python3 - "$M" <<'EOF' || bad "phase 1 workload"
import os, sys
m = sys.argv[1]
def w(path, data, sync=False, flags=os.O_CREAT | os.O_WRONLY | os.O_TRUNC):
    fd = os.open(os.path.join(m, path), flags, 0o644)
    os.write(fd, data)
    if sync: os.fsync(fd)
    os.close(fd)
w("A", b"A" * 10000, sync=True)                 # synced, then renamed
os.rename(f"{m}/A", f"{m}/A2")
w("B", b"unsynced B data")                       # never synced
w("C", b"0123456789" * 1000, sync=True)          # synced, then overwritten + appended
fd = os.open(f"{m}/C", os.O_WRONLY); os.pwrite(fd, b"XXXX", 5000); os.pwrite(fd, b"TAIL", 10000); os.close(fd)
w("D", b"d" * 10000, sync=True)                  # synced, then truncated (truncate is data)
os.truncate(f"{m}/D", 100)
fd = os.open(f"{m}/E", os.O_CREAT | os.O_RDWR, 0o644)   # renamed while open, fsync'ed after
os.write(fd, b"E data"); os.rename(f"{m}/E", f"{m}/E2"); os.mkdir(f"{m}/sub")
os.rename(f"{m}/E2", f"{m}/sub/E3"); os.fsync(fd); os.close(fd)
w("F", b"F before syncfs")                       # syncfs(2) is not delivered to FUSE
fd = os.open(m, os.O_RDONLY); import ctypes
assert ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0; os.close(fd)
w("H", b"hard link data")                        # fsync through a second hard link
os.link(f"{m}/H", f"{m}/H2")
fd = os.open(f"{m}/H2", os.O_RDONLY); os.fsync(fd); os.close(fd)
w("K", b"deleted before cut"); os.unlink(f"{m}/K")
os.symlink("A2", f"{m}/L")
w("S", b"S" * 5000, sync=True)                   # O_SYNC writes are durable at once
fd = os.open(f"{m}/S", os.O_WRONLY | os.O_SYNC); os.pwrite(fd, b"sync", 0); os.close(fd)
# The layered view through the mount before the cut:
r = lambda p: open(f"{m}/{p}", "rb").read()
assert r("B") == b"unsynced B data", r("B")
c = r("C"); assert len(c) == 10004 and c[5000:5004] == b"XXXX" and c[10000:] == b"TAIL"
assert r("D") == b"d" * 100
assert os.stat(f"{m}/D").st_size == 100
EOF
check "before the cut: B not yet in BACKING (size 0)" test "$(size "$B/B")" = 0
check "before the cut: D still 10000 bytes in BACKING" test "$(size "$B/D")" = 10000
cut file
check "A renamed to A2 with its synced data" test "$(content "$B/A2")" = "$(printf 'A%.0s' $(seq 10000))"
check "A is gone" test ! -e "$B/A"
check "B exists with size 0 (data dropped)" test -f "$B/B" -a "$(size "$B/B")" = 0
check "C has its synced content only" test "$(content "$B/C")" = "$(printf '0123456789%.0s' $(seq 1000))"
check "D truncation dropped (10000 bytes)" test "$(size "$B/D")" = 10000
check "E (renamed twice while open, then fsync'ed) has its data" test "$(content "$B/sub/E3")" = "E data"
check "F lost despite syncfs(2)" test "$(size "$B/F")" = 0
check "H fsync'ed through hard link H2" test "$(content "$B/H")" = "hard link data"
check "K stays deleted" test ! -e "$B/K"
check "symlink L kept" test "$(readlink "$B/L")" = A2
check "S: O_SYNC write durable" test "$(head -c 8 "$B/S")" = "syncSSSS"

echo "== phase 2: fsync of a directory flushes everything; cut by SIGUSR1; direct_io mode"
mount_dropfs --direct-io
python3 - "$M" <<'EOF' || bad "phase 2 workload"
import os, sys
m = sys.argv[1]
for name in ("P1", "sub/P2"):
    fd = os.open(f"{m}/{name}", os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"flushed by fsyncdir"); os.close(fd)
fd = os.open(m, os.O_RDONLY); os.fsync(fd); os.close(fd)
fd = os.open(f"{m}/Q", os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"after fsyncdir"); os.close(fd)
fd = os.open(f"{m}/C", os.O_WRONLY); os.ftruncate(fd, 3); os.fsync(fd); os.close(fd)
EOF
cut signal
check "P1 flushed by fsync(dir)" test "$(content "$B/P1")" = "flushed by fsyncdir"
check "sub/P2 flushed by fsync(dir)" test "$(content "$B/sub/P2")" = "flushed by fsyncdir"
check "Q (after the fsyncdir) lost" test "$(size "$B/Q")" = 0
check "C truncation made durable by fsync" test "$(content "$B/C")" = "012"

sqlite_phase() {   # sqlite_phase label [dropfs options...]
    local label=$1; shift
    rm -rf "${B:?}"/db*
    echo "== SQLite WAL ($label): synchronous=FULL commit survives a cut taken while the db is open"
    mount_dropfs "$@"
    python3 - "$M/db" <<'EOF' > "$T/sql.out" &
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
assert c.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
c.execute("pragma synchronous=FULL")
c.execute("create table t(x)")
c.execute("begin"); c.executemany("insert into t values(?)", [(i,) for i in range(100)]); c.execute("commit")
c.execute("pragma synchronous=OFF")   # then 10 rows committed without any sync: lost at the cut
c.execute("begin"); c.executemany("insert into t values(?)", [(i,) for i in range(100, 110)]); c.execute("commit")
assert c.execute("select count(*) from t").fetchone()[0] == 110
print("ready", flush=True)
time.sleep(60)
EOF
    SQLPID=$!
    for _ in $(seq 500); do grep -q ready "$T/sql.out" && break; sleep 0.01; done
    check "[$label] sqlite workload committed" grep -q ready "$T/sql.out"
    ls -la "$B" | grep db
    cut file
    kill "$SQLPID" 2>/dev/null; wait "$SQLPID" 2>/dev/null; SQLPID=
    check "[$label] 100 FULL-synced rows survive, 10 OFF rows lost" test "$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('pragma integrity_check').fetchone()[0], c.execute('select count(*) from t').fetchone()[0])" "$B/db")" = "ok 100"

    echo "== SQLite WAL ($label): synchronous=OFF commit is lost, the database still opens"
    mount_dropfs "$@"
    python3 - "$M/db" <<'EOF' || bad "[$label] sqlite OFF workload"
import sqlite3, sys, os
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("pragma synchronous=OFF")
c.execute("begin"); c.executemany("insert into t values(?)", [(i,) for i in range(100, 150)]); c.execute("commit")
assert c.execute("select count(*) from t").fetchone()[0] == 150
os._exit(0)   # no close: a close would checkpoint, and a checkpoint with synchronous=OFF does not sync either
EOF
    cut file
    check "[$label] OFF commit lost, db opens, integrity ok" test "$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('pragma integrity_check').fetchone()[0], c.execute('select count(*) from t').fetchone()[0])" "$B/db")" = "ok 100"
}
sqlite_phase "page cache"
sqlite_phase "direct_io except -shm" --direct-io
sqlite_phase "strict fsyncdir" --strict-fsyncdir

echo "== phase 4: clean shutdowns flush everything"
mount_dropfs
printf 'flushed at umount' > "$M/U"
check "before umount: U not in BACKING" test "$(size "$B/U")" = 0
umount "$M"; wait "$PID"; PID=
check "umount (clean): U flushed" test "$(content "$B/U")" = "flushed at umount"
mount_dropfs
printf 'flushed at SIGTERM' > "$M/V"
kill -TERM "$PID"; wait "$PID"; PID=
check "SIGTERM (clean): V flushed" test "$(content "$B/V")" = "flushed at SIGTERM"
check "SIGTERM: mount is gone" bash -c "! grep -q ' $M ' /proc/mounts"
tail -n 2 "$T/dropfs.log"

echo
if [ "$FAILS" = 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $FAILS check(s) FAILED"; fi
[ "$FAILS" = 0 ]
