#!/usr/bin/env python3
"""Make tests/fixtures/v1/bucket: a whole vault written by coldvault 0.1 (format 1).

Run once, with a coldvault 0.1 binary (commit 340dbc6), to produce the fixture that
tests/e2e/test_format_v1_vault.py mounts with every later coldvault. The fixture is never
regenerated: it is the record of what 0.1 wrote (docs/FORMAT.md, "Compatibility").

    git worktree add /tmp/v01 340dbc6 && (cd /tmp/v01 && cargo build --release --bin coldvault)
    scripts/make-v1-bucket-fixture.py /tmp/v01/target/release/coldvault

It mounts a fresh vault on a local s3s-fs, makes files, folders, a symlink, renames, deletions,
attribute and xattr changes, enough attribute changes (10,000) for 0.1 to write a snapshot,
then more changes after the snapshot (a rewrite, a rename, a deletion, new files), flushes,
unmounts, and dumps every object (key, body, user metadata) with the tree a reader must see.
"""
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import boto3
from botocore.config import Config as BotoConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "v1" / "bucket"
PASSPHRASE = "coldvault fixture passphrase v1"
KEY, SECRET = "coldvault-test", "coldvault-test-secret"
PREFIX = "vault"


def data(n, seed):
    """Deterministic bytes that do not compress."""
    out = bytearray()
    block = hashlib.sha256(f"coldvault v1 fixture {seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def main():
    binary = pathlib.Path(sys.argv[1]).resolve()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == "coldvault 0.1.0", version
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cv-v1-fixture-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = tmp / "s3"
    subprocess.run([ROOT / "scripts" / "s3-server.sh", "start", "s3s-fs", str(port), str(srv)], check=True)
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name="us-east-1", config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = "v1-fixture"
    s3.create_bucket(Bucket=bucket)
    cfg, cache, mnt, pf = tmp / "config.toml", tmp / "cache", tmp / "mnt", tmp / "pass"
    mnt.mkdir()
    pf.write_text(PASSPHRASE + "\n")

    def cv(*args):
        r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    try:
        cv("init", "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", endpoint, "--config", cfg,
           "--passphrase-file", pf)
        cv("mount", "--config", cfg, "--cache-dir", cache, "--passphrase-file", pf, "--settle", "0.5", mnt)
        m = mnt
        (m / "photos" / "2024").mkdir(parents=True)
        (m / "photos" / "2024" / "a.jpg").write_bytes(data(300_000, "a1"))
        (m / "photos" / "2024" / "b.cr2").write_bytes(data(200_000, "b"))
        os.utime(m / "photos" / "2024" / "b.cr2", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
        (m / "docs").mkdir()
        (m / "docs" / "old.txt").write_bytes(b"notes from 0.1\n")
        (m / "gone.txt").write_bytes(b"deleted before the snapshot\n")
        (m / "gone2.txt").write_bytes(b"deleted after the snapshot\n")
        (m / "empty").mkdir()
        os.symlink("photos/2024", m / "latest")
        cv("flush", "--wait", m)
        os.setxattr(m / "photos" / "2024" / "a.jpg", "user.rating", b"5")
        os.rename(m / "docs" / "old.txt", m / "docs" / "new.txt")
        os.chmod(m / "docs" / "new.txt", 0o600)
        os.unlink(m / "gone.txt")
        cv("flush", "--wait", m)
        # 0.1 writes a snapshot once 10,000 journal entries have accumulated.
        for k in range(10_000):
            os.chmod(m / "empty", 0o755 if k % 2 else 0o750)
        os.chmod(m / "empty", 0o750)
        cv("flush", "--wait", m)
        deadline = time.time() + 120
        while not any(o["Key"].startswith(f"{PREFIX}/s/") for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])):
            assert time.time() < deadline, "0.1 wrote no snapshot"
            time.sleep(1)
            cv("flush", "--wait", m)
        # After the snapshot: a rewrite (0.1 reuses the path's key), a rename, a deletion, new files.
        (m / "photos" / "2024" / "a.jpg").write_bytes(data(320_000, "a2"))
        os.rename(m / "photos" / "2024" / "b.cr2", m / "photos" / "2024" / "b-renamed.cr2")
        os.unlink(m / "gone2.txt")
        (m / "later").mkdir()
        (m / "later" / "c.txt").write_bytes(b"written after the snapshot\n")
        cv("flush", "--wait", m)
        listing = cv("ls", "--config", cfg, "--passphrase-file", pf, "-R")
        cv("unmount", m)
        if OUT.exists():
            shutil.rmtree(OUT)
        (OUT / "objects").mkdir(parents=True)
        objects = []
        for n, o in enumerate(sorted(s3.list_objects_v2(Bucket=bucket)["Contents"], key=lambda o: o["Key"])):
            r = s3.get_object(Bucket=bucket, Key=o["Key"])
            body = r["Body"].read()
            name = f"{n:03}.bin"
            (OUT / "objects" / name).write_bytes(body)
            objects.append({"key": o["Key"], "file": name, "size": len(body), "metadata": r.get("Metadata", {})})
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        subprocess.run([ROOT / "scripts" / "s3-server.sh", "stop", str(srv)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    expected = {
        "photos": {"type": "dir"},
        "photos/2024": {"type": "dir"},
        "photos/2024/a.jpg": {"type": "file", "sha256": hashlib.sha256(data(320_000, "a2")).hexdigest(),
                              "xattrs": {"user.rating": "5"}},
        "photos/2024/b-renamed.cr2": {"type": "file", "sha256": hashlib.sha256(data(200_000, "b")).hexdigest(),
                                      "mtime_ns": 1_600_000_000_123_456_789},
        "docs": {"type": "dir"},
        "docs/new.txt": {"type": "file", "sha256": hashlib.sha256(b"notes from 0.1\n").hexdigest(), "mode": 0o600},
        "empty": {"type": "dir", "mode": 0o750},
        "latest": {"type": "symlink", "target": "photos/2024"},
        "later": {"type": "dir"},
        "later/c.txt": {"type": "file", "sha256": hashlib.sha256(b"written after the snapshot\n").hexdigest()},
    }
    (OUT / "fixture.json").write_text(json.dumps({
        "written_by": version + " (commit 340dbc6)",
        "passphrase": PASSPHRASE,
        "prefix": PREFIX,
        "objects": objects,
        "expected": expected,
        "ls_by_0.1": listing,
    }, indent=1, sort_keys=True) + "\n")
    print(f"{len(objects)} objects written to {OUT}")


if __name__ == "__main__":
    main()
