"""A live command on its socket: :class:`ExecSession` (``sprite.process``), thin over the protocol.

:class:`_ExecConnection` is the asyncio side of one command: it opens the
socket (a direct ``/exec`` handshake, an attach, or an operation on a pooled
``/control`` socket), reads it into an :class:`ExecProtocol`, keeps one timer
for pings and the dead-peer check, and closes it. Which exit code a frame
means is the protocol's business, never this module's. :class:`ExecSession`
adds what users call: output streams and events, stdin, signals, waiting.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from aiohttp import WSMsgType

from sprites_async import _frames
from sprites_async._config import ExecSettings, settings_for
from sprites_async._control import close_now
from sprites_async._errors import (
    APIError,
    CommandTimeoutError,
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
from sprites_async._validation import check_size, check_stdin, signal_name

from ._buffers import OutputBuffers, OutputStream, _Flag
from ._events import ExecEvent, ExitEvent, PortCallback, PortEvent, SessionInfoEvent
from ._protocol import ExecProtocol, Failure
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
"""What a send, ping, pong or receive raises once the connection is lost."""


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


class _ExecConnection:
    """One command's socket, read into its :class:`ExecProtocol` (base of :class:`ExecSession`)."""

    # Slots: hundreds of sessions may be alive at once, and an instance
    # dict of ~30 attributes would be the largest part of each.
    __slots__ = (
        "__weakref__",
        "_attach_id",
        "_attach_stdin",
        "_buffers",
        "_client",
        "_dead",
        "_error",
        "_finished",
        "_info_seen",
        "_lease",
        "_on_port",
        "_options",
        "_paused",
        "_pinger",
        "_proto",
        "_reader",
        "_request",
        "_settings",
        "_shut",
        "_sink",
        "_span",
        "_sprite",
        "_started",
        "_watchdog",
        "_ws",
        "capabilities",
    )

    def __init__(
        self,
        sprite: Sprite,
        request: ExecRequest | None,
        *,
        attach_id: str | None,
        attach_stdin: bool,
        on_port: PortCallback | None,
        settings: ExecSettings | None,
        sink: Callable[[int, bytes], None] | None,
        options: RequestOptions | None,
    ) -> None:
        self._sprite = sprite
        self._options = options
        self._client = sprite.client
        self._request = request
        self._attach_id = attach_id
        self._attach_stdin = attach_stdin
        self._on_port = on_port
        settings = self._settings = settings or settings_for(sprite.client)
        self._sink = sink
        self._span: ExecSpan | None = None
        self.capabilities: frozenset[str] = frozenset()
        self._buffers = OutputBuffers(
            settings.buffer_size, settings.max_port_events, queues=sink is None
        )
        self._proto = ExecProtocol(
            tty=request.tty if request is not None else None,
            session_id=attach_id,
            exit_grace=settings.exit_grace,
            op_complete_timeout=settings.op_complete_timeout,
            dead_after=settings.dead_after,
            on_output=sink if sink is not None else self._buffers.push,
            on_event=self._on_event,
        )
        self._ws: WebSocket | None = None
        self._lease: ControlLease | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._paused = False
        self._dead = False
        self._finished: asyncio.Future[None] | None = None
        self._info_seen: _Flag | None = None
        self._error: BaseException | None = None
        self._started = False
        self._shut = False

    @property
    def session_id(self) -> str | None:
        """The server's session id (from ``session_info``, or the attached id), or None."""
        return self._proto.session_id

    @property
    def exit_code(self) -> int | None:
        """The exit code once known, else None."""
        return self._proto.exit_code

    @property
    def info(self) -> SessionInfoEvent | None:
        """The ``session_info`` the server sent, or None."""
        return self._proto.info

    @property
    def tty(self) -> bool | None:
        """Whether the session has a terminal (None until an attached session says)."""
        return self._proto.tty

    @property
    def done(self) -> bool:
        """True once the exit status is known or the connection failed."""
        return self._finished is not None and self._finished.done()

    @property
    def via_control(self) -> bool:
        """True when the command runs over a pooled ``/control`` socket."""
        return self._proto.control

    # ------------------------------------------------------------------- opening

    async def _open(self, prefer_control: bool) -> None:
        self._started = True
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._info_seen = _Flag()
        if self._attach_id is not None:
            await self._start_attach()
            return
        # A pooled socket was opened without the caller's extra headers/query.
        if prefer_control and self._options is None and await self._start_on_lease():
            return
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

    async def _start_on_lease(self) -> bool:
        """Start the command on a pooled ``/control`` socket; False if none is to be had."""
        from sprites_async._control import pool_for

        assert self._request is not None
        lease = await pool_for(self._client).acquire(self._sprite.name)
        if lease is None:
            return False
        self._lease = lease
        self._proto.control = True
        self._begin(lease.ws)
        frame = _frames.encode_envelope("op.start", op="exec", args=self._request.control_args())
        try:
            await lease.ws.send_str(frame)
        except _SOCKET_LOST as exc:
            # Part of the frame may be out (a failed drain comes after the
            # write): the command may have started.
            self._lost(f"sending op.start failed: {exc}", exc)
        except asyncio.CancelledError as exc:
            # The frame may be out: stop what it may have started.
            if self._span is not None:
                self._span.fail(exc)
            await _shielded(cast("ExecSession", self).terminate())
            await self._release()
            raise
        return True

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
        await _shielded(cast("ExecSession", self).terminate())
        await _shielded(self.aclose())

    async def _start_attach(self) -> None:
        client = self._client
        name = self._sprite.name
        sid = self._attach_id or ""
        params = [("stdin", "true" if self._attach_stdin else "false")]
        # Sprites whose server answered the path form with 404: use ?id= at once.
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
            self._proto.legacy = True
            legacy.add(name)
        self._set_capabilities(headers)
        self._begin(ws)
        loop = asyncio.get_running_loop()
        self._proto.connected(loop.time(), self._settings.session_info_timeout)
        assert self._info_seen is not None
        assert self._finished is not None
        waiter = asyncio.ensure_future(self._info_seen.wait())
        waiting: set[asyncio.Future[Any]] = {waiter, self._finished}
        deadline = self._proto.info_deadline
        try:
            await asyncio.wait(
                waiting,
                timeout=None if deadline is None else deadline - loop.time(),
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

    # ------------------------------------------------------------------- reading

    async def _read_loop(self, ws: WebSocket) -> None:
        proto = self._proto
        buffers = self._buffers
        loop = asyncio.get_running_loop()
        closed_by_peer = False
        now = loop.time()
        proto.touch(now)
        self._arm_tick(now)
        try:
            while not proto.done:
                if self._sink is None and buffers.must_pause(proto.early_bytes):
                    # Not reading on purpose: the watchdog must not call that dead.
                    self._paused = True
                    buffers.room.clear()
                    await buffers.room.wait()
                    self._paused = False
                    proto.touch(loop.time())
                    continue
                deadline = proto.next_deadline()
                try:
                    if deadline is None:
                        msg = await ws.receive()
                    else:
                        msg = await ws.receive(timeout=max(deadline - loop.time(), 0.001))
                except asyncio.TimeoutError:
                    proto.timeout(loop.time())  # early wake-ups (clock rounding) do nothing
                    continue
                kind = msg.type
                if kind is WSMsgType.BINARY:
                    proto.receive_bytes(msg.data, loop.time())
                elif kind is WSMsgType.TEXT:
                    proto.receive_text(msg.data, loop.time())
                elif kind is WSMsgType.PING:
                    proto.touch(loop.time())
                    await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    proto.touch(loop.time())
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
                f"no data and no pong for {self._settings.dead_after} s: connection is dead",
                operation="exec",
                sprite=self._sprite.name,
            )
            self._lost(f"the connection failed: {dead}", dead)
            return
        except Exception as exc:
            self._lost(f"the connection failed: {exc}", exc)
            return
        finally:
            self._stop_ticking()
        if not proto.done:
            proto.receive_eof(ws.close_code, by_peer=closed_by_peer)
        self._settle()
        if not proto.control and not ws.closed:
            # The server lingers ~5 s after the exit, or (pkg/wsexec) never
            # answers a close: say goodbye and go.
            await close_now(ws, self._settings.close_timeout)

    def _tick(self) -> None:
        # Pings and the dead-peer check share one timer per session, re-armed
        # from the last frame's time: most commands end before it ever fires,
        # and a timeout around every receive (or a timer each) costs more.
        self._watchdog = None
        reader, ws = self._reader, self._ws
        if reader is None or reader.done() or self._shut or ws is None or ws.closed:
            return
        now = asyncio.get_running_loop().time()
        if self._paused:
            self._proto.touch(now)
        if self._proto.is_dead(now):
            self._dead = True
            reader.cancel()
            return
        if self._settings.ping_interval and (self._pinger is None or self._pinger.done()):
            self._pinger = asyncio.ensure_future(_ping(ws))
        self._arm_tick(now)

    def _arm_tick(self, now: float) -> None:
        delay = self._settings.ping_interval or None
        dead = self._proto.dead_deadline()
        if dead is not None:
            delay = dead - now if delay is None else min(delay, dead - now)
        if delay is not None:
            self._watchdog = asyncio.get_running_loop().call_later(delay, self._tick)

    def _stop_ticking(self) -> None:
        timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.cancel()

    def _on_event(self, event: ExecEvent) -> None:
        self._buffers.push_event(event)
        if isinstance(event, SessionInfoEvent):
            if self._info_seen is not None:
                self._info_seen.set()
        elif isinstance(event, PortEvent) and self._on_port is not None:
            try:
                outcome = self._on_port(event)
                if asyncio.iscoroutine(outcome):
                    _background(outcome)
            except Exception:
                logger.exception("on_port callback failed")

    # ------------------------------------------------------------------- outcome

    def _lost(self, reason: str, cause: BaseException | None = None) -> None:
        """The connection failed or was given up on: the protocol decides, we report."""
        self._proto.connection_lost(reason)
        self._settle(cause)

    def _settle(self, cause: BaseException | None = None) -> None:
        """Once the protocol has decided, end the wait (once) with its outcome."""
        fut = self._finished
        if fut is None or fut.done() or not self._proto.done:
            return
        failure = self._proto.failure
        error = None if failure is None else self._error_of(failure)
        if error is not None and cause is not None:
            error.__cause__ = cause
        self._error = error
        if self._span is not None:
            self._span.end(cast("ExecSession", self), error)
        fut.set_result(None)
        self._buffers.wake.set()

    def _error_of(self, failure: Failure) -> BaseException:
        if failure.kind == "refused":
            return _RetryDirect(failure.reason, direct=failure.direct)
        if failure.kind == "failed":
            # Even without session_info this is no proof that nothing ran
            # (pkg/wsexec-like handlers send none): report it, never re-run.
            # A start error's text with no exit status seen is the server
            # saying it could not start the command: nothing ran.
            request = self._request
            if self.exit_code is None and request is not None and self._attach_id is None:
                started = command_start_error(
                    failure.reason,
                    prefixed=False,
                    argv=request.argv,
                    cwd=request.cwd,
                    sprite=self._sprite.name,
                )
                if started is not None:
                    return started
            return ExecError(f"the command failed: {failure.reason}")
        # Also over control before op.ack/session_info: the op.start was sent,
        # so the command may be running. Never a retry (at most once).
        return ExitStatusUnknownError(
            failure.reason, session_id=self.session_id, sprite=self._sprite.name
        )

    def _wait_done_now(self) -> bool:
        return self._finished is not None and self._finished.done()

    async def _wait_done(self, timeout: float | None) -> bool:
        assert self._finished is not None
        if not self._finished.done():
            await asyncio.wait({self._finished}, timeout=timeout)
        return self._finished.done()

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

    # ------------------------------------------------------------------- closing

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
                except Exception:  # the reader reports through _settle
                    logger.debug("exec reader ended with an error", exc_info=True)
        if self._finished is not None and not self.done:
            self._lost("the connection was closed before the command exited")
        lease, self._lease = self._lease, None
        if lease is not None:
            reusable = (
                self._proto.reusable
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


class ExecSession(_ExecConnection):
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

    __slots__ = ("_detached", "_exit_given", "_stdin_closed", "kill_on_exit", "stderr", "stdout")

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
        super().__init__(
            sprite,
            request,
            attach_id=attach_id,
            attach_stdin=attach_stdin,
            on_port=on_port,
            settings=settings,
            sink=sink,
            options=options,
        )
        self.kill_on_exit = kill_on_exit
        self.stdout = OutputStream(self, 1)
        self.stderr = OutputStream(self, 2)
        self._stdin_closed = False
        self._exit_given = False
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
    def _held(self) -> list[int]:
        # Bytes queued per stream (index 1: stdout, 2: stderr).
        return self._buffers.held

    @property
    def _buffered(self) -> int:
        # Everything queued, with bytes whose stream is not known yet.
        held = self._buffers.held
        return held[1] + held[2] + self._proto.early_bytes

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
        :meth:`aclose` yourself when done (or :meth:`complete`, which closes).
        ``prefer_control`` runs a command without stdin or TTY over a pooled
        ``/control`` socket when one is to be had.
        """
        if self._started:
            raise RuntimeError("this session was already started")
        telemetry = self._client._telemetry
        if telemetry is not None and self._span is None:
            # The command's span is current while it starts: the handshake
            # (or a pooled socket's) becomes its child.
            span = self._span = telemetry.exec_span(self, "exec" if self._request else "attach")
            if self._sink is not None:
                self._sink = self._proto.on_output = span.counting(self._sink)
            with span.current(self):
                return await self.start(prefer_control=prefer_control)
        await self._open(prefer_control)
        return self

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

    def _discard_output(self) -> None:
        self._sink = self._proto.on_output = _drop_output
        self._buffers.discard()

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the session is not started: use 'async with sprite.process(...)'")

    # ---------------------------------------------------------------------- reading

    async def _next_output(self, stream: int) -> bytes | None:
        self._check_started()
        buffers = self._buffers
        buffers.claim(stream)
        buffers.want(stream)
        try:
            while True:
                data = buffers.pop(stream)
                if data is not None:
                    return data
                if self.done:
                    if self._error is not None and not isinstance(self._error, _RetryDirect):
                        raise self._error
                    return None
                await buffers.wait_wake()
        finally:
            buffers.readers.discard(stream)

    def __aiter__(self) -> _EventIterator:
        self._check_started()
        return _EventIterator(self)

    async def _next_event(self) -> ExecEvent | None:
        buffers = self._buffers
        buffers.claim(0)
        buffers.want(1, 2)
        try:
            while True:
                event = buffers.pop_event()
                if event is not None:
                    return event
                if self.done:
                    if self._error is not None:
                        raise self._error
                    if not self._exit_given and self.exit_code is not None:
                        self._exit_given = True
                        return ExitEvent(exit_code=self.exit_code)
                    return None
                await buffers.wait_wake()
        finally:
            buffers.readers.discard(0)

    # ---------------------------------------------------------------------- waiting

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; return the exit code.

        Raises:
            ExitStatusUnknownError: The connection ended first.
            TimeoutError: ``timeout`` passed (the command is not signalled).
        """
        self._check_started()
        assert self._finished is not None
        if not self._finished.done():
            done = await self._waiting_for({self._finished}, timeout)
            if not done:
                raise TimeoutError(f"the command did not exit within {timeout} s")
        return self._outcome()

    async def complete(self, stdin: Stdin = None, *, timeout: float | None = None) -> int:
        """Send ``stdin`` (then its end), wait for the exit, close; return the exit code.

        This is what ``sprite.exec()`` does with a started session. Unlike
        :meth:`wait`, a timeout or a cancellation terminates the command
        (TERM, then KILL) before :class:`CommandTimeoutError` (or the
        cancellation) is raised, and the connection is closed on return.
        An error of a ``stdin`` iterable terminates the command and is raised.

        Raises:
            CommandTimeoutError: ``timeout`` passed; the command was terminated.
            ExitStatusUnknownError: The connection ended before the exit status.
            CommandStartError: The sprite could not start the command.
        """
        self._check_started()
        check_stdin(stdin)
        feeder: asyncio.Task[None] | None = None
        try:
            if stdin is not None:
                feeder = asyncio.ensure_future(self._feed(stdin))
            await self._until_closed(feeder, timeout)
        except asyncio.CancelledError as exc:
            if self._span is not None:
                self._span.fail(exc)
            await _shielded(self.terminate())
            raise
        finally:
            if feeder is not None and not feeder.done():
                feeder.cancel()
                try:
                    await feeder
                except BaseException:
                    pass
            await self._release()
        return self._outcome()

    async def _until_closed(self, feeder: asyncio.Task[None] | None, timeout: float | None) -> None:
        assert self._finished is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Wait for the reader rather than for the exit alone: it ends once it
        # has closed the socket (or seen op.complete), so the cleanup after
        # finds nothing left to wait for and needs no task of its own.
        until: asyncio.Future[Any] = self._reader if self._reader is not None else self._finished
        waiting: set[asyncio.Future[Any]] = {until}
        if feeder is not None:
            waiting.add(feeder)
        while not until.done():
            left = None if deadline is None else max(deadline - loop.time(), 0)
            done = await self._waiting_for(waiting, left)
            if feeder is not None and feeder in done:
                waiting.discard(feeder)
                error = feeder.exception()
                if error is not None:
                    await _shielded(self.terminate())
                    raise error
            if not done:
                if self._finished.done():
                    break  # it exited in time; only the socket's close is slow
                assert timeout is not None
                timed_out = CommandTimeoutError(
                    f"the command did not finish within {timeout} s and was terminated",
                    session_id=self.session_id,
                    timeout=timeout,
                )
                if self._span is not None:
                    self._span.fail(timed_out)
                await _shielded(self.terminate())
                raise timed_out

    async def _waiting_for(
        self, futures: set[asyncio.Future[Any]], timeout: float | None
    ) -> set[asyncio.Future[Any]]:
        # Nobody may be reading the output: while we wait, full streams
        # drop their oldest bytes instead of blocking the exit.
        buffers = self._buffers
        buffers.waiting += 1
        if self._sink is None:
            buffers.room.set()
        try:
            done: set[asyncio.Future[Any]]
            done, _ = await asyncio.wait(
                futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            buffers.waiting -= 1
        return done

    def _outcome(self) -> int:
        if self._error is not None:
            raise self._error
        assert self.exit_code is not None
        return self.exit_code

    # ---------------------------------------------------------------------- writing

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
        except _SOCKET_LOST as exc:
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

    # ---------------------------------------------------------------------- signals

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
        if "signal" in self.capabilities and not self.via_control and not self._shut:
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
            if "signal" in self.capabilities and not self.via_control and not self._shut:
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
        # Not self.done: mypy would take it for the False it was above.
        return self.exit_code if self._wait_done_now() else None


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


def _close_late_ws(session: _ExecConnection, reader: asyncio.Future[None]) -> None:
    """A handshake given up on that completed anyway: close its socket."""
    ws = session._ws
    if ws is not None and not ws.closed:
        _background(close_now(ws, session._settings.close_timeout))


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
