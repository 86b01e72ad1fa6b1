"""Sprite URLs that work locally (protocol reference 11.4, 11.5, 8.1).

A real sprite's ``url`` (``https://<name>-<suffix>.sprites.app``) routes
HTTPS to port 8080 inside the sprite, or to the service that declared an
``http_port``; a request wakes a sleeping sprite and starts that service
first. The emulator gives each sprite a loopback listener of its own,
``http://127.0.0.1:<port>``, so that curl, a browser or aiohttp on the same
machine can open it with no DNS or hosts-file set-up, and an app served at
``/`` works as on the real service (no path prefix to break absolute links).

* The listener opens when the sprite's URL is first shown (create, get,
  list, update) and, for sprites that had one, when the emulator starts; its
  port is stored in the sprite's ``url`` and reused after a restart with the
  same state dir when it is still free. It closes on delete and shutdown.
* Each connection: the request head is read, ``url_settings.auth ==
  "sprite"`` requires ``Authorization: Bearer <token>`` (401 otherwise),
  the sprite is woken and held ``running`` while the connection is open,
  the ``http_port`` service is started if it is not running, and then bytes
  are relayed both ways untouched (WebSocket upgrades and keep-alive work
  as they would directly).
* The target is the sprite's own loopback when it has a network namespace
  (``_netns``), dialled with a socket made inside it as the TCP proxy does;
  otherwise the host's loopback, where every sprite's servers share the
  host's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import socket
import weakref
from collections.abc import Callable

from aiohttp import web

from ._netns import SpriteNetwork
from ._proxy import ProxyInitError, dial_inside, sprite_network
from ._services import http_service_port, http_service_watch
from ._state import EmulatorState, SpriteRecord

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
"""Where the URL routes when no service declares ``http_port`` (11.4)."""
HEAD_LIMIT = 64 * 1024
"""Largest request head accepted before answering 431."""
HEAD_TIMEOUT = 30.0
"""Seconds a client has to send its request head."""
CONNECT_WAIT = 10.0
"""Seconds to wait for the app to listen (a service started by this request)."""
READ_SIZE = 64 * 1024

_LOCAL_URL = re.compile(r"^http://127\.0\.0\.1:(\d+)$")
_routers: weakref.WeakKeyDictionary[EmulatorState, UrlRouter] = weakref.WeakKeyDictionary()


def setup(app: web.Application, state: EmulatorState) -> None:
    """Open the listeners of sprites that had one; close them all at shutdown."""
    router = UrlRouter(state)
    _routers[state] = router

    async def forget(name: str) -> None:
        await router.close_sprite(name)

    async def boot(app: web.Application) -> None:
        for rec in list(state.sprites.values()):
            if _LOCAL_URL.match(rec.url):
                router.url_for(rec)

    async def close(app: web.Application) -> None:
        await router.aclose()

    state.sprite_deleted_hooks.append(forget)
    app.on_startup.append(boot)
    app.on_shutdown.append(close)
    app.on_cleanup.append(close)


def url_for(state: EmulatorState, rec: SpriteRecord) -> str:
    """The sprite's URL, opening its listener first if needed (without a router: as stored)."""
    router = _routers.get(state)
    return rec.url if router is None else router.url_for(rec)


