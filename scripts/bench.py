#!/usr/bin/env python3
"""Side-by-side benchmark: coldvault against a local directory, rclone mount (VFS cache writes),
rclone crypt mount and s3fs, all on one Garage S3 server on loopback, same data, one run; and
beside them a FUSE passthrough (bindfs) over a local directory, which shows what FUSE itself
costs on this machine.

    scripts/bench.py                          # every system, every workload
    scripts/bench.py --systems coldvault,local --workloads small,rsync
    scripts/bench.py --perf                   # also record a perf profile of coldvault per workload
    scripts/bench.py --write docs/BENCHMARKS.md   # replace the results section of that file

Needs: garage (`cargo install --locked garage`), rclone, s3fs, bindfs, rsync, fuse3, e2fsprogs,
perf (with --perf), root (for the loop-mounted file system; --no-loop-fs without);
scripts/install-deps.sh --bench installs them. Times are wall-clock seconds of the command the
user runs ("returns") and until everything is in the bucket ("durable": `coldvault flush
--wait`, rclone's upload queue empty, s3fs after close, `sync` for the local directory).
Peak RSS is the daemon's VmHWM after all workloads.
"""
import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("COLDVAULT_BIN", str(ROOT / "target" / "release" / "coldvault"))

WORKLOADS = {
    # name: (description, files, size of each)
    "big": ("1 GiB file", 1, 1 << 30),
    "mid": ("500 × 1 MiB", 500, 1 << 20),
    "small": ("1000 × 100 KiB", 1000, 100 << 10),
    "rsync": ("rsync 5000 × 20 KB", 5000, 20_000),
}


