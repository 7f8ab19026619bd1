"""kill -9 at random moments while a writer runs, behind an S3 proxy that injects 503s, 500s
after the request took effect and dropped connections: every file whose close() succeeded
reads back byte-identical after a final flush and a rebuild on an empty cache."""
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

from conftest import ROOT, free_port, is_mounted, run

KILLS = int(os.environ.get("COLDVAULT_KILLS", "20"))


def daemon_pids(v):
    r = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {v.cache}"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def writer(mnt, rng, stop, closed, lock, renaming):
    """Writes new files (some large enough for multipart) and renames closed ones until
    stopped; records what was acknowledged. A rename the kill interrupted may or may not have
    happened: it goes to `renaming` as (old, new) and either name is right afterwards."""
    n = 0
    while not stop.is_set():
        n += 1
        name = f"w{rng.randrange(1 << 30):08x}-{n}.bin"
        size = rng.choice([0, 1, 5_000, 70_000, 300_000, 9 << 20])
        data = rng.randbytes(size)
        try:
            with open(mnt / name, "wb") as f:
                f.write(data)
            # close() returned: from here on the file is promised.
            with lock:
                closed[name] = hashlib.sha256(data).hexdigest()
            if rng.random() < 0.2:
                with lock:
                    old = rng.choice(sorted(closed))
                new = "r-" + old
                try:
                    os.rename(mnt / old, mnt / new)
                except OSError:
                    with lock:
                        renaming.append((old, new))
                    raise
                with lock:
                    closed[new] = closed.pop(old)
        except OSError:
            return  # the daemon was killed under us: whatever was not closed is not promised


def tree_hashes(mnt):
    got = {}
    for p in mnt.iterdir():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        got[p.name] = h.hexdigest()
    return got


def test_kill_9_loop_with_faults_keeps_every_closed_file(servers, vault_factory, tmp_path):
    s = servers("s3s-fs")
    v = vault_factory(s)
    port = free_port()
    stats = tmp_path / "faults.json"
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "fault_proxy.py"), "--port", str(port),
                              "--upstream", f"127.0.0.1:{s.port}", "--rate", "0.1", "--seed", "7", "--stats", str(stats),
                              "--log", str(tmp_path / "requests.log")], stderr=subprocess.DEVNULL)
    rng = random.Random(2026)
    closed = {}
    renaming = []
    lock = threading.Lock()
    args = ("--endpoint-url", f"http://127.0.0.1:{port}")
    try:
        time.sleep(0.5)
        for k in range(KILLS):
            v.mount(*args, settle="0.2")
            stop = threading.Event()
            t = threading.Thread(target=writer, args=(v.mnt, random.Random(k), stop, closed, lock, renaming))
            t.start()
            time.sleep(rng.uniform(0.3, 2.0))
            pids = daemon_pids(v)
            assert pids, "the daemon is running"
            for p in pids:
                os.kill(p, 9)
            stop.set()
            t.join(timeout=60)
            assert not t.is_alive()
            subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
            assert not is_mounted(v.mnt)
        # A last mount, still through the faults, uploads everything that was acknowledged.
        v.mount(*args, settle="0.2")
        try:
            r = run("flush", "--wait", v.mnt, check=False, timeout=int(os.environ.get("COLDVAULT_FLUSH_TIMEOUT", "300")))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flush --wait hung\nstatus: {json.dumps(v.status(), indent=1)[:4000]}\nlog: {v.log()[-6000:]}")
        assert r.returncode == 0, f"{r.stderr}\nstatus: {json.dumps(v.status(), indent=1)[:4000]}\nlog: {v.log()[-6000:]}"
        assert v.status()["failed_files"] == 0
        # What the machine itself shows, to tell a local loss from a loss in the bucket.
        local = set(os.listdir(v.mnt))
        v.unmount()
        faults = json.loads(stats.read_text())
        assert faults.get("503", 0) and faults.get("500-after", 0) and faults.get("drop-after", 0), faults
    finally:
        proxy.terminate()
        proxy.wait()
    assert len(closed) > 50, f"the writer got far enough ({len(closed)} files)"
    # Disaster recovery: an empty cache, straight to the server.
    v.cache = tmp_path / "rebuilt"
    v.mount()
    got = tree_hashes(v.mnt)
    # An interrupted rename: the name that exists is the one the file has.
    for old, new in renaming:
        if old in closed and old not in local and new in local:
            closed[new] = closed.pop(old)
    missing = sorted(set(closed) - set(got))
    where = {n: ("also missing on the machine itself" if n not in local else "present on the machine, lost in the bucket") for n in missing}
    assert not missing, f"{len(missing)} acknowledged file(s) lost: {where}; interrupted renames: {renaming}"
    wrong = [n for n in closed if got[n] != closed[n]]
    assert not wrong, f"{len(wrong)} file(s) read back different: {wrong[:10]}"
    v.unmount()
