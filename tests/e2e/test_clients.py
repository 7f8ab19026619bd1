"""Real clients on a real mount: rsync across a daemon restart, a photo exporter
(rawtherapee-cli) into the mount and through Samba, exiftool editing in place."""
import os
import subprocess

import pytest

from conftest import sha, clear_staged, need
from test_samba import Samba
from tiffgen import write_tiff16
from treegen import make_tree




def itemize(src, dst, *extra):
    r = subprocess.run(["rsync", "-a", "--itemize-changes", *extra, f"{src}/", f"{dst}/"], capture_output=True, text=True, check=True)
    return r.stdout


@pytest.mark.parametrize("kind", ["s3s-fs"])
def test_rsync_no_op_after_daemon_restart_with_and_without_checksums(kind, servers, vault_factory, tmp_path):
    v = vault_factory(servers(kind))
    src = tmp_path / "src"
    make_tree(src, n_files=120, seed=51, big=(5 << 20,))
    v.mount()
    dst = v.mnt / "dst"
    assert itemize(src, dst) != ""
    assert itemize(src, dst) == "", "second run is a no-op"
    v.flush()
    v.unmount()
    clear_staged(v)
    v.mount()
    assert itemize(src, dst) == "", "quick check after restart"
    assert itemize(src, dst, "-c") == "", "full checksums (content read back from S3) after restart"
    assert v.status()["requests"].get("GetObject", 0) > 0
    v.unmount()


def test_photo_export_and_exiftool_in_place(servers, vault_factory, tmp_path):
    need("rawtherapee-cli", "rawtherapee")
    need("exiftool", "libimage-exiftool-perl")
    v = vault_factory(servers("s3s-fs"))
    v.mount("--allow-other")
    tif = tmp_path / "shoot" / "IMG_0001.tif"
    tif.parent.mkdir()
    write_tiff16(tif)
    out = v.mnt / "export"
    out.mkdir()
    r = subprocess.run(["rawtherapee-cli", "-Y", "-o", str(out), "-j90", "-c", str(tif)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    jpg = out / "IMG_0001.jpg"
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff", "a JPEG"
    # The same export through the share.
    smb = Samba(v, tmp_path)
    try:
        local = tmp_path / "local"
        local.mkdir()
        r = subprocess.run(["rawtherapee-cli", "-Y", "-o", str(local), "-j90", "-c", str(tif)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        smb.client(f"mkdir viasmb; put {local / 'IMG_0001.jpg'} viasmb/IMG_0001.jpg")
    finally:
        smb.stop()
    assert sha(v.mnt / "viasmb" / "IMG_0001.jpg") == sha(local / "IMG_0001.jpg")
    # exiftool edits in place: writes a temp file, renames it over the original.
    r = subprocess.run(["exiftool", "-overwrite_original", "-Artist=coldvault tester", "-Copyright=2026", str(jpg)], capture_output=True, text=True)
    assert r.returncode == 0 and "1 image files updated" in r.stdout, r.stdout + r.stderr
    edited = sha(jpg)
    v.flush()
    assert not [n for n in os.listdir(out) if "exiftool_tmp" in n]
    v.unmount()
    clear_staged(v)
    v.mount()
    assert sha(jpg) == edited
    r = subprocess.run(["exiftool", "-s3", "-Artist", str(jpg)], capture_output=True, text=True)
    assert r.stdout.strip() == "coldvault tester", r.stdout
    # The export and the share copy are live; the only other object may be the export's version
    # from before the edit (kept: versions are never overwritten). exiftool's temp file was
    # never uploaded separately.
    live = {v.object_key("export/IMG_0001.jpg"), v.object_key("viasmb/IMG_0001.jpg")}
    keys = {o["Key"] for o in v.data_objects()}
    db = v.db()
    dead = {k for (k,) in db.execute("SELECT key FROM dead_keys")}
    db.close()
    assert live <= keys and len(keys - live) <= 1 and keys - live <= dead, (keys, live, dead)
    v.unmount()
