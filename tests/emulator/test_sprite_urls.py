"""Sprite URLs that work locally (issue 16): one loopback listener per sprite."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from sprites_async._cli import main as cli_main
from sprites_async.emulator import Emulator, EmulatorConfig, _urls
from sprites_async.emulator._sandbox import jail_for
from sprites_async.emulator._supervisor import supervisor_for
from tests._emulator import RunningEmulator, serve

WS_APP = r"""
import base64, hashlib, socket
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8000)); srv.listen()
while True:
    conn, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    frame = conn.recv(4096)
    size = frame[1] & 127
    mask, data = frame[2:6], frame[6:6 + size]
    text = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    conn.sendall(bytes([0x81, len(text) + 5]) + b"echo:" + text)
    conn.recv(4096)
    conn.close()
"""
"""A stdlib WebSocket server on 8000: echoes one short text frame with ``echo:`` prefixed."""


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.extra.update(services_restart_backoff=0.05, services_restart_backoff_max=0.2)
    return emulator_config


async def create(emu: RunningEmulator, name: str, auth: str = "sprite") -> dict[str, Any]:
    status, doc = await emu.api(
        "POST", "/v1/sprites", json={"name": name, "url_settings": {"auth": auth}}
    )
    assert status == 201, doc
    assert isinstance(doc, dict)
    return doc


async def service(emu: RunningEmulator, sprite: str, svc: str, body: dict[str, Any]) -> None:
    url = f"{emu.url}/v1/sprites/{sprite}/services/{svc}?duration=100ms"
    async with emu.http.put(url, json=body, headers=emu.auth) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


def web_server(port: int, text: str, http_port: int | None = None) -> dict[str, Any]:
    script = f"mkdir -p /tmp/www && echo {text} > /tmp/www/index.txt && cd /tmp/www && "
    script += f"exec python3 -m http.server --bind 127.0.0.1 {port}"
    return {"cmd": "sh", "args": ["-c", script], "http_port": http_port or port}


async def fetch(
    emu: RunningEmulator, url: str, *, token: bool = True, timeout: float = 30
) -> tuple[int, str]:
    headers = emu.auth if token else {}
    async with emu.http.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return resp.status, await resp.text()


def needs_own_network(emu: RunningEmulator) -> None:
    if not jail_for(emu.state).own_networks:
        pytest.skip("no network namespaces here (slirp4netns): sprites share the host's ports")


async def test_url_serves_the_http_port_service(emu: RunningEmulator) -> None:
    doc = await create(emu, "web")
    url = doc["url"]
    assert url.startswith("http://127.0.0.1:")
    await service(emu, "web", "site", web_server(8000, "hello-from-web"))
    status, body = await fetch(emu, url + "/index.txt")
    assert (status, body) == (200, "hello-from-web\n")
    # The same URL on every later answer, and the sprite is running while served.
    status, again = await emu.api("GET", "/v1/sprites/web")
    assert again["url"] == url


async def test_url_carries_a_websocket(emu: RunningEmulator) -> None:
    doc = await create(emu, "wsapp")
    await service(emu, "wsapp", "ws", {"cmd": "python3", "args": ["-c", WS_APP], "http_port": 8000})
    async with emu.http.ws_connect(doc["url"] + "/ws", headers=emu.auth) as ws:
        await ws.send_str("ping")
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert msg.data == "echo:ping"
        # The open connection keeps the sprite running past warm_after (0.5 s).
        await asyncio.sleep(1.5)
        assert emu.state.sprites["wsapp"].status == "running"
        assert emu.state.lifecycle.active("wsapp") >= 1
    for _ in range(100):
        if not emu.state.lifecycle.active("wsapp"):
            break
        await asyncio.sleep(0.05)
    assert emu.state.lifecycle.active("wsapp") == 0


async def test_auth_sprite_needs_the_token_public_does_not(emu: RunningEmulator) -> None:
    private = (await create(emu, "private"))["url"]
    public = (await create(emu, "public", auth="public"))["url"]
    await service(emu, "private", "site", web_server(8000, "secret"))
    await service(emu, "public", "site", web_server(8000, "open"))
    status, body = await fetch(emu, private + "/index.txt", token=False)
    assert status == 401
    assert "authentication failed" in body
    async with emu.http.get(
        private + "/index.txt", headers={"Authorization": "Bearer wrong"}
    ) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await fetch(emu, private + "/index.txt") == (200, "secret\n")
    assert await fetch(emu, public + "/index.txt", token=False) == (200, "open\n")
    # Switching the setting takes effect on the next request.
    status, _ = await emu.api(
        "PUT", "/v1/sprites/public", json={"url_settings": {"auth": "sprite"}}
    )
    assert status == 200
    assert (await fetch(emu, public + "/index.txt", token=False))[0] == 401


async def test_first_request_wakes_a_cold_sprite_and_starts_the_service(
    emu: RunningEmulator,
) -> None:
    url = (await create(emu, "sleepy"))["url"]
    await service(emu, "sleepy", "site", web_server(8000, "awake"))
    status, _ = await emu.api("POST", "/v1/sprites/sleepy/services/site/stop")
    assert status == 200
    rec = emu.state.sprites["sleepy"]
    for _ in range(200):
        if rec.status == "cold":
            break
        await asyncio.sleep(0.1)
    assert rec.status == "cold"
    rt = supervisor_for(emu.state).get("sleepy", "site")
    assert rt.proc is None
    assert await fetch(emu, url + "/index.txt") == (200, "awake\n")
    assert rt.status == "running"
    assert rec.status == "running"


async def test_without_an_app_the_url_answers_502(
    emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_urls, "CONNECT_WAIT", 0.2)
    url = (await create(emu, "empty"))["url"]
    status, body = await fetch(emu, url + "/")
    assert status == 502
    assert "8080" in body  # the documented default port


async def test_a_crashing_app_gets_a_502_that_says_why(emu: RunningEmulator) -> None:
    url = (await create(emu, "crashy"))["url"]
    crash = {"cmd": "sh", "args": ["-c", "sleep 0.3; exit 3"], "http_port": 8000}
    await service(emu, "crashy", "site", crash)
    # Well within CONNECT_WAIT: the router stops waiting when the process ends.
    status, body = await fetch(emu, url + "/", timeout=8)
    assert status == 502
    assert "nothing listens on port 8000" in body
    assert "service site is failed: exited with code 3" in body


async def test_two_sprites_each_serve_port_8000(emu: RunningEmulator) -> None:
    needs_own_network(emu)
    urls = {name: (await create(emu, name))["url"] for name in ("left", "right")}
    assert urls["left"] != urls["right"]
    for name in urls:
        await service(emu, name, "site", web_server(8000, f"i-am-{name}"))
    for name, url in urls.items():
        assert await fetch(emu, url + "/index.txt") == (200, f"i-am-{name}\n")
    # The TCP proxy reaches the same two servers, each in its own sprite.
    for name in urls:
        proxy = f"{emu.url.replace('http', 'ws', 1)}/v1/sprites/{name}/proxy"
        async with emu.http.ws_connect(proxy, headers=emu.auth) as ws:
            await ws.send_str(json.dumps({"host": "localhost", "port": 8000}))
            hello = json.loads((await ws.receive(timeout=30)).data)
            assert hello["status"] == "connected"
            await ws.send_bytes(b"GET /index.txt HTTP/1.0\r\n\r\n")
            answer = b""
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    answer += msg.data
            assert answer.endswith(f"i-am-{name}\n".encode())


async def test_listener_closes_on_delete(emu: RunningEmulator) -> None:
    url = (await create(emu, "gone"))["url"]
    port = int(url.rsplit(":", 1)[1])
    status, _ = await emu.api("DELETE", "/v1/sprites/gone")
    assert status == 204
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_port_is_kept_across_restarts(emulator_config: EmulatorConfig) -> None:
    async with serve(emulator_config) as first:
        url = (await create(first, "steady"))["url"]
    async with serve(replace(emulator_config)) as second:
        # Open before anyone asks, so a URL noted earlier keeps working.
        port = int(url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        status, doc = await second.api("GET", "/v1/sprites/steady")
        assert (status, doc["url"]) == (200, url)


async def test_shutdown_cuts_open_url_connections(emulator_config: EmulatorConfig) -> None:
    async with serve(emulator_config) as emu:
        url = (await create(emu, "busy", auth="public"))["url"]
        await service(
            emu, "busy", "ws", {"cmd": "python3", "args": ["-c", WS_APP], "http_port": 8000}
        )
        port = int(url.rsplit(":", 1)[1])
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET / HTTP/1.1\r\n")  # a head never finished
        ws = await emu.http.ws_connect(url + "/ws")
    try:
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await ws.close()
        idle_writer.close()
        await idle_writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.fixture
async def host_emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    emulator_config.sprite_network = "host"
    async with serve(emulator_config) as running:
        yield running


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_shared_network_routes_to_the_hosts_loopback(host_emu: RunningEmulator) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        url = (await create(host_emu, "shared"))["url"]
        loop = {"cmd": "sh", "args": ["-c", "while :; do sleep 0.05; done"], "http_port": port}
        await service(host_emu, "shared", "idle", loop)
        assert await fetch(host_emu, url + "/") == (200, "host")
    finally:
        server.close()
        await server.wait_closed()


async def test_port_taken_on_a_shared_network_is_named(
    host_emu: RunningEmulator, busy_port: int
) -> None:
    await create(host_emu, "clash")
    await service(host_emu, "clash", "site", web_server(busy_port, "x"))
    rt = supervisor_for(host_emu.state).get("clash", "site")
    for _ in range(100):
        if rt.error:
            break
        await asyncio.sleep(0.1)
    assert rt.error is not None
    assert "exited with code 1" in rt.error
    assert f"port {busy_port} is already in use" in rt.error
    assert "share the host's network" in rt.error


@pytest.mark.parametrize("network", ["host", "auto"])
def test_doctor_says_whether_sprites_share_ports(
    network: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Emulator(sprite_network=network, exit_linger=0.0) as emu:
        monkeypatch.setenv("SPRITES_API_URL", emu.url)
        monkeypatch.setenv("SPRITES_TOKEN", emu.token)
        cli_main(["doctor", "--json"])
        shared = not (emu.sandboxed and jail_for(emu.state).own_networks)
    report = json.loads(capsys.readouterr().out)
    step = {s["name"]: s for s in report["steps"]}["emulator sandbox"]
    assert ("sprites share the host's ports" in step["detail"]) == shared


HEADERS_APP = r"""
import http.server

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""
"""Answers with the request headers it received."""


async def test_the_app_never_sees_the_token(emu: RunningEmulator) -> None:
    # The token is the organisation's key; the app in the sprite is untrusted.
    url = (await create(emu, "headers"))["url"]
    body = {"cmd": "python3", "args": ["-c", HEADERS_APP], "http_port": 8000}
    await service(emu, "headers", "echo", body)
    for _ in range(2):  # a second request on a kept-alive connection too
        status, seen = await fetch(emu, url + "/")
        assert status == 200
        assert "authorization" not in seen
        assert emu.token not in seen
        assert "connection: close" in seen
