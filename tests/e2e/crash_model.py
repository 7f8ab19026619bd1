"""The writer of the crash loop (tests/e2e/test_crash_loop.py) and its reference model.

A `Machine` runs random operations on a mount — new files, O_TRUNC rewrites, partial writes in
place, atomic saves (`.NAME.tmpXXXX` then rename over NAME), renames of files and folders,
deletes, files deleted while open for reading — and records in its model only what a syscall
acknowledged. Contents are not kept: each file's model value is a recipe (seeded random bytes,
cuts and patches) from which its bytes are made again when needed.

The one operation a kill -9 interrupts is kept as `pending`: the paths it touches, their state
before and after it and, for a write, what a write cut short may leave (a prefix of what was
being written). After the remount, `resolve` reads those paths through the mount, accepts one
of these states and nothing else, and takes the state found into the model: from then on the
model is exact again.
"""
import errno
import hashlib
import os
import random
import stat
import time

DIR = "dir"
_memo = {}


def content(recipe):
    buf = bytearray()
    for step in recipe:
        if step[0] == "new":
            buf = bytearray(random.Random(step[1]).randbytes(step[2]))
        elif step[0] == "cut":
            del buf[step[1]:]
        elif step[0] == "patch":
            _, off, seed, n, k = step
            buf[off:off + k] = random.Random(seed).randbytes(n)[:k]
    return bytes(buf)


def digest(recipe):
    """(size, sha256) of a recipe's content, memoized."""
    if recipe not in _memo:
        b = content(recipe)
        _memo[recipe] = (len(b), hashlib.sha256(b).hexdigest())
    return _memo[recipe]


def join(d, name):
    return f"{d}/{name}" if d else name


def show(value):
    if value is None:
        return "absent"
    if value == DIR:
        return "folder"
    size, h = digest(value)
    return f"{size} B sha256 {h[:12]}"


class Mismatch(AssertionError):
    pass


class Pending:
    """An operation whose syscall did not return success: `before` and `after` map each path it
    touches to None (absent), DIR or a recipe. `write` is (path, fn): fn(bytes found) gives the
    recipe of a write cut short, or None if the bytes are not such a state."""

    def __init__(self, kind, before, after, write=None):
        self.kind, self.before, self.after, self.write = kind, before, after, write

    def describe(self):
        return f"{self.kind}: " + ", ".join(f"{p}: {show(self.before.get(p))} -> {show(self.after.get(p))}"
                                             for p in sorted(set(self.before) | set(self.after)))


def read_retrying(p, tries=6):
    """Bytes of a file through the mount; a read that fails with EIO (a GET that failed behind
    the fault proxy) is asked again, as coldvault documents."""
    for i in range(tries):
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError as e:
            if e.errno != errno.EIO or i == tries - 1:
                raise
            time.sleep(0.5)


def observe(mnt, rel):
    p = mnt / rel
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return DIR
    return read_retrying(p)


def matches(found, want):
    if want is None or want == DIR:
        return found == want
    return isinstance(found, bytes) and hashlib.sha256(found).hexdigest() == digest(want)[1]


def prefix_of(recipe):
    """A create or O_TRUNC rewrite cut short: some prefix of the new content."""
    full = content(recipe)

    def fn(found):
        return recipe + (("cut", len(found)),) if full[:len(found)] == found else None
    return fn


def patched_in_part(old_recipe, off, seed, n):
    """A write of n bytes at off cut short: the old content with the first k of them written."""
    old = content(old_recipe)
    data = random.Random(seed).randbytes(n)

    def fn(found):
        if len(found) > len(old):
            k = len(found) - off
            if not 0 <= k <= n or found[:off] != old[:off] or found[off:] != data[:k]:
                return None
            return old_recipe + (("patch", off, seed, n, k),)
        if len(found) != len(old) or found[:off] != old[:off]:
            return None
        end = min(off + n, len(old))
        if found[end:] != old[end:]:
            return None
        k = 0
        while off + k < end and found[off + k] == data[k]:
            k += 1
        if found[off + k:end] != old[off + k:end]:
            return None
        return old_recipe + (("patch", off, seed, n, k),)
    return fn


