"""``extra_headers``, ``extra_query`` and ``extra_body`` on every API call.

Every public method of the resources that talks to the service accepts the
three keyword arguments (checked by introspection, so a new method cannot
forget them), and what they carry reaches the wire: a recording middleware in
front of the emulator's handlers sees the header, the query parameter and
the body key of a representative call of each resource, WebSocket upgrades
included.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from sprites_async import RetryPolicy, SpritesClient
from sprites_async._checkpoints import CheckpointsResource
from sprites_async._config import ExecSettings
from sprites_async._exec import ExecSessions
from sprites_async._fs import SpriteFS, SpritePath
from sprites_async._options import request_options
from sprites_async._policy import PolicyResource
from sprites_async._ports import PortsResource
from sprites_async._services import ServicesResource
from sprites_async._sprites import Sprite, SpritesResource
from sprites_async.emulator import EmulatorConfig, create_app
from tests._emulator import RunningEmulator, serve

EXTRAS = ("extra_headers", "extra_query", "extra_body")

RESOURCES: tuple[type, ...] = (
    SpritesResource,
    Sprite,
    CheckpointsResource,
    ServicesResource,
    PolicyResource,
    SpriteFS,
    SpritePath,
    ExecSessions,
    PortsResource,
)

# Public methods that send nothing themselves (pure path arithmetic and
# handles), and ``temporary`` (a fleet helper: create and delete around a block).
NO_IO = {
    ("SpritesResource", "temporary"),
    ("Sprite", "fs"),
    ("SpriteFS", "path"),
    ("SpritePath", "joinpath"),
    ("SpritePath", "with_name"),
    ("SpritePath", "with_suffix"),
}


def _public_methods() -> list[tuple[str, str, Callable[..., Any]]]:
    out = []
    for cls in RESOURCES:
        seen: set[str] = set()
        # Down the MRO: a public class may get its methods from private layers.
        for layer in cls.__mro__[:-1]:
            for name, value in vars(layer).items():
                if name in seen:
                    continue
                seen.add(name)
                if name.startswith("_") or not inspect.isfunction(value):
                    continue
                if (cls.__name__, name) in NO_IO:
                    continue
                out.append((cls.__name__, name, value))
    return out


def test_the_enumeration_finds_the_methods_it_should() -> None:
    found = {(c, n) for c, n, _ in _public_methods()}
    # A few of each kind: coroutines, lazy streams/sessions, context managers.
    for expected in [
        ("SpritesResource", "create"),
        ("SpritesResource", "list"),
        ("Sprite", "exec"),
        ("Sprite", "process"),
        ("Sprite", "forward"),
        ("CheckpointsResource", "guard"),
        ("ServicesResource", "logs"),
        ("SpritePath", "open_read"),
        ("ExecSessions", "attach"),
        ("ExecSessions", "kill"),
        ("PortsResource", "watch"),
        ("PolicyResource", "set"),
    ]:
        assert expected in found
    assert len(found) > 60


@pytest.mark.parametrize(
    ("cls", "name", "fn"), _public_methods(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_public_method_accepts_the_three_keywords(
    cls: str, name: str, fn: Callable[..., Any]
) -> None:
    params = inspect.signature(fn).parameters
    for extra in EXTRAS:
        assert extra in params, f"{cls}.{name} does not accept {extra}"
        assert params[extra].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[extra].default is None


# ------------------------------------------------------------------ on the wire


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None
    upgrade: bool = False


@dataclass
class Recorder:
    """Requests as the server saw them; JSON bodies as the client put them on the wire.

    (The body is taken from aiohttp's ``on_request_chunk_sent`` trace: reading
    it in a server middleware would consume it before the handler.)
    """

    requests: list[Seen] = field(default_factory=list)
    bodies: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    trace: aiohttp.TraceConfig = field(default_factory=aiohttp.TraceConfig)

    def __post_init__(self) -> None:
        async def sent(session: Any, ctx: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
            self.bodies.setdefault((params.method, params.url.path), []).append(params.chunk)

        self.trace.on_request_chunk_sent.append(sent)

    def body(self, method: str, path: str) -> Any:
        raw = b"".join(self.bodies[(method, path)])
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw

    def to(self, method: str, suffix: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def one(self, method: str, suffix: str) -> Seen:
        found = self.to(method, suffix)
        assert len(found) == 1, (method, suffix, [(r.method, r.path) for r in self.requests])
        seen = found[0]
        if (seen.method, seen.path) in self.bodies:
            seen.body = self.body(seen.method, seen.path)
        return seen


def _recording(recorder: Recorder) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        query: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query.setdefault(key, []).append(value)
        seen = Seen(
            request.method,
            request.path,
            query,
            dict(request.headers),
            upgrade=request.headers.get("Upgrade", "").lower() == "websocket",
        )
        recorder.requests.append(seen)
        return await handler(request)

    return record


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[tuple[RunningEmulator, Recorder]]:
    config = EmulatorConfig(
        token="test-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",
    )
    recorder = Recorder()
    app = create_app(config)
    app.middlewares.append(_recording(recorder))
    async with serve(config, app) as running:
        running.add_sprite("box")
        yield running, recorder


@pytest.fixture
async def client(wire: tuple[RunningEmulator, Recorder]) -> AsyncIterator[SpritesClient]:
    emu, rec = wire
    async with SpritesClient(
        emu.token, base_url=emu.url, retry=RetryPolicy(max_attempts=1), trace_configs=[rec.trace]
    ) as c:
        c.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0)
        yield c


H = {"X-Extra": "yes"}
Q = {"extra_q": "1"}


def _has_extras(seen: Seen, *, body_key: str | None = None) -> None:
    assert seen.headers.get("X-Extra") == "yes"
    assert seen.query.get("extra_q") == ["1"]
    if body_key is not None:
        assert seen.body[body_key] == "v"


async def test_sprites(client: SpritesClient, wire: tuple[RunningEmulator, Recorder]) -> None:
    _, rec = wire
    info = await client.sprites.create(
        "made", extra_headers=H, extra_query=Q, extra_body={"runtime": "v"}
    )
    assert info.name == "made"
    seen = rec.one("POST", "/v1/sprites")
    _has_extras(seen, body_key="runtime")
    assert seen.body["name"] == "made"  # merged over the SDK's body, not replacing it
    names = [s.name async for s in client.sprites.list(extra_query={"bulk_load": True})]
    assert "made" in names
    assert rec.one("GET", "/v1/sprites").query["bulk_load"] == ["true"]
    await client.sprites.get("made", extra_headers=H, extra_query=Q)
    _has_extras(rec.one("GET", "/v1/sprites/made"))


async def test_checkpoints_services_policy(
    client: SpritesClient, wire: tuple[RunningEmulator, Recorder]
) -> None:
    _, rec = wire
    sprite = client.sprite("box")
    await sprite.checkpoints.create("c", extra_headers=H, extra_query=Q, extra_body={"k": "v"})
    _has_extras(rec.one("POST", "/checkpoint"), body_key="k")
    await sprite.checkpoints.list(extra_headers=H, extra_query=Q)
    _has_extras(rec.to("GET", "/checkpoints")[-1])

    await sprite.services.create(
        "svc", cmd="sleep", args=["30"], duration=0.1, extra_headers=H, extra_query=Q,
        extra_body={"k": "v"},
    )  # fmt: skip
    _has_extras(rec.one("PUT", "/services/svc"), body_key="k")
    await sprite.services.delete("svc", extra_headers=H, extra_query=Q)
    _has_extras(rec.one("DELETE", "/services/svc"))

    # The emulator refuses unknown policy keys (as the service may): headers and query only.
    await sprite.policy.set([], extra_headers=H, extra_query=Q)
    seen = rec.one("POST", "/policy/network")
    _has_extras(seen)
    assert seen.body == {"rules": []}


async def test_fs(client: SpritesClient, wire: tuple[RunningEmulator, Recorder]) -> None:
    _, rec = wire
    fs = client.sprite("box").fs()
    await (fs / "a.txt").write_bytes(b"x", extra_headers=H, extra_query=Q)
    _has_extras(rec.one("PUT", "/fs/write"))
    await (fs / "a.txt").rename(fs / "b.txt", extra_headers=H, extra_query=Q, extra_body={"k": "v"})
    _has_extras(rec.one("POST", "/fs/rename"), body_key="k")
    chunks = [c async for c in (fs / "b.txt").open_read(extra_headers=H, extra_query=Q)]
    assert b"".join(chunks) == b"x"
    _has_extras(rec.one("GET", "/fs/read"))


@pytest.mark.parametrize("control", [True, False])
async def test_exec_websocket_upgrade_carries_headers_and_query(
    client: SpritesClient, wire: tuple[RunningEmulator, Recorder], control: bool
) -> None:
    _, rec = wire
    client.control = control
    result = await client.sprite("box").exec("echo", "hi", extra_headers=H, extra_query=Q)
    assert result.stdout == b"hi\n"
    # Even with the pool enabled: a pooled socket cannot carry per-call headers.
    seen = rec.one("GET", "/v1/sprites/box/exec")
    assert seen.upgrade
    _has_extras(seen)
    assert rec.to("GET", "/control") == []
    # The SDK's own query (the command) is still there.
    assert seen.query["cmd"] == ["echo", "hi"]


async def test_process_sessions_ports_and_proxy(
    client: SpritesClient, wire: tuple[RunningEmulator, Recorder]
) -> None:
    _, rec = wire
    sprite = client.sprite("box")
    async with sprite.process("cat", extra_headers=H, extra_query=Q) as proc:
        await sprite.sessions.list(extra_headers=H, extra_query=Q)
        await proc.close_stdin()
        assert await proc.wait() == 0
    on_exec = rec.to("GET", "/v1/sprites/box/exec")
    upgrades = [r for r in on_exec if r.upgrade]
    listings = [r for r in on_exec if not r.upgrade]
    assert len(upgrades) == 1 and len(listings) == 1
    _has_extras(upgrades[0])
    _has_extras(listings[0])

    watch = sprite.ports.watch(extra_headers=H, extra_query=Q)
    async with watch:
        async for _ in watch:
            break
    _has_extras(rec.one("GET", "/ports/watch"))

    with pytest.raises(ConnectionError):
        # Nothing listens on port 1 in the sprite; the upgrade happened all the same.
        await sprite.open_connection(1, extra_headers=H, extra_query=Q)
    _has_extras(rec.one("GET", "/proxy"))


async def test_run_http(client: SpritesClient, wire: tuple[RunningEmulator, Recorder]) -> None:
    _, rec = wire
    result = await client.sprite("box").run_http("echo", "hi", extra_headers=H, extra_query=Q)
    assert result.exit_code == 0
    _has_extras(rec.one("POST", "/v1/sprites/box/exec"))


async def test_extra_headers_win_except_authorization(
    client: SpritesClient, wire: tuple[RunningEmulator, Recorder]
) -> None:
    _, rec = wire
    await client.sprites.get("box", extra_headers={"User-Agent": "mine/1"})
    assert rec.one("GET", "/v1/sprites/box").headers["User-Agent"] == "mine/1"
    with pytest.raises(ValueError, match="Authorization"):
        await client.sprites.get("box", extra_headers={"authorization": "Bearer other"})
    assert len(rec.to("GET", "/v1/sprites/box")) == 1  # refused before the network


async def test_extra_body_needs_a_json_body(
    client: SpritesClient, wire: tuple[RunningEmulator, Recorder]
) -> None:
    _, rec = wire
    sprite = client.sprite("box")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    with pytest.raises(TypeError, match="extra_body"):
        await sprite.fs().path("w.txt").write_stream(chunks(), extra_body={"k": "v"})
    with pytest.raises(TypeError, match="extra_body"):
        await client.sprites.get("box", extra_body={"k": "v"})
    with pytest.raises(TypeError, match="extra_body"):
        await sprite.exec("true", extra_body={"k": "v"})
    assert rec.requests == []  # nothing was sent


def test_request_options_validation() -> None:
    assert request_options() is None
    opts = request_options(extra_query={"a": [1, 2], "b": False, "c": 1.5})
    assert opts is not None and opts.query == (("a", "1"), ("a", "2"), ("b", "false"), ("c", "1.5"))
    with pytest.raises(TypeError):
        request_options(extra_query={"a": object()})
    with pytest.raises(TypeError):
        request_options(extra_headers={"X": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        request_options(extra_body=["not", "a", "mapping"])  # type: ignore[arg-type]
