"""Shared state of one emulator instance, and the contract between its modules.

Every feature module (``_sprites``, ``_exec``, ``_control``, ``_checkpoints``,
``_fs``, ``_policy`` ...) exposes ``setup(app, state)`` that registers its
routes. Handlers reach the state through ``request.app[STATE_KEY]``.

Routes under ``/v1/sprites/{name}/...`` (the *sprite layer*) are wrapped by a
middleware (see ``_app``) that has already checked the token, checked that the
sprite exists (404 JSON otherwise), applied the wake delay and marked the
sprite ``running`` for as long as the handler runs (a WebSocket handler runs
as long as its socket is open). Handlers therefore never repeat those checks.

Work that keeps a sprite busy beyond one request holds
``async with state.activity(name)``. Modules keeping per-sprite data register
an async callback in ``state.sprite_deleted_hooks`` (or
``sprite_created_hooks``). Sprite records are persisted by ``state.store``;
after changing one in place call ``state.save_sprite(rec)``.

This module sits at the bottom of the emulator's imports (below it only the
lifecycle, the store, quirks and the process helpers). A module that needs a
feature module above it goes through a registry on the state that the
feature fills in (``state.sessions`` by ``_exec``, ``state.services`` by
``_supervisor``), not through an import: the emulator has no import cycle
(``tests/test_import_graph.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
from aiohttp import web

from ._lifecycle import Lifecycle
from ._quirks import QuirkSet
from ._sandbox import file_owner, prepare_root
from ._store import SpriteRecord as SpriteRecord  # its home is the store; imported from here
from ._store import SpriteStore

SandboxMode = Literal["auto", "required", "bwrap", "none"]


@dataclass
class FaultConfig:
    """Knobs that make the emulator misbehave the way the real service does.

    All are off by default. Tests set them directly (``emu.faults.x = ...``) or
    over ``POST /_emulator/faults`` with a JSON object of the same field names.
    """

    latency: float = 0.0
    """Seconds added before every response (API and sprite layer)."""
    wake_delay: float = 0.0
    """Extra seconds a sprite-layer request waits when the sprite is not running."""
    error_rate: float = 0.0
    """Fraction (0..1) of matching requests answered with ``error_status``."""
    error_status: int = 503
    error_count: int | None = None
    """If set, inject exactly this many errors (then stop), ignoring ``error_rate``."""
    error_path: str | None = None
    """Regex; only requests whose path matches get injected errors/429s/resets."""
    error_methods: tuple[str, ...] | None = None
    """Only these HTTP methods get injected errors/429s/resets (None = all)."""
    rate_limit_rate: float = 0.0
    """Fraction of matching requests answered 429 with the structured body."""
    rate_limit_count: int | None = None
    retry_after: int = 1
    """``Retry-After`` seconds sent with injected 429s and 503s."""
    reset_count: int = 0
    """Abort this many matching requests by dropping the TCP connection."""
    drop_ws_after_frames: int | None = None
    """Exec/control sockets: drop TCP (no close frame) after N server frames."""
    suppress_exit: bool = False
    """Exec: never send the exit message nor the exit frame."""
    ndjson_chunk: int | None = None
    """NDJSON responses are written in pieces of this many bytes (odd splits)."""
    incident_page: bool = False
    """List: the last page says ``has_more: true`` with a null token."""
    missing_sprite_500: bool = False
    """Missing sprites on GET/DELETE answer the recorded 500 bodies, not 404."""
    control_404: bool = False
    """``/control`` answers 404, as older sprites do (tests the fallback)."""

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields from a mapping, refusing unknown names."""
        for key, value in values.items():
            if not hasattr(self, key) or key.startswith("_"):
                raise KeyError(key)
            if key == "error_methods" and value is not None:
                value = tuple(str(v).upper() for v in value)
            setattr(self, key, value)

    def reset(self) -> None:
        """Switch every fault off again, in place (holders of this object see it)."""
        for f in dataclasses.fields(self):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            setattr(self, f.name, default)

    def to_dict(self) -> dict[str, Any]:
        """The current knobs as JSON-ready values."""
        out = dataclasses.asdict(self)
        if out["error_methods"] is not None:
            out["error_methods"] = list(out["error_methods"])
        return out


