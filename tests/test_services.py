"""Services against a small loopback ``aiohttp.web`` fake (the emulator has no services yet).

The fake follows section 8: definitions in memory, NDJSON event streams with
millisecond timestamps, text error bodies, 204 for delete and signal.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    RetryPolicy,
    SpritesClient,
    StreamError,
)
from sprites_async._paging import ListPage
from sprites_async._services import (
    Service,
    ServiceComplete,
    ServiceError,
    ServiceExit,
    ServiceNotFoundError,
    ServiceResult,
    ServicesResource,
    ServiceStarted,
    ServiceStderr,
    ServiceStdout,
    ServiceStopped,
    ServiceStopping,
)
from sprites_async._streams import OtherEvent
from sprites_async._validation import go_duration

LOGS = {
    "combined": "/.sprite/logs/services/{}.log",
    "stderr": "/.sprite/logs/services/{}.log",
    "stdout": "/.sprite/logs/services/{}.log",
}


def ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Fake:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    wrap_list: bool = False
    follow_gate: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(fake: Fake) -> web.Application:
    def text(status: int, message: str) -> web.Response:
        return web.Response(status=status, text=message + "\n")

    async def stream(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for event in events:
            event.setdefault("timestamp", ms())
            await resp.write(json.dumps(event).encode() + b"\n")
        await resp.write_eof()
        return resp

    def complete(name: str) -> dict[str, Any]:
        return {"type": "complete", "log_files": {k: v.format(name) for k, v in LOGS.items()}}

    def start_events(name: str) -> list[dict[str, Any]]:
        svc = fake.services[name]
        if svc["cmd"] == "false":
            return [{"type": "started"}, {"type": "exit", "exit_code": 1}]
        if svc["cmd"] == "broken":
            return [{"type": "started"}, {"type": "error", "data": "exec format error"}]
        if svc["cmd"] == "truncated":
            return [{"type": "started"}]
        fake.running.add(name)
        return [
            {"type": "started"},
            {"type": "stdout", "data": "listening"},
            {"type": "stderr", "data": "warn"},
            {"type": "heartbeat", "seq": 1},
            complete(name),
        ]

    def record(request: web.Request, body: Any = None) -> None:
        fake.requests.append((request.method, request.path_qs, body))

    async def list_services(request: web.Request) -> web.Response:
        record(request)
        items = [
            {**svc, "state": {"name": n, "status": "running" if n in fake.running else "stopped"}}
            for n, svc in fake.services.items()
        ]
        return web.json_response({"services": items} if fake.wrap_list else items)

    async def get(request: web.Request) -> web.Response:
        record(request)
        name = request.match_info["svc"]
        if name not in fake.services:
            return text(404, f"service not found: {name}")
        state = {"name": name, "status": "running", "pid": 7353, "restart_count": 0}
        state["started_at"] = "2026-06-02T17:11:14.555839485Z"
        return web.json_response({**fake.services[name], "state": state})

    async def put(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record(request, body)
        if not body.get("cmd"):
            return text(400, "cmd field is required")
        if body.get("http_port") and any(
            s.get("http_port") for n, s in fake.services.items() if n != request.match_info["svc"]
        ):
            return text(409, "another service already has an HTTP port configured")
        name = request.match_info["svc"]
        fake.services[name] = {"name": name, **body}
        return await stream(request, start_events(name))

    async def action(request: web.Request) -> web.StreamResponse:
        record(request)
        name, what = request.match_info["svc"], request.match_info["action"]
        if name not in fake.services:
            return text(404, f"service not found: {name}")
        if what == "start":
            return await stream(request, start_events(name))
        if what == "stop":
            if name not in fake.running:
                return text(409, f"service {name} is not running")
            fake.running.discard(name)
            events = [{"type": "stopping"}, {"type": "stopped", "exit_code": 143}, complete(name)]
            return await stream(request, events)
        if what == "restart":
            events = [{"type": "stopping"}, {"type": "stopped", "exit_code": 0}]
            fake.running.discard(name)
            return await stream(request, events + start_events(name))
        return text(404, "not found")

    async def logs(request: web.Request) -> web.StreamResponse:
        record(request)
        name = request.match_info["svc"]
        if name not in fake.services:
            return text(404, f"service not found: {name}")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        lines = [{"type": "stdout", "data": f"line {i}"} for i in range(5)]
        n = int(request.query.get("lines", "5"))
        for event in lines[len(lines) - n :]:
            await resp.write(json.dumps({**event, "timestamp": ms()}).encode() + b"\n")
        if request.query.get("duration", "0") != "0":
            await fake.follow_gate.wait()  # "new output" arrives only when the test says
            await resp.write(b'{"type":"stderr","data":"later","timestamp":1780420276551}\n')
            await resp.write(b'{"type":"error","data":"log file rotated away"}\n')
        await resp.write_eof()
        return resp

    async def delete(request: web.Request) -> web.Response:
        record(request)
        name = request.match_info["svc"]
        if name not in fake.services:
            return text(404, f"service not found: {name}")
        del fake.services[name]
        return web.Response(status=204)

    async def signal_service(request: web.Request) -> web.Response:
        body = await request.json()
        record(request, body)
        if body["name"] not in fake.services:
            return text(404, f"service not found: {body['name']}")
        if body["name"] not in fake.running:
            return text(409, "service not running")
        return web.Response(status=204)

    app = web.Application()
    base = "/v1/sprites/box/services"
    app.router.add_get(base, list_services)
    app.router.add_post(base + "/signal", signal_service)
    app.router.add_get(base + "/{svc}", get)
    app.router.add_put(base + "/{svc}", put)
    app.router.add_delete(base + "/{svc}", delete)
    app.router.add_get(base + "/{svc}/logs", logs)
    app.router.add_post(base + "/{svc}/{action}", action)
    return app


@pytest.fixture
def services_fake() -> Fake:
    return Fake()


@pytest.fixture
async def services(services_fake: Fake) -> AsyncIterator[ServicesResource]:
    server = TestServer(make_app(services_fake), host="127.0.0.1")
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    try:
        async with SpritesClient("t", base_url=base_url, retry=RetryPolicy(max_attempts=1)) as c:
            yield ServicesResource(c.sprite("box"))
    finally:
        await server.close()


async def test_create_streams_events_and_awaits_a_result(
    services: ServicesResource, services_fake: Fake
) -> None:
    events = [
        e
        async for e in services.create(
            "web",
            cmd="python3",
            args=["-m", "http.server", "3000"],
            http_port=3000,
            env={"PORT": "3000"},
            dir="/home/sprite/app",
            duration=2.5,
        )
    ]
    assert [type(e) for e in events] == [
        ServiceStarted,
        ServiceStdout,
        ServiceStderr,
        OtherEvent,
        ServiceComplete,
    ]
    assert events[0].time is not None and events[0].time.year >= 2026
    assert [e.type for e in events] == ["started", "stdout", "stderr", "heartbeat", "complete"]
    method, path, body = services_fake.requests[0]
    assert (method, path) == ("PUT", "/v1/sprites/box/services/web?duration=2.5s")
    assert body == {
        "cmd": "python3",
        "args": ["-m", "http.server", "3000"],
        "needs": [],
        "http_port": 3000,
        "env": {"PORT": "3000"},
        "dir": "/home/sprite/app",
    }

    result = await services.create("worker", cmd="sleep", args=["1000"], needs=["web"])
    assert isinstance(result, ServiceResult)
    assert result.log_files["combined"] == "/.sprite/logs/services/worker.log"
    assert result.output == [("stdout", "listening"), ("stderr", "warn")]
    assert services_fake.requests[-1][2] == {"cmd": "sleep", "args": ["1000"], "needs": ["web"]}


async def test_list_and_get(services: ServicesResource, services_fake: Fake) -> None:
    await services.create("web", cmd="python3", http_port=3000)
    await services.create("db", cmd="postgres")
    listed = await services.list()
    assert [s.name for s in listed] == ["web", "db"]
    assert listed[0].http_port == 3000 and listed[0].status == "running"
    services_fake.wrap_list = True
    assert [s.name for s in await services.list()] == ["web", "db"]
    # Iterable like sprites.list(): every service, then the end (one page).
    assert [s.name async for s in services.list()] == ["web", "db"]
    page = await services.list()
    assert isinstance(page, ListPage) and page.next_token is None and page.items is page
    web_svc = await services.get("web")
    assert isinstance(web_svc, Service) and web_svc.cmd == "python3"
    assert web_svc.state is not None and web_svc.state.pid == 7353
    assert web_svc.state.started_at is not None
    with pytest.raises(ServiceNotFoundError, match="service not found: nope"):
        await services.get("nope")


async def test_start_stop_restart(services: ServicesResource, services_fake: Fake) -> None:
    await services.create("web", cmd="python3")
    stopped = await services.stop("web", timeout=timedelta(seconds=3))
    assert stopped.exit_code == 143
    assert services_fake.requests[-1][1] == "/v1/sprites/box/services/web/stop?timeout=3s"
    with pytest.raises(ConflictError):
        await services.stop("web")
    started = await services.start("web", duration=1)
    assert started.log_files
    assert services_fake.requests[-1][1] == "/v1/sprites/box/services/web/start?duration=1s"
    events = [e async for e in services.restart("web")]
    assert isinstance(events[0], ServiceStopping) and isinstance(events[1], ServiceStopped)
    assert isinstance(events[-1], ServiceComplete)
    with pytest.raises(ServiceNotFoundError):
        await services.start("ghost")
    with pytest.raises(NotFoundError):
        [e async for e in services.restart("ghost")]


async def test_failures_inside_a_200_stream(services: ServicesResource) -> None:
    with pytest.raises(ServiceError, match="exited with code 1") as exited:
        await services.create("crash", cmd="false")
    assert exited.value.exit_code == 1 and exited.value.service == "crash"
    assert isinstance(exited.value, StreamError)

    seen: list[object] = []

    async def consume() -> None:
        async for event in services.create("crash", cmd="false"):
            seen.append(event)

    with pytest.raises(ServiceError):
        await consume()
    assert [type(e) for e in seen] == [ServiceStarted, ServiceExit]

    with pytest.raises(ServiceError, match="exec format error") as errored:
        await services.create("bad", cmd="broken")
    assert errored.value.server_message == "exec format error"

    with pytest.raises(ServiceError, match="without a 'complete'"):
        await services.create("cut", cmd="truncated")


async def test_http_errors(services: ServicesResource) -> None:
    await services.create("web", cmd="python3", http_port=3000)
    with pytest.raises(ConflictError, match="HTTP port"):
        await services.create("other", cmd="python3", http_port=3001)


async def test_logs(services: ServicesResource, services_fake: Fake) -> None:
    await services.create("web", cmd="python3")
    events = [e async for e in services.logs("web", lines=2)]
    assert [e.data for e in events] == ["line 3", "line 4"]  # type: ignore[union-attr]
    assert services_fake.requests[-1][1] == "/v1/sprites/box/services/web/logs?lines=2&duration=0"

    followed: list[Any] = []

    async def follow() -> None:
        async for event in services.logs("web", follow=True):
            followed.append(event)
            if len(followed) == 5:
                services_fake.follow_gate.set()  # new output comes after the buffered lines

    with pytest.raises(ServiceError, match="log file rotated away"):
        await asyncio.wait_for(follow(), 10)
    assert followed[-1].data == "later" and isinstance(followed[-1], ServiceStderr)
    assert followed[-1].time.year == 2026
    assert "duration=86400s" in services_fake.requests[-1][1]

    with pytest.raises(ServiceNotFoundError):
        [e async for e in services.logs("ghost")]


async def test_delete_and_signal(services: ServicesResource, services_fake: Fake) -> None:
    await services.create("web", cmd="python3")
    await services.signal("web", "HUP")
    await services.signal("web", signal.SIGTERM)
    await services.signal("web", "sigusr1")
    await services.signal("web", 9)
    sent = [r[2]["signal"] for r in services_fake.requests if r[1].endswith("/services/signal")]
    assert sent == ["HUP", "TERM", "USR1", "KILL"]
    assert services_fake.requests[-1][2] == {"name": "web", "signal": "KILL"}
    with pytest.raises(ValueError, match="unknown signal"):
        await services.signal("web", "NOPE")
    await services.delete("web")
    with pytest.raises(ServiceNotFoundError):
        await services.delete("web")
    with pytest.raises(ServiceNotFoundError):
        await services.signal("web", "HUP")


def test_arguments_are_checked_before_the_network(services: ServicesResource) -> None:
    with pytest.raises(ValueError, match="cmd"):
        services.create("web", cmd="")
    with pytest.raises(TypeError, match="args"):
        services.create("web", cmd="ls", args="-la")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http_port"):
        services.create("web", cmd="ls", http_port=0)
    with pytest.raises(ValueError, match="service name"):
        services.start("a/b")
    with pytest.raises(ValueError, match="duration"):
        services.start("web", duration=-1)
    with pytest.raises(ValueError, match="lines"):
        services.logs("web", lines=-1)


def test_go_duration() -> None:
    assert go_duration(5) == "5s"
    assert go_duration(0.0004) == "0s"
    assert go_duration(timedelta(minutes=1)) == "60s"
    with pytest.raises(ValueError, match="duration"):
        go_duration("5s")


async def test_server_400_is_a_bad_request(services: ServicesResource) -> None:
    # cmd is validated client-side; reach the server's check by a raw payload.
    with pytest.raises(BadRequestError, match="cmd field is required"):
        await services._operation("PUT", "web", None, "create service", None, json=b'{"cmd":""}')
