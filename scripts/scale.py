#!/usr/bin/env python3
"""How coldvault scales with the number of files: the ingest rate as the vault grows from 0 to N
files (each batch of files timed on its own: a rate that falls as the vault grows is O(N) work
per file), and after each batch `ls -l` of the folder being filled, `find` over the whole mount
and the daemon's RSS; at the end the best of three `ls -l` and `find`, and the peak RSS. The
same on a local directory and on a FUSE passthrough (bindfs) for reference. Garage on loopback,
a fresh loop-mounted ext4, uploads running in the background as they would.

    scripts/scale.py                                # 100,000 files of 1 KiB, batches of 10,000
    scripts/scale.py --files 1000000 --batch 100000 # ten folders of 100,000
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


def timed(cmd):
    t = time.monotonic()
    bench.sh(*cmd, timeout=7200)
    return time.monotonic() - t


def ingest(sysm, n, batch, size, per_folder):
    """Write n files of `size` random bytes under big/, `per_folder` to a folder, batch by batch.
    After each batch: its files per second (a rate that falls as the vault grows is O(N) work
    per file), one `ls -l` of the folder being filled, one `find` over the whole mount, and the
    daemon's RSS at that moment."""
    top = sysm.mnt / "big"
    top.mkdir()
    data = os.urandom(size)
    rows = []
    for start in range(0, n, batch):
        t = time.monotonic()
        end = min(n, start + batch)
        for i in range(start, end):
            d = top / f"d{i // per_folder:04}"
            if i % per_folder == 0:
                d.mkdir()
            fd = os.open(d / f"IMG_{i:07}.jpg", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
        rate = (end - start) / (time.monotonic() - t)
        folder = top / f"d{(end - 1) // per_folder:04}"
        ls = timed(["sh", "-c", f"ls -l '{folder}' > /dev/null"])
        find = timed(["sh", "-c", f"find '{sysm.mnt}' > /dev/null"])
        rss = bench.proc_mib(sysm.pid, "VmRSS")
        in_folder = (end - 1) % per_folder + 1
        rows.append((end, rate, in_folder, ls, find, rss))
        print(f"    {end:>9} files: {rate:8.0f} files/s; ls -l of {in_folder:,} {ls:6.2f} s; find {find:6.2f} s; RSS {rss} MiB", flush=True)
    return rows


def best_of(cmd, runs=3):
    return min(timed(cmd) for _ in range(runs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--per-folder", type=int, default=100_000, help="files per folder (big/d0000, big/d0001, …)")
    ap.add_argument("--systems", default="local,passthrough,coldvault")
    bench.workspace_args(ap, "/var/tmp/coldvault-scale")
    ap.add_argument("--write", help="replace the section between the SCALE markers of this file")
    a = ap.parse_args()
    for tool in ["garage", "bindfs", "fusermount3"]:
        if not bench.shutil.which(tool):
            raise SystemExit(f"scale: {tool} is not installed (scripts/install-deps.sh --bench)")
    results = {}
    # Room for every system's files (one inode per 8 KiB: 7.8 million).
    with bench.workspace(a, size="60G", inode_ratio=8192) as (work, garage):
        for s in a.systems.split(","):
            cls = bench.SYSTEMS[s]
            print(f"{cls.name} …", flush=True)
            sysm = cls(work, garage)
            # Peak RSS from here on: the passphrase's Argon2id unlock at start (64 MiB, freed
            # at once) is not what this measures.
            if sysm.pid:
                Path(f"/proc/{sysm.pid}/clear_refs").write_text("5")
            try:
                rows = ingest(sysm, a.files, a.batch, a.size, a.per_folder)
                ls = best_of(["sh", "-c", f"ls -l '{sysm.mnt / 'big' / 'd0000'}' > /dev/null"])
                find = best_of(["sh", "-c", f"find '{sysm.mnt}' > /dev/null"])
                results[cls.name] = (rows, ls, find, sysm.rss())
                log = sysm.work / "cache" / "coldvault.log"
                if log.exists():
                    # What each index snapshot cost (entries, bytes, ms to write, ms to upload).
                    for line in log.read_text(errors="replace").splitlines():
                        if "index snapshot uploaded" in line:
                            print("   ", line.split("journal: ", 1)[-1], flush=True)
                print(f"  ls -l {ls:.2f} s, find {find:.2f} s, peak RSS {sysm.rss()} MiB", flush=True)
            finally:
                sysm.stop()
    names = list(results)
    head = ["files in the vault"] + [f"{n}: files/s" for n in names] + [f"{n}: `find`, s" for n in names] + ["coldvault: RSS"] * ("coldvault" in names)
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in range(len(next(iter(results.values()))[0])):
        r0 = results[names[0]][0][k]
        cells = [f"{r0[0]:,}"] + [f"{results[n][0][k][1]:,.0f}" for n in names] + [f"{results[n][0][k][4]:.2f}" for n in names]
        if "coldvault" in names:
            cells.append(f"{results['coldvault'][0][k][5]} MiB")
        rows.append("| " + " | ".join(cells) + " |")
    ls_head = ["files in the folder being filled"] + [f"{n}: `ls -l`, s" for n in names]
    ls_rows = ["| " + " | ".join(ls_head) + " |", "|" + "---|" * len(ls_head)]
    for k in range(len(next(iter(results.values()))[0])):
        r0 = results[names[0]][0][k]
        ls_rows.append("| " + " | ".join([f"{r0[2]:,}"] + [f"{results[n][0][k][3]:.2f}" for n in names]) + " |")
    ls_rows.append("| " + " | ".join([f"best of 3, the first folder ({min(a.files, a.per_folder):,})"] + [f"{results[n][1]:.2f}" for n in names]) + " |")
    rows += ["", "\n".join(ls_rows)]
    rows.append("")
    rows.append("| " + " | ".join(["", "`find` over the whole mount, best of 3, s", "peak RSS (VmHWM)"]) + " |")
    rows.append("|---|---|---|")
    for n in names:
        rows.append(f"| {n} | {results[n][2]:.2f} | " + (f"{results[n][3]} MiB" if results[n][3] else "—") + " |")
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/scale.py --files {a.files} --batch {a.batch} "
            f"--size {a.size} --per-folder {a.per_folder}` ({a.size}-byte files written one after another by one process, "
            f"{a.per_folder:,} to a folder, uploads running behind; after each batch one `ls -l` of the folder being filled, one "
            f"`find` over the mount and the daemon's RSS).")
    table = meta + "\n\n" + "\n".join(rows)
    print("\n" + table)
    if a.write:
        bench.write_section(a.write, "SCALE", table)


if __name__ == "__main__":
    sys.exit(main())
