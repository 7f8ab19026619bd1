#!/usr/bin/env python3
"""moto's S3 server with restore semantics fixed to match AWS S3, for coldvault's tests.

Stock moto (5.x) has two restore bugs that would hide real behaviour:
  * its time-based restore model starts the clock at the wrong moment, so HeadObject reports
    a restore as done right away and as in progress later;
  * a repeated RestoreObject while one is pending answers 200, where S3 answers
    409 RestoreAlreadyInProgress.
This wrapper patches `FakeKey.restore` so the clock starts at the request and a restore takes
COLDVAULT_MOTO_RESTORE_SECONDS (default 5) seconds, and answers 409 while one is pending.
"""
import argparse
import datetime
import os
import threading

from moto.s3 import models as s3models
from moto.s3.exceptions import S3ClientError

RESTORE_SECONDS = float(os.environ.get("COLDVAULT_MOTO_RESTORE_SECONDS", "5"))
_lock = threading.Lock()


class RestoreAlreadyInProgress(S3ClientError):
    code = 409

    def __init__(self):
        super().__init__("RestoreAlreadyInProgress", "Object restore is already in progress")


def _restore(self, days):
    with _lock:
        now = datetime.datetime.now(datetime.timezone.utc)
        started = getattr(self, "_cv_restore_started", None)
        if started is not None and now < started + datetime.timedelta(seconds=RESTORE_SECONDS):
            raise RestoreAlreadyInProgress()
        self._cv_restore_started = now
        self._cv_restore_days = days or 1
        self._expiry = None


def _get_expiry(self):
    started = getattr(self, "_cv_restore_started", None)
    if started is None:
        return None
    ready = started + datetime.timedelta(seconds=RESTORE_SECONDS)
    if datetime.datetime.now(datetime.timezone.utc) < ready:
        return None
    return ready + datetime.timedelta(days=getattr(self, "_cv_restore_days", 1))


def _response_dict_restore(self):
    started = getattr(self, "_cv_restore_started", None)
    if started is None:
        return None
    exp = _get_expiry(self)
    if exp is None:
        return 'ongoing-request="true"'
    return 'ongoing-request="false", expiry-date="{}"'.format(exp.strftime("%a, %d %b %Y %H:%M:%S GMT"))


s3models.FakeKey.restore = _restore
s3models.FakeKey.expiry_date = property(lambda self: (lambda e: e.strftime("%a, %d %b %Y %H:%M:%S GMT") if e else None)(_get_expiry(self)))
s3models.FakeKey._cv_restore_header = property(_response_dict_restore)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=a.port, verbose=False)
    srv.start()
    threading.Event().wait()
