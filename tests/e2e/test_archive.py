"""Archive tiers through a real mount on moto (restores that take RESTORE_SECONDS, 409 while
pending — see scripts/moto_server.py)."""
import os
import shutil
import subprocess
import time


from conftest import RESTORE_SECONDS, run


def cat(path, exe="cat"):
    return subprocess.run([exe, str(path)], capture_output=True, timeout=60)


def assert_eagain(path, exe="cat"):
    r = cat(path, exe)
    assert r.returncode != 0, "read of an archived file succeeded"
    assert b"Resource temporarily unavailable" in r.stderr, r.stderr


def wait_until(what, f, timeout=60):
    t = time.time()
    while True:
        v = f()
        if v:
            return v
        assert time.time() - t < timeout, f"timed out waiting for {what}"
        time.sleep(0.25)


def restore_requests(v):
    return v.status()["requests"].get("RestoreObject", 0)


def put_file(v, rel, size):
    data = os.urandom(size)
    p = v.mnt / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p, data


def test_deep_archive_rule_restore_on_open(servers, vault_factory, tmp_path):
    s = servers("moto")
    v = vault_factory(s)
    v.mount("--class-rule", "raw/**=DEEP_ARCHIVE", "--restore-poll", "1")
    p, data = put_file(v, "raw/2019/IMG_0001.CR2", 300_000)
    small, _ = put_file(v, "raw/2019/IMG_0001.xmp", 2_000)  # small-file guard: not archived
    v.flush()
    classes = {o["Key"]: s.s3.head_object(Bucket=v.bucket, Key=o["Key"]).get("StorageClass", "STANDARD") for o in v.data_objects()}
    assert classes[v.object_key("raw/2019/IMG_0001.CR2")] == "DEEP_ARCHIVE"
    assert classes[v.object_key("raw/2019/IMG_0001.xmp")] == "STANDARD"
    # Evict local copies so reads must go to S3.
    v.unmount()
    v.mount("--class-rule", "raw/**=DEEP_ARCHIVE", "--restore-poll", "1")
    st = os.stat(p)
    assert st.st_size == 300_000, "getattr keeps the real size while archived"
    status = v.mnt / "raw/2019/IMG_0001.CR2.restore-status"
    assert not status.exists(), "no status file before the first open"
    assert_eagain(p)
    # The kernel remembers names that are missing (for a second); this one appears without a
    # create through the kernel, so the lookup just before must not have been remembered.
    assert status.exists(), "the status file is there as soon as open answers EAGAIN"
    for _ in range(10):
        assert_eagain(p)
    wait_until("RestoreObject sent", lambda: restore_requests(v) == 1)
    assert status.name in os.listdir(v.mnt / "raw/2019")
    text = status.read_text()
    for field in ("state:", "tier:              Bulk", "storage class:     DEEP_ARCHIVE", "requested at:", "expected ready by:", "cost estimate:"):
        assert field in text, text
    assert "in progress" in text or "requested" in text, text
    # rsync can skip the placeholders.
    r = subprocess.run(["rsync", "-a", "--dry-run", "--itemize-changes", "--exclude=*.restore-status", "--exclude=*.CR2",
                        f"{v.mnt}/raw/", f"{tmp_path}/copy/"], capture_output=True, text=True)
    assert "restore-status" not in r.stdout
    assert cat(small).stdout != b"", "non-archived small file reads"
    wait_until("restore complete", lambda: cat(p).returncode == 0, timeout=RESTORE_SECONDS + 30)
    assert p.read_bytes() == data
    text = status.read_text()
    assert "state:             ready until" in text and "available until:" in text, text
    assert "GMT" in text, "expiry date from x-amz-restore"
    assert restore_requests(v) == 1, "exactly one RestoreObject"
    listing = (v.mnt / ".coldvault" / "restores").read_text()
    assert "raw/2019/IMG_0001.CR2\tready" in listing, listing
    # The placeholder is never uploaded.
    v.flush()
    assert len(v.data_objects()) == 2
    v.unmount()


