"""The encrypted write path end to end: real FUSE mount, real local S3 servers."""
import math
import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest

from conftest import sha, clear_staged, is_mounted, run
from treegen import make_tree

SERVERS = ["s3s-fs", "moto"]




def compare_tree(files, src, dst):
    for rel, (size, ns) in files.items():
        a, b = src / rel, dst / rel
        st = os.stat(b)
        assert st.st_size == size, rel
        assert st.st_mtime_ns == ns, rel
        assert sha(a) == sha(b), f"content differs: {rel}"


def needles(files, src):
    """Names and sampled 16-byte plaintext runs that must never appear in the bucket."""
    out = set()
    for rel in files:
        for part in pathlib.PurePath(rel).parts:
            if len(part.encode()) >= 5:
                out.add(part.encode())
        data = (src / rel).read_bytes()
        offsets = {0, max(0, len(data) - 16)} | set(range(7, len(data) - 16, 16384))
        for o in offsets:
            out.add(data[o:o + 16])
    return out


def scan_bucket(v, pats, tmp):
    """Every object key, body and metadata value, searched for every needle (Aho-Corasick via grep -F on hex)."""
    hay = tmp / "haystack.hex"
    control = b"coldvault-control-needle-0123456789"
    with open(hay, "w") as f:
        for o in v.server.objects(v.bucket):
            key = o["Key"]
            for p in pats:
                try:
                    assert p.decode() not in key, f"name {p!r} in key {key}"
                except UnicodeDecodeError:
                    pass
            body = v.server.s3.get_object(Bucket=v.bucket, Key=key)["Body"].read()
            meta = v.server.s3.head_object(Bucket=v.bucket, Key=key).get("Metadata", {})
            f.write((body + b"".join(k.encode() + val.encode() for k, val in meta.items())).hex() + "\n")
        f.write((b"xx" + control + b"yy").hex() + "\n")  # positive control: must be found
    patf = tmp / "patterns.hex"
    patf.write_text("\n".join(p.hex() for p in pats | {control}) + "\n")
    r = subprocess.run(["grep", "-F", "-n", "-o", "-f", str(patf), str(hay)], capture_output=True, text=True)
    hits = [l for l in r.stdout.splitlines() if l]
    control_hex = control.hex()
    real = [h for h in hits if not h.endswith(control_hex)]
    assert any(h.endswith(control_hex) for h in hits), "scanner failed its positive control"
    # A hex match at an odd offset is not a byte match; only even-offset matches count.
    assert not real, f"plaintext or names found in the bucket: {real[:5]}"


