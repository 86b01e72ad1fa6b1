"""Output buffers: what a live session holds for its readers, what ``exec()`` keeps."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
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

    def arm(self) -> asyncio.Future[None]:
        """Clear the flag; a future done at the next :meth:`set` (see :meth:`disarm`).

        A reader awaits it directly: no coroutine frame of ours stays alive
        under each of thousands of waiting readers.
        """
        self._on = False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        return fut

    def disarm(self, fut: asyncio.Future[None]) -> None:
        """Forget a future of :meth:`arm` (once awaited, or cancelled)."""
        waiters = self._waiters
        if waiters is not None and fut in waiters:
            waiters.remove(fut)

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


_READER_NAMES = {0: "the events", 1: "stdout", 2: "stderr"}


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

    Thousands of sessions may be alive at once, most of them idle: a queue
    is made when the first item for it arrives (a stream nobody writes to
    never gets one), the events are a plain list (usually just the session
    info), and who reads or wants what are bit masks, not sets.
    """

    __slots__ = (
        "_demand",
        "_readers",
        "dropped",
        "held",
        "max_events",
        "misc",
        "out",
        "room",
        "seq",
        "size",
        "waiting",
        "wake",
    )

    def __init__(self, size: int, max_events: int) -> None:
        self.size = size
        self.max_events = max_events
        # Index 1: stdout, 2: stderr; None until that stream has output
        # (with a sink, as for ``exec()``, output never comes here at all).
        self.out: list[deque[tuple[int, bytes]] | None] = [None, None, None]
        self.misc: list[tuple[int, ExecEvent]] | None = None
        # Per stream (index 1: stdout, 2: stderr): bytes queued, and bytes
        # dropped (made with the first drop: most sessions never drop any).
        self.held = [0, 0, 0]
        self.dropped: list[int] | None = None
        # Bit masks (1 << stream): the streams someone has asked for (the
        # events ask for both), and the readers (0: the events) at work.
        # ``waiting`` counts pending wait() calls: see must_pause.
        self._demand = 0
        self._readers = 0
        self.waiting = 0
        self.seq = 0
        self.wake = _Flag()
        self.room = _Flag(on=True)

    def push(self, stream: int, data: bytes) -> None:
        """Queue output of a stream (the protocol's ``on_output``)."""
        self.seq += 1
        queue = self.out[stream]
        if queue is None:
            queue = self.out[stream] = deque()
        queue.append((self.seq, data))
        self.held[stream] += len(data)
        self.wake.set()

    def push_event(self, event: ExecEvent) -> None:
        """Queue an event (session info, port); the oldest go beyond ``max_events``."""
        self.seq += 1
        misc = self.misc
        if misc is None:
            misc = self.misc = []
        misc.append((self.seq, event))
        if len(misc) > self.max_events:
            del misc[0]  # rare (port events beyond the bound), and the list is short
        self.wake.set()

    def discard(self) -> None:
        """Forget the queued output: nobody will read it."""
        self.out = [None, None, None]
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
        if held[1] < size and held[2] < size:
            return False  # the common case: nothing is full
        demand = self._demand
        interest = bool(demand) or self.waiting > 0
        for stream in (1, 2):
            if held[stream] < size:
                continue
            if demand & (1 << stream) or not interest:
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
        if not dropped:
            return
        counts = self.dropped
        if counts is None:
            counts = self.dropped = [0, 0, 0]
        if not counts[stream]:
            what = "stdout" if stream == 1 else "stderr"
            logger.debug("nobody reads %s of a session; dropping its oldest output", what)
        counts[stream] += dropped

    def want(self, *streams: int) -> None:
        """Someone reads these streams now.

        The reader may have paused on a full stream that it can now drop
        from instead (see :meth:`must_pause`).
        """
        mask = 0
        for stream in streams:
            mask |= 1 << stream
        if self._demand & mask != mask:
            self._demand |= mask
            self.room.set()

    def claim(self, reader: int) -> None:
        """Take a stream (0: the events) for one coroutine.

        Two coroutines reading one stream would each get a random half of it.
        """
        bit = 1 << reader
        if self._readers & bit:
            what = _READER_NAMES[reader]
            raise RuntimeError(f"another coroutine is already reading {what} of this session")
        self._readers |= bit

    def release(self, reader: int) -> None:
        """The coroutine reading ``reader`` (see :meth:`claim`) is done with it."""
        self._readers &= ~(1 << reader)

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
        best: int | None = None  # 0: the events, else the stream
        first = 0
        misc = self.misc
        if misc:
            best, first = 0, misc[0][0]
        for stream in (1, 2):
            queue = self.out[stream]
            if queue and (best is None or queue[0][0] < first):
                best, first = stream, queue[0][0]
        if best is None:
            return None
        if best == 0:
            assert misc is not None
            return misc.pop(0)[1]
        queue = self.out[best]
        assert queue is not None
        _, data = queue.popleft()
        self._consumed(best, len(data))
        return OutputEvent(stream="stdout" if best == 1 else "stderr", data=data)


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

    def __eq__(self, other: object) -> bool:
        # The session makes one on each access of ``proc.stdout``.
        if not isinstance(other, OutputStream):
            return NotImplemented
        return self._session is other._session and self._id == other._id

    def __hash__(self) -> int:
        return hash((id(self._session), self._id))

    def __repr__(self) -> str:
        return f"<OutputStream {'stdout' if self._id == 1 else 'stderr'} of {self._session!r}>"

    def __aiter__(self) -> OutputStream:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        # The session's coroutine itself (it raises StopAsyncIteration at
        # the end): no frame of ours stays alive under a waiting reader.
        return self._session._next_output(self._id)

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
        counts = self._session._buffers.dropped
        return 0 if counts is None else counts[self._id]


