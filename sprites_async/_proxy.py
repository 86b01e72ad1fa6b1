"""TCP tunnels into a sprite through its ``/proxy`` WebSocket.

* :func:`open_connection` — ``reader, writer`` asyncio streams for one TCP
  connection to a port inside the sprite, like :func:`asyncio.open_connection`.
* :func:`forward` — a local listener on ``127.0.0.1``; every accepted
  connection gets its own ``/proxy`` WebSocket::

      async with forward(sprite, 8080) as fwd:
          async with aiohttp.ClientSession() as http:
              await http.get(f"http://127.0.0.1:{fwd.local_port}/")

The ports watch, which tells which ports to tunnel to, is in :mod:`._ports`.

Each tunnel sends the init frame ``{"host":…,"port":…}``, waits for
``{"status":"connected"}``, then relays bytes both ways as binary frames of
at most 32 KiB (a server may cap the size of a frame it reads; its own relay
reads 32 KiB at a time), reading the next chunk only when the previous one
was written (backpressure in both directions). The protocol has no
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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ._control import close_now
from ._errors import SpritesConnectionError, SpritesTimeoutError
from ._resource import AsyncResource
from ._translate import SOCKET_LOST
from ._validation import check_host, check_port
from ._websocket import WSMessage, WSMsgType

if TYPE_CHECKING:
    from ._options import RequestOptions
    from ._session import BaseClient
    from ._sprites import Sprite
    from ._websocket import WebSocket

__all__ = [
    "PortForward",
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
"""Ping interval of a tunnel's WebSocket, in seconds: a ping every 15 s keeps a
silent tunnel open through proxies and finds a dead peer."""
CLOSE_TIMEOUT = 1.0
"""Bound of a close in the rare case it cannot be done at once (see ``close_now``)."""

_CLEAN_CLOSE = frozenset({1000, 1001})
_UPSTREAM_CLOSED = "upstream closed"
_CLOSING = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})


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
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, operation="proxy", sprite=sprite, headers=headers)
        self.close_code = close_code
        self.reason = reason
        self.target = target


class ProxyRejectedError(ProxyError):
    """Close ``1003``: the server refused the init message (bad JSON, bad port)."""


class ProxyTargetUnreachableError(ProxyError):
    """Close ``1011`` or a non-``connected`` status: the sprite could not reach the target."""


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
    ws, upgrade = await sprite.client._ws_connect(
        sprite.path + "/proxy",
        operation="proxy",
        sprite=sprite.name,
        heartbeat=HEARTBEAT,
        options=options,
    )
    try:
        try:
            await ws.send_str(msgspec.json.encode({"host": host, "port": port}).decode())
        except SOCKET_LOST as exc:  # closed under us (e.g. the client closed)
            raise ProxyError(
                f"sending the proxy request for {target} failed: {exc.message}",
                sprite=sprite.name,
                target=target,
                headers=upgrade,
            ) from exc
        try:
            msg = await ws.receive(timeout=CONNECT_REPLY_TIMEOUT)
        except SpritesTimeoutError as exc:
            raise SpritesTimeoutError(
                f"no reply from the proxy for {target} within {CONNECT_REPLY_TIMEOUT:g} s",
                operation="proxy",
                sprite=sprite.name,
                headers=upgrade,
            ) from exc
        except SOCKET_LOST as exc:
            raise ProxyError(
                f"waiting for the proxy's reply for {target} failed: {exc.message}",
                sprite=sprite.name,
                target=target,
                headers=upgrade,
            ) from exc
        if msg.type == WSMsgType.TEXT:
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
                headers=upgrade,
            )
        if msg.type in _CLOSING:
            raise _close_error(ws, msg, sprite.name, target, upgrade)
        if msg.type == WSMsgType.ERROR:
            raise ProxyError(
                f"the proxy connection for {target} failed: {msg.data}",
                sprite=sprite.name,
                target=target,
                headers=upgrade,
            )
        raise ProxyError(
            f"the proxy sent a {msg.type.name} frame before its connected reply",
            sprite=sprite.name,
            target=target,
            headers=upgrade,
        )
    except BaseException:
        await _close_ws(ws)
        raise


def _close_error(
    ws: WebSocket, msg: WSMessage, sprite: str, target: str, headers: Mapping[str, str]
) -> ProxyError:
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
        headers=headers,
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
            if msg.type == WSMsgType.BINARY:
                if msg.data:
                    writer.write(msg.data)
                    await writer.drain()
            elif msg.type == WSMsgType.TEXT:
                continue  # text frames carry nothing once the tunnel is connected
            elif msg.type == WSMsgType.ERROR:
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


class Tunnels:
    """Relay tasks and forwards of one client (``client._tunnels``), ended when it closes."""

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


def tunnels_for(client: BaseClient) -> Tunnels:
    """The tunnels of ``client`` (made on first use, ended by ``client.aclose()``)."""
    found = client._tunnels
    if found is None:
        found = client._tunnels = Tunnels()
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
    registry = tunnels_for(sprite.client)
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


class PortForward(AsyncResource):
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
        registry = tunnels_for(self._sprite.client)
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

    async def _aopen(self) -> None:
        await self.start()


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
