"""A service's output: the log file inside the sprite, and its lines in memory.

Output is appended raw to ``/.sprite/logs/services/<name>.log`` (stdout and
stderr combined, truncated on start once over 1 MiB) and kept in the runtime
as typed lines for the logs endpoint; lines already in the file when the
runtime is created are replayed as ``stdout``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ._paths import FsError, resolve
from ._procs import SpriteProcess
from ._service_model import LOG_DIR, ServiceRuntime, event

log = logging.getLogger(__name__)

LOG_FILE_MAX = 1 << 20
LOG_REPLAY_BYTES = 256 * 1024
MAX_LINE = 64 * 1024


class Lines:
    """Splits one output stream into lines (``\\n``, a trailing ``\\r`` dropped)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes (over-long ones cut at ``MAX_LINE`` bytes)."""
        self._buf += data
        out: list[str] = []
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i < 0:
                break
            out.append(_text(self._buf[start:i]))
            start = i + 1
        del self._buf[:start]
        while len(self._buf) >= MAX_LINE:
            out.append(_text(self._buf[:MAX_LINE]))
            del self._buf[:MAX_LINE]
        return out

    def flush(self) -> list[str]:
        """The unterminated rest, at the end of the output."""
        if not self._buf:
            return []
        out = [_text(self._buf)]
        self._buf.clear()
        return out


def _text(raw: bytes | bytearray) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return bytes(raw).decode("utf-8", errors="replace")


async def copy_output(rt: ServiceRuntime, proc: SpriteProcess, fd: int | None) -> None:
    """Carry one process's output to the log file ``fd`` (closed here) and the subscribers."""
    splitters = {1: Lines(), 2: Lines()}
    kinds = {1: "stdout", 2: "stderr"}
    try:
        while True:
            item = await proc.output.get()
            if item is None:
                break
            stream, data = item
            if fd is not None:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    log.warning("service log of %s stopped: %s", rt.name, exc)
                    os.close(fd)
                    fd = None
            for line in splitters[stream].feed(data):
                rt.publish(event(kinds[stream], data=line))
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                rt.publish(event(kinds[stream], data=line))
    finally:
        close_fd(fd)


def says_port_in_use(rt: ServiceRuntime) -> bool:
    """Whether the last lines of the current run complain that an address is in use."""
    since = (rt.started_ns or 0) // 1_000_000
    tail = [
        str(ev.get("data", ""))
        for ev in list(rt.lines)[-20:]
        if ev.get("type") in ("stdout", "stderr") and ev.get("timestamp", 0) >= since
    ]
    return any("EADDRINUSE" in line or "address already in use" in line.lower() for line in tail)


def open_log(root: Path, name: str) -> int | None:
    """Open (create, append) a service's log file inside the sprite; None if impossible."""
    try:
        target = resolve(root, f"{LOG_DIR}/{name}.log", create_parents=True)
        fd = os.open(
            target.host,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
        )
    except (FsError, OSError) as exc:
        log.warning("cannot open the log of service %s: %s", name, exc)
        return None
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_size > LOG_FILE_MAX:
            os.ftruncate(fd, 0)
    return fd


def close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def replay_log_file(root: Path, rt: ServiceRuntime) -> None:
    """Seed the in-memory lines from a log file that already exists (as ``stdout``)."""
    try:
        target = resolve(root, f"{LOG_DIR}/{rt.name}.log")
        fd = os.open(target.host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FsError, OSError):
        return
    try:
        st = os.fstat(fd)
        offset = max(0, st.st_size - LOG_REPLAY_BYTES)
        data = os.pread(fd, LOG_REPLAY_BYTES, offset)
    except OSError:
        return
    finally:
        os.close(fd)
    if offset:
        data = data[data.find(b"\n") + 1 :]
    stamp = int(st.st_mtime * 1000)
    lines = Lines()
    for line in [*lines.feed(data), *lines.flush()]:
        rt.lines.append({"type": "stdout", "data": line, "timestamp": stamp})
