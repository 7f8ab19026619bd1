#!/usr/bin/env python3
"""A reverse proxy in front of a local S3 server that enforces coldvault's write-only policy
(`coldvault policy --mode write-only`): PutObject and the multipart calls it implies
(CreateMultipartUpload, UploadPart, CompleteMultipartUpload) pass, and GetObject of the vault
descriptor (`.../coldvault/vault.json`) alone; everything else gets 403 AccessDenied, as AWS IAM
would answer. Every request is logged as a JSON line.

Usage: putonly_proxy.py --port P --upstream 127.0.0.1:U --log FILE
"""
import argparse
import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DENY = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied (PutObject-only policy)</Message></Error>'
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


# Where the write-only policy lets a machine put objects: data objects, journal batches and
# snapshots below the vault prefix (never vault.json, never the statements under m/).
WRITABLE = re.compile(r"(^|/)(d/[0-9a-f]+|[js]/[0-9a-f]{16}/[0-9]{16}(-[0-9]{16})?)$")


def classify(method, path, query):
    op = classify_op(method, path, query)
    key = path.lstrip("/").split("/", 1)[1] if "/" in path.lstrip("/") else ""
    if op in ("UploadPart", "PutObject", "CreateMultipartUpload", "CompleteMultipartUpload") and not WRITABLE.search(key):
        return None
    return op


def classify_op(method, path, query):
    q = parse_qs(query, keep_blank_values=True)
    q.pop("x-id", None)  # the SDK names the operation; S3 ignores it
    parts = path.lstrip("/").split("/", 1)
    has_key = len(parts) == 2 and parts[1] != ""
    if method == "PUT" and has_key and "partNumber" in q and "uploadId" in q:
        return "UploadPart"
    if method == "PUT" and has_key and not q:
        return "PutObject"
    if method == "POST" and has_key and "uploads" in q:
        return "CreateMultipartUpload"
    if method == "POST" and has_key and "uploadId" in q:
        return "CompleteMultipartUpload"
    if method == "GET" and has_key and not q and (parts[1] == "coldvault/vault.json" or parts[1].endswith("/coldvault/vault.json")):
        return "GetDescriptor"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_any(self):
        u = urlsplit(self.path)
        op = classify(self.command, u.path, u.query)
        if self.headers.get("x-amz-copy-source"):
            op = None  # CopyObject is a PUT too, but needs s3:GetObject on the source
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            with open(self.server.logfile, "a") as f:
                f.write(json.dumps({"method": self.command, "path": u.path, "query": u.query, "op": op, "allowed": op is not None}) + "\n")
        if op is None:
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(DENY)))
            self.end_headers()
            self.wfile.write(DENY)
            return
        c = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        c.request(self.command, self.path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        c.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    host, port = a.upstream.split(":")
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.upstream = (host, int(port))
    srv.logfile = a.log
    srv.lock = threading.Lock()
    srv.serve_forever()
