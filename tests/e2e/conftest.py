"""Fixtures for coldvault's end-to-end tests: real local S3 servers, real FUSE mounts.

Servers are started by scripts/s3-server.sh on 127.0.0.1 (ports below 32768) and stopped at
the end of the session. Set COLDVAULT_BIN to test another build.
"""
import hashlib
import json
import os
import pathlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid

import boto3
import pytest
from botocore.config import Config as BotoConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("COLDVAULT_BIN", str(ROOT / "target" / "release" / "coldvault"))
KEY, SECRET = "coldvault-test", "coldvault-test-secret"
PASSPHRASE = "correct horse battery staple"

os.environ.setdefault("AWS_ACCESS_KEY_ID", KEY)
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET)
os.environ["AWS_ACCESS_KEY_ID"] = KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# moto (through scripts/moto_server.py) completes a restore this many seconds after the request.
RESTORE_SECONDS = 4
os.environ["COLDVAULT_MOTO_RESTORE_SECONDS"] = str(RESTORE_SECONDS)


# Under CI (CI=true, as .ci/run sets it) scripts/install-deps.sh has installed every tool the
# tests use, so a missing one is a failed install step: the test fails instead of being skipped.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(tool, package):
    """Path of an external tool a test needs. When it is missing the test is skipped, saying
    which package to install, or fails under CI."""
    path = shutil.which(tool)
    if path is None and os.path.exists(os.path.expanduser(f"~/.cargo/bin/{tool}")):
        path = os.path.expanduser(f"~/.cargo/bin/{tool}")
    if path is None:
        msg = f"{tool} is not installed: install {package} (scripts/install-deps.sh does)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port():
    for _ in range(200):
        p = 20000 + (uuid.uuid4().int % 12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port")


class Server:
    def __init__(self, kind, tmp):
        self.kind = kind
        self.data = tmp / f"server-{kind}"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        subprocess.run([str(ROOT / "scripts" / "s3-server.sh"), "start", kind, str(self.port), str(self.data)], check=True)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                               region_name="us-east-1", config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def new_bucket(self):
        name = "cv-" + uuid.uuid4().hex[:12]
        self.s3.create_bucket(Bucket=name)
        return name

    def objects(self, bucket, prefix=""):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    def stop(self):
        subprocess.run([str(ROOT / "scripts" / "s3-server.sh"), "stop", str(self.data)], check=False)
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    started = {}

    def get(kind):
        if kind not in started:
            started[kind] = Server(kind, tmp_path_factory.mktemp("s3"))
        return started[kind]

    yield get
    for s in started.values():
        s.stop()


def run(*args, check=True, input=None, env=None, timeout=300):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, input=input, env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"coldvault {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def policy_proxy(server, v, mode, tmp_path, extra=(), port=None):
    """A proxy in front of `server` that enforces what `coldvault policy --mode MODE [EXTRA]`
    prints for `v`'s bucket and prefix (tests/e2e/policy_proxy.py), on `port` (default: a free
    one): the process, its port and its log."""
    pol = tmp_path / f"policy-{mode}.json"
    pol.write_text(run("policy", "--bucket", v.bucket, "--prefix", v.prefix.rstrip("/"), "--mode", mode, *extra).stdout)
    log = tmp_path / f"proxy-{mode}.log"
    port = port or free_port()
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "policy_proxy.py"), "--port", str(port),
                              "--upstream", f"127.0.0.1:{server.port}", "--policy", str(pol), "--log", str(log)])
    return proxy, port, log


def client_through(server, port):
    """A boto3 client with `server`'s credentials that sends its requests through the proxy on
    `port` (what a credential limited by a policy can do)."""
    creds = server.s3._request_signer._credentials
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=creds.access_key,
                        aws_secret_access_key=creds.secret_key, region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def sha(p):
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def clear_staged(v):
    """Drop the cache dir's staged data (index kept): reads must then come from S3."""
    for d in ("spool", "outbox", "rcache"):
        for f in (v.cache / d).iterdir():
            f.unlink()


def is_mounted(path):
    target = str(pathlib.Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


class Vault:
    """A vault in a fresh bucket, with helpers to mount it."""

    def __init__(self, server, tmp, prefix="vault"):
        self.server = server
        self.tmp = tmp
        self.bucket = server.new_bucket()
        self.prefix = prefix.strip("/") + "/" if prefix else ""
        self.config = tmp / "config.toml"
        self.passfile = tmp / "passphrase"
        self.passfile.write_text(PASSPHRASE + "\n")
        self.cache = tmp / "cache"
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        run("init", "--bucket", self.bucket, "--prefix", prefix, "--endpoint-url", server.endpoint,
            "--config", self.config, "--passphrase-file", self.passfile)

    def mount(self, *extra, settle="0.5"):
        run("mount", "--config", self.config, "--cache-dir", self.cache, "--passphrase-file", self.passfile,
            "--settle", settle, *extra, self.mnt)
        assert is_mounted(self.mnt)

    def unmount(self):
        if is_mounted(self.mnt):
            run("unmount", self.mnt, timeout=120)
        assert not is_mounted(self.mnt)

    def flush(self):
        return run("flush", "--wait", self.mnt, timeout=600)

    def status(self):
        return json.loads(run("status", "--json", self.mnt).stdout)

    def object_key(self, path):
        """The object key of `path`'s current version, from the index (keys are random per
        version: nothing about them can be derived from the path)."""
        db = self.db()
        try:
            ino = 1
            for part in path.split("/"):
                row = db.execute("SELECT ino FROM inodes WHERE parent=? AND name=? AND ino != 1", (ino, part)).fetchone()
                assert row, f"{path} is not in the index"
                ino = row[0]
            return db.execute("SELECT object_key FROM inodes WHERE ino=?", (ino,)).fetchone()[0]
        finally:
            db.close()

    def data_objects(self):
        return self.server.objects(self.bucket, self.prefix + "d/")

    def db(self):
        return sqlite3.connect(f"file:{self.cache / 'index.db'}?mode=ro", uri=True, timeout=10)

    def log(self):
        p = self.cache / "coldvault.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def vault_factory(tmp_path):
    need("fusermount3", "fuse3")
    made = []

    def make(server, prefix="vault"):
        d = tmp_path / f"v{len(made)}"
        d.mkdir()
        v = Vault(server, d, prefix)
        made.append(v)
        return v

    yield make
    for v in made:
        if is_mounted(v.mnt):
            subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
            time.sleep(0.5)
        # Leave nothing running: kill a daemon that outlived its mount.
        subprocess.run(["pkill", "-f", "--", f"--cache-dir {v.cache}"], check=False)


def pytest_collection_modifyitems(config, items):
    """Mount tests need /dev/fuse (no package provides it: a container without it cannot mount);
    without it they are skipped, visibly. A missing fusermount3 is need()'s business."""
    if os.path.exists("/dev/fuse"):
        return
    skip = pytest.mark.skip(reason="no /dev/fuse on this machine")
    for it in items:
        if "vault_factory" in getattr(it, "fixturenames", ()):
            it.add_marker(skip)