@dataclass
class EmulatorConfig:
    """Static configuration of an emulator instance."""

    token: str
    state_dir: Path
    org: str = "local-org"
    warm_after: float = 30.0
    """Seconds of inactivity before ``running`` becomes ``warm`` (real: ~30 s)."""
    cold_after: float = 300.0
    """Seconds of inactivity before ``warm`` becomes ``cold``."""
    exit_linger: float = 5.0
    """Seconds an exec socket stays open after the exit frame (real: ~5 s)."""
    sandbox: SandboxMode = "auto"
    """Bubblewrap when it can run here (``auto``), always (``required``, or its
    older name ``bwrap``: the emulator refuses to start without it), or plain
    subprocesses running as the emulator's user (``none``, not a sandbox)."""
    max_processes: int | None = 512
    """Processes (and threads) one sprite may have at once (sandboxed only)."""
    memory_limit: int | None = 4 << 30
    """Bytes of memory one sprite may use (sandboxed only)."""
    cpu_limit: float | None = None
    """CPU time one sprite may use, in cores (sandboxed, with cgroups only)."""
    sprite_network: Literal["auto", "own", "host"] = "auto"
    """Sandboxed sprites get a network namespace each (``own``; ``auto``: when
    ``slirp4netns`` is installed) or share the emulator's (``host``)."""
    inline_exec: bool = False
    """Answer synthetic commands (echo, cat, exit K, sleep S, ...) without processes."""
    sprite_version: str = "v0.0.1-rc46"
    signal_capability: bool = True
    """Advertise ``X-Sprite-Capabilities: signal`` on exec upgrades."""
    running_limit: int = 20
    warm_limit: int = 20
    max_body: int = 1 << 30
    """Largest request body accepted (fs writes stream; JSON bodies are smaller)."""
    creation_limit: int | None = None
    """If set, at most this many sprite creations per ``creation_window`` (then 429)."""
    creation_window: float = 60.0
    """Seconds of the sliding window used by ``creation_limit`` (real: 10 per 60 s)."""
    quirks: tuple[str, ...] = ()
    """Quirk and profile names in force at start (see ``_quirks``); ``state.quirks`` at run time."""
    extra: dict[str, Any] = field(default_factory=dict)


class SessionRegistry(Protocol):
    """What other modules need from the exec session manager (owned by ``_exec``)."""

    async def terminate_all(self, sprite: str) -> None:
        """End every session and process of a sprite (restore, delete, going cold)."""

    async def aclose(self) -> None:
        """End every session of every sprite (emulator shutdown)."""


