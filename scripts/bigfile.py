#!/usr/bin/env python3
"""Memory and time for one very large file, in and out: a file of N GiB (random bytes made on
the fly, 1 MiB per write, no source file needed) written through a coldvault mount, then
`coldvault flush --wait` until it is in the bucket. Reports the time until the copy returns,
the time until it is durable, and the daemon's peak RSS over both (VmHWM, counted from after
the mount: the passphrase's Argon2id unlock at start is not what this measures). Then, after
unmounting, as after a disaster: `coldvault get` of the file and `coldvault verify --deep`,
each with its time and peak RSS (the whole process, unlocked with a recovery key: the
passphrase's Argon2id adds its 64 MiB at start), and the
restored file's SHA-256 compared with what was written. Garage on loopback, a fresh
loop-mounted ext4.

    scripts/bigfile.py                      # 10 GiB
    scripts/bigfile.py --gib 2

Needs what scripts/bench.py needs (scripts/install-deps.sh --bench) and about 2 × N GiB of disk
(the staged file and the S3 server's copy).
"""
import argparse
import hashlib
import os
import subprocess
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
        written = hashlib.sha256()
        t0 = time.monotonic()
        fd = os.open(cv.mnt / "big.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            for i in range(a.gib * 1024):
                off = (i % 64) << 20
                block[off:off + 8] = i.to_bytes(8, "little")  # no two MiB alike
                os.write(fd, memoryview(block)[off:off + (1 << 20)])
                written.update(memoryview(block)[off:off + (1 << 20)])
        finally:
            os.close(fd)
        returned = time.monotonic() - t0
        rss_written = bench.vmhwm(cv.pid)
        cv.durable()
        durable = time.monotonic() - t0
        peak = bench.vmhwm(cv.pid)
        size = os.stat(cv.mnt / "big.bin").st_size
        cv.stop()
        # A recovery key unlocks without Argon2id (64 MiB for the passphrase), so that the peak
        # RSS is the download's own.
        rk = work / "recovery-key"
        rk.write_text(bench.sh(bench.BIN, "key", "export-recovery", "--config", cv.cfg, "--passphrase-file", cv.pw,
                               env=cv.env).stdout.strip().splitlines()[-1] + "\n")
        common = ["--config", cv.cfg, "--recovery-key-file", rk]
        get_s, get_mib = measured([bench.BIN, "get", *common, "big.bin", work / "restored"], cv.env)
        restored = work / "restored" / "big.bin"
        same = sha256_of(restored) == written.hexdigest()
        restored.unlink()
        verify_s, verify_mib = measured([bench.BIN, "verify", "--deep", *common, "--cache-dir", cv.work / "cache"], cv.env)
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/bigfile.py --gib {a.gib}`\n")
    print("| file | copy returns, s | durable, s | daemon peak RSS until it returns | until durable |"
          " `get`: s / peak RSS | `verify --deep`: s / peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {size / 2**30:.0f} GiB | {returned:.1f} | {durable:.1f} | {rss_written} MiB | {peak} MiB | "
          f"{get_s:.1f} / {get_mib} MiB | {verify_s:.1f} / {verify_mib} MiB |")
    if not same:
        raise SystemExit("the restored file differs from what was written")
    print("\nThe restored file's SHA-256 matches what was written.")


def measured(cmd, env):
    """Run `cmd`; its wall time in seconds and peak RSS in MiB. The peak is the process's own
    VmHWM, read every 20 ms while it runs (wait4's figure would include this script's memory
    at the fork, before the exec)."""
    t = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        peak = max(peak, bench.vmhwm(p.pid) or 0)
        time.sleep(0.02)
    took = time.monotonic() - t
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out}\n{err}")
    return took, peak


def sha256_of(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
