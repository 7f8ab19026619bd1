"""Power cuts for real: the cache dir lives on `dropfs` (tests/dropfs), a FUSE file system that
keeps every unsynced write in memory and drops it at a cut, as a disk loses its write cache when
the power goes. Each round a writer creates, rewrites (O_TRUNC and in place), saves atomically
(temp file renamed over) and deletes files in a mounted vault, calling fsync on some of them;
at a random moment the daemon is killed and the staging disk cut at once. Then the disk comes
back with only what was synced, the vault mounts again, and every file whose fsync returned
must read back with that content or a later one the writer closed (a later write may or may
not have been kept), every deletion fsync'd after must hold, and nothing may read as EIO. At
the end a new machine rebuilds from the bucket and must show the same.

The checks are about what fsync acknowledged (SEMANTICS: `fsync` survives a power cut); a close
without fsync only has to leave a readable file (the group commit bounds what is lost)."""
import os
import random
import subprocess
import time

import pytest

from conftest import ROOT, is_mounted, need, sha

SEED = int(os.environ.get("COLDVAULT_CUT_SEED", "2027"))
ROUNDS = int(os.environ.get("COLDVAULT_CUTS", "8"))
DROPFS = ROOT / "target" / "release" / "dropfs"


def dropfs_bin():
    if not DROPFS.exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{DROPFS} is missing: scripts/test.sh builds it (cargo build --manifest-path tests/dropfs/Cargo.toml)")
        pytest.skip("dropfs not built (cargo build --release --manifest-path tests/dropfs/Cargo.toml --target-dir target)")
    return DROPFS