def sh(*cmd, check=True, env=None, timeout=3600, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_mounted(p):
    # /proc/mounts writes a space in a path as \040.
    return any(line.split()[1].replace("\\040", " ") == str(p) for line in open("/proc/mounts"))


def wait_for(what, cond, timeout=600, step=0.05):
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def proc_mib(pid, field):
    """A memory figure of /proc/PID/status (VmHWM, VmRSS, …) in MiB; None if unknown."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) // 1024
    except (OSError, TypeError):
        return None


def cpu_s(pid):
    """CPU seconds (user + system) a process has used so far; 0 if it is gone."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, IndexError):
        return 0.0


def children_cpu_s():
    """CPU seconds used by this script's finished children (cp, rsync, rclone copy, coldvault flush)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def vmhwm(pid):
    return proc_mib(pid, "VmHWM")


class Garage:
    """One Garage node on loopback with its own directories, a bucket per system and a key."""

    def __init__(self, work):
        self.dir = work / "garage"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "meta").mkdir(parents=True)
        (self.dir / "data").mkdir()
        self.port, rpc = free_port(), free_port()
        self.conf = self.dir / "garage.toml"
        self.conf.write_text(f"""metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{self.port}"
root_domain = ".s3.garage.localhost"
""")
        self.log = open(self.dir / "garage.log", "w")
        self.proc = subprocess.Popen(["garage", "-c", self.conf, "server"], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, "RUST_LOG": "garage=warn"})
        wait_for("garage", lambda: self.cli("status", check=False).returncode == 0, timeout=60, step=0.3)
        node = re.search(r"^([0-9a-f]{16})\s", self.cli("status").stdout, re.M).group(1)
        self.cli("layout", "assign", "-z", "dc1", "-c", "100G", node)
        self.cli("layout", "apply", "--version", "1")
        out = self.cli("key", "create", "bench").stdout
        self.key = re.search(r"Key ID:\s*(\S+)", out).group(1)
        self.secret = re.search(r"Secret key:\s*(\S+)", out).group(1)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def cli(self, *args, check=True):
        return sh("garage", "-c", self.conf, *args, check=check)

    def bucket(self, name):
        self.cli("bucket", "create", name)
        self.cli("bucket", "allow", "--read", "--write", "--owner", name, "--key", "bench")
        return name

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class System:
    name = ""
    pid = None

    def __init__(self, work, garage):
        self.work = work / self.name.replace(" ", "-")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.mnt = self.work / "mnt"
        self.mnt.mkdir()
        self.g = garage
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": garage.key, "AWS_SECRET_ACCESS_KEY": garage.secret,
                    "AWS_REGION": "garage", "AWS_DEFAULT_REGION": "garage"}
        self.env.pop("AWS_CA_BUNDLE", None)

    def durable(self):
        pass

    def requests(self):
        """S3 requests by operation, where the system can tell (coldvault); else None."""
        return None

    def rss(self):
        return vmhwm(self.pid) if self.pid else None

    def stop(self):
        if is_mounted(self.mnt):
            sh("fusermount3", "-u", self.mnt, check=False)
            if is_mounted(self.mnt):
                time.sleep(2)
                sh("fusermount3", "-uz", self.mnt, check=False)


class Local(System):
    name = "local directory"

    def __init__(self, work, garage):
        System.__init__(self, work, garage)

    def durable(self):
        os.sync()

    def stop(self):
        pass


class Passthrough(System):
    """bindfs: a FUSE file system in C that passes every call to a local directory and does
    nothing else — the cost of FUSE itself, the floor for any FUSE file system here."""
    name = "FUSE passthrough (bindfs)"

    def __init__(self, work, garage):
        System.__init__(self, work, garage)
        (self.work / "back").mkdir()
        sh("bindfs", "-o", "multithreaded", self.work / "back", self.mnt)
        wait_for("bindfs mount", lambda: is_mounted(self.mnt))
        self.pid = find_pid(f"bindfs .*{self.mnt}")

    def durable(self):
        os.sync()


def find_pid(pattern):
    r = sh("pgrep", "-n", "-f", pattern, check=False)
    return int(r.stdout.split()[0]) if r.stdout.strip() else None


class Coldvault(System):
    name = "coldvault"
    bin = BIN
    bucket = "coldvault"

    def __init__(self, work, garage):
        System.__init__(self, work, garage)
        bucket = garage.bucket(self.bucket)
        self.cfg, self.pw = self.work / "config.toml", self.work / "passphrase"
        self.pw.write_text(secrets.token_hex(16) + "\n")
        sh(self.bin, "init", "--bucket", bucket, "--prefix", "bench", "--endpoint-url", garage.endpoint, "--region", "garage",
           "--config", self.cfg, "--passphrase-file", self.pw, env=self.env)
        self.mount()

    def mount(self):
        # COLDVAULT_MOUNT_ARGS: extra mount options to compare (e.g. "--upload-concurrency 16").
        sh(self.bin, "mount", "--config", self.cfg, "--cache-dir", self.work / "cache", "--passphrase-file", self.pw,
           *os.environ.get("COLDVAULT_MOUNT_ARGS", "").split(), self.mnt, env=self.env)
        wait_for("coldvault mount", lambda: is_mounted(self.mnt))
        self.pid = find_pid(f"coldvault mount.*{self.mnt}")

    def remount(self):
        """Unmount and mount again: the same index, and (with the default --read-cache 0) no
        file content kept locally."""
        self.stop()
        self.mount()

    def durable(self):
        sh(self.bin, "flush", "--wait", self.mnt, timeout=3600)

    def requests(self):
        """S3 requests since mount, by operation (`coldvault status --json`): a count two builds
        must agree on, where their times are noisy."""
        r = sh(self.bin, "status", "--json", self.mnt, check=False)
        try:
            return json.loads(r.stdout).get("requests", {})
        except ValueError:
            return None

    def stop(self):
        sh(self.bin, "unmount", self.mnt, check=False, timeout=600)
        System.stop(self)


class ColdvaultBefore(Coldvault):
    """Another build of coldvault in the same run (COLDVAULT_BEFORE_BIN), e.g. the commit before
    a refactoring that must change nothing: `--systems coldvault,coldvault-before`."""
    name = "coldvault before"
    bin = os.environ.get("COLDVAULT_BEFORE_BIN", BIN)
    bucket = "coldvault-before"


class Rclone(System):
    name = "rclone mount"
    crypt = False

    def __init__(self, work, garage):
        System.__init__(self, work, garage)
        bucket = garage.bucket("rclone-crypt" if self.crypt else "rclone")
        e = self.env
        e.update({"RCLONE_CONFIG_GS3_TYPE": "s3", "RCLONE_CONFIG_GS3_PROVIDER": "Other", "RCLONE_CONFIG_GS3_ENDPOINT": garage.endpoint,
                  "RCLONE_CONFIG_GS3_ACCESS_KEY_ID": garage.key, "RCLONE_CONFIG_GS3_SECRET_ACCESS_KEY": garage.secret,
                  "RCLONE_CONFIG_GS3_REGION": "garage", "RCLONE_CONFIG_GS3_FORCE_PATH_STYLE": "true"})
        remote = f"gs3:{bucket}"
        if self.crypt:
            pw = sh("rclone", "obscure", secrets.token_hex(16)).stdout.strip()
            e.update({"RCLONE_CONFIG_GCRYPT_TYPE": "crypt", "RCLONE_CONFIG_GCRYPT_REMOTE": f"gs3:{bucket}/c",
                      "RCLONE_CONFIG_GCRYPT_PASSWORD": pw})
            remote = "gcrypt:"
        self.remote = remote
        self.mount()

    def mount(self):
        self.rc = free_port()
        # In the foreground (rclone 1.60's --daemon starts the rc server in both processes).
        self.proc = subprocess.Popen(["rclone", "mount", self.remote, str(self.mnt), "--vfs-cache-mode", "writes", "--cache-dir",
                                      str(self.work / "cache"), "--rc", "--rc-addr", f"127.0.0.1:{self.rc}", "--rc-no-auth",
                                      "--log-file", str(self.work / "rclone.log")], env=self.env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("rclone mount", lambda: is_mounted(self.mnt))
        self.pid = self.proc.pid

    def remount(self):
        """Unmount and mount again with an empty cache."""
        self.stop()
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        self.mount()

    def durable(self):
        def idle():
            r = sh("rclone", "rc", "--url", f"http://127.0.0.1:{self.rc}/", "vfs/stats", check=False, env=self.env)
            if r.returncode != 0:
                return False
            dc = json.loads(r.stdout).get("diskCache", {})
            return dc.get("uploadsInProgress", 1) == 0 and dc.get("uploadsQueued", 1) == 0
        wait_for("rclone uploads", idle, timeout=3600, step=0.1)


    def stop(self):
        System.stop(self)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RcloneCrypt(Rclone):
    name = "rclone crypt mount"
    crypt = True


class S3fs(System):
    name = "s3fs"

    def __init__(self, work, garage):
        System.__init__(self, work, garage)
        bucket = garage.bucket("s3fs")
        pw = self.work / "passwd"
        pw.write_text(f"{garage.key}:{garage.secret}\n")
        pw.chmod(0o600)
        self.bucket, self.passwd = bucket, pw
        self.mount()

    def mount(self):
        sh("s3fs", self.bucket, self.mnt, "-o", f"passwd_file={self.passwd},url={self.g.endpoint},use_path_request_style,"
           f"endpoint=garage,use_cache={self.work / 'cache'}", env=self.env)
        wait_for("s3fs mount", lambda: is_mounted(self.mnt))
        self.pid = find_pid(f"s3fs {self.bucket} {self.mnt}")

    def remount(self):
        """Unmount and mount again with an empty cache."""
        self.stop()
        wait_for("s3fs exit", lambda: find_pid(f"s3fs {self.bucket} {self.mnt}") is None, timeout=60)
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        self.mount()


SYSTEMS = {"local": Local, "passthrough": Passthrough, "coldvault": Coldvault, "coldvault-before": ColdvaultBefore, "rclone": Rclone, "rclone-crypt": RcloneCrypt, "s3fs": S3fs}


class LoopFs:
    """A fresh ext4 file system for one run, in a sparse image beside `work`, mounted on it.
    Every system, the source data and the S3 server's data live on it: the same journaled
    file system a user's disk has, and none of the inodes deleted by earlier runs (ext4 without
    a journal scans recently deleted inodes on every create, which made creates cost
    anything from 20 µs to 1 ms here depending on what ran before)."""

    def __init__(self, work, size="40G", inode_ratio=None):
        self.work = work
        if is_mounted(work):
            sh("umount", work)
        self.img = work.parent / (work.name + ".img")
        self.img.unlink(missing_ok=True)
        sh("truncate", "-s", size, self.img)
        sh("mkfs.ext4", "-q", "-F", *(["-i", str(inode_ratio)] if inode_ratio else []), self.img)
        sh("mount", "-o", "loop", self.img, work)

    def stop(self):
        # A peer's daemon may still be exiting (s3fs, rclone): wait for it, then detach lazily.
        deadline = time.monotonic() + 30
        while is_mounted(self.work) and sh("umount", self.work, check=False).returncode != 0:
            if time.monotonic() > deadline:
                sh("umount", "-l", self.work, check=False)
                break
            time.sleep(1)
        self.img.unlink(missing_ok=True)


@contextlib.contextmanager
def workspace(args, **loop_args):
    """The work directory of a benchmark script (`--work`), on a fresh loop-mounted ext4 unless
    `--no-loop-fs`, with a Garage server on loopback: yields (work dir, garage); both stopped
    after."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    loop = None if args.no_loop_fs else LoopFs(work, **loop_args)
    try:
        garage = Garage(work)
        try:
            yield work, garage
        finally:
            garage.stop()
    finally:
        if loop:
            loop.stop()


