"""File versions through a real mount: an overwrite is a new version that needs none of the old
bytes (no GetObject, no RestoreObject, works on a write-only mount), and every version has an
object of its own that no later upload can overwrite."""
import os
import time

import pytest
import subprocess

from conftest import clear_staged, run, sha

MiB = 1 << 20


def requests(v, op):
    return v.status()["requests"].get(op, 0)


def remount_cold(v, *extra):
    """Unmount, drop every staged copy, mount again: reads must come from S3."""
    v.unmount()
    clear_staged(v)
    v.mount(*extra)


def test_overwrite_of_an_uploaded_file_downloads_nothing(servers, vault_factory, tmp_path):
    """Regression: without FUSE_ATOMIC_O_TRUNC the kernel opened without O_TRUNC and truncated
    afterwards, so `cat v2 > f` over a 50 MB file first fetched all 48 segments of the old one."""
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    video = v.mnt / "std" / "video.mov"
    video.parent.mkdir()
    v1 = tmp_path / "v1"
    v1.write_bytes(os.urandom(50 * MiB))
    subprocess.run(["cp", str(v1), str(video)], check=True)
    v.flush()
    remount_cold(v)
    assert requests(v, "GetObject") == 0
    v2 = tmp_path / "v2"
    v2.write_bytes(os.urandom(30 * MiB))
    subprocess.run(["sh", "-c", f'cat "{v2}" > "{video}"'], check=True)
    v3 = tmp_path / "v3"
    v3.write_bytes(os.urandom(3 * MiB))
    other = v.mnt / "std" / "clip.mov"
    subprocess.run(["cp", str(v1), str(other)], check=True)
    v.flush()
    subprocess.run(["cp", str(v3), str(other)], check=True)  # cp over a file: O_WRONLY|O_TRUNC
    assert requests(v, "GetObject") == 0, "an overwrite must not read the old version"
    assert sha(video) == sha(v2) and sha(other) == sha(v3)
    v.flush()
    remount_cold(v)
    assert sha(video) == sha(v2) and sha(other) == sha(v3)
    v.unmount()


