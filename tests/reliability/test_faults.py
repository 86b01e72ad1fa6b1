"""The fault matrix: the SDK against every fault the emulator can inject.

Every test runs a real emulator on loopback whose outermost middleware (added
here, see :class:`Emu`) records each request that reaches the server, so the
tests count attempts instead of trusting the client: a retried call must have
hit the server once per injected fault plus once more, and a non-idempotent
call exactly once whatever happened.

1. Every idempotent call is retried through 503/500/502, 429 (with
   ``Retry-After``), dropped connections and slow responses, and surfaces a
   typed error carrying the status, request ids, operation and sprite when the
   faults outlast the :class:`RetryPolicy`.
2. Non-idempotent calls are sent once, whatever the fault.
3. Exec sockets dropped mid-output: the output received is delivered, then
   ``ExitStatusUnknownError`` with the session id; attaching gets the real exit.
4. No exit frame, exit text before trailing output, NDJSON split at every byte,
   truncated and failing NDJSON streams.
5. The incident list page (``has_more`` without a token) ends the listing.
6. A cold wake slower than the handshake timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import (
    APIError,
    ExitStatusUnknownError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesConnectionError,
    SpritesTimeoutError,
    Timeouts,
)
from sprites_async._checkpoints import CheckpointError
from sprites_async._config import ExecSettings
from sprites_async._policy import DomainRule
from sprites_async._services import ServiceError
from sprites_async._sprites import Sprite
from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._sprites import seed_sprites
from sprites_async.emulator._state import EmulatorState, FaultConfig
from tests._emulator import RunningEmulator, serve
from tests._fakes import Conn, FakeSprites

ATTEMPTS = 3
FAST_RETRY = RetryPolicy(max_attempts=ATTEMPTS, base_delay=0.0, max_delay=0.0)
SETTINGS = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0, close_timeout=0.5)
TOKEN = "test-org/1/tok/secret"


# ----------------------------------------------------------------- the emulator


@dataclass
class Emu:
    """A running emulator, the requests it received, and clients to close."""

    running: RunningEmulator
    seen: list[tuple[str, str]]
    slow: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(method, path regex) -> [seconds, how many]: matching requests wait that long
    before the emulator sees them (``latency``, aimed at one call's requests)."""
    clients: list[SpritesClient] = field(default_factory=list)

    @property
    def state(self) -> EmulatorState:
        return self.running.state

    @property
    def faults(self) -> FaultConfig:
        return self.running.state.faults

    def hits(self, method: str, pattern: str) -> int:
        """Requests of ``method`` whose path matches ``pattern`` (a regex)."""
        regex = re.compile(pattern)
        return sum(1 for m, p in self.seen if m == method and regex.search(p))

    def client(self, **kwargs: Any) -> SpritesClient:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("exec_settings", SETTINGS)
        client = SpritesClient(self.running.token, base_url=self.running.url, **kwargs)
        self.clients.append(client)
        return client


def _recorder(emu_ref: list[Emu]) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        emu = emu_ref[0]
        if not request.path.startswith("/_emulator/"):
            emu.seen.append((request.method, request.path))
            for (method, pattern), left in emu.slow.items():
                if method == request.method and left[1] > 0 and re.search(pattern, request.path):
                    left[1] -= 1
                    await asyncio.sleep(left[0])
        return await handler(request)

    return record


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emu]:
    config = EmulatorConfig(
        token=TOKEN,
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",
    )
    config.extra["exec_port_poll"] = 0.05
    app = create_app(config)
    ref: list[Emu] = []
    # Outermost: sees every request, including those the faults abort.
    app.middlewares.insert(0, _recorder(ref))
    async with serve(config, app) as running:
        emulator = Emu(running, [])
        ref.append(emulator)
        try:
            yield emulator
        finally:
            for client in emulator.clients:
                await client.aclose()


def inject(emu: Emu, fault: str, path: str, method: str, count: int) -> None:
    """Make the next ``count`` matching requests fail with ``fault``."""
    faults = emu.faults
    faults.error_path = path
    faults.error_methods = (method,)
    faults.retry_after = 0
    if fault == "reset":
        faults.reset_count = count
    elif fault == "429":
        faults.rate_limit_count = count
    else:
        faults.error_status = int(fault)
        faults.error_count = count


def assert_ids(err: APIError, api_layer: bool) -> None:
    """The request ids the emulator sends: fly-request-id always, x-request-id on the API layer."""
    assert err.fly_request_id, err
    if api_layer:
        assert err.request_id, err
        assert err.request_id in str(err)
    else:
        assert err.request_id is None
    assert err.fly_request_id in str(err)


# ------------------------------------------------- 1. idempotent calls, retried


