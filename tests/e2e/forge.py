"""Makes coldvault objects from docs/FORMAT.md alone (Python `cryptography`, no coldvault
code), as anyone holding the vault's public key and write access to the bucket could: the
forgeries the hardening tests must see refused."""
import base64
import hashlib
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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


class Machine:
    """A machine's Ed25519 signing key (section 8): what a compromised machine the vault allows
    would hold, or an attacker's own key that it does not."""

    def __init__(self, machine=None):
        self.id = machine or os.urandom(8).hex()
        self.key = Ed25519PrivateKey.generate()

    def token(self):
        pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"{self.id}:" + base64.urlsafe_b64encode(pub).decode().rstrip("=")

    def sign(self, vault_pub_b64, rel_key, header):
        """The `x-amz-meta-cvs` value of the object at `rel_key` (below the prefix)."""
        msg = b"coldvault/v2/object-signature\0" + base64.b64decode(vault_pub_b64) + rel_key.encode() + b"\0" + header
        return f"{self.id}." + base64.b64encode(self.key.sign(msg)).decode()


def _metadata(signer, vault_pub_b64, prefix, key, header):
    return {"cvs": signer.sign(vault_pub_b64, key[len(prefix):], header)} if signer else {}


def put_file(s3, bucket, prefix, vault_pub_b64, pt, path="forged", signer=None):
    """A data object holding `pt` (with user metadata naming `path`); returns the journal's
    `upload` record fields for it."""
    header, body, dk = seal(vault_pub_b64, pt)
    key = prefix + "d/" + os.urandom(16).hex()
    sha = hashlib.sha256(pt).hexdigest()
    meta = json.dumps({"path": path, "size": len(pt), "mtime_ns": 1_600_000_000_000_000_000, "mode": 0o644,
                       "uid": 0, "gid": 0, "sha256": sha}).encode()
    cvm = AESGCM(hkdf(b"", dk, b"coldvault/v1/meta")).encrypt(b"\0" * 12, meta, header)
    s3.put_object(Bucket=bucket, Key=key, Body=body,
                  Metadata={"cvh": base64.b64encode(header).decode(), "cvm": base64.b64encode(cvm).decode(),
                            **_metadata(signer, vault_pub_b64, prefix, key, header)})
    return {"key": key, "size": len(pt), "sha256": sha, "header": base64.b64encode(header).decode(),
            "class": "STANDARD"}


def put_journal(s3, bucket, prefix, vault_pub_b64, records, machine=None, first_seq=1, ts_ms=None, signer=None):
    """A journal batch (section 7) of `records` (dicts with `op` and its fields), numbered from
    `first_seq` with increasing times after `ts_ms` (default: now), signed by `signer` if given
    (section 8); returns its key."""
    machine = machine or (signer.id if signer else os.urandom(8).hex())
    ts = ts_ms or int(__import__("time").time() * 1000)
    recs = [{"seq": first_seq + i, "ts_ms": ts + i, **r} for i, r in enumerate(records)]
    header, body, _ = seal(vault_pub_b64, json.dumps({"machine": machine, "records": recs}).encode())
    last = first_seq + len(recs) - 1
    key = f"{prefix}j/{machine}/{first_seq:016d}-{last:016d}"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=_metadata(signer, vault_pub_b64, prefix, key, header))
    return key


def put_snapshot(s3, bucket, prefix, vault_pub_b64, machine, covers_seq, ts_ms, entries, dead_keys=(), seen=None, signer=None):
    """A snapshot (section 7) of `machine` covering `covers_seq`; returns its key."""
    doc = {"machine": machine, "covers_seq": covers_seq, "ts_ms": ts_ms, "entries": entries, "dead_keys": list(dead_keys)}
    if seen:
        doc["seen"] = seen
    header, body, _ = seal(vault_pub_b64, json.dumps(doc).encode())
    key = f"{prefix}s/{machine}/{covers_seq:016d}"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=_metadata(signer, vault_pub_b64, prefix, key, header))
    return key
