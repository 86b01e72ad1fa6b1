"""The services routes of the sprite layer (section 8 of the protocol reference).

All under ``/v1/sprites/{name}/services``: list, get, create-or-update with a
start stream, start, stop, restart, delete, the flat ``/services/signal`` and
logs. Supervision itself (processes, restarts, log files) is in
:mod:`._supervisor`; this module parses requests and writes NDJSON streams
whose events carry ``timestamp`` in Unix milliseconds.

Wiring: ``create_app`` calls :func:`setup`; whoever restores a sprite's
files calls :func:`stop_all` first and :func:`start_all` after. Deleting a
sprite is handled through ``state.sprite_deleted_hooks``. The sprite's URL
(``_urls``) calls :func:`http_service_port` (it starts the service) and
:func:`http_service_watch` to say why the app does not answer.

Streams end early, and quietly, when the client goes away; a stop then still
completes (it runs in a task of its own).

Query parameters follow the 2025 server: ``duration`` (or its older alias
``timeout``) on create/start/restart is a Go duration, and an unparsable or
non-positive one means the default ``5s``; ``timeout`` on stop is the grace
period before SIGKILL (default ``10s``, ``0`` kills at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from ._framing import parse_go_duration, parse_signal
from ._state import STATE_KEY, EmulatorState, NDJSONWriter, text_error
from ._supervisor import (
    DEFAULT_STOP_TIMEOUT,
    Event,
    ServiceDef,
    ServiceFailure,
    ServiceRuntime,
    StartFailed,
    Subscription,
    Supervisor,
    event,
    log_files,
    parse_names,
    supervisor_for,
    valid_name,
)
from ._wire import BodyTooLarge, go_json, read_capped

__all__ = [
    "http_service_port",
    "http_service_watch",
    "setup",
    "start_all",
    "stop_all",
    "supervisor_for",
]

log = logging.getLogger(__name__)

DEFAULT_DURATION = 5.0
BODY_LIMIT = 1 << 20
_BATCH = 256
DISCONNECT_POLL = 0.5
"""Seconds between checks that a quiet stream's client is still there."""
_TASK_DONE: Event = {"type": "_task_done"}
_LINE_TYPES = frozenset({"stdout", "stderr"})
_WATCH_TYPES = frozenset({"stdout", "stderr", "exit"})
_LOG_TYPES = frozenset({"stdout", "stderr", "exit", "error"})

_SETUP_KEY: web.AppKey[Supervisor] = web.AppKey("sprites_emulator_services", Supervisor)


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register the services routes, the sprite-deletion hook and boot/shutdown hooks.

    Idempotent per application, so a test may call it on an app that
    ``create_app`` already wired.
    """
    if _SETUP_KEY in app:
        return
    sup = supervisor_for(state)
    app[_SETUP_KEY] = sup

    async def forget(name: str) -> None:
        await sup.stop_all(name, forget=True)

    state.sprite_deleted_hooks.append(forget)
    base = "/v1/sprites/{name}/services"
    app.router.add_get(base, _list, allow_head=False)
    app.router.add_post(base + "/signal", _signal)
    app.router.add_get(base + "/{svc}", _get, allow_head=False)
    app.router.add_put(base + "/{svc}", _put)
    app.router.add_delete(base + "/{svc}", _delete)
    app.router.add_post(base + "/{svc}/start", _start)
    app.router.add_post(base + "/{svc}/stop", _stop)
    app.router.add_post(base + "/{svc}/restart", _restart)
    app.router.add_get(base + "/{svc}/logs", _logs, allow_head=False)

    async def close(app: web.Application) -> None:
        await sup.aclose()

    # Shutdown ends the follow streams before aiohttp waits for handlers;
    # cleanup covers apps that only run the cleanup phase.
    app.on_shutdown.append(close)
    app.on_cleanup.append(close)


async def stop_all(state: EmulatorState, sprite: str) -> None:
    """Kill every service process of ``sprite`` (call before restoring its files)."""
    await supervisor_for(state).stop_all(sprite)


async def start_all(state: EmulatorState, sprite: str) -> None:
    """Start the sprite's services in dependency order, except user-stopped ones."""
    await supervisor_for(state).start_all(sprite)


