"""What an emulator checkpoint costs: time and new disk space, against a full copy.

``python -m benchmarks.checkpoints [--files 50000] [--mib 1024] [--dir /var/tmp]``

Builds a sprite directory holding ``--files`` small files (1 KiB each, 100 per
directory) and about ``--mib`` MiB in all (the rest in four large files of real,
non-sparse data), then measures, on the same tree:

* the full copy the emulator used to make for every create and restore (baseline);
* the first checkpoint (nothing to share yet: a full copy too);
* a checkpoint after one small file changed;
* a restore of that checkpoint after one more file changed (``--reps`` pairs).

Each timed step starts after ``sync``, so that it does not pay for writing
back the previous step's data.

New disk space is counted with ``st_blocks`` over the inodes an operation
added (hard links to existing inodes cost nothing but directory entries).
Everything is made in a temporary directory under ``--dir`` and removed at
the end; the peak is about three times the tree's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sprites_async.emulator._checkpoints import _remove_trash, _replace_root, _snapshot, copy_tree

_PER_DIR = 100
_SMALL = 1024
_BLOCK = 1 << 20


def build(root: Path, files: int, mib: int) -> None:
    """The sprite's tree: many small files plus a few big ones."""
    home = root / "home" / "sprite"
    home.mkdir(parents=True)
    (root / "tmp").mkdir()
    small = os.urandom(_SMALL)
    for i in range(files):
        d = home / "src" / f"d{i // _PER_DIR:04d}"
        if i % _PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.txt").write_bytes(small)
    left = max(0, mib * _BLOCK - files * _SMALL)
    block = os.urandom(_BLOCK)
    for n in range(4):
        with open(home / f"big{n}.bin", "wb") as f:
            for _ in range(left // 4 // _BLOCK):
                f.write(block)


def blocks(tops: Iterable[Path]) -> dict[tuple[int, int], int]:
    """Bytes on disk per inode (files and directories) under the given trees."""
    out: dict[tuple[int, int], int] = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames, "."]:
                st = os.lstat(os.path.join(dirpath, name))
                out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


def added(before: dict[tuple[int, int], int], after: Iterable[Path]) -> int:
    now = blocks(after)
    return sum(size for inode, size in now.items() if inode not in before)


def timed(fn: Callable[[], None]) -> float:
    # The previous step's dirty pages would otherwise be written back during this one.
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def touch_one(path: Path) -> None:
    # Past the filesystem's coarse clock tick, so the change is seen as one.
    time.sleep(0.05)
    with open(path, "r+b") as f:
        f.write(b"changed!")


def _mib(n: int) -> str:
    return f"{n / _BLOCK:9.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--reps", type=int, default=3, help="create/restore pairs after v1")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sprites-cp-bench-", dir=args.dir))
    try:
        sprite = work / "sprites" / "bench"
        root, cps = sprite / "root", sprite / "checkpoints"
        cps.mkdir(parents=True)
        t = timed(lambda: build(root, args.files, args.mib))
        size = sum(blocks([root]).values())
        print(f"tree: {args.files} small files, {_mib(size)} on disk, built in {t:.1f} s")
        rows: list[tuple[str, float, int]] = []

        before = blocks([root])
        t = timed(lambda: copy_tree(root, work / "full"))
        rows.append(("full copy (old create/restore)", t, added(before, [work / "full"])))
        shutil.rmtree(work / "full")

        t = timed(lambda: _snapshot(root, cps / "v1"))
        rows.append(("first checkpoint (v1, nothing to share)", t, added(before, [cps / "v1"])))

        for n in range(2, 2 + args.reps):
            cp = cps / f"v{n}"
            touch_one(root / "home/sprite/src/d0000/f00000.txt")
            before = blocks([root, cps])
            t = timed(lambda cp=cp: _snapshot(root, cp))  # type: ignore[misc]
            rows.append((f"checkpoint v{n}, one file changed", t, added(before, [cp])))

            touch_one(root / "home/sprite/src/d0001/f00100.txt")
            before = blocks([root, cps])
            t = timed(lambda cp=cp: _replace_root(root, cp))  # type: ignore[misc]
            rows.append((f"restore v{n}, one file changed", t, added(before, [root])))
            _remove_trash(sprite)  # done in the background after a restore

        for what, seconds, new in rows:
            print(f"{what:42} {seconds:7.3f} s  {_mib(new)} new")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
