"""Command execution: ``sprite.exec``, ``sprite.process``, ``sprite.run_http``, sessions.

Three ways to run a command (Section 3):

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
the server's close reply is never awaited (Section 12 item 11).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from aiohttp import WSMsgType

from . import _frames
from ._config import ExecSettings, settings_for
from ._control import close_now
from ._errors import (
    APIError,
    CommandFailedError,
    CommandStartError,
    CommandTimeoutError,
    ExecError,
    ExitStatusUnknownError,
    GoneError,
    NotFoundError,
    ProtocolError,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
    StreamError,
    command_start_error,
)
from ._models import JSONDecoder, UnreadableEntry, attach_raw, decode_any, raw_of, salvage
from ._session import (
    SOCKET_ERRORS,
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    RequestOptions,
    quote_segment,
    request_options,
)
from ._streams import NOT_FINAL, NDJSONStream, NotFinal
from ._validation import (
    check_argv,
    check_cwd,
    check_duration,
    check_env,
    check_max_output,
    check_size,
    check_stdin,
    check_timeout,
    go_duration,
    signal_name,
)

if TYPE_CHECKING:
    from ._client import SpritesClient
    from ._control import ControlLease
    from ._session import WebSocket
    from ._sprites import Sprite
    from ._telemetry import ExecSpan

__all__ = [
    "DEFAULT_PATH",
    "ExecEvent",
    "ExecResult",
    "ExecSession",
    "ExecSessionInfo",
    "ExecSessions",
    "ExitEvent",
    "KillEvent",
    "OutputEvent",
    "OutputStream",
    "PortEvent",
    "SessionInfoEvent",
    "run",
    "run_http",
]

logger = logging.getLogger("sprites_async")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV: Mapping[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/home/sprite", "LANG": "C.UTF-8"}
"""What a command's environment starts from when ``env`` is given (Section 3.13)."""
TTY_ENV: Mapping[str, str] = {"TERM": "xterm-256color"}

Stdin = bytes | bytearray | memoryview | str | AsyncIterable[bytes] | None
PortCallback = Callable[["PortEvent"], Any]


# ----------------------------------------------------------------------- settings


DEFAULT_MAX_OUTPUT = 8 << 20
"""Bytes of each stream ``exec()`` keeps by default (8 MiB: its first and last 4 MiB)."""


# ------------------------------------------------------------------------- events


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


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a finished command.

    Attributes:
        exit_code: 0-255 (signal deaths are reported by the server, e.g. 143 or 255).
        stdout: Captured stdout (TTY: the terminal output).
        stderr: Captured stderr (empty for TTY runs).
        stdout_dropped: Bytes of stdout beyond ``max_output`` (counted, not
            kept). When not 0, ``stdout`` is the first ``max_output // 2``
            bytes followed by the last ``max_output - max_output // 2``: the
            dropped bytes were between them.
        stderr_dropped: The same for stderr.
        session_id: The server's session id, when it was reported.
        argv: The command.
    """

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    session_id: str | None = None
    argv: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the exit code is 0."""
        return self.exit_code == 0

    @property
    def truncated(self) -> bool:
        """True when some output was beyond ``max_output`` and was not kept."""
        return bool(self.stdout_dropped or self.stderr_dropped)

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stderr.decode("utf-8", "replace")

    def text(self, encoding: str = "utf-8", errors: str = "replace") -> str:
        """stdout decoded."""
        return self.stdout.decode(encoding, errors)

    def check(self) -> ExecResult:
        """Return self, or raise :class:`CommandFailedError` if the exit code is not 0."""
        if self.exit_code != 0:
            raise CommandFailedError(self, argv=self.argv)
        return self


# ---------------------------------------------------------------------- validation


def _stdin_bytes(stdin: Stdin) -> bytes | None:
    if isinstance(stdin, str):
        return stdin.encode()
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    return None


@dataclass(frozen=True)
class ExecRequest:
    """A validated command: what goes on the wire."""

    argv: tuple[str, ...]
    env: tuple[str, ...] | None = None
    cwd: str | None = None
    tty: bool = False
    stdin: bool = False
    cols: int | None = None
    rows: int | None = None
    max_run_after_disconnect: str | None = None

    @classmethod
    def build(
        cls,
        argv: Sequence[object],
        *,
        env: Mapping[str, str] | None = None,
        env_replace: bool = False,
        cwd: str | None = None,
        tty: bool = False,
        stdin: bool = False,
        cols: int | None = None,
        rows: int | None = None,
        max_run_after_disconnect: float | str | None = None,
    ) -> ExecRequest:
        """Validate everything before anything is sent (ValueError/TypeError)."""
        args = check_argv(argv)
        env_list: tuple[str, ...] | None = None
        if env is not None:
            user = check_env(env)
            merged = dict(user) if env_replace else {**BASE_ENV, **(TTY_ENV if tty else {}), **user}
            env_list = tuple(f"{k}={v}" for k, v in merged.items())
        return cls(
            argv=args,
            env=env_list,
            cwd=None if cwd is None else check_cwd(cwd),
            tty=bool(tty),
            stdin=bool(stdin),
            cols=None if cols is None else check_size(cols, "cols"),
            rows=None if rows is None else check_size(rows, "rows"),
            max_run_after_disconnect=None
            if max_run_after_disconnect is None
            else check_duration(max_run_after_disconnect, "max_run_after_disconnect"),
        )

    def query(self, *, http: bool = False) -> list[tuple[str, str]]:
        """Query parameters of ``/exec`` (repeated ``cmd`` and ``env``)."""
        params = [("cmd", a) for a in self.argv]
        params.append(("path", self.argv[0]))
        params.extend(("env", e) for e in self.env or ())
        if self.cwd is not None:
            params.append(("dir", self.cwd))
        params.append(("stdin", "true" if self.stdin else "false"))
        if not http:
            if self.tty:
                params.append(("tty", "true"))
                params.append(("cols", str(self.cols or 80)))
                params.append(("rows", str(self.rows or 24)))
            if self.max_run_after_disconnect is not None:
                params.append(("max_run_after_disconnect", self.max_run_after_disconnect))
        return params

    def control_args(self) -> dict[str, str | list[str]]:
        """``op.start`` arguments: strings or lists of strings only (Section 5.2)."""
        args: dict[str, str | list[str]] = {
            "cmd": list(self.argv),
            "path": self.argv[0],
            "stdin": "true" if self.stdin else "false",
        }
        if self.env is not None:
            args["env"] = list(self.env)
        if self.cwd is not None:
            args["dir"] = self.cwd
        if self.tty:
            args["tty"] = "true"
            args["cols"] = str(self.cols or 80)
            args["rows"] = str(self.rows or 24)
        if self.max_run_after_disconnect is not None:
            args["max_run_after_disconnect"] = self.max_run_after_disconnect
        return args


# ------------------------------------------------------------------ live sessions


class _RetryDirect(Exception):
    """The server refused the control op's start (``op.error``): nothing ran.

    Raised only for refusals, never for a lost socket: once ``op.start`` was
    sent, a lost socket may have started the command. ``direct`` asks for a
    direct socket at once (``op.not_found``...: this server cannot run it
    over control); otherwise (``op.busy``) another control socket may be tried.
    """

    def __init__(self, message: str, *, direct: bool = False) -> None:
        super().__init__(message)
        self.direct = direct


class _Flag:
    """``asyncio.Event`` without its per-instance deque and loop binding.

    A session needs three of these; with hundreds of sessions alive at once
    the Event's up-front deque is most of their memory. Waiters are only
    allocated while someone waits.
    """

    __slots__ = ("_on", "_waiters")

    def __init__(self, on: bool = False) -> None:
        self._on = on
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._on

    def set(self) -> None:
        if self._on:
            return
        self._on = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._on = False

    async def wait(self) -> None:
        if self._on:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)


