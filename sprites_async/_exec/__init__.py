"""Command execution: ``sprite.exec``, ``sprite.process``, ``sprite.run_http``, sessions.

Three ways to run a command:

* :func:`run` (``await sprite.exec(...)``) runs to completion and returns an
  :class:`ExecResult`. Without stdin and without a TTY it borrows a pooled
  ``/control`` socket (see ``_control``), else it opens a direct ``/exec``
  WebSocket. Both behave the same: exit codes, timeouts and cancellation.
* :class:`ExecSession` (``async with sprite.process(...) as proc``) is a
  live command on its own ``/exec`` WebSocket: streaming output with bounded
  buffers, stdin, TTY, resize, signals, events.
* :func:`run_http` (``await sprite.run_http(...)``) uses ``POST /exec``.

Exit codes are never invented. Non-TTY: the binary ``03`` frame is
authoritative; after a text ``exit`` the reader waits up to
``ExecSettings.exit_grace`` for trailing output and the frame, then uses the
text code. TTY: the text ``exit``. A connection that ends before any exit
indication raises :class:`ExitStatusUnknownError`.

Cancellation and timeouts reach the sandbox: the command is signalled (TERM,
then KILL after a grace period) before the error is re-raised.

A command runs at most once. It counts as started once its ``op.start``
frame (or its ``/exec`` upgrade request) has been sent; after that a lost
connection raises :class:`ExitStatusUnknownError`, never a second run. Only
a start the server refused with ``op.error`` (``op.busy``, ``op.not_found``)
is tried again (on another control socket, then a direct one).

A command the sprite could not start (no such executable, not executable,
no such working directory) raises :class:`CommandStartError`
(:class:`CommandNotFoundError` for a missing executable) on every path: the
``500 failed to start process: ...`` answer to an ``/exec`` upgrade or to
``POST /exec``, or an ``op.complete`` with ``ok: false`` and the start error's
text over ``/control``. It is a known outcome (nothing ran), never an
:class:`ExitStatusUnknownError`, and is not sent again. Any other 500 stays a
:class:`ServerError`.

Sockets are closed by sending the close frame and dropping the connection;
the server's close reply is never awaited: some servers linger after the exit
or never answer a close.

Layout, as websockets is built (a protocol without I/O under a thin asyncio
connection): ``_protocol`` (:class:`ExecProtocol`: frames and the time in;
output, events, the exit status and deadlines out; every exit-code rule),
``_buffers`` (per-stream queues, backpressure, what ``exec()`` keeps),
``_connection`` (the socket read into the protocol, its timer, its close),
``_handshake`` (opening: direct, attach, control lease), ``_session``
(:class:`ExecSession`), ``_request``, ``_result`` (``run``, ``run_http``),
``_sessions`` (list, attach, kill) and ``_events``.
"""

from __future__ import annotations

from ._buffers import DEFAULT_MAX_OUTPUT, OutputStream, _Collector, _Kept
from ._events import (
    ExecEvent,
    ExitEvent,
    OutputEvent,
    PortCallback,
    PortEvent,
    SessionInfoEvent,
)
from ._request import BASE_ENV, DEFAULT_PATH, TTY_ENV, ExecRequest, Stdin, _start_error_of
from ._result import ExecResult, run, run_http
from ._session import ExecSession
from ._sessions import ExecSessionInfo, ExecSessions, KillEvent, _decode_kill

__all__ = [
    "BASE_ENV",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_PATH",
    "TTY_ENV",
    "ExecEvent",
    "ExecRequest",
    "ExecResult",
    "ExecSession",
    "ExecSessionInfo",
    "ExecSessions",
    "ExitEvent",
    "KillEvent",
    "OutputEvent",
    "OutputStream",
    "PortCallback",
    "PortEvent",
    "SessionInfoEvent",
    "Stdin",
    "_Collector",
    "_Kept",
    "_decode_kill",
    "_start_error_of",
    "run",
    "run_http",
]