def workspace_args(ap, default):
    ap.add_argument("--work", default=default)
    ap.add_argument("--no-loop-fs", action="store_true", help="use --work as it is (no loop-mounted file system)")


def write_section(path, marker, text):
    """Replace what lies between `<!-- MARKER START -->` and `<!-- MARKER END -->` in a file."""
    p = Path(path)
    s = p.read_text()
    start, end = f"<!-- {marker} START -->", f"<!-- {marker} END -->"
    i, j = s.index(start) + len(start), s.index(end)
    p.write_text(s[:i] + "\n" + text + "\n" + s[j:])


def make_source(src):
    """The same data for every system, on local disk (random bytes: nothing compresses)."""
    for name, (_, n, size) in WORKLOADS.items():
        d = src / name
        if d.is_dir() and len(list(d.iterdir())) == n:
            continue
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for i in range(n):
            with open(d / f"f{i:05}.bin", "wb") as f:
                left = size
                while left:
                    k = min(left, 8 << 20)
                    f.write(os.urandom(k))
                    left -= k


class Perf:
    """perf record of the coldvault daemon during one workload (text report kept)."""

    def __init__(self, pid, out):
        self.out = out
        self.proc = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out) + ".data"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        r = sh("perf", "report", "--stdio", "--no-children", "--percent-limit", "1.5", "-i", str(self.out) + ".data",
               "--sort", "dso,symbol", "-g", "none", check=False)
        self.out.write_text(r.stdout)
        Path(str(self.out) + ".data").unlink(missing_ok=True)


