"""kill -9 at random moments while writers run, behind an S3 proxy that injects 503s, 500s
after the request took effect and dropped connections, then a rebuild on an empty cache
checked against the bucket-only recovery invariant (docs/SEMANTICS.md).

Each round machine A's writer (tests/e2e/crash_model.py) creates files (up to 9 MiB,
multipart), rewrites them in place (O_TRUNC, and partial writes), saves atomically
(`.NAME.tmpXXXX` renamed over NAME), renames files and folders, deletes files, deletes files
while open for reading (and reads them to the end), until its daemon is killed. A second
machine B joins the vault during part of the loop (a mount on an empty cache dir) and writes in
its own folder `m2/`; it is killed once too. Half of the kills land at a random moment, half
inside a close, rename or unlink (0-5 ms into the syscall). The model counts an operation only once its
syscall returned success; the one operation a kill cut is resolved after the remount to its
state before, after, or (a write) part-written, and nothing else. At the end: a last mount,
`flush --wait`, unmount, and a new machine rebuilds from the bucket alone: every folder, every
file name and every SHA-256 of the tree must be the model's.

COLDVAULT_KILLS (default 20) sets the rounds, COLDVAULT_CRASH_SEED (default 2026) the seed.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time

from conftest import ROOT, Vault, free_port, is_mounted, run
from crash_model import SYSCALLS, Machine, diff, walk

KILLS = int(os.environ.get("COLDVAULT_KILLS", "20"))
SEED = int(os.environ.get("COLDVAULT_CRASH_SEED", "2026"))
FLUSH_TIMEOUT = int(os.environ.get("COLDVAULT_FLUSH_TIMEOUT", "300"))
# Machine B: joins at this round, is killed with A at that one, flushes and leaves at the last.
B_JOIN, B_KILL, B_LEAVE = (min(3, KILLS - 1), min(8, KILLS - 1), min(13, KILLS - 1)) if KILLS >= 4 else (None, None, None)
SIZES_A = [0, 1, 5_000, 70_000, 300_000, 9 << 20]
SIZES_B = [0, 1, 5_000, 70_000, 300_000, 3 << 20]


def daemon_pids(v):
    r = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {v.cache}"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def kill9(v):
    pids = daemon_pids(v)
    assert pids, f"the daemon of {v.cache} is running"
    for p in pids:
        os.kill(p, 9)


def log_excerpt(v, paths=(), tail=4000):
    """The daemon log's lines naming the paths, and its tail."""
    text = v.log()
    names = {os.path.basename(p.rstrip("/")) for p in paths}
    hits = [ln for ln in text.splitlines() if any(n and n in ln for n in names)]
    return "lines naming them:\n" + "\n".join(hits[-40:]) + f"\n--- tail of {v.cache}/coldvault.log:\n" + text[-tail:]


def second_machine(v, tmp):
    """Machine B: the same vault's config on an empty cache dir of its own (a new machine)."""
    d = tmp / "m2"
    d.mkdir()
    b = Vault.__new__(Vault)
    b.server, b.tmp, b.bucket, b.prefix = v.server, d, v.bucket, v.prefix
    b.config, b.passfile = v.config, v.passfile
    b.cache, b.mnt = d / "cache", d / "mnt"
    b.mnt.mkdir()
    return b


def mount_retrying(v, args, what):
    """A mount through the faults; one whose start-up the faults broke is tried again."""
    for i in range(4):
        try:
            return v.mount(*args, settle="0.2")
        except AssertionError as e:
            if i == 3:
                raise AssertionError(f"{what}: mount failed 4 times through the faults: {e}\n{v.log()[-3000:]}")
            subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
            time.sleep(1)


def check_round(m, v, rnd, skip=()):
    """After a remount: the cut operation resolved, then names, folders and sizes as the model says."""
    try:
        cut = m.resolve(rnd)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log_excerpt(v, [])}")
    want_dirs, want_files = m.expected()
    got_dirs, got_files = walk(v.mnt, m.base, skip=skip)
    d = diff(want_dirs, want_files, got_dirs, got_files, sizes_only=True)
    assert not d, (f"[{m.name}] seed {SEED} round {rnd}: after kill -9 and remount the machine itself shows "
                   f"(path, expected, got): {d[:20]}\nlast operations: {m.log[-15:]}\n{log_excerpt(v, [x[0] for x in d])}")
    return cut