@dataclass(frozen=True)
class Call:
    """One SDK call: how to prepare for it, make it and check its outcome."""

    id: str
    method: str
    path: str
    """Regex of the request path, ``{s}`` standing for the sprite name."""
    run: Callable[[Sprite, Any], Awaitable[None]]
    setup: Callable[[Sprite], Awaitable[Any]] | None = None
    operation: str = ""
    api_layer: bool = False

    def sprite_name(self) -> str:
        return "x-" + self.id

    def pattern(self) -> str:
        return "^" + self.path.replace("{s}", re.escape(self.sprite_name())) + "$"


async def _write(sprite: Sprite, name: str = "f.txt", data: bytes = b"hello") -> None:
    await (sprite.fs("/home/sprite") / name).write_bytes(data)


async def _checkpoint(sprite: Sprite) -> str:
    return (await sprite.checkpoints.create(comment="setup")).id


async def _two_checkpoints(sprite: Sprite) -> str:
    first = await _checkpoint(sprite)
    await _checkpoint(sprite)  # the newest is the active one, which cannot be deleted
    return first


async def _service(sprite: Sprite) -> None:
    await sprite.services.create("web", cmd="sleep", args=["30"], duration=0.05)


async def _detached(sprite: Sprite) -> str:
    async with sprite.process("sleep", "30", max_run_after_disconnect=30) as proc:
        sid = await proc.detach()
    assert sid is not None
    return sid


def _fs(sprite: Sprite) -> Any:
    return sprite.fs("/home/sprite")


async def _get(sprite: Sprite, _: Any) -> None:
    info = await sprite.client.sprites.get(sprite.name)
    assert info.name == sprite.name


async def _update(sprite: Sprite, _: Any) -> None:
    info = await sprite.client.sprites.update(sprite.name, labels=["patched"])
    assert info.labels == ["patched"]


async def _delete(sprite: Sprite, _: Any) -> None:
    assert await sprite.client.sprites.delete(sprite.name) is True
    with pytest.raises(NotFoundError):
        await sprite.client.sprites.get(sprite.name)


async def _upgrade(sprite: Sprite, _: Any) -> None:
    await sprite.client.sprites.upgrade(sprite.name)


async def _list(sprite: Sprite, _: Any) -> None:
    names = [s.name async for s in sprite.client.sprites.list(prefix=sprite.name)]
    assert sprite.name in names


async def _read(sprite: Sprite, _: Any) -> None:
    assert await (_fs(sprite) / "f.txt").read_bytes() == b"hello"


async def _open_read(sprite: Sprite, _: Any) -> None:
    chunks = [c async for c in (_fs(sprite) / "f.txt").open_read(offset=1)]
    assert b"".join(chunks) == b"ello"


async def _write_call(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "new.txt").write_bytes(b"written")
    assert await (_fs(sprite) / "new.txt").read_bytes() == b"written"


async def _stat(sprite: Sprite, _: Any) -> None:
    info = await (_fs(sprite) / "f.txt").stat()
    assert info.is_file
    assert info.size == 5


async def _scandir(sprite: Sprite, _: Any) -> None:
    assert [e.name for e in await (_fs(sprite) / "d").scandir()] == ["f.txt"]


async def _unlink(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "f.txt").unlink()
    assert not await (_fs(sprite) / "f.txt").exists()


async def _rmtree(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "d").rmtree()
    assert not await (_fs(sprite) / "d").exists()


async def _mkdir(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "made" / "deep").mkdir()
    assert await (_fs(sprite) / "made" / "deep").is_dir()


async def _copy(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "f.txt").copy("g.txt")
    assert await (_fs(sprite) / "g.txt").read_bytes() == b"hello"


async def _chmod(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "f.txt").chmod(0o600)
    assert (await (_fs(sprite) / "f.txt").stat()).mode == 0o600


async def _chown(sprite: Sprite, _: Any) -> None:
    await (_fs(sprite) / "f.txt").chown(os.getuid(), os.getgid())


async def _cp_list(sprite: Sprite, cp: Any) -> None:
    assert cp in [c.id for c in await sprite.checkpoints.list()]


async def _cp_get(sprite: Sprite, cp: Any) -> None:
    assert (await sprite.checkpoints.get(cp)).id == cp


async def _cp_delete(sprite: Sprite, cp: Any) -> None:
    await sprite.checkpoints.delete(cp)
    assert cp not in [c.id for c in await sprite.checkpoints.list()]


async def _cp_restore(sprite: Sprite, cp: Any) -> None:
    await sprite.checkpoints.restore(cp)


async def _svc_list(sprite: Sprite, _: Any) -> None:
    assert [s.name for s in await sprite.services.list()] == ["web"]


async def _svc_get(sprite: Sprite, _: Any) -> None:
    assert (await sprite.services.get("web")).name == "web"


async def _svc_delete(sprite: Sprite, _: Any) -> None:
    await sprite.services.delete("web")
    assert await sprite.services.list() == []


async def _svc_logs(sprite: Sprite, _: Any) -> None:
    result = await sprite.services.logs("web")
    assert result.exit_code is None


