"""Samba re-exporting a real coldvault mount, on loopback only (smbd on 127.0.0.1, its own
state directories and port), driven by smbclient (SMB3) and smbprotocol."""
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from conftest import RESTORE_SECONDS, clear_staged, sha, free_port, is_mounted, need, run
from treegen import make_tree

USER, PASSWORD = "root", "coldvault-smb-test"


class Samba:
    def __init__(self, v, tmp):
        need("smbd", "samba")
        need("pdbedit", "samba")
        need("smbclient", "smbclient")
        need("mountpoint", "util-linux")  # the section's root preexec runs it
        self.dir = tmp / "samba"
        for d in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # `coldvault share` checks the VFS modules its section loads and names the package when one
        # is missing (without them smbd refuses the share and the client only sees a timeout).
        share = run("share", "--samba", "coldvault", v.mnt).stdout
        d = self.dir
        self.conf = d / "smb.conf"
        self.conf.write_text(f"""[global]
   interfaces = lo
   bind interfaces only = yes
   smb ports = {self.port}
   disable netbios = yes
   server role = standalone server
   server min protocol = SMB2_10
   passdb backend = tdbsam:{d}/private/passdb.tdb
   private dir = {d}/private
   lock directory = {d}/lock
   state directory = {d}/state
   cache directory = {d}/cache
   pid directory = {d}/pid
   ncalrpc dir = {d}/ncalrpc
   log file = {d}/log.%m
   log level = 1
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes
   map to guest = never

{share}""")
        subprocess.run(["pdbedit", "-s", str(self.conf), "-a", "-u", USER, "-t"], input=f"{PASSWORD}\n{PASSWORD}\n",
                       text=True, check=True, capture_output=True)
        # Its own session: smbd signals its whole process group when it stops.
        self.proc = subprocess.Popen(["smbd", "--foreground", "--no-process-group", "-s", str(self.conf), "--debug-stdout"],
                                     stdout=open(d / "smbd.out", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(100):
            r = self.client("ls", check=False)
            if r.returncode == 0:
                break
            out = (d / "smbd.out").read_text(errors="replace")
            if "Error loading module" in out or "vfs_init_custom failed" in out:
                self.stop()
                raise AssertionError("smbd cannot load a VFS module: install samba-vfs-modules\n" + out[-3000:])
            if self.proc.poll() is not None:
                raise AssertionError(f"smbd exited ({self.proc.returncode}):\n" + out[-3000:])
            time.sleep(0.2)
        else:
            raise AssertionError("smbd did not come up:\n" + (d / "smbd.out").read_text()[-3000:])

    def client(self, commands, check=True, args=(), cwd=None, timeout=600):
        cmd = ["smbclient", "//127.0.0.1/coldvault", "-p", str(self.port), "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", *args]
        if commands:
            cmd += ["-c", commands]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
        if check:
            assert r.returncode == 0 and "NT_STATUS_" not in r.stdout + r.stderr, f"smbclient {commands!r}:\n{r.stdout}\n{r.stderr}"
        return r

    def add_share(self, name, path):
        """Another share of this smbd (a plain directory, as a control), loaded at once."""
        with open(self.conf, "a") as f:
            f.write(f"\n[{name}]\n   path = {path}\n   read only = no\n")
        subprocess.run(["smbcontrol", "-s", str(self.conf), "smbd", "reload-config"], check=True, capture_output=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def samba_vault(servers, vault_factory, tmp_path):
    v = vault_factory(servers("s3s-fs"))
    v.mount("--allow-other")
    smb = Samba(v, tmp_path)
    yield v, smb
    smb.stop()



def test_share_checks_the_samba_vfs_modules(tmp_path):
    """Regression: a Samba without samba-vfs-modules refused the printed share and clients saw a
    timeout. `coldvault share` now says which package is missing; the real one passes."""
    need("smbd", "samba")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    empty = tmp_path / "modules"
    (empty / "vfs").mkdir(parents=True)
    (empty / "vfs" / "catia.so").write_bytes(b"")
    r = run("share", "--samba", "photos", mnt, "--modules-dir", empty, check=False)
    assert r.returncode != 0 and r.stdout == "", r.stdout
    assert "fruit, streams_xattr" in r.stderr and "samba-vfs-modules" in r.stderr, r.stderr
    assert r.stderr.count("\n") <= 2, "one clear error: " + r.stderr
    ok = run("share", "--samba", "photos", mnt)
    assert "vfs objects = catia fruit streams_xattr" in ok.stdout
    # The installed smbd accepts the section as it is printed.
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n   server role = standalone server\n" + ok.stdout)
    t = subprocess.run([need("testparm", "samba-common-bin"), "-s", str(conf)], capture_output=True, text=True)
    assert t.returncode == 0 and "[photos]" in t.stdout, t.stdout + t.stderr


def daemon_pids(v):
    r = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {v.cache}"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def unmount_when_idle(v):
    """`coldvault unmount` once smbd has let go: the smbd process of the last connection, whose
    working directory is the share's root, exits just after smbclient does (until then the
    mount is busy)."""
    for _ in range(50):
        if run("unmount", v.mnt, check=False, timeout=120).returncode == 0:
            break
        time.sleep(0.2)
    assert not is_mounted(v.mnt), "the mount stayed busy"


def refused(r):
    return r.returncode != 0 and "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr


def test_the_share_takes_no_write_while_the_vault_is_not_mounted(samba_vault, tmp_path):
    """Regression (issue 24, S2): with the vault unmounted and smbd still running, mkdir and put
    through the share returned 0 and the file landed in the bare mount-point directory, where
    the next mount hid it and it was never uploaded. The printed section's root preexec now
    refuses the connection unless the vault is mounted: after an unmount, and after a crashed
    daemon's mount is cleared, the write fails at the client and the bare directory stays empty.
    Mounted again, the share works without reloading Samba (smbd up before the vault at boot)."""
    v, smb = samba_vault
    photo = tmp_path / "IMG_10.jpg"
    photo.write_bytes(os.urandom(100_000))
    smb.client(f"mkdir Before; cd Before; put {photo} IMG_10.jpg")
    write = f"mkdir WhileUnmounted; cd WhileUnmounted; put {photo} IMG_10.jpg"
    unmount_when_idle(v)
    r = smb.client(write, check=False, timeout=60)
    assert refused(r), f"the share took a write while the vault was not mounted:\n{r.stdout}\n{r.stderr}"
    assert os.listdir(v.mnt) == [], "nothing lands in the bare mount point"
    # A crashed daemon: its mount stays, answering ENOTCONN, which keeps writes out of the bare
    # directory; once it is cleared the bare directory is exposed, and the share refuses.
    v.mount("--allow-other")
    smb.client("cd Before; ls IMG_10.jpg")
    pids = daemon_pids(v)
    assert pids, "the daemon is running"
    for p in pids:
        os.kill(p, 9)
    for _ in range(100):
        if not daemon_pids(v):
            break
        time.sleep(0.1)
    r = smb.client(write, check=False, timeout=60)
    assert r.returncode != 0 or "NT_STATUS_" in r.stdout + r.stderr, f"a write through a dead mount succeeded:\n{r.stdout}"
    subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=True)
    assert not is_mounted(v.mnt)
    r = smb.client(write, check=False, timeout=60)
    assert refused(r), f"the share took a write after the crash:\n{r.stdout}\n{r.stderr}"
    assert os.listdir(v.mnt) == [], "nothing lands in the bare mount point"
    # Mounted again (the bare directory is empty, so the mount goes ahead): the same write works.
    v.mount("--allow-other")
    smb.client(write)
    back = tmp_path / "back.jpg"
    smb.client(f"cd WhileUnmounted; get IMG_10.jpg {back}")
    assert sha(back) == sha(photo) == sha(v.mnt / "Before" / "IMG_10.jpg")
    v.flush()
    assert v.status()["failed_files"] == 0


def test_an_immutable_bare_mount_point_mounts_and_takes_no_write(samba_vault):
    """The hardening the printed section recommends for connections that outlive an unmount:
    `chattr +i` on the bare mount point. The vault still mounts over it and the share works;
    unmounted, nothing can be written into it, not even by root (what such a connection would
    meet if smbd re-entered the path)."""
    need("chattr", "e2fsprogs")
    v, smb = samba_vault
    unmount_when_idle(v)
    r = subprocess.run(["chattr", "+i", str(v.mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"the file system of {v.mnt} has no immutable flag: {r.stderr.strip()}")
    try:
        with pytest.raises(PermissionError):
            (v.mnt / "IMG_10.jpg").write_bytes(b"x")
        v.mount("--allow-other")
        smb.client("mkdir Inside; cd Inside; put /etc/hostname hostname")
        assert sha(v.mnt / "Inside" / "hostname") == sha("/etc/hostname")
        v.flush()
        unmount_when_idle(v)
        with pytest.raises(PermissionError):
            (v.mnt / "Inside").mkdir()
        assert os.listdir(v.mnt) == []
    finally:
        if is_mounted(v.mnt):
            subprocess.run(["fusermount3", "-uz", str(v.mnt)], check=False)
        subprocess.run(["chattr", "-i", str(v.mnt)], check=False)


def test_mount_refuses_a_mount_point_that_would_hide_files(servers, vault_factory, tmp_path):
    """Regression (issue 24, U4): `coldvault mount` mounted over a mount point holding files (what
    a share or a script wrote there while the vault was not mounted) without a word, hiding them
    for good. It now refuses before asking for anything, naming them and saying how to get them
    into the vault; moved in after mounting, they upload."""
    v = vault_factory(servers("s3s-fs"))
    photo = os.urandom(100_000)
    (v.mnt / "WhileUnmounted").mkdir()
    (v.mnt / "WhileUnmounted" / "IMG_10.jpg").write_bytes(photo)
    (v.mnt / ".notes").write_text("dot files are hidden too")
    # No passphrase source: the refusal comes before the passphrase is asked for.
    r = run("mount", "--config", v.config, "--cache-dir", v.cache, v.mnt, check=False, input="")
    assert r.returncode != 0 and not is_mounted(v.mnt), r.stdout + r.stderr
    assert "is not empty (2 item(s): \".notes\", \"WhileUnmounted\")" in r.stderr, r.stderr
    assert "move them out of" in r.stderr and "then move them into the mount" in r.stderr, r.stderr
    assert r.stderr.count("\n") <= 2, "one clear error: " + r.stderr
    # As the error says: out, mount, in.
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in list(v.mnt.iterdir()):
        shutil.move(p, aside / p.name)
    v.mount()
    for p in list(aside.iterdir()):
        shutil.move(p, v.mnt / p.name)
    v.flush()
    assert v.status()["failed_files"] == 0
    v.unmount()
    # In the bucket: a mount on an empty cache reads them back.
    v.cache = tmp_path / "rebuilt"
    v.mount()
    assert (v.mnt / "WhileUnmounted" / "IMG_10.jpg").read_bytes() == photo
    assert (v.mnt / ".notes").read_text() == "dot files are hidden too"
    v.unmount()


def tree_digest(root):
    out = {}
    for dp, _, fns in os.walk(root):
        for n in fns:
            p = os.path.join(dp, n)
            out[os.path.relpath(p, root)] = sha(p)
    return out


def test_smbclient_mput_mget_tar_attributes_and_big_file(samba_vault, tmp_path):
    v, smb = samba_vault
    src = tmp_path / "src"
    files = make_tree(src, n_files=200, seed=31, big=())
    # mput of a 200-file tree, then mget back.
    smb.client("prompt OFF; recurse ON; mkdir tree; cd tree; mput *", cwd=src)
    back = tmp_path / "back"
    back.mkdir()
    smb.client("prompt OFF; recurse ON; cd tree; mget *", cwd=back)
    assert tree_digest(back) == tree_digest(src)
    assert tree_digest(v.mnt / "tree") == tree_digest(src), "the mount holds what the share received"
    # tar extract through the share keeps every mtime.
    tarp = tmp_path / "t.tar"
    with tarfile.open(tarp, "w") as t:
        t.add(src, arcname="tarred")
    r = smb.client("", args=("-Tx", str(tarp)))
    assert "restore" in (r.stdout + r.stderr).lower() or r.returncode == 0, r.stdout + r.stderr
    for rel, (size, ns) in files.items():
        st = os.stat(v.mnt / "tarred" / rel)
        assert st.st_size == size and int(st.st_mtime) == ns // 1_000_000_000, rel
    # DOS attributes.
    smb.client("put /etc/hostname attrs.txt; setmode attrs.txt +a; setmode attrs.txt +r; setmode attrs.txt +h")
    info = smb.client("allinfo attrs.txt").stdout
    assert "attributes: RHA" in info or ("attributes:" in info and all(c in info.split("attributes:")[1].split()[0] for c in "RHA")), info
    assert "NOT_SUPPORTED" not in info
    # A 300 MiB round trip.
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    smb.client(f"put {big} big.bin", timeout=900)
    got = tmp_path / "big.back"
    smb.client(f"get big.bin {got}", timeout=900)
    assert sha(got) == sha(big)
    # Everything survives flush, unmount and a mount that must read from S3.
    v.flush()
    smb.stop()
    v.unmount()
    for d in ("spool", "outbox", "rcache"):
        for f in (v.cache / d).iterdir():
            f.unlink()
    v.mount("--allow-other")
    assert tree_digest(v.mnt / "tree") == tree_digest(src)
    assert sha(v.mnt / "big.bin") == sha(big)
    attrs = os.getxattr(v.mnt / "attrs.txt", "user.DOSATTRIB")
    assert attrs, "DOS attributes kept"
    # As an administrator would look at them on the gateway.
    g = subprocess.run([need("getfattr", "attr"), "-d", "-m", "user.", str(v.mnt / "attrs.txt")],
                       capture_output=True, text=True)
    assert g.returncode == 0 and "user.DOSATTRIB=" in g.stdout, g.stdout + g.stderr
    v.unmount()


MIRROR = os.path.join(os.path.dirname(__file__), "smb_mirror.py")


def test_robocopy_style_mirror_second_run_copies_nothing(samba_vault, tmp_path):
    v, smb = samba_vault
    src = tmp_path / "src"
    make_tree(src, n_files=120, seed=41, big=(6 << 20,))
    cmd = ["python3", MIRROR, str(src), "127.0.0.1", str(smb.port), "coldvault", "mirror", USER, PASSWORD]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "copied 120" in first.stdout, first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    assert "copied 0, deleted 0" in second.stdout, second.stdout
    # /MIR deletes extras and re-copies changed files.
    (v.mnt / "mirror" / "extra.txt").write_text("not in the source")
    changed = next(p for p in sorted(src.rglob("*.jpg")))
    with open(changed, "r+b") as f:
        f.write(b"edited")
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert "copied 1, deleted 1" in third.stdout, third.stdout + third.stderr
    assert not (v.mnt / "mirror" / "extra.txt").exists()
    assert tree_digest(v.mnt / "mirror") == tree_digest(src)
    for dp, _, fns in os.walk(src):
        for n in fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, src)
            assert abs(os.stat(v.mnt / "mirror" / rel).st_mtime - os.stat(p).st_mtime) < 1e-6, rel
    assert os.getxattr(v.mnt / "mirror" / os.path.relpath(changed, src), "user.DOSATTRIB"), "attributes set after the write"
    v.flush()
    assert v.status()["failed_files"] == 0


def smbtorture(smb, share, tests):
    """Run smbtorture's SMB2 tests against a share of this smbd; {test: 'success'|'failure'|...}."""
    need("smbtorture", "samba-testsuite")
    r = subprocess.run(["smbtorture", f"//127.0.0.1/{share}", "-p", str(smb.port), "-U", f"{USER}%{PASSWORD}",
                        "--option=torture:sharedelay=100000", *tests], capture_output=True, text=True, timeout=900)
    results = {}
    for line in r.stdout.splitlines():
        for word in ("success", "failure", "error", "skip"):
            if line.startswith(word + ": "):
                results[line[len(word) + 2:].split()[0]] = word
    assert results, f"smbtorture ran nothing:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return results, r.stdout


def test_smbtorture_timestamps_match_a_plain_directory(samba_vault):
    """smbtorture's smb2.timestamps on the coldvault share: times far from now (time_t
    10,000,000,000 and 15,032,385,535 — past 2262, where 64-bit nanoseconds overflow) read back
    as set, and nothing fails that does not also fail on a share of a plain local directory."""
    v, smb = samba_vault
    plain = smb.dir / "plain"
    plain.mkdir()
    smb.add_share("plain", plain)
    ours, out = smbtorture(smb, "coldvault", ["smb2.timestamps"])
    theirs, out_plain = smbtorture(smb, "plain", ["smb2.timestamps"])
    print("coldvault share:", ours, "\nplain directory:", theirs)
    for t in ("time_t_10000000000", "time_t_15032385535"):
        assert ours.get(t) == "success", f"{t}: {ours.get(t)}\n{out[-4000:]}"
    worse = {t: r for t, r in ours.items() if r != "success" and theirs.get(t) == "success"}
    assert not worse, f"fail on coldvault and pass on a plain directory: {worse}\n{out[-4000:]}"


def test_robocopy_overwrite_fetches_nothing_and_needs_no_restore(servers, vault_factory, tmp_path):
    """Regression (issue 24, item 8): smbd opens an existing file for writing without O_TRUNC and
    truncates it afterwards (FILE_OVERWRITE_IF: open, then ftruncate to 0; a client's SetInfo
    end-of-file 0 likewise), and coldvault fetched the old version at the open: robocopy copying
    20 changed 1 MiB files over their older versions made 21 GETs in a standard-class folder, and
    under a DEEP_ARCHIVE rule 20 of 20 writes failed with SMB errors and asked for restores. Both
    ways over a cold cache are now new versions: 0 GETs, no restore, the new content read back."""
    import smbclient as smbc
    s = servers("moto")
    v = vault_factory(s)
    rule = ("--class-rule", "raw/**=DEEP_ARCHIVE", "--restore-poll", "1")
    v.mount(*rule)
    src, names = tmp_path / "src", [f"IMG_{i:04}.CR2" for i in range(20)]
    for d in ("std", "raw"):
        (src / d).mkdir(parents=True)
        (v.mnt / d).mkdir()
        for n in names:
            (src / d / n).write_bytes(os.urandom(1 << 20))
            shutil.copy2(src / d / n, v.mnt / d / n)  # the times too: the mirror compares them
    v.flush()

    def klass(rel):
        return s.s3.head_object(Bucket=v.bucket, Key=v.object_key(rel)).get("StorageClass", "STANDARD")
    assert {klass(f"raw/{n}") for n in names} == {"DEEP_ARCHIVE"}
    assert {klass(f"std/{n}") for n in names} == {"STANDARD"}
    old_key = v.object_key("raw/IMG_0001.CR2")
    v.unmount()
    clear_staged(v)
    v.mount("--allow-other", *rule)
    smb = Samba(v, tmp_path)
    try:
        # New content for all 40. The even ones get a new mtime and robocopy (the mirror helper:
        # FILE_OVERWRITE_IF, write, then times and attributes) copies them; the odd ones keep their
        # old mtime, so the mirror leaves them, and another client rewrites them in place:
        # FILE_OPEN, SetInfo FileEndOfFileInformation 0, write.
        new = {}
        for d in ("std", "raw"):
            for i, n in enumerate(names):
                p = src / d / n
                st = p.stat()
                new[f"{d}/{n}"] = os.urandom(1 << 20)
                p.write_bytes(new[f"{d}/{n}"])
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + (1_000_000_000 if i % 2 == 0 else 0)))
        t0 = time.time()
        for d in ("std", "raw"):
            r = subprocess.run(["python3", MIRROR, str(src / d), "127.0.0.1", str(smb.port), "coldvault", d, USER, PASSWORD],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0 and "copied 10, deleted 0" in r.stdout, f"{d}:\n{r.stdout}\n{r.stderr[-3000:]}"
        smbc.register_session("127.0.0.1", username=USER, password=PASSWORD, port=smb.port, encrypt=False)
        try:
            for d in ("std", "raw"):
                for n in names[1::2]:
                    with smbc.open_file(f"\\\\127.0.0.1\\coldvault\\{d}\\{n}", mode="r+b", port=smb.port) as f:
                        f.truncate(0)
                        f.write(new[f"{d}/{n}"])
        finally:
            smbc.delete_session("127.0.0.1", port=smb.port)
        took = time.time() - t0
        req = v.status()["requests"]
        print(f"40 overwrites through the share in {took:.1f}s; requests since mount: {req}")
        assert req.get("GetObject", 0) == 0, f"an overwrite fetched the old version: {req}"
        assert req.get("RestoreObject", 0) == 0, f"an overwrite asked for a restore: {req}"
        # (Not read back here: uploaded at once, the new raw versions are archived already.)
        v.flush()
        assert v.status()["failed_files"] == 0
        assert v.object_key("raw/IMG_0001.CR2") != old_key, "a new version"
        assert {klass(f"raw/{n}") for n in names} == {"DEEP_ARCHIVE"}, "the new versions follow the rule"
    finally:
        smb.stop()
    # From the bucket alone: std at once, raw once restored.
    v.unmount()
    clear_staged(v)
    v.mount(*rule)
    run("restore", v.mnt / "raw")
    deadline = time.time() + RESTORE_SECONDS + 60
    for rel, data in new.items():
        while True:
            try:
                got = (v.mnt / rel).read_bytes()
                break
            except BlockingIOError:
                assert time.time() < deadline, f"{rel} not restored"
                time.sleep(0.5)
        assert got == data, rel
    v.unmount()
