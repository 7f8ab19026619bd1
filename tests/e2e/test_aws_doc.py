"""docs/AWS.md's walk-through, run as written: every `sh` block, in order, in one bash, against
moto (S3 and IAM) instead of AWS. The administrator's credentials are the default profile of a
fresh HOME; the IAM users' keys are written to profiles by the walk-through itself."""
import os
import re
import subprocess

from conftest import BIN, KEY, PASSPHRASE, ROOT, SECRET, is_mounted, need


def aws_cli():
    """The AWS CLI that scripts/install-deps.sh installs in a venv of its own."""
    mine = os.path.expanduser("~/.cache/coldvault/awscli/bin/aws")
    if os.access(mine, os.X_OK):
        return os.path.dirname(mine)
    need("aws", "awscli (scripts/install-deps.sh installs it)")
    return None


def test_the_aws_walk_through_runs_as_written(servers, tmp_path):
    s = servers("moto")
    aws_dir = aws_cli()
    doc = (ROOT / "docs" / "AWS.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", doc, re.S)
    assert len(blocks) >= 6, "the walk-through's blocks"
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "coldvault").symlink_to(BIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("COLDVAULT_")}
    env.update(HOME=str(home), AWS_ENDPOINT_URL=s.endpoint, COLDVAULT_PASSPHRASE=PASSPHRASE,
               PATH=os.pathsep.join(p for p in (str(bindir), aws_dir, env["PATH"]) if p))
    script = "set -euo pipefail\ncd \"$HOME\"\n" + "\n".join(blocks)
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    mnt = home / "Photos-vault"
    if is_mounted(mnt):
        subprocess.run([BIN, "unmount", str(mnt)], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    bucket = re.search(r"^BUCKET=(\S+)$", doc, re.M).group(1)
    # What the walk-through says it made is there.
    assert "Enabled" in r.stdout
    rules = {x["ID"] for x in s.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules == {"coldvault::abort-multipart", "coldvault::data-transitions", "coldvault::noncurrent"}, rules
    creds = (home / ".aws" / "credentials").read_text()
    assert all(f"[coldvault-{m}]" in creds for m in ("admin", "mount", "restore")), creds
    data = s.s3.list_objects_v2(Bucket=bucket, Prefix="d/").get("Contents", [])
    assert len(data) == 1, data
    head = s.s3.head_object(Bucket=bucket, Key=data[0]["Key"])
    assert head.get("ObjectLockMode") == "GOVERNANCE" and "ObjectLockRetainUntilDate" in head, head
    assert "notes.txt" in r.stdout, "ls with the restore profile lists the file"
    assert "prune: " in r.stdout and "--dry-run: nothing was deleted" in r.stdout