async def _policy_get(sprite: Sprite, _: Any) -> None:
    assert (await sprite.policy.get()).rules == []


async def _policy_set(sprite: Sprite, _: Any) -> None:
    rule = DomainRule(domain="example.com", action="allow")
    await sprite.policy.set([rule])
    assert (await sprite.policy.get()).rules == [rule]


async def _sessions_list(sprite: Sprite, _: Any) -> None:
    assert await sprite.sessions.list() == []


async def _sessions_kill(sprite: Sprite, sid: Any) -> None:
    # Only KILL is retried: a repeated TERM/INT may be read as "force it".
    code = await sprite.sessions.kill(sid, signal="KILL", timeout=1)
    assert code == 128 + 9
    assert await sprite.sessions.list() == []


async def _two_files(sprite: Sprite) -> None:
    await _write(sprite, "d/f.txt")


FS = "/v1/sprites/{s}/fs/"
IDEMPOTENT_CALLS = [
    Call("get", "GET", "/v1/sprites/{s}", _get, operation="get sprite", api_layer=True),
    Call("update", "PUT", "/v1/sprites/{s}", _update, operation="update sprite", api_layer=True),
    Call("delete", "DELETE", "/v1/sprites/{s}", _delete, operation="delete sprite", api_layer=True),
    Call("list", "GET", "/v1/sprites", _list, operation="list sprites", api_layer=True),
    Call("fs-read", "GET", FS + "read", _read, _write, "fs read"),
    Call("fs-open-read", "GET", FS + "read", _open_read, _write, "fs read"),
    Call("fs-write", "PUT", FS + "write", _write_call, None, "fs write"),
    Call("fs-stat", "GET", FS + "list", _stat, _write, "fs list"),
    Call("fs-scandir", "GET", FS + "list", _scandir, _two_files, "fs list"),
    Call("fs-unlink", "DELETE", FS + "delete", _unlink, _write, "fs delete"),
    Call("fs-rmtree", "DELETE", FS + "delete", _rmtree, _two_files, "fs delete"),
    Call("fs-mkdir", "PUT", FS + "write", _mkdir, None, "fs write"),
    Call("fs-chmod", "POST", FS + "chmod", _chmod, _write, "fs chmod"),
    Call("fs-chown", "POST", FS + "chown", _chown, _write, "fs chown"),
    Call(
        "cp-list", "GET", "/v1/sprites/{s}/checkpoints", _cp_list, _checkpoint, "list checkpoints"
    ),
    Call("cp-get", "GET", "/v1/sprites/{s}/checkpoints/v1", _cp_get, _checkpoint, "get checkpoint"),
    Call(
        "cp-delete",
        "DELETE",
        "/v1/sprites/{s}/checkpoints/v1",
        _cp_delete,
        _two_checkpoints,
        "delete checkpoint",
    ),
    Call("svc-list", "GET", "/v1/sprites/{s}/services", _svc_list, _service, "list services"),
    Call("svc-get", "GET", "/v1/sprites/{s}/services/web", _svc_get, _service, "get service"),
    Call(
        "svc-delete",
        "DELETE",
        "/v1/sprites/{s}/services/web",
        _svc_delete,
        _service,
        "delete service",
    ),
    Call(
        "svc-logs", "GET", "/v1/sprites/{s}/services/web/logs", _svc_logs, _service, "service logs"
    ),
    Call(
        "policy-get",
        "GET",
        "/v1/sprites/{s}/policy/network",
        _policy_get,
        None,
        "get network policy",
    ),
    Call(
        "policy-set",
        "POST",
        "/v1/sprites/{s}/policy/network",
        _policy_set,
        None,
        "set network policy",
    ),
    Call("sessions-list", "GET", "/v1/sprites/{s}/exec", _sessions_list, None, "list sessions"),
    Call(
        "sessions-kill",
        "POST",
        "/v1/sprites/{s}/exec/[0-9]+/kill",
        _sessions_kill,
        _detached,
        "kill session",
    ),
]
CALL_IDS = [c.id for c in IDEMPOTENT_CALLS]


async def prepare(emu: Emu, call: Call, client: SpritesClient) -> tuple[Sprite, Any]:
    """Create the call's own sprite and run its setup (before any fault is on)."""
    await client.sprites.create(call.sprite_name())
    sprite = client.sprite(call.sprite_name())
    ctx = None if call.setup is None else await call.setup(sprite)
    emu.seen.clear()
    return sprite, ctx


