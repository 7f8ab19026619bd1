"""The README's first command, as a user would run it on a fresh machine: quickstart mounts a
vault on a local S3 server it starts itself (no endpoint given), and files written land in S3."""
import os
import subprocess

from conftest import ROOT, is_mounted, free_port


def test_quickstart_mounts_on_embedded_local_s3(tmp_path, vault_factory):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("COLDVAULT_")}
    env.update(HOME=str(home), COLDVAULT_LOCAL_PORT=str(free_port()), PATH=f"{os.path.expanduser('~')}/.cargo/bin:{env['PATH']}",
               CARGO_HOME=os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")),
               RUSTUP_HOME=os.environ.get("RUSTUP_HOME", os.path.expanduser("~/.rustup")))
    mnt = home / "coldvault"
    try:
        r = subprocess.run([str(ROOT / "scripts" / "quickstart.sh")], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=1800)
        assert r.returncode == 0, r.stdout + r.stderr
        assert is_mounted(mnt)
        assert (home / ".config" / "coldvault" / "passphrase").exists()
        (mnt / "hello.txt").write_text("hello from the quickstart\n")
        r = subprocess.run(["coldvault", "flush", "--wait", str(mnt)], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        objs = list((home / ".local" / "share" / "coldvault" / "s3" / "store" / "coldvault" / "d").iterdir())
        assert len(objs) == 1
        assert b"hello from the quickstart" not in objs[0].read_bytes()
    finally:
        subprocess.run([str(ROOT / "scripts" / "quickstart.sh"), "--stop"], env=env, capture_output=True, timeout=300)
    assert not is_mounted(mnt)
