"""Shared state of one emulator instance, and the contract between its modules.

Every feature module (``_sprites``, ``_exec``, ``_control``, ``_checkpoints``,
``_fs``, ``_policy`` ...) exposes ``setup(app, state)`` that registers its
routes. Handlers reach the state through ``request.app[STATE_KEY]``.

Routes under ``/v1/sprites/{name}/...`` (the *sprite layer*) are wrapped by a
middleware (see ``_app``) that has already checked the token, checked that the
sprite exists (404 JSON otherwise), applied the wake delay and marked the
sprite ``running`` for as long as the handler runs (a WebSocket handler runs
as long as its socket is open). Handlers therefore never repeat those checks.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
from aiohttp import web

SandboxMode = Literal["auto", "bwrap", "none"]


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
    """Only these HTTP methods get injected errors (None = all)."""
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
    """``bwrap`` when available (``auto``), or plain subprocesses (``none``)."""
    inline_exec: bool = False
    """Answer synthetic commands (echo, cat, exit K, sleep S, ...) without processes."""
    sprite_version: str = "v0.0.1-rc46"
    signal_capability: bool = True
    """Advertise ``X-Sprite-Capabilities: signal`` on exec upgrades."""
    running_limit: int = 20
    warm_limit: int = 20
    max_body: int = 1 << 30
    """Largest request body accepted (fs writes stream; JSON bodies are smaller)."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpriteRecord:
    """What the emulator knows about one sprite (mirrors the API's Sprite object)."""

    id: str
    name: str
    organization: str
    status: str
    url: str
    url_auth: str
    created_at: datetime
    updated_at: datetime
    labels: list[str] = field(default_factory=list)
    version: str | None = None
    last_running_at: datetime | None = None
    last_warming_at: datetime | None = None


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


class EmulatorState:
    """Mutable state shared by all handlers of one emulator instance."""

    def __init__(self, config: EmulatorConfig, db: sqlite3.Connection) -> None:
        self.config = config
        self.faults = FaultConfig()
        self.db = db
        """SQLite connection (autocommit); each module creates its own tables."""
        self.sessions: SessionRegistry = _NoSessions()
        self.sprites: dict[str, SpriteRecord] = {}
        """Live sprite records by name, loaded from and saved to ``db`` by ``_sprites``."""
        self.background: set[asyncio.Task[Any]] = set()
        """Tasks owned by the emulator; cancelled at shutdown."""

    def sprite_dir(self, name: str) -> Path:
        """Host directory holding everything of one sprite."""
        return self.config.state_dir / "sprites" / name

    def sprite_root(self, name: str) -> Path:
        """Host directory that is the sprite's ``/`` (contains ``home/sprite``, ``tmp``)."""
        return self.sprite_dir(name) / "root"

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
