"""Recovery from the bucket alone, offline commands, and PutObject-only write-only mounts."""
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from botocore.exceptions import ClientError

from conftest import sha, ROOT, client_through, free_port, is_mounted, policy_proxy, run
from treegen import make_tree


def snapshot_tree(root):
    """path -> (kind, size, mtime_ns, mode, sha256) for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if rel.endswith(".restore-status"):
                continue
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d", st.st_mode & 0o7777)
            else:
                out[rel] = ("f", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
    return out



def want_key(v, path):
    return v.object_key(path)


def fresh_cache(v, name):
    v.cache = v.tmp / name
    return v


def test_rebuild_500_files_with_renames_deletions_and_deep_archive(servers, vault_factory, tmp_path):
    s = servers("moto")
    v = vault_factory(s)
    args = ("--class-rule", "raw/**=DEEP_ARCHIVE")
    v.mount(*args)
    src = tmp_path / "src"
    files = make_tree(src, n_files=500, seed=3, big=())
    (src / "raw").mkdir()
    rng = random.Random(5)
    for i in range(20):
        p = src / "raw" / f"IMG_{i:04d}.CR2"
        p.write_bytes(rng.randbytes(140_000 + i))
        os.utime(p, ns=(1_500_000_000_123_456_789 + i, 1_500_000_000_123_456_789 + i))
    os.chmod(src / "raw" / "IMG_0003.CR2", 0o600)
    subprocess.run(["rsync", "-a", f"{src}/", f"{v.mnt}/"], check=True)
    v.flush()
    # After upload: renames (file and folder), deletions, chmod, utimens, a new empty folder.
    m = v.mnt
    victims = sorted(p for p in files if "/" in p)[:12]
    for p in victims[:6]:
        os.unlink(m / p)
    for p in victims[6:]:
        os.rename(m / p, m / (p + ".renamed"))
    topdir = sorted(d for d in os.listdir(m) if os.path.isdir(m / d) and d != "raw")[0]
    os.rename(m / topdir, m / (topdir + " (moved)"))
    os.chmod(m / "raw" / "IMG_0007.CR2", 0o640)
    os.utime(m / "raw" / "IMG_0008.CR2", ns=(1, 1_234_567_890_999_999_999))
    (m / "empty folder").mkdir(mode=0o700)
    os.symlink("raw/IMG_0001.CR2", m / "link-to-raw")
    v.flush()
    want = snapshot_tree(m)
    v.unmount()
    # A new machine: same config, empty cache dir.
    fresh_cache(v, "cache-new-machine")
    v.mount(*args)
    meta_objects = len(s.objects(v.bucket, v.prefix + "j/")) + len(s.objects(v.bucket, v.prefix + "s/"))
    gets = v.status()["requests"].get("GetObject", 0)
    assert 0 < gets <= meta_objects, f"the rebuild read only journal and snapshot objects ({gets} GETs, {meta_objects} such objects)"
    got = snapshot_tree(v.mnt)
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    for k in want:
        assert got[k] == want[k], (k, got[k], want[k])
    req = v.status()["requests"]
    assert "RestoreObject" not in req, req
    # Standard files read back identical; archived ones are refused (EAGAIN) without a GET first.
    for rel, meta in list(want.items())[:80]:
        if meta[0] == "f" and not rel.startswith("raw/"):
            orig = src / rel.replace(" (moved)", "").replace(".renamed", "")
            if orig.exists():
                assert sha(v.mnt / rel) == sha(orig), rel
    gets_before = v.status()["requests"].get("GetObject", 0)
    v.unmount()
    listed = run("ls", "--config", v.config, "--passphrase-file", v.passfile, "-R", "raw").stdout
    assert "DEEP_ARCHIVE" in listed and "IMG_0007.CR2" in listed, listed
    # get reports archived files (never skips them silently) and can request their restore.
    out = tmp_path / "out"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "raw", out, check=False)
    assert r.returncode != 0 and "archived: raw/IMG_0001.CR2 (DEEP_ARCHIVE)" in r.stdout, r.stdout + r.stderr
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "--restore", "raw/IMG_0001.CR2", out, check=False)
    assert r.returncode != 0 and "restore requested" in r.stdout, r.stdout
    head = s.s3.head_object(Bucket=v.bucket, Key=want_key(v, "raw/IMG_0001.CR2"))
    assert "ongoing-request" in head.get("Restore", ""), head
    assert gets_before >= 0


def test_get_restores_a_folder_and_refuses_unsafe_paths(servers, vault_factory, tmp_path):
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    src = tmp_path / "src"
    files = make_tree(src / "photos", n_files=40, seed=9, big=(3 << 20,))
    subprocess.run(["cp", "-a", f"{src}/photos", str(v.mnt)], check=True)
    v.flush()
    v.unmount()
    out = tmp_path / "out"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out)
    assert "restored 40 file(s)" in r.stdout, r.stdout
    for rel, (size, ns) in files.items():
        p = out / "photos" / rel
        assert sha(p) == sha(src / "photos" / rel), rel
        assert os.stat(p).st_mtime_ns == ns
    # An object crafted with the vault's public key whose metadata names ../../etc/passwd.
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL)
    cfg = v.config.read_text()
    import tomllib
    c = tomllib.loads(cfg)
    subprocess.run([sys.executable, str(evil), s.endpoint, v.bucket, v.prefix, c["vault"]["public_key"]], check=True)
    out2 = tmp_path / "out2"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out2, check=False)
    assert r.returncode != 0 and "../../etc/passwd" in r.stderr, r.stderr
    assert not (tmp_path / "etc").exists() and not list(tmp_path.glob("**/passwd"))
    assert (out2 / "photos").exists(), "the safe files are still restored"



def test_get_never_writes_outside_its_destination(servers, vault_factory, tmp_path):
    """A machine the vault allows, compromised (its signing key stolen), says `photos/x` is a
    link to a folder outside and `photos/x/authorized_keys` a file, in either order; the
    destination already holds a link where a folder goes; a file is setuid. `get` writes
    nothing outside its destination, never follows a link, and drops setuid without owners;
    run again, it downloads nothing it already wrote."""
    import tomllib
    import forge
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "photos").mkdir()
    (v.mnt / "photos" / "a.jpg").write_bytes(os.urandom(300_000))
    (v.mnt / "photos" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(v.mnt / "photos" / "tool", 0o4755)
    assert os.stat(v.mnt / "photos" / "tool").st_mode & 0o7777 == 0o4755
    v.flush()
    v.unmount()
    outside = tmp_path / "outside"
    outside.mkdir()
    pub = tomllib.loads(v.config.read_text())["vault"]["public_key"]
    box = forge.Machine()
    run("machine", "allow", box.token(), "--config", v.config, "--passphrase-file", v.passfile)
    bad = forge.put_file(s.s3, v.bucket, v.prefix, pub, b"ssh-ed25519 AAAA attacker\n", signer=box)
    up = lambda path: {"op": "upload", "path": path, "mtime_ns": 1, "mode": 0o600, "uid": 0, "gid": 0, **bad}
    link = lambda path: {"op": "symlink", "path": path, "target": str(outside), "uid": 0, "gid": 0, "mtime_ns": 1}
    # Later records win: x ends as a link (what was below it goes), y as a folder with the file.
    forge.put_journal(s.s3, v.bucket, v.prefix, pub,
                      [up("photos/x/authorized_keys"), link("photos/x"), link("photos/y"), up("photos/y/authorized_keys")], signer=box)
    out = tmp_path / "out"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out, check=False)
    assert list(outside.iterdir()) == [], r.stdout + r.stderr
    assert os.readlink(out / "photos" / "x") == str(outside), "a link's target is kept verbatim"
    assert (out / "photos" / "y").is_dir() and not (out / "photos" / "y").is_symlink()
    assert (out / "photos" / "y" / "authorized_keys").read_bytes() == b"ssh-ed25519 AAAA attacker\n"
    assert os.stat(out / "photos" / "tool").st_mode & 0o7777 == 0o755, "setuid restored without --preserve-owner"
    assert sha(out / "photos" / "a.jpg") and r.returncode == 0, r.stdout + r.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".coldvault-part")]
    # Again: everything is already there (same size and time), nothing is downloaded again.
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out)
    assert "restored 0 file(s), 0 bytes, 3 already there" in r.stdout, r.stdout
    # A destination where `photos` is a link to elsewhere: refused by name, nothing written there.
    out2, elsewhere = tmp_path / "out2", tmp_path / "elsewhere"
    out2.mkdir()
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, out2 / "photos")
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out2, check=False)
    assert r.returncode != 0 and "is a symbolic link: not followed" in r.stderr, r.stdout + r.stderr
    assert list(elsewhere.iterdir()) == []
    assert os.stat(elsewhere).st_mode & 0o7777 == 0o700, "the folder's mode was set through the link"


# Crafts an object in coldvault format v1 from docs/FORMAT.md with Python's cryptography.
EVIL = r'''
import base64, hashlib, json, os, sys
import boto3
from botocore.config import Config
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
endpoint, bucket, prefix, pub_b64 = sys.argv[1:5]
V = base64.b64decode(pub_b64)
def hkdf(salt, ikm, info): return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)
pt = b"root::0:0:root:/root:/bin/sh\n"
dk = os.urandom(32); prefix7 = os.urandom(7)
e = X25519PrivateKey.generate(); E = e.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
shared = e.exchange(X25519PublicKey.from_public_bytes(V))
head9 = b"CVAULT" + (1).to_bytes(2, "big") + bytes([16])
wrapped = AESGCM(hkdf(E + V, shared, b"coldvault/v1/wrap")).encrypt(b"\0" * 12, dk, head9)
header = head9 + E + wrapped + prefix7 + hkdf(b"", dk, b"coldvault/v1/commit")
assert len(header) == 128
seg = AESGCM(hkdf(b"", dk, b"coldvault/v1/content")).encrypt(prefix7 + (0).to_bytes(4, "big") + b"\x01", pt, header)
meta = json.dumps({"path": "../../etc/passwd", "size": len(pt), "mtime_ns": 0, "mode": 420, "uid": 0, "gid": 0,
                   "sha256": hashlib.sha256(pt).hexdigest()}).encode()
cvm = AESGCM(hkdf(b"", dk, b"coldvault/v1/meta")).encrypt(b"\0" * 12, meta, header)
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
s3.put_object(Bucket=bucket, Key=prefix + "d/" + "e" * 64, Body=header + seg,
              Metadata={"cvh": base64.b64encode(header).decode(), "cvm": base64.b64encode(cvm).decode()})
'''


def _three_photos(servers, vault_factory):
    """A vault on s3s-fs holding photos/0.jpg … 2.jpg, unmounted: the server, the vault, its
    tree as the mount showed it, its public key, and a listing of the keys under a sub-prefix."""
    import tomllib
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "photos").mkdir()
    for i in range(3):
        (v.mnt / "photos" / f"{i}.jpg").write_bytes(os.urandom(50_000 + i))
    v.flush()
    want = snapshot_tree(v.mnt)
    v.unmount()
    pub = tomllib.loads(v.config.read_text())["vault"]["public_key"]
    listed = lambda sub: [o["Key"] for o in s.s3.list_objects_v2(Bucket=v.bucket, Prefix=v.prefix + sub).get("Contents", [])]
    return s, v, want, pub, listed


def test_forged_metadata_is_refused_by_name(servers, vault_factory, tmp_path):
    """Whoever can put objects under the vault's prefix (a leaked write-only credential, the
    provider) and knows its public key forges, from FORMAT.md alone: a journal batch that
    deletes a photo and adds another; a snapshot of a new machine, newer than everything, that
    saw the honest journal to its end, lists nothing and calls every honest object dead; a
    batch signed with their own key under the honest machine's name; the honest machine's last
    batch and its signature copied under a later sequence range; a data object signed by a
    machine the vault does not allow. `ls`, `get` and a mount on a new machine each refuse
    every one by name and show the vault as it was."""
    import forge
    s, v, want, pub, listed = _three_photos(servers, vault_factory)
    honest = listed("j/")
    machine = honest[0].split("/")[-2]
    data = listed("d/")
    bad = forge.put_file(s.s3, v.bucket, v.prefix, pub, b"not my photo\n")
    up = {"op": "upload", "path": "photos/evil.jpg", "mtime_ns": 1, "mode": 0o644, "uid": 0, "gid": 0, **bad}
    forged = [forge.put_journal(s.s3, v.bucket, v.prefix, pub, [up, {"op": "remove", "path": "photos/0.jpg"}])]
    attacker = forge.Machine()
    forged.append(forge.put_snapshot(s.s3, v.bucket, v.prefix, pub, attacker.id, 10**6, 2**53, [], dead_keys=data,
                                     seen={machine: 10**9, attacker.id: 10**6}))
    forged.append(forge.put_journal(s.s3, v.bucket, v.prefix, pub, [up], first_seq=10**6, signer=forge.Machine(machine)))
    last = s.s3.get_object(Bucket=v.bucket, Key=honest[-1])
    moved = f"{v.prefix}j/{machine}/{10**7:016d}-{10**7:016d}"
    s.s3.put_object(Bucket=v.bucket, Key=moved, Body=last["Body"].read(), Metadata=last["Metadata"])
    forged.append(moved)
    forged.append(forge.put_file(s.s3, v.bucket, v.prefix, pub, b"x", path="photos/stranger.jpg", signer=forge.Machine())["key"])

    r = run("ls", "--config", v.config, "--passphrase-file", v.passfile, "-R", check=False)
    for k in forged:
        assert k in r.stderr, f"{k} not named: {r.stderr}"
    for n in ("0.jpg", "1.jpg", "2.jpg"):
        assert n in r.stdout, r.stdout
    assert "evil" not in r.stdout and "stranger" not in r.stdout, r.stdout
    out = tmp_path / "out"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "photos", out, check=False)
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"], r.stdout + r.stderr
    assert all(k in r.stderr for k in forged), r.stderr
    fresh_cache(v, "cache-new-machine")
    v.mount()
    assert snapshot_tree(v.mnt) == want
    log = v.log()
    assert all(k in log for k in forged), log[-3000:]
    v.unmount()


def test_deleted_statements_and_a_planted_snapshot_are_adopted_by_no_one(servers, vault_factory, tmp_path):
    """Security review N1: someone who can delete and put objects deletes every statement under
    m/ and plants an unsigned snapshot of a new machine, newer than everything, holding only
    their file and saying it saw the honest journal to its end. A new machine joining is
    refused, naming the signed objects and the planted one; the machine that knew the vault
    signs does not rebuild from it; once the statements are back, `machine adopt` of the
    planted machine shows the forgery and adopts nothing unasked, and refuses a machine the
    vault allows. Nothing is written under m/ meanwhile, and the vault reads as it was."""
    import forge
    s, v, want, pub, listed = _three_photos(servers, vault_factory)
    machine = listed("j/")[0].split("/")[-2]
    bad = forge.put_file(s.s3, v.bucket, v.prefix, pub, b"not my photo\n")
    up = {"op": "upload", "path": "photos/evil.jpg", "mtime_ns": 1, "mode": 0o644, "uid": 0, "gid": 0, **bad}
    attacker = forge.Machine()
    planted = forge.put_snapshot(s.s3, v.bucket, v.prefix, pub, attacker.id, 1, 2**53, [up],
                                 seen={machine: 10**9, attacker.id: 1})
    statements = {k: s.s3.get_object(Bucket=v.bucket, Key=k)["Body"].read() for k in listed("m/")}
    assert statements
    for k in statements:
        s.s3.delete_object(Bucket=v.bucket, Key=k)

    # A new machine joins: refused, by name.
    new_cfg = tmp_path / "new-machine.toml"
    r = run("init", "--bucket", v.bucket, "--prefix", v.prefix.rstrip("/"), "--endpoint-url", s.endpoint,
            "--config", new_cfg, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and not new_cfg.exists(), r.stdout + r.stderr
    assert "carry a machine's signature" in r.stderr and machine in r.stderr and planted in r.stderr, r.stderr
    # The machine that knew, on an empty cache: no rebuild from what is there.
    fresh_cache(v, "cache-after-deletion")
    r = run("mount", "--config", v.config, "--cache-dir", v.cache, "--passphrase-file", v.passfile, v.mnt, check=False)
    assert r.returncode != 0 and not is_mounted(v.mnt), r.stdout + r.stderr
    assert "none of its statements" in r.stderr + v.log(), r.stderr
    assert listed("m/") == []

    # The statements restored from a copy: the planted machine is shown, not adopted unasked.
    for k, body in statements.items():
        s.s3.put_object(Bucket=v.bucket, Key=k, Body=body)
    r = run("machine", "adopt", "--machine", attacker.id, "--config", v.config, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "nothing adopted" in r.stderr, r.stdout + r.stderr
    assert planted in r.stdout and "photos/evil.jpg" in r.stdout and f"{machine} to record {10**9}" in r.stdout, r.stdout
    r = run("machine", "adopt", "--machine", machine, "--yes", "--config", v.config, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "allows a key of machine" in r.stderr, r.stdout + r.stderr
    assert sorted(listed("m/")) == sorted(statements), "a statement was written"
    fresh_cache(v, "cache-restored")
    v.mount()
    assert snapshot_tree(v.mnt) == want
    v.unmount()


def _peak_rss_mib(*args):
    """Run coldvault with `args` in a process of its own; its result and the peak RSS (MiB)
    of coldvault as the kernel counted it."""
    wrapper = ("import resource, subprocess, sys, json\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps([r.returncode, r.stdout, r.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    from conftest import BIN
    out = subprocess.run([sys.executable, "-c", wrapper, BIN, *map(str, args)], capture_output=True, text=True, timeout=600)
    code, stdout, stderr, kib = json.loads(out.stdout)
    return code, stdout, stderr, kib / 1024


def test_init_makes_no_new_vault_where_one_lost_its_descriptor(servers, vault_factory, tmp_path):
    """Security review N10: with vault.json deleted, a machine's recovery (`init` with the
    passphrase) must not turn into a new, unrelated vault over the old one's objects."""
    s, v, _, _, _ = _three_photos(servers, vault_factory)
    desc = f"{v.prefix}coldvault/vault.json"
    s.s3.delete_object(Bucket=v.bucket, Key=desc)
    new_cfg = tmp_path / "recovering.toml"
    r = run("init", "--bucket", v.bucket, "--prefix", v.prefix.rstrip("/"), "--endpoint-url", s.endpoint,
            "--config", new_cfg, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "shows a vault was here" in r.stderr, r.stdout + r.stderr
    assert not new_cfg.exists()
    assert "Contents" not in s.s3.list_objects_v2(Bucket=v.bucket, Prefix=desc), "a new vault.json was written"


def test_a_256_mib_planted_batch_costs_a_rebuild_one_listing_entry(servers, vault_factory, tmp_path):
    """Security review N3: ~250 MiB journal batches sealed to the vault's public key, one under
    a machine id the vault does not know and one under the honest machine's own id, are neither
    downloaded nor decrypted: `ls` names each, shows the vault as it was, and its peak RSS stays
    under 150 MiB."""
    import forge
    s, v, _, pub, listed = _three_photos(servers, vault_factory)
    honest = listed("j/")[0].split("/")[-2]
    rec = '{"seq":%d,"ts_ms":1,"op":"mkdir","path":"junk/%d","mode":493,"uid":0,"gid":0,"mtime_ns":1}'
    n = 2_640_000  # records of about 100 bytes: a batch just under 256 MiB, below the cap of older builds
    planted = []
    for machine, first in ((os.urandom(8).hex(), 1), (honest, 10**6)):
        doc = '{"machine":"%s","records":[' % machine + ",".join(rec % (first + i, i) for i in range(n)) + "]}"
        _, body, _ = forge.seal(pub, doc.encode())
        assert 240 << 20 < len(body) < 256 << 20, len(body)
        key = f"{v.prefix}j/{machine}/{first:016d}-{first + n - 1:016d}"
        s.s3.put_object(Bucket=v.bucket, Key=key, Body=body)
        planted.append(key)
        del doc, body
    code, out, err, peak = _peak_rss_mib("ls", "--config", v.config, "--passphrase-file", v.passfile, "-R")
    assert code == 0, err
    assert "0.jpg" in out and "junk" not in out, out
    for k in planted:
        assert k in err, f"{k} not named: {err}"
    print(f"peak RSS of `ls -R` with two planted batches of {len(planted)} x ~250 MiB: {peak:.0f} MiB")
    assert peak < 150, f"peak RSS {peak:.0f} MiB"


def test_write_only_mount_through_a_putobject_only_policy(servers, vault_factory, tmp_path):
    """A write-only machine, set up with the vault's fingerprint and nothing secret, through
    the write-only policy (PutObject, and GetObject of vault.json alone): a vault.json swapped in
    the bucket is refused; its config holds the public key only; it backs up, renames and
    deletes; a full machine rebuilds all of it."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    proxy, port, log = policy_proxy(s, v, "write-only", tmp_path)
    try:
        time.sleep(0.5)
        endpoint = f"http://127.0.0.1:{port}"
        fp = run("key", "fingerprint", "--config", v.config).stdout.strip()
        assert len(fp) == 39 and fp.count("-") == 7, fp
        # Someone who can write to the bucket swaps vault.json for one with their own key.
        desc_key = f"{v.prefix}coldvault/vault.json"
        honest = s.s3.get_object(Bucket=v.bucket, Key=desc_key)["Body"].read()
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        import base64
        theirs = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        swapped = json.loads(honest)
        swapped["public_key"] = base64.b64encode(theirs).decode()
        s.s3.put_object(Bucket=v.bucket, Key=desc_key, Body=json.dumps(swapped).encode())
        wo = tmp_path / "write-only.toml"
        init_wo = ("init", "--write-only", "--bucket", v.bucket, "--prefix", v.prefix.rstrip("/"), "--endpoint-url", endpoint,
                   "--fingerprint", fp, "--config", wo)
        r = run(*init_wo, check=False, env={"COLDVAULT_PASSPHRASE": ""})
        assert r.returncode != 0 and "may have been replaced" in r.stderr and fp in r.stderr, r.stderr
        assert not wo.exists()
        s.s3.put_object(Bucket=v.bucket, Key=desc_key, Body=honest)
        r = run(*init_wo, input="", env={"COLDVAULT_PASSPHRASE": ""})
        assert fp in r.stdout, r.stdout
        text = wo.read_text()
        full = v.config.read_text()
        import tomllib
        c_full, c_wo = tomllib.loads(full), tomllib.loads(text)
        for secret in ("wrapped_secret", "name_key_wrapped", "secret_nonce"):
            assert c_full["vault"][secret] and not c_wo["vault"].get(secret), secret
            assert c_full["vault"][secret] not in text
        assert not c_wo.get("name_key") and c_full["name_key"] not in text
        assert c_wo["write_only"] is True and c_wo["vault"]["public_key"] == c_full["vault"]["public_key"]
        r = run("ls", "--config", wo, check=False)
        assert r.returncode != 0 and "write-only machine" in r.stderr, r.stderr
        r = run("key", "passwd", "--config", wo, check=False, input="")
        assert r.returncode != 0 and "write-only machine" in r.stderr, r.stderr
        assert c_wo["vault"]["vault_id"].startswith("wo-"), "the cache dir is named after the pinned key"
        assert s.s3.get_object(Bucket=v.bucket, Key=desc_key)["Body"].read() == honest
        # No passphrase at all, and no --write-only: the config says what this machine is.
        r = run("mount", "--config", wo, "--cache-dir", v.cache, "--settle", "0.5", v.mnt, input="")
        assert "mounting write-only" in r.stderr, r.stderr
        assert is_mounted(v.mnt)
        src = tmp_path / "src"
        files = make_tree(src, n_files=200, seed=21, big=(20 << 20,))
        dst = v.mnt / "backup"
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        v.flush()
        before = v.status()["requests"]
        r = subprocess.run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/"], check=True, capture_output=True, text=True)
        assert r.stdout == ""
        assert v.status()["requests"] == before, "the second rsync made no requests"
        # Renames and deletions of uploaded files: journal only.
        names = sorted(files)
        os.rename(dst / names[0], dst / (names[0] + ".moved"))
        os.unlink(dst / names[1])
        v.flush()
        # Reading uploaded content needs the private key: EACCES and a log line.
        rd = subprocess.run(["cat", str(dst / names[2])], capture_output=True)
        assert rd.returncode != 0 and b"Permission denied" in rd.stderr, rd.stderr
        assert "write-only" in v.log()
        # What a stolen write-only machine would plant in a tree someone restores later.
        (dst / ".git" / "hooks").mkdir(parents=True)
        for name, mode in ((".git/hooks/post-checkout", 0o755), ("tool.sh", 0o755), ("suid", 0o4755)):
            (dst / name).write_bytes(b"#!/bin/sh\necho planted\n")
            os.chmod(dst / name, mode)
        v.flush()
        want = snapshot_tree(dst)
        token = v.status()["machine_token"]
        v.unmount()
    finally:
        proxy.terminate()
        proxy.wait()
    entries = [json.loads(l) for l in log.read_text().splitlines()]
    denied = [e for e in entries if not e["allowed"]]
    assert not denied, f"requests outside PutObject: {denied[:5]}"
    ops = {e["op"] for e in entries}
    assert ops <= {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "GetDescriptor"}, ops
    assert sum(e["op"] == "GetDescriptor" for e in entries) == 2, "vault.json is read by init only"
    assert "UploadPart" in ops, "the 20 MiB file went multipart"
    # Until a full machine allows its key, what the write-only machine signed is not believed,
    # and each of its objects is named; then a full mount on a fresh machine rebuilds all of it.
    r = run("ls", "--config", v.config, "--passphrase-file", v.passfile, "-R", check=False)
    assert "backup" not in r.stdout and "allows no key of that machine" in r.stderr and token.split(":")[0] in r.stderr, r.stdout + r.stderr
    r = run("machine", "allow", token, "--config", v.config, "--passphrase-file", v.passfile)
    assert "write-only" in r.stdout, r.stdout
    listed = run("machine", "list", "--config", v.config, "--passphrase-file", v.passfile).stdout
    assert token.split(":")[0] in listed and "WriteOnly" in listed and "allowed" in listed, listed
    # Restored, what it wrote is data: no execute or setuid bit, nothing under a dot name,
    # unless the user names the machine (security review N6).
    machine = token.split(":")[0]
    out = tmp_path / "restored"
    r = run("get", "--config", v.config, "--passphrase-file", v.passfile, "backup", out)
    assert f"--trust-machine {machine}" in r.stdout and "3 under a dot name not restored (e.g. backup/.git)" in r.stdout, r.stdout
    assert not (out / "backup" / ".git").exists()
    for name in ("tool.sh", "suid", names[2]):
        assert os.stat(out / "backup" / name).st_mode & 0o7111 == 0, name
    assert sha(out / "backup" / names[2]) == sha(src / names[2])
    trusted = tmp_path / "restored-trusted"
    run("get", "--config", v.config, "--passphrase-file", v.passfile, "--trust-machine", machine, "backup", trusted)
    assert os.stat(trusted / "backup" / "tool.sh").st_mode & 0o777 == 0o755
    assert os.stat(trusted / "backup" / ".git" / "hooks" / "post-checkout").st_mode & 0o777 == 0o755
    fresh_cache(v, "cache-full")
    v.mount()
    got = snapshot_tree(v.mnt / "backup")
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == want[k], k
    names_left = [n for n in sorted(files)[2:12]]
    for n in names_left:
        assert sha(v.mnt / "backup" / n) == sha(src / n)
    assert sha(v.mnt / "backup" / (names[0] + ".moved")) == sha(src / names[0])
    v.unmount()


def test_verify_deep_detects_deleted_and_corrupted_objects(servers, vault_factory, tmp_path):
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    for i in range(5):
        (v.mnt / f"f{i}.jpg").write_bytes(os.urandom(100_000))
    v.flush()
    v.unmount()
    ok = run("verify", "--config", v.config, "--cache-dir", v.cache, "--deep", "--passphrase-file", v.passfile)
    assert "decrypted 5" in ok.stdout and "ok" in ok.stdout, ok.stdout
    # Delete one object and flip a byte in another, behind coldvault's back.
    s.s3.delete_object(Bucket=v.bucket, Key=v.object_key("f1.jpg"))
    key = v.object_key("f2.jpg")
    body = bytearray(s.s3.get_object(Bucket=v.bucket, Key=key)["Body"].read())
    head = s.s3.head_object(Bucket=v.bucket, Key=key)
    body[5000] ^= 0x01
    s.s3.put_object(Bucket=v.bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])
    shallow = run("verify", "--config", v.config, "--cache-dir", v.cache, check=False)
    assert shallow.returncode != 0 and "f1.jpg" in shallow.stdout and "missing" in shallow.stdout, shallow.stdout
    deep = run("verify", "--config", v.config, "--cache-dir", v.cache, "--deep", "--passphrase-file", v.passfile, check=False)
    assert deep.returncode != 0, deep.stdout
    assert "f1.jpg" in deep.stdout and "f2.jpg" in deep.stdout, deep.stdout
    assert "2 problem(s)" in deep.stderr, deep.stderr
    # On a new machine (no index: when people run it), from the bucket's journal alone, with
    # the passphrase; a third object swapped for another valid object of the vault.
    import tomllib
    import forge
    pub = tomllib.loads(v.config.read_text())["vault"]["public_key"]
    other = forge.put_file(s.s3, v.bucket, v.prefix, pub, os.urandom(100_000))
    swapped = s.s3.get_object(Bucket=v.bucket, Key=other["key"])["Body"].read()
    s.s3.delete_object(Bucket=v.bucket, Key=other["key"])
    s.s3.put_object(Bucket=v.bucket, Key=v.object_key("f3.jpg"), Body=swapped)
    new_machine = tmp_path / "no-index-here"
    r = run("verify", "--config", v.config, "--cache-dir", new_machine, check=False, input="")
    assert r.returncode != 0 and "passphrase" in r.stderr, r.stderr
    shallow = run("verify", "--config", v.config, "--cache-dir", new_machine, "--passphrase-file", v.passfile, check=False)
    assert "recorded in the bucket's journal" in shallow.stdout, shallow.stdout
    assert shallow.returncode != 0 and "f1.jpg" in shallow.stdout and "missing" in shallow.stdout, shallow.stdout
    deep = run("verify", "--config", v.config, "--cache-dir", new_machine, "--deep", "--passphrase-file", v.passfile, check=False)
    problems = [l for l in deep.stdout.splitlines() if l.startswith("PROBLEM")]
    assert sorted(p.split(":")[0] for p in problems) == ["PROBLEM f1.jpg", "PROBLEM f2.jpg", "PROBLEM f3.jpg"], deep.stdout
    assert "header" in next(p for p in problems if "f3.jpg" in p), problems
    assert "checked 5 file(s)" in deep.stdout and "decrypted 4" in deep.stdout, deep.stdout
    assert not new_machine.exists(), "verify made a cache dir"


def test_recovery_errors_and_keys(servers, vault_factory, tmp_path):
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "a.txt").write_text("recover me")
    v.flush()
    v.unmount()
    # A new machine joins the vault with the passphrase only; not through a vault.json whose
    # vault_id (a cache folder's name) or name key someone replaced, keeping the wrapped key.
    import base64
    c2 = tmp_path / "c2.toml"
    desc_key = f"{v.prefix}coldvault/vault.json"
    honest = s.s3.get_object(Bucket=v.bucket, Key=desc_key)["Body"].read()
    # Another name key, sealed to the vault's public key as FORMAT.md section 2 says.
    import forge
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    vpub = base64.b64decode(json.loads(honest)["public_key"])
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kek = forge.hkdf(eph_pub + vpub, eph.exchange(X25519PublicKey.from_public_bytes(vpub)), b"coldvault/v1/wrap")
    theirs = {"name_key_eph": base64.b64encode(eph_pub).decode(),
              "name_key_wrapped": base64.b64encode(AESGCM(kek).encrypt(b"\0" * 12, b"\x09" * 32, b"coldvault/v1/name-key")).decode()}
    for field, change in (("vault_id", {"vault_id": "0123456789abcdef"}), ("name key", theirs)):
        swapped = {**json.loads(honest), **change}
        s.s3.put_object(Bucket=v.bucket, Key=desc_key, Body=json.dumps(swapped).encode())
        r = run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", c2, "--passphrase-file", v.passfile, check=False)
        assert r.returncode != 0 and "differs from what the vault signed" in r.stderr and not c2.exists(), (field, r.stderr)
    s.s3.put_object(Bucket=v.bucket, Key=desc_key, Body=honest)
    # What the vault signed of vault.json gone: nothing to check it against, no join.
    signed = {o["Key"]: s.s3.get_object(Bucket=v.bucket, Key=o["Key"])["Body"].read()
              for o in s.s3.list_objects_v2(Bucket=v.bucket, Prefix=f"{v.prefix}m/vault-")["Contents"]}
    for k in signed:
        s.s3.delete_object(Bucket=v.bucket, Key=k)
    r = run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", c2, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "missing or unreadable" in r.stderr and not c2.exists(), r.stderr
    for k, body in signed.items():
        s.s3.put_object(Bucket=v.bucket, Key=k, Body=body)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    r = run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", c2, "--passphrase-file", wrong, check=False)
    assert r.returncode != 0 and "wrong passphrase" in r.stderr and not c2.exists(), r.stderr
    r = run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", c2, "--passphrase-file", v.passfile)
    assert "joined existing vault" in r.stdout
    out = tmp_path / "out"
    run("get", "--config", c2, "--passphrase-file", v.passfile, "a.txt", out)
    assert (out / "a.txt").read_text() == "recover me"
    # Recovery key works instead of the passphrase; passwd changes it everywhere.
    rk = run("key", "export-recovery", "--config", c2, "--passphrase-file", v.passfile).stdout.strip()
    assert rk.startswith("CVRK1-")
    rkf = tmp_path / "rk"
    rkf.write_text(rk)
    run("ls", "--config", c2, "--recovery-key-file", rkf)
    newp = tmp_path / "newp"
    newp.write_text("a new passphrase\n")
    run("key", "passwd", "--config", c2, "--passphrase-file", v.passfile, "--new-passphrase-file", newp)
    r = run("ls", "--config", c2, "--passphrase-file", v.passfile, check=False)
    assert r.returncode != 0 and "wrong passphrase" in r.stderr
    assert "a.txt" in run("ls", "--config", c2, "--passphrase-file", newp).stdout
    c3 = tmp_path / "c3.toml"
    run("init", "--bucket", v.bucket, "--prefix", "vault", "--endpoint-url", s.endpoint, "--config", c3, "--passphrase-file", newp)
    # A vault written by a newer format version: one clear error.
    newer = tmp_path / "newer.toml"
    assert "format = 2" in c2.read_text(), "new vaults are vault format 2"
    newer.write_text(c2.read_text().replace("format = 2", "format = 3"))
    r = run("ls", "--config", newer, "--passphrase-file", newp, check=False)
    assert r.returncode != 0 and "vault format 3" in r.stderr and "upgrade coldvault" in r.stderr, r.stderr
    # Missing config, missing bucket.
    r = run("ls", "--config", tmp_path / "none.toml", check=False)
    assert r.returncode != 0 and "coldvault init" in r.stderr
    gone = tmp_path / "gone.toml"
    gone.write_text(c2.read_text().replace(f'bucket = "{v.bucket}"', 'bucket = "no-such-bucket-x"'))
    r = run("ls", "--config", gone, "--passphrase-file", newp, check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    # The policy printer.
    pol = json.loads(run("policy", "--bucket", "photos", "--prefix", "laptop", "--mode", "write-only").stdout)
    puts = [st for st in pol["Statement"] if st["Action"] == ["s3:PutObject"]]
    assert len(puts) == 2 and all(st["Resource"] == [f"arn:aws:s3:::photos/laptop/{d}/*" for d in "djs"] for st in puts), pol
    # An object is created only by a request that says If-None-Match (nothing can be
    # overwritten); the multipart calls that cannot say it create nothing.
    assert {json.dumps(st["Condition"], sort_keys=True) for st in puts} == {
        json.dumps({"Null": {"s3:if-none-match": "false"}}), json.dumps({"Bool": {"s3:ObjectCreationOperation": "false"}})}, pol
    assert {"Sid": "ReadDescriptor", "Effect": "Allow", "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::photos/laptop/coldvault/vault.json"} in pol["Statement"], pol
    assert len(pol["Statement"]) == 3
    # Limited to one machine's journal and snapshots.
    pol = json.loads(run("policy", "--bucket", "photos", "--prefix", "laptop", "--mode", "write-only", "--machine", "0123456789abcdef").stdout)
    assert all(st["Resource"] == ["arn:aws:s3:::photos/laptop/d/*", "arn:aws:s3:::photos/laptop/j/0123456789abcdef/*",
                                  "arn:aws:s3:::photos/laptop/s/0123456789abcdef/*"] for st in pol["Statement"] if st["Action"] == ["s3:PutObject"])
    for bad in (("--mode", "write-only", "--machine", "../x"), ("--mode", "mount", "--machine", "0123456789abcdef")):
        r = run("policy", "--bucket", "photos", *bad, check=False)
        assert r.returncode != 0 and "--machine" in r.stderr, r.stderr


def test_ransomware_through_write_only_credentials_destroys_nothing_get_at_brings_back(servers, vault_factory, tmp_path):
    """Issue 26: a write-only backup box (PutObject only, through a proxy that enforces it) backs
    up a folder; then ransomware on that box overwrites every file in the mount with random bytes
    and deletes them all. The live vault shows the damage; every object written before is still
    in the bucket, and `get --at` (the moment before) brings every file back, byte for byte."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    proxy, port, log = policy_proxy(s, v, "write-only", tmp_path)
    try:
        time.sleep(0.5)
        fp = run("key", "fingerprint", "--config", v.config).stdout.strip()
        wo = tmp_path / "write-only.toml"
        r = run("init", "--write-only", "--bucket", v.bucket, "--prefix", v.prefix.rstrip("/"), "--endpoint-url",
                f"http://127.0.0.1:{port}", "--fingerprint", fp, "--config", wo, input="", env={"COLDVAULT_PASSPHRASE": ""})
        # The box's credential is then limited to its own machine id's journal and snapshots,
        # with the command init printed.
        machine = re.search(r'^machine_id = "([0-9a-f]{16})"$', wo.read_text(), re.M).group(1)
        assert f"--mode write-only --machine {machine}" in r.stdout, r.stdout
        proxy.terminate()
        proxy.wait()
        proxy, port, log = policy_proxy(s, v, "write-only", tmp_path, extra=("--machine", machine), port=port)
        time.sleep(0.5)
        run("mount", "--config", wo, "--cache-dir", v.cache, "--settle", "0.5", v.mnt, input="")
        src = tmp_path / "src"
        files = make_tree(src, n_files=40, seed=26, big=())
        dst = v.mnt / "backup"
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        v.flush()
        time.sleep(1.2)
        before = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        time.sleep(1.2)
        objects_before = {o["Key"] for o in v.data_objects()}
        # The attack: every file overwritten in place with random bytes, then deleted.
        for name in files:
            (dst / name).write_bytes(os.urandom(4096))
        v.flush()
        for name in files:
            (dst / name).unlink()
        v.flush()
        token = v.status()["machine_token"]
        v.unmount()
        denied = [e for e in map(json.loads, log.read_text().splitlines()) if not e["allowed"]]
        assert not denied, f"requests outside the write-only policy: {denied[:5]}"
        # The stolen credential itself, outside coldvault: no object can be overwritten (a PUT
        # without If-None-Match is refused; with it, an existing key is not replaced) or deleted.
        stolen = client_through(s, port)
        # Nor can it write a journal batch or snapshot under another machine's id.
        for d in ("j", "s"):
            with pytest.raises(ClientError):
                stolen.put_object(Bucket=v.bucket, Key=f"{v.prefix}{d}/0123456789abcdef/0000000000000001", Body=b"x", IfNoneMatch="*")
        victim = sorted(objects_before)[0]
        for attempt in (lambda: stolen.put_object(Bucket=v.bucket, Key=victim, Body=b"ransom"),
                        lambda: stolen.put_object(Bucket=v.bucket, Key=victim, Body=b"ransom", IfNoneMatch="*"),
                        lambda: stolen.delete_object(Bucket=v.bucket, Key=victim)):
            with pytest.raises(ClientError):
                attempt()
    finally:
        proxy.terminate()
        proxy.wait()
    assert objects_before <= {o["Key"] for o in v.data_objects()}, "no object written before the attack is gone"
    run("machine", "allow", token, "--config", v.config, "--passphrase-file", v.passfile)
    cli = ("--config", v.config, "--passphrase-file", v.passfile)
    now = run("ls", *cli, "-R", "backup", check=False)
    assert not any(n.split("/")[-1] in now.stdout for n in files), "the live vault shows the files deleted: " + now.stdout
    out = tmp_path / "restored"
    run("get", *cli, "--at", before, "backup", out)
    for name in files:
        assert sha(out / "backup" / name) == sha(src / name), name
    some = sorted(files)[0]
    r = run("ls", *cli, "--versions", f"backup/{some}")
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 2 and "now" not in r.stdout, r.stdout  # the backup, then the random bytes, then deleted


def test_the_restore_policy_reads_everything_and_changes_nothing(servers, vault_factory, tmp_path):
    """Issue 26: what `coldvault policy --mode restore` prints is enough for `ls`, `ls --versions`,
    `get` and `get --at` from the bucket alone (through a proxy that enforces it as IAM does),
    and the credential can neither write nor delete anything."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "docs").mkdir()
    (v.mnt / "docs" / "a.txt").write_bytes(b"first")
    v.flush()
    time.sleep(1.2)
    then = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    time.sleep(1.2)
    (v.mnt / "docs" / "a.txt").write_bytes(b"second")
    v.flush()
    v.unmount()
    proxy, port, log = policy_proxy(s, v, "restore", tmp_path)
    try:
        time.sleep(0.5)
        text = v.config.read_text()
        ro = tmp_path / "restore.toml"
        ro.write_text(text.replace(s.endpoint, f"http://127.0.0.1:{port}"))
        cli = ("--config", ro, "--passphrase-file", v.passfile)
        assert "a.txt" in run("ls", *cli, "-R").stdout
        assert len(run("ls", *cli, "--versions", "docs/a.txt").stdout.splitlines()) == 3
        run("get", *cli, "docs", tmp_path / "now")
        run("get", *cli, "--at", then, "docs", tmp_path / "then")
        assert (tmp_path / "now" / "docs" / "a.txt").read_bytes() == b"second"
        assert (tmp_path / "then" / "docs" / "a.txt").read_bytes() == b"first"
        reqs = [json.loads(l) for l in log.read_text().splitlines()]
        assert not [r for r in reqs if not r["allowed"]], [r for r in reqs if not r["allowed"]][:5]
        c = client_through(s, port)
        key = v.data_objects()[0]["Key"]
        for attempt in (lambda: c.put_object(Bucket=v.bucket, Key=key, Body=b"x"),
                        lambda: c.put_object(Bucket=v.bucket, Key=v.prefix + "d/new", Body=b"x", IfNoneMatch="*"),
                        lambda: c.delete_object(Bucket=v.bucket, Key=key)):
            with pytest.raises(ClientError):
                attempt()
    finally:
        proxy.terminate()
        proxy.wait()


def test_a_rollback_by_deleting_the_newest_journal_batches_is_reported(servers, vault_factory, tmp_path):
    """Review N8: someone with delete rights removes a machine's newest journal batches and its
    snapshots, so a rebuild shows the vault as it was before (here: a deleted file is back).
    A machine that read the vault before remembers how far each journal reached (its config)
    and says ROLLBACK, by machine and record, in `ls` and in a fresh mount's rebuild; reading
    an earlier moment (`ls --at`) or an untouched vault says nothing of the kind."""
    s = servers("s3s-fs")
    v = vault_factory(s)
    v.mount()
    (v.mnt / "contract.pdf").write_bytes(b"signed")
    (v.mnt / "draft.txt").write_bytes(b"draft")
    v.flush()
    time.sleep(1.2)
    before = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    (v.mnt / "draft.txt").unlink()
    v.flush()
    v.unmount()
    cli = ("--config", v.config, "--passphrase-file", v.passfile)
    r = run("ls", *cli)
    assert "draft.txt" not in r.stdout and "ROLLBACK" not in r.stderr, r.stderr
    assert "journal_heads" in v.config.read_text()
    r = run("ls", *cli, "--at", before)
    assert "draft.txt" in r.stdout and "ROLLBACK" not in r.stderr, r.stderr
    # The attack: the newest batch and every snapshot go.
    batches = sorted(o["Key"] for o in s.objects(v.bucket, v.prefix + "j/"))
    assert len(batches) >= 2, batches
    for key in [batches[-1]] + [o["Key"] for o in s.objects(v.bucket, v.prefix + "s/")]:
        s.s3.delete_object(Bucket=v.bucket, Key=key)
    r = run("ls", *cli)
    assert "draft.txt" in r.stdout, "the rolled-back vault shows the deleted file again"
    machine = batches[-1].split("/")[-2]
    assert "ROLLBACK" in r.stderr and machine in r.stderr, r.stderr
    v.cache = tmp_path / "fresh-cache"
    v.mount()
    assert "ROLLBACK" in v.log() and machine in v.log()
    v.unmount()
