"""The streamed body the stream seam hands out: aiohttp's reads, the SDK's errors.

:meth:`BaseClient._stream` yields a :class:`Body`, as
:meth:`BaseClient._ws_connect` returns a
:class:`~sprites_async._websocket.WebSocket`: the reads the SDK uses of
aiohttp's response, each failure translated by the one
:func:`~sprites_async._translate._translate`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aiohttp
from multidict import CIMultiDictProxy

from ._errors import SpritesConnectionError
from ._translate import _TRANSPORT_ERRORS, _translate

__all__ = ["Body"]

T = TypeVar("T")


class Body:
    """A response whose body is still streaming in: what the stream seam yields.

    ``status`` and ``headers`` are the response's. Every read (``read``,
    ``readany``, ``readchunk`` and the ``iter_*`` iterators) raises the SDK's
    errors: a connection reset or a stall while the body streams in is a
    :class:`SpritesConnectionError` (:class:`SpritesTimeoutError` for the
    stall) with the operation, sprite and request ids of this response,
    chained to what aiohttp raised.
    """

    __slots__ = ("_method", "_operation", "_path", "_resp", "_sprite", "headers", "status")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
    ) -> None:
        self._resp = resp
        self._method = method
        self._path = path
        self._operation = operation
        self._sprite = sprite
        self.status: int = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers

    def __repr__(self) -> str:
        return f"<Body {self._method} {self._path} status={self.status}>"

    @property
    def content(self) -> Body:
        """This object, for code that reads aiohttp's ``response.content``."""
        return self

    @property
    def total_bytes(self) -> int:
        """Bytes of the body received so far."""
        return self._resp.content.total_bytes

    def _error(self, exc: BaseException) -> SpritesConnectionError:
        return _translate(
            exc,
            self._method,
            self._path,
            self._operation,
            self._sprite,
            headers=self.headers,
            during="reading the body",
        )

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body; the whole rest of it when ``n`` is -1."""
        try:
            if n < 0:
                return await self._resp.read()
            return await self._resp.content.read(n)
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    async def readany(self) -> bytes:
        """Whatever part of the body has arrived (waiting for some); b"" at its end."""
        try:
            return await self._resp.content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    async def readchunk(self) -> tuple[bytes, bool]:
        """The next piece and whether it ends an HTTP chunk; ``(b"", False)`` at the end."""
        try:
            return await self._resp.content.readchunk()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    def iter_chunked(self, n: int) -> _Pieces[bytes]:
        """The body in pieces of at most ``n`` bytes."""
        return _Pieces(lambda: self.read(n), b"")

    def iter_any(self) -> _Pieces[bytes]:
        """The body in the pieces it arrives in."""
        return _Pieces(self.readany, b"")

    def iter_chunks(self) -> _Pieces[tuple[bytes, bool]]:
        """``(data, end_of_http_chunk)`` pairs, as aiohttp's ``iter_chunks``."""
        return _Pieces(self.readchunk, (b"", False))


class _Pieces(Generic[T]):
    """An async iterator over ``read()`` results until ``end`` comes.

    A plain iterator, not an async generator: a caller that stops early
    leaves nothing for the event loop to finalize.
    """

    __slots__ = ("_end", "_read")

    def __init__(self, read: Callable[[], Awaitable[T]], end: T) -> None:
        self._read = read
        self._end = end

    def __aiter__(self) -> _Pieces[T]:
        return self

    async def __anext__(self) -> T:
        piece = await self._read()
        if piece == self._end:
            raise StopAsyncIteration
        return piece
