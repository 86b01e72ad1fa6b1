"""Sprite management, the API layer (protocol reference section 2).

``POST/GET /v1/sprites``, ``GET/PUT/DELETE /v1/sprites/{name}`` and
``POST /v1/sprites/{name}/upgrade``. Records live in ``state.sprites`` and are
persisted through ``state.store`` on every change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import random
import re
import shutil
import string
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from ._lifecycle import utcnow
from ._state import STATE_KEY, EmulatorState, SpriteRecord, json_error, json_response
from ._urls import url_for
from ._wire import BodyTooLarge, read_capped

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Sprite names become hostname labels, hence this (unconfirmed but safe) rule."""

_SPRITE_LAYER_RE = re.compile(r"^/v1/sprites/([^/]+)/(.+)$")

AUTH_TYPES = ("sprite", "public")
MAX_PAGE = 50
JSON_BODY_LIMIT = 1 << 20
"""Largest create/update body (``client_max_size`` is sized for file writes)."""

ERR_NAME = "invalid sprite name format"
ERR_AUTH = "invalid auth type, must be one of: sprite, public"
ERR_BODY = "invalid request body: expected a JSON object"
ERR_LABELS = "labels must be a list of strings"
ERR_URL_SETTINGS = "url_settings must be an object"

_decoder = msgspec.json.Decoder()
_suffix_chars = string.ascii_lowercase


def sprite_layer_name(path: str) -> str | None:
    """The sprite a sprite-layer path addresses, or ``None`` for API-layer paths.

    Everything under ``/v1/sprites/{name}/`` except ``upgrade`` is forwarded to
    the sprite's own server in the real service.
    """
    match = _SPRITE_LAYER_RE.match(path)
    if match is None or match.group(2) == "upgrade":
        return None
    return match.group(1)


