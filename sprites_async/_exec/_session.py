"""A live command on its own socket: :class:`ExecSession` (``sprite.process``)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import WSMsgType

from sprites_async import _frames
from sprites_async._config import ExecSettings, settings_for
from sprites_async._control import close_now
from sprites_async._errors import (
    APIError,
    ExecError,
    ExitStatusUnknownError,
    NotFoundError,
    ProtocolError,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
    command_start_error,
)
from sprites_async._session import SOCKET_ERRORS, RequestOptions, quote_segment
from sprites_async._streams import NDJSONStream
from sprites_async._validation import check_size, signal_name

from ._buffers import _NO_QUEUES, OutputStream, _Flag
from ._events import ExecEvent, ExitEvent, OutputEvent, PortCallback, PortEvent, SessionInfoEvent
from ._request import ExecRequest, Stdin, _start_error_of, _stdin_bytes

if TYPE_CHECKING:
    from sprites_async._control import ControlLease
    from sprites_async._session import WebSocket
    from sprites_async._sprites import Sprite
    from sprites_async._telemetry import ExecSpan

__all__ = ["ExecSession"]

logger = logging.getLogger("sprites_async")

_SOCKET_LOST: tuple[type[BaseException], ...] = (
    *SOCKET_ERRORS,
    SpritesConnectionError,
    SpritesTimeoutError,
)
"""What a socket operation may raise once the connection is lost."""


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
            from sprites_async._control import pool_for

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
                except _SOCKET_LOST as exc:
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
        legacy = client._legacy_attach
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
            legacy.add(name)
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
            # saying it could not start the command: nothing ran.
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
        await _kill(self._sprite, sid, name, 0)

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
                stream = _kill(self._sprite, sid, "TERM", grace)
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
    except _SOCKET_LOST:
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


def _kill(sprite: Sprite, sid: str, signal: str, timeout: float) -> NDJSONStream[Any, Any]:
    from ._sessions import ExecSessions

    return ExecSessions(sprite).kill(sid, signal=signal, timeout=timeout)
