"""Object Lock (issue 26): with `init --object-lock-days N`, every object a mount writes (file
versions, journal batches, snapshots) carries a retention S3 enforces, so nobody holding any
credentials can delete a version before it ends; `init` refuses a bucket without Object Lock and
says how to enable it. Run on moto, which implements Object Lock."""
import datetime
import json
import os

import pytest
from botocore.exceptions import ClientError

from conftest import policy_proxy, run


def test_every_object_is_locked_and_a_bucket_without_lock_is_refused(servers, vault_factory, tmp_path):
    s = servers("moto")
    # A bucket without Object Lock: refused, with how to enable it, and no config written.
    plain = s.new_bucket()
    cfg = tmp_path / "plain.toml"
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    r = run("init", "--bucket", plain, "--prefix", "v", "--endpoint-url", s.endpoint, "--config", cfg,
            "--passphrase-file", pw, "--object-lock-days", "30", check=False)
    assert r.returncode != 0 and "does not have Object Lock enabled" in r.stderr and "put-object-lock-configuration" in r.stderr, r.stderr
    assert not cfg.exists()

    locked = "cv-lock-" + os.urandom(4).hex()
    s.s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    v = vault_factory(s)  # its own bucket, for the mount helpers; the locked one is set below
    v.bucket = locked
    v.config.unlink()
    run("init", "--bucket", locked, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", v.config,
        "--passphrase-file", v.passfile, "--object-lock-days", "30")
    assert "object_lock_days = 30" in v.config.read_text()
    # The mount goes through a proxy enforcing the `mount` policy (no Delete), which logs each request's lock
    # header: moto keeps no lock given to CreateMultipartUpload (AWS does), so for the
    # multipart upload the request is what can be checked.
    proxy, port, log = policy_proxy(s, v, "mount", tmp_path)
    text = v.config.read_text()
    v.config.write_text(text.replace(s.endpoint, f"http://127.0.0.1:{port}"))
    try:
        big = write_through_a_mount(v)
    finally:
        proxy.terminate()
        proxy.wait()
    v.config.write_text(text)
    reqs = [json.loads(l) for l in log.read_text().splitlines()]
    creates = [r for r in reqs if r["op"] in ("PutObject", "CreateMultipartUpload")]
    assert creates and all(r["lock"] == "GOVERNANCE" for r in creates), [(r["op"], r["path"], r["lock"]) for r in creates]
    assert any(r["op"] == "CreateMultipartUpload" for r in creates)
    assert not [r for r in reqs if not r["allowed"]], "the mount policy is enough"
    objects = s.objects(locked, "vault/")
    data = [o["Key"] for o in objects if o["Key"].startswith("vault/d/")]
    journal = [o["Key"] for o in objects if o["Key"].startswith("vault/j/")]
    assert len(data) == 3 and journal, [o["Key"] for o in objects]
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=29)
    small = [k for k in data if s.s3.head_object(Bucket=locked, Key=k)["ContentLength"] < 16 << 20]
    for key in small + journal:
        h = s.s3.head_object(Bucket=locked, Key=key)
        assert h.get("ObjectLockMode") == "GOVERNANCE" and h["ObjectLockRetainUntilDate"] > soon, (key, h)
    # Deleting a locked version is refused, whoever asks (without the governance bypass).
    vid = s.s3.head_object(Bucket=locked, Key=small[0])["VersionId"]
    with pytest.raises(ClientError):
        s.s3.delete_object(Bucket=locked, Key=small[0], VersionId=vid)
    # And the vault still reads back whole from the bucket.
    out = tmp_path / "out"
    run("get", "--config", v.config, "--passphrase-file", v.passfile, "b.txt", "big.mov", out)
    assert (out / "b.txt").read_bytes() == b"notes" and (out / "big.mov").read_bytes() == big


def write_through_a_mount(v):
    """Two small files and one big enough to go multipart, flushed; returns the big one's bytes."""
    v.mount()
    (v.mnt / "a.jpg").write_bytes(os.urandom(200_000))
    (v.mnt / "b.txt").write_bytes(b"notes")
    big = os.urandom(20 << 20)  # multipart: the lock is set when the upload is created
    (v.mnt / "big.mov").write_bytes(big)
    v.flush()
    v.unmount()
    return big
