"""The asyncio side of one command's socket, read into its :class:`ExecProtocol`.

:class:`_ExecConnection` reads the socket into the protocol, keeps one timer
for pings, the dead-peer check and the protocol's deadlines, turns the protocol's outcome into the
end of the wait (an exit code or a typed error), and closes the socket or
returns it to the control pool. Which exit code a frame means is the
protocol's business, never this module's. Opening the socket is
``_handshake``'s; what users call is :class:`ExecSession`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from sprites_async._config import ExecSettings, settings_for
from sprites_async._control import close_now
from sprites_async._errors import (
    ExecError,
    ExitStatusUnknownError,
    SpritesTimeoutError,
    command_start_error,
)
from sprites_async._options import RequestOptions
from sprites_async._translate import SOCKET_LOST
from sprites_async._websocket import WSMsgType

from ._buffers import OutputBuffers
from ._events import ExecEvent, PortCallback, PortEvent
from ._protocol import ExecProtocol, Failure
from ._request import ExecRequest

if TYPE_CHECKING:
    from sprites_async._control import ControlLease
    from sprites_async._sprites import Sprite
    from sprites_async._telemetry import ExecSpan
    from sprites_async._websocket import WebSocket

    from ._session import ExecSession

logger = logging.getLogger("sprites_async")

_SOCKET_LOST = SOCKET_LOST
"""What a send, ping, pong or receive raises once the connection is lost (the seam translates)."""


_NO_CAPABILITIES: frozenset[str] = frozenset()  # shared: ``frozenset()`` is a new object each time
_CAPABILITIES: dict[str, frozenset[str]] = {}
"""``X-Sprite-Capabilities`` values seen, parsed (a few distinct values at most)."""


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
        "_cut",
        "_end_waiters",
        "_error",
        "_finished",
        "_lease",
        "_on_port",
        "_opened",
        "_options",
        "_paused",
        "_pinger",
        "_proto",
        "_pulling",
        "_reader",
        "_request",
        "_settings",
        "_shut",
        "_sink",
        "_span",
        "_sprite",
        "_started",
        "_starter",
        "_watch_due",
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
        self.capabilities: frozenset[str] = _NO_CAPABILITIES
        buffers = self._buffers = OutputBuffers(settings.buffer_size, settings.max_port_events)
        self._proto = ExecProtocol(
            tty=request.tty if request is not None else None,
            session_id=attach_id,
            exit_grace=settings.exit_grace,
            op_complete_timeout=settings.op_complete_timeout,
            dead_after=settings.dead_after,
            on_output=sink if sink is not None else buffers.push,
            # Not a method of ours: the protocol would hold the session, a
            # reference cycle that only the garbage collector frees.
            on_event=buffers.push_event if on_port is None else _PortEvents(buffers, on_port),
        )
        self._ws: WebSocket | None = None
        self._lease: ControlLease | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_due = math.inf
        self._paused = False
        self._pulling = False
        self._starter: _Starter | None = None  # while waiting there for its watchdog
        self._cut: str | None = None  # why our timer cancelled the reader: "dead", "decided"
        self._finished: asyncio.Future[None] | None = None
        # The direct handshake's end (see _handshake.open_session), while it runs.
        self._opened: asyncio.Future[None] | None = None
        self._end_waiters: list[asyncio.Future[None]] | None = None
        self._error: BaseException | None = None
        self._started = False
        self._shut = False

    def _set_capabilities(self, headers: Mapping[str, str]) -> None:
        raw = headers.get("X-Sprite-Capabilities", "")
        # One server sends one header value: share its set between sessions.
        caps = _CAPABILITIES.get(raw)
        if caps is None:
            caps = frozenset(c.strip().lower() for c in raw.split(",") if c.strip())
            if len(_CAPABILITIES) < 64:
                _CAPABILITIES[raw] = caps
        self.capabilities = caps

    def _begin(self, ws: WebSocket) -> None:
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read_loop(ws))

    # ------------------------------------------------------------------- reading

    async def _read_loop(
        self,
        ws: WebSocket | None,
        connect: Callable[[ExecSession], Awaitable[WebSocket | None]] | None = None,
    ) -> None:
        """Read the socket into the protocol until it decides; ``connect`` opens it first."""
        try:
            if ws is None:
                assert connect is not None
                # Only ExecSession is ever instantiated.
                ws = await connect(cast("ExecSession", self))
                if ws is None:
                    return
            proto = self._proto
            buffers = self._buffers
            loop = asyncio.get_running_loop()
            closed_by_peer = False
            now = loop.time()
            proto.touch(now)
            self._watch_due = due = self._next_watch(now)
            if due != math.inf:
                # Most commands end within a second: their watchdog is
                # started by one timer shared by all sessions, and only
                # for those still running then (see _Starter).
                _starter_for(loop).add(loop, self, due - now)
            try:
                while not proto.done:
                    if self._sink is None and buffers.must_pause(proto.early_bytes):
                        # Not reading on purpose: the watchdog must not call that dead.
                        self._paused = True
                        buffers.room.clear()
                        await buffers.room.wait()
                        self._paused = False
                        proto.touch(loop.time())
                        self._due(loop)
                        continue
                    # No timeout here: the protocol's deadlines (exit grace,
                    # op.complete) are the timer's (see _tick), which costs a
                    # timer only when a deadline appears, not one per receive.
                    msg = await ws.receive()
                    kind = msg.type
                    if kind is WSMsgType.BINARY:
                        proto.receive_bytes(msg.data, loop.time())
                        self._due(loop)
                    elif kind is WSMsgType.TEXT:
                        proto.receive_text(msg.data, loop.time())
                        self._due(loop)
                    elif kind is WSMsgType.PING:
                        proto.touch(loop.time())
                        await ws.pong(msg.data)
                    elif kind is WSMsgType.PONG:
                        proto.touch(loop.time())
                    else:  # CLOSE, CLOSING, CLOSED, ERROR
                        closed_by_peer = True
                        break
            except asyncio.CancelledError:
                if self._cut is None:
                    raise
                # Cancelled by our own timer, not by a caller.
                task = asyncio.current_task()
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
                if self._cut == "dead":
                    dead = SpritesTimeoutError(
                        f"no data and no pong for {self._settings.dead_after} s: "
                        "connection is dead",
                        operation="exec",
                        sprite=self._sprite.name,
                    )
                    self._lost(f"the connection failed: {dead}", dead)
                    return
                # "decided": a deadline ended it (the protocol is done); go on as
                # after the frame that would have ended it.
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
        finally:
            # Those waiting for the end (_reader_end) are woken from here,
            # not by a done callback on the task: a loop turn less.
            self._wake_end_waiters()

    def _tick(self) -> None:
        # Pings, the dead-peer check and the protocol's deadlines share one
        # timer per session, re-armed from the last frame's time: most
        # commands end before it ever fires, and a timeout around every
        # receive (or a timer each) costs more.
        self._watchdog = None
        reader, ws = self._reader, self._ws
        if reader is None or reader.done() or self._shut or ws is None or ws.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        proto = self._proto
        if self._paused:
            proto.touch(now)
        else:
            deadline = proto.next_deadline()
            if deadline is not None and now >= deadline:
                proto.timeout(now)
                if proto.done:
                    # Stop the receive: the reader settles on the decision.
                    self._cut = "decided"
                    reader.cancel()
                    return
        if now >= self._watch_due:
            if proto.is_dead(now):
                self._cut = "dead"
                reader.cancel()
                return
            if self._settings.ping_interval and (self._pinger is None or self._pinger.done()):
                self._pinger = asyncio.ensure_future(_ping(ws))
            self._watch_due = self._next_watch(now)
        self._arm(loop)

    def _next_watch(self, now: float) -> float:
        # When to ping next or check for a dead peer (inf: never).
        delay = self._settings.ping_interval or None
        dead = self._proto.dead_deadline()
        if dead is not None:
            delay = dead - now if delay is None else min(delay, dead - now)
        return math.inf if delay is None else now + delay

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self._watch_due
        if not self._paused:
            deadline = self._proto.next_deadline()
            if deadline is not None and deadline < when:
                when = deadline
        if when != math.inf:
            self._watchdog = loop.call_at(when, self._tick)

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        # After a frame: a protocol deadline earlier than the timer pulls it
        # in, at the next loop turn rather than now. The frame that settles
        # it (the exit frame right behind a text exit) is most often in the
        # same read, so the reader is done before any timer is made.
        if self._pulling or self._proto.next_deadline() is None:
            return
        self._pulling = True
        loop.call_soon(self._pull_in)

    def _pull_in(self) -> None:
        self._pulling = False
        reader = self._reader
        if self._shut or self._proto.done or reader is None or reader.done():
            return
        deadline = self._proto.next_deadline()
        if deadline is None:
            return
        timer = self._watchdog
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._watchdog = asyncio.get_running_loop().call_at(deadline, self._tick)

    def _stop_ticking(self) -> None:
        timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.cancel()
        starter, self._starter = self._starter, None
        if starter is not None:
            starter.pending.discard(self)

    def _start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        # From _Starter: the command outlived its first period; a timer of
        # its own from now on (unless a deadline made one already: its
        # _tick arms the watch too).
        reader = self._reader
        if self._watchdog is None and reader is not None and not reader.done() and not self._shut:
            self._arm(loop)

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
            # Only ExecSession is ever instantiated: the span reads its attributes.
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
            if self._proto.exit_code is None and request is not None and self._attach_id is None:
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
            failure.reason, session_id=self._proto.session_id, sprite=self._sprite.name
        )

    def _is_done(self) -> bool:
        return self._finished is not None and self._finished.done()

    async def _wait_done(self, timeout: float | None) -> bool:
        assert self._finished is not None
        return await _first_done((self._finished,), timeout)

    async def _info_or_end(self, timeout: float | None) -> None:
        """Wait until ``session_info`` came, the outcome is known, or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Every event and the outcome set ``wake``: no flag of its own per session.
        wake = self._buffers.wake
        while self._proto.info is None and not self._is_done():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return
            woken = wake.arm()
            try:
                await _first_done((woken,), left)
            finally:
                wake.disarm(woken)

    async def _session_id_soon(self) -> str | None:
        if self._proto.session_id is None and self._finished is not None:
            await self._info_or_end(self._settings.session_info_timeout)
        return self._proto.session_id

    async def _reader_end(self) -> None:
        """Wait until the reader has ended (it closes a direct socket before it ends)."""
        reader = self._reader
        if reader is None or reader.done():
            return
        # Our own future, awaited directly: a cancellation of the caller
        # cancels it alone, never the reader.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._end_waiters
        if waiters is None:
            waiters = self._end_waiters = []
        waiters.append(fut)
        try:
            await fut
        finally:
            waiters = self._end_waiters
            if waiters is not None and fut in waiters:
                waiters.remove(fut)

    def _wake_end_waiters(self) -> None:
        waiters, self._end_waiters = self._end_waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the session is not started: use 'async with sprite.process(...)'")

    # ------------------------------------------------------------------- closing

    async def _close(self) -> None:
        # ExecSession.aclose: close the connection, never signal the command.
        if self._shut:
            return
        self._shut = True
        self._stop_ticking()
        reader, pinger = self._reader, self._pinger
        if reader is not None and not reader.done() and self._is_done():
            # The exit is known and the reader is closing the socket: let it.
            await _first_done((reader,), self._settings.close_timeout + 0.5)
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
        # A reader cancelled before its first step never ran its own wake-up.
        self._wake_end_waiters()
        if self._finished is not None and not self._is_done():
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
        cancelled = False
        reader = self._reader
        if (
            reader is not None
            and not reader.done()
            and self._is_done()
            and not self._shut
            and (self._pinger is None or self._pinger.done())
        ):
            # The usual end of a live session: the exit is known and the
            # reader is closing the socket, which it does by itself within
            # close_timeout. Wait for it here, without a task; a cancellation
            # meanwhile is held back until it has ended (as _shielded does).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._settings.close_timeout + 0.5
            while not reader.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    await _first_done((reader,), left)
                except asyncio.CancelledError:
                    cancelled = True
        if self._close_is_instant():
            await self._close()
        else:
            await _shielded(self._close())
        if cancelled:
            raise asyncio.CancelledError


