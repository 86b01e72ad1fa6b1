"""What a live command reports: session info, output, ports, its exit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

__all__ = ["ExecEvent", "ExitEvent", "OutputEvent", "PortCallback", "PortEvent", "SessionInfoEvent"]


class SessionInfoEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The server's ``session_info``: the session started (or was attached).

    Attributes:
        session_id: The session id (the PID, as a string).
        command: The command name the server reports.
        created: Unix seconds, when known.
        tty: Whether the session has a terminal.
        is_owner: Whether this connection created the session.
    """

    session_id: str | None
    command: str | None = None
    created: float | None = None
    tty: bool = False
    is_owner: bool | None = None


class OutputEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Output bytes. ``stream`` is ``"stdout"`` or ``"stderr"`` (TTY: always stdout)."""

    stream: Literal["stdout", "stderr"]
    data: bytes


class PortEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A process in the session started (``opened``) or stopped listening on a port.

    ``address`` is passed on verbatim (an IP address in practice, a URL in
    some documentation).
    """

    opened: bool
    port: int
    address: str = ""
    pid: int | None = None


class ExitEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The command exited; always the last event."""

    exit_code: int


ExecEvent = SessionInfoEvent | OutputEvent | PortEvent | ExitEvent

PortCallback = Callable[[PortEvent], Any]
