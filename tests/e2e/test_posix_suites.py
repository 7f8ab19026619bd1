"""POSIX peer suites on a real mount: pjdfstest (expected failures in tests/posix/pjdfstest.toml,
each with its reason), fsx (3 seeds x 20,000 operations, close/open and fsync on), and a short
stress-ng filesystem-class run with verification."""
import os
import pathlib
import subprocess
import tempfile

import pytest

from conftest import ROOT, need

POSIX = ROOT / "tests" / "posix"


@pytest.fixture
def mounted(servers, vault_factory):
    v = vault_factory(servers("s3s-fs"))
    # A short, world-traversable mount point: pjdfstest switches to nobody/daemon (who cannot
    # enter pytest's 0700 temp dirs) and binds unix sockets (paths under 108 bytes).
    short = tempfile.mkdtemp(prefix="cvp", dir="/tmp")
    os.chmod(short, 0o755)
    v.mnt = pathlib.Path(short)
    # Short settle: sealing and uploads run underneath the suites, as they would in real use.
    v.mount("--allow-other", settle="0.2")
    yield v
    v.unmount()
    os.rmdir(short)


def test_pjdfstest(mounted):
    exe = need("pjdfstest", "pjdfstest from crates.io")
    work = mounted.mnt / "pjd"
    work.mkdir()
    os.chmod(work, 0o777)
    r = subprocess.run([exe, "-c", str(POSIX / "pjdfstest.toml"), "-p", str(work)], capture_output=True, text=True, timeout=1200, cwd=work)
    summary = [l for l in r.stdout.splitlines() if l.startswith("Summary:")]
    unexpected = [l.split()[0] for l in r.stdout.splitlines() if l.rstrip().endswith(("FAILED", "PASSED UNEXPECTEDLY"))]
    assert r.returncode == 0 and not unexpected, f"{summary}\nunexpected failures: {unexpected}\n{r.stdout[-3000:]}"
    assert summary and " 0 failed" in summary[0], summary


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fsx(mounted, seed, tmp_path):
    exe = need("fsx", "fsx from crates.io")
    r = subprocess.run([exe, "-f", str(POSIX / "fsx.toml"), "-N", "20000", "-S", str(seed), "-P", str(tmp_path), str(mounted.mnt / f"fsx-{seed}")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "All operations completed A-OK!" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_stress_ng_filesystem_class(mounted):
    exe = need("stress-ng", "stress-ng")
    work = mounted.mnt / "stress"
    work.mkdir()
    r = subprocess.run([exe, "--temp-path", str(work), "--class", "filesystem", "--seq", "1", "--timeout", "1", "--verify", "--metrics-brief"],
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    fails = [l for l in out.splitlines() if " fail: " in l or " error: " in l]
    # Exit 3: some stressors skipped themselves (link: hard links refused; fiemap, verity, binderfs: not FUSE features).
    assert r.returncode in (0, 3) and not fails and "successful run completed" in out, "\n".join(fails) or out[-3000:]
    mounted.flush()
    assert mounted.status()["failed_files"] == 0
