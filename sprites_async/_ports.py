"""Watching the ports that processes inside a sprite open and close (``/ports/watch``).

``async for event in sprite.ports.watch()`` yields a :class:`PortList`
snapshot of every listening port first, then a :class:`PortOpened` or
:class:`PortClosed` per change, for all processes in the sprite. Each event
carries the port, the address to reach it (give it to
:func:`~sprites_async.open_connection` or :func:`~sprites_async.forward`)
and the listening process. An event of a type this client does not know
arrives as :class:`~sprites_async.OtherEvent`, and a message it cannot read
is skipped with a warning: a newer server must not break an older client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from ._control import close_now
from ._errors import NotFoundError, SpritesConnectionError
from ._options import ExtraBody, ExtraHeaders, ExtraQuery, request_options
from ._resource import AsyncResource
from ._streams import OtherEvent, event_decoder
from ._websocket import WSMsgType

if TYPE_CHECKING:
    from ._options import RequestOptions
    from ._sprites import Sprite
    from ._websocket import WebSocket

__all__ = [
    "PortClosed",
    "PortInfo",
    "PortList",
    "PortOpened",
    "PortWatch",
    "PortsResource",
    "PortsWatchEvent",
    "PortsWatchNotSupportedError",
]

logger = logging.getLogger("sprites_async")

HEARTBEAT = 15.0
"""Ping interval of the watch's WebSocket, in seconds: a watch may stay
silent for hours, and a ping every 15 s keeps it open through proxies and
finds a dead peer."""

_CLEAN_CLOSE = frozenset({1000, 1001})


class PortsWatchNotSupportedError(NotFoundError):
    """``/ports/watch`` answered 404: this sprite's version (or the emulator) lacks it."""


class PortInfo(msgspec.Struct, kw_only=True):
    """A listening port inside the sprite.

    Attributes:
        port: The TCP port.
        address: Where to reach it (an IP in practice; treat as opaque).
        pid: The listening process.
    """

    port: int
    address: str | None = None
    pid: int | None = None


class PortList(msgspec.Struct, tag="port_list", tag_field="type", kw_only=True):
    """The snapshot sent first: every port open when the watch started."""

    ports: list[PortInfo] = msgspec.field(default_factory=list)

    @property
    def type(self) -> str:
        """``"port_list"``."""
        return "port_list"


class PortOpened(PortInfo, tag="port_opened", tag_field="type", kw_only=True):
    """A process started listening on a port."""

    @property
    def type(self) -> str:
        """``"port_opened"``."""
        return "port_opened"


class PortClosed(PortInfo, tag="port_closed", tag_field="type", kw_only=True):
    """A port stopped listening."""

    @property
    def type(self) -> str:
        """``"port_closed"``."""
        return "port_closed"


PortsWatchEvent = PortList | PortOpened | PortClosed | OtherEvent
"""What :meth:`PortsResource.watch` yields."""

_decode_port_event = event_decoder(
    PortList | PortOpened | PortClosed,
    frozenset({"port_list", "port_opened", "port_closed"}),
    "ports watch",
)


class PortWatch(AsyncResource):
    """An open ports watch: ``async for event in watch``; ``async with`` closes it."""

    def __init__(self, sprite: Sprite, options: RequestOptions | None = None) -> None:
        self._sprite = sprite
        self._options = options
        self._ws: WebSocket | None = None
        self._closed = False

    async def _connect(self) -> WebSocket:
        if self._ws is not None:
            return self._ws
        if self._closed:
            raise StopAsyncIteration
        sprite = self._sprite
        try:
            ws, _ = await sprite.client._ws_connect(
                sprite.path + "/ports/watch",
                operation="ports watch",
                sprite=sprite.name,
                heartbeat=HEARTBEAT,
                options=self._options,
            )
        except NotFoundError as exc:
            if exc.message.strip() == "sprite not found":
                raise
            raise PortsWatchNotSupportedError(
                "this sprite does not support watching ports (GET /ports/watch answered 404; "
                "it needs a newer sprite version)",
                status_code=exc.status_code,
                body=exc.body,
                headers=exc.headers,
                operation="ports watch",
                sprite=sprite.name,
            ) from exc
        self._ws = ws
        return ws

    def __aiter__(self) -> PortWatch:
        return self

    async def __anext__(self) -> PortsWatchEvent:
        try:
            ws = await self._connect()
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    try:
                        event: PortsWatchEvent = _decode_port_event(msg.data.encode())
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        logger.warning("ports watch: skipping a bad message (%s)", exc)
                        continue
                    return event
                if msg.type == WSMsgType.BINARY:
                    continue
                if msg.type == WSMsgType.ERROR:
                    raise SpritesConnectionError(
                        f"the ports watch failed: {msg.data}",
                        operation="ports watch",
                        sprite=self._sprite.name,
                    )
                code = ws.close_code
                if code not in _CLEAN_CLOSE:
                    raise SpritesConnectionError(
                        f"the ports watch was closed with code {code}",
                        operation="ports watch",
                        sprite=self._sprite.name,
                    )
                raise StopAsyncIteration
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the watch. Idempotent."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await close_now(ws)  # never wait for the server's close reply

    async def _aopen(self) -> None:
        await self._connect()


class PortsResource:
    """Ports of one sprite: ``sprite.ports``."""

    def __init__(self, sprite: Sprite) -> None:
        self._sprite = sprite

    def __repr__(self) -> str:
        return f"<PortsResource sprite={self._sprite.name!r}>"

    def watch(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> PortWatch:
        """Watch ports being opened and closed, starting with a :class:`PortList` snapshot.

        Raises (when iteration starts):
            PortsWatchNotSupportedError: The sprite (or emulator) has no ``/ports/watch``.
        """
        return PortWatch(self._sprite, request_options(extra_headers, extra_query, extra_body))
