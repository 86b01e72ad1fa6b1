"""How checkpoints can be made on the state directory's filesystem: hard links, reflinks.

Apart from ``_checkpoints`` so that the sandbox status route (``_policy``) and
the :class:`~sprites_async.emulator.Emulator` can report it without loading
the checkpoint machinery, which sits above them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

_FICLONE = 0x40049409
"""``ioctl`` number of a reflink (a copy-on-write clone of a whole file)."""


def checkpoint_method(directory: Path) -> tuple[str, str]:
    """``(method, one line)``: how checkpoints are made on ``directory``'s filesystem.

    ``method`` is ``"hard-links"`` or ``"copy"`` (the filesystem refuses hard
    links: every create copies the whole tree). Probed with two small files.
    """
    import fcntl
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".checkpoint-probe-", dir=directory))
    try:
        (probe / "a").write_bytes(b"probe")
        try:
            os.link(probe / "a", probe / "b")
            refused = None
        except OSError as exc:
            refused = exc.strerror or type(exc).__name__
        reflinks = False
        with (
            open(probe / "a", "rb") as src,
            open(probe / "c", "wb") as dst,
            contextlib.suppress(OSError),
        ):
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            reflinks = True
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    unused = "reflinks supported here but not used" if reflinks else "no reflinks here"
    if refused is None:
        return "hard-links", (
            "hard-link snapshots (a create costs a stat and a link per file plus the"
            " changed bytes, a restore what differs); no overlays, " + unused
        )
    return "copy", (
        f"WARNING: full copies: the state directory's filesystem refuses hard links"
        f" ({refused}), so every create copies the whole tree (a restore still costs"
        f" what differs); no overlays, {unused}"
    )
