"""Issue 26: `coldvault prune` on a real S3 server, through credentials that enforce each policy."""
import json
import os
import time

from conftest import PASSPHRASE, policy_proxy, run  # noqa: F401


def data_classes(v):
    return {o["Key"]: v.server.s3.head_object(Bucket=v.bucket, Key=o["Key"]).get("StorageClass", "STANDARD") for o in v.data_objects()}


def test_prune_removes_superseded_versions_keeps_deep_archive_and_needs_admin_rights(servers, vault_factory, tmp_path):
    """A vault on moto: docs/a.txt written three times, docs/gone.txt written and removed,
    raw/b.CR2 (DEEP_ARCHIVE) written twice, docs/keep.txt once. `prune --keep-within 0d`:
    * --dry-run lists the three superseded STANDARD versions and removes nothing;
    * through the mount policy (no Delete) it is refused and removes nothing;
    * through the admin policy it removes exactly those three, keeps the DEEP_ARCHIVE version
      still inside its 180 days and says so, and a re-run finds nothing to do;
    * `--allow-early-deletion` then removes that one too, after naming its charge;
    * the current files come back from the bucket alone, and `ls --versions` still lists every
      version, the pruned ones said to be pruned."""
    s = servers("moto")
    v = vault_factory(s)
    v.mount("--class-rule", "raw/**=DEEP_ARCHIVE")
    (v.mnt / "docs").mkdir()
    (v.mnt / "raw").mkdir()
    (v.mnt / "docs" / "keep.txt").write_bytes(b"stays")
    (v.mnt / "docs" / "gone.txt").write_bytes(b"removed")
    for k in range(3):
        (v.mnt / "docs" / "a.txt").write_bytes(b"version %d" % k)
        if k < 2:
            # Above the small-file guard (small files never go to an archive class).
            (v.mnt / "raw" / "b.CR2").write_bytes(os.urandom(300_000))
        v.flush()
    (v.mnt / "docs" / "gone.txt").unlink()
    v.flush()
    current = {v.object_key(p) for p in ("docs/a.txt", "docs/keep.txt", "raw/b.CR2")}
    v.unmount()
    before = data_classes(v)
    assert len(before) == 7, before
    old_deep = [k for k, c in before.items() if c == "DEEP_ARCHIVE" and k not in current]
    assert len(old_deep) == 1, before
    superseded = set(before) - current - set(old_deep)
    time.sleep(1.1)  # every superseded version ended before the cut ("now")
    cli = ("--config", v.config, "--passphrase-file", v.passfile)

    r = run("prune", *cli, "--keep-within", "0d", "--dry-run")
    assert "delete  3 versions" in r.stdout, r.stdout
    assert "1 versions" in r.stdout and "minimum duration" in r.stdout and "--allow-early-deletion" in r.stdout, r.stdout
    assert {line.split()[1] for line in r.stdout.splitlines() if line.startswith("  - ")} >= superseded, r.stdout
    assert data_classes(v) == before

    def config_through(mode):
        proxy, port, log = policy_proxy(s, v, mode, tmp_path)
        time.sleep(0.5)
        conf = tmp_path / f"{mode}.toml"
        conf.write_text(v.config.read_text().replace(s.endpoint, f"http://127.0.0.1:{port}"))
        return proxy, conf, log

    proxy, conf, log = config_through("mount")
    try:
        r = run("prune", "--config", conf, "--passphrase-file", v.passfile, "--keep-within", "0d", check=False)
        assert r.returncode != 0 and "AccessDenied" in r.stderr and "run the same prune again" in r.stderr, r.stderr
        assert data_classes(v) == before
    finally:
        proxy.terminate()
        proxy.wait()

    proxy, conf, log = config_through("admin")
    try:
        admin = ("--config", conf, "--passphrase-file", v.passfile)
        r = run("prune", *admin, "--keep-within", "0d")
        assert "deleted" in r.stdout, r.stdout
        after = data_classes(v)
        assert set(after) == current | set(old_deep), (after, current, old_deep)
        assert "nothing to delete" in run("prune", *admin, "--keep-within", "0d").stdout
        denied = [e for e in map(json.loads, log.read_text().splitlines()) if not e["allowed"]]
        assert not denied, denied[:5]
        r = run("prune", *admin, "--keep-within", "0d", "--allow-early-deletion")
        assert "early-deletion charge" in r.stdout, r.stdout
        assert set(data_classes(v)) == current
    finally:
        proxy.terminate()
        proxy.wait()

    out = tmp_path / "out"
    run("get", *cli, "docs", out)
    assert (out / "docs" / "a.txt").read_bytes() == b"version 2"
    assert (out / "docs" / "keep.txt").read_bytes() == b"stays"
    assert not (out / "docs" / "gone.txt").exists()
    rows = run("ls", *cli, "--versions", "docs/a.txt").stdout.splitlines()[1:]
    assert len(rows) == 3 and ["pruned" in r for r in rows] == [True, True, False], rows


def test_lifecycle_rules_are_printed_and_applied_beside_the_buckets_own(servers, vault_factory, tmp_path):
    """`coldvault lifecycle`: --print gives what `aws s3api put-bucket-lifecycle-configuration`
    takes (abort multipart after 7 days for the vault; transitions of file data only, never of
    metadata); --apply through the admin policy puts them beside a rule the bucket already had,
    and applying again replaces the vault's rules instead of adding copies. The mount policy
    cannot change the bucket's rules."""
    s = servers("moto")
    v = vault_factory(s)
    cli = ("--config", v.config)
    r = run("lifecycle", *cli, "--print", "--transition", "180=DEEP_ARCHIVE", "--transition", "30=GLACIER_IR")
    rules = json.loads(r.stdout)["Rules"]
    assert [x["Filter"]["Prefix"] for x in rules] == [v.prefix, v.prefix + "d/"], rules
    assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert rules[1]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER_IR"}, {"Days": 180, "StorageClass": "DEEP_ARCHIVE"}]
    r = run("lifecycle", *cli, "--print", "--transition", "10=STANDARD_IA", check=False)
    assert r.returncode != 0 and "30 days" in r.stderr, r.stderr

    theirs = {"ID": "logs-expire", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 14}}
    s.s3.put_bucket_lifecycle_configuration(Bucket=v.bucket, LifecycleConfiguration={"Rules": [theirs]})

    def ids():
        return sorted(x["ID"] for x in s.s3.get_bucket_lifecycle_configuration(Bucket=v.bucket)["Rules"])

    for mode, ok in (("mount", False), ("admin", True)):
        proxy, port, log = policy_proxy(s, v, mode, tmp_path)
        try:
            time.sleep(0.5)
            conf = tmp_path / f"{mode}.toml"
            conf.write_text(v.config.read_text().replace(s.endpoint, f"http://127.0.0.1:{port}"))
            for _ in range(2 if ok else 1):
                r = run("lifecycle", "--config", conf, "--apply", "--transition", "90=GLACIER", check=False)
                assert (r.returncode == 0) == ok, (mode, r.stdout, r.stderr)
                assert ok or "AccessDenied" in r.stderr, r.stderr
            if ok:
                assert "kept the bucket's 1 other rules" in r.stdout, r.stdout
        finally:
            proxy.terminate()
            proxy.wait()
    p = v.prefix
    assert ids() == sorted(["logs-expire", f"coldvault:{p}:abort-multipart", f"coldvault:{p}:data-transitions"]), ids()
