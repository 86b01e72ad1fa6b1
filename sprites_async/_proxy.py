"""TCP tunnels into a sprite (``/proxy``, section 10) and the ports watch (section 11.1).

* :func:`open_connection` — ``reader, writer`` asyncio streams for one TCP
  connection to a port inside the sprite, like :func:`asyncio.open_connection`.
* :func:`forward` — a local listener on ``127.0.0.1``; every accepted
  connection gets its own ``/proxy`` WebSocket::

      async with forward(sprite, 8080) as fwd:
          async with aiohttp.ClientSession() as http:
              await http.get(f"http://127.0.0.1:{fwd.local_port}/")

* :class:`PortsResource` — ``async for event in ports.watch()``: ports being
  opened and closed by processes in the sprite.

Each tunnel sends the init frame ``{"host":…,"port":…}``, waits for
``{"status":"connected"}``, then relays bytes both ways as binary frames of
at most 32 KiB (section 1.8), reading the next chunk only when the previous
one was written (backpressure in both directions). The protocol has no
half-close: when the local side finishes sending, the tunnel is closed.
If the tunnel breaks abnormally, the local socket is reset rather than
closed, so the local client sees an error instead of a clean end of data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from ._control import close_now
from ._errors import NotFoundError, SpritesConnectionError, SpritesTimeoutError
from ._session import ExtraBody, ExtraHeaders, ExtraQuery, request_options
from ._streams import OtherEvent, event_decoder
from ._validation import check_host, check_port

if TYPE_CHECKING:
    from ._session import RequestOptions, SpritesClient, WebSocket
    from ._sprites import Sprite

__all__ = [
    "PortClosed",
    "PortsWatchEvent",
    "PortForward",
    "PortInfo",
    "PortList",
    "PortOpened",
    "PortWatch",
    "PortsResource",
    "PortsWatchNotSupportedError",
    "ProxyError",
    "ProxyRejectedError",
    "ProxyTargetUnreachableError",
    "forward",
    "open_connection",
]

logger = logging.getLogger("sprites_async")

FRAME_SIZE = 32 * 1024
"""The largest binary frame sent (the server's own relay reads 32 KiB)."""
CONNECT_REPLY_TIMEOUT = 30.0
"""Seconds to wait for ``{"status":"connected"}`` after the init frame."""
HEARTBEAT = 15.0
"""WebSocket ping interval of a tunnel (section 12, item 6)."""
CLOSE_TIMEOUT = 1.0
"""Bound of a close in the rare case it cannot be done at once (see ``close_now``)."""

_CLEAN_CLOSE = frozenset({1000, 1001})
_UPSTREAM_CLOSED = "upstream closed"
_CLOSING = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED})


# --------------------------------------------------------------------- errors


class ProxyError(SpritesConnectionError):
    """A tunnel could not be opened, or broke.

    Attributes:
        close_code: The WebSocket close code the server sent, if any.
        reason: The server's reason or status text.
        target: ``host:port`` asked for.
    """

    def __init__(
        self,
        message: str,
        *,
        sprite: str | None = None,
        target: str | None = None,
        close_code: int | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message, operation="proxy", sprite=sprite)
        self.close_code = close_code
        self.reason = reason
        self.target = target


class ProxyRejectedError(ProxyError):
    """Close ``1003``: the server refused the init message (bad JSON, bad port)."""


class ProxyTargetUnreachableError(ProxyError):
    """Close ``1011`` or a non-``connected`` status: the sprite could not reach the target."""


class PortsWatchNotSupportedError(NotFoundError):
    """``/ports/watch`` answered 404: this sprite's version (or the emulator) lacks it."""


# --------------------------------------------------------------------- tunnel


class _Reply(msgspec.Struct):
    status: str = ""
    target: str | None = None
    error: str | None = None
    message: str | None = None


