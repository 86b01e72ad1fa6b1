"""Fault injection: the middleware that applies ``FaultConfig``, and the admin routes.

Applied here: ``latency``, ``reset_count``, injected 429s (``rate_limit_*``) and
injected errors (``error_*``), all filtered by ``error_path`` (a regex searched
in the request path) and ``error_methods``. ``wake_delay`` is applied by the
sprite-layer middleware, ``incident_page``/``missing_sprite_500`` by
``_sprites``, and the exec-related knobs by the exec modules.

Admin routes (token required, never subject to faults):
``GET /_emulator/faults``, ``POST /_emulator/faults`` (a JSON object of field
names to values), ``POST /_emulator/faults/reset``, ``POST /_emulator/seed``
(``{"count": N, "prefix": "..."}``), ``GET``/``POST /_emulator/quirks`` (see
``_quirks``), and the unauthenticated
``GET /_emulator/health``.
"""

from __future__ import annotations

import asyncio
import random
import re
import typing
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from ._quirks import PROFILES, QUIRKS
from ._sprites import rate_limit_response, seed_sprites, sprite_layer_name
from ._state import STATE_KEY, FaultConfig, json_error, json_response, text_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADMIN_PREFIX = "/_emulator/"
HEALTH_PATH = "/_emulator/health"

_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(FaultConfig)
# The wire form of a tuple is a JSON array.
_FIELD_TYPES["error_methods"] = list[str] | None
_FRACTIONS = ("error_rate", "rate_limit_rate")
_NON_NEGATIVE = (
    "latency",
    "wake_delay",
    "error_count",
    "rate_limit_count",
    "retry_after",
    "reset_count",
    "drop_ws_after_frames",
    "ndjson_chunk",
)


def _matches(faults: FaultConfig, request: web.Request) -> bool:
    """Whether the path/method filters let injected faults hit this request."""
    if faults.error_methods is not None and request.method.upper() not in faults.error_methods:
        return False
    if faults.error_path is None:
        return True
    return re.search(faults.error_path, request.path) is not None


def _take(faults: FaultConfig, count_field: str, rate: float) -> bool:
    """Whether to inject now: an exact remaining count wins over a rate."""
    count = getattr(faults, count_field)
    if count is not None:
        if count > 0:
            setattr(faults, count_field, count - 1)
            return True
        return False
    return rate > 0 and random.random() < rate


def injected_rate_limit(faults: FaultConfig, request: web.Request) -> web.Response:
    """A 429 shaped like the real service's, code chosen by the endpoint."""
    creating = request.method == "POST" and request.path.rstrip("/") == "/v1/sprites"
    return rate_limit_response(
        code="sprite_creation_rate_limited" if creating else "rate_limited",
        message="Sprite creation rate limit exceeded" if creating else "Rate limit exceeded",
        limit=10,
        window=60,
        retry_after=faults.retry_after,
        current_count=11,
    )


def injected_error(faults: FaultConfig, request: web.Request) -> web.Response:
    """An ``error_status`` answer in the style of the layer the path belongs to."""
    status = faults.error_status
    if status == 429:
        return injected_rate_limit(faults, request)
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    if sprite_layer_name(request.path) is not None:
        resp = text_error(status, f"{phrase} (injected by the sprites emulator)")
    else:
        resp = json_error(status, phrase, message="injected by the sprites emulator")
    if status in (429, 503):
        resp.headers["Retry-After"] = str(faults.retry_after)
    return resp


