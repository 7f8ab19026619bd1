#!/usr/bin/env python3
"""A reverse proxy in front of a local S3 server that injects faults, seeded and counted:
503 SlowDown before forwarding, 500 InternalError *after* forwarding (the request took effect
but the answer says it failed), and dropped connections before or after forwarding.
Every request is counted by outcome in the stats file (JSON), rewritten after each request.
With --hold-first-put S, the first PUT of a data object (`/d/` in its key) is held S seconds
after its body arrived and only then forwarded: a stale upload that lands after newer ones.
With --corrupt-puts N, the first PUTs of N data objects or parts reach the server with one
byte of their body flipped (their retries pass whole): damage on the way that the store must refuse.
With --get-latency S, every GET of a data object waits S seconds before it is forwarded (a
distant S3); with --log, each request is logged with its Range and its start and end times, so
that a test can see which GETs were in flight together.

Usage: fault_proxy.py --port P --upstream 127.0.0.1:U --rate 0.1 --seed N --stats FILE
                      [--hold-first-put SECONDS] [--corrupt-puts N] [--get-latency S] [--log FILE]
"""
import time
import argparse
import http.client
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
SLOWDOWN = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate (injected)</Message></Error>'
INTERNAL = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error (injected)</Message></Error>'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def count(self, what):
        with self.server.lock:
            self.server.stats[what] = self.server.stats.get(what, 0) + 1
            with open(self.server.statsfile, "w") as f:
                json.dump(self.server.stats, f)
            if self.server.logfile:
                with open(self.server.logfile, "a") as f:
                    f.write(json.dumps({"method": self.command, "path": self.path, "outcome": what, "range": self.headers.get("Range"),
                                        "t0": getattr(self, "t0", None), "t1": time.monotonic()}) + "\n")

    def error(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        self.t0 = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            roll = self.server.rng.random()
            kind = self.server.rng.choice(["503", "500-after", "drop-before", "drop-after"])
        fault = kind if roll < self.server.rate else None
        if self.command == "PUT" and "/d/" in self.path and self.server.hold > 0:
            with self.server.lock:
                hold, self.server.hold = self.server.hold, 0
            if hold:
                self.count("held")
                time.sleep(hold)
                self.count("released")
        if self.command == "PUT" and "/d/" in self.path and body:
            with self.server.lock:
                # Once per object or part: its retry goes through whole.
                corrupt = len(self.server.corrupted) < self.server.corrupt and self.path not in self.server.corrupted
                if corrupt:
                    self.server.corrupted.add(self.path)
            if corrupt:
                i = len(body) // 2
                body = body[:i] + bytes([body[i] ^ 0x40]) + body[i + 1:]
                self.count("corrupted")
        if self.command == "GET" and "/d/" in self.path and self.server.get_latency:
            time.sleep(self.server.get_latency)
        if fault == "503":
            self.count("503")
            return self.error(503, SLOWDOWN)
        if fault == "drop-before":
            self.count("drop-before")
            self.close_connection = True
            self.connection.close()
            return
        c = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            c.request(self.command, self.path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered before reading the whole body (a refused conditional write
            # answers 412 at once): its answer is still there to read.
            pass
        r = c.getresponse()
        data = r.read()
        c.close()
        if fault == "500-after":
            self.count("500-after")
            return self.error(500, INTERNAL)
        if fault == "drop-after":
            self.count("drop-after")
            self.close_connection = True
            self.connection.close()
            return
        self.count("passed")
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        # HEAD answers carry the object's length and no body.
        self.send_header("Content-Length", r.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--log", default=None, help="one JSON line per request")
    ap.add_argument("--hold-first-put", type=float, default=0, help="hold the first data PUT this many seconds")
    ap.add_argument("--corrupt-puts", type=int, default=0, help="flip a byte in the first PUT of N data objects or parts")
    ap.add_argument("--get-latency", type=float, default=0, help="hold every GET of a data object this many seconds")
    a = ap.parse_args()
    host, port = a.upstream.split(":")
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.upstream = (host, int(port))
    srv.rate = a.rate
    srv.rng = random.Random(a.seed)
    srv.statsfile = a.stats
    srv.logfile = a.log
    srv.stats = {}
    srv.lock = threading.Lock()
    srv.hold = a.hold_first_put
    srv.corrupt = a.corrupt_puts
    srv.corrupted = set()
    srv.get_latency = a.get_latency
    srv.serve_forever()
