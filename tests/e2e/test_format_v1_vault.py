"""A vault written by coldvault 0.1 (format 1) still mounts, reads, lists, recovers and takes new
changes with this build.

tests/fixtures/v1/bucket/ is every object 0.1 wrote for a small vault (path-derived object keys,
journal records without the cross-machine clock floor, a snapshot without `seen`, a rewrite over
the same key, renames, deletions before and after the snapshot); scripts/make-v1-bucket-fixture.py
made it once with the 0.1 binary and it is never regenerated.
"""
import hashlib
import json
import os
import pathlib

from conftest import ROOT, Vault, is_mounted, need, run, sha

FIXTURE = ROOT / "tests" / "fixtures" / "v1" / "bucket"


def load_fixture(server):
    """A fresh bucket holding exactly the objects 0.1 wrote."""
    f = json.loads((FIXTURE / "fixture.json").read_text())
    bucket = server.new_bucket()
    for o in f["objects"]:
        body = (FIXTURE / "objects" / o["file"]).read_bytes()
        assert len(body) == o["size"]
        server.s3.put_object(Bucket=bucket, Key=o["key"], Body=body, Metadata=o["metadata"])
    return f, bucket


def joined_vault(server, tmp, f, bucket):
    """This build's `init` on the 0.1 vault: it joins with the vault's passphrase."""
    v = Vault.__new__(Vault)
    v.server, v.tmp, v.bucket, v.prefix = server, tmp, bucket, f["prefix"] + "/"
    v.config, v.passfile, v.cache, v.mnt = tmp / "config.toml", tmp / "passphrase", tmp / "cache", tmp / "mnt"
    v.passfile.write_text(f["passphrase"] + "\n")
    v.mnt.mkdir()
    run("init", "--bucket", bucket, "--prefix", f["prefix"], "--endpoint-url", server.endpoint,
        "--config", v.config, "--passphrase-file", v.passfile)
    return v


def tree(root):
    """path -> what a user sees of it, in the fixture's expected.json vocabulary."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if rel.endswith(".restore-status"):
                continue
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = {"type": "symlink", "target": os.readlink(p)}
            elif os.path.isdir(p):
                out[rel] = {"type": "dir", "mode": st.st_mode & 0o7777}
            else:
                out[rel] = {"type": "file", "sha256": sha(p), "mode": st.st_mode & 0o7777, "mtime_ns": st.st_mtime_ns,
                            "xattrs": {a: os.getxattr(p, a).decode() for a in os.listxattr(p) if a.startswith("user.")}}
    return out


def check(seen, expected):
    assert sorted(seen) == sorted(expected), f"paths differ: {sorted(seen)} != {sorted(expected)}"
    for path, want in expected.items():
        got = seen[path]
        for field, value in want.items():
            assert got[field] == value, f"{path}: {field} is {got[field]!r}, 0.1 wrote {value!r}"


def test_a_vault_written_by_0_1_mounts_reads_and_recovers(servers, tmp_path):
    need("fusermount3", "fuse3")
    s = servers("s3s-fs")
    f, bucket = load_fixture(s)
    expected = f["expected"]
    v = joined_vault(s, tmp_path, f, bucket)
    try:
        # Offline listing and recovery, as after a disaster.
        listed = run("ls", "--config", v.config, "--passphrase-file", v.passfile, "-R").stdout
        for path in expected:
            assert path in listed, f"`coldvault ls -R` misses {path}:\n{listed}"
        for gone in ("gone.txt", "gone2.txt", "docs/old.txt", "photos/2024/b.cr2"):
            assert gone not in listed.split(), f"{gone} was deleted or renamed by 0.1 and is listed again"
        out = tmp_path / "got"
        run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out)
        for path, want in expected.items():
            if path.startswith("photos/") and want["type"] == "file":
                assert sha(out / path) == want["sha256"], f"`coldvault get` of {path} differs"

        # Nothing unsigned is believed on its own by this build: a mount that would rebuild from
        # 0.1's unsigned journal stops and says how to review it (security review N1).
        r = run("mount", "--config", v.config, "--cache-dir", v.cache, "--passphrase-file", v.passfile, v.mnt, check=False)
        assert r.returncode != 0 and not is_mounted(v.mnt), r.stdout + r.stderr
        assert "machine adopt" in r.stderr, r.stderr
        writers = [l.split()[0] for l in run("machine", "list", "--config", v.config, "--passphrase-file", v.passfile).stdout.splitlines()
                   if "not allowed" in l]
        assert len(writers) == 1, writers
        # Asked without a terminal, the answer is no; with --yes it is adopted after being shown.
        r = run("machine", "adopt", "--machine", writers[0], "--config", v.config, "--passphrase-file", v.passfile, check=False)
        assert r.returncode != 0 and "nothing adopted" in r.stderr, r.stdout + r.stderr
        assert "photos/2024" in r.stdout and "journal batch" in r.stdout, r.stdout
        r = run("machine", "adopt", "--machine", writers[0], "--yes", "--config", v.config, "--passphrase-file", v.passfile)
        assert "adopted" in r.stdout, r.stdout

        # Mount on an empty cache: the index is rebuilt from 0.1's snapshot and journal.
        v.mount()
        check(tree(v.mnt), expected)

        # This build writes into the old vault; a second rebuild merges both formats' records.
        (v.mnt / "after-upgrade.txt").write_bytes(b"written by this build\n")
        os.rename(v.mnt / "later" / "c.txt", v.mnt / "later" / "c2.txt")
        os.unlink(v.mnt / "docs" / "new.txt")
        with open(v.mnt / "photos" / "2024" / "a.jpg", "wb") as w:
            w.write(b"a.jpg rewritten by this build")
        v.flush()
        v.unmount()
        expected = dict(expected)
        expected["later/c2.txt"] = expected.pop("later/c.txt")
        del expected["docs/new.txt"]
        expected["after-upgrade.txt"] = {"type": "file", "sha256": hashlib.sha256(b"written by this build\n").hexdigest()}
        expected["photos/2024/a.jpg"] = dict(expected["photos/2024/a.jpg"],
                                             sha256=hashlib.sha256(b"a.jpg rewritten by this build").hexdigest())
        v.cache = tmp_path / "cache2"
        v.mount()
        check(tree(v.mnt), expected)
        v.unmount()
    finally:
        if is_mounted(v.mnt):
            os.system(f"fusermount3 -uz {v.mnt}")
