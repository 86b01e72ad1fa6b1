"""A live command: :class:`ExecSession` (``sprite.process``, ``sessions.attach``).

The socket, its reader and the exit-code rules are below it
(``_connection``, ``_protocol``); this module is what users call: output
streams and events, waiting, stdin, terminal size and signals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sprites_async import _frames
from sprites_async._config import ExecSettings
from sprites_async._errors import (
    CommandTimeoutError,
    ProtocolError,
    SpritesConnectionError,
    SpritesError,
)
from sprites_async._options import RequestOptions
from sprites_async._streams import EventOperation
from sprites_async._validation import check_size, check_stdin, signal_name

from ._buffers import OutputStream
from ._connection import (
    _SOCKET_LOST,
    _drop_output,
    _ExecConnection,
    _first_done,
    _RetryDirect,
    _shielded,
)
from ._events import ExecEvent, ExitEvent, PortCallback, SessionInfoEvent
from ._handshake import open_session
from ._request import ExecRequest, Stdin, _stdin_bytes

if TYPE_CHECKING:
    from sprites_async._sprites import Sprite
    from sprites_async._websocket import WebSocket

__all__ = ["ExecSession"]

logger = logging.getLogger("sprites_async")


class _ExecStreams(_ExecConnection):
    """The private side of :class:`ExecSession`: its queues, waiting, sending (no public name)."""

    __slots__ = ("_exit_given", "_stdin_closed")

    _exit_given: bool
    _stdin_closed: bool

    @property
    def _held(self) -> list[int]:
        # Bytes queued per stream (index 1: stdout, 2: stderr).
        return self._buffers.held

    @property
    def _buffered(self) -> int:
        # Everything queued, with bytes whose stream is not known yet.
        held = self._buffers.held
        return held[1] + held[2] + self._proto.early_bytes

    def _discard_output(self) -> None:
        self._sink = self._proto.on_output = _drop_output
        self._buffers.discard()

    # ---------------------------------------------------------------------- reading

    async def _next_output(self, stream: int) -> bytes:
        """The next chunk of a stream; StopAsyncIteration at its end (``OutputStream``)."""
        self._check_started()
        buffers = self._buffers
        buffers.claim(stream)
        buffers.want(stream)
        try:
            while True:
                data = buffers.pop(stream)
                if data is not None:
                    return data
                if self._is_done():
                    if self._error is not None and not isinstance(self._error, _RetryDirect):
                        raise self._error
                    raise StopAsyncIteration
                # The next output, event or end.
                woken = buffers.wake.arm()
                try:
                    await woken
                finally:
                    buffers.wake.disarm(woken)
        finally:
            buffers.release(stream)

    async def _next_event(self) -> ExecEvent:
        """The next event; StopAsyncIteration after the exit (``async for event in proc``)."""
        buffers = self._buffers
        buffers.claim(0)
        buffers.want(1, 2)
        try:
            while True:
                event = buffers.pop_event()
                if event is not None:
                    return event
                if self._is_done():
                    if self._error is not None:
                        raise self._error
                    if not self._exit_given and self._proto.exit_code is not None:
                        self._exit_given = True
                        return ExitEvent(exit_code=self._proto.exit_code)
                    raise StopAsyncIteration
                woken = buffers.wake.arm()
                try:
                    await woken
                finally:
                    buffers.wake.disarm(woken)
        finally:
            buffers.release(0)

    async def _waiting_for(
        self, futures: tuple[asyncio.Future[Any], ...], timeout: float | None
    ) -> bool:
        """Wait for the first of ``futures`` (see ``_first_done``); False on the timeout.

        With no ``futures``, wait for the reader's end (``timeout`` must be None).
        """
        # Nobody may be reading the output: while we wait, full streams
        # drop their oldest bytes instead of blocking the exit.
        buffers = self._buffers
        buffers.waiting += 1
        if self._sink is None:
            buffers.room.set()
        try:
            if not futures:
                await self._reader_end()  # the reader itself wakes us: no timer, no callback
                return True
            return await _first_done(futures, timeout)
        finally:
            buffers.waiting -= 1

    def _outcome(self) -> int:
        if self._error is not None:
            raise self._error
        assert self._proto.exit_code is not None
        return self._proto.exit_code

    def _open_ws(self) -> WebSocket:
        self._check_started()
        ws = self._ws
        if ws is None or ws.closed or self._shut or (self._is_done() and self._error is not None):
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


class ExecSession(_ExecStreams):
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

    __slots__ = ("_detached", "kill_on_exit")

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
        self._stdin_closed = False
        self._exit_given = False
        self._detached = False

    def __repr__(self) -> str:
        argv = " ".join(self._request.argv) if self._request else f"attach {self._attach_id}"
        state = "exited" if self.exit_code is not None else "running" if self._started else "new"
        return f"<ExecSession {argv!r} session_id={self.session_id!r} {state}>"

    # The streams are made on each access, not kept: a stream refers to its
    # session, and a session keeping its streams would be a reference cycle
    # (freed only by the garbage collector, thousands of them under load).
    @property
    def stdout(self) -> OutputStream:
        """The stdout :class:`OutputStream` (TTY: the terminal output)."""
        return OutputStream(self, 1)

    @property
    def stderr(self) -> OutputStream:
        """The stderr :class:`OutputStream` (empty with a TTY)."""
        return OutputStream(self, 2)

    @property
    def sprite(self) -> Sprite:
        """The sprite the command runs in."""
        return self._sprite

    @property
    def returncode(self) -> int | None:
        """Alias of :attr:`exit_code` (the subprocess name)."""
        return self.exit_code

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

    # ------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ExecSession:
        if self._started or self._client._telemetry is not None:
            await self.start()  # raises if started; or the span's way
        else:
            await open_session(self, False)  # start()'s work, without its frame
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
        await open_session(self, prefer_control)
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

    async def aclose(self) -> None:
        """Close the connection (the command is not signalled). Idempotent."""
        await self._close()

    # ---------------------------------------------------------------------- reading

    def __aiter__(self) -> _EventIterator:
        self._check_started()
        return _EventIterator(self)

    # ---------------------------------------------------------------------- waiting

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; return the exit code.

        Raises:
            ExitStatusUnknownError: The connection ended first.
            TimeoutError: ``timeout`` passed (the command is not signalled).
        """
        self._check_started()
        assert self._finished is not None
        # _waiting_for returns at once when it is done already.
        if not await self._waiting_for((self._finished,), timeout):
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
                feeder = asyncio.ensure_future(_feed(self, stdin))
            await _until_closed(self, feeder, timeout)
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

    # ---------------------------------------------------------------------- writing

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
        return self.exit_code if self._is_done() else None