@pytest.mark.parametrize("fault", ["503", "500", "502", "429", "reset"])
@pytest.mark.parametrize("call", IDEMPOTENT_CALLS, ids=CALL_IDS)
async def test_idempotent_call_is_retried_through_faults(emu: Emu, call: Call, fault: str) -> None:
    client = emu.client()
    sprite, ctx = await prepare(emu, call, client)
    inject(emu, fault, call.pattern(), call.method, ATTEMPTS - 1)
    await call.run(sprite, ctx)
    # Every injected fault was consumed by an attempt that reached the server...
    assert (emu.faults.error_count or 0) == 0
    assert (emu.faults.rate_limit_count or 0) == 0
    assert emu.faults.reset_count == 0
    # ...and one more attempt succeeded: nothing else was sent.
    assert emu.hits(call.method, call.pattern()) == ATTEMPTS


@pytest.mark.parametrize("fault", ["503", "500", "429", "reset"])
@pytest.mark.parametrize("call", IDEMPOTENT_CALLS, ids=CALL_IDS)
async def test_faults_outlasting_the_policy_raise_a_typed_error(
    emu: Emu, call: Call, fault: str
) -> None:
    client = emu.client()
    sprite, ctx = await prepare(emu, call, client)
    inject(emu, fault, call.pattern(), call.method, 100)
    with pytest.raises(SpritesConnectionError if fault == "reset" else APIError) as info:
        await call.run(sprite, ctx)
    err = info.value
    assert err.operation == call.operation
    hits = emu.hits(call.method, call.pattern())
    assert hits == ATTEMPTS  # aiohttp's own silent re-send is off: the policy decides
    if fault == "reset":
        assert isinstance(err, SpritesConnectionError)
        assert err.sprite == (None if call.id == "list" else call.sprite_name())
        return
    assert isinstance(err, APIError)
    if fault == "429":
        assert isinstance(err, RateLimitError)
        assert err.status_code == 429
        assert err.retry_after == 0
    else:
        assert isinstance(err, ServerError)
        assert err.status_code == int(fault)
    assert err.sprite == (None if call.id == "list" else call.sprite_name())
    assert_ids(err, call.api_layer)
    assert call.operation in str(err)


async def test_retry_after_is_honoured(emu: Emu) -> None:
    client = emu.client()
    await client.sprites.create("wait")
    emu.seen.clear()
    inject(emu, "429", "^/v1/sprites/wait$", "GET", 1)
    emu.faults.retry_after = 1
    started = time.monotonic()
    assert (await client.sprites.get("wait")).name == "wait"
    assert time.monotonic() - started >= 0.9  # the policy has zero delays: this is Retry-After
    assert emu.hits("GET", "^/v1/sprites/wait$") == 2
    # A Retry-After beyond the policy's max_retry_after is not waited for.
    async with SpritesClient(
        TOKEN,
        base_url=emu.running.url,
        retry=RetryPolicy(max_attempts=5, base_delay=0, max_delay=0, max_retry_after=10),
    ) as impatient:
        inject(emu, "503", "^/v1/sprites/wait$", "GET", 1)
        emu.faults.retry_after = 3600
        with pytest.raises(ServerError) as info:
            await impatient.sprites.get("wait")
    assert info.value.status_code == 503
    assert emu.hits("GET", "^/v1/sprites/wait$") == 3


async def _prepare_all(emu: Emu, client: SpritesClient) -> list[tuple[Call, Sprite, Any]]:
    async def one(call: Call) -> tuple[Call, Sprite, Any]:
        await client.sprites.create(call.sprite_name())
        sprite = client.sprite(call.sprite_name())
        return call, sprite, None if call.setup is None else await call.setup(sprite)

    prepared = await asyncio.gather(*(one(c) for c in IDEMPOTENT_CALLS))
    emu.seen.clear()
    return list(prepared)


async def test_slow_responses_succeed_without_spurious_retries(emu: Emu) -> None:
    client = emu.client()
    prepared = await _prepare_all(emu, client)
    emu.faults.latency = 0.2
    await asyncio.gather(*(call.run(sprite, ctx) for call, sprite, ctx in prepared))
    for call, _, _ in prepared:
        assert emu.hits(call.method, call.pattern()) == 1, call.id


async def test_a_response_slower_than_the_timeout_is_retried(emu: Emu) -> None:
    client = emu.client(timeout=Timeouts(read=1.0, wake=1.0, stream_idle=1.0))
    prepared = await _prepare_all(emu, client)
    for call, _, _ in prepared:
        emu.slow[call.method, call.pattern()] = [3.0, 1]  # the first attempt of each call stalls
    await asyncio.gather(*(call.run(sprite, ctx) for call, sprite, ctx in prepared))
    for call, _, _ in prepared:
        assert emu.hits(call.method, call.pattern()) == 2, call.id


async def test_responses_always_slower_than_the_timeout(emu: Emu) -> None:
    client = emu.client(timeout=Timeouts(read=0.3, wake=0.3, stream_idle=0.3))
    prepared = await _prepare_all(emu, client)
    for call, _, _ in prepared:
        emu.slow[call.method, call.pattern()] = [1.0, 100]
    results = await asyncio.gather(
        *(call.run(sprite, ctx) for call, sprite, ctx in prepared), return_exceptions=True
    )
    for (call, _, _), result in zip(prepared, results):
        assert isinstance(result, SpritesTimeoutError), (call.id, result)
        assert result.operation == call.operation
        assert result.sprite == (None if call.id == "list" else call.sprite_name())
        assert emu.hits(call.method, call.pattern()) == ATTEMPTS, call.id