_NO_QUEUES: dict[int, deque[tuple[int, bytes]]] = {1: deque(maxlen=0), 2: deque(maxlen=0)}
"""Output queues of a session whose output goes to a sink: always empty."""


class OutputStream:
    """One output stream of a live session: ``async for chunk in proc.stdout``.

    Iteration ends when the command has exited and everything was read; it
    raises (e.g. :class:`ExitStatusUnknownError`) if the connection ended
    abnormally. Chunks follow the server's frames, not lines.
    """

    __slots__ = ("_id", "_session")

    def __init__(self, session: ExecSession, stream_id: int) -> None:
        self._session = session
        self._id = stream_id

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self._session._next_output(self._id)
        if data is None:
            raise StopAsyncIteration
        return data

    async def read(self) -> bytes:
        """Everything until the end of the stream."""
        return b"".join([chunk async for chunk in self])

    async def text(self, encoding: str = "utf-8", errors: str = "replace") -> str:
        """Everything until the end of the stream, decoded."""
        return (await self.read()).decode(encoding, errors)

    @property
    def dropped(self) -> int:
        """Bytes of this stream dropped unread (oldest first) while it was full.

        A stream nobody reads keeps its newest ``ExecSettings.buffer_size``
        bytes once the other stream is read or :meth:`ExecSession.wait`
        waits, so that it never blocks them; 0 for a stream that is read.
        """
        return self._session._dropped[self._id]


class _Kept:
    """One stream of a finished command: its first and last bytes within a bound.

    The first ``limit // 2`` bytes and the last ``limit - limit // 2`` are
    kept; what lies between is counted in ``dropped``. The start says what
    ran, the end why it failed (a build log's error is at its end).
    """

    __slots__ = ("dropped", "head", "head_limit", "tail", "tail_len", "tail_limit")

    def __init__(self, limit: int | None) -> None:
        self.head = bytearray()
        self.head_limit = limit // 2 if limit is not None else None
        self.tail_limit = limit - limit // 2 if limit is not None else 0
        # Chunks, not one bytearray: trimming its front would move the
        # whole tail once per frame.
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        head = self.head
        if self.head_limit is None:
            head += data
            return
        room = self.head_limit - len(head)
        if room > 0:
            head += data[:room]
            data = data[room:]
        if not data:
            return
        tail = self.tail
        tail.append(data)
        self.tail_len += len(data)
        excess = self.tail_len - self.tail_limit
        while excess > 0:
            first = tail[0]
            if len(first) <= excess:
                tail.popleft()
                cut = len(first)
            else:
                tail[0] = first[excess:]
                cut = excess
            self.tail_len -= cut
            self.dropped += cut
            excess -= cut

    def value(self) -> bytes:
        return bytes(self.head) + b"".join(self.tail)


class _Collector:
    """What ``exec()`` keeps of each stream: head and tail within ``limit`` (see _Kept)."""

    __slots__ = ("streams",)

    def __init__(self, limit: int | None) -> None:
        self.streams = {1: _Kept(limit), 2: _Kept(limit)}

    def add(self, stream: int, data: bytes) -> None:
        self.streams[stream].add(data)

    def value(self, stream: int) -> bytes:
        return self.streams[stream].value()

    def dropped(self, stream: int) -> int:
        return self.streams[stream].dropped


