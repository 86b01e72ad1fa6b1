"""Output buffers: what a live session holds for its readers, what ``exec()`` keeps."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ._events import ExecEvent, OutputEvent

if TYPE_CHECKING:
    from ._session import ExecSession

__all__ = ["DEFAULT_MAX_OUTPUT", "OutputBuffers", "OutputStream"]

logger = logging.getLogger("sprites_async")

DEFAULT_MAX_OUTPUT = 8 << 20
"""Bytes of each stream ``exec()`` keeps by default (8 MiB: its first and last 4 MiB)."""


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


class OutputBuffers:
    """What a live session holds for its readers: a queue per stream, and its events.

    Each stream has its own bound (``size`` bytes). A full stream that
    someone reads holds the socket back (backpressure: the command slows
    down). A full stream that nobody reads while the other one is read (or
    ``wait()`` is waiting) must not block it: its oldest bytes are dropped
    and counted in ``dropped``. Before anyone reads anything, a full stream
    holds the socket back, so that nothing is lost before the caller starts
    reading. Output and events carry one sequence number, so that the event
    iterator gives them back in the order they arrived.
    """

    __slots__ = (
        "demand",
        "dropped",
        "held",
        "misc",
        "out",
        "readers",
        "room",
        "seq",
        "size",
        "waiting",
        "wake",
    )

    def __init__(self, size: int, max_events: int, *, queues: bool = True) -> None:
        self.size = size
        # With a sink (``exec()``) output never queues here: share empty ones.
        self.out: dict[int, deque[tuple[int, bytes]]] = (
            {1: deque(), 2: deque()} if queues else _NO_QUEUES
        )
        self.misc: deque[tuple[int, ExecEvent]] = deque(maxlen=max_events)
        # Per stream (index 1: stdout, 2: stderr): bytes queued, bytes dropped.
        self.held = [0, 0, 0]
        self.dropped = [0, 0, 0]
        # Streams someone has asked for (the events ask for both), and how
        # many wait() calls are pending: see must_pause.
        self.demand: set[int] = set()
        self.waiting = 0
        self.seq = 0
        self.readers: set[int] = set()
        self.wake = _Flag()
        self.room = _Flag(on=True)

    def push(self, stream: int, data: bytes) -> None:
        """Queue output of a stream (the protocol's ``on_output``)."""
        self.seq += 1
        self.out[stream].append((self.seq, data))
        self.held[stream] += len(data)
        self.wake.set()

    def push_event(self, event: ExecEvent) -> None:
        """Queue an event (session info, port); the oldest go beyond ``max_events``."""
        self.seq += 1
        self.misc.append((self.seq, event))
        self.wake.set()

    def discard(self) -> None:
        """Forget the queued output: nobody will read it."""
        for queue in self.out.values():
            queue.clear()
        self.held = [0, 0, 0]
        self.room.set()

    def must_pause(self, early: int) -> bool:
        """Whether the socket must not be read until output is read (see the class docstring).

        ``early`` counts bytes whose stream is not known yet (an attach
        before ``session_info``): they hold the socket back too.
        """
        size = self.size
        if early >= size:
            return True
        held = self.held
        interest = bool(self.demand) or self.waiting > 0
        for stream in (1, 2):
            if held[stream] < size:
                continue
            if stream in self.demand or not interest:
                return True
            self._drop_oldest(stream)
        return False

    def _drop_oldest(self, stream: int) -> None:
        queue = self.out[stream]
        held = self.held
        dropped = 0
        while queue and held[stream] >= self.size:
            _, data = queue.popleft()
            held[stream] -= len(data)
            dropped += len(data)
        if dropped and not self.dropped[stream]:
            what = "stdout" if stream == 1 else "stderr"
            logger.debug("nobody reads %s of a session; dropping its oldest output", what)
        self.dropped[stream] += dropped

    def want(self, *streams: int) -> None:
        """Someone reads these streams now.

        The reader may have paused on a full stream that it can now drop
        from instead (see :meth:`must_pause`).
        """
        if not self.demand.issuperset(streams):
            self.demand.update(streams)
            self.room.set()

    def claim(self, reader: int) -> None:
        """Take a stream (0: the events) for one coroutine.

        Two coroutines reading one stream would each get a random half of it.
        """
        if reader in self.readers:
            what = {0: "the events", 1: "stdout", 2: "stderr"}[reader]
            raise RuntimeError(f"another coroutine is already reading {what} of this session")
        self.readers.add(reader)

    def _consumed(self, stream: int, n: int) -> None:
        self.held[stream] -= n
        if self.held[stream] < self.size // 2:
            self.room.set()

    def pop(self, stream: int) -> bytes | None:
        """The oldest queued chunk of a stream, or None."""
        queue = self.out[stream]
        if not queue:
            return None
        _, data = queue.popleft()
        self._consumed(stream, len(data))
        return data

    def pop_event(self) -> ExecEvent | None:
        """The oldest queued output or event of all, or None."""
        best: deque[tuple[int, Any]] | None = None
        for queue in (self.out[1], self.out[2], self.misc):
            if queue and (best is None or queue[0][0] < best[0][0]):
                best = queue
        if best is None:
            return None
        _, item = best.popleft()
        if best is self.misc:
            event: ExecEvent = item
            return event
        stream = 1 if best is self.out[1] else 2
        self._consumed(stream, len(item))
        return OutputEvent(stream="stdout" if stream == 1 else "stderr", data=item)

    async def wait_wake(self) -> None:
        """Wait for the next output, event or end."""
        self.wake.clear()
        await self.wake.wait()


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
        return self._session._buffers.dropped[self._id]


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
