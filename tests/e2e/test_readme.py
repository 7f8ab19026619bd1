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
        # The local S3 server's credentials are this machine's own, kept 0600: the published
        # test credentials do not open it.
        creds = home / ".local" / "share" / "coldvault" / "s3" / "credentials"
        assert os.stat(creds).st_mode & 0o777 == 0o600
        kv = dict(line.split("=", 1) for line in creds.read_text().split())
        assert kv["AWS_ACCESS_KEY_ID"] != "coldvault-test" and len(kv["AWS_SECRET_ACCESS_KEY"]) >= 24, kv.keys()
        import boto3
        import botocore.exceptions
        endpoint = f"http://127.0.0.1:{env['COLDVAULT_LOCAL_PORT']}"
        published = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="coldvault-test",
                                 aws_secret_access_key="coldvault-test-secret")
        try:
            published.list_objects_v2(Bucket="coldvault")
            raise AssertionError("the published test credentials opened the quickstart's S3 server")
        except botocore.exceptions.ClientError:
            pass
        own = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=kv["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=kv["AWS_SECRET_ACCESS_KEY"])
        assert own.list_objects_v2(Bucket="coldvault")["KeyCount"] >= 1
    finally:
        subprocess.run([str(ROOT / "scripts" / "quickstart.sh"), "--stop"], env=env, capture_output=True, timeout=300)
    assert not is_mounted(mnt)
