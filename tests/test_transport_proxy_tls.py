"""Reaching the API through HTTP proxies and private CAs, as the official SDKs do.

The emulator is served over TLS with a certificate from a throwaway CA
(``trustme``); a small CONNECT proxy on loopback counts the tunnels it opened
and records what it was asked. Plain calls, exec (direct and over the
``/control`` pool) and streamed downloads all go through it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.connector
import aiohttp.resolver
import pytest
import trustme
from aiohttp import web

from sprites_async import ConfigurationError, RetryPolicy, SpritesClient, SpritesConnectionError
from sprites_async._config import ExecSettings
from sprites_async._transport import _resolve_proxy
from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._sprites import insert_sprite, new_record
from sprites_async.emulator._state import STATE_KEY, EmulatorState

TOKEN = "test-org/1/tok/secret-token-value"
HOST = "api.sprites.test"
"""The API's name in these tests: not loopback (environment proxies never apply to
loopback, as in Go), resolved to 127.0.0.1 by the ``_fake_dns`` fixture."""
PROXY_VARS = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
SETTINGS = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == HOST else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # aiodns, when installed, would not ask getaddrinfo.
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", aiohttp.resolver.ThreadedResolver)


# ------------------------------------------------------------------- the proxy


@dataclass
class ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback that records every request head."""

    refuse: int | None = None
    """Answer every CONNECT with this status instead of opening a tunnel."""
    credentials: str | None = None
    """``user:password`` the client must present (else 407)."""
    heads: list[bytes] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    tunnels: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            self.targets.append(target)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                return
            wanted = (
                "Basic " + base64.b64encode(self.credentials.encode()).decode()
                if self.credentials
                else None
            )
            status = self.refuse
            if status is None and wanted and headers.get("proxy-authorization") != wanted:
                status = 407
            if status is not None:
                writer.write(
                    f"HTTP/1.1 {status} Refused\r\nProxy-Authenticate: Basic realm=t\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                return
            port = target.rpartition(":")[2]
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", int(port))
            self.tunnels += 1
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    running = await ConnectProxy().start()
    yield running
    await running.aclose()


# ------------------------------------------------------------ the TLS emulator


@dataclass
class TLSEmulator:
    url: str
    port: int
    state: EmulatorState
    ca_file: Path
    ca: trustme.CA


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_emu(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[TLSEmulator]:
    config = EmulatorConfig(
        token=TOKEN,
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",
    )
    app = create_app(config)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost", "127.0.0.1").configure_cert(server_ctx)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = int(runner.addresses[0][1])
        state = app[STATE_KEY]
        insert_sprite(state, new_record(state, "box"))
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        yield TLSEmulator(f"https://{HOST}:{port}", port, state, ca_file, ca)
    finally:
        await runner.cleanup()


def _client(emu: TLSEmulator, **kwargs: Any) -> SpritesClient:
    kwargs.setdefault("ssl", str(emu.ca_file))
    kwargs.setdefault("retry", FAST_RETRY)
    client = SpritesClient(TOKEN, base_url=emu.url, **kwargs)
    client.exec_settings = SETTINGS
    return client


async def _exercise(client: SpritesClient) -> None:
    """A plain call, exec over the pool and over a direct socket, a streamed download."""
    assert [s.name async for s in client.sprites.list()] == ["box"]
    assert (await client.sprites.get("box")).name == "box"
    sprite = client.sprite("box")
    for control in (True, False):
        client.control = control
        result = await sprite.exec("sh", "-c", "echo through")
        assert (result.stdout, result.exit_code) == (b"through\n", 0)
    payload = bytes(range(256)) * 2048  # 512 KiB: many chunks
    target = sprite.fs() / "big.bin"
    await target.write_bytes(payload)
    assert b"".join([c async for c in target.open_read(chunk_size=16384)]) == payload


def _assert_tunnelled(proxy: ConnectProxy, emu: TLSEmulator) -> None:
    assert proxy.tunnels >= 1
    assert set(proxy.targets) == {f"{HOST}:{emu.port}"}
    # Inside a CONNECT tunnel: the proxy never sees the token.
    assert not any(b"secret-token-value" in head for head in proxy.heads)
    assert not any(b"authorization: bearer" in head.lower() for head in proxy.heads)


# -------------------------------------------------------- through the proxy


async def test_everything_goes_through_https_proxy_from_the_environment(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with _client(tls_emu) as client:
        assert client.proxy == proxy.url
        await _exercise(client)
    _assert_tunnelled(proxy, tls_emu)
    # The pool's socket, the direct exec socket and plain calls: several tunnels.
    assert proxy.tunnels >= 2


async def test_lowercase_variable_and_all_proxy_are_honoured(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    async with _client(tls_emu) as client:
        await client.sprites.get("box")
    first = proxy.tunnels
    assert first >= 1
    monkeypatch.delenv("https_proxy")
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    async with _client(tls_emu) as client:
        await client.sprites.get("box")
    assert proxy.tunnels > first


async def test_no_proxy_bypasses_the_proxy(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,.sprites.test")
    async with _client(tls_emu) as client:
        assert client.proxy is None
        await _exercise(client)
    assert proxy.heads == []


async def test_proxy_false_ignores_the_environment(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with _client(tls_emu, proxy=False) as client:
        await _exercise(client)
    assert proxy.heads == []


async def test_a_loopback_api_never_uses_the_environment_proxy(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    for host in ("localhost", "127.0.0.1"):
        url = f"https://{host}:{tls_emu.port}"
        async with SpritesClient(TOKEN, base_url=url, ssl=str(tls_emu.ca_file)) as client:
            assert client.proxy is None
            await client.sprites.get("box")
    assert proxy.heads == []
    # An explicit proxy still applies.
    url = f"https://localhost:{tls_emu.port}"
    async with SpritesClient(TOKEN, base_url=url, ssl=str(tls_emu.ca_file), proxy=proxy.url) as c:
        await c.sprites.get("box")
    assert proxy.targets == [f"localhost:{tls_emu.port}"]


async def test_explicit_proxy_wins_over_no_proxy(
    tls_emu: TLSEmulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "*")
    async with _client(tls_emu, proxy=proxy.url) as client:
        await client.sprites.get("box")
    _assert_tunnelled(proxy, tls_emu)


async def test_proxy_credentials_from_the_url_are_sent_and_never_shown(
    tls_emu: TLSEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await ConnectProxy(credentials="alice:p@ss word").start()
    try:
        port = proxy.url.rpartition(":")[2]
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:p%40ss%20word@127.0.0.1:{port}")
        async with _client(tls_emu) as client:
            assert "p@ss" not in repr(client) and "alice" not in repr(client)
            await client.sprites.get("box")
            assert (await client.sprite("box").exec("true")).exit_code == 0
        _assert_tunnelled(proxy, tls_emu)

        caplog.set_level(logging.DEBUG, logger="sprites_async")
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:wrong-pw@127.0.0.1:{port}")
        async with _client(tls_emu) as client:
            with pytest.raises(SpritesConnectionError) as info:
                await client.sprites.get("box")
        seen = [str(info.value), repr(info.value), repr(info.value.__cause__), caplog.text]
        assert "407" in str(info.value)
        assert not any("wrong-pw" in text for text in seen)
        assert not any(base64.b64encode(b"alice:wrong-pw").decode() in text for text in seen)
    finally:
        await proxy.aclose()


# ------------------------------------------------------------ proxy failures


async def test_proxy_refusing_connect_raises_a_typed_error_without_retrying(
    tls_emu: TLSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await ConnectProxy(refuse=407).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with _client(tls_emu) as client:
            with pytest.raises(SpritesConnectionError, match="proxy refused the tunnel: 407"):
                await client.sprites.get("box")
            assert len(proxy.heads) == 1  # a refusal is final: not retried
            with pytest.raises(SpritesConnectionError, match="407"):
                await client.sprite("box").exec("true")
    finally:
        await proxy.aclose()


async def test_a_post_refused_by_the_proxy_with_503_is_retried(
    tls_emu: TLSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CONNECT failed, so the POST never reached the API: sending it again is safe.
    proxy = await ConnectProxy(refuse=503).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with _client(tls_emu) as client:
            with pytest.raises(SpritesConnectionError, match="503"):
                await client.sprites.create("newbox")
        assert len(proxy.heads) == FAST_RETRY.max_attempts
    finally:
        await proxy.aclose()


async def test_unreachable_proxy_raises_a_typed_error(
    tls_emu: TLSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await ConnectProxy().start()
    await proxy.aclose()  # nothing listens on its port any more
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with _client(tls_emu, retry=RetryPolicy.none()) as client:
        with pytest.raises(SpritesConnectionError, match="cannot connect to the proxy"):
            await client.sprites.get("box")


# ---------------------------------------------------------------------- TLS


async def test_ca_bundle_path_is_honoured(tls_emu: TLSEmulator) -> None:
    async with _client(tls_emu, ssl=str(tls_emu.ca_file)) as client:
        await _exercise(client)


async def test_ssl_context_is_honoured(tls_emu: TLSEmulator) -> None:
    ctx = ssl.create_default_context()
    tls_emu.ca.configure_trust(ctx)
    async with _client(tls_emu, ssl=ctx) as client:
        await _exercise(client)


async def test_ssl_cert_file_is_honoured(
    tls_emu: TLSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_emu.ca_file))
    async with _client(tls_emu, ssl=None) as client:
        await client.sprites.get("box")


def test_clients_share_the_context_of_an_unchanged_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    first = SpritesClient("t", base_url="https://example.invalid")._ssl
    assert isinstance(first, ssl.SSLContext)
    assert SpritesClient("t", base_url="https://example.invalid")._ssl is first
    assert SpritesClient("t", base_url="https://example.invalid", ssl=str(bundle))._ssl is first

    # A bundle edited in place (a rotated CA) is loaded anew, not served stale.
    other = trustme.CA()
    bundle.write_bytes(other.cert_pem.bytes())
    os.utime(bundle, ns=(0, bundle.stat().st_mtime_ns + 1_000_000))
    fresh = SpritesClient("t", base_url="https://example.invalid")._ssl
    assert isinstance(fresh, ssl.SSLContext) and fresh is not first
    assert fresh.get_ca_certs() != first.get_ca_certs()


def test_an_unreadable_ca_bundle_is_a_configuration_error_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="cannot load CA certificates"):
            SpritesClient("t", base_url="https://example.invalid")


def test_a_plain_http_client_loads_no_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local emulator: no connection negotiates TLS, so a bundle that would
    # cost ~20 ms per client (or does not even exist) is not read.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert SpritesClient("t", base_url="http://127.0.0.1:1")._ssl is True
    # An explicit bundle is still checked; an https:// client reads the variable.
    with pytest.raises(ConfigurationError, match="cannot load CA certificates"):
        SpritesClient("t", base_url="http://127.0.0.1:1", ssl=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        SpritesClient("t", base_url="https://127.0.0.1:1")


async def test_verification_can_be_disabled(tls_emu: TLSEmulator) -> None:
    async with _client(tls_emu, ssl=False) as client:
        await client.sprites.get("box")


@pytest.mark.parametrize("through_proxy", [False, True])
async def test_unknown_ca_fails_with_a_typed_error_and_is_not_retried(
    tls_emu: TLSEmulator,
    proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
    through_proxy: bool,
) -> None:
    if through_proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    other = trustme.CA()
    ctx = ssl.create_default_context()
    other.configure_trust(ctx)
    async with _client(tls_emu, ssl=ctx) as client:
        with pytest.raises(SpritesConnectionError, match="certificate verification failed"):
            await client.sprites.get("box")
        with pytest.raises(SpritesConnectionError, match="certificate verification failed"):
            await client.sprite("box").exec("true")
    if through_proxy:
        # The get: one tunnel. The exec: its /control probe fails, falls back
        # to one direct socket, which fails alike. Nothing is retried.
        assert proxy.tunnels == 3


async def test_system_cas_do_not_trust_the_test_ca(tls_emu: TLSEmulator) -> None:
    async with _client(tls_emu, ssl=None) as client:
        with pytest.raises(SpritesConnectionError, match="certificate verification failed"):
            await client.sprites.get("box")


def test_bad_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match="cannot load CA certificates"):
        SpritesClient(TOKEN, base_url="https://localhost:1", ssl=str(missing))
    with pytest.raises(TypeError):
        SpritesClient(TOKEN, base_url="https://localhost:1", ssl=42)  # type: ignore[arg-type]


# -------------------------------------------------------- proxy resolution


def test_proxy_resolution_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    base = "https://api.sprites.dev"
    assert _resolve_proxy(None, base) is None
    monkeypatch.setenv("HTTP_PROXY", "http://plain:1")
    assert _resolve_proxy(None, base) is None  # an https API uses HTTPS_PROXY only
    resolved = _resolve_proxy(None, "http://api.local")
    assert resolved is not None and str(resolved.url) == "http://plain:1"
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")  # no scheme: http:// assumed
    resolved = _resolve_proxy(None, base)
    assert resolved is not None and str(resolved.url) == "http://proxy.corp:3128"
    assert resolved.headers is None
    monkeypatch.setenv("NO_PROXY", ".sprites.dev")
    assert _resolve_proxy(None, base) is None
    assert _resolve_proxy("http://u:p@explicit:8080", base) == (
        resolved._replace(url=resolved.url.with_host("explicit").with_port(8080))._replace(
            headers={"Proxy-Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        )
    )
    assert _resolve_proxy(False, base) is None


def test_unsupported_proxy_scheme_is_refused_without_showing_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://bob:hunter2@proxy.corp:1080")
    with pytest.raises(ConfigurationError, match=r"HTTPS_PROXY.*only http:// proxies") as info:
        SpritesClient(TOKEN, base_url="https://api.sprites.dev")
    assert "hunter2" not in str(info.value)
    assert "proxy.corp" in str(info.value)
