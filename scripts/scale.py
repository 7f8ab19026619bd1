#!/usr/bin/env python3
"""How coldvault scales with the number of files: the ingest rate as a folder grows from 0 to N
files (each batch of files timed on its own: a rate that falls as the vault grows is O(N) work
per file), then `ls -l` of that folder and `find` over the whole mount, and the daemon's peak
RSS. The same on a local directory and on a FUSE passthrough (bindfs) for reference. Garage on
loopback, a fresh loop-mounted ext4, uploads running in the background as they would.

    scripts/scale.py                                # 100,000 files of 1 KiB, batches of 10,000
    scripts/scale.py --files 1000000 --batch 100000
    scripts/scale.py --write docs/BENCHMARKS.md     # replace the SCALE section of that file

Needs what scripts/bench.py needs (scripts/install-deps.sh --bench).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def ingest(d, n, batch, size):
    """Write n files of `size` random bytes into d, batch by batch; files per second of each."""
    d.mkdir()
    data = os.urandom(size)
    rates = []
    for start in range(0, n, batch):
        t = time.monotonic()
        for i in range(start, min(n, start + batch)):
            fd = os.open(d / f"IMG_{i:07}.jpg", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
        rates.append((min(n, start + batch), (min(n, start + batch) - start) / (time.monotonic() - t)))
        print(f"    {rates[-1][0]:>9} files: {rates[-1][1]:8.0f} files/s", flush=True)
    return rates


def best_of(cmd, runs=3):
    best = None
    for _ in range(runs):
        t = time.monotonic()
        bench.sh(*cmd, timeout=7200)
        best = min(best or 1e9, time.monotonic() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--systems", default="local,passthrough,coldvault")
    ap.add_argument("--work", default="/var/tmp/coldvault-scale")
    ap.add_argument("--no-loop-fs", action="store_true")
    ap.add_argument("--write", help="replace the section between the SCALE markers of this file")
    a = ap.parse_args()
    for tool in ["garage", "bindfs", "fusermount3"]:
        if not bench.shutil.which(tool):
            raise SystemExit(f"scale: {tool} is not installed (scripts/install-deps.sh --bench)")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    loop = None if a.no_loop_fs else bench.LoopFs(work)
    garage = bench.Garage(work)
    results = {}
    try:
        for s in a.systems.split(","):
            cls = bench.SYSTEMS[s]
            print(f"{cls.name} …", flush=True)
            sysm = cls(work, garage)
            try:
                rates = ingest(sysm.mnt / "big", a.files, a.batch, a.size)
                ls = best_of(["sh", "-c", f"ls -l '{sysm.mnt / 'big'}' > /dev/null"])
                find = best_of(["sh", "-c", f"find '{sysm.mnt}' > /dev/null"])
                results[cls.name] = (rates, ls, find, sysm.rss())
                print(f"  ls -l {ls:.2f} s, find {find:.2f} s, peak RSS {sysm.rss()} MiB", flush=True)
            finally:
                sysm.stop()
    finally:
        garage.stop()
        if loop:
            loop.stop()
    names = list(results)
    head = ["files in the folder"] + [f"{n}: files/s" for n in names]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in range(len(next(iter(results.values()))[0])):
        rows.append("| " + " | ".join([f"{results[names[0]][0][k][0]:,}"] + [f"{results[n][0][k][1]:,.0f}" for n in names]) + " |")
    rows.append("| " + " | ".join([f"`ls -l` of the {a.files:,}-file folder, s"] + [f"{results[n][1]:.2f}" for n in names]) + " |")
    rows.append("| " + " | ".join(["`find` over the mount, s"] + [f"{results[n][2]:.2f}" for n in names]) + " |")
    rows.append("| " + " | ".join(["peak RSS"] + [f"{results[n][3]} MiB" if results[n][3] else "—" for n in names]) + " |")
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/scale.py --files {a.files} --batch {a.batch} "
            f"--size {a.size}` ({a.size}-byte files written one after another by one process, uploads running behind).")
    table = meta + "\n\n" + "\n".join(rows)
    print("\n" + table)
    if a.write:
        p = Path(a.write)
        s = p.read_text()
        start, end = "<!-- SCALE START -->", "<!-- SCALE END -->"
        i, j = s.index(start) + len(start), s.index(end)
        p.write_text(s[:i] + "\n" + table + "\n" + s[j:])


if __name__ == "__main__":
    sys.exit(main())
