"""Reading back from S3 through the mount and with `get`: what the daemon asks of S3 for a
sequential read, a folder read file after file, random reads, an archived file in the folder
and a file still only local. A proxy in front of the server holds every GET of a data object
for a while (a distant S3) and logs each with its Range and when it started and ended."""
import hashlib
import json
import os
import random
import subprocess
import sys
import time

from conftest import ROOT, free_port, run, sha

MiB = 1 << 20
SEGMENT, TAG, HEADER = 65536, 16, 128


def enc_len(size):
    return HEADER + size + max(1, -(-size // SEGMENT)) * TAG


class Proxy:
    def __init__(self, server, tmp, latency):
        self.port = free_port()
        self.stats, self.logfile = tmp / "proxy.json", tmp / "proxy.log"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "fault_proxy.py"), "--port", str(self.port),
                                      "--upstream", f"127.0.0.1:{server.port}", "--rate", "0", "--stats", str(self.stats),
                                      "--log", str(self.logfile), "--get-latency", str(latency)], stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        time.sleep(0.5)

    def gets(self, key=None):
        """GETs of data objects so far (of `key` only if given), as (start, end, range)."""
        if not self.logfile.exists():
            return []
        out = []
        for line in self.logfile.read_text().splitlines():
            e = json.loads(line)
            if e["method"] == "GET" and "/d/" in e["path"] and (key is None or e["path"].split("?")[0].endswith(key)):
                out.append((e["t0"], e["t1"], e["range"]))
        return out

    def mark(self):
        return len(self.gets())

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def most_at_once(gets):
    """The most GETs that were in flight at one moment."""
    events = sorted([(t0, 1) for t0, _, _ in gets] + [(t1, -1) for _, t1, _ in gets])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def range_len(r):
    a, b = r.split("=")[1].split("-")
    return int(b) - int(a) + 1


def test_reads_go_ahead_in_parallel_fetch_each_byte_once_and_stay_cheap_when_random(servers, vault_factory, tmp_path):
    s = servers("moto")
    v = vault_factory(s)
    proxy = Proxy(s, tmp_path, 0.05)
    rules = ("--class-rule", "shoot/*.cr2=DEEP_ARCHIVE")
    try:
        v.mount("--endpoint-url", proxy.endpoint, *rules)
        big = os.urandom(40 * MiB + 12345)
        (v.mnt / "big.mov").write_bytes(big)
        (v.mnt / "shoot").mkdir()
        names = []
        for i in range(12):
            # Created in name order: listing order and name order agree, as after most copies.
            (v.mnt / "shoot" / f"f{i:02}.jpg").write_bytes(os.urandom(300_000 + i))
            names.append(f"f{i:02}.jpg")
            if i == 5:
                (v.mnt / "shoot" / "f05b.cr2").write_bytes(os.urandom(300_000))
        want = {n: sha(v.mnt / "shoot" / n) for n in names}
        v.flush()
        v.unmount()  # nothing of the content stays local (--read-cache 0)
        v.mount("--endpoint-url", proxy.endpoint, *rules)
        raw_key = v.object_key("shoot/f05b.cr2")

        # A sequential read: a few large GETs, several in flight at once, each byte once.
        m = proxy.mark()
        assert sha(v.mnt / "big.mov") == hashlib.sha256(big).hexdigest()
        gets = proxy.gets()[m:]
        assert 3 <= len(gets) <= 14, f"{len(gets)} GETs for 40 MiB: {[g[2] for g in gets]}"
        assert most_at_once(gets) >= 3, f"the GETs of a sequential read went one at a time: {gets}"
        assert sum(range_len(g[2]) for g in gets) == enc_len(len(big)), "a byte of the object fetched twice, or one missing"

        # A folder read one file after the other, in name order, skipping the archived raw:
        # every file's content once, fetched ahead of its open (several in flight), the raw
        # never asked for, and no restore requested for it.
        m = proxy.mark()
        for n in names:
            assert sha(v.mnt / "shoot" / n) == want[n], n
        gets = proxy.gets()[m:]
        assert len(gets) == len(names), f"{len(gets)} GETs for {len(names)} files: {[g[2] for g in gets]}"
        assert most_at_once(gets) >= 3, "the files of a folder read in order were fetched one at a time"
        assert not proxy.gets(raw_key), "the archived raw was fetched though nobody opened it"
        assert v.status()["requests"].get("RestoreObject", 0) == 0
        assert not (v.mnt / "shoot" / "f05b.cr2.restore-status").exists()

        # Random reads: each asks for the segments it touches (the kernel reads 128 KiB around
        # a small read), nothing ahead.
        v.unmount()
        v.mount("--endpoint-url", proxy.endpoint, *rules)
        m = proxy.mark()
        rnd = random.Random(3)
        with open(v.mnt / "big.mov", "rb") as f:
            for _ in range(20):
                off = rnd.randrange(0, len(big) - 4096)
                f.seek(off)
                assert f.read(4096) == big[off:off + 4096]
        gets = proxy.gets()[m:]
        assert len(gets) <= 40, f"{len(gets)} GETs for 20 random reads"
        assert all(range_len(g[2]) <= 4 * (SEGMENT + TAG) + HEADER for g in gets), f"read-ahead on random reads: {[g[2] for g in gets]}"

        # The archived file itself: EAGAIN and one restore, as before.
        r = subprocess.run(["cat", str(v.mnt / "shoot" / "f05b.cr2")], capture_output=True)
        assert r.returncode != 0 and b"Resource temporarily unavailable" in r.stderr, r
        deadline = time.time() + 30
        while v.status()["requests"].get("RestoreObject", 0) < 1:
            assert time.time() < deadline, "no restore requested for the archived file opened"
            time.sleep(0.3)
        for _ in range(3):
            subprocess.run(["cat", str(v.mnt / "shoot" / "f05b.cr2")], capture_output=True)
        time.sleep(2)
        assert v.status()["requests"].get("RestoreObject", 0) == 1, "more than one restore for one archived file"

        # A file still only on this machine is read from local disk.
        v.unmount()
        v.mount("--endpoint-url", proxy.endpoint, *rules, settle="3600")
        (v.mnt / "new.txt").write_bytes(b"local only" * 1000)
        m = proxy.mark()
        assert (v.mnt / "new.txt").read_bytes() == b"local only" * 1000
        assert proxy.gets()[m:] == [], "a file still only local was read from S3"
        v.unmount()

        # `get` reads the same way: a few large GETs, several at once.
        cfg = tmp_path / "proxied.toml"
        cfg.write_text(v.config.read_text().replace(s.endpoint, proxy.endpoint))
        m = proxy.mark()
        run("get", "--config", cfg, "--passphrase-file", v.passfile, "big.mov", tmp_path / "out", timeout=300)
        assert sha(tmp_path / "out" / "big.mov") == hashlib.sha256(big).hexdigest()
        gets = proxy.gets()[m:]
        assert 3 <= len(gets) <= 14 and most_at_once(gets) >= 3, f"get: {len(gets)} GETs, {most_at_once(gets)} at once"
    finally:
        proxy.stop()