class Disk:
    """The staging disk: `backing` survives cuts; `mnt` is dropfs over it while powered."""

    def __init__(self, tmp):
        self.backing = tmp / "disk"
        self.mnt = tmp / "cache"
        self.ctl = tmp / "dropfs.cut"
        self.backing.mkdir()
        self.mnt.mkdir()
        self.proc = None

    def power_on(self):
        self.proc = subprocess.Popen([str(dropfs_bin()), str(self.backing), str(self.mnt), "--control", str(self.ctl)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(100):
            if is_mounted(self.mnt):
                return
            time.sleep(0.05)
        raise AssertionError("dropfs did not mount")

    def cleanup(self):
        """After a failure: no dropfs left mounted or running."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False, capture_output=True)

    def cut(self):
        self.ctl.touch()
        _, err = self.proc.communicate(timeout=30)
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False, capture_output=True)
        return err.strip()


def staged(disk):
    """The staging files on the disk, with sizes (for a failure's message)."""
    out = []
    for d in ("spool", "outbox"):
        for f in sorted((disk.backing / d).iterdir()):
            out.append(f"{d}/{f.name} {f.stat().st_size}")
    return "\n".join(out)


def daemon_pids(v):
    r = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {v.cache}"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def data(rng, n):
    return rng.randbytes(n)


def test_power_cuts_keep_every_fsynced_file(servers, vault_factory, tmp_path, request):
    need("fusermount3", "fuse3")
    v = vault_factory(servers("s3s-fs"))
    disk = Disk(tmp_path)
    # Runs after vault_factory's teardown (finalizers run in reverse): the vault is unmounted first.
    request.addfinalizer(disk.cleanup)
    v.cache = disk.mnt
    rng = random.Random(SEED)
    # name -> (acknowledged content or None if an fsync'd deletion, later closed contents)
    acked = {}
    closed = {}  # name -> every content a close returned for since its last fsync
    maybe_gone = set()  # names deleted since their last fsync (the deletion may have been kept)
    cuts, fsyncs, dropped = 0, 0, []
    for rnd in range(ROUNDS):
        disk.power_on()
        v.mount()
        # After the cut: what fsync acknowledged is there.
        for name, want in sorted(acked.items()):
            p = v.mnt / name
            later = closed.get(name, [])
            if want is None:
                ok = not p.exists() or (p.exists() and any(sha(p) == c for c in later))
                assert ok, f"seed {SEED} round {rnd}: {name} was deleted and fsync'd, yet it is back"
                continue
            if not p.exists() and name in maybe_gone:
                continue
            assert p.exists(), f"seed {SEED} round {rnd}: {name} fsync'd is gone after a power cut\n{v.log()[-3000:]}"
            got = sha(p)
            assert got == want or got in later, (f"seed {SEED} round {rnd}: {name} reads neither its fsync'd content nor a later one"
                                                 f" ({p.stat().st_size} bytes)\n{staged(disk)}\n{v.log()[-3000:]}")
        # Nothing reads as EIO.
        for p in v.mnt.iterdir():
            if p.is_file():
                sha(p)
        # The writer, until the cut.
        deadline = time.time() + rng.uniform(0.5, 2.5)
        while time.time() < deadline:
            name = f"f{rng.randrange(12)}.bin"
            p = v.mnt / name
            kind = rng.choice(["create", "rewrite", "patch", "atomic", "delete"])
            # Few fsyncs, and none in the last moments: the cut must find unsynced data.
            sync = rng.random() < 0.2 and time.time() < deadline - 0.3
            try:
                if kind == "delete":
                    if p.exists():
                        os.unlink(p)
                        if sync:
                            fd = os.open(v.mnt, os.O_RDONLY)
                            os.fsync(fd)
                            os.close(fd)
                            acked[name] = None
                            fsyncs += 1
                            maybe_gone.discard(name)
                            closed.pop(name, None)
                        else:
                            # The deletion may be lost in a cut, and anything closed before it
                            # (made durable by a later fsync of any file) may come back: keep them.
                            maybe_gone.add(name)
                    continue
                if kind == "patch" and p.exists():
                    fd = os.open(p, os.O_WRONLY)
                    os.pwrite(fd, data(rng, 300), rng.randrange(4000))
                elif kind == "atomic":
                    tmp = v.mnt / f".{name}.tmp{rng.randrange(1 << 20)}"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.write(fd, data(rng, rng.randrange(1, 200_000)))
                    if sync:
                        os.fsync(fd)
                    os.close(fd)
                    os.rename(tmp, p)
                    if sync:
                        dfd = os.open(v.mnt, os.O_RDONLY)
                        os.fsync(dfd)
                        os.close(dfd)
                    fd = None
                else:
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.write(fd, data(rng, rng.randrange(1, 200_000)))
                if fd is not None:
                    if sync:
                        os.fsync(fd)
                    os.close(fd)
                digest = sha(p)
                closed.setdefault(name, []).append(digest)
                if sync:
                    acked[name] = digest
                    closed[name] = [digest]
                    maybe_gone.discard(name)
                    fsyncs += 1
            except OSError as e:
                raise AssertionError(f"seed {SEED} round {rnd}: {kind} {name}: {e}\n{v.log()[-3000:]}")
        # The power goes: the daemon dies with the disk's write cache.
        for pid in daemon_pids(v):
            os.kill(pid, 9)
        dropped.append(disk.cut())
        subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False, capture_output=True)
        time.sleep(0.3)
        cuts += 1
    # Last power-on: everything goes up, then a new machine rebuilds from the bucket.
    disk.power_on()
    v.mount()
    v.flush()
    want = {n: sha(v.mnt / n) for n in os.listdir(v.mnt) if (v.mnt / n).is_file()}
    for name, a in acked.items():
        if a is not None and name not in maybe_gone:
            assert name in want, f"seed {SEED}: {name} fsync'd, missing at the end"
    v.unmount()
    disk.cut()
    v.cache = tmp_path / "new-machine"
    v.mount()
    got = {n: sha(v.mnt / n) for n in os.listdir(v.mnt) if (v.mnt / n).is_file()}
    assert got == want, f"seed {SEED}: the rebuilt tree differs from the last mount's"
    v.unmount()
    import re
    lost = [int(m.group(1)) for d in dropped for m in [re.search(r"dropped (\d+) unsynced bytes", d)] if m]
    assert sum(1 for n in lost if n > 0) >= ROUNDS // 2, f"the cuts dropped too little to test anything: {lost}"
    print(f"\npower cut figures (seed {SEED}): {cuts} cuts, {fsyncs} fsyncs acknowledged, {len(want)} files at the end; "
          f"unsynced bytes dropped at each cut: {lost}")