async def test_attach_handshake_is_retried(emu: Emu) -> None:
    client = emu.client()
    await client.sprites.create("att")
    sprite = client.sprite("att")
    sid = await _detached(sprite)
    emu.seen.clear()
    inject(emu, "503", f"^/v1/sprites/att/exec/{sid}$", "GET", ATTEMPTS - 1)
    async with sprite.sessions.attach(sid, kill_on_exit=True) as proc:
        assert proc.session_id == sid
    assert emu.hits("GET", f"^/v1/sprites/att/exec/{sid}$") == ATTEMPTS


# --------------------------------------------- 2. non-idempotent calls: sent once


@dataclass(frozen=True)
class Once:
    id: str
    method: str
    path: str
    run: Callable[[Sprite, Any], Awaitable[Any]]
    setup: Callable[[Sprite], Awaitable[Any]] | None = None
    operation: str = ""
    unchanged: Callable[[Sprite, Any], Awaitable[None]] | None = None
    """Checks afterwards (faults off) that nothing happened."""


async def _no_sprite(sprite: Sprite, _: Any) -> None:
    with pytest.raises(NotFoundError):
        await sprite.client.sprites.get("made-once")


async def _only_setup_checkpoint(sprite: Sprite, _: Any) -> None:
    assert [c.id for c in await sprite.checkpoints.list()] == ["v1", "v0"]


async def _not_renamed(sprite: Sprite, _: Any) -> None:
    assert await (_fs(sprite) / "f.txt").exists()
    assert not await (_fs(sprite) / "moved.txt").exists()


async def _not_copied(sprite: Sprite, _: Any) -> None:
    assert not await (_fs(sprite) / "g.txt").exists()


async def _still_running(sprite: Sprite, sid: Any) -> None:
    assert sid in [s.id for s in await sprite.sessions.list()]


async def _ran_never(sprite: Sprite, _: Any) -> None:
    assert not await (_fs(sprite) / "ran.log").exists()


async def _svc_running(sprite: Sprite, _: Any) -> None:
    state = (await sprite.services.get("web")).state
    assert state is not None
    assert state.status == "running"


async def _no_service(sprite: Sprite, _: Any) -> None:
    assert await sprite.services.list() == []


async def _chunks() -> AsyncIterator[bytes]:
    yield b"part one, "
    yield b"part two"


RAN = "echo ran >> ran.log"  # relative: the command's cwd is the sprite's home

NON_IDEMPOTENT = [
    Once(
        "create",
        "POST",
        "^/v1/sprites$",
        lambda s, _: s.client.sprites.create("made-once"),
        None,
        "create sprite",
        _no_sprite,
    ),
    Once(
        "cp-create",
        "POST",
        "/checkpoint$",
        lambda s, _: s.checkpoints.create(),
        _checkpoint,
        "create checkpoint",
        _only_setup_checkpoint,
    ),
    Once(
        "fs-rename",
        "POST",
        "/fs/rename$",
        lambda s, _: (_fs(s) / "f.txt").rename("moved.txt"),
        _write,
        "fs rename",
        _not_renamed,
    ),
    Once(
        "fs-write-stream",
        "PUT",
        "/fs/write$",
        lambda s, _: (_fs(s) / "streamed.txt").write_stream(_chunks()),
        None,
        "fs write",
    ),
    Once(
        "svc-create",
        "PUT",
        "/services/web$",
        lambda s, _: s.services.create("web", cmd="sleep", args=["30"], duration=0.05),
        None,
        "create service",
        _no_service,
    ),
    Once(
        "svc-restart",
        "POST",
        "/services/web/restart$",
        lambda s, _: s.services.restart("web", duration=0.05),
        _service,
        "restart service",
        _svc_running,
    ),
    Once(
        "svc-stop",
        "POST",
        "/services/web/stop$",
        lambda s, _: s.services.stop("web"),
        _service,
        "stop service",
        _svc_running,
    ),
    Once(
        "svc-signal",
        "POST",
        "/services/signal$",
        lambda s, _: s.services.signal("web", "TERM"),
        _service,
        "signal service",
        _svc_running,
    ),
    # POSTs whose repetition is not harmless (see docs/guides/reliability.md, "What is retried").
    Once(
        "upgrade",
        "POST",
        "^/v1/sprites/once/upgrade$",
        _upgrade,
        None,
        "upgrade sprite",
    ),
    Once("fs-copy", "POST", "/fs/copy$", _copy, _write, "fs copy", _not_copied),
    Once(
        "cp-restore",
        "POST",
        "/checkpoints/v1/restore$",
        _cp_restore,
        _checkpoint,
        "restore checkpoint",
    ),
    Once(
        "sessions-kill-term",
        "POST",
        "/exec/[0-9]+/kill$",
        lambda s, sid: s.sessions.kill(sid, timeout=1),
        _detached,
        "kill session",
        _still_running,
    ),
    Once(
        "run-http",
        "POST",
        "/exec$",
        lambda s, _: s.run_http("sh", "-c", RAN),
        None,
        "exec (http)",
        _ran_never,
    ),
]