def test_object_moved_to_glacier_behind_our_back(servers, vault_factory):
    s = servers("moto")
    v = vault_factory(s)
    v.mount("--restore-poll", "1")
    p, data = put_file(v, "photos/lisboa.jpg", 200_000)
    v.flush()
    v.unmount()
    key = v.object_key("photos/lisboa.jpg")
    s.s3.copy_object(Bucket=v.bucket, Key=key, CopySource={"Bucket": v.bucket, "Key": key}, StorageClass="GLACIER",
                     MetadataDirective="COPY")
    v.mount("--restore-poll", "1")
    assert_eagain(p)  # the read fails with InvalidObjectState: discovered
    assert_eagain(p)  # now known at open
    wait_until("RestoreObject sent", lambda: restore_requests(v) == 1)
    text = (v.mnt / "photos/lisboa.jpg.restore-status").read_text()
    assert "storage class:     GLACIER" in text and "tier:              Standard" in text, text
    wait_until("restore complete", lambda: cat(p).returncode == 0, timeout=RESTORE_SECONDS + 30)
    assert p.read_bytes() == data
    assert restore_requests(v) == 1
    v.unmount()


def test_cost_guard_and_indexer_rule_refuse(servers, vault_factory, tmp_path):
    s = servers("moto")
    v = vault_factory(s)
    args = ("--class-rule", "raw/**=GLACIER", "--restore-poll", "1", "--restore-budget", "250K")
    v.mount(*args)
    a, _ = put_file(v, "raw/a.CR2", 200_000)
    b, _ = put_file(v, "raw/b.CR2", 200_000)
    c, c_data = put_file(v, "raw/c.CR2", 200_000)
    v.flush()
    v.unmount()
    v.mount(*args)
    # A thumbnailer opening a file never triggers a restore.
    thumb = tmp_path / "tumblerd"
    shutil.copy("/bin/cat", thumb)
    assert_eagain(a, str(thumb))
    text = (v.mnt / "raw/a.CR2.restore-status").read_text()
    assert "refused" in text and "tumblerd" in text and "indexer" in text, text
    # A user's open is within budget (200 kB of 250 kB)...
    assert_eagain(b)
    wait_until("RestoreObject for b", lambda: restore_requests(v) == 1)
    # ...the next one is not.
    assert_eagain(c)
    text = (v.mnt / "raw/c.CR2.restore-status").read_text()
    assert "refused" in text and "daily budget" in text and "coldvault restore" in text, text
    time.sleep(1.5)
    assert restore_requests(v) == 1
    # An explicit request: the bill first, then the request.
    r = run("restore", "--dry-run", c)
    assert "1 archived file(s)" in r.stdout and "estimated retrieval cost $" in r.stdout, r.stdout
    assert restore_requests(v) == 1
    r = run("restore", "--tier", "Expedited", "--days", "2", v.mnt / "raw")
    assert "requested" in r.stdout, r.stdout
    wait_until("explicit restores sent", lambda: restore_requests(v) == 3)  # a and c; b is pending already
    wait_until("c readable", lambda: cat(c).returncode == 0, timeout=RESTORE_SECONDS + 30)
    assert c.read_bytes() == c_data
    v.unmount()


def test_pending_restores_survive_remount_without_duplicates(servers, vault_factory):
    s = servers("moto")
    v = vault_factory(s)
    args = ("--class-rule", "**=DEEP_ARCHIVE", "--restore-poll", "1")
    v.mount(*args)
    p, data = put_file(v, "old/2019.tif", 400_000)
    v.flush()
    v.unmount()
    v.mount(*args)
    assert_eagain(p)
    wait_until("RestoreObject sent", lambda: restore_requests(v) == 1)
    v.unmount()
    v.mount(*args)
    assert (v.mnt / "old/2019.tif.restore-status").exists()
    wait_until("restore complete after remount", lambda: cat(p).returncode == 0, timeout=RESTORE_SECONDS + 30)
    assert p.read_bytes() == data
    assert restore_requests(v) == 0, "no duplicate request after the remount"
    v.unmount()
