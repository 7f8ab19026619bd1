#!/usr/bin/env python3
"""Reading back through the mount, side by side: a 1 GiB file and a folder of 200 × 1 MiB,
written through each system, made durable, then read back cold (the system remounted with an
empty cache, the page cache dropped) into a local folder, and beside them the same objects
fetched straight from the bucket (`rclone copy --transfers 16` of coldvault's own encrypted
objects: the floor for any reader of that bucket). One Garage S3 server on loopback, a fresh
loop-mounted ext4 for the data, the server and every cache, as in scripts/bench.py.

    scripts/readbench.py                              # every system
    scripts/readbench.py --systems coldvault --perf   # coldvault alone, with a perf profile
    scripts/readbench.py --write docs/BENCHMARKS.md   # replace the READ section of that file

Reads, each timed on its own:
  big       `cp MNT/big/f.bin OUT/`                       1 GiB, one file, sequential
  folder    `cp -r MNT/folder OUT/`                       200 × 1 MiB, one file after the other
  parallel  `xargs -P 8 cp` of the same folder            8 files read at once (Samba, robocopy /MT)
  random    1000 reads of 4 KiB at random offsets of the 1 GiB file (seconds; should stay cheap)
Each read is timed on a fresh mount (remounted with an empty cache, page cache dropped), and
every copy is compared with its source afterwards (untimed). Peak RSS is the daemon's highest
VmHWM over the reads (reset after each remount); the script also prints the RSS sampled every
50 ms during each read.

Needs what scripts/bench.py needs (scripts/install-deps.sh --bench).
"""
import argparse
import filecmp
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

BIG = 1 << 30
FOLDER = (200, 1 << 20)


def make_source(src):
    (src / "big").mkdir(parents=True, exist_ok=True)
    (src / "folder").mkdir(exist_ok=True)
    f = src / "big" / "f.bin"
    if not f.exists() or f.stat().st_size != BIG:
        with open(f, "wb") as o:
            for _ in range(BIG >> 23):
                o.write(os.urandom(8 << 20))
    n, size = FOLDER
    for i in range(n):
        p = src / "folder" / f"f{i:04}.bin"
        if not p.exists():
            p.write_bytes(os.urandom(size))


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass  # not root: the page cache stays warm for every system alike


class Sampler:
    """The daemon's RSS every 50 ms while a read runs (its maximum)."""

    def __init__(self, pid):
        self.pid, self.max, self.done = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done.wait(0.05):
            self.max = max(self.max, bench.proc_mib(self.pid, "VmRSS") or 0)

    def stop(self):
        self.done.set()
        self.t.join()
        return self.max


def rclone_env(garage):
    e = {**os.environ, "RCLONE_CONFIG_GS3_TYPE": "s3", "RCLONE_CONFIG_GS3_PROVIDER": "Other",
         "RCLONE_CONFIG_GS3_ENDPOINT": garage.endpoint, "RCLONE_CONFIG_GS3_ACCESS_KEY_ID": garage.key,
         "RCLONE_CONFIG_GS3_SECRET_ACCESS_KEY": garage.secret, "RCLONE_CONFIG_GS3_REGION": "garage",
         "RCLONE_CONFIG_GS3_FORCE_PATH_STYLE": "true"}
    e.pop("AWS_CA_BUNDLE", None)
    return e


def direct_fetch(work, garage, out):
    """coldvault's data objects fetched straight from its bucket, 16 at a time, into `out`:
    the 1 GiB one, then the 200 of the folder (told apart by size)."""
    e = rclone_env(garage)
    listing = bench.sh("rclone", "lsf", "-R", "--files-only", "--format", "sp", "gs3:coldvault/bench/d", env=e).stdout
    objs = [(int(line.split(";")[0]), line.split(";")[1]) for line in listing.splitlines() if ";" in line]
    big = [k for sz, k in objs if sz > BIG]
    small = [k for sz, k in objs if FOLDER[1] < sz < 2 * FOLDER[1]]
    if len(big) != 1 or len(small) != FOLDER[0]:
        raise SystemExit(f"readbench: expected 1 + {FOLDER[0]} data objects, found {len(big)} + {len(small)}")
    res = {}
    for name, keys in (("big", big), ("folder", small)):
        lst = work / f"direct-{name}.txt"
        lst.write_text("\n".join(keys) + "\n")
        dest = out / f"direct-{name}"
        drop_caches()
        t = time.monotonic()
        bench.sh("rclone", "copy", "--transfers", "16", "--files-from", lst, "gs3:coldvault/bench/d", dest, env=e)
        res[name] = time.monotonic() - t
        got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        print(f"  direct fetch: {name}: {res[name]:.2f} s ({got >> 20} MiB)", flush=True)
        shutil.rmtree(dest)
    return res


def random_reads(path, n=1000, size=4096, seed=7):
    rnd = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        t = time.monotonic()
        for _ in range(n):
            off = rnd.randrange(0, BIG - size) & ~4095
            if len(os.pread(fd, size, off)) != size:
                raise SystemExit("readbench: short random read")
        return time.monotonic() - t
    finally:
        os.close(fd)