@pytest.mark.parametrize("fault", ["503", "500", "429", "reset"])
@pytest.mark.parametrize("call", NON_IDEMPOTENT, ids=[c.id for c in NON_IDEMPOTENT])
async def test_non_idempotent_call_is_sent_once(emu: Emu, call: Once, fault: str) -> None:
    client = emu.client()
    await client.sprites.create("once")
    sprite = client.sprite("once")
    ctx = None if call.setup is None else await call.setup(sprite)
    emu.seen.clear()
    inject(emu, fault, call.path, call.method, 100)
    with pytest.raises(SpritesConnectionError if fault == "reset" else APIError) as info:
        await call.run(sprite, ctx)
    assert emu.hits(call.method, call.path) == 1
    assert info.value.operation == call.operation
    if fault != "reset":
        assert isinstance(info.value, APIError)
        assert info.value.status_code == int(fault)
        assert_ids(info.value, api_layer=call.id in ("create", "upgrade"))
    emu.faults.reset()
    if call.unchanged is not None:
        await call.unchanged(sprite, ctx)


@pytest.mark.parametrize("fault", ["500", "reset"])
@pytest.mark.parametrize("mode", ["direct", "control"])
async def test_exec_start_is_not_repeated(emu: Emu, fault: str, mode: str) -> None:
    client = emu.client(control=mode == "control")
    await client.sprites.create("once")
    sprite = client.sprite("once")
    emu.seen.clear()
    endpoint = "^/v1/sprites/once/" + ("control" if mode == "control" else "exec") + "$"
    inject(emu, fault, endpoint, "GET", 100)
    if mode == "control":
        # The /control dial carries no command: any failure of it sends the
        # command to a direct socket, where it runs once.
        assert (await sprite.exec("sh", "-c", RAN)).exit_code == 0
        assert emu.hits("GET", endpoint) == 1
        assert emu.hits("GET", "^/v1/sprites/once/exec$") == 1
        emu.faults.reset()
        assert await (_fs(sprite) / "ran.log").read_text() == "ran\n"
        return
    with pytest.raises(SpritesConnectionError if fault == "reset" else ServerError) as info:
        await sprite.exec("sh", "-c", RAN)
    assert info.value.sprite == "once"
    # Never re-sent: not by the SDK, and not by aiohttp, which on its own would
    # repeat an idempotent-method request (the upgrade GET) once on a reset.
    assert emu.hits("GET", endpoint) == 1
    emu.faults.reset()
    await _ran_never(sprite, None)


@pytest.mark.parametrize("mode", ["direct", "control"])
async def test_refused_exec_handshake_is_retried_and_runs_once(emu: Emu, mode: str) -> None:
    # Documented: a handshake refused with 429/502/503/504 cannot have started
    # the command, so it is retried (a refused /control dial goes to a direct
    # socket instead); the command runs exactly once.
    client = emu.client(control=mode == "control")
    await client.sprites.create("once")
    sprite = client.sprite("once")
    endpoint = "^/v1/sprites/once/" + ("control" if mode == "control" else "exec") + "$"
    emu.seen.clear()
    inject(emu, "503", endpoint, "GET", ATTEMPTS - 1)
    result = await sprite.exec("sh", "-c", RAN)
    assert result.exit_code == 0
    assert emu.hits("GET", endpoint) == (1 if mode == "control" else ATTEMPTS)
    if mode == "control":
        assert emu.hits("GET", "^/v1/sprites/once/exec$") == 1
    assert await (_fs(sprite) / "ran.log").read_text() == "ran\n"


# ---------------------------------------------------- 3. sockets dropped mid-output

SCRIPT = "echo a; sleep 0.3; echo b; sleep 0.3; echo c; sleep 1; echo d; exit 7"


async def _attach_rest(sprite: Sprite, sid: str) -> tuple[bytes, int]:
    async with sprite.sessions.attach(sid) as proc:
        out = await proc.stdout.read()
        return out, await proc.wait()


