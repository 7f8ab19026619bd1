"""Makes coldvault objects from docs/FORMAT.md alone (Python `cryptography`, no coldvault
code), as anyone holding the vault's public key and write access to the bucket could: the
forgeries the hardening tests must see refused."""
import base64
import hashlib
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SEG = 65536


def hkdf(salt, ikm, info):
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def seal(vault_pub_b64, pt):
    """(header, body) of an object holding `pt`, sealed to the vault public key (section 4)."""
    v = base64.b64decode(vault_pub_b64)
    dk, prefix7 = os.urandom(32), os.urandom(7)
    e = X25519PrivateKey.generate()
    eph = e.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = e.exchange(X25519PublicKey.from_public_bytes(v))
    head9 = b"CVAULT" + (1).to_bytes(2, "big") + bytes([16])
    wrapped = AESGCM(hkdf(eph + v, shared, b"coldvault/v1/wrap")).encrypt(b"\0" * 12, dk, head9)
    header = head9 + eph + wrapped + prefix7 + hkdf(b"", dk, b"coldvault/v1/commit")
    assert len(header) == 128
    ck = AESGCM(hkdf(b"", dk, b"coldvault/v1/content"))
    n = max(1, -(-len(pt) // SEG))
    parts = [header]
    for i in range(n):
        nonce = prefix7 + i.to_bytes(4, "big") + (b"\x01" if i == n - 1 else b"\x00")
        parts.append(ck.encrypt(nonce, pt[i * SEG:(i + 1) * SEG], header))
    return header, b"".join(parts), dk


def put_file(s3, bucket, prefix, vault_pub_b64, pt, path="forged"):
    """A data object holding `pt` (with user metadata naming `path`); returns the journal's
    `upload` record fields for it."""
    header, body, dk = seal(vault_pub_b64, pt)
    key = prefix + "d/" + os.urandom(16).hex()
    sha = hashlib.sha256(pt).hexdigest()
    meta = json.dumps({"path": path, "size": len(pt), "mtime_ns": 1_600_000_000_000_000_000, "mode": 0o644,
                       "uid": 0, "gid": 0, "sha256": sha}).encode()
    cvm = AESGCM(hkdf(b"", dk, b"coldvault/v1/meta")).encrypt(b"\0" * 12, meta, header)
    s3.put_object(Bucket=bucket, Key=key, Body=body,
                  Metadata={"cvh": base64.b64encode(header).decode(), "cvm": base64.b64encode(cvm).decode()})
    return {"key": key, "size": len(pt), "sha256": sha, "header": base64.b64encode(header).decode(),
            "class": "STANDARD"}


def put_journal(s3, bucket, prefix, vault_pub_b64, records, machine=None, first_seq=1, ts_ms=None):
    """A journal batch (section 7) of `records` (dicts with `op` and its fields), numbered from
    `first_seq` with increasing times after `ts_ms` (default: now); returns the machine id."""
    machine = machine or os.urandom(8).hex()
    ts = ts_ms or int(__import__("time").time() * 1000)
    recs = [{"seq": first_seq + i, "ts_ms": ts + i, **r} for i, r in enumerate(records)]
    _, body, _ = seal(vault_pub_b64, json.dumps({"machine": machine, "records": recs}).encode())
    last = first_seq + len(recs) - 1
    s3.put_object(Bucket=bucket, Key=f"{prefix}j/{machine}/{first_seq:016d}-{last:016d}", Body=body)
    return machine
