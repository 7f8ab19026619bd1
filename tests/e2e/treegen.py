"""A deterministic test tree like a photo export: nested folders, Unicode and 200-byte names,
sizes from 1 KiB to 40 MiB, nanosecond mtimes."""
import os
import pathlib
import random

NAMES = ["Fotos – día 1", "写真", "Ελληνικά", "Ünïcødé", "📷 camera roll", "raw", "catalog", "Lisboa 2019"]


def make_tree(root, n_files=300, seed=7, big=(40 << 20, 17 << 20, 9 << 20)):
    rng = random.Random(seed)
    root = pathlib.Path(root)
    dirs = [root]
    for i in range(24):
        parent = rng.choice(dirs)
        if len(parent.relative_to(root).parts) >= 4:
            parent = root
        d = parent / f"{rng.choice(NAMES)} {i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
    files = {}
    for i in range(n_files):
        d = rng.choice(dirs)
        if i < len(big):
            size = big[i]
        else:
            size = int(1024 * (256 ** rng.random()))  # 1 KiB .. 256 KiB, log-uniform
        if i % 37 == 5:
            name = ("é" * 96) + f"_{i:03d}.tif"  # 200 bytes of UTF-8
            assert len(name.encode()) == 200
        elif i % 37 == 6:
            name = ("x" * 192) + f"_{i:03d}.jpg"
            assert len(name.encode()) == 200
        else:
            name = f"IMG_{i:04d} {rng.choice(NAMES)}.jpg"
        p = d / name
        data = rng.randbytes(size)
        p.write_bytes(data)
        ns = rng.randrange(1_400_000_000, 1_700_000_000) * 1_000_000_000 + rng.randrange(1_000_000_000)
        os.utime(p, ns=(ns, ns))
        files[str(p.relative_to(root))] = (size, ns)
    return files