class _Kept:
    """One stream of a finished command: its first and last bytes within a bound.

    The first ``limit // 2`` bytes and the last ``limit - limit // 2`` are
    kept; what lies between is counted in ``dropped``. The start says what
    ran, the end why it failed (a build log's error is at its end).

    Most commands print one small chunk: it is kept as the bytes it came in
    and given back as is, with no copy; a buffer is made from the second chunk.
    """

    __slots__ = ("dropped", "head", "head_limit", "tail", "tail_len", "tail_limit")

    def __init__(self, limit: int | None) -> None:
        self.head: bytes | bytearray = b""
        self.head_limit = limit // 2 if limit is not None else None
        self.tail_limit = limit - limit // 2 if limit is not None else 0
        # Chunks, not one bytearray: trimming its front would move the
        # whole tail once per frame. Made once the head is full.
        self.tail: deque[bytes] | None = None
        self.tail_len = 0
        self.dropped = 0

    def _to_head(self, data: bytes) -> None:
        head = self.head
        if not head and type(data) is bytes:
            self.head = data  # immutable: safe to keep without a copy
        elif isinstance(head, bytearray):
            head += data
        else:
            self.head = bytearray(head) + data

    def add(self, data: bytes) -> None:
        if self.head_limit is None:
            self._to_head(data)
            return
        room = self.head_limit - len(self.head)
        if room > 0:
            self._to_head(data[:room] if len(data) > room else data)
            data = data[room:]
        if not data:
            return
        tail = self.tail
        if tail is None:
            tail = self.tail = deque()
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
        head = self.head
        if not self.tail:
            return head if type(head) is bytes else bytes(head)
        return bytes(head) + b"".join(self.tail)


class _Collector:
    """What ``exec()`` keeps of each stream: head and tail within ``limit`` (see _Kept).

    A stream's keeper is made with its first output (stderr is mostly empty).
    """

    __slots__ = ("limit", "streams")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.streams: dict[int, _Kept] = {}

    def add(self, stream: int, data: bytes) -> None:
        kept = self.streams.get(stream)
        if kept is None:
            kept = self.streams[stream] = _Kept(self.limit)
        kept.add(data)

    def value(self, stream: int) -> bytes:
        kept = self.streams.get(stream)
        return b"" if kept is None else kept.value()

    def dropped(self, stream: int) -> int:
        kept = self.streams.get(stream)
        return 0 if kept is None else kept.dropped