async def _close_ws(ws: WebSocket) -> None:
    # Never wait for the server's close reply (aiohttp's close() waits up
    # to its timeout for it): say goodbye and drop the connection, as exec does.
    await close_now(ws, CLOSE_TIMEOUT)


async def _open_tunnel(
    sprite: Sprite, host: str, port: int, options: RequestOptions | None = None
) -> tuple[WebSocket, str]:
    """Dial ``/proxy``, send the init frame, wait for ``connected``; return (ws, target)."""
    target = f"{host}:{port}"
    ws, _ = await sprite.client._ws_connect(
        sprite.path + "/proxy",
        operation="proxy",
        sprite=sprite.name,
        heartbeat=HEARTBEAT,
        options=options,
    )
    try:
        try:
            await ws.send_str(msgspec.json.encode({"host": host, "port": port}).decode())
        except (OSError, RuntimeError) as exc:  # closed under us (e.g. the client closed)
            raise ProxyError(
                f"sending the proxy request for {target} failed: {exc}",
                sprite=sprite.name,
                target=target,
            ) from exc
        try:
            msg = await ws.receive(timeout=CONNECT_REPLY_TIMEOUT)
        except asyncio.TimeoutError as exc:
            raise SpritesTimeoutError(
                f"no reply from the proxy for {target} within {CONNECT_REPLY_TIMEOUT:g} s",
                operation="proxy",
                sprite=sprite.name,
            ) from exc
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                reply = msgspec.json.decode(msg.data, type=_Reply)
            except (msgspec.DecodeError, msgspec.ValidationError):
                reply = _Reply(status="", message=str(msg.data)[:200])
            if reply.status == "connected":
                return ws, reply.target or target
            why = reply.error or reply.message or reply.status or "no status"
            raise ProxyTargetUnreachableError(
                f"the sprite could not connect to {target}: {why}",
                sprite=sprite.name,
                target=target,
                reason=why,
            )
        if msg.type in _CLOSING:
            raise _close_error(ws, msg, sprite.name, target)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ProxyError(
                f"the proxy connection for {target} failed: {msg.data}",
                sprite=sprite.name,
                target=target,
            )
        raise ProxyError(
            f"the proxy sent a {msg.type.name} frame before its connected reply",
            sprite=sprite.name,
            target=target,
        )
    except BaseException:
        await _close_ws(ws)
        raise


def _close_error(ws: WebSocket, msg: aiohttp.WSMessage, sprite: str, target: str) -> ProxyError:
    code = ws.close_code if ws.close_code is not None else msg.data
    code = code if isinstance(code, int) else None
    reason = msg.extra if isinstance(msg.extra, str) else ""
    if code == 1003:
        cls: type[ProxyError] = ProxyRejectedError
        text = f"the proxy refused the request for {target}"
    elif code == 1011:
        cls = ProxyTargetUnreachableError
        text = f"the sprite could not connect to {target}"
    else:
        cls = ProxyError
        text = f"the proxy closed the connection for {target} (code {code})"
    return cls(
        f"{text}: {reason}" if reason else text,
        sprite=sprite,
        target=target,
        close_code=code,
        reason=reason,
    )


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the local connection with a TCP reset, so its peer sees an error."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _relay(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Pump bytes both ways until one side ends; return True for a clean end.

    Closes the WebSocket and the local connection (reset on an abnormal end).
    """

    async def upstream() -> bool:
        while True:
            data = await reader.read(FRAME_SIZE)
            if not data:
                return True  # local EOF: there is no half-close, end the tunnel
            await ws.send_bytes(data)

    async def downstream() -> bool:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                if msg.data:
                    writer.write(msg.data)
                    await writer.drain()
            elif msg.type == aiohttp.WSMsgType.TEXT:
                continue  # carries nothing after the handshake (section 10)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                logger.debug("proxy WebSocket error: %s", msg.data)
                return False
            else:
                code = ws.close_code
                reason = msg.extra if isinstance(msg.extra, str) else ""
                # 1001 "upstream closed" is the server's report of a failed
                # read from the target: pass it on as a reset.
                return code in _CLEAN_CLOSE and reason != _UPSTREAM_CLOSED

    up = asyncio.ensure_future(upstream())
    down = asyncio.ensure_future(downstream())
    clean = False
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if not first.cancelled() and first.exception() is None:
            clean = first.result()
        elif first.exception() is not None:
            logger.debug("proxy relay ended: %r", first.exception())
    finally:
        # Nested so that a cancellation landing in one step (aclose() may
        # cancel us while we are already cleaning up) skips none of the others.
        try:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            try:
                await _close_ws(ws)  # a cancelled close still releases the connection
            finally:
                if clean:
                    writer.close()
                else:
                    _reset(writer)
    return clean


# ------------------------------------------------------------ tunnel registry


class _Tunnels:
    """Relay tasks and forwards of one client, ended when the client closes."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.forwards: weakref.WeakSet[PortForward] = weakref.WeakSet()

    async def aclose(self) -> None:
        for fwd in list(self.forwards):
            await fwd.aclose()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_registries: weakref.WeakKeyDictionary[SpritesClient, _Tunnels] = weakref.WeakKeyDictionary()


