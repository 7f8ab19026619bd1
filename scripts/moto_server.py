#!/usr/bin/env python3
"""moto's S3 server with restore semantics fixed to match AWS S3, for coldvault's tests.

Stock moto (5.x) has two restore bugs that would hide real behaviour:
  * its time-based restore model (`s3::keyrestore`) starts its clock at the wrong moment, so
    HeadObject reports a restore as done at once and as in progress later;
  * a repeated RestoreObject while one is pending answers 200, where S3 answers
    409 RestoreAlreadyInProgress.
This wrapper patches `FakeKey` so that a restore's clock starts at the RestoreObject request,
the object stays "ongoing" for COLDVAULT_MOTO_RESTORE_SECONDS (default 5) seconds, then is
readable until ready + Days, and a repeated request while ongoing gets 409.

Usage: moto_server.py --port PORT
"""
import argparse
import datetime
import os
import threading

from moto.s3 import models as s3models
from moto.s3 import responses as s3responses
from moto.s3.exceptions import S3ClientError

RESTORE_SECONDS = float(os.environ.get("COLDVAULT_MOTO_RESTORE_SECONDS", "5"))
_lock = threading.Lock()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class RestoreAlreadyInProgress(S3ClientError):
    code = 409

    def __init__(self):
        super().__init__("RestoreAlreadyInProgress", "Object restore is already in progress")


def _restore(self, days):
    with _lock:
        started = getattr(self, "_cv_started", None)
        if started is not None and _now() < started + datetime.timedelta(seconds=RESTORE_SECONDS):
            raise RestoreAlreadyInProgress()
        self._cv_started = _now()
        ready = self._cv_started + datetime.timedelta(seconds=RESTORE_SECONDS)
        self._expiry = ready + datetime.timedelta(days=int(days))


def _status(self):
    started = getattr(self, "_cv_started", None)
    if started is None:
        return None
    if _now() < started + datetime.timedelta(seconds=RESTORE_SECONDS):
        return "IN_PROGRESS"
    return "RESTORED"


def _set_status(self, value):
    pass  # the clock above is the only source of truth


def _set_storage_class(self, storage):
    _orig_set_storage_class(self, storage)
    self._cv_started = None  # a new class (CopyObject) starts unrestored


_orig_set_storage_class = s3models.FakeKey.set_storage_class
_orig_key_post = s3responses.S3Response._key_response_post


def _key_response_post(self, *args, **kwargs):
    # moto derives HTTP status from the AWS error model, which has no shape for this error.
    try:
        return _orig_key_post(self, *args, **kwargs)
    except RestoreAlreadyInProgress as e:
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>RestoreAlreadyInProgress</Code>'
                f"<Message>{e.message}</Message></Error>")
        return 409, {"Content-Type": "application/xml"}, body


s3responses.S3Response._key_response_post = _key_response_post
s3models.FakeKey.restore = _restore
s3models.FakeKey.status = property(_status, _set_status)
s3models.FakeKey.set_storage_class = _set_storage_class

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=a.port, verbose=False)
    srv.start()
    print(f"moto (coldvault restore semantics, {RESTORE_SECONDS}s restores) on 127.0.0.1:{a.port}", flush=True)
    threading.Event().wait()
