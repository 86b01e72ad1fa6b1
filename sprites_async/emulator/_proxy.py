"""TCP proxy of the sprite layer: ``WSS /v1/sprites/{name}/proxy`` (section 10).

The first client frame is a text frame ``{"host": ..., "port": ...}``; the
server dials the target, answers ``{"status":"connected","target":...}``
and then relays binary frames to TCP and TCP reads (up to 32 KiB) to binary
frames until either side ends. Close codes: 1003 for an init frame that is
not text, not a JSON object or has a bad port; 1011 when the target cannot
be dialled; 1001 "upstream closed" when reading from the target fails; 1000
when the target closes cleanly. A client that sends no init frame within
:data:`INIT_TIMEOUT` is closed with 1008 (an emulator choice; the real
server's behaviour is not recorded).

Only loopback targets (``localhost``, ``127.0.0.1``, ``::1``) are accepted.
A real sprite can reach what its VM's network reaches, and its egress is
filtered by the network policy; the emulator enforces little policy, so
allowing any host would turn it into an open TCP relay into the developer's
LAN for anyone holding the token. A sandboxed sprite with a network of its
own (``_netns``) is dialled inside that namespace, where its servers listen;
otherwise (and when nothing listens there) the host's loopback. Loopback is
all a test needs. Other hosts are refused with close ``1011``, the code the
real server uses for an unreachable target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from ._netns import NetworkUnavailable, SpriteNetwork
from ._procs import use_sandbox
from ._sandbox import jail_for
from ._state import STATE_KEY, EmulatorState

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()

READ_SIZE = 32 * 1024
"""Bytes per TCP read, hence the largest binary frame the server sends."""
INIT_TIMEOUT = 30.0
"""Seconds to wait for the init frame before closing the socket."""
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the TCP connection to the target."""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
"""Targets the emulator agrees to dial (see the module docstring)."""


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register the ``/proxy`` WebSocket route."""
    app.router.add_get("/v1/sprites/{name}/proxy", _proxy, allow_head=False)


class ProxyInitError(Exception):
    """The proxy cannot start; ``code`` and ``reason`` are the WebSocket close to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_init(data: str) -> tuple[str, int]:
    """``(host, port)`` from the init JSON ``{"host": ..., "port": ...}``.

    ``host`` defaults to ``localhost``; a bracketed IPv6 literal is unwrapped.
    Raises :class:`ProxyInitError` with close code 1003 when invalid.
    """
    try:
        doc: Any = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise ProxyInitError(WSCloseCode.UNSUPPORTED_DATA, "Invalid JSON in initialization message")
    host = doc.get("host") or "localhost"
    port = doc.get("port")
    if not isinstance(host, str):
        raise ProxyInitError(WSCloseCode.UNSUPPORTED_DATA, "Invalid JSON in initialization message")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ProxyInitError(WSCloseCode.UNSUPPORTED_DATA, "Invalid port number")
    # Clients may bracket an IPv6 literal as they would in a URL.
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


async def sprite_network(state: EmulatorState, name: str) -> SpriteNetwork | None:
    """The network namespace the sprite's servers listen in (None: the host's).

    Raises :class:`ProxyInitError` (1011) when the sprite must have one and
    it cannot be set up.
    """
    if not use_sandbox(state.config.sandbox):
        return None
    try:
        return await jail_for(state).network(name)
    except NetworkUnavailable as exc:
        raise ProxyInitError(
            WSCloseCode.INTERNAL_ERROR, f"Failed to connect to target: {exc}"
        ) from exc


async def dial(
    host: str, port: int, *, network: SpriteNetwork | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Connect to a loopback target: ``(reader, writer, "ip:port" actually dialled)``.

    With ``network`` (a sandboxed sprite's own namespace) the target is the
    sprite's loopback, as on a real sprite; only when nothing listens there
    is the host's loopback tried, so that servers a developer or a test
    runs on the host stay reachable as before sprites had networks of their
    own (the proxy is driven by the token holder, not by the sprite's code).

    Raises :class:`ProxyInitError` with close code 1011 for a non-loopback
    host (see the module docstring) or a failed connection. The control
    channel's ``proxy`` operation (section 5.5) can reuse this and
    :func:`parse_init`.
    """
    if host.lower() not in LOOPBACK_HOSTS:
        raise ProxyInitError(
            WSCloseCode.INTERNAL_ERROR,
            f"Failed to connect to target: {host} is not a loopback address "
            "(the emulator only proxies to localhost, 127.0.0.1 and ::1)",
        )
    if network is not None:
        inside = await dial_inside(network, host, port)
        if inside is not None:
            return inside
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ProxyInitError(
            WSCloseCode.INTERNAL_ERROR, f"Failed to connect to target: {reason}"
        ) from exc
    peer = writer.get_extra_info("peername")
    address = str(peer[0]) if peer else host
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return reader, writer, target


async def dial_inside(
    network: SpriteNetwork, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str] | None:
    """Connect in the sprite's namespace; None when nothing listens there."""
    candidates = {
        "localhost": [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
        "127.0.0.1": [("127.0.0.1", socket.AF_INET)],
        "::1": [("::1", socket.AF_INET6)],
    }[host.lower()]
    loop = asyncio.get_running_loop()
    for address, family in candidates:
        try:
            sock = await network.socket(family)
        except OSError as exc:
            log.debug("no socket in the sprite's namespace: %s", exc)
            return None
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), CONNECT_TIMEOUT)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, asyncio.TimeoutError):
            sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return reader, writer, target
    return None


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    # The reason must fit in a control frame (125 bytes minus the code), cut
    # on a character boundary so the peer can still decode it.
    message = reason.encode()[:123].decode("utf-8", "ignore").encode()
    await ws.close(code=code, message=message)


async def _proxy(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    try:
        msg = await ws.receive(timeout=INIT_TIMEOUT)
    except asyncio.TimeoutError:
        await _close(ws, WSCloseCode.POLICY_VIOLATION, "Timed out waiting for initialization")
        return ws
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return ws
    try:
        if msg.type != WSMsgType.TEXT:
            raise ProxyInitError(
                WSCloseCode.UNSUPPORTED_DATA, "Expected JSON initialization message"
            )
        host, port = parse_init(msg.data)
        network = await sprite_network(request.app[STATE_KEY], request.match_info["name"])
        reader, writer, target = await dial(host, port, network=network)
    except ProxyInitError as err:
        await _close(ws, err.code, err.reason)
        return ws
    try:
        await ws.send_str(_encoder.encode({"status": "connected", "target": target}).decode())
        await _relay(ws, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if not ws.closed:
            await ws.close()
    return ws


async def _relay(
    ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def client_to_target() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            # Text frames after the handshake carry nothing (section 10).

    async def target_to_client() -> None:
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except OSError as exc:
                log.debug("proxy target read failed: %s", exc)
                await _close(ws, WSCloseCode.GOING_AWAY, "upstream closed")
                return
            if not data:
                await ws.close()
                return
            await ws.send_bytes(data)

    upstream = asyncio.ensure_future(client_to_target())
    downstream = asyncio.ensure_future(target_to_client())
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if isinstance(exc, OSError) and task is upstream:
            # The target went away while we were writing to it.
            await _close(ws, WSCloseCode.GOING_AWAY, "upstream closed")
        elif exc is not None and not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
            raise exc