class _EventIterator:
    __slots__ = ("_session",)

    def __init__(self, session: ExecSession) -> None:
        self._session = session

    def __aiter__(self) -> _EventIterator:
        return self

    def __anext__(self) -> Coroutine[Any, Any, ExecEvent]:
        return self._session._next_event()


async def _consume(stream: EventOperation[Any, Any]) -> None:
    await stream


def _kill(sprite: Sprite, sid: str, signal: str, timeout: float) -> EventOperation[Any, Any]:
    # Through the sprite's handle: importing ExecSessions here would close an
    # import cycle with the module that builds sessions on attach.
    return sprite.sessions.kill(sid, signal=signal, timeout=timeout)


async def _until_closed(
    session: ExecSession, feeder: asyncio.Task[None] | None, timeout: float | None
) -> None:
    """Wait until the socket is done with (``complete``), terminating on a timeout."""
    assert session._finished is not None
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    # Wait for the reader rather than for the exit alone: it ends once it
    # has closed the socket (or seen op.complete), so the cleanup after
    # finds nothing left to wait for and needs no task of its own.
    until: asyncio.Future[Any] = (
        session._reader if session._reader is not None else session._finished
    )
    waiting: tuple[asyncio.Future[Any], ...] = (until,) if feeder is None else (until, feeder)
    if feeder is None and deadline is None and session._reader is not None:
        # The usual ``exec()``: one wait, which the reader ends itself.
        waiting = ()
    while not until.done():
        left = None if deadline is None else max(deadline - loop.time(), 0)
        done = await session._waiting_for(waiting, left)
        if feeder is not None and len(waiting) > 1 and feeder.done():
            waiting = (until,)
            error = feeder.exception()
            if error is not None:
                await _shielded(session.terminate())
                raise error
        if not done:
            if session._finished.done():
                break  # it exited in time; only the socket's close is slow
            assert timeout is not None
            timed_out = CommandTimeoutError(
                f"the command did not finish within {timeout} s and was terminated",
                session_id=session._proto.session_id,
                timeout=timeout,
            )
            if session._span is not None:
                session._span.fail(timed_out)
            await _shielded(session.terminate())
            raise timed_out


async def _feed(session: ExecSession, stdin: Stdin) -> None:
    """Write all of ``stdin`` then close it.

    Errors of the user's iterable propagate. Errors of the socket end the
    feeding quietly: the reader reports what became of the command.
    """
    data = _stdin_bytes(stdin)
    if data is not None:
        if data and not await _send_stdin(session, data):
            return
    elif stdin is not None:
        assert isinstance(stdin, AsyncIterable)
        async for item in stdin:
            chunk: object = item
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"stdin iterables must yield bytes, not {type(chunk).__name__}")
            if not await _send_stdin(session, chunk):
                return
    await _send_stdin(session, None)


async def _send_stdin(session: ExecSession, data: bytes | bytearray | memoryview | None) -> bool:
    try:
        if data is None:
            await session.close_stdin()
        else:
            await session.write(data)
    except (BrokenPipeError, SpritesConnectionError) as exc:
        logger.debug("stopped sending stdin: %s", exc)
        return False
    return True
