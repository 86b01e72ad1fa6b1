"""What a test may leave behind, read from /proc: the leak checks of conftest.py use it."""

from __future__ import annotations

import os


def open_sockets() -> set[str]:
    """Socket inodes this process holds open."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out