def _abort(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Never reaches the client: aiohttp fails to write it to the aborted
    # transport and drops it quietly, which is exactly the effect we want.
    return web.Response(status=500)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply latency, resets, 429s and errors before the real handler runs."""
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    faults = request.app[STATE_KEY].faults
    if faults.latency > 0:
        await asyncio.sleep(faults.latency)
    if _matches(faults, request):
        if faults.reset_count > 0:
            faults.reset_count -= 1
            return _abort(request)
        if _take(faults, "rate_limit_count", faults.rate_limit_rate):
            return injected_rate_limit(faults, request)
        if _take(faults, "error_count", faults.error_rate):
            return injected_error(faults, request)
    return await handler(request)


# Routes an older server does not have, by the quirk that removes them.
_ABSENT_ROUTES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("no-ports-watch", "GET", re.compile(r"/v1/sprites/[^/]+/ports/watch")),
    ("no-http-exec", "POST", re.compile(r"/v1/sprites/[^/]+/exec")),
    ("no-service-logs", "GET", re.compile(r"/v1/sprites/[^/]+/services/[^/]+/logs")),
    ("no-service-restart", "POST", re.compile(r"/v1/sprites/[^/]+/services/[^/]+/restart")),
    ("no-checkpoint-delete", "DELETE", re.compile(r"/v1/sprites/[^/]+/checkpoints/[^/]+")),
)

ROUTE_NOT_FOUND = "404 page not found"
"""What Go's ``http.ServeMux`` answers for a path it has no handler for."""


@web.middleware
async def absent_endpoints(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ``no-*`` quirks: answer 404 as a sprite server without the route would.

    Runs inside the sprite layer, so an unknown sprite is still ``sprite not
    found`` and the answer is the sprite server's (text, ``Sprite-Version``).
    """
    quirks = request.app[STATE_KEY].quirks
    if quirks:
        for quirk, method, pattern in _ABSENT_ROUTES:
            if (
                request.method == method
                and quirks.on(quirk)
                and pattern.fullmatch(request.path) is not None
            ):
                return text_error(404, ROUTE_NOT_FOUND)
    return await handler(request)


_ANSWERED: web.AppKey[set[tuple[str, str]]] = web.AppKey("sprites_emulator_answered_posts")
"""(method, path) of the POSTs whose first answer the ``post-answer-lost`` quirk dropped."""


class _LostWriter(AbstractStreamWriter):
    """A response writer that sends nothing: the answer is lost, the handler unaware."""

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.output_size += len(chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        self.output_size += len(chunk)

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return None

    def enable_chunking(self) -> None:
        return None

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        return None

    def send_headers(self) -> None:
        return None


@web.middleware
async def lost_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ``post-answer-lost`` quirk: commit a POST, then drop the connection unanswered.

    Only the first POST to each path loses its answer, so a client that
    (wrongly) sends the request again gets an answer and the test can count
    the effects. The handler runs to its end against a writer that discards
    everything, streamed answers included; then the connection is aborted.
    """
    if (
        request.method != "POST"
        or request.path.startswith(ADMIN_PREFIX)
        or not request.app[STATE_KEY].quirks.on("post-answer-lost")
    ):
        return await handler(request)
    answered = request.app[_ANSWERED]
    key = (request.method, request.path)
    if key in answered:
        return await handler(request)
    answered.add(key)
    real = request._payload_writer
    request._payload_writer = _LostWriter()
    try:
        response = await handler(request)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
    finally:
        request._payload_writer = real
    return _abort(request)


def _validate(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    errors: list[str] = []
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _FIELD_TYPES:
            errors.append(f"unknown fault: {key}")
            continue
        try:
            converted = msgspec.convert(value, _FIELD_TYPES[key], strict=True)
        except msgspec.ValidationError as exc:
            errors.append(f"{key}: {exc}")
            continue
        if key in _FRACTIONS and not 0 <= converted <= 1:
            errors.append(f"{key}: must be between 0 and 1")
        elif key in _NON_NEGATIVE and converted is not None and converted < 0:
            errors.append(f"{key}: must not be negative")
        elif key == "error_path" and converted is not None:
            try:
                re.compile(converted)
            except re.error as exc:
                errors.append(f"error_path: invalid regex: {exc}")
        elif key == "error_status" and not 400 <= converted <= 599:
            errors.append("error_status: must be an HTTP error status (400-599)")
        clean[key] = converted
    return clean, errors


async def _read_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = msgspec.json.decode(await request.read())
    except (msgspec.DecodeError, RecursionError):
        return json_response({"errors": ["body must be a JSON object"]}, 400, api_layer=True)
    if not isinstance(body, dict):
        return json_response({"errors": ["body must be a JSON object"]}, 400, api_layer=True)
    return body


async def get_faults(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/faults``: the current knobs."""
    return json_response(request.app[STATE_KEY].faults.to_dict(), api_layer=True)


async def set_faults(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/faults``: set some knobs; all-or-nothing on validation errors."""
    faults = request.app[STATE_KEY].faults
    body = await _read_object(request)
    if isinstance(body, web.Response):
        return body
    clean, errors = _validate(body)
    if errors:
        return json_response({"errors": errors}, 400, api_layer=True)
    faults.update(clean)
    return json_response(faults.to_dict(), api_layer=True)


async def reset_faults(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/faults/reset``: everything off."""
    faults = request.app[STATE_KEY].faults
    faults.reset()
    return json_response(faults.to_dict(), api_layer=True)


async def seed(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/seed``: bulk-create sprites (benchmarks, demos)."""
    state = request.app[STATE_KEY]
    body = await _read_object(request)
    if isinstance(body, web.Response):
        return body
    count = body.get("count")
    prefix = body.get("prefix", "sprite-")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return json_response(
            {"errors": ["count must be a non-negative integer"]}, 400, api_layer=True
        )
    if not isinstance(prefix, str):
        return json_response({"errors": ["prefix must be a string"]}, 400, api_layer=True)
    try:
        names = seed_sprites(state, count, prefix=prefix)
    except ValueError as exc:
        return json_response({"errors": [str(exc)]}, 400, api_layer=True)
    return json_response({"created": len(names)}, api_layer=True)


async def get_quirks(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/quirks``: the quirks in force, every known one and the profiles."""
    return json_response(_quirks_body(request), api_layer=True)


async def set_quirks(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/quirks``: ``{"quirks": [...]}`` replaces the set;
    ``add`` and ``remove`` (lists of names) edit it."""
    quirks = request.app[STATE_KEY].quirks
    body = await _read_object(request)
    if isinstance(body, web.Response):
        return body
    try:
        if "quirks" in body:
            quirks.set(body["quirks"])
        if "add" in body:
            quirks.add(*body["add"])
        if "remove" in body:
            quirks.discard(*body["remove"])
    except (TypeError, ValueError) as exc:
        return json_response({"errors": [str(exc)]}, 400, api_layer=True)
    return json_response(_quirks_body(request), api_layer=True)


def _quirks_body(request: web.Request) -> dict[str, Any]:
    return {
        "quirks": list(request.app[STATE_KEY].quirks),
        "known": QUIRKS,
        "profiles": {name: sorted(names) for name, names in PROFILES.items()},
    }


async def health(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/health``: liveness, no token needed."""
    state = request.app[STATE_KEY]
    return json_response(
        {"status": "ok", "sprites": len(state.sprites), "version": state.config.sprite_version},
        api_layer=True,
    )


def setup(app: web.Application) -> None:
    """Register the admin routes."""
    app[_ANSWERED] = set()
    app.router.add_get("/_emulator/faults", get_faults, allow_head=False)
    app.router.add_post("/_emulator/faults", set_faults)
    app.router.add_post("/_emulator/faults/reset", reset_faults)
    app.router.add_post("/_emulator/seed", seed)
    app.router.add_get("/_emulator/quirks", get_quirks, allow_head=False)
    app.router.add_post("/_emulator/quirks", set_quirks)
    app.router.add_get(HEALTH_PATH, health)