def _tunnels(client: SpritesClient) -> _Tunnels:
    found = _registries.get(client)
    if found is None:
        found = _registries[client] = _Tunnels()
        client._add_closer(found.aclose)
    return found


# ------------------------------------------------------------ open_connection


async def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets.

    Not :func:`socket.socketpair`: a Unix socket cannot be reset, and a
    reset is how a broken tunnel is reported to the reader.
    """
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ours.setblocking(False)
        try:
            accepted = asyncio.ensure_future(loop.sock_accept(listener))
            try:
                await loop.sock_connect(ours, listener.getsockname())
                theirs, peer = await accepted
            finally:
                accepted.cancel()
            if peer != ours.getsockname():
                # Another local process raced us to the listener.
                theirs.close()
                raise ConnectionError("an unexpected peer connected to the tunnel's socket pair")
        except BaseException:
            ours.close()
            raise
    for sock in (ours, theirs):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


async def open_connection(
    sprite: Sprite,
    port: int,
    *,
    host: str = "localhost",
    limit: int = 2**16,
    options: RequestOptions | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open one TCP connection to ``host:port`` as seen from inside the sprite.

    Returns asyncio streams, as :func:`asyncio.open_connection` does. They
    are backed by a loopback TCP socket pair whose other end a task relays through
    the ``/proxy`` WebSocket; closing the writer ends the tunnel, and closing
    the client ends any tunnel still open. A broken tunnel shows up as a
    connection reset on the reader.

    Raises:
        ProxyTargetUnreachableError: Nothing listens there (close ``1011``).
        ProxyRejectedError: The server refused the request (close ``1003``).
        ValueError: ``port`` is not 1-65535 or ``host`` is empty.
    """
    port = check_port(port)
    host = check_host(host)
    registry = _tunnels(sprite.client)
    ws, _ = await _open_tunnel(sprite, host, port, options)
    try:
        ours, theirs = await _tcp_pair()
    except BaseException:
        await _close_ws(ws)
        raise
    try:
        reader, writer = await asyncio.open_connection(sock=ours, limit=limit)
        try:
            relay_reader, relay_writer = await asyncio.open_connection(sock=theirs)
        except BaseException:
            writer.close()
            raise
    except BaseException:
        ours.close()
        theirs.close()
        await _close_ws(ws)
        raise
    task = asyncio.ensure_future(_relay(ws, relay_reader, relay_writer))
    registry.tasks.add(task)
    task.add_done_callback(registry.tasks.discard)
    return reader, writer


# -------------------------------------------------------------------- forward


