#!/usr/bin/env python3
"""Memory and time of a rebuild from the bucket of a vault of N files (default 1,000,000): a
vault is created on a local s3s-fs server, a snapshot of N file entries (1,000 per folder) is
written into it the way a machine that mounted it would (docs/FORMAT.md section 7, sealed to the
vault's public key by tests/e2e/forge.py) — or, with `--journal`, N journal records in batches of
1,000 and no snapshot, as a write-only machine that never snapshots would leave them — and
then `coldvault ls -R` rebuilds the tree from
it — the same `remote_meta::rebuild` a mount on an empty cache dir and `get` run. Reports the
snapshot's size, the rebuild's wall time and its peak RSS (VmHWM, polled), the process's own,
unlocked with a recovery key so that the passphrase's Argon2id (64 MiB) is not counted.

    scripts/rebuildmem.py [--files N] [--journal] [--work DIR]

Needs s3s-fs (scripts/install-deps.sh), Python's boto3 and cryptography (the test venv).
"""
import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import bench  # noqa: E402
import forge  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--journal", action="store_true", help="journal batches of 1,000 records instead of a snapshot")
    ap.add_argument("--work", default="/var/tmp/coldvault-rebuildmem")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = bench.free_port()
    data = work / "s3"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "coldvault-test", "AWS_SECRET_ACCESS_KEY": "coldvault-test-secret",
           "AWS_REGION": "us-east-1"}
    env.pop("AWS_CA_BUNDLE", None)
    bench.sh(ROOT / "scripts" / "s3-server.sh", "start", "s3s-fs", port, data, env=env)
    try:
        (data / "store" / "vault").mkdir(parents=True, exist_ok=True)
        endpoint = f"http://127.0.0.1:{port}"
        cfg, pw = work / "config.toml", work / "passphrase"
        pw.write_text(secrets.token_hex(16) + "\n")
        bench.sh(bench.BIN, "init", "--bucket", "vault", "--prefix", "v", "--endpoint-url", endpoint, "--config", cfg,
                 "--passphrase-file", pw, env=env)
        rk = work / "recovery-key"
        rk.write_text(bench.sh(bench.BIN, "key", "export-recovery", "--config", cfg, "--passphrase-file", pw,
                               env=env).stdout.strip().splitlines()[-1] + "\n")
        import tomllib
        pub = tomllib.loads(cfg.read_text())["vault"]["public_key"]
        t = time.monotonic()
        machine = secrets.token_hex(8)
        # The vault signs (docs/FORMAT.md section 8): the batches and the snapshot are signed by
        # a machine key it allows, as a machine that mounted it would have.
        signer = forge.Machine(machine)
        bench.sh(bench.BIN, "machine", "allow", signer.token(), "--full", "--config", cfg, "--recovery-key-file", rk, env=env)
        header = base64.b64encode(os.urandom(128)).decode()
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="coldvault-test",
                          aws_secret_access_key="coldvault-test-secret")

        def entry(i):
            return {"op": "upload", "path": f"photos/{i // 1000:04d}/IMG_{i:07d}.CR2", "key": "v/d/" + secrets.token_hex(16),
                    "size": 25_000_000 + i, "mtime_ns": 1_700_000_000_000_000_000 + i, "mode": 0o644, "uid": 1000,
                    "gid": 1000, "class": "DEEP_ARCHIVE", "sha256": secrets.token_hex(32), "header": header}
        size = 0
        if a.journal:
            now = int(time.time() * 1000)
            for first in range(0, a.files, 1000):
                recs = [entry(i) for i in range(first, min(first + 1000, a.files))]
                forge.put_journal(s3, "vault", "v/", pub, recs, machine=machine, first_seq=first + 1, ts_ms=now + first, signer=signer)
            size = sum(o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="vault", Prefix="v/j/")
                       for o in page.get("Contents", []))
        else:
            entries = [entry(i) for i in range(a.files)]
            snap = {"entries": entries, "dead_keys": [], "machine": machine, "covers_seq": a.files,
                    "ts_ms": int(time.time() * 1000), "seen": {machine: a.files}}
            plain = json.dumps(snap, separators=(",", ":")).encode()
            del entries, snap
            head, body, _ = forge.seal(pub, plain)
            del plain
            key = f"s/{machine}/{a.files:016d}"
            s3.put_object(Bucket="vault", Key="v/" + key, Body=body, Metadata={"cvs": signer.sign(pub, key, head)})
            size = len(body)
            del body
        made = time.monotonic() - t
        t = time.monotonic()
        # Output to files: a pipe nobody reads while polling would fill and stop the listing.
        with open(work / "ls.out", "w") as o, open(work / "ls.err", "w") as e:
            p = subprocess.Popen([bench.BIN, "ls", "-R", "--config", cfg, "--recovery-key-file", rk, "photos/0000"], env=env,
                                 stdout=o, stderr=e)
            peak = 0
            while p.poll() is None:
                peak = max(peak, bench.vmhwm(p.pid) or 0)
                time.sleep(0.02)
        took = time.monotonic() - t
        out, err = (work / "ls.out").read_text(), (work / "ls.err").read_text()
        if p.returncode != 0 or out.count("IMG_") != min(1000, a.files):
            raise SystemExit(f"ls failed or listed the wrong files ({out.count('IMG_')}):\n{err[-2000:]}")
    finally:
        bench.sh(ROOT / "scripts" / "s3-server.sh", "stop", data, env=env, check=False)
    what = "journal batches" if a.journal else "snapshot object"
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `scripts/rebuildmem.py --files {a.files}"
          f"{' --journal' if a.journal else ''}` ({what} made in {made:.0f} s)\n")
    print(f"| files | {what} | rebuild (`ls -R` of one folder) | peak RSS | per file |")
    print("|---|---|---|---|---|")
    print(f"| {a.files:,} | {size / 1e6:.0f} MB | {took:.1f} s | {peak} MiB | {peak * 1048576 / a.files:.0f} B |")


if __name__ == "__main__":
    sys.exit(main())
