"""The object-store contract checked on the real servers the other tests use.

`coldvault::store::conformance` holds what coldvault relies on from S3 (conditional writes,
ranges, multipart, listings, archive tiers, errors). The unit tests run it on the in-memory
fake; here it runs through `S3Store`, the mount's own client, on s3s-fs and on moto, so a
behaviour the fake has and a real server lacks shows up as a failure, not as a green suite.
"""
import os
import subprocess

import pytest

from conftest import ROOT, RESTORE_SECONDS, need

# What each server is expected to do. s3s-fs has no archive tiers and no multipart listing;
# both implement conditional writes. Neither answers NoSuchUpload as S3 does for a part sent to
# a completed or aborted upload: s3s-fs answers 403 AccessDenied, moto HTTP 500.
CAPS = {
    "s3s-fs": "conditional",
    "moto": "conditional,archive,list-multipart",
}
SKIPPED = {"s3s-fs": 5, "moto": 2}


@pytest.mark.parametrize("kind", sorted(CAPS))
def test_server_keeps_the_store_contract(servers, kind):
    cargo = need("cargo", "Rust (rustup)")
    s = servers(kind)
    bucket = s.new_bucket()
    env = dict(os.environ)
    env.update({
        "COLDVAULT_CONFORMANCE_ENDPOINT": s.endpoint,
        "COLDVAULT_CONFORMANCE_BUCKET": bucket,
        "COLDVAULT_CONFORMANCE_CAPS": CAPS[kind],
        "COLDVAULT_CONFORMANCE_RESTORE_SECONDS": str(RESTORE_SECONDS),
    })
    r = subprocess.run([cargo, "test", "--release", "--locked", "--test", "store_conformance", "--", "--ignored", "--nocapture"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = "\n".join(l for l in r.stdout.splitlines() if l.startswith(("ok ", "FAILED ", "skipped ")) or " passed, " in l)
    assert r.returncode == 0, f"{kind}:\n{report}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "0 failed" in report and "FAILED" not in report, report
    # Everything declared was checked.
    assert f"{SKIPPED[kind]} skipped" in report, report
