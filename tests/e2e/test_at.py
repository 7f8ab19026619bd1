"""Issue 26: the vault as it was at a time, inside the mount (`.coldvault/at/TIME/…`),
read-only, reached from the mount itself and through the Samba share."""
import errno
import os
import re
import time

import pytest
from conftest import run  # noqa: F401
from test_samba import Samba


def stamp():
    """Now, as a view name a Windows or macOS client can type (no colons)."""
    return time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())


def write_versions(v, f, contents):
    """Writes each content in turn, each flushed to S3; the moment each was current."""
    moments = []
    for c in contents:
        f.write_bytes(c)
        v.flush()
        time.sleep(1.2)
        moments.append(stamp())
        time.sleep(1.2)
    return moments


def test_the_point_in_time_folder_shows_each_version_read_only(servers, vault_factory, tmp_path):
    """A file written three times and then deleted: `.coldvault/at/T/…` for a moment each version
    was current holds that version, byte for byte, beside the files that stayed; after the
    deletion it holds no such file. Nothing can be written there (EROFS), and the views made are
    listed in `.coldvault/at`. A name that is not a time is simply not there."""
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    (v.mnt / "docs").mkdir()
    (v.mnt / "docs" / "keep.txt").write_bytes(b"stays")
    f = v.mnt / "docs" / "report.txt"
    contents = [os.urandom(3000 * (k + 1)) for k in range(3)]
    moments = write_versions(v, f, contents)
    f.unlink()
    v.flush()
    time.sleep(1.2)
    after = stamp()
    at = v.mnt / ".coldvault" / "at"
    for t, c in zip(moments, contents):
        assert (at / t / "docs" / "report.txt").read_bytes() == c, t
        assert (at / t / "docs" / "keep.txt").read_bytes() == b"stays"
        assert sorted(os.listdir(at / t / "docs")) == ["keep.txt", "report.txt"]
    assert sorted(os.listdir(at / after / "docs")) == ["keep.txt"]
    # The colon form names the same moment.
    colon = moments[0][:13] + ":" + moments[0][14:16] + ":" + moments[0][17:]
    assert (at / colon / "docs" / "report.txt").read_bytes() == contents[0]
    assert set(os.listdir(at)) == set(moments) | {after, colon}
    assert not (at / "yesterday").exists()
    view = at / moments[1] / "docs"
    for attempt in (lambda: (view / "report.txt").write_bytes(b"x"), lambda: (view / "new.txt").write_bytes(b"x"),
                    lambda: (view / "report.txt").unlink(), lambda: os.mkdir(view / "d"),
                    lambda: os.rename(view / "keep.txt", view / "k2.txt"), lambda: os.chmod(view / "keep.txt", 0o777)):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, e.value
    assert (view / "report.txt").read_bytes() == contents[1], "unchanged"
    # Copying a version back out into the live vault makes it current again.
    (v.mnt / "docs" / "report.txt").write_bytes((view / "report.txt").read_bytes())
    assert f.read_bytes() == contents[1]
    v.unmount()


def test_an_archived_older_version_is_restored_through_the_point_in_time_folder(servers, vault_factory, tmp_path):
    """On moto, a DEEP_ARCHIVE file rewritten: its older version, opened in the point-in-time
    folder, answers EAGAIN, has one restore requested (a status file beside it says so), and
    reads back as it was once the restore is done."""
    s = servers("moto")
    v = vault_factory(s)
    v.mount("--class-rule", "raw/**=DEEP_ARCHIVE", "--restore-poll", "1")
    (v.mnt / "raw").mkdir()
    old = os.urandom(300_000)
    moments = write_versions(v, v.mnt / "raw" / "x.CR2", [old, os.urandom(300_000)])
    view = v.mnt / ".coldvault" / "at" / moments[0] / "raw"
    with pytest.raises(OSError) as e:
        (view / "x.CR2").read_bytes()
    assert e.value.errno == errno.EAGAIN, e.value
    status = view / "x.CR2.restore-status"
    deadline = time.time() + 60
    while time.time() < deadline and not status.exists():
        time.sleep(0.5)
    text = status.read_text()
    assert "DEEP_ARCHIVE" in text and "at/" in text, text
    assert "x.CR2.restore-status" in os.listdir(view)
    # One request, for the old version's object only.
    keys = {o["Key"]: s.s3.head_object(Bucket=v.bucket, Key=o["Key"]) for o in v.data_objects()}
    asked = [k for k, h in keys.items() if "Restore" in h]
    assert asked and asked[0] != v.object_key("raw/x.CR2") and len(asked) == 1, asked
    deadline = time.time() + 120
    while True:
        try:
            got = (view / "x.CR2").read_bytes()
            break
        except OSError as err:
            assert err.errno == errno.EAGAIN and time.time() < deadline, err
            time.sleep(1)
    assert got == old
    v.unmount()


