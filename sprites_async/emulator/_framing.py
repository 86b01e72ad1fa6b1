"""Wire-level helpers shared by the exec, session and control modules.

Pure functions over bytes and strings: stream-id framing (Section 3.4 of the
protocol reference), Go duration strings, signal names and exit-code clamping.
"""

from __future__ import annotations

import re
import signal
from typing import Literal

STREAM_STDIN = 0x00
STREAM_STDOUT = 0x01
STREAM_STDERR = 0x02
STREAM_EXIT = 0x03
STREAM_EOF = 0x04

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPRITE_HOME = "/home/sprite"

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.Duration`` string (``10s``, ``1h30m``, ``0``) into seconds.

    A bare number is accepted as seconds (PY sends ``5.0s`` but some callers
    send ``10``). Raises ``ValueError`` for anything else.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    try:
        return sign * float(s)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_signal(name: str) -> signal.Signals:
    """Map ``TERM``, ``SIGTERM``, ``sigterm`` or ``15`` to a signal; ``ValueError`` otherwise."""
    s = name.strip().upper()
    if s.isdigit():
        return signal.Signals(int(s))
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return signal.Signals[s]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def exit_status(returncode: int) -> int:
    """Exit byte for a wait status as Python reports it.

    A signal death (negative ``returncode``) becomes ``128 + N``, the shell
    convention that the kill endpoint also reports (143 for SIGTERM), rather
    than the 2025 server's 255: it tells the client which signal it was.
    Everything is then clamped into 0..255.
    """
    code = 128 - returncode if returncode < 0 else returncode
    return max(0, min(255, code))


def stream_frame(stream: int, data: bytes) -> bytes:
    """A non-TTY frame: one stream-id byte then the payload."""
    return bytes((stream,)) + data


def exit_frame(code: int) -> bytes:
    """The binary exit frame ``03 NN`` (exactly one payload byte)."""
    return bytes((STREAM_EXIT, max(0, min(255, code))))


StdinAction = Literal["data", "eof", "ignore"]


def classify_stdin(data: bytes, *, control: bool) -> tuple[StdinAction, bytes]:
    """Interpret one client binary frame of a non-TTY session, leniently.

    On ``/exec`` (Section 3.7) a frame that starts with ``04`` is EOF and a
    leading ``00`` is stripped; anything else is raw data. On ``/control``
    (Section 5.4) only a lone ``04`` is EOF, one leading ``00`` is stripped,
    and the rest is raw data, which accepts the PY/JS and the GO framings.
    """
    if not data:
        return "ignore", b""
    if control:
        if data == b"\x04":
            return "eof", b""
    elif data[0] == STREAM_EOF:
        return "eof", b""
    if data[0] == STREAM_STDIN:
        data = data[1:]
        if not data:
            return "ignore", b""
    return "data", data