class TargetedKill:
    """kill -9 of v's daemon while m's writer is inside its next `syscall` (a close after
    writing, a rename, an unlink, ...): the writer's hook wakes a thread that lets the syscall
    run `delay` seconds (0-5 ms, seeded), then kills; the kill lands before, during or after
    the daemon's commit."""

    def __init__(self, m, v, syscall, delay):
        self.pids = daemon_pids(v)
        assert self.pids, f"the daemon of {v.cache} is running"
        self.go, self.what, self.delay = threading.Event(), None, delay
        self.t = threading.Thread(target=self._run)
        self.t.start()
        m.trap = (syscall, self.fire)
        self.syscall = syscall
        self.m = m

    def fire(self, what):
        self.what = what
        self.go.set()

    def _run(self):
        if self.go.wait(10):
            end = time.perf_counter() + self.delay
            while time.perf_counter() < end:
                pass
        for p in self.pids:
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass

    def wait(self):
        self.t.join()
        self.m.trap = None
        return f"in {self.what} +{self.delay * 1e3:.1f} ms" if self.what else f"random moment (no {self.syscall} in 10 s)"


class Writer:
    def __init__(self, m, v, rnd):
        self.stop = threading.Event()
        self.t = threading.Thread(target=m.run, args=(rnd, self.stop, lambda: bool(daemon_pids(v))))
        self.m = m
        self.t.start()

    def halt(self):
        self.stop.set()
        self.t.join(timeout=120)
        assert not self.t.is_alive(), f"[{self.m.name}] the writer stopped"
        if self.m.crashed:
            raise self.m.crashed


def flush_wait(v, what):
    try:
        r = run("flush", "--wait", v.mnt, check=False, timeout=FLUSH_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what}: flush --wait hung\nstatus: {json.dumps(v.status(), indent=1)[:4000]}\nlog: {v.log()[-6000:]}")
    assert r.returncode == 0, f"{what}: {r.stderr}\nstatus: {json.dumps(v.status(), indent=1)[:4000]}\nlog: {v.log()[-6000:]}"
    assert v.status()["failed_files"] == 0