@pytest.mark.parametrize("mode", ["direct", "control"])
async def test_exec_dropped_mid_output(emu: Emu, mode: str) -> None:
    client = emu.client(control=mode == "control")
    await client.sprites.create("drop")
    sprite = client.sprite("drop")
    # direct: debug, session_info, "a", "b"; control: op.ack, session_info, "a", "b".
    emu.faults.drop_ws_after_frames = 4
    with pytest.raises(ExitStatusUnknownError) as info:
        await sprite.exec("sh", "-c", SCRIPT)
    emu.faults.drop_ws_after_frames = None
    err = info.value
    assert err.session_id is not None
    assert err.sprite == "drop"
    assert err.stdout == b"a\nb\n"  # what arrived before the drop is the caller's
    out, code = await _attach_rest(sprite, err.session_id)
    assert code == 7  # the true exit code, not an invented one
    assert out.endswith(b"c\nd\n")


async def test_process_stream_dropped_mid_output(emu: Emu) -> None:
    client = emu.client()
    await client.sprites.create("drop")
    sprite = client.sprite("drop")
    emu.faults.drop_ws_after_frames = 4
    chunks: list[bytes] = []

    async def drain(stream: Any) -> None:
        async for chunk in stream:
            chunks.append(chunk)

    async with sprite.process("sh", "-c", SCRIPT, stdin=False, kill_on_exit=False) as proc:
        with pytest.raises(ExitStatusUnknownError) as info:
            await drain(proc.stdout)
        with pytest.raises(ExitStatusUnknownError):
            await proc.wait()
        sid = proc.session_id
    emu.faults.drop_ws_after_frames = None
    assert b"".join(chunks) == b"a\nb\n"
    assert info.value.session_id == sid
    assert sid is not None
    out, code = await _attach_rest(sprite, sid)
    assert code == 7
    assert out.endswith(b"c\nd\n")


# ------------------------------------------------------ 4. exit frames and NDJSON


async def test_missing_exit_is_never_invented_direct(emu: Emu) -> None:
    client = emu.client(control=False)
    await client.sprites.create("mute")
    sprite = client.sprite("mute")
    emu.faults.suppress_exit = True
    with pytest.raises(ExitStatusUnknownError) as info:
        await sprite.exec("sh", "-c", "echo hi; exit 3")
    assert info.value.session_id is not None
    assert info.value.stdout == b"hi\n"
    async with sprite.process("sh", "-c", "echo hi; exit 3", stdin=False) as proc:
        assert await proc.stdout.__anext__() == b"hi\n"
        with pytest.raises(ExitStatusUnknownError):
            await proc.wait()


async def test_missing_exit_frame_over_control_uses_op_complete(emu: Emu) -> None:
    # Documented: a control socket's op.complete carries the exit code.
    client = emu.client(control=True)
    await client.sprites.create("mute")
    emu.faults.suppress_exit = True
    result = await client.sprite("mute").exec("sh", "-c", "echo hi; exit 3")
    assert (result.exit_code, result.stdout) == (3, b"hi\n")


async def test_exit_text_before_trailing_output(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"early ")
        await conn.exit_text(5)
        await conn.out(b"trailing", stream=1)
        await conn.out(b"err", stream=2)
        await conn.exit_frame(5)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        result = await client.sprite("box").exec("cmd")
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"early trailing", b"err")


async def test_exit_stream_that_hangs_hits_the_command_timeout(fake: FakeSprites) -> None:
    # Output, then nothing: no exit, socket open. ``timeout=`` ends it with
    # the documented CommandTimeoutError, never an invented exit code.
    from sprites_async import CommandTimeoutError

    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"partial")
        await conn.client_closed(timeout=30)

    async def kill(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "gone"}, status=410)

    fake.exec_script = script
    fake.capabilities = None
    fake.kill_handler = kill
    async with fake.client() as client:
        with pytest.raises(CommandTimeoutError) as info:
            await client.sprite("box").exec("cmd", timeout=0.5)
    assert info.value.session_id == "42"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
async def test_ndjson_split_anywhere(emu: Emu, chunk: int) -> None:
    client = emu.client()
    await client.sprites.create("nd")
    sprite = client.sprite("nd")
    await (_fs(sprite) / "f.txt").write_bytes(b"one")
    reference = [e.type async for e in sprite.checkpoints.create(comment="plain")]
    emu.faults.ndjson_chunk = chunk
    events = [e async for e in sprite.checkpoints.create(comment="split")]
    assert [e.type for e in events] == reference
    assert events[-1].type == "complete"
    ids = [c.id for c in await sprite.checkpoints.list()]
    assert ids == ["v2", "v1", "v0"][: len(ids)]
    created = await sprite.checkpoints.create(comment="awaited")
    assert created.id == "v3"
    await (_fs(sprite) / "f.txt").write_bytes(b"two")
    await sprite.checkpoints.restore("v1")
    assert await (_fs(sprite) / "f.txt").read_bytes() == b"one"
    await _service(sprite)
    stopped = await sprite.services.stop("web", timeout=1)
    assert stopped.exit_code is not None
    await sprite.services.start("web", duration=0.05)
    await _svc_running(sprite, None)
    with pytest.raises(CheckpointError) as info:
        await sprite.checkpoints.restore("v99")  # an error event in a 200 stream
    assert info.value.checkpoint_id == "v99"