class PortForward:
    """A local listener relaying each accepted connection to a port in the sprite.

    Made by :func:`forward`; use it as ``async with``. Leaving the block
    stops listening and ends every relayed connection.

    Attributes:
        remote_port: The port inside the sprite.
        host: The host the sprite dials (``localhost`` by default).
        bind: The local address listened on.
    """

    def __init__(
        self,
        sprite: Sprite,
        remote_port: int,
        *,
        local_port: int = 0,
        host: str = "localhost",
        bind: str = "127.0.0.1",
        options: RequestOptions | None = None,
    ) -> None:
        self.remote_port = check_port(remote_port, "remote_port")
        self._options = options
        if isinstance(local_port, bool) or not isinstance(local_port, int):
            raise ValueError("local_port must be an int (0 picks a free port)")
        if not 0 <= local_port <= 65535:
            raise ValueError(f"local_port must be between 0 and 65535, got {local_port}")
        self.host = check_host(host)
        self.bind = bind
        self._sprite = sprite
        self._requested_port = local_port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.local_port = 0
        """The local port listened on (known once started)."""
        self.accepted = 0
        """Connections accepted so far."""
        self.failed = 0
        """Connections whose tunnel could not be opened."""
        self.last_error: BaseException | None = None
        """Why the most recent failed connection failed."""

    def __repr__(self) -> str:
        return (
            f"<PortForward {self.bind}:{self.local_port} -> "
            f"{self._sprite.name}:{self.host}:{self.remote_port}>"
        )

    @property
    def active_connections(self) -> int:
        """Connections being relayed right now."""
        return len(self._handlers)

    async def start(self) -> PortForward:
        """Start listening (``async with`` does this)."""
        if self._closed:
            raise RuntimeError("this PortForward is closed")
        if self._server is not None:
            return self
        registry = _tunnels(self._sprite.client)
        self._server = await asyncio.start_server(self._handle, self.bind, self._requested_port)
        self.local_port = self._server.sockets[0].getsockname()[1]
        registry.forwards.add(self)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        try:
            try:
                ws, _ = await _open_tunnel(self._sprite, self.host, self.remote_port, self._options)
            except Exception as exc:
                self.failed += 1
                self.last_error = exc
                logger.warning("port forward %s: could not open the tunnel: %s", self, exc)
                _reset(writer)
                return
            await _relay(ws, reader, writer)
        except asyncio.CancelledError:
            # Only aclose() cancels a handler. Ending quietly matters: on
            # Python < 3.12, start_server's done-callback calls exception()
            # on a cancelled handler task and logs the CancelledError.
            _reset(writer)
        finally:
            self._handlers.discard(task)

    async def aclose(self) -> None:
        """Stop listening and end every relayed connection. Idempotent."""
        self._closed = True
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> PortForward:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def forward(
    sprite: Sprite,
    remote_port: int,
    local_port: int = 0,
    host: str = "localhost",
    *,
    bind: str = "127.0.0.1",
    options: RequestOptions | None = None,
) -> PortForward:
    """Forward a local port to ``host:remote_port`` inside the sprite.

    ``async with forward(sprite, 5432) as fwd:`` listens on
    ``127.0.0.1:fwd.local_port`` (``local_port=0`` picks a free port); each
    accepted connection is relayed through its own ``/proxy`` WebSocket.
    A connection whose tunnel cannot be opened is reset and counted in
    :attr:`PortForward.failed` (the listener keeps running).
    """
    return PortForward(
        sprite, remote_port, local_port=local_port, host=host, bind=bind, options=options
    )


# ----------------------------------------------------------------- ports watch


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


class PortWatch:
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
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        event: PortsWatchEvent = _decode_port_event(msg.data.encode())
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        logger.warning("ports watch: skipping a bad message (%s)", exc)
                        continue
                    return event
                if msg.type == aiohttp.WSMsgType.BINARY:
                    continue
                if msg.type == aiohttp.WSMsgType.ERROR:
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
            await _close_ws(ws)

    async def __aenter__(self) -> PortWatch:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


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
