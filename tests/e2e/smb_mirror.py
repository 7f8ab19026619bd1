#!/usr/bin/env python3
"""What `robocopy SRC \\\\server\\share\\DST /MIR /COPY:DAT` does, over SMB with smbprotocol:
compare size and last-write time, create and write changed files, set timestamps and attributes
afterwards (as robocopy does), delete extras. Prints "copied N, deleted M".

Usage: smb_mirror.py SRC HOST PORT SHARE DST USER PASSWORD
"""
import os
import stat as pystat
import sys

import smbclient
from smbclient._os import _set_basic_information
from smbprotocol.file_info import FileAttributes

src, host, port, share, dst, user, password = sys.argv[1:8]
smbclient.register_session(host, username=user, password=password, port=int(port), encrypt=False)
root = f"\\\\{host}\\{share}\\{dst}"
def remote(rel):
    return root + ("\\" + rel.replace("/", "\\") if rel else "")


def ensure_dir(path):
    try:
        smbclient.mkdir(path, port=int(port))
    except OSError:
        pass


copied = deleted = 0
ensure_dir(root)
wanted = set()
for dp, dns, fns in os.walk(src):
    rel_dir = os.path.relpath(dp, src)
    rel_dir = "" if rel_dir == "." else rel_dir
    if rel_dir:
        wanted.add(rel_dir)
        ensure_dir(remote(rel_dir))
    for n in fns:
        rel = os.path.join(rel_dir, n) if rel_dir else n
        wanted.add(rel)
        lp = os.path.join(dp, n)
        st = os.stat(lp)
        try:
            rs = smbclient.stat(remote(rel), port=int(port))
            same = rs.st_size == st.st_size and abs(rs.st_mtime - st.st_mtime) < 1e-6
        except OSError:
            same = False
        if same:
            continue
        with open(lp, "rb") as f, smbclient.open_file(remote(rel), mode="wb", port=int(port)) as out:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                out.write(b)
        # robocopy sets times and attributes after the data is written (/COPY:DAT).
        smbclient.utime(remote(rel), ns=(st.st_atime_ns, st.st_mtime_ns), port=int(port))
        attrs = FileAttributes.FILE_ATTRIBUTE_ARCHIVE
        if not st.st_mode & pystat.S_IWUSR:
            attrs |= FileAttributes.FILE_ATTRIBUTE_READONLY
        _set_basic_information(remote(rel), file_attributes=attrs, port=int(port))
        copied += 1

# Delete extras (files, then folders deepest first).
extras = []
for dp, dns, fns in smbclient.walk(root, port=int(port)):
    base = dp[len(root):].lstrip("\\").replace("\\", "/")
    for n in fns:
        rel = f"{base}/{n}" if base else n
        if rel not in wanted:
            smbclient.remove(remote(rel), port=int(port))
            deleted += 1
    for n in dns:
        rel = f"{base}/{n}" if base else n
        if rel not in wanted:
            extras.append(rel)
for rel in sorted(extras, key=len, reverse=True):
    smbclient.rmdir(remote(rel), port=int(port))
    deleted += 1
print(f"copied {copied}, deleted {deleted}")
