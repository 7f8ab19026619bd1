"""What another local user, or whoever can write to the bucket, must not be able to do."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import run

# A fake daemon: answers every request on the control socket with "everything is in S3", as
# the user `nobody` (binding the socket before or after giving up root), and logs each
# connection it gets.
FAKE = r'''
import os, socket, sys
path, log, bind_as_root = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if bind_as_root:
    s.bind(path)
    os.chmod(path, 0o777)
os.setgid(65534); os.setuid(65534)
if not bind_as_root:
    s.bind(path)
s.listen(1)  # SO_PEERCRED of a listening socket names whoever called listen()
open(log + ".ready", "w").close()
while True:
    c, _ = s.accept()
    c.recv(4096)
    open(log, "a").write("asked\n")
    c.sendall(b'{"reply":"flushed","uploaded_files":999,"failed_files":0,"still_open_for_write":0}\n')
    c.close()
'''


def _socket_path(xdg, mnt):
    h = hashlib.sha256(os.path.realpath(mnt).encode()).hexdigest()[:20]
    return xdg / "coldvault" / f"{h}.sock"


def _fake_daemon(work, sock, bind_as_root):
    """`work`: a folder `nobody` can write its log to."""
    script = work / "fake.py"
    script.write_text(FAKE)
    log = work / "fake.log"
    p = subprocess.Popen([sys.executable, str(script), str(sock), str(log), "1" if bind_as_root else "0"])
    ready = work / "fake.log.ready"
    for _ in range(200):
        if ready.exists():
            break
        time.sleep(0.05)
    assert ready.exists(), "the fake daemon did not start"
    return p, log


def test_another_user_cannot_answer_for_the_daemon(tmp_path):
    """`flush --wait` must never report "everything is in S3" on another user's word: not from
    a socket folder another user made (as in /tmp/coldvault-UID before the real daemon did),
    nor from a socket served by another user's process."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to act as another user")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    import shutil
    import tempfile
    for case in ("folder of another user", "socket of another user"):
        # Short (a socket path has at most 107 bytes) and open to `nobody` down to coldvault/.
        xdg = Path(tempfile.mkdtemp(prefix="cv-xdg-", dir="/tmp"))
        os.chmod(xdg, 0o755)
        (xdg / "coldvault").mkdir(mode=0o700)
        sock = _socket_path(xdg, mnt)
        bind_as_root = case == "socket of another user"
        if not bind_as_root:
            os.chown(xdg / "coldvault", 65534, 65534)
        work = xdg / "fake"
        work.mkdir()
        os.chmod(work, 0o777)
        p, log = _fake_daemon(work, sock, bind_as_root)
        try:
            r = run("flush", "--wait", mnt, check=False, env={"XDG_RUNTIME_DIR": str(xdg)})
        finally:
            p.kill()
            p.wait()
        assert r.returncode != 0, f"{case}: {r.stdout}{r.stderr}"
        assert "999" not in r.stdout, f"{case}: the fake answer was believed: {r.stdout}"
        want = "belongs to uid 65534" if not bind_as_root else "held by uid 65534"
        assert want in r.stderr, f"{case}: {r.stderr}"
        if not bind_as_root:
            assert not log.exists(), "the client connected to a socket in another user's folder"
        shutil.rmtree(xdg)


def test_a_socket_folder_made_first_in_tmp_by_another_user_stops_nothing(servers, vault_factory, monkeypatch):
    """Another local user makes /tmp/coldvault-0 before root's first mount (root without
    XDG_RUNTIME_DIR, as under sudo or cron): the mount's control socket is elsewhere, where no
    one else can make its folder, and `status`, `flush --wait` and `unmount` all reach the
    daemon."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to act as another user")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    squat = Path("/tmp/coldvault-0")
    aside = None
    if squat.exists() or squat.is_symlink():
        aside = Path(f"/tmp/coldvault-0.aside-{os.getpid()}")
        squat.rename(aside)
    squat.mkdir(mode=0o777)
    os.chown(squat, 65534, 65534)
    try:
        s = servers("s3s-fs")
        v = vault_factory(s)
        v.mount()
        (v.mnt / "a.txt").write_bytes(b"x" * 1000)
        r = run("flush", "--wait", v.mnt, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("status", v.mnt, check=False)
        assert r.returncode == 0 and "belongs to uid" not in r.stderr, r.stdout + r.stderr
        v.unmount()
        assert list(squat.iterdir()) == [], "something was put in the other user's folder"
    finally:
        squat.rmdir()
        if aside is not None:
            aside.rename(squat)


def test_a_file_larger_than_the_mount_accepts_is_refused(servers, vault_factory):
    """One `truncate -s 16T` (through Samba, from any client) must not stage a file that can
    never be uploaded; a limit set lower is kept too. The application gets EFBIG, "File too
    large", at once; nothing else changes."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount("--max-file-size", "1M")
    r = subprocess.run(["truncate", "-s", "16T", str(v.mnt / "huge")], capture_output=True, text=True)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr
    assert os.stat(v.mnt / "huge").st_size == 0
    r = subprocess.run(["sh", "-c", f"head -c 2000000 /dev/zero > '{v.mnt / 'two-mb'}'"], capture_output=True, text=True)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr
    (v.mnt / "ok").write_bytes(b"x" * (1 << 20))
    v.flush()
    assert os.stat(v.mnt / "ok").st_size == 1 << 20
    assert "EFBIG" in v.log()
    v.unmount()
    r = run("mount", "--config", v.config, "--cache-dir", v.cache, "--passphrase-file", v.passfile,
            "--max-file-size", "6T", v.mnt, check=False)
    assert r.returncode != 0 and "more than fits in one S3 object" in r.stderr, r.stderr


def test_one_users_staging_is_bounded_by_the_staging_quota(servers, vault_factory):
    """A writer dropping more than the staging disk should hold (a Samba user's huge folder,
    a `truncate -s` of a big size) gets "Disk quota exceeded" once its files waiting for upload
    reach `--staging-quota`; what it wrote before stays whole, and once uploads catch up it
    writes again."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount("--staging-quota", "8M", settle="3600")
    (v.mnt / "first").write_bytes(b"1" * (6 << 20))
    r = subprocess.run(["sh", "-c", f"head -c 6000000 /dev/zero > '{v.mnt / 'second'}'"], capture_output=True, text=True)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr
    r = subprocess.run(["truncate", "-s", "1G", str(v.mnt / "sparse")], capture_output=True, text=True)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr
    assert (v.mnt / "first").read_bytes() == b"1" * (6 << 20)
    assert "EDQUOT" in v.log()
    v.flush()  # seals and uploads what was written, whatever the settle delay
    (v.mnt / "third").write_bytes(b"3" * (6 << 20))
    v.flush()
    assert os.stat(v.mnt / "third").st_size == 6 << 20
    v.unmount()
    r = run("mount", "--config", v.config, "--cache-dir", v.cache, "--passphrase-file", v.passfile,
            "--staging-quota", "lots", v.mnt, check=False)
    assert r.returncode != 0 and "--staging-quota" in r.stderr, r.stderr