class ExecSession:
    """A running command: stream its output, write stdin, resize, signal, wait.

    Made by ``sprite.process(...)`` or ``sprite.sessions.attach(id)``; use it
    as ``async with ... as proc``. The socket is read from the moment it
    opens. Each output stream waits in its own buffer of
    ``ExecSettings.buffer_size`` bytes. When a stream you read is full, the
    socket is not read until you read on, so a slow reader slows the command
    instead of filling memory. A stream nobody reads never blocks the other
    one or :meth:`wait`: once either is in use, its oldest bytes are dropped
    and counted in ``proc.stderr.dropped`` (or ``proc.stdout.dropped``), and
    what is left to read is at most its newest ``buffer_size`` bytes. Before
    anything is read or waited for, full buffers hold the command back, so
    nothing is lost while you get ready to read.

    ``async for event in proc`` yields :class:`SessionInfoEvent`,
    :class:`OutputEvent`, :class:`PortEvent` and finally one
    :class:`ExitEvent`; it ends on a normal exit and raises on an abnormal
    close (:class:`ExitStatusUnknownError`). Use either the events or the
    ``stdout``/``stderr`` streams for output, not both.

    Leaving the ``async with`` block while the command still runs terminates
    it (TERM, then KILL) when ``kill_on_exit`` is true (the default of
    :meth:`Sprite.process`), or leaves it running for
    ``max_run_after_disconnect`` otherwise (see :meth:`detach`).

    Attributes:
        session_id: The server's session id (from ``session_info``), or None.
        exit_code: The exit code once known, else None.
        info: The ``session_info`` the server sent, or None.
        capabilities: From the upgrade's ``X-Sprite-Capabilities`` header.
        stdout: The stdout :class:`OutputStream` (TTY: the terminal output).
        stderr: The stderr :class:`OutputStream` (empty with a TTY).
    """

    # Slots: hundreds of sessions may be alive at once, and an instance
    # dict of ~50 attributes would be the largest part of each.
    __slots__ = (
        "__weakref__",
        "_acked",
        "_attach_id",
        "_attach_stdin",
        "_buffered",
        "_client",
        "_complete_deadline",
        "_control",
        "_dead",
        "_demand",
        "_detached",
        "_dropped",
        "_early",
        "_error",
        "_exit_given",
        "_finished",
        "_grace_deadline",
        "_held",
        "_info_seen",
        "_lease",
        "_legacy",
        "_misc",
        "_on_port",
        "_op_complete",
        "_op_failed",
        "_options",
        "_out",
        "_paused",
        "_pinger",
        "_reader",
        "_readers",
        "_request",
        "_room",
        "_rx_at",
        "_seq",
        "_settings",
        "_shut",
        "_sink",
        "_span",
        "_sprite",
        "_started",
        "_stdin_closed",
        "_text_exit",
        "_waiting",
        "_wake",
        "_watchdog",
        "_ws",
        "capabilities",
        "exit_code",
        "info",
        "kill_on_exit",
        "session_id",
        "stderr",
        "stdout",
        "tty",
    )

    def __init__(
        self,
        sprite: Sprite,
        request: ExecRequest | None,
        *,
        attach_id: str | None = None,
        attach_stdin: bool = True,
        on_port: PortCallback | None = None,
        kill_on_exit: bool = True,
        settings: ExecSettings | None = None,
        sink: Callable[[int, bytes], None] | None = None,
        options: RequestOptions | None = None,
    ) -> None:
        self._sprite = sprite
        self._options = options
        self._client = sprite.client
        self._request = request
        self._attach_id = attach_id
        self._attach_stdin = attach_stdin
        self._on_port = on_port
        self.kill_on_exit = kill_on_exit
        self._settings = settings or settings_for(sprite.client)
        self._sink = sink
        self._span: ExecSpan | None = None
        self.session_id: str | None = attach_id
        self.exit_code: int | None = None
        self.info: SessionInfoEvent | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.tty: bool | None = request.tty if request is not None else None
        self.stdout = OutputStream(self, 1)
        self.stderr = OutputStream(self, 2)
        self._legacy = False
        self._ws: WebSocket | None = None
        self._lease: ControlLease | None = None
        self._control = False
        self._acked = False
        self._op_complete: _frames.Envelope | None = None
        self._op_failed: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._rx_at = 0.0
        self._paused = False
        self._dead = False
        self._finished: asyncio.Future[None] | None = None
        self._info_seen: _Flag | None = None
        self._wake: _Flag | None = None
        self._room: _Flag | None = None
        self._error: BaseException | None = None
        self._text_exit: int | None = None
        self._grace_deadline: float | None = None
        self._complete_deadline: float | None = None
        # With a sink (``exec()``) output never queues here: share empty ones.
        self._out: dict[int, deque[tuple[int, bytes]]] = (
            {1: deque(), 2: deque()} if sink is None else _NO_QUEUES
        )
        self._misc: deque[tuple[int, ExecEvent]] = deque(maxlen=self._settings.max_port_events)
        self._early: list[bytes] = []
        self._buffered = 0
        # Per stream (index 1: stdout, 2: stderr): bytes queued, bytes dropped.
        self._held = [0, 0, 0]
        self._dropped = [0, 0, 0]
        # Streams someone has asked for (the events ask for both), and how
        # many wait() calls are pending: see _must_pause.
        self._demand: set[int] = set()
        self._waiting = 0
        self._seq = 0
        self._readers: set[int] = set()
        self._stdin_closed = False
        self._exit_given = False
        self._started = False
        self._shut = False
        self._detached = False

    def __repr__(self) -> str:
        argv = " ".join(self._request.argv) if self._request else f"attach {self._attach_id}"
        state = "exited" if self.exit_code is not None else "running" if self._started else "new"
        return f"<ExecSession {argv!r} session_id={self.session_id!r} {state}>"

    @property
    def sprite(self) -> Sprite:
        """The sprite the command runs in."""
        return self._sprite

    @property
    def returncode(self) -> int | None:
        """Alias of :attr:`exit_code` (the subprocess name)."""
        return self.exit_code

    @property
    def done(self) -> bool:
        """True once the exit status is known or the connection failed."""
        return self._is_done()

    def _is_done(self) -> bool:
        return self._finished is not None and self._finished.done()

    @property
    def via_control(self) -> bool:
        """True when the command runs over a pooled ``/control`` socket."""
        return self._control

    # ------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ExecSession:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._span is not None:
            self._span.fail(exc)
        try:
            if self._started and not self.done and self.kill_on_exit and not self._detached:
                # Nobody reads the output any more: drop it, so that a reader
                # paused on full buffers can see the exit we are about to cause.
                self._discard_output()
                await _shielded(self.terminate())
        finally:
            await self._release()

    async def start(self, *, prefer_control: bool = False) -> ExecSession:
        """Open the connection and start reading at once; return self.

        ``async with`` does this. Without it, call :meth:`terminate` and/or
        :meth:`aclose` yourself when done.
        """
        if self._started:
            raise RuntimeError("this session was already started")
        telemetry = self._client._telemetry
        if telemetry is not None and self._span is None:
            # The command's span is current while it starts: the handshake
            # (or a pooled socket's) becomes its child.
            span = self._span = telemetry.exec_span(self, "exec" if self._request else "attach")
            if self._sink is not None:
                self._sink = span.counting(self._sink)
            with span.current(self):
                return await self.start(prefer_control=prefer_control)
        self._started = True
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._info_seen = _Flag()
        self._wake = _Flag()
        self._room = _Flag(on=True)
        if self._attach_id is not None:
            await self._start_attach()
            return self
        assert self._request is not None
        # A pooled socket was opened without the caller's extra headers/query.
        if prefer_control and self._options is None:
            from ._control import pool_for

            lease = await pool_for(self._client).acquire(self._sprite.name)
            if lease is not None:
                self._lease = lease
                self._control = True
                self._begin(lease.ws)
                try:
                    await lease.ws.send_str(
                        _frames.encode_envelope(
                            "op.start", op="exec", args=self._request.control_args()
                        )
                    )
                except SOCKET_ERRORS as exc:
                    # Part of the frame may be out (a failed drain comes after
                    # the write): the command may have started.
                    self._finish(self._unknown(f"sending op.start failed: {exc}", cause=exc))
                return self
        # The handshake runs in the reader task, not in the caller: the server
        # starts the command when it accepts the upgrade, before the 101
        # reaches us, so a caller cancelled meanwhile must still get hold of
        # the socket to stop what it started (see _cancelled_in_handshake).
        opened: asyncio.Future[None] = loop.create_future()
        self._reader = asyncio.ensure_future(self._connect_and_read(opened))
        try:
            await asyncio.shield(opened)
        except asyncio.CancelledError as exc:
            if self._span is not None:
                self._span.fail(exc)
            await self._cancelled_in_handshake(opened)
            raise
        return self

    async def _connect_and_read(self, opened: asyncio.Future[None]) -> None:
        assert self._request is not None
        try:
            ws, headers = await self._client._ws_connect(
                self._sprite.path + "/exec",
                operation="exec",
                sprite=self._sprite.name,
                params=self._request.query(),
                autoping=False,
                options=self._options,
            )
        except BaseException as exc:
            started = (
                _start_error_of(exc, self._request, self._sprite.name)
                if isinstance(exc, APIError)
                else None
            )
            if started is not None:
                started.__cause__ = exc
                exc = started
            if not opened.done():
                opened.set_exception(exc)
                opened.exception()  # start() re-raises it; never "not retrieved"
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._set_capabilities(headers)
        self._ws = ws
        if not opened.done():
            opened.set_result(None)
        await self._read_loop(ws)

    async def _cancelled_in_handshake(self, opened: asyncio.Future[None]) -> None:
        """Stop a command whose ``/exec`` handshake was cancelled midway.

        The server starts the command when it accepts the upgrade, before the
        101 reaches us: dropping the handshake would leave it running unseen
        (for ``max_run_after_disconnect``). Give the handshake up to
        ``kill_grace`` more seconds, then terminate what it started, as for
        any cancellation; callers (``__aenter__`` too) re-raise afterwards.
        """
        reader = self._reader
        assert reader is not None
        if not opened.done():
            await asyncio.wait({opened}, timeout=self._settings.kill_grace)
        if not opened.done() or opened.cancelled() or opened.exception() is not None:
            # Never opened, or not in time: give up on it; a socket that
            # still opens after this is closed by _close_late_ws.
            reader.cancel()
            reader.add_done_callback(functools.partial(_close_late_ws, self))
            return
        await _shielded(self.terminate())
        await _shielded(self.aclose())

    async def _start_attach(self) -> None:
        client = self._client
        name = self._sprite.name
        sid = self._attach_id or ""
        params = [("stdin", "true" if self._attach_stdin else "false")]
        legacy = _legacy_attach.get(client, set())
        ws: WebSocket | None = None
        if name not in legacy:
            try:
                ws, headers = await client._ws_connect(
                    self._sprite.path + "/exec/" + quote_segment(sid),
                    operation="attach",
                    sprite=name,
                    params=params,
                    autoping=False,
                    options=self._options,
                )
            except NotFoundError:
                ws = None
        if ws is None:
            ws, headers = await client._ws_connect(
                self._sprite.path + "/exec",
                operation="attach",
                sprite=name,
                params=[("id", sid), *params],
                autoping=False,
                options=self._options,
            )
            self._legacy = True
            _legacy_attach.setdefault(client, set()).add(name)
        self._set_capabilities(headers)
        self._begin(ws)
        assert self._info_seen is not None
        assert self._finished is not None
        waiter = asyncio.ensure_future(self._info_seen.wait())
        waiting: set[asyncio.Future[Any]] = {waiter, self._finished}
        try:
            await asyncio.wait(
                waiting,
                timeout=self._settings.session_info_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            await _shielded(self.aclose())
            raise
        finally:
            waiter.cancel()
        if self.info is None:
            error = self._error
            await _shielded(self.aclose())
            if error is not None:
                raise error
            raise SpritesTimeoutError(
                f"no session_info within {self._settings.session_info_timeout} s of attaching",
                operation="attach",
                sprite=name,
            )

    def _set_capabilities(self, headers: Mapping[str, str]) -> None:
        raw = headers.get("X-Sprite-Capabilities", "")
        self.capabilities = frozenset(c.strip().lower() for c in raw.split(",") if c.strip())

    def _begin(self, ws: WebSocket) -> None:
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read_loop(ws))

    async def aclose(self) -> None:
        """Close the connection (the command is not signalled). Idempotent."""
        if self._shut:
            return
        self._shut = True
        self._stop_ticking()
        reader, pinger = self._reader, self._pinger
        if reader is not None and not reader.done() and self.done:
            # The exit is known and the reader is closing the socket: let it.
            await asyncio.wait({reader}, timeout=self._settings.close_timeout + 0.5)
        for task in (pinger, reader):
            if task is not None and not task.done():
                task.cancel()
        for task in (pinger, reader):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # the reader reports through _finish
                    logger.debug("exec reader ended with an error", exc_info=True)
        if not self.done:
            self._finish(
                ExitStatusUnknownError(
                    "the connection was closed before the command exited",
                    session_id=self.session_id,
                    sprite=self._sprite.name,
                )
            )
        lease, self._lease = self._lease, None
        if lease is not None:
            reusable = (
                self._op_complete is not None
                and self._op_failed is None
                and not lease.ws.closed
                and reader is not None
                and reader.done()
                and not reader.cancelled()
            )
            lease.release(reusable=reusable)
        elif self._ws is not None:
            await close_now(self._ws, self._settings.close_timeout)

    def _close_is_instant(self) -> bool:
        # aclose() cannot suspend when the reader and pinger are done and the
        # socket is closed or pooled: then no cancellation can cut it short.
        for task in (self._reader, self._pinger):
            if task is not None and not task.done():
                return False
        return self._lease is not None or self._ws is None or self._ws.closed

    async def _release(self) -> None:
        # The shield costs a task (and loop turns) per command: skip it when
        # there is nothing left that a cancellation could interrupt.
        if self._close_is_instant():
            await self.aclose()
        else:
            await _shielded(self.aclose())

    async def detach(self) -> str | None:
        """Close the connection and leave the command running; return its session id.

        It keeps running for ``max_run_after_disconnect`` (TTY default:
        forever; non-TTY default: 10 s) and can be re-attached with
        ``sprite.sessions.attach(session_id)``.
        """
        self._detached = True
        if self._started and not self._shut:
            await self._session_id_soon()
        await self.aclose()
        return self.session_id

    # ---------------------------------------------------------------------- reading

    def _tick(self) -> None:
        # Pings and the dead-peer check share one timer per session, re-armed
        # from the last frame's time: most commands end before it ever fires,
        # and a timeout around every receive (or a timer each) costs more.
        self._watchdog = None
        reader, ws = self._reader, self._ws
        if reader is None or reader.done() or self._shut or ws is None or ws.closed:
            return
        settings = self._settings
        loop = asyncio.get_running_loop()
        idle = 0.0 if self._paused else loop.time() - self._rx_at
        dead_after = settings.dead_after
        if dead_after is not None and idle >= dead_after:
            self._dead = True
            reader.cancel()
            return
        if settings.ping_interval and (self._pinger is None or self._pinger.done()):
            self._pinger = asyncio.ensure_future(_ping(ws))
        self._arm_tick(idle)

    def _arm_tick(self, idle: float) -> None:
        settings = self._settings
        delay = settings.ping_interval or None
        if settings.dead_after is not None:
            left = settings.dead_after - idle
            delay = left if delay is None else min(delay, left)
        if delay is not None:
            self._watchdog = asyncio.get_running_loop().call_later(delay, self._tick)

    def _stop_ticking(self) -> None:
        timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.cancel()

    async def _read_loop(self, ws: WebSocket) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        assert self._room is not None
        closed_by_peer = False
        self._rx_at = loop.time()
        self._arm_tick(0.0)
        try:
            while not self._reading_done():
                if self._sink is None and self._must_pause():
                    # Not reading on purpose: the watchdog must not call that dead.
                    self._paused = True
                    self._room.clear()
                    await self._room.wait()
                    self._paused = False
                    self._rx_at = loop.time()
                    continue
                deadline = _earliest(self._grace_deadline, self._complete_deadline)
                timeout = None
                if deadline is not None:
                    timeout = max(deadline - loop.time(), 0.001)
                try:
                    msg = await ws.receive(timeout=timeout)
                    self._rx_at = loop.time()
                except asyncio.TimeoutError:
                    now = loop.time()
                    if self._grace_deadline is not None and now >= self._grace_deadline:
                        self._settle_from_text()
                        continue
                    if self._complete_deadline is not None and now >= self._complete_deadline:
                        break  # exit known; op.complete never came (socket not reused)
                    continue  # woke up early: loop.time() rounding
                kind = msg.type
                if kind is WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif kind is WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif kind is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    pass
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    closed_by_peer = True
                    break
        except asyncio.CancelledError:
            if not self._dead:
                raise
            # Cancelled by our own watchdog: a dead connection, not a caller's cancel.
            task = asyncio.current_task()
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            dead = SpritesTimeoutError(
                f"no data and no pong for {settings.dead_after} s: connection is dead",
                operation="exec",
                sprite=self._sprite.name,
            )
            self._finish(self._unknown(f"the connection failed: {dead}", cause=dead))
            return
        except Exception as exc:
            self._finish(self._unknown(f"the connection failed: {exc}", cause=exc))
            return
        finally:
            self._stop_ticking()
        if self._text_exit is not None and self.exit_code is None:
            self._settle_from_text()
        if self.exit_code is not None:
            self._finish(None)
        elif self._op_complete is not None:
            self._finish_from_complete()
        else:
            how = f"closed (code {ws.close_code})" if closed_by_peer else "ended"
            self._finish(self._unknown(f"the connection {how} before the exit status arrived"))
        if not self._control and not ws.closed:
            # The server lingers ~5 s after the exit, or (pkg/wsexec) never
            # answers a close: say goodbye and go.
            await close_now(ws, settings.close_timeout)

    def _reading_done(self) -> bool:
        if self._finished is not None and self._finished.done():
            return True
        if self._control:
            return self._op_complete is not None
        return self.exit_code is not None

    def _unknown(self, message: str, cause: BaseException | None = None) -> BaseException:
        # Also over control before op.ack/session_info: the op.start was sent,
        # so the command may be running. Never a retry (at most once).
        err = ExitStatusUnknownError(message, session_id=self.session_id, sprite=self._sprite.name)
        err.__cause__ = cause
        return err

    def _on_binary(self, data: bytes) -> None:
        if self.tty is None:  # attached, session_info not seen yet: framing unknown
            self._early.append(data)
            self._buffered += len(data)
            return
        if self.tty:
            if data:
                self._emit(1, data)
            return
        frame = _frames.parse_frame(data)
        if frame is None:
            return
        stream, payload = frame
        if stream == _frames.EXIT:
            code = _frames.exit_code_from_payload(payload)
            if code is not None:
                self._set_exit(code)
        elif payload:
            self._emit(stream, payload)

    def _on_text(self, text: str) -> None:
        if self._control:
            env = _frames.decode_envelope(text)
            if env is not None:
                self._on_envelope(env)
                return
        msg = _frames.decode_message(text)
        if isinstance(msg, _frames.SessionInfoMessage):
            self._on_session_info(msg)
        elif isinstance(msg, _frames.ExitMessage):
            code = msg.value
            if code is None or self.exit_code is not None:
                return
            self._text_exit = code
            if self.tty:
                self._set_exit(code)
            elif self._grace_deadline is None:
                loop = asyncio.get_running_loop()
                self._grace_deadline = loop.time() + self._settings.exit_grace
        elif isinstance(msg, _frames.PortMessage):
            event = PortEvent(
                opened=isinstance(msg, _frames.PortOpenedMessage),
                port=msg.port,
                address=msg.address,
                pid=msg.pid,
            )
            self._push_misc(event)
            if self._on_port is not None:
                try:
                    outcome = self._on_port(event)
                    if asyncio.iscoroutine(outcome):
                        _background(outcome)
                except Exception:
                    logger.exception("on_port callback failed")

    def _on_session_info(self, msg: _frames.SessionInfoMessage) -> None:
        sid = None if msg.session_id is None else str(msg.session_id)
        if sid is not None:
            self.session_id = sid
        if self.tty is None:
            # Old servers did not report the flag; the legacy attach form is TTY.
            self.tty = msg.tty if msg.tty is not None else self._legacy
        info = SessionInfoEvent(
            session_id=sid,
            command=msg.command,
            created=msg.created,
            tty=bool(msg.tty) if msg.tty is not None else bool(self.tty),
            is_owner=msg.is_owner,
        )
        if self.info is None:
            self.info = info
            assert self._info_seen is not None
            self._info_seen.set()
        self._push_misc(info)
        early, self._early = self._early, []
        for data in early:
            self._buffered -= len(data)
            self._on_binary(data)

    def _on_envelope(self, env: _frames.Envelope) -> None:
        if env.type == "op.ack":
            self._acked = True
        elif env.type == "op.complete":
            self._op_complete = env
            if env.args.get("ok") is False:
                self._op_failed = env.error_text
        elif env.type == "op.error":
            code = env.args.get("code")
            if not self._acked and self.info is None and code != "op.not_active":
                self._finish(
                    _RetryDirect(f"control op refused: {env.error_text}", direct=code != "op.busy")
                )
            else:
                logger.debug("ignoring stray control op.error: %s", env.error_text)

    def _finish_from_complete(self) -> None:
        env = self._op_complete
        assert env is not None
        if self._op_failed is not None:
            # Even without session_info this is no proof that nothing ran
            # (pkg/wsexec-like handlers send none): report it, never re-run.
            # A start error's text with no exit status seen is the server
            # saying it could not start the command (Section 3.8).
            request = self._request
            started = None
            if self.exit_code is None and request is not None and self._attach_id is None:
                started = command_start_error(
                    self._op_failed,
                    prefixed=False,
                    argv=request.argv,
                    cwd=request.cwd,
                    sprite=self._sprite.name,
                )
            self._finish(started or ExecError(f"the command failed: {self._op_failed}"))
            return
        code = env.args.get("exitCode")
        if isinstance(code, int) and not isinstance(code, bool):
            self.exit_code = code
            self._finish(None)
            return
        self._finish(self._unknown("the operation completed without an exit status"))

    def _settle_from_text(self) -> None:
        if self.exit_code is None and self._text_exit is not None:
            self._set_exit(self._text_exit)
        self._grace_deadline = None

    def _set_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._grace_deadline = None
        if self._control and self._op_complete is None and self._complete_deadline is None:
            loop = asyncio.get_running_loop()
            self._complete_deadline = loop.time() + self._settings.op_complete_timeout
        if not self._control:
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        fut = self._finished
        if fut is None or fut.done():
            return
        if error is None and self.exit_code is None:
            error = self._unknown("no exit status")
        self._error = error
        if self._span is not None:
            self._span.end(self, error)
        fut.set_result(None)
        if self._wake is not None:
            self._wake.set()

    def _emit(self, stream: int, data: bytes) -> None:
        if self._sink is not None:
            self._sink(stream, data)
            return
        self._seq += 1
        self._out[stream].append((self._seq, data))
        self._held[stream] += len(data)
        self._buffered += len(data)
        assert self._wake is not None
        self._wake.set()

    def _discard_output(self) -> None:
        self._sink = _drop_output
        for queue in self._out.values():
            queue.clear()
        self._buffered = 0
        self._held = [0, 0, 0]
        if self._room is not None:
            self._room.set()

    def _push_misc(self, event: ExecEvent) -> None:
        self._seq += 1
        self._misc.append((self._seq, event))
        if self._wake is not None:
            self._wake.set()

    def _consumed(self, stream: int, n: int) -> None:
        self._held[stream] -= n
        self._buffered -= n
        if self._room is not None and self._held[stream] < self._settings.buffer_size // 2:
            self._room.set()

    def _must_pause(self) -> bool:
        """Whether the reader must stop reading the socket until output is read.

        Each stream has its own bound (``buffer_size``). A full stream that
        someone reads holds the socket back (backpressure: the command slows
        down). A full stream that nobody reads while the other one is read
        (or :meth:`wait` is waiting) must not block it: its oldest bytes are
        dropped and counted in ``OutputStream.dropped``. Before anyone reads
        anything, a full stream holds the socket back, so that nothing is
        lost before the caller starts reading.
        """
        size = self._settings.buffer_size
        held = self._held
        if self._buffered - held[1] - held[2] >= size:  # attach: framing not known yet
            return True
        interest = bool(self._demand) or self._waiting > 0
        for stream in (1, 2):
            if held[stream] < size:
                continue
            if stream in self._demand or not interest:
                return True
            self._drop_oldest(stream)
        return False

    def _drop_oldest(self, stream: int) -> None:
        queue = self._out[stream]
        size = self._settings.buffer_size
        dropped = 0
        while queue and self._held[stream] >= size:
            _, data = queue.popleft()
            self._held[stream] -= len(data)
            dropped += len(data)
        self._buffered -= dropped
        if dropped and not self._dropped[stream]:
            what = "stdout" if stream == 1 else "stderr"
            logger.debug("%r: nobody reads %s; dropping its oldest output", self, what)
        self._dropped[stream] += dropped

    def _want(self, *streams: int) -> None:
        # Someone reads these streams now: the reader may have paused on a
        # full stream that it can now drop from instead (see _must_pause).
        if not self._demand.issuperset(streams):
            self._demand.update(streams)
            if self._room is not None:
                self._room.set()

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the session is not started: use 'async with sprite.process(...)'")

    async def _wait_wake(self) -> None:
        assert self._wake is not None
        self._wake.clear()
        await self._wake.wait()

    def _claim(self, reader: int) -> None:
        # Two coroutines reading one stream would each get a random half of it.
        if reader in self._readers:
            what = {0: "the events", 1: "stdout", 2: "stderr"}[reader]
            raise RuntimeError(f"another coroutine is already reading {what} of this session")
        self._readers.add(reader)

    async def _next_output(self, stream: int) -> bytes | None:
        self._check_started()
        self._claim(stream)
        self._want(stream)
        try:
            queue = self._out[stream]
            while not queue:
                if self.done:
                    if self._error is not None and not isinstance(self._error, _RetryDirect):
                        raise self._error
                    return None
                await self._wait_wake()
            _, data = queue.popleft()
            self._consumed(stream, len(data))
            return data
        finally:
            self._readers.discard(stream)

    def __aiter__(self) -> _EventIterator:
        self._check_started()
        return _EventIterator(self)

    async def _next_event(self) -> ExecEvent | None:
        self._claim(0)
        self._want(1, 2)
        try:
            return await self._next_event_unguarded()
        finally:
            self._readers.discard(0)

    async def _next_event_unguarded(self) -> ExecEvent | None:
        while True:
            best: deque[tuple[int, Any]] | None = None
            for queue in (self._out[1], self._out[2], self._misc):
                if queue and (best is None or queue[0][0] < best[0][0]):
                    best = queue
            if best is not None:
                _, item = best.popleft()
                if best is self._out[1] or best is self._out[2]:
                    stream = 1 if best is self._out[1] else 2
                    self._consumed(stream, len(item))
                    name: Literal["stdout", "stderr"] = "stdout" if stream == 1 else "stderr"
                    return OutputEvent(stream=name, data=item)
                event: ExecEvent = item
                return event
            if self.done:
                if self._error is not None:
                    raise self._error
                if not self._exit_given and self.exit_code is not None:
                    self._exit_given = True
                    return ExitEvent(exit_code=self.exit_code)
                return None
            await self._wait_wake()

    # ---------------------------------------------------------------------- control

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; return the exit code.

        Raises:
            ExitStatusUnknownError: The connection ended first.
            TimeoutError: ``timeout`` passed (the command is not signalled).
        """
        self._check_started()
        assert self._finished is not None
        if not self._finished.done():
            # Nobody may be reading the output: while we wait, full streams
            # drop their oldest bytes instead of blocking the exit.
            self._waiting += 1
            if self._room is not None:
                self._room.set()
            try:
                done, _ = await asyncio.wait({self._finished}, timeout=timeout)
            finally:
                self._waiting -= 1
            if not done:
                raise TimeoutError(f"the command did not exit within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self.exit_code is not None
        return self.exit_code

    async def _wait_done(self, timeout: float | None) -> bool:
        assert self._finished is not None
        if not self._finished.done():
            await asyncio.wait({self._finished}, timeout=timeout)
        return self._finished.done()

    def _open_ws(self) -> WebSocket:
        self._check_started()
        ws = self._ws
        if ws is None or ws.closed or self._shut or (self.done and self._error is not None):
            error = SpritesConnectionError(
                "the exec connection is closed", operation="exec", sprite=self._sprite.name
            )
            error.__cause__ = self._error
            raise error
        return ws

    async def _send(self, frame: str | bytes, what: str) -> None:
        """Send one frame; a socket closed or closing under us raises a typed error."""
        ws = self._open_ws()
        try:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
        except (OSError, RuntimeError) as exc:
            # The client closed (or the peer dropped) the socket meanwhile:
            # aiohttp raises "Cannot write to closing transport".
            raise SpritesConnectionError(
                f"sending {what} failed: {exc}", operation="exec", sprite=self._sprite.name
            ) from exc

    async def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Send bytes to the command's stdin (a str is UTF-8 encoded).

        Waits while the socket's send buffer is full. Raises
        :class:`BrokenPipeError` once the command has exited or stdin was
        closed, and :class:`SpritesConnectionError` once the connection is
        gone (lost, or its client closed).
        """
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes or str, not {type(data).__name__}")
        self._check_started()
        if self._stdin_closed or (self.done and self._error is None):
            raise BrokenPipeError("stdin is closed (the command exited or close_stdin was called)")
        view = memoryview(bytes(data))
        step = self._settings.stdin_chunk
        for i in range(0, len(view), step):
            piece = bytes(view[i : i + step])
            await self._send(piece if self.tty else _frames.stdin_frame(piece), "stdin")

    async def close_stdin(self) -> None:
        """Signal end of input (non-TTY: the ``04`` frame). Idempotent.

        With a TTY this does nothing: ``0x04`` is Ctrl-D there, never an EOF
        marker; write ``b"\\x04"`` yourself if the program wants Ctrl-D.
        """
        if self._stdin_closed or self.tty:
            return
        self._stdin_closed = True
        if self.done:
            return
        await self._send(_frames.EOF_FRAME, "the end of stdin")

    async def resize(self, cols: int, rows: int) -> None:
        """Set the terminal size (TTY sessions; ignored by the server otherwise)."""
        msg = _frames.resize_message(check_size(cols, "cols"), check_size(rows, "rows"))
        await self._send(msg, "a resize")

    async def signal(self, sig: str | int) -> None:
        """Send a signal (``"TERM"``, ``"SIGINT"``, ``9`` ...) to the command.

        In-band when the server advertised the ``signal`` capability, else
        through ``POST .../exec/{id}/kill`` with no escalation. Does nothing
        once the command has exited.
        """
        name = signal_name(sig)
        self._check_started()
        if self.done:
            return
        if "signal" in self.capabilities and not self._control and not self._shut:
            await self._send(_frames.signal_message(name), f"signal {name}")
            return
        sid = await self._session_id_soon()
        if sid is None:
            raise ProtocolError("cannot signal: the server has not reported a session id")
        await ExecSessions(self._sprite).kill(sid, signal=name, timeout=0)

    async def kill(self) -> None:
        """Send KILL."""
        await self.signal("KILL")

    async def terminate(self, grace: float | None = None) -> int | None:
        """TERM, then KILL after ``grace`` seconds; wait briefly for the exit.

        Returns the exit code, or None if it did not arrive. Errors while
        signalling are logged, not raised: this is cleanup.
        """
        self._check_started()
        settings = self._settings
        grace = settings.kill_grace if grace is None else grace
        if self.done:
            return self.exit_code
        if self._ws is None:
            return None  # never connected: nothing to signal through
        try:
            if "signal" in self.capabilities and not self._control and not self._shut:
                await self._send(_frames.signal_message("TERM"), "signal TERM")
                if not await self._wait_done(grace):
                    await self._send(_frames.signal_message("KILL"), "signal KILL")
                    await self._wait_done(settings.kill_wait)
            else:
                sid = await self._session_id_soon()
                if sid is None:
                    logger.warning("cannot terminate %r: no session id was reported", self)
                    return None
                stream = ExecSessions(self._sprite).kill(sid, signal="TERM", timeout=grace)
                done, _ = await asyncio.wait(
                    {asyncio.ensure_future(_consume(stream))},
                    timeout=grace + settings.kill_wait + settings.close_timeout,
                )
                if not done:
                    await stream.aclose()
                await self._wait_done(settings.kill_wait)
        except SpritesError as exc:  # also ClientClosedError: the app is shutting down
            logger.warning("could not terminate %r: %s", self, exc)
        return self.exit_code if self._is_done() else None

    async def _session_id_soon(self) -> str | None:
        if self.session_id is None and self._info_seen is not None:
            waiter = asyncio.ensure_future(self._info_seen.wait())
            assert self._finished is not None
            waiting: set[asyncio.Future[Any]] = {waiter, self._finished}
            try:
                await asyncio.wait(
                    waiting,
                    timeout=self._settings.session_info_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
        return self.session_id

    async def _feed(self, stdin: Stdin) -> None:
        """Write all of ``stdin`` then close it.

        Errors of the user's iterable propagate. Errors of the socket end the
        feeding quietly: the reader reports what became of the command.
        """
        data = _stdin_bytes(stdin)
        if data is not None:
            if data and not await self._send_stdin(data):
                return
        elif stdin is not None:
            assert isinstance(stdin, AsyncIterable)
            async for item in stdin:
                chunk: object = item
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"stdin iterables must yield bytes, not {type(chunk).__name__}")
                if not await self._send_stdin(chunk):
                    return
        await self._send_stdin(None)

    async def _send_stdin(self, data: bytes | bytearray | memoryview | None) -> bool:
        try:
            if data is None:
                await self.close_stdin()
            else:
                await self.write(data)
        except (BrokenPipeError, SpritesConnectionError) as exc:
            logger.debug("stopped sending stdin: %s", exc)
            return False
        return True