def run_system(cls, work, src, garage, workloads, perf_dir):
    s = cls(work, garage)
    res = {}
    try:
        for w in workloads:
            p = Perf(s.pid, perf_dir / f"{w}.txt") if perf_dir and s.pid else None
            cpu0 = (cpu_s(s.pid), cpu_s(garage.proc.pid), children_cpu_s())
            req0 = s.requests()
            t0 = time.monotonic()
            if w == "rsync":
                sh("rsync", "-a", f"{src / w}/", s.mnt / w)
                t1 = time.monotonic()
                s.durable()
                t2 = time.monotonic()
                sh("rsync", "-a", f"{src / w}/", s.mnt / w)
                res["rsync2"] = time.monotonic() - t2
            else:
                sh("cp", "-r", src / w, s.mnt / w)
                t1 = time.monotonic()
                s.durable()
                t2 = time.monotonic()
            res[w] = (t1 - t0, t2 - t0)
            if p:
                p.stop()
            # Where the CPU went (2 cores: the daemon, the S3 server and the copy share them).
            cpu = (cpu_s(s.pid) - cpu0[0], cpu_s(garage.proc.pid) - cpu0[1], children_cpu_s() - cpu0[2])
            print(f"  {cls.name}: {w}: returns {t1 - t0:.2f} s, durable {t2 - t0:.2f} s; CPU seconds: daemon {cpu[0]:.2f}, "
                  f"garage {cpu[1]:.2f}, copy {cpu[2]:.2f}", flush=True)
            req1 = s.requests()
            if req0 is not None and req1 is not None:
                sent = {k: v - req0.get(k, 0) for k, v in sorted(req1.items()) if v - req0.get(k, 0)}
                print(f"  {cls.name}: {w}: S3 requests: " + ", ".join(f"{k} {v}" for k, v in sent.items()), flush=True)
            if w == "small":
                best = None
                for _ in range(3):
                    t = time.monotonic()
                    sh("ls", "-l", s.mnt / w)
                    best = min(best or 1e9, time.monotonic() - t)
                res["ls"] = best
        res["rss"] = s.rss()
    finally:
        s.stop()
    return res