@pytest.mark.parametrize("kind", SERVERS)
def test_tree_roundtrip_and_bucket_reveals_nothing(kind, servers, vault_factory, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    assert len(files) == 300
    v = vault_factory(servers(kind))
    v.mount()
    subprocess.run(["cp", "-a", f"{src}/.", str(v.mnt)], check=True)
    compare_tree(files, src, v.mnt)  # immediately visible, real sizes and times
    v.flush()
    st = v.status()
    assert st["pending_files"] == 0 and st["failed_files"] == 0, st
    assert st["uploaded_files"] == 300
    objs = v.data_objects()
    assert len(objs) == 300, "one object per file"
    assert {o["Key"] for o in objs} == {v.object_key(rel) for rel in files}
    v.unmount()
    clear_staged(v)
    v.mount()
    compare_tree(files, src, v.mnt)
    assert v.status()["requests"].get("GetObject", 0) > 0, "content came from S3"
    v.unmount()
    scan_bucket(v, needles(files, src), tmp_path)


@pytest.mark.parametrize("kind", SERVERS)
def test_rsync_twice_second_run_is_silent_and_makes_no_requests(kind, servers, vault_factory, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src, seed=11)
    v = vault_factory(servers(kind))
    v.mount()
    dst = v.mnt / "dst"
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{dst}/"], check=True)
    v.flush()
    before = v.status()["requests"]
    r = subprocess.run(["rsync", "-a", "--delete", "--itemize-changes", f"{src}/", f"{dst}/"], check=True, capture_output=True, text=True)
    assert r.stdout == "", f"second rsync itemized changes:\n{r.stdout[:2000]}"
    after = v.status()["requests"]
    assert before == after, f"S3 requests during the second rsync: {before} -> {after}"
    # rsync's temp files never reached S3: exactly the final names, one object each.
    keys = {o["Key"] for o in v.data_objects()}
    assert keys == {v.object_key("dst/" + rel) for rel in files}
    st = v.status()
    assert st["uploads_since_mount"] == len(files), "each file uploaded exactly once"
    puts = after.get("PutObject", 0) + after.get("CompleteMultipartUpload", 0)
    assert puts == len(files) + st["metadata_objects_since_mount"], (after, st)
    # --delete propagates; a changed file is re-sent and uploaded again.
    victim = sorted(files)[10]
    (src / victim).unlink()
    changed = sorted(files)[20]
    with open(src / changed, "r+b") as f:
        f.write(b"changed!")
    r = subprocess.run(["rsync", "-a", "--delete", "--itemize-changes", f"{src}/", f"{dst}/"], check=True, capture_output=True, text=True)
    assert not (dst / victim).exists()
    assert sha(dst / changed) == sha(src / changed)
    v.flush()
    assert v.status()["pending_files"] == 0
    v.unmount()


def daemon_pid(v):
    r = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {v.cache}"], capture_output=True, text=True)
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 1, pids
    return pids[0]


def kill9(v):
    os.kill(daemon_pid(v), signal.SIGKILL)
    time.sleep(0.3)
    subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
    assert not is_mounted(v.mnt)


def test_kill9_during_multipart_upload_resumes_without_resending_parts(servers, vault_factory, tmp_path):
    v = vault_factory(servers("s3s-fs"))
    v.mount("--upload-bandwidth", "24M")
    big = tmp_path / "big.tif"
    big.write_bytes(os.urandom(120 << 20))
    shutil.copyfile(big, v.mnt / "big.tif")
    part = 8 << 20
    size = 120 << 20
    enc = 128 + size + 16 * math.ceil(size / 65536)
    nparts = math.ceil(enc / part)
    deadline = time.time() + 60
    while True:
        with v.db() as db:
            done = db.execute("SELECT count(*) FROM parts").fetchone()[0]
        if done >= 3:
            break
        assert time.time() < deadline, "multipart upload never got going:\n" + v.log()[-3000:]
        time.sleep(0.05)
    kill9(v)
    with v.db() as db:
        done = db.execute("SELECT count(*) FROM parts").fetchone()[0]
        mp = db.execute("SELECT mp_upload_id FROM uploads").fetchone()[0]
    assert mp and 3 <= done < nparts, (done, nparts)
    v.mount()
    v.flush()
    req = v.status()["requests"]
    assert req.get("UploadPart") == nparts - done, f"after resume: {req}, {done} of {nparts} parts were done"
    assert "CreateMultipartUpload" not in req, "the upload id from the journal was reused"
    assert len(v.data_objects()) == 1
    v.unmount()
    clear_staged(v)
    v.mount()
    assert sha(v.mnt / "big.tif") == sha(big)
    v.unmount()


def test_kill9_after_close_keeps_the_file(servers, vault_factory, tmp_path):
    v = vault_factory(servers("s3s-fs"))
    v.mount(settle="3600")  # nothing gets sealed before the kill
    data = os.urandom(3 << 20)
    with open(v.mnt / "closed.jpg", "wb") as f:
        f.write(data)
    os.makedirs(v.mnt / "a" / "b")
    (v.mnt / "a" / "b" / "small.txt").write_bytes(b"tiny")
    kill9(v)
    v.mount()
    assert (v.mnt / "closed.jpg").read_bytes() == data
    assert (v.mnt / "a" / "b" / "small.txt").read_bytes() == b"tiny"
    v.flush()
    assert v.status()["uploaded_files"] == 2
    v.unmount()
    clear_staged(v)
    v.mount()
    assert (v.mnt / "closed.jpg").read_bytes() == data
    v.unmount()


def test_posix_basics_through_the_mount(servers, vault_factory):
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    m = v.mnt
    (m / "d1").mkdir()
    (m / "d1" / "f").write_bytes(b"0123456789")
    with open(m / "d1" / "f", "r+b") as f:  # random write
        f.seek(4)
        f.write(b"XY")
    assert (m / "d1" / "f").read_bytes() == b"0123XY6789"
    os.truncate(m / "d1" / "f", 3)
    assert (m / "d1" / "f").read_bytes() == b"012"
    os.chmod(m / "d1" / "f", 0o600)
    assert os.stat(m / "d1" / "f").st_mode & 0o777 == 0o600
    os.utime(m / "d1" / "f", ns=(1, 1_234_567_890_123_456_789))
    assert os.stat(m / "d1" / "f").st_mtime_ns == 1_234_567_890_123_456_789
    os.symlink("d1/f", m / "ln")
    assert os.readlink(m / "ln") == "d1/f"
    assert (m / "ln").read_bytes() == b"012"
    os.rename(m / "d1", m / "d2")
    assert (m / "d2" / "f").read_bytes() == b"012"
    with pytest.raises(OSError) as e:
        os.link(m / "d2" / "f", m / "hard")
    assert e.value.errno == 1  # EPERM: hard links are refused
    with pytest.raises(OSError) as e:
        os.rmdir(m / "d2")
    assert e.value.errno == 39  # ENOTEMPTY
    st = os.statvfs(m)
    ref = os.statvfs(v.cache)
    assert st.f_bavail * st.f_frsize == pytest.approx(ref.f_bavail * ref.f_frsize, rel=0.05)
    os.setxattr(m / "d2" / "f", "user.DOSATTRIB", b"\x01\x02")
    assert os.getxattr(m / "d2" / "f", "user.DOSATTRIB") == b"\x01\x02"
    v.flush()
    before = v.status()["requests"]
    os.rename(m / "d2", m / "d3")  # renames are index changes: no S3 traffic
    os.rename(m / "d3" / "f", m / "d3" / "g")
    assert v.status()["requests"] == before
    assert (m / "d3" / "g").read_bytes() == b"012"
    # rm -rf of a large directory: listing while unlinking must not skip entries.
    many = m / "many"
    many.mkdir()
    for i in range(600):
        (many / f"file-{i:04d}.jpg").write_bytes(b"x")
    assert len(os.listdir(many)) == 600
    subprocess.run(["rm", "-rf", str(many)], check=True)
    assert not many.exists()
    v.unmount()


def test_bad_input_gets_one_clear_error(servers, vault_factory, tmp_path):
    s = servers("s3s-fs")
    v = vault_factory(s)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    r = run("mount", "--config", v.config, "--cache-dir", v.cache, "--passphrase-file", wrong, v.mnt, check=False)
    assert r.returncode != 0 and "wrong passphrase" in r.stderr, r.stderr
    assert not is_mounted(v.mnt)
    r = run("init", "--bucket", "no-such-bucket-here", "--endpoint-url", s.endpoint, "--config", tmp_path / "c2.toml",
            "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "c2.toml").exists()
    r = run("init", "--bucket", "b", "--endpoint-url", "http://127.0.0.1:9", "--config", tmp_path / "c3.toml",
            "--passphrase-file", v.passfile, check=False, timeout=120)
    assert r.returncode != 0 and "cannot reach" in r.stderr, r.stderr
    r = run("mount", "--config", tmp_path / "missing.toml", v.mnt, check=False)
    assert r.returncode != 0 and "coldvault init" in r.stderr, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("bucket = 'x'\nnot toml at all [\n")
    r = run("mount", "--config", bad, v.mnt, check=False)
    assert r.returncode != 0 and "malformed config" in r.stderr, r.stderr
    r = run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", tmp_path / "c4.toml",
            "--passphrase-file", v.passfile, check=False)
    assert (tmp_path / "c4.toml").exists()
    assert r.returncode == 0 and "joined existing vault" in r.stdout, r.stderr  # init on an existing vault joins it
    # A secret never shows up in argv or the log.
    v.mount()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "correct horse" not in ps
    v.unmount()
    assert "correct horse" not in v.log()


def test_times_far_from_now_read_back_exactly(servers, vault_factory, tmp_path):
    """utime past 2262 and before 1970 through the mount, as smbtorture's smb2.timestamps and
    Windows clients set them: stat gives them back after a remount and after a rebuild from the
    bucket on an empty cache (an i64 of nanoseconds read 10,000,000,000 s back as -8,446,744,074)."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    times = {"t1e10.jpg": 10_000_000_000, "t15e9.jpg": 15_032_385_535, "t4e9.jpg": 4_294_967_295, "before.jpg": -1,
             "filetime0.jpg": -11_644_473_600}
    for name, t in times.items():
        (v.mnt / name).write_bytes(name.encode())
        os.utime(v.mnt / name, ns=(t * 10**9, t * 10**9 + 5))
    (v.mnt / "d").mkdir()
    os.utime(v.mnt / "d", ns=(0, 15_032_385_535 * 10**9))

    def check(when):
        for name, t in times.items():
            st = os.stat(v.mnt / name)
            assert st.st_mtime_ns == t * 10**9 + 5, f"{when}: {name} mtime {st.st_mtime_ns}, set {t * 10**9 + 5}"
        assert os.stat(v.mnt / "d").st_mtime_ns == 15_032_385_535 * 10**9, when

    check("right away")
    v.flush()
    v.unmount()
    v.mount()
    check("after a remount")
    v.unmount()
    v.cache = tmp_path / "fresh-cache"
    v.mount()
    check("after a rebuild from the bucket")
    v.unmount()