# What a targeted kill aims at (the names Machine.at is called with).
SYSCALLS = ["close", "rename", "rename over", "folder rename", "unlink", "unlink of an open file"]
KINDS = ["create", "rewrite", "partial-write", "atomic-save", "rename", "delete", "delete-open", "mkdir", "rename-folder"]
WEIGHTS = [26, 12, 12, 12, 10, 8, 8, 4, 4]


class Machine:
    """One machine's writer over its own part of the tree (`base`, "" for the root)."""

    def __init__(self, name, mnt, base, seed, sizes, pause=0.0):
        self.name, self.mnt, self.base, self.seed, self.sizes, self.pause = name, mnt, base, seed, sizes, pause
        self.files = {}  # path -> recipe
        self.dirs = {base} if base else set()
        self.pending = None
        self.done = {k: 0 for k in KINDS}
        self.cut = {}  # "kind -> old/new/partial": interrupted operations and the state found
        self.errors_alive = []  # operations that failed while the daemon was running
        self.bad_reads = []  # a file deleted while open that read back wrong
        self.crashed = None
        self.n = 0
        self.bytes_written = 0
        self.log = []  # last operations, for a failure report
        self.trap = None  # (syscall, fn): a targeted kill's fn, called just before the next such syscall

    def at(self, what):
        """Just before a syscall a targeted kill may aim at (it fires once)."""
        t = self.trap
        if t and t[0] == what:
            self.trap = None
            t[1](what)

    # -- the writer ---------------------------------------------------------------------------
    def run(self, rnd, stop, alive):
        rng = random.Random(f"{self.seed}/{self.name}/{rnd}")
        try:
            while not stop.is_set():
                kind = rng.choices(KINDS, WEIGHTS)[0]
                try:
                    if getattr(self, "op_" + kind.replace("-", "_"))(rng, rnd):
                        self.done[kind] += 1
                except OSError as e:
                    # The daemon was killed under us: what the syscall did not acknowledge stays
                    # pending until the remount. With the daemon running (S3 failed a read that
                    # a partial write or a reader needed), it is resolved at once.
                    if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) or not alive():
                        return
                    self.errors_alive.append((rnd, kind, errno.errorcode.get(e.errno, e.errno), str(e)))
                    if len(self.errors_alive) > 20:
                        return
                    try:
                        self.resolve(rnd)
                    except OSError:
                        return
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as e:  # a bug in the test: the main thread reports it
            self.crashed = e

    def new_name(self, rnd, what="f"):
        self.n += 1
        return f"{what}{rnd:02d}-{self.n:04d}" + (".bin" if what == "f" else "")

    def folders(self):
        return sorted(self.dirs - {self.base})

    def some_file(self, rng, max_size=None):
        cands = sorted(p for p, r in self.files.items() if max_size is None or digest(r)[0] <= max_size)
        return rng.choice(cands) if cands else None

    def new_recipe(self, rng):
        return (("new", rng.getrandbits(64), rng.choice(self.sizes)),)

    def write_file(self, path, recipe, mode="xb", kind="create"):
        old = self.files.get(path)
        self.pending = Pending(kind, {path: old}, {path: recipe}, (path, prefix_of(recipe)))
        data = content(recipe)
        self.log.append(f"{kind} {path} {show(recipe)}")
        f = open(self.mnt / path, mode)
        try:
            f.write(data)
            self.at("close")
        finally:
            f.close()
        # close() returned: from here on this content is promised.
        self.files[path] = recipe
        self.pending = None
        self.bytes_written += len(data)

    def op_create(self, rng, rnd):
        d = rng.choice([self.base] + self.folders())
        self.write_file(join(d, self.new_name(rnd)), self.new_recipe(rng))
        return True

    def op_rewrite(self, rng, rnd):
        p = self.some_file(rng)
        if p is None:
            return False
        self.write_file(p, self.new_recipe(rng), mode="wb", kind="rewrite")
        return True

    def op_partial_write(self, rng, rnd):
        p = self.some_file(rng, max_size=1 << 20)
        if p is None:
            return False
        old = self.files[p]
        size = digest(old)[0]
        off = rng.choice([0, size // 2, size, rng.randrange(size + 1)])
        seed, n = rng.getrandbits(64), rng.choice([1, 100, 5_000, 70_000])
        new = old + (("patch", off, seed, n, n),)
        self.pending = Pending("partial-write", {p: old}, {p: new}, (p, patched_in_part(old, off, seed, n)))
        self.log.append(f"partial-write {p} at {off} +{n} -> {show(new)}")
        data = random.Random(seed).randbytes(n)
        fd = os.open(self.mnt / p, os.O_WRONLY)
        try:
            w = 0
            while w < n:
                w += os.pwrite(fd, data[w:], off + w)
            self.at("close")
        finally:
            os.close(fd)
        self.files[p] = new
        self.pending = None
        self.bytes_written += n
        return True

    def op_atomic_save(self, rng, rnd):
        # Over an existing file most of the time, as an editor saves; else a new name, as rsync.
        p = self.some_file(rng) if rng.random() < 0.8 else None
        if p is None:
            p = join(rng.choice([self.base] + self.folders()), self.new_name(rnd))
        d, name = os.path.split(p)
        tmp = join(d, f".{name}.tmp{rng.getrandbits(24):06x}")
        recipe = self.new_recipe(rng)
        self.write_file(tmp, recipe, kind="atomic-save (temp file)")
        old = self.files.get(p)
        self.pending = Pending("atomic-save (rename)", {tmp: recipe, p: old}, {tmp: None, p: recipe})
        self.log.append(f"rename {tmp} -> {p}")
        self.at("rename over")
        os.rename(self.mnt / tmp, self.mnt / p)
        self.files[p] = self.files.pop(tmp)
        self.pending = None
        return True

    def op_rename(self, rng, rnd):
        p = self.some_file(rng)
        if p is None:
            return False
        q = join(rng.choice([self.base] + self.folders()), self.new_name(rnd))
        r = self.files[p]
        self.pending = Pending("rename", {p: r, q: None}, {p: None, q: r})
        self.log.append(f"rename {p} -> {q}")
        self.at("rename")
        os.rename(self.mnt / p, self.mnt / q)
        self.files[q] = self.files.pop(p)
        self.pending = None
        return True

    def op_delete(self, rng, rnd):
        p = self.some_file(rng)
        if p is None:
            return False
        self.pending = Pending("delete", {p: self.files[p]}, {p: None})
        self.log.append(f"unlink {p}")
        self.at("unlink")
        os.unlink(self.mnt / p)
        del self.files[p]
        self.pending = None
        return True

    def op_delete_open(self, rng, rnd):
        """open, unlink, read it all, close: the reader keeps the whole content."""
        p = self.some_file(rng, max_size=1 << 20)
        if p is None:
            return False
        r = self.files[p]
        self.log.append(f"open+unlink+read {p}")
        with open(self.mnt / p, "rb") as f:
            self.pending = Pending("delete-open", {p: r}, {p: None})
            self.at("unlink of an open file")
            os.unlink(self.mnt / p)
            del self.files[p]
            self.pending = None
            got = f.read()
        if hashlib.sha256(got).hexdigest() != digest(r)[1]:
            self.bad_reads.append((p, show(r), f"{len(got)} B sha256 {hashlib.sha256(got).hexdigest()[:12]}"))
        return True

    def op_mkdir(self, rng, rnd):
        if len(self.folders()) >= 5:
            return False
        d = join(self.base, self.new_name(rnd, "d"))
        self.pending = Pending("mkdir", {d: None}, {d: DIR})
        self.log.append(f"mkdir {d}")
        self.at("mkdir")
        os.mkdir(self.mnt / d)
        self.dirs.add(d)
        self.pending = None
        return True

    def op_rename_folder(self, rng, rnd):
        fs = self.folders()
        if not fs:
            return False
        d = rng.choice(fs)
        e = join(self.base, self.new_name(rnd, "d"))
        moved = {p: r for p, r in self.files.items() if p.startswith(d + "/")}
        before = {d: DIR, e: None, **moved, **{e + p[len(d):]: None for p in moved}}
        after = {d: None, e: DIR, **{p: None for p in moved}, **{e + p[len(d):]: r for p, r in moved.items()}}
        self.pending = Pending("rename-folder", before, after)
        self.log.append(f"rename {d}/ -> {e}/ ({len(moved)} files)")
        self.at("folder rename")
        os.rename(self.mnt / d, self.mnt / e)
        self.apply(after)
        self.pending = None
        return True

    # -- after a remount ----------------------------------------------------------------------
    def apply(self, state):
        for p, val in state.items():
            if val is None:
                self.files.pop(p, None)
                self.dirs.discard(p)
            elif val == DIR:
                self.dirs.add(p)
            else:
                self.files[p] = val

    def resolve(self, rnd):
        """The interrupted operation's paths as the remounted daemon shows them: its state
        before, after, or (a write) part-written; anything else is a failure."""
        pend = self.pending
        if pend is None:
            return None
        paths = sorted(set(pend.before) | set(pend.after))
        found = {p: observe(self.mnt, p) for p in paths}
        self.pending = None
        for label, state in (("old", pend.before), ("new", pend.after)):
            if all(matches(found[p], state.get(p)) for p in paths):
                self.apply(state)
                return self.count_cut(pend.kind, label)
        if pend.write:
            p, fn = pend.write
            r = fn(found[p]) if isinstance(found[p], bytes) else None
            if r is not None and all(matches(found[q], pend.before.get(q)) for q in paths if q != p):
                self.apply({p: r})
                return self.count_cut(pend.kind, "partial")

        def f(x):
            return "absent" if x is None else "folder" if x == DIR else f"{len(x)} B sha256 {hashlib.sha256(x).hexdigest()[:12]}"
        raise Mismatch(f"[{self.name}] round {rnd}: the operation cut by the kill left a state that is neither "
                       f"before nor after it\n  operation {pend.describe()}\n  found: "
                       + ", ".join(f"{p}: {f(found[p])}" for p in paths))

    def count_cut(self, kind, label):
        key = f"{kind} -> {label}"
        self.cut[key] = self.cut.get(key, 0) + 1
        return key

    def expected(self):
        """(folders, {file: (size, sha256)}) this machine's part of the tree must show."""
        return set(self.dirs), {p: digest(r) for p, r in self.files.items()}


def walk(mnt, base="", skip=(), hashes=False):
    """(folders, {file: (size, sha256 or None)}) below mnt/base, paths relative to mnt."""
    dirs, files = set([base] if base else []), {}

    def err(e):
        raise e
    for dp, dns, fns in os.walk(mnt / base if base else mnt, onerror=err):
        rel = os.path.relpath(dp, mnt)
        rel = "" if rel == "." else rel
        if not rel:
            dns[:] = [d for d in dns if d not in skip]
            fns = [f for f in fns if f not in skip]
        for d in dns:
            dirs.add(join(rel, d))
        for fn in fns:
            p = join(rel, fn)
            if hashes:
                h = hashlib.sha256()
                with open(mnt / p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        h.update(b)
                files[p] = (os.path.getsize(mnt / p), h.hexdigest())
            else:
                files[p] = (os.path.getsize(mnt / p), None)
    return dirs, files


def diff(want_dirs, want_files, got_dirs, got_files, sizes_only=False):
    """Differences, worded for a failure report: [(path, expected, got)]."""
    out = []
    for d in sorted(want_dirs ^ got_dirs):
        out.append((d + "/", "folder" if d in want_dirs else "absent", "folder" if d in got_dirs else "absent"))
    for p in sorted(set(want_files) | set(got_files)):
        w, g = want_files.get(p), got_files.get(p)
        if w is not None and g is not None and (w[0] == g[0] if sizes_only else w == g):
            continue
        fmt = lambda x: "absent" if x is None else f"{x[0]} B" + ("" if sizes_only or x[1] is None else f" sha256 {x[1][:12]}")
        out.append((p, fmt(w), fmt(g)))
    return out
