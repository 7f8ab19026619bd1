#!/usr/bin/env python3
"""What each small file costs the index in writes: N files of S bytes written through a
coldvault mount (create, write, close), made durable with `coldvault flush --wait`, then the
pages its write-ahead log received, summed from the daemon's checkpoint log lines (each group
commit's checkpoint reports the pages the WAL held since it last started over). Pages per
file, not seconds: a number this noisy machine cannot move. Garage on loopback, a fresh
loop-mounted ext4.

    scripts/walcost.py                  # 5,000 files of 20 KB
    scripts/walcost.py --files 2000 --size 1024

Needs what scripts/bench.py needs (scripts/install-deps.sh --bench).
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--size", type=int, default=20_000)
    bench.workspace_args(ap, "/var/tmp/coldvault-walcost")
    a = ap.parse_args()
    os.environ["RUST_LOG"] = "coldvault=debug,warn"
    with bench.workspace(a, size="10G") as (work, garage):
        cv = bench.Coldvault(work, garage)
        log = cv.work / "cache" / "coldvault.log"
        data = os.urandom(a.size)
        d = cv.mnt / "files"
        d.mkdir()
        start = len(log.read_text(errors="replace").splitlines())
        t = time.monotonic()
        for i in range(a.files):
            with open(d / f"IMG_{i:06}.jpg", "wb") as f:
                f.write(data)
        cv.durable()
        took = time.monotonic() - t
        time.sleep(12)  # two more group commits: the last changes are checkpointed too
        cv.stop()
        lines = log.read_text(errors="replace").splitlines()[start:]
    pages = partial = 0
    for line in lines:
        m = re.search(r"pages=(\d+) copied=(\d+) index checkpoint", line) or re.search(r"index checkpoint pages=(\d+) copied=(\d+)", line)
        if m:
            p, c = int(m.group(1)), int(m.group(2))
            if c == p:
                pages += p
            else:
                partial += 1
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/walcost.py --files {a.files} --size {a.size}`")
    print(f"{a.files} files of {a.size} bytes, durable in {took:.1f} s: {pages} WAL pages = {pages / a.files:.1f} pages "
          f"({pages * 4 / a.files:.0f} KiB) per file" + (f"; {partial} checkpoints did not empty the WAL (not counted)" if partial else ""))


if __name__ == "__main__":
    sys.exit(main())