async def http_service_port(state: EmulatorState, sprite: str) -> int | None:
    """The port the sprite's URL routes to, starting its service first if needed.

    For a URL router: the service with an ``http_port`` is started on an
    incoming request, as the real runtime does (even after a stop). ``None``
    when no service has an HTTP port.
    """
    sup = supervisor_for(state)
    for rt in sup.services(sprite).values():
        port = rt.definition.http_port
        if port is not None:
            if rt.proc is None:
                try:
                    await sup.start(rt)
                except StartFailed as exc:
                    log.warning("HTTP service %s of %s did not start: %s", rt.name, sprite, exc)
            return port
    return None


def http_service_watch(state: EmulatorState, sprite: str) -> Callable[[], str | None]:
    """A check for the URL router: why the ``http_port`` service is not serving.

    Call after :func:`http_service_port`. The returned function gives None
    while the process running now lives (or when no service has an HTTP
    port), else the reason, read as the process ended: a crash restart soon
    clears the service's error, and the router must still be able to say why.
    """
    runtimes = supervisor_for(state).services(sprite).values()
    rt = next((r for r in runtimes if r.definition.http_port is not None), None)
    if rt is None:
        return lambda: None
    done = rt.done
    if rt.proc is None or done is None:
        reason = _not_serving(rt)
        return lambda: reason
    seen: list[str] = []
    done.add_done_callback(lambda _: seen.append(_not_serving(rt)))
    return lambda: seen[0] if seen else None


def _not_serving(rt: ServiceRuntime) -> str:
    return f"service {rt.name} is {rt.status}" + (f": {rt.error}" if rt.error else "")


# --------------------------------------------------------------------- helpers


def _sup(request: web.Request) -> Supervisor:
    return supervisor_for(request.app[STATE_KEY])


def _runtime(request: web.Request) -> ServiceRuntime:
    return _sup(request).get(request.match_info["name"], request.match_info["svc"])


def _failure(exc: ServiceFailure) -> web.Response:
    return text_error(exc.status, str(exc))


def _watch_duration(request: web.Request) -> float:
    """``duration`` (or ``timeout``) for create/start/restart, as the 2025 server reads it."""
    value = DEFAULT_DURATION
    for key in ("duration", "timeout"):
        raw = request.query.get(key)
        if raw:
            try:
                parsed = parse_go_duration(raw)
            except ValueError:
                continue
            if parsed > 0:
                value = parsed
    return value


def _query_duration(request: web.Request, key: str, default: float) -> float:
    raw = request.query.get(key)
    if not raw:
        return default
    try:
        parsed = parse_go_duration(raw)
    except ValueError:
        return default
    return parsed if parsed >= 0 else default


async def _run_stream(
    request: web.Request, name: str, body: Callable[[NDJSONWriter], Awaitable[None]]
) -> web.StreamResponse:
    """Answer 200 NDJSON: ``body``'s events, then ``complete``; a client leaving ends it quietly."""
    writer = NDJSONWriter(request, request.app[STATE_KEY])
    try:
        await writer.prepare()
        await body(writer)
        await writer.send(event("complete", log_files=log_files(name)))
        return await writer.finish()
    except ConnectionError:
        # Operations that must finish regardless (a stop) run in tasks of their own.
        log.debug("service %s: the client left its %s stream", name, request.path)
        return writer.response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _drain(
    sub: Subscription, types: frozenset[str], limit: int = _BATCH
) -> tuple[list[Event], bool]:
    """Events already queued (of ``types``); True once the subscription has ended."""
    out: list[Event] = []
    while len(out) < limit:
        try:
            ev = sub.queue.get_nowait()
        except asyncio.QueueEmpty:
            return out, False
        if ev is None:
            return out, True
        if ev["type"] in types:
            out.append(ev)
    return out, False