def _ndjson_app(lines: list[bytes], *, cut: bool) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
            await asyncio.sleep(0.01)
        if cut:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/sprites/box/checkpoint", handler)
    app.router.add_post("/v1/sprites/box/checkpoints/{cp}/restore", handler)
    app.router.add_post("/v1/sprites/box/services/web/stop", handler)
    return app


async def _with_app(app: web.Application, use: Callable[[Sprite], Awaitable[Any]]) -> Any:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with SpritesClient(
            TOKEN, base_url=str(server.make_url("")).rstrip("/"), retry=FAST_RETRY
        ) as client:
            return await use(client.sprite("box"))
    finally:
        await server.close()


INFO = b'{"type":"info","data":"Creating checkpoint..."}\n'


async def test_truncated_ndjson_stream() -> None:
    app = _ndjson_app([INFO, b'{"type":"info","da'], cut=False)
    seen: list[Any] = []

    async def use(sprite: Sprite) -> None:
        async for event in sprite.checkpoints.create():
            seen.append(event)

    with pytest.raises(CheckpointError, match="without a 'complete' event"):
        await _with_app(app, use)
    assert [e.type for e in seen] == ["info"]  # the cut line is skipped, not invented


async def test_ndjson_stream_cut_mid_line() -> None:
    app = _ndjson_app([b'{"type":"stopping","data":"x"}\n', b'{"type":"std'], cut=True)
    with pytest.raises(SpritesConnectionError) as info:
        await _with_app(app, lambda sprite: sprite.services.stop("web"))
    assert info.value.operation == "stop service"
    assert info.value.sprite == "box"


async def test_error_event_mid_stream() -> None:
    error = msgspec.json.encode({"type": "error", "error": "disk full"}) + b"\n"
    app = _ndjson_app([INFO, error, INFO, b'{"type":"complete","data":"done"}\n'], cut=False)
    with pytest.raises(CheckpointError) as info:
        await _with_app(app, lambda sprite: sprite.checkpoints.restore("v1"))
    assert info.value.server_message == "disk full"
    assert info.value.checkpoint_id == "v1"
    svc_error = b'{"type":"error","data":"cannot stop"}\n{"type":"complete"}\n'
    with pytest.raises(ServiceError) as svc_info:
        await _with_app(_ndjson_app([svc_error], cut=False), lambda s: s.services.stop("web"))
    assert "cannot stop" in str(svc_info.value)


# ------------------------------------------------------------- 5. incident page


@pytest.mark.parametrize("page_size", [50, 7])
async def test_incident_page_ends_the_listing_without_a_request_storm(
    emu: Emu, page_size: int
) -> None:
    seed_sprites(emu.state, 120, prefix="inc-")
    emu.faults.incident_page = True
    client = emu.client()
    names = [s.name async for s in client.sprites.list(prefix="inc-", max_results=page_size)]
    assert names == [f"inc-{i:05d}" for i in range(120)]
    pages = -(-120 // page_size)
    assert emu.hits("GET", "^/v1/sprites$") == pages
    # The last page really was the incident shape.
    emu.seen.clear()
    last = await client.sprites.list(prefix="inc-119")
    assert last.has_more is True
    assert last.next_token is None
    assert emu.hits("GET", "^/v1/sprites$") == 1


# ------------------------------------------------------------- 6. slow cold wake


@pytest.mark.parametrize("mode", ["direct", "control"])
async def test_slow_wake_beyond_the_handshake_timeout(emu: Emu, mode: str) -> None:
    client = emu.client(control=mode == "control", timeout=Timeouts(wake=0.3))
    await client.sprites.create("sleepy")
    assert (await client.sprites.get("sleepy")).status == "cold"
    emu.faults.wake_delay = 1.0
    with pytest.raises(SpritesTimeoutError) as info:
        await client.sprite("sleepy").exec("true")
    message = str(info.value)
    assert "handshake" in message
    assert "wake" in message
    assert "sleepy" in message
    assert info.value.sprite == "sleepy"
    # Configurable: with room for the wake the same call succeeds.
    patient = emu.client(control=mode == "control", timeout=Timeouts(wake=10.0))
    assert (await patient.sprite("sleepy").exec("true")).exit_code == 0


async def test_slow_wake_of_a_plain_call(emu: Emu) -> None:
    client = emu.client(timeout=Timeouts(wake=0.3), retry=RetryPolicy.none())
    await client.sprites.create("sleepy")
    emu.faults.wake_delay = 1.0
    with pytest.raises(SpritesTimeoutError) as info:
        await client.sprite("sleepy").checkpoints.list()
    assert info.value.sprite == "sleepy"
    assert info.value.operation == "list checkpoints"
    patient = emu.client(timeout=Timeouts(wake=10.0))
    assert [c.id for c in await patient.sprite("sleepy").checkpoints.list()] == ["v0"]
