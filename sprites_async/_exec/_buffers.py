"""Output buffers: what a live session holds for its readers, what ``exec()`` keeps."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._session import ExecSession

__all__ = ["DEFAULT_MAX_OUTPUT", "OutputStream"]

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