def run_system(cls, work, src, garage, out, reads, perf):
    s = cls(work, garage)
    res = {}
    try:
        bench.sh("cp", "-r", src / "big", src / "folder", s.mnt)
        s.durable()
        for r in reads:
            # Every read cold: nothing the system kept of an earlier read (s3fs keeps what it
            # downloaded on disk) serves this one.
            s.remount()
            if s.pid:
                Path(f"/proc/{s.pid}/clear_refs").write_text("5")
            dest = out / r
            dest.mkdir(parents=True)
            drop_caches()
            p = bench.Perf(s.pid, perf / f"read-{r}.txt") if perf and s.pid else None
            sampler = Sampler(s.pid) if s.pid else None
            t = time.monotonic()
            if r == "big":
                bench.sh("cp", s.mnt / "big" / "f.bin", dest)
            elif r == "folder":
                bench.sh("cp", "-r", s.mnt / "folder", dest)
            elif r == "parallel":
                (dest / "folder").mkdir()
                bench.sh("sh", "-c", f"find '{s.mnt / 'folder'}' -type f -print0 | xargs -0 -P 8 -n 25 cp -t '{dest / 'folder'}'")
            elif r == "random":
                random_reads(s.mnt / "big" / "f.bin")
            res[r] = time.monotonic() - t
            rss = sampler.stop() if sampler else None
            if p:
                p.stop()
            # Untimed: the copy must be what was written.
            if r == "big" and not filecmp.cmp(src / "big" / "f.bin", dest / "f.bin", shallow=False):
                raise SystemExit(f"readbench: {cls.name}: the 1 GiB file read back differs")
            if r in ("folder", "parallel"):
                m, mis, err = filecmp.cmpfiles(src / "folder", dest / "folder", sorted(os.listdir(src / "folder")), shallow=False)
                if mis or err:
                    raise SystemExit(f"readbench: {cls.name}: {len(mis) + len(err)} files of the folder read back differ or are missing")
            shutil.rmtree(dest)
            print(f"  {cls.name}: {r}: {res[r]:.2f} s" + (f", RSS now {rss} MiB max" if rss else ""), flush=True)
            res["rss"] = max(res.get("rss") or 0, s.rss() or 0) or None
    finally:
        s.stop()
    return res


def table(results, direct, reads):
    head = ["system"] + [{"big": "1 GiB file", "folder": "200 × 1 MiB, `cp -r`", "parallel": "200 × 1 MiB, 8 at once",
                          "random": "1000 random 4 KiB reads"}[r] for r in reads] + ["peak RSS"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        row = [name]
        for w in reads:
            if w not in r:
                row.append("—")
                continue
            base = direct.get("folder" if w == "parallel" else w)
            row.append(f"{r[w]:.2f}" + (f" ({r[w] / base:.2f}×)" if base and w != "random" else ""))
        row.append(f"{r['rss']} MiB" if r.get("rss") else "—")
        rows.append("| " + " | ".join(row) + " |")
    if direct:
        row = ["direct fetch, 16 parallel (`rclone copy`)"]
        for w in reads:
            base = direct.get("folder" if w == "parallel" else w)
            row.append(f"{base:.2f}" if base and w != "random" else "—")
        row.append("—")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="coldvault,rclone,rclone-crypt,s3fs")
    ap.add_argument("--reads", default="big,folder,parallel,random")
    ap.add_argument("--perf", action="store_true", help="perf profile of coldvault per read (docs/profiles/LABEL/)")
    ap.add_argument("--label", default="now")
    ap.add_argument("--write", help="replace the section between the READ markers of this file with the table")
    bench.workspace_args(ap, "/var/tmp/coldvault-readbench")
    a = ap.parse_args()
    systems = [s for s in a.systems.split(",") if s]
    reads = [r for r in a.reads.split(",") if r]
    for tool in ["garage", "rclone", "fusermount3"] + (["s3fs"] if "s3fs" in systems else []) + (["perf"] if a.perf else []):
        if not shutil.which(tool):
            raise SystemExit(f"readbench: {tool} is not installed (scripts/install-deps.sh --bench)")
    results, direct = {}, {}
    with bench.workspace(a, size="20G") as (work, garage):
        src, out = work / "src", work / "out"
        make_source(src)
        for name in systems:
            cls = bench.SYSTEMS[name]
            perf = None
            if a.perf and name == "coldvault":
                perf = bench.ROOT / "docs" / "profiles" / a.label
                perf.mkdir(parents=True, exist_ok=True)
            print(f"{cls.name} …", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            results[cls.name] = run_system(cls, work, src, garage, out, reads, perf)
            if name == "coldvault":
                direct = direct_fetch(work, garage, out)
    t = table(results, direct, reads)
    cpu = bench.sh("sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo").stdout.split("\n")
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu[0]} cores ({cpu[1].split(':')[-1].strip()}), "
            f"coldvault {bench.sh(bench.BIN, '--version', check=False).stdout.strip()}: `scripts/readbench.py --systems {a.systems} "
            f"--reads {a.reads}`. Seconds, cold (remounted, page cache dropped); ratios to the direct fetch of the same objects.")
    print("\n" + meta + "\n\n" + t)
    if a.write:
        bench.write_section(a.write, "READ", meta + "\n\n" + t)


if __name__ == "__main__":
    sys.exit(main())
