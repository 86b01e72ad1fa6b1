"""Services routes (section 8) over real loopback HTTP, with real processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from sprites_async.emulator import EmulatorConfig, _services, create_app
from sprites_async.emulator._state import STATE_KEY
from tests._emulator import RunningEmulator, serve

NAME = "svcbox"
LOOP = "while :; do sleep 0.05; done"
"""A shell body that runs until signalled, waking often enough to run traps."""


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.extra.update(
        services_restart_backoff=0.05,
        services_restart_backoff_max=0.2,
    )
    return emulator_config


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    app = create_app(emulator_config)
    async with serve(emulator_config, app) as running:
        running.add_sprite(NAME)
        yield running


def base(emu: RunningEmulator, sprite: str = NAME) -> str:
    return f"{emu.url}/v1/sprites/{sprite}/services"


def check_timestamps(events: list[dict[str, Any]]) -> None:
    now = time.time() * 1000
    for ev in events:
        ts = ev["timestamp"]
        assert isinstance(ts, int), ev
        assert abs(ts - now) < 120_000, ev


async def call(emu: RunningEmulator, method: str, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    """One request; NDJSON bodies come back as a list of events, parsed line by line."""
    async with emu.http.request(method, url, headers=emu.auth, **kwargs) as resp:
        body = await resp.read()
        ctype = resp.content_type
        if ctype == "application/x-ndjson":
            assert body.endswith(b"\n")
            events = [json.loads(line) for line in body.split(b"\n")[:-1]]
            check_timestamps(events)
            return resp.status, events, ctype
        if ctype == "application/json":
            return resp.status, json.loads(body), ctype
        return resp.status, body.decode(), ctype


async def put(
    emu: RunningEmulator, svc: str, body: dict[str, Any], duration: str = "200ms"
) -> tuple[int, Any, str]:
    return await call(emu, "PUT", f"{base(emu)}/{svc}?duration={duration}", json=body)


async def sh(emu: RunningEmulator, svc: str, script: str, **extra: Any) -> list[dict[str, Any]]:
    """Create a ``sh -c`` service; assert the stream ran to ``complete``."""
    duration = extra.pop("duration", "200ms")
    status, events, _ = await put(
        emu, svc, {"cmd": "sh", "args": ["-c", script], **extra}, duration
    )
    assert status == 200, events
    assert events[0]["type"] == "started"
    assert events[-1]["type"] == "complete"
    return events


async def state(emu: RunningEmulator, svc: str) -> dict[str, Any]:
    status, body, _ = await call(emu, "GET", f"{base(emu)}/{svc}")
    assert status == 200, body
    result: dict[str, Any] = body["state"]
    return result


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def followed(emu: RunningEmulator, svc: str) -> None:
    """Wait until a logs request is following ``svc`` (its subscription exists)."""
    rt = _services.supervisor_for(emu.state).get(NAME, svc)

    async def subscribed() -> bool:
        return bool(rt.subscribers)

    await wait_for(subscribed, what="a follower")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] != b"Z"


def parse_time(value: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fractional digits."""
    head, _, frac = value.rstrip("Z").partition(".")
    secs = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(secs.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def lines(events: list[dict[str, Any]], kind: str = "stdout") -> list[str]:
    return [e["data"] for e in events if e["type"] == kind]


# ------------------------------------------------------------------ create, list, get


async def test_put_streams_start_output_and_complete(emu: RunningEmulator) -> None:
    events = await sh(emu, "web", f"echo hello; echo oops >&2; {LOOP}", duration="300ms")
    assert kinds(events) == ["started", "stdout", "stderr", "complete"]
    assert lines(events) == ["hello"]
    assert lines(events, "stderr") == ["oops"]
    path = "/.sprite/logs/services/web.log"
    assert events[-1]["log_files"] == {"stdout": path, "stderr": path, "combined": path}

    status, listed, ctype = await call(emu, "GET", base(emu))
    assert (status, ctype) == (200, "application/json")
    assert isinstance(listed, list)
    assert len(listed) == 1
    item = listed[0]
    assert item["name"] == "web"
    assert item["cmd"] == "sh"
    assert item["args"] == ["-c", f"echo hello; echo oops >&2; {LOOP}"]
    assert item["needs"] == []
    st = item["state"]
    assert st["name"] == "web"
    assert st["status"] == "running"
    assert isinstance(st["pid"], int)
    assert alive(st["pid"])
    assert abs(parse_time(st["started_at"]) - time.time_ns()) < 60 * 10**9
    assert st["restart_count"] == 0
    assert "error" not in st
    assert "next_restart_at" not in st
    assert await state(emu, "web") == st


async def test_list_is_empty_array_and_unknown_service_is_404(emu: RunningEmulator) -> None:
    assert (await call(emu, "GET", base(emu)))[:2] == (200, [])
    status, text, ctype = await call(emu, "GET", f"{base(emu)}/web")
    assert (status, text, ctype) == (404, "service not found: web\n", "text/plain")
    for method, suffix in [
        ("POST", "/web/start"),
        ("POST", "/web/stop"),
        ("POST", "/web/restart"),
        ("DELETE", "/web"),
        ("GET", "/web/logs"),
    ]:
        status, text, _ = await call(emu, method, base(emu) + suffix)
        assert (status, text) == (404, "service not found: web\n"), (method, suffix)


async def test_definition_fields_round_trip(emu: RunningEmulator) -> None:
    (emu.state.sprite_root(NAME) / "home" / "sprite" / "app").mkdir()
    events = await sh(
        emu,
        "web",
        'echo "$GREETING"; pwd; ' + LOOP,
        httpPort=8080,
        env={"GREETING": "hi there"},
        dir="/home/sprite/app",
    )
    assert lines(events)[0] == "hi there"
    assert lines(events)[1].endswith("/home/sprite/app")
    status, body, _ = await call(emu, "GET", f"{base(emu)}/web")
    assert status == 200
    assert body["http_port"] == 8080
    assert body["env"] == {"GREETING": "hi there"}
    assert body["dir"] == "/home/sprite/app"


async def test_put_validation_errors(emu: RunningEmulator) -> None:
    url = f"{base(emu)}/web"
    cases: list[tuple[Any, int, str]] = [
        ({"args": ["x"]}, 400, "cmd field is required\n"),
        ({"cmd": ""}, 400, "cmd field is required\n"),
        ({"cmd": "sleep", "args": "30"}, 400, "invalid request body\n"),
        ({"cmd": "sleep", "needs": ["nope"]}, 400, "dependency not found: nope\n"),
        ({"cmd": "sleep", "needs": ["web"]}, 400, "service cannot depend on itself\n"),
        ({"cmd": "sleep", "http_port": "80"}, 400, "invalid request body\n"),
        ([1, 2], 400, "invalid request body\n"),
    ]
    for body, want_status, want_text in cases:
        status, text, ctype = await call(emu, "PUT", url, json=body)
        assert (status, text, ctype) == (want_status, want_text, "text/plain"), body
    status, text, _ = await call(emu, "PUT", url, data=b"{not json")
    assert (status, text) == (400, "invalid request body\n")
    status, text, _ = await call(emu, "PUT", f"{base(emu)}/bad..name!", json={"cmd": "sleep"})
    assert status == 400
    assert (await call(emu, "GET", base(emu)))[1] == []


async def test_circular_needs_and_second_http_port(emu: RunningEmulator) -> None:
    await sh(emu, "a", LOOP, http_port=3000)
    await sh(emu, "b", LOOP, needs=["a"])
    status, text, _ = await put(emu, "a", {"cmd": "sh", "args": ["-c", LOOP], "needs": ["b"]})
    assert (status, text) == (400, "circular dependency detected\n")
    status, text, _ = await put(emu, "c", {"cmd": "sleep", "args": ["30"], "httpPort": 3001})
    assert (status, text) == (409, "another service already has an HTTP port configured\n")
    # The owner of the port may keep (or change) it.
    await sh(emu, "a", LOOP, http_port=3002)
    assert (await call(emu, "GET", f"{base(emu)}/a"))[1]["http_port"] == 3002


async def test_put_replaces_a_running_service(emu: RunningEmulator) -> None:
    await sh(emu, "web", f"echo one; {LOOP}")
    first = (await state(emu, "web"))["pid"]
    events = await sh(emu, "web", f"echo two; {LOOP}")
    assert lines(events) == ["two"]
    st = await state(emu, "web")
    assert st["status"] == "running"
    assert st["pid"] != first
    assert not alive(first)


async def test_start_failure_is_reported_in_the_stream(emu: RunningEmulator) -> None:
    status, events, _ = await put(emu, "web", {"cmd": "no-such-program"})
    assert status == 200
    assert kinds(events) == ["error", "exit", "complete"]
    assert "no-such-program" in events[0]["data"]
    assert events[1]["exit_code"] == 1
    st = await state(emu, "web")
    assert st["status"] == "failed"
    assert "no-such-program" in st["error"]
    assert "pid" not in st


async def test_timeout_is_an_alias_of_duration(emu: RunningEmulator) -> None:
    body = {"cmd": "sh", "args": ["-c", LOOP]}
    started = time.monotonic()
    status, events, _ = await call(emu, "PUT", f"{base(emu)}/web?timeout=100ms", json=body)
    assert status == 200
    assert kinds(events) == ["started", "complete"]
    assert time.monotonic() - started < 3  # not the 5 s default
    # Garbage falls back to the default window, as in the 2025 server; exit ends it early.
    started = time.monotonic()
    body = {"cmd": "sh", "args": ["-c", "exit 0"]}
    status, events, _ = await call(emu, "PUT", f"{base(emu)}/job?duration=soon", json=body)
    assert kinds(events) == ["started", "exit", "complete"]
    assert time.monotonic() - started < 3


async def test_odd_ndjson_splits(emu: RunningEmulator) -> None:
    emu.state.faults.ndjson_chunk = 7
    events = await sh(emu, "web", f"echo split; {LOOP}")
    assert lines(events) == ["split"]


# ------------------------------------------------------------------ exits and crashes


async def test_exit_in_window_then_crash_restarts(emu: RunningEmulator) -> None:
    events = await sh(emu, "web", "echo bye; exit 3", duration="2s")
    assert kinds(events) == ["started", "stdout", "exit", "complete"]
    assert events[2]["exit_code"] == 3

    async def restarted_twice() -> bool:
        return (await state(emu, "web"))["restart_count"] >= 2

    await wait_for(restarted_twice, what="two crash restarts")
    st = await state(emu, "web")
    assert st["status"] in ("failed", "starting", "running")
    if st["status"] == "failed":
        assert st["error"] == "exited with code 3"
        assert "next_restart_at" in st
    # Every run logged its line.
    status, logged, _ = await call(emu, "GET", f"{base(emu)}/web/logs")
    assert status == 200
    assert lines(logged).count("bye") >= 2


async def test_failed_state_shows_next_restart(
    emu: RunningEmulator, emulator_config: EmulatorConfig
) -> None:
    emulator_config.extra["services_restart_backoff"] = 30.0
    emulator_config.extra["services_restart_backoff_max"] = 30.0
    await sh(emu, "web", "exit 5", duration="1s")
    st = await state(emu, "web")
    assert st["status"] == "failed"
    assert st["error"] == "exited with code 5"
    assert st["restart_count"] == 0
    delay = parse_time(st["next_restart_at"]) - time.time_ns()
    assert 20 * 10**9 < delay <= 30 * 10**9
    # Stopping a service that only waits for its restart cancels the restart.
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/stop")
    assert status == 200
    assert kinds(events) == ["stopping", "stopped", "complete"]
    assert events[1]["exit_code"] == 5
    st = await state(emu, "web")
    assert st["status"] == "stopped"
    assert "next_restart_at" not in st


async def test_exit_zero_is_not_restarted(emu: RunningEmulator) -> None:
    await sh(emu, "job", "echo done", duration="1s")
    await asyncio.sleep(0.3)
    st = await state(emu, "job")
    assert st["status"] == "stopped"
    assert st["restart_count"] == 0


async def test_kill_by_signal_counts_as_crash(emu: RunningEmulator) -> None:
    await sh(emu, "web", LOOP)
    first = (await state(emu, "web"))["pid"]
    status, text, _ = await call(
        emu, "POST", f"{base(emu)}/signal", json={"name": "web", "signal": "KILL"}
    )
    assert (status, text) == (204, "")

    async def back() -> bool:
        st = await state(emu, "web")
        return st["status"] == "running" and st["restart_count"] == 1

    await wait_for(back, what="the restart after SIGKILL")
    st = await state(emu, "web")
    assert st["pid"] != first
    assert not alive(first)


# ------------------------------------------------------------------ stop, start, restart


async def test_stop_streams_and_is_sticky(emu: RunningEmulator) -> None:
    await sh(emu, "web", f'trap "echo bye; exit 0" TERM; {LOOP}')
    pid = (await state(emu, "web"))["pid"]
    status, events, ctype = await call(emu, "POST", f"{base(emu)}/web/stop?timeout=5s")
    assert (status, ctype) == (200, "application/x-ndjson")
    # The group gets the TERM, so sh may also report its dead ``sleep`` on stderr.
    assert [k for k in kinds(events) if k != "stderr"] == [
        "stopping",
        "stdout",
        "stopped",
        "complete",
    ]
    assert lines(events) == ["bye"]
    assert events[-2]["exit_code"] == 0
    assert not alive(pid)
    await asyncio.sleep(0.3)  # several restart backoffs
    st = await state(emu, "web")
    assert st["status"] == "stopped"
    assert st["restart_count"] == 0
    assert "pid" not in st
    status, text, ctype = await call(emu, "POST", f"{base(emu)}/web/stop")
    assert (status, text, ctype) == (409, "service not running: web\n", "text/plain")


async def test_stop_escalates_to_kill_after_timeout(emu: RunningEmulator) -> None:
    await sh(emu, "web", f'trap "" TERM; {LOOP}')
    started = time.monotonic()
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/stop?timeout=200ms")
    assert status == 200
    assert kinds(events) == ["stopping", "stopped", "complete"]
    assert events[1]["exit_code"] == 128 + 9
    assert 0.2 <= time.monotonic() - started < 3
    assert (await state(emu, "web"))["status"] == "stopped"


async def test_start_and_restart(emu: RunningEmulator) -> None:
    await sh(emu, "web", f"echo up; {LOOP}")
    await call(emu, "POST", f"{base(emu)}/web/stop?timeout=0")
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/start?duration=200ms")
    assert status == 200
    assert kinds(events) == ["started", "stdout", "complete"]
    first = (await state(emu, "web"))["pid"]

    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/restart?duration=200ms")
    assert status == 200
    assert kinds(events) == ["stopping", "stopped", "started", "stdout", "complete"]
    assert events[1]["exit_code"] == 128 + 15
    st = await state(emu, "web")
    assert st["status"] == "running"
    assert st["pid"] != first
    assert st["restart_count"] == 0
    assert not alive(first)

    # Restarting a stopped service just starts it; starting a running one is a no-op.
    await call(emu, "POST", f"{base(emu)}/web/stop?timeout=0")
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/restart?duration=100ms")
    assert kinds(events) == ["started", "stdout", "complete"]
    pid = (await state(emu, "web"))["pid"]
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/start?duration=100ms")
    assert kinds(events) == ["started", "complete"]
    assert (await state(emu, "web"))["pid"] == pid


# ------------------------------------------------------------------ dependencies, delete


async def test_dependency_order_and_delete_conflict(emu: RunningEmulator) -> None:
    await sh(emu, "db", LOOP)
    await sh(emu, "cache", LOOP, needs=["db"])
    await sh(emu, "web", LOOP, needs=["cache", "db"])
    for svc in ("web", "cache", "db"):
        status, _, _ = await call(emu, "POST", f"{base(emu)}/{svc}/stop?timeout=0")
        assert status == 200
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/start?duration=50ms")
    assert kinds(events) == ["started", "complete"]
    times = {
        svc: parse_time((await state(emu, svc))["started_at"]) for svc in ("db", "cache", "web")
    }
    assert times["db"] < times["cache"] < times["web"]

    status, text, _ = await call(emu, "DELETE", f"{base(emu)}/db")
    assert status == 409
    assert "db" in text
    pid = (await state(emu, "web"))["pid"]
    status, text, _ = await call(emu, "DELETE", f"{base(emu)}/web")
    assert (status, text) == (204, "")
    assert not alive(pid)
    assert (await call(emu, "GET", f"{base(emu)}/web"))[0] == 404
    assert (await call(emu, "DELETE", f"{base(emu)}/cache"))[0] == 204
    assert (await call(emu, "DELETE", f"{base(emu)}/db"))[0] == 204
    assert (await call(emu, "GET", base(emu)))[1] == []
    # Logs are kept after deletion.
    logs = emu.state.sprite_root(NAME) / ".sprite" / "logs" / "services"
    assert sorted(p.name for p in logs.iterdir()) == ["cache.log", "db.log", "web.log"]


# ------------------------------------------------------------------ signals


async def test_signal_spellings_and_errors(emu: RunningEmulator) -> None:
    await sh(emu, "web", f'trap "echo hup" HUP; echo trapped; {LOOP}')
    url = f"{base(emu)}/signal"

    async def ready() -> bool:
        _, events, _ = await call(emu, "GET", f"{base(emu)}/web/logs")
        return "trapped" in lines(events)

    # A HUP that reaches the shell before its trap is set ends it (a loaded
    # machine can take longer than the create stream's 200 ms to get there).
    await wait_for(ready, what="the trap set")
    for count, spelling in enumerate(("HUP", "SIGHUP", "hup"), 1):
        status, text, _ = await call(emu, "POST", url, json={"name": "web", "signal": spelling})
        assert (status, text) == (204, "")

        async def trapped(count: int = count) -> bool:
            _, events, _ = await call(emu, "GET", f"{base(emu)}/web/logs")
            return lines(events).count("hup") == count

        # One at a time: signals sent before the trap runs would merge into one.
        await wait_for(trapped, what=f"{count} trapped HUPs")
    assert (await state(emu, "web"))["restart_count"] == 0

    status, text, _ = await call(emu, "POST", url, json={"name": "web", "signal": "NOPE"})
    assert (status, text) == (400, "invalid signal: NOPE\n")
    status, text, _ = await call(emu, "POST", url, json={"name": "nope", "signal": "HUP"})
    assert (status, text) == (404, "service not found: nope\n")
    status, _, _ = await call(emu, "POST", url, data=b"not json")
    assert status == 400
    status, _, _ = await call(emu, "POST", url, json={"signal": "HUP"})
    assert status == 400
    await call(emu, "POST", f"{base(emu)}/web/stop?timeout=0")
    status, text, _ = await call(emu, "POST", url, json={"name": "web", "signal": "HUP"})
    assert (status, text) == (409, "service not running: web\n")


# ------------------------------------------------------------------ logs


async def test_logs_lines_and_follow(emu: RunningEmulator) -> None:
    script = (
        "for i in 1 2 3 4 5; do echo line$i; done; echo warn >&2; "
        "while [ ! -e go ]; do sleep 0.02; done; echo late; " + LOOP
    )
    await sh(emu, "web", script, duration="100ms")
    url = f"{base(emu)}/web/logs"

    async def all_out() -> bool:
        return "warn" in lines((await call(emu, "GET", url))[1], "stderr")

    await wait_for(all_out, what="the first output")
    status, events, ctype = await call(emu, "GET", url)
    assert (status, ctype) == (200, "application/x-ndjson")
    assert kinds(events) == ["stdout"] * 5 + ["stderr", "complete"]
    assert events[-1]["log_files"]["combined"] == "/.sprite/logs/services/web.log"

    _, events, _ = await call(emu, "GET", url + "?lines=2")
    assert [(e["type"], e["data"]) for e in events[:-1]] == [
        ("stdout", "line5"),
        ("stderr", "warn"),
    ]
    _, events, _ = await call(emu, "GET", url + "?lines=0")
    assert kinds(events) == ["complete"]

    async def follow() -> tuple[int, Any, str]:
        return await call(emu, "GET", url + "?lines=1&duration=600ms")

    started = time.monotonic()
    task = asyncio.ensure_future(follow())
    await followed(emu, "web")
    (emu.state.sprite_root(NAME) / "home" / "sprite" / "go").touch()
    status, events, _ = await task
    assert status == 200
    assert [e.get("data") for e in events] == ["warn", "late", None]
    assert time.monotonic() - started >= 0.6

    logfile = emu.state.sprite_root(NAME) / ".sprite" / "logs" / "services" / "web.log"
    assert logfile.read_text().splitlines() == [f"line{i}" for i in range(1, 6)] + [
        "warn",
        "late",
    ]


async def test_logs_follow_sees_exit_and_restart(emu: RunningEmulator) -> None:
    await sh(emu, "web", "echo run; while [ ! -e go ]; do sleep 0.02; done; rm go; exit 2")
    task = asyncio.ensure_future(call(emu, "GET", f"{base(emu)}/web/logs?lines=0&duration=1s"))
    await followed(emu, "web")
    (emu.state.sprite_root(NAME) / "home" / "sprite" / "go").touch()
    status, events, _ = await task
    assert status == 200
    # The exit, then the restarted run's first line, then the end of the window.
    assert kinds(events) == ["exit", "stdout", "complete"]
    assert events[0]["exit_code"] == 2
    assert lines(events) == ["run"]


# ------------------------------------------------------------------ sprite lifecycle


async def test_sprite_delete_kills_services(emu: RunningEmulator) -> None:
    await sh(emu, "web", LOOP)
    pid = (await state(emu, "web"))["pid"]
    async with emu.http.delete(f"{emu.url}/v1/sprites/{NAME}", headers=emu.auth) as resp:
        assert resp.status == 204
    assert not alive(pid)
    row = emu.state.db.execute("SELECT COUNT(*) FROM emu_services").fetchone()
    assert row == (0,)
    # A new sprite of the same name starts without services.
    emu.add_sprite(NAME)
    assert (await call(emu, "GET", base(emu)))[1] == []


async def test_stop_all_and_start_all(emu: RunningEmulator) -> None:
    await sh(emu, "db", LOOP)
    await sh(emu, "web", LOOP, needs=["db"])
    await sh(emu, "manual", LOOP)
    await call(emu, "POST", f"{base(emu)}/manual/stop?timeout=0")
    pids = [(await state(emu, s))["pid"] for s in ("db", "web")]
    await _services.stop_all(emu.state, NAME)
    assert not any(alive(p) for p in pids)
    await asyncio.sleep(0.3)  # no crash restarts after a kill by stop_all
    for svc in ("db", "web", "manual"):
        st = await state(emu, svc)
        assert st["status"] == "stopped"
        assert st["restart_count"] == 0
    await _services.start_all(emu.state, NAME)
    db, web, manual = [await state(emu, s) for s in ("db", "web", "manual")]
    assert db["status"] == web["status"] == "running"
    assert parse_time(db["started_at"]) < parse_time(web["started_at"])
    assert manual["status"] == "stopped"


async def test_services_come_back_after_emulator_restart(
    emulator_config: EmulatorConfig,
) -> None:
    async def run(body: Callable[[RunningEmulator], Awaitable[None]]) -> None:
        app = create_app(emulator_config)
        _services.setup(app, app[STATE_KEY])
        async with serve(emulator_config, app) as running:
            await body(running)

    async def first(emu: RunningEmulator) -> None:
        emu.add_sprite(NAME)
        await sh(emu, "db", LOOP)
        await sh(emu, "web", LOOP, needs=["db"])
        await sh(emu, "manual", f"echo manual ran >&2; {LOOP}")
        await call(emu, "POST", f"{base(emu)}/manual/stop?timeout=0")

    pids: list[int] = []

    async def second(emu: RunningEmulator) -> None:
        db, web, manual = [await state(emu, s) for s in ("db", "web", "manual")]
        assert db["status"] == web["status"] == "running"
        assert parse_time(db["started_at"]) < parse_time(web["started_at"])
        assert manual["status"] == "stopped"
        pids.extend([db["pid"], web["pid"]])
        # Lines from before the restart come back from the log file (as stdout).
        _, events, _ = await call(emu, "GET", f"{base(emu)}/manual/logs")
        assert [(e["type"], e.get("data")) for e in events[:-1]] == [("stdout", "manual ran")]

    await run(first)
    await run(second)
    assert not any(alive(p) for p in pids)


async def test_no_process_outlives_the_emulator(emulator_config: EmulatorConfig) -> None:
    app = create_app(emulator_config)
    _services.setup(app, app[STATE_KEY])
    async with serve(emulator_config, app) as emu:
        emu.add_sprite(NAME)
        await sh(emu, "web", f"sleep 30 & {LOOP}")
        await sh(emu, "crashy", "exit 1")
        pid = (await state(emu, "web"))["pid"]
        # A follow stream still open when the emulator shuts down.
        task = asyncio.ensure_future(call(emu, "GET", f"{base(emu)}/web/logs?duration=30s"))
        await followed(emu, "web")
    assert not alive(pid)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_dependency_that_cannot_start(emu: RunningEmulator) -> None:
    await sh(emu, "db", LOOP)
    await sh(emu, "web", LOOP, needs=["db"])
    for svc in ("web", "db"):
        await call(emu, "POST", f"{base(emu)}/{svc}/stop?timeout=0")
    status, events, _ = await put(emu, "db", {"cmd": "/nonexistent/db"})
    assert kinds(events) == ["error", "exit", "complete"]
    status, events, _ = await call(emu, "POST", f"{base(emu)}/web/start")
    assert status == 200
    assert kinds(events) == ["error", "exit", "complete"]
    assert events[0]["data"].startswith("Failed to start service: failed to start dependency db:")
    assert (await state(emu, "web"))["status"] == "stopped"


async def test_plain_subprocess_mode(emulator_config: EmulatorConfig) -> None:
    emulator_config.sandbox = "none"
    app = create_app(emulator_config)
    _services.setup(app, app[STATE_KEY])
    async with serve(emulator_config, app) as emu:
        emu.add_sprite(NAME)
        events = await sh(emu, "web", f'echo "$HOME"; {LOOP}')
        assert lines(events) == [str(emu.state.sprite_root(NAME) / "home" / "sprite")]
        await sh(emu, "crashy", "echo once; exit 1", duration="50ms")

        async def restarted() -> bool:
            return (await state(emu, "crashy"))["restart_count"] >= 1

        await wait_for(restarted, what="a crash restart")
        status, events, _ = await call(emu, "POST", f"{base(emu)}/web/stop?timeout=2s")
        assert status == 200
        assert events[-2] == {
            "type": "stopped",
            "exit_code": 143,
            "timestamp": events[-2]["timestamp"],
        }
        log = emu.state.sprite_root(NAME) / ".sprite" / "logs" / "services" / "crashy.log"
        assert log.read_text().count("once\n") >= 2


async def test_http_service_is_started_on_demand(emu: RunningEmulator) -> None:
    assert await _services.http_service_port(emu.state, NAME) is None
    await sh(emu, "other", LOOP)
    await sh(emu, "web", LOOP, http_port=8080)
    await call(emu, "POST", f"{base(emu)}/web/stop?timeout=0")
    assert await _services.http_service_port(emu.state, NAME) == 8080
    assert (await state(emu, "web"))["status"] == "running"


async def test_follow_ends_when_the_client_leaves(emu: RunningEmulator) -> None:
    await sh(emu, "web", f"echo hi; {LOOP}")
    rt = _services.supervisor_for(emu.state).get(NAME, "web")
    resp = await emu.http.get(f"{base(emu)}/web/logs?duration=60s", headers=emu.auth)
    try:
        assert resp.status == 200
        assert json.loads(await resp.content.readline())["data"] == "hi"
        assert rt.subscribers
    finally:
        resp.close()

    async def unsubscribed() -> bool:
        return not rt.subscribers and emu.state.lifecycle.active(NAME) == 0

    await wait_for(unsubscribed, timeout=3.0, what="the follow to notice the client left")


async def test_stop_finishes_after_the_client_left(emu: RunningEmulator) -> None:
    await sh(emu, "web", f'trap "" TERM; {LOOP}')
    pid = (await state(emu, "web"))["pid"]
    resp = await emu.http.post(f"{base(emu)}/web/stop?timeout=300ms", headers=emu.auth)
    try:
        assert json.loads(await resp.content.readline())["type"] == "stopping"
    finally:
        resp.close()

    async def stopped() -> bool:
        return (await state(emu, "web"))["status"] == "stopped"

    await wait_for(stopped, what="the stop to finish")
    assert not alive(pid)


async def test_restore_brings_services_back(emu: RunningEmulator) -> None:
    """A restore restarts the environment: services come back from their definitions."""
    await sh(emu, "keeper", "exec sleep 300")
    before = (await state(emu, "keeper"))["pid"]
    cp_url = f"{emu.url}/v1/sprites/{NAME}"
    for path in ("/checkpoint", "/checkpoints/v1/restore"):
        async with emu.http.post(cp_url + path, headers=emu.auth, json={}) as resp:
            assert resp.status == 200
            lines = (await resp.read()).splitlines()
        assert json.loads(lines[-1])["type"] == "complete", lines

    async def running_again() -> bool:
        st = await state(emu, "keeper")
        return bool(st["status"] == "running" and st.get("pid") not in (None, before))

    await wait_for(running_again, what="the service to run again after the restore")