def _ts_micro(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ts_seconds(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def sprite_json(rec: SpriteRecord, state: EmulatorState | None = None) -> dict[str, Any]:
    """The April-2026 shape: every key present (nulls too), ``labels`` only when set.

    With ``state``, ``url`` is the sprite's local URL (its listener opens now, see ``_urls``).
    """
    if state is not None:
        url_for(state, rec)
    out: dict[str, Any] = {
        "id": rec.id,
        "name": rec.name,
        "status": rec.status,
        "version": rec.version,
        "url": rec.url,
        "url_settings": {"auth": rec.url_auth},
        "created_at": _ts_micro(rec.created_at),
        "organization": rec.organization,
        "last_running_at": _ts_seconds(rec.last_running_at),
        "last_warming_at": _ts_seconds(rec.last_warming_at),
        "updated_at": _ts_micro(rec.updated_at),
        "environment_version": None,
    }
    if rec.labels:
        out["labels"] = list(rec.labels)
    return out


def new_record(
    state: EmulatorState,
    name: str,
    *,
    url_auth: str = "sprite",
    labels: Iterable[str] = (),
    now: datetime | None = None,
) -> SpriteRecord:
    """A fresh ``cold`` sprite record (not yet stored)."""
    now = now or utcnow()
    # Not a secret, and bulk seeding makes tens of thousands of these.
    suffix = "".join(random.choices(_suffix_chars, k=5))
    return SpriteRecord(
        id=f"sprite-{uuid.uuid4()}",
        name=name,
        organization=state.config.org,
        status="cold",
        url=f"https://{name}-{suffix}.sprites.app",
        url_auth=url_auth,
        created_at=now,
        updated_at=now,
        labels=list(labels),
    )


def insert_sprite(state: EmulatorState, rec: SpriteRecord) -> None:
    """Store a new record, persist it and create its directories."""
    state.sprites[rec.name] = rec
    state.save_sprite(rec)
    state.ensure_sprite_dirs(rec.name)


def seed_sprites(state: EmulatorState, count: int, *, prefix: str = "sprite-") -> list[str]:
    """Create ``count`` sprites named ``<prefix>00000``... in bulk; returns the new names.

    Names already taken are skipped (so the result may be shorter). Directories
    are created lazily on each sprite's first sprite-layer request, which keeps
    ten thousand sprites well under a second.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    width = max(5, len(str(max(count - 1, 0))))
    now = utcnow()
    fresh: dict[str, SpriteRecord] = {}
    for i in range(count):
        name = f"{prefix}{i:0{width}d}"
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"invalid sprite name {name!r}")
        if name in state.sprites:
            continue
        fresh[name] = new_record(state, name, now=now)
    state.store.save_many(fresh.values())
    state.sprites.update(fresh)
    for name in fresh:
        state.ensure_sprite_dirs(name, lazy=True)
    return list(fresh)


def load_sprites(state: EmulatorState) -> None:
    """Fill ``state.sprites`` from the database (at startup).

    No VM survives a restart, so every sprite comes back ``cold``.
    """
    records = state.store.load_all()
    state.store.set_all_cold()
    for rec in records:
        rec.status = "cold"
        # Seeded sprites may never have had directories; make them on first use.
        state.ensure_sprite_dirs(rec.name, lazy=True)
    state.sprites.update({rec.name: rec for rec in records})


class _Invalid(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = errors


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        raw = await read_capped(request, JSON_BODY_LIMIT)
        body = _decoder.decode(raw) if raw.strip() else {}
    except (BodyTooLarge, msgspec.DecodeError, RecursionError):
        raise _Invalid([ERR_BODY]) from None
    if not isinstance(body, dict):
        raise _Invalid([ERR_BODY])
    return body


def _validate_settings(
    body: dict[str, Any], errors: list[str]
) -> tuple[str | None, list[str] | None]:
    """Check ``url_settings`` and ``labels``; returns (auth, labels), None when absent."""
    auth: str | None = None
    settings = body.get("url_settings")
    if settings is not None:
        if not isinstance(settings, dict):
            errors.append(ERR_URL_SETTINGS)
        elif "auth" in settings and settings["auth"] is not None:
            if settings["auth"] in AUTH_TYPES:
                auth = settings["auth"]
            else:
                errors.append(ERR_AUTH)
    labels: list[str] | None = None
    raw_labels = body.get("labels")
    if raw_labels is not None:
        if isinstance(raw_labels, list) and all(isinstance(x, str) for x in raw_labels):
            labels = list(raw_labels)
        else:
            errors.append(ERR_LABELS)
    return auth, labels


def _validation_error(errors: list[str]) -> web.Response:
    return json_response({"errors": errors}, 400, api_layer=True)


def _missing(state: EmulatorState, recorded_500: str | None = None) -> web.Response:
    if recorded_500 is not None and state.faults.missing_sprite_500:
        return json_error(500, recorded_500)
    return json_error(404, "sprite not found")


def _creation_limited(state: EmulatorState) -> web.Response | None:
    limit = state.config.creation_limit
    if limit is None:
        return None
    window = state.config.creation_window
    now = time.monotonic()
    log = state.creation_log
    while log and log[0] <= now - window:
        log.popleft()
    if len(log) < limit:
        return None
    retry = max(1, int(log[0] + window - now + 0.999))
    return rate_limit_response(
        code="sprite_creation_rate_limited",
        message="Sprite creation rate limit exceeded",
        limit=limit,
        window=window,
        retry_after=retry,
        current_count=len(log),
    )


def rate_limit_response(
    *,
    code: str,
    message: str,
    limit: int,
    window: float,
    retry_after: int,
    current_count: int,
) -> web.Response:
    """429 with the structured body (reference 1.5, shape 3) and rate-limit headers."""
    resp = json_response(
        {
            "error": code,
            "message": message,
            "limit": limit,
            "window_seconds": int(window),
            "retry_after_seconds": retry_after,
            "current_count": current_count,
            "upgrade_available": False,
        },
        429,
        api_layer=True,
    )
    resp.headers["Retry-After"] = str(retry_after)
    resp.headers["X-RateLimit-Limit"] = str(limit)
    resp.headers["X-RateLimit-Remaining"] = "0"
    resp.headers["X-RateLimit-Reset"] = str(int(time.time()) + retry_after)
    return resp


async def create_sprite(request: web.Request) -> web.StreamResponse:
    """``POST /v1/sprites``."""
    state = request.app[STATE_KEY]
    try:
        body = await _json_object(request)
    except _Invalid as exc:
        return _validation_error(exc.errors)
    errors: list[str] = []
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        errors.append(ERR_NAME)
    auth, labels = _validate_settings(body, errors)
    if errors:
        return _validation_error(errors)
    assert isinstance(name, str)
    if name in state.sprites:
        return json_error(
            409, f"A sprite named '{name}' already exists. Please choose a different name."
        )
    limited = _creation_limited(state)
    if limited is not None:
        return limited
    rec = new_record(state, name, url_auth=auth or "sprite", labels=labels or ())
    insert_sprite(state, rec)
    state.creation_log.append(time.monotonic())
    for hook in list(state.sprite_created_hooks):
        await hook(name)
    return json_response(sprite_json(rec, state), 201, api_layer=True)


def _decode_token(token: str) -> str:
    padded = token + "=" * (-len(token) % 4)
    try:
        name = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise _Invalid(["invalid continuation_token"]) from None
    if not NAME_RE.fullmatch(name):
        raise _Invalid(["invalid continuation_token"])
    return name


def _encode_token(name: str) -> str:
    # Keyset paging on the last name: stable under concurrent creates/deletes.
    return base64.urlsafe_b64encode(name.encode("ascii")).decode("ascii").rstrip("=")


async def list_sprites(request: web.Request) -> web.StreamResponse:
    """``GET /v1/sprites`` with ``prefix``, ``max_results``, ``continuation_token``."""
    state = request.app[STATE_KEY]
    query = request.query
    prefix = query.get("prefix", "")
    raw_max = query.get("max_results")
    page_size = MAX_PAGE
    if raw_max:
        try:
            page_size = min(MAX_PAGE, max(1, int(raw_max)))
        except ValueError:
            return _validation_error(["max_results must be an integer"])
    names = state.sprites.sorted_names()
    start = bisect.bisect_left(names, prefix)
    token = query.get("continuation_token")
    if token:
        try:
            after = _decode_token(token)
        except _Invalid as exc:
            return _validation_error(exc.errors)
        start = max(start, bisect.bisect_right(names, after))
    page: list[str] = []
    i = start
    while i < len(names) and len(page) < page_size:
        name = names[i]
        if not name.startswith(prefix):
            break
        page.append(name)
        i += 1
    more = i < len(names) and names[i].startswith(prefix)
    next_token = _encode_token(page[-1]) if more and page else None
    has_more = more
    if not more and state.faults.incident_page:
        has_more = True
    counts = {"running": 0, "warm": 0, "cold": 0}
    for rec in state.sprites.values():
        if rec.status in counts:
            counts[rec.status] += 1
    return json_response(
        {
            "name": state.config.org,
            **counts,
            "running_limit": state.config.running_limit,
            "warm_limit": state.config.warm_limit,
            "sprites": [sprite_json(state.sprites[n], state) for n in page],
            "next_continuation_token": next_token,
            "has_more": has_more,
        },
        api_layer=True,
    )


async def get_sprite(request: web.Request) -> web.StreamResponse:
    """``GET /v1/sprites/{name}``; does not wake the sprite."""
    state = request.app[STATE_KEY]
    rec = state.sprites.get(request.match_info["name"])
    if rec is None:
        return _missing(state, "failed to retrieve sprite")
    return json_response(sprite_json(rec, state), api_layer=True)


async def update_sprite(request: web.Request) -> web.StreamResponse:
    """``PUT /v1/sprites/{name}``: partial update of ``url_settings`` and ``labels``."""
    state = request.app[STATE_KEY]
    rec = state.sprites.get(request.match_info["name"])
    if rec is None:
        return _missing(state)
    try:
        body = await _json_object(request)
    except _Invalid as exc:
        return _validation_error(exc.errors)
    errors: list[str] = []
    auth, labels = _validate_settings(body, errors)
    if errors:
        return _validation_error(errors)
    if auth is not None:
        rec.url_auth = auth
    if labels is not None:
        rec.labels = labels
    if body.get("clear_labels") is True:
        rec.labels = []
    rec.updated_at = utcnow()
    state.save_sprite(rec)
    return json_response(sprite_json(rec, state), api_layer=True)


async def delete_sprite(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/sprites/{name}``: 204, ends sessions, removes the sprite's files."""
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    if name not in state.sprites:
        return _missing(state, "failed to delete sprite")
    # Gone from the table first, so concurrent requests already see a 404.
    del state.sprites[name]
    state.store.delete(name)
    state.lifecycle.forget(name)
    await state.sessions.terminate_all(name)
    for hook in list(state.sprite_deleted_hooks):
        await hook(name)
    directory = state.sprite_dir(name)
    await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
    return web.Response(status=204, content_type="text/plain", charset="utf-8")


def next_version(current: str | None, default: str) -> str:
    """The version after an upgrade: the default first, then the next ``rcN``."""
    if current is None:
        return default
    match = re.search(r"(\d+)$", current)
    if match is None:
        return default
    return current[: match.start()] + str(int(match.group(1)) + 1)


async def upgrade_sprite(request: web.Request) -> web.StreamResponse:
    """``POST /v1/sprites/{name}/upgrade``: 204 and a new ``version``."""
    state = request.app[STATE_KEY]
    rec = state.sprites.get(request.match_info["name"])
    if rec is None:
        return _missing(state)
    rec.version = next_version(rec.version, state.config.sprite_version)
    rec.updated_at = utcnow()
    state.save_sprite(rec)
    return web.Response(status=204)


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register the sprite management routes and load stored sprites."""
    load_sprites(state)
    app.router.add_post("/v1/sprites", create_sprite)
    app.router.add_get("/v1/sprites", list_sprites, allow_head=False)
    app.router.add_get("/v1/sprites/{name}", get_sprite, allow_head=False)
    app.router.add_put("/v1/sprites/{name}", update_sprite)
    app.router.add_delete("/v1/sprites/{name}", delete_sprite)
    app.router.add_post("/v1/sprites/{name}/upgrade", upgrade_sprite)
