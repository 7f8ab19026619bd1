"""An independent decryptor for coldvault format v1, written from docs/FORMAT.md alone
(Python `cryptography`, no coldvault code). If this passes, the document describes the format."""
import base64
import hashlib
import hmac
import json
import pathlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
import pytest

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "v1"
SEG = 65536


def hkdf(salt, ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def open_box(v_secret, eph_pub, wrapped, aad):
    shared = v_secret.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    v_pub = v_secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kek = hkdf(eph_pub + v_pub, shared, b"coldvault/v1/wrap")
    return AESGCM(kek).decrypt(b"\0" * 12, wrapped, aad)


def unlock(desc, passphrase):
    a = desc["argon2"]
    kek = Argon2id(salt=base64.b64decode(a["salt"]), length=32, iterations=a["t"], lanes=a["p"],
                   memory_cost=a["m_kib"]).derive(passphrase)
    sk = AESGCM(kek).decrypt(base64.b64decode(desc["secret_nonce"]), base64.b64decode(desc["wrapped_secret"]),
                             b"coldvault/v1/vault-secret")
    v = X25519PrivateKey.from_private_bytes(sk)
    name_key = open_box(v, base64.b64decode(desc["name_key_eph"]), base64.b64decode(desc["name_key_wrapped"]),
                        b"coldvault/v1/name-key")
    return v, name_key


def decrypt_object(v, body, size):
    h = body[:128]
    assert h[0:6] == b"CVAULT" and int.from_bytes(h[6:8], "big") == 1 and h[8] == 16
    dk = open_box(v, h[9:41], h[41:89], h[0:9])
    assert hmac.compare_digest(hkdf(b"", dk, b"coldvault/v1/commit"), h[96:128])
    ck = AESGCM(hkdf(b"", dk, b"coldvault/v1/content"))
    n = max(1, -(-size // SEG))
    out = b""
    for i in range(n):
        plain_len = SEG if i < n - 1 else size - i * SEG
        start = 128 + i * (SEG + 16)
        nonce = h[89:96] + i.to_bytes(4, "big") + (b"\x01" if i == n - 1 else b"\x00")
        out += ck.decrypt(nonce, body[start:start + plain_len + 16], h)
    assert len(body) == 128 + size + 16 * n
    return out, dk


def test_fixture_decrypts_independently():
    desc = json.loads((FIX / "vault.json").read_text())
    v, name_key = unlock(desc, b"coldvault fixture passphrase v1")
    meta = json.loads((FIX / "object.meta.json").read_text())
    h = base64.b64decode(meta["cvh"])
    body = (FIX / "object.bin").read_bytes()
    assert body[:128] == h
    dk = open_box(v, h[9:41], h[41:89], h[0:9])
    m = json.loads(AESGCM(hkdf(b"", dk, b"coldvault/v1/meta")).decrypt(b"\0" * 12, base64.b64decode(meta["cvm"]), h))
    pt, _ = decrypt_object(v, body, m["size"])
    assert hashlib.sha256(pt).hexdigest() == m["sha256"]
    assert pt == (FIX / "plaintext.bin").read_bytes()
    key = hmac.new(name_key, b"coldvault/v1/path\0" + m["path"].encode(), hashlib.sha256).hexdigest()
    assert key == (FIX / "object.key").read_text().strip()


def test_vector_decrypts_independently():
    v = X25519PrivateKey.from_private_bytes(b"\x11" * 32)
    body = (FIX / "vector.bin").read_bytes()
    assert hashlib.sha256(body).hexdigest() == (FIX / "vector.sha256").read_text().strip()
    size = 2 * SEG + 100
    pt, dk = decrypt_object(v, body, size)
    assert dk == b"\x22" * 32
    assert pt == bytes(i % 256 for i in range(size))


def test_tampered_vector_fails():
    v = X25519PrivateKey.from_private_bytes(b"\x11" * 32)
    body = bytearray((FIX / "vector.bin").read_bytes())
    body[128 + 5] ^= 1
    with pytest.raises(Exception):
        decrypt_object(v, bytes(body), 2 * SEG + 100)
