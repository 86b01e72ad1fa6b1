"""The WebSocket the seam hands out: aiohttp's messages, the SDK's errors.

:meth:`BaseClient._ws_connect` wraps every socket it opens in a
:class:`WebSocket`. Its methods are the ones the SDK uses of aiohttp's
``ClientWebSocketResponse`` and ``receive`` returns aiohttp's ``WSMessage``
objects unchanged, so code reading messages by ``.type`` does not change.
What changes is what they raise: every aiohttp/OS failure (a reset, a write
to a closing transport, a ``receive`` deadline) comes out as the error the
seam translates it to (:class:`SpritesConnectionError`, or
:class:`SpritesTimeoutError` for a timeout) with the operation, sprite and
request ids of the upgrade, chained to the original. Cancellation passes
through untouched.

The socket keeps what its errors need (path, operation, sprite, the upgrade's
headers) in slots of its own rather than in a closure per socket: an exec
session holds one open socket for its whole life, and thousands may be open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Literal, TypeAlias

import aiohttp
from aiohttp import WSMessage, WSMsgType

from ._translate import _TRANSPORT_ERRORS, _is_bare_timeout, _translate

if TYPE_CHECKING:
    from ._errors import SpritesConnectionError

    _Raw: TypeAlias = aiohttp.ClientWebSocketResponse[Literal[True]]

__all__ = ["WSMessage", "WSMsgType", "WebSocket"]

# What an open socket's methods raise when the transport fails is what any
# request raises (the seam's _TRANSPORT_ERRORS); sends also RuntimeError
# (older aiohttp's "Cannot write to closing transport"). A RuntimeError from
# receive() is a second concurrent receive: a bug to show, not a lost connection.
_RECEIVE_FAILURES = _TRANSPORT_ERRORS
_FAILURES: tuple[type[BaseException], ...] = (*_RECEIVE_FAILURES, RuntimeError)


class WebSocket:
    """An open WebSocket whose every failure is one of the SDK's errors.

    ``receive`` returns aiohttp's ``WSMessage`` (``.type``, ``.data``,
    ``.extra``); a ``CLOSED``/``ERROR`` message is still how a dropped
    connection shows up while receiving. Anything raised is a
    :class:`SpritesConnectionError` (a :class:`SpritesTimeoutError` when a
    ``receive`` deadline passes, which is also an ``asyncio.TimeoutError``),
    or a cancellation.
    """

    __slots__ = ("_headers", "_operation", "_path", "_quiet", "_sprite", "_ws")

    def __init__(
        self,
        ws: _Raw,
        path: str,
        operation: str,
        sprite: str | None,
        headers: Mapping[str, str],
        *,
        quiet: bool = False,
    ) -> None:
        self._ws = ws
        self._path = path
        self._operation = operation
        self._sprite = sprite
        self._headers = headers
        # Opened with autoping=False and no heartbeat: then aiohttp's receive()
        # without a deadline never writes and never raises a transport error
        # (see receive), so it needs no wrapper of ours.
        self._quiet = quiet

    def __repr__(self) -> str:
        return f"<WebSocket closed={self._ws.closed} close_code={self._ws.close_code}>"

    def _translate(self, exc: BaseException, during: str) -> SpritesConnectionError:
        return _translate(
            exc,
            "GET",
            self._path,
            self._operation,
            self._sprite,
            headers=self._headers,
            during=during,
        )

    @property
    def closed(self) -> bool:
        """True once the socket is closed (by either side)."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code received or sent, None while open."""
        return self._ws.close_code

    def exception(self) -> BaseException | None:
        """What ended the socket abnormally, as the SDK's error; None otherwise."""
        exc = self._ws.exception()
        if exc is None or _is_bare_timeout(exc):
            # A bare timeout is aiohttp's ws_close wait, cut on purpose by close().
            return None
        error = self._translate(exc, "WebSocket")
        error.__cause__ = exc
        return error

    def receive(self, timeout: float | None = None) -> Awaitable[WSMessage]:
        """The next message; ``timeout`` bounds the wait (SpritesTimeoutError).

        Used as ``await ws.receive()``. On a quiet socket (no autoping, no
        heartbeat) without a ``timeout`` this is aiohttp's own ``receive()``,
        with no coroutine of ours around each message (an idle session waits
        in it for its whole life): there aiohttp turns every failure of the
        connection into a ``CLOSED``/``ERROR`` message and raises only a
        cancellation or the ``RuntimeError`` of a second concurrent receive.
        A deadline (its ``asyncio.TimeoutError``) or an automatic pong (a
        write that can fail) takes the translating path.
        """
        if timeout is None and self._quiet:
            return self._ws.receive()
        return self._receive(timeout)

    async def _receive(self, timeout: float | None) -> WSMessage:
        try:
            return await self._ws.receive(timeout)
        except _RECEIVE_FAILURES as exc:
            raise self._translate(exc, "WebSocket receive") from exc

    async def send_str(self, data: str) -> None:
        """Send a text frame."""
        try:
            await self._ws.send_str(data)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket send") from exc

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary frame."""
        try:
            await self._ws.send_bytes(data)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket send") from exc

    async def ping(self, message: bytes = b"") -> None:
        """Send a ping."""
        try:
            await self._ws.ping(message)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket ping") from exc

    async def pong(self, message: bytes = b"") -> None:
        """Answer a ping."""
        try:
            await self._ws.pong(message)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket pong") from exc

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send a close frame and let the connection go: the reply is not awaited.

        The seam opens every socket with aiohttp's ``ws_close=0``: after our
        close frame is written, aiohttp's wait for the server's reply ends at
        its first suspension and the connection is closed (a server that
        closed first has already replied). Returns False if the socket was
        already closed. Writing the frame itself can still wait when the
        peer stopped reading and the send buffer is full; callers that must
        bound that too use ``close_now`` (``_control``).
        """
        try:
            return await self._ws.close(code=code, message=message)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket close") from exc
