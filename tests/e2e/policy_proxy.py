#!/usr/bin/env python3
"""A reverse proxy in front of a local S3 server that enforces an IAM policy the way AWS
evaluates it for the requests coldvault makes: each request is mapped to its IAM action
(PutObject, UploadPart and the multipart calls are all `s3:PutObject`; HEAD is `s3:GetObject`;
a PUT with `x-amz-tagging` needs `s3:PutObjectTagging` too), its resource ARN and the condition
keys AWS sets (`s3:if-none-match`, `s3:ObjectCreationOperation`, `s3:prefix`), and is let
through only if an Allow statement matches and no Deny does; else 403 AccessDenied, as AWS
answers. The policy is the one `coldvault policy --mode M` prints, so a test through this proxy
shows that the printed policy is enough and that nothing else is needed. Every request is
logged as a JSON line.

Usage: policy_proxy.py --port P --upstream 127.0.0.1:U --policy FILE --log FILE
"""
import argparse
import fnmatch
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DENY = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied (policy)</Message></Error>'
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


def request_of(method, path, query, headers):
    """(operation, [IAM actions], resource ARN, condition context) of one S3 request (path style)."""
    q = parse_qs(query, keep_blank_values=True)
    q.pop("x-id", None)  # the SDK names the operation; S3 ignores it
    bucket, _, key = path.lstrip("/").partition("/")
    obj = f"arn:aws:s3:::{bucket}/{key}"
    ctx = {"s3:if-none-match": headers.get("If-None-Match"), "s3:ObjectCreationOperation": None, "s3:prefix": None}
    if key:
        if headers.get("x-amz-copy-source"):
            return "CopyObject", ["s3:PutObject", "s3:GetObject"], obj, dict(ctx, **{"s3:ObjectCreationOperation": "true"})
        if method == "PUT" and "partNumber" in q and "uploadId" in q:
            return "UploadPart", ["s3:PutObject"], obj, dict(ctx, **{"s3:ObjectCreationOperation": "false"})
        if method == "PUT" and not q:
            acts = ["s3:PutObject"] + (["s3:PutObjectTagging"] if headers.get("x-amz-tagging") else [])
            return "PutObject", acts, obj, dict(ctx, **{"s3:ObjectCreationOperation": "true"})
        if method == "POST" and "uploads" in q:
            acts = ["s3:PutObject"] + (["s3:PutObjectTagging"] if headers.get("x-amz-tagging") else [])
            return "CreateMultipartUpload", acts, obj, dict(ctx, **{"s3:ObjectCreationOperation": "false"})
        if method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload", ["s3:PutObject"], obj, dict(ctx, **{"s3:ObjectCreationOperation": "true"})
        if method == "POST" and "restore" in q:
            return "RestoreObject", ["s3:RestoreObject"], obj, ctx
        if method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload", ["s3:AbortMultipartUpload"], obj, ctx
        if method == "DELETE" and not q:
            return "DeleteObject", ["s3:DeleteObject"], obj, ctx
        if method == "GET" and "uploadId" in q:
            return "ListParts", ["s3:ListMultipartUploadParts"], obj, ctx
        if method in ("GET", "HEAD") and not q:
            op = "GetDescriptor" if key == "coldvault/vault.json" or key.endswith("/coldvault/vault.json") else ("HeadObject" if method == "HEAD" else "GetObject")
            return op, ["s3:GetObject"], obj, ctx
        return "Other", ["s3:Unknown"], obj, ctx
    arn = f"arn:aws:s3:::{bucket}"
    if method == "GET" and "uploads" in q:
        return "ListMultipartUploads", ["s3:ListBucketMultipartUploads"], arn, ctx
    if "lifecycle" in q:
        if method == "GET":
            return "GetBucketLifecycleConfiguration", ["s3:GetLifecycleConfiguration"], arn, ctx
        if method == "PUT":
            return "PutBucketLifecycleConfiguration", ["s3:PutLifecycleConfiguration"], arn, ctx
    if method == "GET" and q.keys() - {"list-type", "prefix", "max-keys", "continuation-token", "delimiter", "start-after", "encoding-type", "fetch-owner"}:
        return "Other", ["s3:Unknown"], arn, ctx
    if method == "GET":
        return "ListObjects", ["s3:ListBucket"], arn, dict(ctx, **{"s3:prefix": (q.get("prefix") or [""])[0]})
    if method == "HEAD":
        return "HeadBucket", ["s3:ListBucket"], arn, ctx
    return "Other", ["s3:Unknown"], arn, ctx


def listed(v):
    return v if isinstance(v, list) else [v]


def condition_holds(cond, ctx):
    """The condition operators the printed policies use, as IAM evaluates them."""
    for opname, keys in (cond or {}).items():
        for k, want in keys.items():
            have = ctx.get(k)
            wants = [str(w).lower() if isinstance(w, bool) else str(w) for w in listed(want)]
            if opname == "Null":
                # "false": the key must be present; "true": absent.
                if (have is None) != (wants[0] == "true"):
                    return False
            elif opname == "Bool":
                if have is None or have not in wants:
                    return False
            elif opname == "StringLike":
                if have is None or not any(fnmatch.fnmatchcase(have, w) for w in wants):
                    return False
            elif opname == "StringEquals":
                if have is None or have not in wants:
                    return False
            else:
                raise SystemExit(f"policy_proxy: condition operator {opname} not supported")
    return True


def statement_matches(st, action, resource, ctx):
    return (any(fnmatch.fnmatchcase(action, a) for a in listed(st.get("Action", [])))
            and any(fnmatch.fnmatchcase(resource, r) for r in listed(st.get("Resource", [])))
            and condition_holds(st.get("Condition"), ctx))


def allowed(policy, actions, resource, ctx):
    for action in actions:
        sts = [st for st in policy["Statement"] if statement_matches(st, action, resource, ctx)]
        if any(st["Effect"] == "Deny" for st in sts) or not any(st["Effect"] == "Allow" for st in sts):
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_any(self):
        u = urlsplit(self.path)
        op, actions, resource, ctx = request_of(self.command, u.path, u.query, self.headers)
        ok = allowed(self.server.policy, actions, resource, ctx)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            with open(self.server.logfile, "a") as f:
                f.write(json.dumps({"method": self.command, "path": u.path, "query": u.query, "op": op, "actions": actions,
                                    "if_none_match": ctx["s3:if-none-match"],
                                    "lock": self.headers.get("x-amz-object-lock-mode"), "allowed": ok}) + "\n")
        if not ok:
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(DENY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(DENY)
            return
        c = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        c.request(self.command, self.path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        c.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    host, port = a.upstream.split(":")
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.upstream = (host, int(port))
    srv.policy = json.load(open(a.policy))
    srv.logfile = a.log
    srv.lock = threading.Lock()
    srv.serve_forever()