class UrlRouter:
    """The per-sprite loopback listeners of one emulator and their open connections."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._servers: dict[str, asyncio.Task[asyncio.Server]] = {}
        self._socks: dict[str, socket.socket] = {}
        self._conns: dict[str, set[asyncio.Task[None]]] = {}
        self._closed = False

    def url_for(self, rec: SpriteRecord) -> str:
        """Open the listener of ``rec`` if it has none; returns (and stores) its URL."""
        if self._closed or rec.name in self._servers:
            return rec.url
        match = _LOCAL_URL.match(rec.url)
        sock = _listen(int(match.group(1)) if match else 0)
        if sock is None:
            return rec.url
        name = rec.name
        self._socks[name] = sock
        # Bound and listening now, so the URL works as soon as it is shown;
        # connections wait in the backlog until the server task accepts.
        self._servers[name] = self._state.spawn(
            asyncio.start_server(
                lambda r, w: self._accepted(name, r, w), sock=sock, limit=HEAD_LIMIT
            )
        )
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        if rec.url != url:
            rec.url = url
            self._state.save_sprite(rec)
        return url

    def _accepted(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if name not in self._servers:  # accepted just as the listener closed
            writer.close()
            return
        task = asyncio.ensure_future(self._serve(name, reader, writer))
        conns = self._conns.setdefault(name, set())
        conns.add(task)
        task.add_done_callback(conns.discard)

    async def close_sprite(self, name: str) -> None:
        """Close the sprite's listener and cut its open connections (sprite deleted)."""
        starting = self._servers.pop(name, None)
        server: asyncio.Server | None = None
        if starting is not None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                server = await asyncio.shield(starting)
            sock = self._socks.pop(name)
            if server is None:
                sock.close()  # the server never took it over
            else:
                server.close()
        tasks = self._conns.pop(name, set())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def aclose(self) -> None:
        """Close every listener and connection (emulator shutdown); idempotent."""
        self._closed = True
        for name in list(self._servers) + list(self._conns):
            await self.close_sprite(name)

    async def _serve(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._route(name, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.debug("sprite URL connection of %s ended: %s", name, exc)
        except Exception:
            # A connection task has nobody to report to; keep the listener serving.
            log.exception("sprite URL connection of %s failed", name)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _route(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        state = self._state
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _answer(writer, 431, "request header fields too large")
            return
        rec = state.sprites.get(name)
        if rec is None:
            await _answer(writer, 404, "sprite not found")
            return
        if rec.url_auth != "public" and not _authorized(head, state.config.token):
            await _answer(writer, 401, "authentication failed", bearer=True)
            return
        if not await state.lifecycle.wake(name):
            await _answer(writer, 404, "sprite not found")
            return
        # An open connection through the URL keeps the sprite running (11.5).
        try:
            state.materialize(name)
            await self._relay(name, head, reader, writer)
        finally:
            state.lifecycle.release(name)

    async def _relay(
        self,
        name: str,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        state = self._state
        port = await http_service_port(state, name) or DEFAULT_PORT
        try:
            network = await sprite_network(state, name)
        except ProxyInitError as exc:
            await _answer(writer, 502, exc.reason)
            return
        problem_now = http_service_watch(state, name)
        upstream = await _connect(network, port, problem_now)
        if upstream is None:
            where = "in the sprite" if network is not None else "on the host's loopback"
            problem = problem_now()
            why = f" ({problem})" if problem else ""
            await _answer(writer, 502, f"nothing listens on port {port} {where}{why}")
            return
        up_reader, up_writer = upstream
        try:
            up_writer.write(_for_the_app(head, state.config.token))
            await _pipe_both(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()


def _listen(port: int) -> socket.socket | None:
    """A listening loopback socket on ``port`` if free, else on any port."""
    for candidate in dict.fromkeys((port, 0)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", candidate))
            sock.listen(100)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.debug("sprite URL port %s not available: %s", candidate, exc)
            continue
        return sock
    return None


def _for_the_app(head: bytes, token: str) -> bytes:
    """The request head as the sprite's app gets it: without the emulator's token.

    The token is the organisation's key and the app is untrusted code, so an
    ``Authorization`` header carrying it is removed. A plain request is also
    made the connection's last (``Connection: close``): the relay reads only
    the first head, and a keep-alive client would send the token again in
    the next one. A WebSocket upgrade keeps its headers (frames follow).
    """
    lines = head.split(b"\r\n")
    upgrade = any(
        k.strip().lower() == b"upgrade" for k, _, _ in (line.partition(b":") for line in lines[1:])
    )
    kept = [lines[0]]
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        name = key.strip().lower()
        if name == b"authorization" and token.encode() in value:
            continue
        if name == b"connection" and not upgrade:
            continue
        kept.append(line)
    if not upgrade:
        # The head ends with an empty line pair; the header goes before it.
        kept.insert(len(kept) - 2, b"Connection: close")
    return b"\r\n".join(kept)


def _authorized(head: bytes, token: str) -> bool:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"authorization":
            scheme, _, credentials = value.strip().decode("latin-1").partition(" ")
            valid = hmac.compare_digest(credentials.strip().encode(), token.encode())
            return valid and scheme.lower() == "bearer"
    return False


async def _connect(
    network: SpriteNetwork | None, port: int, problem: Callable[[], str | None]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Dial the app, waiting a little for a service that is still starting (not one that died)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_WAIT
    while True:
        if network is not None:
            inside = await dial_inside(network, "127.0.0.1", port)
            if inside is not None:
                return inside[0], inside[1]
        else:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        if loop.time() >= deadline or problem() is not None:
            return None
        await asyncio.sleep(0.1)


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(READ_SIZE):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()

    upward = asyncio.ensure_future(pipe(reader, up_writer))
    downward = asyncio.ensure_future(pipe(up_reader, writer))
    try:
        await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
        if upward.done() and upward.exception() is None:
            # The client half-closed: its answer may still be on the way.
            await downward
    finally:
        for task in (upward, downward):
            task.cancel()
        await asyncio.gather(upward, downward, return_exceptions=True)


_REASONS = {
    401: "Unauthorized",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
}


async def _answer(
    writer: asyncio.StreamWriter, status: int, message: str, *, bearer: bool = False
) -> None:
    body = (message + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if bearer:
        lines.append('WWW-Authenticate: Bearer realm="sprite"')
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
