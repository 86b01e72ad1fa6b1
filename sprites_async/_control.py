"""A pool of ``/control`` sockets per client and sprite.

``/control`` runs operations (a command, for instance) one after another on
one WebSocket: each starts with an ``op.start`` frame and ends with
``op.complete`` or ``op.error``.

A control socket runs one operation at a time, so sequential commands can
reuse one socket instead of paying a WebSocket handshake (and a wake-up
round trip) each. Concurrency comes from several sockets per sprite.

Rules this pool keeps:

* One pool per client (so per event loop), kept on the client as
  ``client._control_pool`` and closed by ``client.aclose()``; inside it,
  sockets are grouped per sprite.
* A socket is lent to one operation at a time and comes back only if that
  operation ended cleanly (``op.complete`` received, nothing odd seen);
  anything else closes it.
* Dials run concurrently; a slot is reserved before dialling so that the
  limits hold without a lock. At most ``max_per_sprite`` sockets per sprite
  and ``max_total`` per client. A caller that finds them all busy runs its
  command on a direct ``/exec`` socket (``when_full="direct"``, the
  default), so 200 concurrent commands run at once, not in two batches;
  with ``when_full="wait"`` it waits in FIFO order (at most
  ``max_waiters``) instead, and a DEBUG line on the ``sprites_async``
  logger says so. A returned socket is handed straight to the first waiter
  of its sprite; a waiter cancelled at the wrong moment hands it back.
* While idle, each socket is watched: a close from the server, or
  ``idle_timeout`` without use, removes it. Above ``max_idle`` idle sockets
  per sprite the least recently used are closed down to ``drain_to``.
* A ``/control`` dial that fails for any reason (any non-101 answer, a
  refused or reset connection, or a handshake slower than
  ``probe_timeout``) sends the caller to a direct ``/exec`` socket: no
  command can have started on a socket that never opened (the dial carries
  no ``?op=``). The sprite is then remembered as direct-only for
  ``fallback_ttl`` seconds and probed again afterwards. While a sprite's
  support is unknown only one dial (the probe) runs; other callers wait for
  its verdict, so a hanging ``/control`` holds one socket, not a hundred.
  A 401, a 429 or a missing sprite says nothing about ``/control``: the
  caller goes direct this once, where the direct handshake raises that
  error itself, and nothing is remembered.
* Sockets are closed without waiting for the server's close reply
  (:func:`close_now`).

What goes over control: ``sprite.exec()`` without stdin and without a TTY.
Commands with stdin, TTY sessions, ``process()`` and attach use direct
sockets, where the stdin framing is documented (over ``/control`` the
official SDKs disagree on it) and the ``signal`` capability is known.

Turn the pool off for a client with ``client.control = False`` (or pass
:class:`ControlOptions`); the default for every client is
:data:`DEFAULT_CONTROL_OPTIONS`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from ._config import ControlOptions, options_for
from ._errors import APIError, ClientClosedError, SpritesConnectionError
from ._frames import decode_envelope
from ._options import quote_segment
from ._translate import SOCKET_LOST
from ._transport import _timeout
from ._websocket import WSMsgType

if TYPE_CHECKING:
    from ._session import BaseClient
    from ._websocket import WebSocket

__all__ = [
    "ControlLease",
    "ControlPool",
    "close_at_once",
    "close_now",
    "pool_for",
]

logger = logging.getLogger("sprites_async")


class ControlLease:
    """One pooled control socket, lent to one operation at a time."""

    __slots__ = ("_idle_start", "_idle_task", "_pool", "last_used", "sprite", "ws")

    def __init__(self, pool: ControlPool, sprite: str, ws: WebSocket) -> None:
        self._pool = pool
        self.sprite = sprite
        self.ws = ws
        self.last_used = 0.0
        self._idle_task: asyncio.Task[None] | None = None
        # The idle watcher starts one loop turn after the release: a caller
        # that takes the socket straight back (sequential commands) cancels
        # this handle instead of a task that would never have read anything.
        self._idle_start: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"<ControlLease sprite={self.sprite!r} closed={self.ws.closed}>"

    def release(self, *, reusable: bool) -> None:
        """Give the socket back: pooled again if ``reusable``, else closed."""
        self._pool._release(self, reusable)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_DIAL = _Sentinel("dial")  # a slot was reserved for the waiter: go and dial
_UNSUPPORTED = _Sentinel("unsupported")  # /control failed for the sprite: go direct
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)  # distinct classes on Python 3.10
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*_TIMEOUTS, *SOCKET_LOST)
_CUT_CLOSE: tuple[type[BaseException], ...] = (asyncio.CancelledError, StopIteration, *SOCKET_LOST)


class _Waiter:
    __slots__ = ("future", "sprite")

    def __init__(self, sprite: str, future: asyncio.Future[Any]) -> None:
        self.sprite = sprite
        self.future = future


class _SpriteState:
    __slots__ = ("count", "idle", "probe", "probe_at", "supported")

    def __init__(self) -> None:
        self.count = 0  # open or dialling sockets (lent + idle + reserved)
        self.idle: deque[ControlLease] = deque()  # least recently used on the left
        self.supported: bool | None = None
        self.probe_at = 0.0  # supported is False: loop time to probe /control again
        self.probe: asyncio.Future[None] | None = None  # the dial that decides `supported`


class ControlPool:
    """The control sockets of one client. Made by :func:`pool_for`."""

    def __init__(self, client: BaseClient, options: ControlOptions) -> None:
        self._client = client
        self.options = options
        self._sprites: dict[str, _SpriteState] = {}
        self._total = 0
        self._waiters: deque[_Waiter] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None  # the next idle_timeout check
        self.dials = 0
        """Sockets dialled so far (for tests and metrics)."""

    def __repr__(self) -> str:
        idle = sum(len(s.idle) for s in self._sprites.values())
        return f"<ControlPool open={self._total} idle={idle} waiting={len(self._waiters)}>"

    def stats(self, sprite: str | None = None) -> dict[str, int]:
        """Counts of open (incl. dialling) and idle sockets and of waiters."""
        if sprite is None:
            idle = sum(len(s.idle) for s in self._sprites.values())
            return {"open": self._total, "idle": idle, "waiting": len(self._waiters)}
        state = self._sprites.get(sprite, _SpriteState())
        waiting = sum(1 for w in self._waiters if w.sprite == sprite)
        return {"open": state.count, "idle": len(state.idle), "waiting": waiting}

    def supported(self, sprite: str) -> bool | None:
        """True once a dial succeeded; False while ``sprite`` uses direct sockets
        after a failed dial (for ``fallback_ttl``); None before the first dial."""
        state = self._sprites.get(sprite)
        return None if state is None else state.supported

    def forget(self, sprite: str) -> None:
        """Forget what is known about ``sprite`` (e.g. after an upgrade): probe again.

        Its idle sockets are closed too: they lead to the server that was
        replaced, and a command started on a socket that then turns out dead
        could only be reported as an unknown outcome.
        """
        state = self._sprites.get(sprite)
        if state is not None:
            state.supported = None
            state.probe_at = 0.0
            for lease in list(state.idle):
                self._discard(lease)

    def _state(self, sprite: str) -> _SpriteState:
        state = self._sprites.get(sprite)
        if state is None:
            state = self._sprites[sprite] = _SpriteState()
        return state

    def _has_room(self, state: _SpriteState) -> bool:
        return state.count < self.options.max_per_sprite and self._total < self.options.max_total

    # ------------------------------------------------------------------ checkout

    async def acquire(self, sprite: str) -> ControlLease | None:
        """A control socket for ``sprite``, or None if it must use direct ``/exec``."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        state = self._state(sprite)
        loop = asyncio.get_running_loop()
        while True:
            while state.idle:
                lease = state.idle.pop()  # most recently used: least likely to be stale
                if lease._idle_task is None:
                    # Not watched yet (taken back within a loop turn): nothing to wait for.
                    if self._take_unwatched(lease):
                        return lease
                elif await self._take(lease):
                    return lease
            if state.supported is False:
                if loop.time() < state.probe_at:
                    return None
                state.supported = None  # the fallback has expired: probe again
            if state.supported is None and state.probe is not None:
                # Another caller is finding out whether /control works: wait for
                # that verdict instead of dialling more sockets into an endpoint
                # that may hang. Our cancellation must not cancel it.
                await _verdict(state.probe)
                continue
            if not self._has_room(state) and state.count < self.options.max_per_sprite:
                self._evict_idle(sprite)  # the client-wide limit is held by idle sockets
            if self._has_room(state):
                state.count += 1
                self._total += 1
                outcome: Any = _DIAL
            elif self.options.when_full == "direct":
                logger.debug(
                    "sprite %s: all %d pooled control sockets are busy; "
                    "this command uses a direct socket",
                    sprite,
                    state.count,
                )
                return None
            else:
                logger.debug(
                    "sprite %s: all %d pooled control sockets are busy; waiting for one "
                    "(%d callers already waiting)",
                    sprite,
                    state.count,
                    len(self._waiters),
                )
                outcome = await self._wait(sprite)
            if outcome is _UNSUPPORTED:
                return None
            if isinstance(outcome, ControlLease):
                if await self._take(outcome, idle=False):
                    return outcome
                continue
            # A slot is reserved for us.
            return await self._dial(sprite, state)

    def _take_unwatched(self, lease: ControlLease) -> bool:
        start, lease._idle_start = lease._idle_start, None
        if start is not None:
            start.cancel()
        if lease.ws.closed:
            self._release(lease, False)
            return False
        return True

    async def _take(self, lease: ControlLease, *, idle: bool = True) -> bool:
        """Stop the idle watcher of ``lease``; False (and closed) if it is dead."""
        start, lease._idle_start = lease._idle_start, None
        if start is not None:
            start.cancel()
        task, lease._idle_task = lease._idle_task, None
        try:
            if task is not None and not task.done():
                task.cancel()
                # wait(), not ``await task``: a cancellation of ours arriving
                # meanwhile would also end the watcher and be taken for its own.
                await asyncio.wait({task})
                if not task.cancelled():
                    task.result()
        except BaseException:
            self._release(lease, False)
            raise
        if lease.ws.closed:
            self._release(lease, False)
            return False
        return True

    async def _wait(self, sprite: str) -> Any:
        if len(self._waiters) >= self.options.max_waiters:
            raise SpritesConnectionError(
                f"more than {self.options.max_waiters} callers are waiting for a control socket",
                operation="exec",
                sprite=sprite,
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(sprite, future)
        self._waiters.append(waiter)
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed something just as we were cancelled: pass it on.
                got = future.result()
                if isinstance(got, ControlLease):
                    self._release(got, True)
                elif got is _DIAL:
                    self._free_slot(sprite)
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    async def _dial(self, sprite: str, state: _SpriteState) -> ControlLease | None:
        """Open a control socket; None sends the caller to a direct socket.

        While ``supported`` is unknown this dial is the probe: other callers
        wait for its verdict (see :meth:`acquire`).
        """
        client = self._client
        probe: asyncio.Future[None] | None = None
        if state.supported is None and state.probe is None:
            probe = state.probe = asyncio.get_running_loop().create_future()
        try:
            return await self._dial_once(sprite, state, client)
        finally:
            if probe is not None:
                state.probe = None
                probe.set_result(None)

    async def _dial_once(
        self, sprite: str, state: _SpriteState, client: BaseClient
    ) -> ControlLease | None:
        """Any failure of the dial means direct: nothing was started (the dial
        carries no ``?op=``). Handshakes are not retried here, and one slower
        than ``probe_timeout`` is abandoned (aiohttp closes its connection)."""
        try:
            async with _timeout(self.options.probe_timeout):
                ws, _ = await client._ws_connect(
                    "/v1/sprites/" + quote_segment(sprite) + "/control",
                    operation="control",
                    sprite=sprite,
                    autoping=False,
                    retry_handshake=False,
                )
        except (APIError, SpritesConnectionError, *_TIMEOUTS) as exc:
            if isinstance(exc, APIError) and _says_nothing_about_control(exc):
                self._free_slot(sprite)
                logger.debug("control dial to %s refused (%s); trying direct", sprite, exc)
                return None
            if isinstance(exc, _TIMEOUTS) and not isinstance(exc, SpritesConnectionError):
                exc = SpritesConnectionError(
                    f"no answer within {self.options.probe_timeout} s (probe_timeout)"
                )
            logger.info(
                "sprite %s: /control failed (%s); using direct exec sockets for %g s",
                sprite,
                exc,
                self.options.fallback_ttl,
            )
            # Marked before the slot is freed: a waiter handed that slot must
            # go direct, not dial into the same failure again.
            state.supported = False
            state.probe_at = asyncio.get_running_loop().time() + self.options.fallback_ttl
            self._free_slot(sprite)
            self._wake_unsupported(sprite)
            return None
        except BaseException:
            self._free_slot(sprite)
            raise
        self.dials += 1
        state.supported = True
        lease = ControlLease(self, sprite, ws)
        if self._closed:
            self._release(lease, False)
            raise ClientClosedError("the client is closed")
        return lease

    # ------------------------------------------------------------------- checkin

    def _release(self, lease: ControlLease, reusable: bool) -> None:
        state = self._state(lease.sprite)
        if reusable and not self._closed and not lease.ws.closed:
            for waiter in self._waiters:
                if waiter.sprite == lease.sprite and not waiter.future.done():
                    self._waiters.remove(waiter)
                    waiter.future.set_result(lease)
                    return
            if self._waiters and any(
                not w.future.done() and self._state(w.sprite).count < self.options.max_per_sprite
                for w in self._waiters
            ):
                # Someone else waits for room under the client-wide limit:
                # closing this socket gives them a slot.
                self._discard(lease)
                return
            loop = asyncio.get_running_loop()
            lease.last_used = loop.time()
            state.idle.append(lease)
            lease._idle_start = loop.call_soon(self._start_watching, lease)
            if self._sweep is None:
                # Every socket idle now expires after this one: one timer for all.
                self._sweep = loop.call_at(
                    lease.last_used + self.options.idle_timeout, self._expire_idle
                )
            if len(state.idle) > self.options.max_idle:
                while len(state.idle) > self.options.drain_to:
                    self._discard(state.idle.popleft())
            return
        self._discard(lease)

    def _start_watching(self, lease: ControlLease) -> None:
        # Still idle (taking or discarding the lease cancels this call).
        lease._idle_start = None
        lease._idle_task = asyncio.ensure_future(self._watch_idle(lease))

    def _discard(self, lease: ControlLease) -> None:
        """Close ``lease`` and free its slot."""
        start, lease._idle_start = lease._idle_start, None
        if start is not None:
            start.cancel()
        state = self._state(lease.sprite)
        if lease in state.idle:  # not remove() + ValueError: that formats the lease
            state.idle.remove(lease)
        self._free_slot(lease.sprite)
        task, lease._idle_task = lease._idle_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            # Its watcher is inside receive(), which must end before the
            # socket can close without waiting: close it once the watcher
            # has stopped (aclose() waits for that too).
            task.cancel()
            self._closing.add(task)
            task.add_done_callback(functools.partial(self._watcher_stopped, lease.ws))
            return
        self._close(lease.ws)

    def _watcher_stopped(self, ws: WebSocket, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        self._close(ws)

    def _close(self, ws: WebSocket) -> None:
        # Most sockets close at once: a task only for one that must wait.
        if not close_at_once(ws):
            closer = asyncio.ensure_future(self._close_ws(ws))
            self._closing.add(closer)
            closer.add_done_callback(self._closing.discard)

    def _free_slot(self, sprite: str) -> None:
        state = self._state(sprite)
        state.count -= 1
        self._total -= 1
        # Give the freed room to the first waiter that can use it.
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            wstate = self._state(waiter.sprite)
            if wstate.supported is False:
                self._waiters.remove(waiter)
                waiter.future.set_result(_UNSUPPORTED)
                return
            if self._has_room(wstate):
                self._waiters.remove(waiter)
                wstate.count += 1
                self._total += 1
                waiter.future.set_result(_DIAL)
                return

    def _evict_idle(self, sprite: str) -> None:
        """Close the least recently used idle socket of another sprite, if any."""
        oldest: ControlLease | None = None
        for name, state in self._sprites.items():
            if name != sprite and state.idle:
                candidate = state.idle[0]
                if oldest is None or candidate.last_used < oldest.last_used:
                    oldest = candidate
        if oldest is not None:
            self._discard(oldest)

    def _wake_unsupported(self, sprite: str) -> None:
        for waiter in [w for w in self._waiters if w.sprite == sprite]:
            self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_result(_UNSUPPORTED)

    async def _watch_idle(self, lease: ControlLease) -> None:
        """Answer pings, ignore chatter, and drop the socket if the server closes it.

        No receive timeout: ``idle_timeout`` is the pool's one timer
        (:meth:`_expire_idle`), not a timer per idle socket.
        """
        ws = lease.ws
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.TEXT:
                    env = decode_envelope(msg.data)
                    # Stray op.error / keepalive / dial between ops: not ours.
                    logger.debug("idle control socket got %s", env.type if env else "text")
                elif msg.type in (WSMsgType.PONG, WSMsgType.BINARY):
                    continue
                else:
                    break  # closed by the server or failed
        except SOCKET_LOST:
            pass
        if lease._idle_task is asyncio.current_task():
            lease._idle_task = None
            self._discard(lease)

    def _expire_idle(self) -> None:
        """Close the sockets idle for ``idle_timeout``, then wait for the next one to be."""
        self._sweep = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        timeout = self.options.idle_timeout
        now = loop.time()
        due = math.inf
        for state in list(self._sprites.values()):
            idle = state.idle  # least recently used on the left
            while idle and idle[0].last_used + timeout <= now:
                self._discard(idle[0])
            if idle:
                due = min(due, idle[0].last_used + timeout)
        if due != math.inf:
            # Not sooner than an eighth of idle_timeout: a scan of the pool per
            # expiring socket would cost more than the timers this saves.
            self._sweep = loop.call_at(max(due, now + timeout / 8), self._expire_idle)

    async def _close_ws(self, ws: WebSocket) -> None:
        await close_now(ws, self.options.close_timeout)

    async def aclose(self) -> None:
        """Close every idle socket and fail every waiter. Idempotent."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(ClientClosedError("the client is closed"))
        for state in self._sprites.values():
            while state.idle:
                self._discard(state.idle.pop())
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)


async def _verdict(probe: asyncio.Future[None]) -> None:
    """Wait for ``probe`` to be done without cancelling it when we are cancelled.

    ``asyncio.wait({probe})`` without its sets and its second future: up to
    a hundred callers of a sprite wait here for its first dial.
    """
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wake = functools.partial(_wake, waiter)
    probe.add_done_callback(wake)
    try:
        await waiter
    finally:
        probe.remove_done_callback(wake)


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _says_nothing_about_control(exc: APIError) -> bool:
    """A refusal about the request (token, rate, sprite), not about ``/control``.

    The direct handshake raises it again as itself; remembering it as "no
    control channel" would only slow the sprite down once it is fixed.
    """
    if exc.status_code in (401, 429) or (exc.is_not_found and exc.status_code != 404):
        return True
    return exc.status_code == 404 and "sprite not found" in exc.message.lower()


async def close_now(ws: WebSocket, timeout: float = 1.0) -> None:
    """Send our close frame and let the connection go; never wait for the reply.

    aiohttp's ``close()`` writes the frame, then waits for the peer's close
    frame. A peer that stopped reading never sends one (Fly's October 2025
    ``pkg/wsexec`` once stdin is closed), and waiting
    for it costs every command its whole close timeout. :func:`close_at_once`
    cuts that wait at its first suspension; aiohttp then closes the
    transport, which still flushes the close frame first.

    Only if another task was still inside ``receive()`` (aiohttp first hands
    it the close, so the frame is not out yet) does a second, bounded
    ``close()`` follow.
    """
    if close_at_once(ws):
        return
    try:
        async with _timeout(timeout):
            await ws.close()
    except _CLOSE_ERRORS:
        pass


def close_at_once(ws: WebSocket) -> bool:
    """Close ``ws`` without suspending, if that can be done; True once it is closed.

    What a zero deadline around ``ws.close()`` does, without its timer, its
    task wake-up and its loop turn (this runs once per command): the close
    runs up to its first suspension, by which point the close frame is
    written and only the peer's reply is awaited, and is cancelled there,
    exactly as a task cancels its coroutine; aiohttp then drops the
    connection, flushing the frame first. False when the close had to wait
    for something else: another task still inside ``receive()``, which must
    hand the socket over first (:func:`close_now` then waits a bounded time).
    """
    if ws.closed:
        return True
    closing = ws.close()
    try:
        closing.send(None)
    except StopIteration:
        return True
    except _CLOSE_ERRORS:
        return ws.closed
    try:
        closing.throw(asyncio.CancelledError())
    except _CUT_CLOSE:
        pass
    return ws.closed


def forget_sprite(client: BaseClient, sprite: str) -> None:
    """Have ``client``'s pool probe ``sprite`` afresh, if the client has a pool at all."""
    pool = client._control_pool
    if pool is not None and not pool._closed:
        pool.forget(sprite)


def pool_for(client: BaseClient) -> ControlPool:
    """The control pool of ``client`` (made on first use, closed by ``client.aclose()``)."""
    pool = client._control_pool
    if pool is None or pool._closed:
        pool = ControlPool(client, options_for(client))
        client._add_closer(pool.aclose)
        client._control_pool = pool
    return pool