def direct_upload(work, src, garage, workloads):
    """`rclone copy --transfers 16` of the same files straight into a bucket: the floor for durable."""
    e = {**os.environ, "RCLONE_CONFIG_GS3_TYPE": "s3", "RCLONE_CONFIG_GS3_PROVIDER": "Other",
         "RCLONE_CONFIG_GS3_ENDPOINT": garage.endpoint, "RCLONE_CONFIG_GS3_ACCESS_KEY_ID": garage.key,
         "RCLONE_CONFIG_GS3_SECRET_ACCESS_KEY": garage.secret, "RCLONE_CONFIG_GS3_REGION": "garage",
         "RCLONE_CONFIG_GS3_FORCE_PATH_STYLE": "true"}
    e.pop("AWS_CA_BUNDLE", None)  # rclone refuses a custom CA bundle with its own transport
    bucket = garage.bucket("direct")
    res = {}
    for w in workloads:
        if w == "rsync":
            continue
        cpu0 = (cpu_s(garage.proc.pid), children_cpu_s())
        t = time.monotonic()
        sh("rclone", "copy", "--transfers", "16", src / w, f"gs3:{bucket}/{w}", env=e)
        res[w] = time.monotonic() - t
        print(f"  direct upload: {w}: {res[w]:.2f} s; CPU seconds: rclone {children_cpu_s() - cpu0[1]:.2f}, "
              f"garage {cpu_s(garage.proc.pid) - cpu0[0]:.2f}", flush=True)
    return res


