#!/usr/bin/env python3
"""The daemon's memory while one very large file goes in: a file of N GiB (random bytes made
on the fly, 1 MiB per write, no source file needed) written through a coldvault mount, then
`coldvault flush --wait` until it is in the bucket. Reports the time until the copy returns,
the time until it is durable, and the daemon's peak RSS over both (VmHWM, counted from after
the mount: the passphrase's Argon2id unlock at start is not what this measures). Garage on
loopback, a fresh loop-mounted ext4.

    scripts/bigfile.py                      # 10 GiB
    scripts/bigfile.py --gib 2

Needs what scripts/bench.py needs (scripts/install-deps.sh --bench) and about 2 × N GiB of disk
(the staged file and the S3 server's copy).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=int, default=10)
    bench.workspace_args(ap, "/var/tmp/coldvault-bigfile")
    a = ap.parse_args()
    with bench.workspace(a, size=f"{3 * a.gib + 10}G") as (work, garage):
        cv = bench.Coldvault(work, garage)
        Path(f"/proc/{cv.pid}/clear_refs").write_text("5")
        block = bytearray(os.urandom(64 << 20))
        t0 = time.monotonic()
        fd = os.open(cv.mnt / "big.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            for i in range(a.gib * 1024):
                off = (i % 64) << 20
                block[off:off + 8] = i.to_bytes(8, "little")  # no two MiB alike
                os.write(fd, memoryview(block)[off:off + (1 << 20)])
        finally:
            os.close(fd)
        returned = time.monotonic() - t0
        rss_written = bench.vmhwm(cv.pid)
        cv.durable()
        durable = time.monotonic() - t0
        peak = bench.vmhwm(cv.pid)
        size = os.stat(cv.mnt / "big.bin").st_size
        cv.stop()
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/bigfile.py --gib {a.gib}`\n")
    print("| file | copy returns, s | durable, s | peak RSS until it returns | peak RSS until durable |")
    print("|---|---|---|---|---|")
    print(f"| {size / 2**30:.0f} GiB | {returned:.1f} | {durable:.1f} | {rss_written} MiB | {peak} MiB |")


if __name__ == "__main__":
    sys.exit(main())