def test_overwrite_on_a_write_only_mount(servers, vault_factory, tmp_path):
    """A write-only mount (public key only) cannot read the old version, and needs not: O_TRUNC
    overwrites work; a partial rewrite is refused with EACCES as documented."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "a.jpg").write_bytes(os.urandom(2 * MiB))
    (v.mnt / "b.jpg").write_bytes(os.urandom(2 * MiB))
    v.flush()
    v.unmount()
    clear_staged(v)
    run("mount", "--config", v.config, "--cache-dir", v.cache, "--write-only", "--settle", "0.5", v.mnt)
    new = os.urandom(1 * MiB)
    with open(v.mnt / "a.jpg", "wb") as f:
        f.write(new)
    r = subprocess.run(["dd", "if=/dev/zero", f"of={v.mnt / 'b.jpg'}", "bs=1", "count=1", "conv=notrunc"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
    v.flush()
    v.unmount()
    clear_staged(v)
    v.mount()
    assert (v.mnt / "a.jpg").read_bytes() == new
    v.unmount()


def test_overwrite_of_a_deep_archive_file_needs_no_restore(servers, vault_factory, tmp_path):
    """Regression: `cp new over/raw/photo.cr2` over a DEEP_ARCHIVE version answered EAGAIN and
    sent a paid RestoreObject. Partial rewrites of archived files still say EAGAIN."""
    v = vault_factory(servers("moto"))
    rule = ("--class-rule", "raw/**=DEEP_ARCHIVE")
    v.mount(*rule)
    photo = v.mnt / "raw" / "photo.cr2"
    photo.parent.mkdir()
    photo.write_bytes(os.urandom(400_000))
    (v.mnt / "raw" / "other.cr2").write_bytes(os.urandom(400_000))
    v.flush()
    remount_cold(v, *rule)
    new = tmp_path / "new.cr2"
    new.write_bytes(os.urandom(500_000))
    subprocess.run(["cp", str(new), str(photo)], check=True)
    assert sha(photo) == sha(new)
    r = subprocess.run(["dd", "if=/dev/zero", f"of={v.mnt / 'raw' / 'other.cr2'}", "bs=1", "count=1", "conv=notrunc"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Resource temporarily unavailable" in r.stderr, r.stderr
    assert requests(v, "GetObject") == 0
    assert requests(v, "RestoreObject") <= 1, "only the partial rewrite may ask for a restore"
    restores_after_partial = requests(v, "RestoreObject")
    v.flush()
    remount_cold(v, *rule)
    # The new version is itself DEEP_ARCHIVE; its size and content are the new ones.
    assert os.stat(photo).st_size == 500_000
    assert requests(v, "RestoreObject") == 0, f"the overwrite itself asked for no restore ({restores_after_partial} before remount)"
    v.unmount()


def test_recovery_after_recovery_on_a_real_mount(servers, vault_factory, tmp_path):
    """Regression (the issue's table): write, rename, flush; lose the cache and remount; rewrite
    f1, rm f2, mv f5 h1, create n1, flush; lose the cache again: f1 gave EIO, f2 came back and f5
    was there under both names. Three recoveries in a row must each give the live tree."""
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    content = {}
    for n in range(1, 6):
        content[f"f{n}"] = os.urandom(100_000 + n)
        (v.mnt / f"f{n}").write_bytes(content[f"f{n}"])
    v.flush()
    os.rename(v.mnt / "f3", v.mnt / "g3")
    content["g3"] = content.pop("f3")
    v.flush()

    def lose_cache_and_remount(name):
        v.unmount()
        v.cache = v.tmp / name
        v.mount()

    def check(label):
        assert sorted(os.listdir(v.mnt)) == sorted(content), label
        for n, d in content.items():
            assert (v.mnt / n).read_bytes() == d, f"{label}: {n}"

    lose_cache_and_remount("cache-b")
    check("first recovery")
    content["f1"] = os.urandom(70_000)
    (v.mnt / "f1").write_bytes(content["f1"])
    os.unlink(v.mnt / "f2")
    del content["f2"]
    os.rename(v.mnt / "f5", v.mnt / "h1")
    content["h1"] = content.pop("f5")
    content["n1"] = os.urandom(5_000)
    (v.mnt / "n1").write_bytes(content["n1"])
    v.flush()
    lose_cache_and_remount("cache-c")
    check("second recovery")
    os.unlink(v.mnt / "h1")
    del content["h1"]
    content["f2"] = os.urandom(9_000)
    (v.mnt / "f2").write_bytes(content["f2"])
    v.flush()
    lose_cache_and_remount("cache-d")
    check("third recovery")
    v.unmount()


def test_full_staging_disk_is_an_answer_not_a_hang(servers, vault_factory, tmp_path):
    """Regression: with the cache dir on a 256 MiB filesystem, copying 150 MB and then 200 MB
    more made `flush --wait` hang (killed after 180 s), left hundreds of *.tmp files and `rm`
    of the partial file gave EIO; and a file bigger than half the disk could never be sealed
    (sealing wrote an encrypted copy beside it). Then (review N11) a 245 MB file that filled
    the disk was accepted and never sealed: sealing refused below 16 MiB free, though sealing
    is what frees the disk. Now a file that fills the disk seals and uploads on its own; a copy
    that does not fit gets ENOSPC at write time, what it wrote is uploaded as written (as a
    local disk keeps it), `flush --wait` answers in bounded time, nothing is left behind, `rm`
    works, and then everything is in the bucket."""
    import time
    v = vault_factory(servers("s3s-fs"))
    fsdir = tmp_path / "small-disk"
    fsdir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(fsdir)], check=True)
    try:
        v.cache = fsdir / "cache"
        v.mount()
        a = tmp_path / "a.bin"
        a.write_bytes(os.urandom(245 * 1000 * 1000))
        b = tmp_path / "b.bin"
        b.write_bytes(os.urandom(300 * MiB))
        subprocess.run(["cp", str(a), str(v.mnt / "a.bin")], check=True)
        r = run("flush", "--wait", v.mnt, check=False, timeout=300)
        assert r.returncode == 0, f"a 245 MB file filling a 256 MiB staging disk must seal and upload: {r.stderr}"
        assert v.status()["failures"] == []
        r = subprocess.run(["cp", str(b), str(v.mnt / "b.bin")], capture_output=True, text=True)
        assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
        t = time.time()
        r = run("flush", "--wait", v.mnt, check=False, timeout=300)
        assert r.returncode == 0, f"the partial copy seals and uploads as written: {r.stderr}"
        assert time.time() - t < 240, "flush --wait answered in bounded time"
        assert subprocess.run(["rm", str(v.mnt / "b.bin")]).returncode == 0, "rm works"
        assert not [p for p in (v.cache / "outbox").iterdir() if p.name.endswith(".tmp")]
        assert sha(v.mnt / "a.bin") == sha(a), "the accepted file is intact"
        v.flush()
        assert v.status()["failures"] == []
        v.unmount()
        clear_staged(v)
        v.mount()
        assert sha(v.mnt / "a.bin") == sha(a)
        assert not (v.mnt / "b.bin").exists()
        v.unmount()
    finally:
        subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
        subprocess.run(["umount", "-l", str(fsdir)], check=False)


def test_a_stale_put_landing_last_never_replaces_the_newer_version(servers, vault_factory, tmp_path):
    """Regression (the issue's table): a 2 MB file rewritten while its first version's PUT is
    held by a proxy; the newer version uploads, `flush --wait` succeeds, then the stale PUT lands.
    With path-derived keys it landed on the newer version's object and a rebuild gave EIO. Now
    each version has its own key: the stale object lands beside it and is never adopted."""
    import json
    import sys
    import time

    from conftest import ROOT, free_port

    s = servers("s3s-fs")
    v = vault_factory(s)
    port = free_port()
    stats = tmp_path / "proxy.json"
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "fault_proxy.py"), "--port", str(port),
                              "--upstream", f"127.0.0.1:{s.port}", "--rate", "0", "--stats", str(stats),
                              "--hold-first-put", "8"], stderr=subprocess.DEVNULL)

    def proxy_stats():
        try:
            return json.loads(stats.read_text())
        except (OSError, ValueError):
            return {}

    try:
        time.sleep(0.5)
        v.mount("--endpoint-url", f"http://127.0.0.1:{port}", settle="0.2")
        v1, v2 = os.urandom(2 * MiB), os.urandom(2 * MiB + 7)
        (v.mnt / "video.mov").write_bytes(v1)
        deadline = time.time() + 30
        while proxy_stats().get("held", 0) < 1:
            assert time.time() < deadline, f"the first version's PUT never reached the proxy: {proxy_stats()}"
            time.sleep(0.05)
        (v.mnt / "video.mov").write_bytes(v2)
        v.flush()
        assert proxy_stats().get("released", 0) == 0, "the test needs the stale PUT still held when flush returns"
        assert sha(v.mnt / "video.mov") == sha_bytes(v2)
        deadline = time.time() + 60
        while proxy_stats().get("released", 0) < 1:
            assert time.time() < deadline, "the held PUT was never released"
            time.sleep(0.1)
        time.sleep(1)  # let the stale PUT reach the server
        v.flush()
        v.unmount()
        v.cache = tmp_path / "fresh-cache"
        v.mount("--endpoint-url", f"http://127.0.0.1:{port}")
        assert (v.mnt / "video.mov").read_bytes() == v2, "a rebuild after the stale PUT landed gives the newer version"
        v.unmount()
        # Both versions' objects are in the bucket: the stale one landed beside the newer one.
        assert len(v.data_objects()) >= 2
    finally:
        proxy.kill()
        proxy.wait()


def sha_bytes(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()


# s3s-fs checks each request's payload signature; moto checks neither that nor Content-MD5 on
# parts, so a damaged part is stored there as sent (this test fails on moto for that reason).
@pytest.mark.parametrize("server", ["s3s-fs"])
def test_a_body_damaged_on_the_way_is_refused_and_sent_again(server, servers, vault_factory, tmp_path):
    """A proxy flips a byte in the first PUT of a small file's object and of a big file's first
    part. The store refuses both (the body no longer matches its signed SHA-256 and its
    Content-MD5), coldvault sends them again, and a rebuild on an empty cache reads both files
    whole. (Signing the payload costs a SHA-256 pass over every uploaded byte, about 5% of a
    1 GiB upload here; with UNSIGNED-PAYLOAD this test fails on s3s-fs, which does not check
    Content-MD5.)"""
    import json
    import sys
    import time

    from conftest import ROOT, free_port

    s = servers(server)
    v = vault_factory(s)
    port = free_port()
    stats = tmp_path / "proxy.json"
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "fault_proxy.py"), "--port", str(port),
                              "--upstream", f"127.0.0.1:{s.port}", "--rate", "0", "--stats", str(stats),
                              "--corrupt-puts", "2", "--log", str(tmp_path / "proxy.log")], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        v.mount("--endpoint-url", f"http://127.0.0.1:{port}", settle="0.2")
        small, big = os.urandom(100_000), os.urandom(20 * MiB)
        (v.mnt / "small.jpg").write_bytes(small)
        v.flush()
        (v.mnt / "big.mov").write_bytes(big)
        v.flush()
        log = [json.loads(line) for line in (tmp_path / "proxy.log").read_text().splitlines()]
        damaged = [e["path"] for e in log if e["outcome"] == "corrupted"]
        assert len(damaged) == 2 and "PutObject" in damaged[0] and "UploadPart" in damaged[1], damaged
        for path in damaged:
            assert any(e["path"] == path and e["outcome"] == "passed" for e in log), f"{path} was never sent again"
        v.unmount()
        v.cache = tmp_path / "fresh-cache"
        v.mount("--endpoint-url", f"http://127.0.0.1:{port}")
        assert (v.mnt / "small.jpg").read_bytes() == small
        assert sha(v.mnt / "big.mov") == sha_bytes(big)
        v.unmount()
    finally:
        proxy.kill()
        proxy.wait()


def test_every_version_is_listed_and_brought_back_as_it_was(servers, vault_factory, tmp_path):
    """Issue 26: a file written three times through the mount, then deleted. From the bucket
    alone (no mount, no index), `ls --versions` lists its three versions, oldest first, with
    size, class and machine, the last one ended by the deletion; `get --at T` brings back each
    version as it was at T, and the folder as it was after the deletion holds no such file."""
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    f = v.mnt / "docs" / "report.txt"
    f.parent.mkdir()
    (v.mnt / "docs" / "keep.txt").write_bytes(b"stays")
    contents = [os.urandom(1000 * (k + 1)) for k in range(3)]
    moments = []
    for c in contents:
        f.write_bytes(c)
        v.flush()
        time.sleep(1.2)
        moments.append(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))  # this version is current
        time.sleep(1.2)
    f.unlink()
    v.flush()
    time.sleep(1.2)
    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    v.unmount()
    cli = ("--config", v.config, "--passphrase-file", v.passfile)

    r = run("ls", *cli, "--versions", "docs/report.txt")
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert len(rows) == 3, r.stdout
    # from (date time), until (date time), size, class, machine, path
    assert [int(x[4]) for x in rows] == [1000, 2000, 3000], r.stdout
    assert all(x[5] == "STANDARD" and x[7] == "docs/report.txt" for x in rows), r.stdout
    assert rows[0][2:4] == rows[1][0:2] and rows[1][2:4] == rows[2][0:2], "each version ends when the next begins"
    assert rows[2][2] != "now", "the deletion ended the last one"

    for k, (t, c) in enumerate(zip(moments, contents)):
        out = tmp_path / f"at{k}"
        run("get", *cli, "--at", t, "docs", out)
        assert (out / "docs" / "report.txt").read_bytes() == c, f"version {k + 1} at {t}"
        assert (out / "docs" / "keep.txt").read_bytes() == b"stays"

    out = tmp_path / "after"
    r = run("get", *cli, "--at", after, "docs/report.txt", out, check=False)
    assert r.returncode != 0 and "no such file" in r.stderr, r.stderr
    r = run("ls", *cli, "--at", after, "docs")
    assert "keep.txt" in r.stdout and "report.txt" not in r.stdout, r.stdout
    r = run("get", *cli, "--at", "yesterday", "docs", out, check=False)
    assert r.returncode != 0 and "is not a time" in r.stderr, r.stderr