def test_kill_9_loop_with_faults_keeps_every_closed_file(servers, vault_factory, tmp_path):
    t0 = time.monotonic()
    s = servers("s3s-fs")
    v = vault_factory(s)
    cache_a = v.cache
    b = None
    port = free_port()
    stats = tmp_path / "faults.json"
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "fault_proxy.py"), "--port", str(port),
                              "--upstream", f"127.0.0.1:{s.port}", "--rate", "0.1", "--seed", "7", "--stats", str(stats),
                              "--log", str(tmp_path / "requests.log")], stderr=subprocess.DEVNULL)
    rng = random.Random(SEED)
    a = Machine("A", v.mnt, "", SEED, SIZES_A)
    mb = None
    wb = None
    kills = {"A": 0, "B": 0}
    kill_log = []  # (machine, round, where the kill landed, what the remount found of the cut operation)
    args = ("--endpoint-url", f"http://127.0.0.1:{port}")
    try:
        time.sleep(0.5)
        last_kill = None
        for k in range(KILLS):
            mount_retrying(v, args, f"A round {k}")
            cut = check_round(a, v, k, skip={"m2"})
            if last_kill:
                kill_log.append((*last_kill, cut or "nothing in flight"))
            if k == B_JOIN:
                b = second_machine(v, tmp_path)
                mount_retrying(b, args, "B joining")
                mb = Machine("B", b.mnt, "m2", SEED, SIZES_B, pause=0.05)
                os.mkdir(b.mnt / "m2")
                wb = Writer(mb, b, k)
            if k == B_LEAVE and wb:
                wb.halt()
                check_round(mb, b, k)
                flush_wait(b, "B leaving")
                b.unmount()
                wb = None
            # Half of the rounds kill at a random moment, half inside a close or a namespace change.
            targeted, syscall, delay = rng.random() < 0.5, rng.choice(SYSCALLS), rng.uniform(0, 0.005)
            wa = Writer(a, v, k)
            time.sleep(rng.uniform(0.4, 2.4))
            tb = TargetedKill(mb, b, "rename", rng.uniform(0, 0.005)) if k == B_KILL and wb else None
            if targeted:
                what = TargetedKill(a, v, syscall, delay).wait()
            else:
                kill9(v)
                what = "random moment"
            last_kill = ("A", k, what)
            kills["A"] += 1
            wa.halt()
            subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
            assert not is_mounted(v.mnt)
            if tb:
                what_b = tb.wait()
                kills["B"] += 1
                wb.halt()
                subprocess.run(["fusermount3", "-uz", str(b.mnt)], check=False)
                mount_retrying(b, args, "B after its kill")
                kill_log.append(("B", k, what_b, check_round(mb, b, k) or "nothing in flight"))
                wb = Writer(mb, b, k + 100)
        loop_s = time.monotonic() - t0
        # A last mount, still through the faults, uploads everything that was acknowledged.
        mount_retrying(v, args, "A, last mount")
        kill_log.append((*last_kill, check_round(a, v, KILLS, skip={"m2"}) or "nothing in flight"))
        t1 = time.monotonic()
        flush_wait(v, "A, last flush")
        flush_s = time.monotonic() - t1
        # What the machine itself shows, to tell a local loss from a loss in the bucket.
        local_dirs, local_files = walk(v.mnt, skip={"m2"})
        v.unmount()
        faults = json.loads(stats.read_text())
        assert faults.get("503", 0) and faults.get("500-after", 0) and faults.get("drop-after", 0), faults
    finally:
        proxy.terminate()
        proxy.wait()
        if wb:
            wb.stop.set()
            wb.t.join(timeout=60)
        for w in (b, v):
            if w is not None and is_mounted(w.mnt):
                subprocess.run(["fusermount3", "-uz", str(w.mnt)], check=False)
        for c in ([b] if b else []) + [v]:
            for p in daemon_pids(c):
                os.kill(p, 9)
    for m in (a, mb):
        if m is None:
            continue
        assert not m.bad_reads, f"[{m.name}] a file deleted while open read back wrong (path, expected, got): {m.bad_reads}"
    assert sum(a.done.values()) > 150 and all(a.done.values()), f"the writer got far enough: {a.done}"
    # Disaster recovery: an empty cache, straight to the server.
    t2 = time.monotonic()
    v.cache = tmp_path / "rebuilt"
    v.mount()
    got_dirs, got_files = walk(v.mnt, hashes=True)
    rebuild_s = time.monotonic() - t2
    want_dirs, want_files = a.expected()
    if mb:
        d, f = mb.expected()
        want_dirs |= d
        want_files.update(f)
    bad = diff(want_dirs, want_files, got_dirs, got_files)
    if bad:
        def local(p):
            if p.endswith("/"):
                return "folder" if p[:-1] in local_dirs else "absent"
            return f"{local_files[p][0]} B" if p in local_files else "absent"
        where = {p: local(p) for p, _, _ in bad if not p.startswith("m2")}
        conflicts = [ln for ln in v.log().splitlines() if "conflict" in ln.lower()]
        raise AssertionError(f"seed {SEED}: the rebuild differs from the model in {len(bad)} path(s) (path, expected, got): "
                             f"{bad[:25]}\nwhat machine A showed before its last unmount: {where}\n"
                             f"conflicts in the rebuild's log: {conflicts[:10]}\nlast operations A: {a.log[-10:]}\n"
                             f"--- machine A's daemon log\n" + log_excerpt(_at(cache_a), [x[0] for x in bad]))
    v.unmount()
    total_s = time.monotonic() - t0
    # The figures, to quote (docs/TESTING.md).
    mbs = sum(x[0] for x in want_files.values()) / 1e6
    print(f"\ncrash loop figures (seed {SEED}): {KILLS} rounds, kill -9 of A x{kills['A']}, of B x{kills['B']}")
    for m in (a, mb):
        if m is None:
            continue
        print(f"  {m.name}: operations acknowledged {sum(m.done.values())}: " + ", ".join(f"{k} {n}" for k, n in m.done.items())
              + f"; {m.bytes_written / 1e6:.0f} MB written")
        print(f"  {m.name}: cut by a kill (kind -> state found after remount): {dict(sorted(m.cut.items()))}")
        if m.errors_alive:
            print(f"  {m.name}: operations failed with the daemon running: {m.errors_alive}")
    print("  each kill: where it landed -> the cut operation as the remount found it:")
    for m_, k_, what, cut in kill_log:
        print(f"    {m_} round {k_:2d}: {what} -> {cut}")
    print(f"  faults injected: {faults}")
    print(f"  rebuilt tree: {len(want_files)} files ({mbs:.0f} MB), {len(want_dirs)} folders, all names and SHA-256 as the model")
    print(f"  time: loop {loop_s:.0f} s, last flush --wait {flush_s:.0f} s, rebuild + read back {rebuild_s:.0f} s, total {total_s:.0f} s")


def _at(cache):
    """A Vault standing for a cache dir, for its log."""
    w = Vault.__new__(Vault)
    w.cache = cache
    return w