class _NoSessions:
    async def terminate_all(self, sprite: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class ServiceRegistry(Protocol):
    """What the lifecycle needs from the service supervisor (owned by ``_supervisor``)."""

    def processes(self, sprite: str) -> list[Any]:
        """The sprite's running service processes."""

    async def start_all(self, sprite: str) -> None:
        """Start the sprite's services (waking from cold)."""

    async def stop_all(self, sprite: str) -> None:
        """Kill the sprite's service processes (going cold)."""


class _NoServices:
    def processes(self, sprite: str) -> list[Any]:
        return []

    async def start_all(self, sprite: str) -> None:
        return None

    async def stop_all(self, sprite: str) -> None:
        return None


class SpriteTable(dict[str, SpriteRecord]):
    """``dict`` of sprites by name that also keeps the names sorted, for paging.

    Plain ``dict`` semantics, so modules and tests may insert and delete
    directly; the sorted view is maintained (or rebuilt lazily) behind them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sorted: list[str] | None = []

    def sorted_names(self) -> list[str]:
        """All names in ascending order (do not mutate the returned list)."""
        if self._sorted is None:
            self._sorted = sorted(self)
        return self._sorted

    def __setitem__(self, key: str, value: SpriteRecord) -> None:
        if key not in self and self._sorted is not None:
            bisect.insort(self._sorted, key)
        super().__setitem__(key, value)

    def _unsort(self, key: str) -> None:
        names = self._sorted
        if names is not None:
            i = bisect.bisect_left(names, key)
            if i < len(names) and names[i] == key:
                del names[i]

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._unsort(key)

    def pop(self, key: str, *default: Any) -> Any:
        """Remove ``key`` like ``dict.pop``."""
        if key in self:
            self._unsort(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, SpriteRecord]:
        """Remove an item like ``dict.popitem``."""
        self._sorted = None
        return super().popitem()

    def clear(self) -> None:
        """Remove everything."""
        self._sorted = []
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Insert many records at once (one re-sort instead of many inserts)."""
        self._sorted = None
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Like ``dict.setdefault``."""
        self._sorted = None
        return super().setdefault(key, default)


SpriteHook = Callable[[str], Awaitable[None]]


class EmulatorState:
    """Mutable state shared by all handlers of one emulator instance."""

    def __init__(self, config: EmulatorConfig, db: sqlite3.Connection) -> None:
        self.config = config
        self.faults = FaultConfig()
        self.quirks = QuirkSet(config.quirks)
        """Quirks in force (``state.quirks.on("null-arrays")``); mutable at run time."""
        self.db = db
        """SQLite connection (autocommit); each module creates its own tables."""
        self.sessions: SessionRegistry = _NoSessions()
        self.services: ServiceRegistry = _NoServices()
        """The service supervisor, once ``_supervisor`` has made it (at app setup)."""
        self.sprites: SpriteTable = SpriteTable()
        """Live sprite records by name, loaded from and saved to ``db`` by ``_sprites``."""
        self.background: set[asyncio.Task[Any]] = set()
        """Tasks owned by the emulator; cancelled at shutdown."""
        self.store: SpriteStore = SpriteStore(db)
        """Persistence of sprite records (the ``sprites`` table)."""
        self.lifecycle: Lifecycle = Lifecycle(self)
        """running/warm/cold clock: activities, idle timers, waking."""
        self.sprite_created_hooks: list[SpriteHook] = []
        """Awaited with the name after a sprite is created over the API."""
        self.sprite_deleted_hooks: list[SpriteHook] = []
        """Awaited with the name when a sprite is deleted, before its directory goes."""
        self.creation_log: deque[float] = deque()
        """Monotonic times of recent creations, for ``config.creation_limit``."""
        self._lazy_dirs: set[str] = set()

    def sprite_dir(self, name: str) -> Path:
        """Host directory holding everything of one sprite."""
        return self.config.state_dir / "sprites" / name

    def sprite_root(self, name: str) -> Path:
        """Host directory that is the sprite's ``/`` (contains ``home/sprite``, ``tmp``)."""
        return self.sprite_dir(name) / "root"

    def ensure_sprite_dirs(self, name: str, *, lazy: bool = False) -> None:
        """Create the sprite's ``/home/sprite`` and ``/tmp``.

        With ``lazy=True`` creation is deferred to the sprite's first
        sprite-layer request: bulk-seeded sprites would otherwise cost a few
        directory syscalls each, which is seconds for ten thousand of them.
        """
        if lazy:
            self._lazy_dirs.add(name)
            return
        self._lazy_dirs.discard(name)
        prepare_root(self.sprite_root(name), file_owner(self.config.sandbox))

    def materialize(self, name: str) -> None:
        """Create the directories of a lazily seeded sprite, if still pending."""
        if name in self._lazy_dirs:
            self.ensure_sprite_dirs(name)

    def sprite_version(self, name: str) -> str:
        """The ``Sprite-Version`` a sprite's layer reports (its ``version`` or the default)."""
        rec = self.sprites.get(name)
        if rec is not None and rec.version:
            return rec.version
        return self.config.sprite_version

    def save_sprite(self, rec: SpriteRecord) -> None:
        """Persist one sprite record (after changing it in place)."""
        self.store.save(rec)

    @asynccontextmanager
    async def activity(self, name: str) -> AsyncIterator[None]:
        """Hold the sprite ``running`` while the ``async with`` block runs.

        The sprite-layer middleware already holds one around every request;
        modules use this for work that outlives a request.
        """
        self.lifecycle.acquire(name)
        try:
            yield
        finally:
            self.lifecycle.release(name)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task that the emulator cancels on shutdown."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task


STATE_KEY: web.AppKey[EmulatorState] = web.AppKey("sprites_emulator_state", EmulatorState)

_json_encoder = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, *, api_layer: bool = False) -> web.Response:
    """A JSON response; the API layer uses ``charset=utf-8`` as recorded."""
    body = _json_encoder.encode(data)
    ctype = "application/json; charset=utf-8" if api_layer else "application/json"
    return web.Response(body=body, status=status, headers={"Content-Type": ctype})


def json_error(status: int, error: str, **extra: Any) -> web.Response:
    """An API-layer error body ``{"error": ...}``."""
    return json_response({"error": error, **extra}, status, api_layer=True)


def text_error(status: int, text: str) -> web.Response:
    """A sprite-layer error as Go's ``http.Error`` writes it (text, trailing newline)."""
    return web.Response(
        text=text if text.endswith("\n") else text + "\n",
        status=status,
        content_type="text/plain",
        charset="utf-8",
    )


class NDJSONWriter:
    """Streams NDJSON events, honouring the ``ndjson_chunk`` fault."""

    def __init__(self, request: web.Request, state: EmulatorState) -> None:
        self._request = request
        self._state = state
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/x-ndjson",
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def prepare(self) -> None:
        """Send the status line and headers."""
        await self.response.prepare(self._request)

    async def send(self, event: Mapping[str, Any]) -> None:
        """Write one event as one line and flush it."""
        await self.write_raw(_json_encoder.encode(event) + b"\n")

    async def send_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Write several events in one write (one network chunk)."""
        await self.write_raw(b"".join(_json_encoder.encode(e) + b"\n" for e in events))

    async def write_raw(self, data: bytes) -> None:
        """Write bytes, split at odd boundaries when the fault asks for it."""
        step = self._state.faults.ndjson_chunk
        if not step:
            await self.response.write(data)
            return
        for i in range(0, len(data), step):
            await self.response.write(data[i : i + step])

    async def finish(self) -> web.StreamResponse:
        """End the body and return the response for the handler to return."""
        await self.response.write_eof()
        return self.response