def test_an_older_version_is_dragged_out_through_the_samba_share(servers, vault_factory, tmp_path):
    """A Windows or macOS user on the share types the view's name (no colons) and copies the
    older version out."""
    v = vault_factory(servers("s3s-fs"))
    v.mount("--allow-other")
    smb = Samba(v, tmp_path)
    try:
        (v.mnt / "docs").mkdir()
        first, second = os.urandom(5000), os.urandom(6000)
        moments = write_versions(v, v.mnt / "docs" / "plan.odt", [first, second])
        out = tmp_path / "out"
        out.mkdir()
        smb.client(f"cd .coldvault/at/{moments[0]}/docs; get plan.odt", cwd=out)
        assert (out / "plan.odt").read_bytes() == first
        r = smb.client(f"cd .coldvault/at/{moments[0]}/docs; put /etc/hostname x.txt", check=False)
        assert "NT_STATUS_" in r.stdout + r.stderr, "the view takes no write"
    finally:
        smb.stop()
    v.unmount()


def test_history_of_two_machines_and_their_conflict_copy_from_the_bucket_alone(servers, vault_factory, tmp_path):
    """Two machines mount one vault. A writes a file; B, mounted meanwhile, and A each write a
    new version without seeing the other's; B's is newer, so A's is kept as a conflict copy.
    From the bucket alone, `ls --versions` lists every version with the machine that wrote it,
    the conflict copy included; `get --at` brings back each moment; and a third machine's
    mount shows the moments in `.coldvault/at`."""
    from conftest import run as cv
    v = vault_factory(servers("s3s-fs"))
    v.mount()
    (v.mnt / "shared").mkdir()
    doc = v.mnt / "shared" / "doc.txt"
    m0 = write_versions(v, doc, [b"A1"])[0]
    b_mnt, b_cache = tmp_path / "mnt-b", tmp_path / "cache-b"
    b_mnt.mkdir()
    cv("mount", "--config", v.config, "--cache-dir", b_cache, "--passphrase-file", v.passfile, "--settle", "0.5", b_mnt)
    try:
        assert (b_mnt / "shared" / "doc.txt").read_bytes() == b"A1"
        m1 = write_versions(v, doc, [b"A2, not seen by B"])[0]
        (b_mnt / "shared" / "doc.txt").write_bytes(b"B2, newer")
        cv("flush", "--wait", b_mnt, timeout=600)
        time.sleep(1.2)
        m2 = stamp()
    finally:
        cv("unmount", b_mnt, timeout=120)
    v.unmount()
    cli = ("--config", v.config, "--passphrase-file", v.passfile)
    r = cv("ls", *cli, "--versions", "shared/doc.txt")
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 4, r.stdout
    machines = {re.search(r"  ([0-9a-f]{16})  ", row).group(1) for row in rows}
    assert len(machines) == 2, r.stdout
    assert sum("a conflict copy of shared/doc.txt" in row for row in rows) == 1, r.stdout
    for t, want in ((m0, {"doc.txt": b"A1"}), (m1, {"doc.txt": b"A2, not seen by B"})):
        out = tmp_path / f"get-{t}"
        cv("get", *cli, "--at", t, "shared", out)
        assert {p.name: p.read_bytes() for p in (out / "shared").iterdir()} == want, t
    out = tmp_path / "get-end"
    cv("get", *cli, "--at", m2, "shared", out)
    got = {p.name: p.read_bytes() for p in (out / "shared").iterdir()}
    assert got.pop("doc.txt") == b"B2, newer" and list(got.values()) == [b"A2, not seen by B"], got
    assert list(got)[0].startswith("doc (conflict from "), got
    # A third machine, from the bucket alone.
    v.cache = tmp_path / "cache-c"
    v.mount()
    at = v.mnt / ".coldvault" / "at"
    assert (at / m1 / "shared" / "doc.txt").read_bytes() == b"A2, not seen by B"
    assert sorted(p.read_bytes() for p in (at / m2 / "shared").iterdir()) == [b"A2, not seen by B", b"B2, newer"]
    v.unmount()