class _EventIterator:
    __slots__ = ("_session",)

    def __init__(self, session: ExecSession) -> None:
        self._session = session

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> ExecEvent:
        event = await self._session._next_event()
        if event is None:
            raise StopAsyncIteration
        return event


_legacy_attach: weakref.WeakKeyDictionary[SpritesClient, set[str]] = weakref.WeakKeyDictionary()
_background_tasks: set[asyncio.Task[Any]] = set()


def _background(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


def _drop_output(stream: int, data: bytes) -> None:
    return None


def _close_late_ws(session: ExecSession, reader: asyncio.Future[None]) -> None:
    """A handshake given up on that completed anyway: close its socket."""
    ws = session._ws
    if ws is not None and not ws.closed:
        _background(close_now(ws, session._settings.close_timeout))


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


async def _ping(ws: WebSocket) -> None:
    try:
        await ws.ping()
    except SOCKET_ERRORS:
        pass  # the reader sees the broken connection and reports it


async def _shielded(coro: Any) -> Any:
    """Run cleanup to its end even if the caller is cancelled meanwhile.

    The cleanup is bounded by its own timeouts; a cancellation that arrives
    meanwhile is re-raised once it is done.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # ours, not the task's: shield() never cancels it
            if task.done():
                if task.cancelled():
                    raise
                result = task.result()
                break
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
    return result


async def _consume(stream: NDJSONStream[Any, Any]) -> None:
    await stream


# ----------------------------------------------------------------------- one-shot


async def run(
    sprite: Sprite,
    argv: Sequence[object],
    *,
    env: Mapping[str, str] | None = None,
    env_replace: bool = False,
    cwd: str | None = None,
    stdin: Stdin = None,
    timeout: float | None = None,
    check: bool = False,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    tty: bool = False,
    on_port: PortCallback | None = None,
    control: bool | None = None,
    options: RequestOptions | None = None,
) -> ExecResult:
    """Run a command to completion (``sprite.exec``); see :meth:`Sprite.exec`."""
    request = ExecRequest.build(
        argv, env=env, env_replace=env_replace, cwd=cwd, tty=tty, stdin=stdin is not None
    )
    check_stdin(stdin)
    limit = check_max_output(max_output)
    seconds = check_timeout(timeout)
    from ._config import control_enabled

    # Stdin and TTY use a direct socket, where stdin framing is documented
    # (Section 5.4); everything else may borrow a pooled control socket.
    use_control = (
        stdin is None
        and not tty
        and options is None
        and (control if control is not None else control_enabled(sprite.client))
    )
    for attempt in range(3):
        collector = _Collector(limit)
        proc = ExecSession(sprite, request, on_port=on_port, sink=collector.add, options=options)
        try:
            await _run_one(proc, stdin, seconds, prefer_control=use_control)
        except _RetryDirect as exc:
            # Refused by op.error: it never ran, so another try is safe.
            logger.debug("control exec refused (%s); retrying", exc)
            if exc.direct or attempt >= 1:
                use_control = False
            continue
        except ExitStatusUnknownError as exc:
            # The output that did arrive belongs to the caller.
            exc.stdout = bytes(collector.value(1))
            exc.stderr = bytes(collector.value(2))
            raise
        assert proc.exit_code is not None
        result = ExecResult(
            exit_code=proc.exit_code,
            stdout=bytes(collector.value(1)),
            stderr=bytes(collector.value(2)),
            stdout_dropped=collector.dropped(1),
            stderr_dropped=collector.dropped(2),
            session_id=proc.session_id,
            argv=request.argv,
        )
        if check:
            result.check()
        return result
    raise AssertionError("unreachable")  # pragma: no cover


async def _run_one(
    proc: ExecSession, stdin: Stdin, timeout: float | None, *, prefer_control: bool
) -> None:
    feeder: asyncio.Task[None] | None = None
    try:
        await proc.start(prefer_control=prefer_control)
        assert proc._finished is not None
        if stdin is not None:
            feeder = asyncio.ensure_future(proc._feed(stdin))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Wait for the reader rather than for the exit alone: it ends once it
        # has closed the socket (or seen op.complete), so the cleanup below
        # finds nothing left to wait for and needs no task of its own.
        until: asyncio.Future[Any] = proc._reader if proc._reader is not None else proc._finished
        waiting: set[asyncio.Future[Any]] = {until}
        if feeder is not None:
            waiting.add(feeder)
        while not until.done():
            left = None if deadline is None else max(deadline - loop.time(), 0)
            done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if feeder is not None and feeder in done:
                waiting.discard(feeder)
                error = feeder.exception()
                if error is not None:
                    await _shielded(proc.terminate())
                    raise error
            if not done:
                if proc._finished.done():
                    break  # it exited in time; only the socket's close is slow
                assert timeout is not None
                timed_out = CommandTimeoutError(
                    f"the command did not finish within {timeout} s and was terminated",
                    session_id=proc.session_id,
                    timeout=timeout,
                )
                if proc._span is not None:
                    proc._span.fail(timed_out)
                await _shielded(proc.terminate())
                raise timed_out
    except asyncio.CancelledError as exc:
        if proc._span is not None:
            proc._span.fail(exc)
        await _shielded(proc.terminate())
        raise
    finally:
        if feeder is not None and not feeder.done():
            feeder.cancel()
            try:
                await feeder
            except BaseException:
                pass
        await proc._release()
    if proc._error is not None:
        raise proc._error


# ---------------------------------------------------------------------- HTTP exec


async def run_http(
    sprite: Sprite,
    argv: Sequence[object],
    *,
    stdin: Stdin = None,
    env: Mapping[str, str] | None = None,
    env_replace: bool = False,
    cwd: str | None = None,
    check: bool = False,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    options: RequestOptions | None = None,
) -> ExecResult:
    """Run a command with ``POST /exec``; see :meth:`Sprite.run_http`."""
    request = ExecRequest.build(
        argv, env=env, env_replace=env_replace, cwd=cwd, stdin=stdin is not None
    )
    check_stdin(stdin)
    limit = check_max_output(max_output)
    body: Any = None
    if stdin is not None:
        data = _stdin_bytes(stdin)
        body = data if data is not None else stdin
    client = sprite.client
    path = sprite.path + "/exec"
    parser = _frames.HttpExecParser()
    collector = _Collector(limit)
    try:
        return await _run_http_stream(
            client, path, request, body, parser, collector, check, options, sprite
        )
    except APIError as exc:
        started = _start_error_of(exc, request, sprite.name, "exec (http)")
        if started is None:
            raise
        raise started from exc


async def _run_http_stream(
    client: SpritesClient,
    path: str,
    request: ExecRequest,
    body: Any,
    parser: _frames.HttpExecParser,
    collector: _Collector,
    check: bool,
    options: RequestOptions | None,
    sprite: Sprite,
) -> ExecResult:
    from ._session import _TRANSPORT_ERRORS, _translate

    async with client._stream(
        "POST",
        path,
        operation="exec (http)",
        sprite=sprite.name,
        params=request.query(http=True),
        data=body,
        content_type="application/octet-stream" if body is not None else None,
        idempotent=False,
        options=options,
    ) as resp:
        pending = bytearray()
        try:
            async for data, end_of_chunk in resp.content.iter_chunks():
                pending += data
                if end_of_chunk and pending:
                    for stream, piece in parser.feed(bytes(pending)):
                        collector.add(stream, piece)
                    pending.clear()
        except _TRANSPORT_ERRORS as exc:
            raise _translate(exc, "POST", path, "exec (http)", sprite.name) from exc
        if pending:
            for stream, piece in parser.feed(bytes(pending)):
                collector.add(stream, piece)
    code, rest = parser.finish()
    for stream, piece in rest:
        collector.add(stream, piece)
    if code is None:
        raise ExitStatusUnknownError(
            "the HTTP exec response ended without an exit frame", sprite=sprite.name
        )
    result = ExecResult(
        exit_code=code,
        stdout=bytes(collector.value(1)),
        stderr=bytes(collector.value(2)),
        stdout_dropped=collector.dropped(1),
        stderr_dropped=collector.dropped(2),
        argv=request.argv,
    )
    if check:
        result.check()
    return result


def _start_error_of(
    exc: APIError, request: ExecRequest | None, sprite: str, operation: str = "exec"
) -> CommandStartError | None:
    """The :class:`CommandStartError` a 500 ``failed to start process`` means, if it is one."""
    if request is None or exc.status_code != 500:
        return None
    return command_start_error(
        exc.message,
        prefixed=True,
        argv=request.argv,
        cwd=request.cwd,
        status_code=exc.status_code,
        headers=exc.headers,
        operation=operation,
        sprite=sprite,
    )


# ----------------------------------------------------------------------- sessions


class _WireSession(msgspec.Struct, kw_only=True):
    id: str | int | None = None
    session_id: str | int | None = None
    command: str = ""
    workdir: str | None = None
    created: str | int | float | None = None
    tty: bool = False
    bytes_per_second: float = 0.0
    is_active: bool = False
    last_activity: str | None = None


class _WireSessionList(msgspec.Struct, kw_only=True):
    sessions: list[msgspec.Raw] | None = None
    count: int | None = None
    error: str | None = None


_session_list_decoder = JSONDecoder(msgspec.json.Decoder(_WireSessionList))
_session_decoder = JSONDecoder(msgspec.json.Decoder(_WireSession))


class ExecSessionInfo(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One entry of ``sprite.sessions.list()``.

    Attributes:
        id: The session id (the PID, as a string; PIDs are recycled).
        command: The resolved executable and its arguments, joined by spaces.
        workdir: The working directory.
        created: When it started (RFC 3339 text, as sent).
        tty: Whether it has a terminal.
        bytes_per_second: Recent output rate.
        is_active: The server's "recent activity" flag (unreliable).
        last_activity: RFC 3339 text, when sent.
    """

    id: str
    command: str = ""
    workdir: str | None = None
    created: str | None = None
    tty: bool = False
    bytes_per_second: float = 0.0
    is_active: bool = False
    last_activity: str | None = None

    @property
    def raw(self) -> dict[str, Any]:
        """The list entry's JSON object as received (``{}`` if built locally)."""
        return raw_of(self, self.id)


def _session_entry(entry: msgspec.Raw | object, where: str) -> ExecSessionInfo:
    """One session of the list: typed decode, else field by field; it must have an id."""
    if isinstance(entry, msgspec.Raw):
        try:
            wire = _session_decoder.decode(entry)
        except msgspec.ValidationError:
            entry = decode_any(entry)
            wire = salvage(entry, _WireSession, where)
    else:
        wire = salvage(entry, _WireSession, where)
    sid = wire.id if wire.id is not None else wire.session_id
    if sid is None or sid == "":
        raise UnreadableEntry(f"{where}: the session has no readable `id`")
    created = wire.created
    info = ExecSessionInfo(
        id=str(sid),
        command=wire.command,
        workdir=wire.workdir,
        created=None if created is None else str(created),
        tty=wire.tty,
        bytes_per_second=wire.bytes_per_second,
        is_active=wire.is_active,
        last_activity=wire.last_activity,
    )
    attach_raw(info, entry)
    return info


def _decode_sessions(data: bytes) -> tuple[list[ExecSessionInfo], str | None]:
    """The sessions of a list answer and its ``error`` text (section 4.1).

    Nothing is dropped: an entry without a readable id makes the whole
    answer unreadable (``UnreadableEntry``, naming the entry).
    """
    entries: list[Any]
    try:
        page = _session_list_decoder.decode(data)
        entries, error = list(page.sessions or ()), page.error
    except msgspec.ValidationError:
        obj = decode_any(data)
        if not isinstance(obj, dict):
            raise
        found = obj.get("sessions")
        if found is not None and not isinstance(found, list):
            raise UnreadableEntry(
                f"sessions: expected an array, got {type(found).__name__}"
            ) from None
        entries = found or []
        error = _frames.as_text(obj.get("error")) if obj.get("error") else None
    out = [_session_entry(entry, f"sessions[{i}]") for i, entry in enumerate(entries)]
    return out, error


class KillEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a kill stream.

    ``type`` is ``signal``, ``timeout``, ``killed``, ``exited``, ``error`` or
    ``complete`` (which carries ``exit_code``); unknown types are passed on.
    ``message`` is the event's text, whether the server spelt its key
    ``message``, ``data`` or ``error`` (section 4.4).
    """

    type: str
    message: str = ""
    signal: str | None = None
    pid: int | None = None
    exit_code: int | None = None


class _WireKill(msgspec.Struct, kw_only=True):
    type: str
    message: str | None = None
    data: str | None = None
    error: str | None = None
    signal: str | None = None
    pid: int | None = None
    exit_code: int | None = None


_kill_typed = JSONDecoder(msgspec.json.Decoder(_WireKill))


def _decode_kill(line: bytes) -> KillEvent:
    """One kill event; odd fields are read liberally, a line without ``type`` is skipped."""
    try:
        wire = _kill_typed.decode(line)
    except msgspec.ValidationError:
        wire = salvage(decode_any(line), _WireKill, "kill event")
    return KillEvent(
        type=wire.type,
        message=wire.message or wire.data or wire.error or "",
        signal=wire.signal,
        pid=wire.pid,
        exit_code=wire.exit_code,
    )


def _kill_final(event: KillEvent) -> int | NotFinal | None:
    if event.type == "error":
        raise StreamError(f"kill failed: {event.message or 'error'}")
    if event.type == "complete":
        return event.exit_code
    return NOT_FINAL


def _kill_gone(exc: APIError) -> int | None:
    if isinstance(exc, GoneError):
        return None  # already exited: success
    raise exc


class ExecSessions:
    """The exec sessions of one sprite: ``sprite.sessions``."""

    __slots__ = ("_sprite",)

    def __init__(self, sprite: Sprite) -> None:
        self._sprite = sprite

    async def list(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> list[ExecSessionInfo]:
        """The sessions running now (an exited session disappears at once).

        Raises:
            APIError: Including a 200 answer that carries an ``error`` key.
        """
        sprite = self._sprite
        resp = await sprite.client._request(
            "GET",
            sprite.path + "/exec",
            operation="list sessions",
            sprite=sprite.name,
            options=request_options(extra_headers, extra_query, extra_body),
        )
        sessions, error = resp.parse(_decode_sessions)
        if error:
            raise APIError(
                error,
                status_code=resp.status,
                body=resp.body,
                headers=resp.headers,
                operation="list sessions",
                sprite=sprite.name,
            )
        return sessions

    def attach(
        self,
        session_id: str | int,
        *,
        stdin: bool = True,
        on_port: PortCallback | None = None,
        kill_on_exit: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ExecSession:
        """Attach to a running session: ``async with sprite.sessions.attach(id) as proc``.

        Uses the path form and falls back to ``?id=`` on 404 (remembered per
        sprite). Entering waits for ``session_info`` (its ``tty`` flag decides
        the framing); the scrollback then arrives first as output. Leaving
        the block detaches and leaves the command running unless
        ``kill_on_exit`` is set.

        Raises (on entering):
            NotFoundError: No such session (it may have exited while away).
        """
        sid = _check_session_id(session_id)
        return ExecSession(
            self._sprite,
            None,
            attach_id=sid,
            attach_stdin=stdin,
            on_port=on_port,
            kill_on_exit=kill_on_exit,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def kill(
        self,
        session_id: str | int,
        *,
        signal: str | int = "TERM",
        timeout: float = 10.0,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> NDJSONStream[KillEvent, int | None]:
        """Signal a session; escalate to KILL after ``timeout`` seconds (0: never).

        Returns a stream: ``async for event in ...`` for the :class:`KillEvent`
        lines, or ``await`` it for the final exit code (None when the session
        had already exited — a 410, which counts as success).

        Raises:
            NotFoundError: No such session.
            StreamError: The server reported an ``error`` event.
        """
        sid = _check_session_id(session_id)
        name = signal_name(signal)
        seconds: object = timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError("timeout must be a number of seconds >= 0")
        sprite = self._sprite
        return NDJSONStream(
            sprite.client,
            "POST",
            sprite.path + "/exec/" + quote_segment(sid) + "/kill",
            decoder=_decode_kill,
            operation="kill session",
            sprite=sprite.name,
            params=[("signal", "SIG" + name), ("timeout", go_duration(float(timeout)))],
            # Only KILL is harmless twice: a repeated TERM/INT may be read as "force it".
            idempotent=name == "KILL",
            final=_kill_final,
            on_api_error=_kill_gone,
            options=request_options(extra_headers, extra_query, extra_body),
        )


def _check_session_id(session_id: object) -> str:
    if isinstance(session_id, bool) or not isinstance(session_id, (str, int)):
        raise TypeError("session_id must be a str or an int")
    sid = str(session_id)
    if not sid or "/" in sid or "\x00" in sid:
        raise ValueError(f"invalid session id {session_id!r}")
    return sid