def table(results, direct, workloads):
    local = results.get("local directory", {})
    cols = [w for w in ("big", "mid", "small") if w in workloads]
    head = ["system"] + [f"{WORKLOADS[w][0]}: returns / durable" for w in cols]
    if "rsync" in workloads:
        head.append("rsync 5000 × 20 KB: 1st / 2nd")
    if "small" in workloads:
        head.append("ls -l 1000")
    head.append("peak RSS")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(v, base):
        return f" ({v / base:.1f}×)" if base and v and base > 0 else ""

    for name, r in results.items():
        row = [name]
        for w in cols:
            if w in r:
                a, b = r[w]
                la, lb = local.get(w, (None, None))
                row.append(f"{a:.2f}{ratio(a, la) if name != 'local directory' else ''} / {b:.2f}"
                           f"{ratio(b, direct.get(w)) if name not in ('local directory', Passthrough.name) else ''}")
            else:
                row.append("—")
        if "rsync" in workloads:
            if "rsync" in r:
                la = local.get("rsync", (None,))[0]
                l2 = local.get("rsync2")
                row.append(f"{r['rsync'][0]:.2f}{ratio(r['rsync'][0], la) if name != 'local directory' else ''} / "
                           f"{r['rsync2']:.2f}{ratio(r['rsync2'], l2) if name != 'local directory' else ''}")
            else:
                row.append("—")
        if "small" in workloads:
            row.append(f"{r['ls']:.3f}" if "ls" in r else "—")
        row.append(f"{r['rss']} MiB" if r.get("rss") else "—")
        rows.append("| " + " | ".join(row) + " |")
    if direct:
        row = ["direct upload, 16 parallel (`rclone copy`)"]
        for w in cols:
            row.append(f"— / {direct[w]:.2f}" if w in direct else "—")
        row += ["—"] * (len(head) - len(row))
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(s for s in SYSTEMS if s != "coldvault-before" or "COLDVAULT_BEFORE_BIN" in os.environ))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--work", default="/var/tmp/coldvault-bench")
    ap.add_argument("--no-loop-fs", action="store_true",
                    help="run in --work as it is, instead of on a fresh ext4 file system (with a journal, as on a "
                         "user's disk) made in a sparse image and loop-mounted there for this run (needs root)")
    ap.add_argument("--perf", action="store_true", help="perf profile of coldvault per workload (docs/profiles/)")
    ap.add_argument("--label", default="now", help="profile file suffix (e.g. before, after)")
    ap.add_argument("--no-direct", action="store_true")
    ap.add_argument("--write", help="replace the section between the BENCH markers of this file with the table")
    a = ap.parse_args()
    workloads = [w for w in a.workloads.split(",") if w]
    systems = [s for s in a.systems.split(",") if s]
    for tool in ["garage", "rsync", "fusermount3"] + (["bindfs"] if "passthrough" in systems else []) + (["mkfs.ext4"] if not a.no_loop_fs else []) + (["rclone"] if any(s.startswith("rclone") for s in systems) or not a.no_direct else []) \
            + (["s3fs"] if "s3fs" in systems else []) + (["perf"] if a.perf else []):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed (scripts/install-deps.sh --bench)")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    loop = None if a.no_loop_fs else LoopFs(work)
    src = work / "src"
    make_source(src)
    garage = Garage(work)
    results, direct = {}, {}
    try:
        if not a.no_direct:
            direct = direct_upload(work, src, garage, workloads)
        for s in systems:
            cls = SYSTEMS[s]
            perf_dir = None
            if a.perf and s == "coldvault":
                perf_dir = ROOT / "docs" / "profiles" / a.label
                perf_dir.mkdir(parents=True, exist_ok=True)
            print(f"{cls.name} …", flush=True)
            results[cls.name] = run_system(cls, work, src, garage, workloads, perf_dir)
    finally:
        garage.stop()
        if loop:
            loop.stop()
    t = table(results, direct, workloads)
    cpu = sh("sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo").stdout.split("\n")
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu[0]} cores ({cpu[1].split(':')[-1].strip()}), "
            f"garage {sh('garage', '--version', check=False).stdout.strip()}, "
            f"coldvault {sh(BIN, '--version', check=False).stdout.strip()}: `scripts/bench.py "
            f"--systems {a.systems} --workloads {a.workloads}`. Seconds; ratios to the local directory (returns, rsync) "
            f"and to the direct upload (durable).")
    print("\n" + meta + "\n\n" + t)
    if a.write:
        write_section(a.write, "BENCH", meta + "\n\n" + t)


if __name__ == "__main__":
    sys.exit(main())
