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

The seam hands the wrapper its translation, so this module imports nothing
of the session and the session can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeAlias

import aiohttp
from aiohttp import WSMessage, WSMsgType

from ._translate import _TRANSPORT_ERRORS

if TYPE_CHECKING:
    from ._errors import SpritesConnectionError

    _Raw: TypeAlias = aiohttp.ClientWebSocketResponse[Literal[True]]

__all__ = ["Translate", "WSMessage", "WSMsgType", "WebSocket"]

Translate: TypeAlias = "Callable[[BaseException, str], SpritesConnectionError]"
"""The seam's translation of a failure during one step (``"receive"``, ``"send"`` ...)."""

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

    __slots__ = ("_translate", "_ws")

    def __init__(self, ws: _Raw, translate: Translate) -> None:
        self._ws = ws
        self._translate = translate

    def __repr__(self) -> str:
        return f"<WebSocket closed={self._ws.closed} close_code={self._ws.close_code}>"

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
        if exc is None:
            return None
        error = self._translate(exc, "WebSocket")
        error.__cause__ = exc
        return error

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The next message; ``timeout`` bounds the wait (SpritesTimeoutError)."""
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
        """Send a close frame and wait (aiohttp's ``ws_close`` bound) for the reply.

        Returns False if the socket was already closed. Callers that must not
        wait for the reply use ``close_now`` (``_control``).
        """
        try:
            return await self._ws.close(code=code, message=message)
        except _FAILURES as exc:
            raise self._translate(exc, "WebSocket close") from exc