async def _follow(
    request: web.Request,
    writer: NDJSONWriter,
    sub: Subscription,
    seconds: float,
    *,
    types: frozenset[str],
    stop_on_exit: bool,
) -> None:
    """Forward events of ``types`` for ``seconds`` (until an ``exit`` if ``stop_on_exit``).

    Also ends when the client has gone: a quiet service would otherwise keep
    a long follow (and with it the sprite) busy with nobody listening.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0 or _client_gone(request):
            return
        try:
            first = await asyncio.wait_for(sub.queue.get(), min(remaining, DISCONNECT_POLL))
        except asyncio.TimeoutError:
            continue
        if first is None:
            return
        batch, ended = _drain(sub, types)
        events = [e for e in (first, *batch) if e["type"] in types]
        if stop_on_exit:
            exit_at = next((i for i, e in enumerate(events) if e["type"] == "exit"), None)
            if exit_at is not None:
                events = events[: exit_at + 1]
                ended = True
        if events:
            await writer.send_many(events)
        if ended:
            return


async def _forward_until(
    writer: NDJSONWriter, sub: Subscription, task: asyncio.Future[Any]
) -> None:
    """Forward output lines until ``task`` is done (and every line queued before it)."""
    # The marker queues behind the lines the task's process printed before exiting.
    task.add_done_callback(lambda _: sub.queue.put_nowait(_TASK_DONE))
    while True:
        first = await sub.queue.get()
        if first is None or first is _TASK_DONE:
            break
        batch: list[Event] = [first]
        ended = False
        while len(batch) < _BATCH:
            try:
                ev = sub.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if ev is None or ev is _TASK_DONE:
                ended = True
                break
            batch.append(ev)
        events = [e for e in batch if e["type"] in _LINE_TYPES]
        if events:
            await writer.send_many(events)
        if ended:
            break
    await asyncio.wait({task})


async def _start_and_watch(
    request: web.Request,
    writer: NDJSONWriter,
    sup: Supervisor,
    rt: ServiceRuntime,
    seconds: float,
) -> None:
    """Start ``rt`` and stream ``started``, its output and an early ``exit``."""
    sub = rt.subscribe()
    try:
        try:
            await sup.start(rt)
        except StartFailed as exc:
            await writer.send_many(
                [
                    event("error", data=f"Failed to start service: {exc}"),
                    event("exit", exit_code=1),
                ]
            )
            return
        # Output of the new process queued meanwhile follows, in order.
        await writer.send(event("started"))
        await _follow(request, writer, sub, seconds, types=_WATCH_TYPES, stop_on_exit=True)
    finally:
        rt.unsubscribe(sub)


async def _stop_and_watch(
    writer: NDJSONWriter, sup: Supervisor, rt: ServiceRuntime, timeout: float
) -> None:
    """Stop ``rt``, streaming ``stopping``, its last output and ``stopped``."""
    sub = rt.subscribe()
    try:
        # A task of its own: a client leaving must not interrupt the stop half-way.
        task = sup.track(sup.stop(rt, timeout))
        await writer.send(event("stopping"))
        await _forward_until(writer, sub, task)
        try:
            code = task.result()
        except ServiceFailure as exc:
            await writer.send(event("error", data=str(exc)))
            return
        stopped = event("stopped")
        if code is not None:
            stopped = event("stopped", exit_code=code)
        await writer.send(stopped)
    finally:
        rt.unsubscribe(sub)


# --------------------------------------------------------------------- routes


async def _list(request: web.Request) -> web.StreamResponse:
    runtimes = _sup(request).services(request.match_info["name"])
    return go_json([rt.to_wire() for _, rt in sorted(runtimes.items())])


async def _get(request: web.Request) -> web.StreamResponse:
    try:
        return go_json(_runtime(request).to_wire())
    except ServiceFailure as exc:
        return _failure(exc)


def _parse_definition(name: str, doc: Any) -> ServiceDef:
    """A definition from a PUT body; ``ValueError`` with the text to answer 400 with."""
    if not isinstance(doc, dict):
        raise ValueError("invalid request body")
    cmd = doc.get("cmd")
    if cmd is None or cmd == "":
        raise ValueError("cmd field is required")
    port = doc.get("http_port")
    if port is None:
        port = doc.get("httpPort")
    env = doc.get("env")
    directory = doc.get("dir")
    try:
        if not isinstance(cmd, str):
            raise ValueError
        args = parse_names(doc.get("args") or [])
        needs = parse_names(doc.get("needs") or [])
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ValueError
        if env is not None and not (
            isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
        ):
            raise ValueError
        if directory is not None and not isinstance(directory, str):
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError("invalid request body") from None
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"invalid http_port: {port}")
    return ServiceDef(
        name=name,
        cmd=cmd,
        args=args,
        needs=list(dict.fromkeys(needs)),
        http_port=port or None,
        env=dict(env or {}),
        dir=directory or None,
    )


async def _put(request: web.Request) -> web.StreamResponse:
    sprite = request.match_info["name"]
    name = request.match_info["svc"]
    if not valid_name(name):
        return text_error(400, f"invalid service name: {name}")
    try:
        raw = await read_capped(request, BODY_LIMIT)
        definition = _parse_definition(name, msgspec.json.decode(raw) if raw else None)
    except (BodyTooLarge, msgspec.DecodeError, RecursionError):
        return text_error(400, "invalid request body")
    except ValueError as exc:
        return text_error(400, str(exc))
    sup = _sup(request)
    try:
        rt = await sup.put(sprite, definition)
    except ServiceFailure as exc:
        return _failure(exc)
    seconds = _watch_duration(request)

    async def body(writer: NDJSONWriter) -> None:
        await _start_and_watch(request, writer, sup, rt, seconds)

    return await _run_stream(request, name, body)


async def _start(request: web.Request) -> web.StreamResponse:
    try:
        rt = _runtime(request)
    except ServiceFailure as exc:
        return _failure(exc)
    sup, seconds = _sup(request), _watch_duration(request)

    async def body(writer: NDJSONWriter) -> None:
        await _start_and_watch(request, writer, sup, rt, seconds)

    return await _run_stream(request, rt.name, body)


async def _stop(request: web.Request) -> web.StreamResponse:
    try:
        rt = _runtime(request)
    except ServiceFailure as exc:
        return _failure(exc)
    if not rt.stoppable:
        return text_error(409, f"service not running: {rt.name}")
    sup, timeout = _sup(request), _query_duration(request, "timeout", DEFAULT_STOP_TIMEOUT)

    async def body(writer: NDJSONWriter) -> None:
        await _stop_and_watch(writer, sup, rt, timeout)

    return await _run_stream(request, rt.name, body)


async def _restart(request: web.Request) -> web.StreamResponse:
    try:
        rt = _runtime(request)
    except ServiceFailure as exc:
        return _failure(exc)
    sup, seconds = _sup(request), _watch_duration(request)

    async def body(writer: NDJSONWriter) -> None:
        if rt.stoppable:
            try:
                await _stop_and_watch(writer, sup, rt, DEFAULT_STOP_TIMEOUT)
            except ConnectionError:
                # Half a restart would leave the service stopped for good (sticky).
                with contextlib.suppress(StartFailed):
                    await sup.start(rt)
                raise
        await _start_and_watch(request, writer, sup, rt, seconds)

    return await _run_stream(request, rt.name, body)


async def _delete(request: web.Request) -> web.StreamResponse:
    try:
        rt = _runtime(request)
        await _sup(request).delete(rt)
    except ServiceFailure as exc:
        return _failure(exc)
    return web.Response(status=204)


async def _signal(request: web.Request) -> web.StreamResponse:
    try:
        raw = await read_capped(request, BODY_LIMIT)
        doc = msgspec.json.decode(raw)
    except (BodyTooLarge, msgspec.DecodeError, RecursionError):
        return text_error(400, "invalid request body")
    if not isinstance(doc, dict):
        return text_error(400, "invalid request body")
    name, sig_name = doc.get("name"), doc.get("signal")
    if not isinstance(name, str) or not name:
        return text_error(400, "service name required")
    if not isinstance(sig_name, str) or not sig_name:
        return text_error(400, "signal required")
    try:
        sig = parse_signal(sig_name)
    except ValueError:
        return text_error(400, f"invalid signal: {sig_name}")
    sup = _sup(request)
    try:
        rt = sup.get(request.match_info["name"], name)
        await sup.signal(rt, sig)
    except ServiceFailure as exc:
        return _failure(exc)
    return web.Response(status=204)


async def _logs(request: web.Request) -> web.StreamResponse:
    try:
        rt = _runtime(request)
    except ServiceFailure as exc:
        return _failure(exc)
    lines: int | None = None
    raw_lines = request.query.get("lines")
    if raw_lines:
        try:
            lines = max(0, int(raw_lines))
        except ValueError:
            lines = None
    seconds = _query_duration(request, "duration", 0.0)
    history = list(rt.lines)
    if lines is not None:
        history = history[len(history) - lines :] if lines else []
    # Subscribed in the same step as the snapshot: no line is lost or doubled.
    sub = rt.subscribe() if seconds > 0 else None

    async def body(writer: NDJSONWriter) -> None:
        for i in range(0, len(history), _BATCH):
            await writer.send_many(history[i : i + _BATCH])
        if sub is not None:
            await _follow(request, writer, sub, seconds, types=_LOG_TYPES, stop_on_exit=False)

    try:
        return await _run_stream(request, rt.name, body)
    finally:
        if sub is not None:
            rt.unsubscribe(sub)