class _PortEvents:
    """The protocol's events with an ``on_port`` callback: queued, and ports called back.

    Holds the buffers and the callback, never the session, so that a
    session is freed by reference counting alone.
    """

    __slots__ = ("buffers", "on_port")

    def __init__(self, buffers: OutputBuffers, on_port: PortCallback) -> None:
        self.buffers = buffers
        self.on_port = on_port

    def __call__(self, event: ExecEvent) -> None:
        self.buffers.push_event(event)
        if isinstance(event, PortEvent):
            try:
                outcome = self.on_port(event)
                if asyncio.iscoroutine(outcome):
                    _background(outcome)
            except Exception:
                logger.exception("on_port callback failed")


_FIRST_PERIOD = 1.0
"""Seconds a command runs before its watchdog gets a timer of its own (at most)."""


class _Starter:
    """One timer per event loop that starts the watchdogs of commands still running.

    A timer per command, made at its start and cancelled at its end, costs
    more than most commands do in the SDK (asyncio's timers are Python
    objects, and thousands of them make every heap operation slower). The
    sessions wait here in a set instead; when the shared timer fires, those
    still running arm their own. It fires before any of them needs its
    first ping or dead-peer check (within ``_FIRST_PERIOD``, or sooner).

    It keeps no reference to its loop (nor to a timer, which would hold
    one): the registry below is keyed weakly by the loop. A session leaves
    the set when its reader ends, which ``asyncio.run`` makes happen too.
    """

    __slots__ = ("due", "pending")

    def __init__(self) -> None:
        self.pending: set[_ExecConnection] = set()
        self.due = math.inf  # when the earliest timer armed (and not yet fired) fires

    def add(self, loop: asyncio.AbstractEventLoop, session: _ExecConnection, first: float) -> None:
        """Start ``session``'s watchdog within ``first`` seconds unless it ends first."""
        self.pending.add(session)
        session._starter = self
        when = loop.time() + min(first, _FIRST_PERIOD)
        if when < self.due:
            # A later timer still armed fires for nothing: cheaper than
            # keeping its handle (and through it the loop) to cancel it.
            self.due = when
            loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.due = math.inf
        batch, self.pending = self.pending, set()
        if not batch:
            return
        loop = asyncio.get_running_loop()
        for session in batch:
            session._starter = None
            session._start_watch(loop)


_starters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Starter] = (
    weakref.WeakKeyDictionary()
)


def _starter_for(loop: asyncio.AbstractEventLoop) -> _Starter:
    starter = _starters.get(loop)
    if starter is None:
        starter = _starters[loop] = _Starter()
    return starter


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


def _wake(waiter: asyncio.Future[None], _: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _first_done(futures: tuple[asyncio.Future[Any], ...], timeout: float | None) -> bool:
    """Wait until one of ``futures`` is done or ``timeout`` passes; True if one is done.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` without its sets: one
    waiter future and one callback, which matters once per command. The
    futures are never cancelled: a cancellation is the caller's alone.
    """
    for fut in futures:
        if fut.done():
            return True
    if timeout is not None and timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    # A partial, not a closure: lighter, and thousands may be waiting.
    wake = functools.partial(_wake, waiter)
    for fut in futures:
        fut.add_done_callback(wake)
    timer = None if timeout is None else loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for fut in futures:
            fut.remove_done_callback(wake)
    return any(fut.done() for fut in futures)


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
