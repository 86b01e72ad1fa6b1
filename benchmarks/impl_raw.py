"""The raw transport: a bare aiohttp session or WebSocket doing the same wire work.

This is the physical limit of a Python client on this stack: no SDK layers,
no retries, no error mapping; JSON is decoded by msgspec into bare Structs
with the same fields and types as the SDK's models (datetimes included), so
both sides deliver the same information.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
import msgspec

from ._common import (
    CONTENTION_SPRITE,
    SPRITE_PREFIX,
    STREAM_SPRITE,
    Ctx,
    Metrics,
    Scenario,
    ScenarioFailed,
    expect,
    failures,
    latency_metrics,
)

NAME = "raw"


class RawURLSettings(msgspec.Struct):
    auth: str | None = None
    private_access: str | None = None


class RawSprite(msgspec.Struct):
    name: str
    id: str | None = None
    organization: str | None = None
    status: str | None = None
    url: str | None = None
    url_settings: RawURLSettings | None = None
    labels: list[str] = []
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: str | None = None
    environment_version: str | None = None
    last_running_at: datetime | None = None
    last_warming_at: datetime | None = None


class RawPage(msgspec.Struct):
    sprites: list[RawSprite] = []
    has_more: bool = False
    next_continuation_token: str | None = None
    name: str | None = None
    running: int | None = None
    warm: int | None = None
    cold: int | None = None
    running_limit: int | None = None
    warm_limit: int | None = None


class RawEvent(msgspec.Struct):
    type: str
    data: str | None = None
    error: str | None = None
    time: str | None = None


sprite_decoder = msgspec.json.Decoder(RawSprite)
page_decoder = msgspec.json.Decoder(RawPage)
event_decoder = msgspec.json.Decoder(RawEvent)
_encode = msgspec.json.encode


def _session(ctx: Ctx, limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {ctx.token}"},
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


# ----------------------------------------------------------------- REST


async def fleet_reads(ctx: Ctx) -> Metrics:
    """B1: ``count`` GET /v1/sprites/{name} with ``concurrency`` workers."""
    count, concurrency, fleet = ctx.p("count"), ctx.p("concurrency"), ctx.p("fleet")
    async with _session(ctx, concurrency) as session:
        base = ctx.url + "/v1/sprites/"

        async def worker(first: int) -> None:
            for i in range(first, count, concurrency):
                name = ctx.sprite(i % fleet)
                async with session.get(base + name) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise ScenarioFailed(f"GET {name}: {resp.status}")
                expect(sprite_decoder.decode(body).name == name, "wrong sprite")

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


async def list_all(ctx: Ctx) -> Metrics:
    """B2: walk every seeded sprite, 50 per page."""
    async with _session(ctx) as session:
        started = time.perf_counter()
        items = pages = 0
        token: str | None = None
        while True:
            params = {"max_results": "50", "prefix": SPRITE_PREFIX}
            if token is not None:
                params["continuation_token"] = token
            async with session.get(ctx.url + "/v1/sprites", params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ScenarioFailed(f"list: {resp.status}")
            page = page_decoder.decode(body)
            pages += 1
            items += len(page.sprites)
            token = page.next_continuation_token
            if not (page.has_more and token):
                break
        wall = time.perf_counter() - started
    expect(items == ctx.p("fleet"), f"listed {items} sprites, expected {ctx.p('fleet')}")
    return {"wall": wall, "items": float(items), "pages": float(pages)}


# ----------------------------------------------------------------- exec


def _exec_params(argv: list[str]) -> list[tuple[str, str]]:
    return [*(("cmd", a) for a in argv), ("path", argv[0])]


async def exec_direct(
    session: aiohttp.ClientSession, ctx: Ctx, sprite: str, argv: list[str], *, keep: bool = True
) -> tuple[int, int, bytes]:
    """One command over ``/exec``: returns (exit code, stdout bytes, stdout if kept)."""
    url = f"{ctx.url}/v1/sprites/{sprite}/exec"
    ws = await session.ws_connect(url, params=_exec_params(argv), max_msg_size=0, autoclose=False)
    out: list[bytes] = []
    size = 0
    try:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                if data[0] == 1:
                    size += len(data) - 1
                    if keep:
                        out.append(data[1:])
                elif data[0] == 3:
                    return data[1], size, b"".join(out)
            elif msg.type is not aiohttp.WSMsgType.TEXT:
                raise ScenarioFailed(f"exec socket ended before the exit ({msg.type.name})")
    finally:
        await ws.close()


class ControlSocket:
    """One ``/control`` WebSocket running one op at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, ctx: Ctx, sprite: str) -> ControlSocket:
        url = f"{ctx.url}/v1/sprites/{sprite}/control"
        return cls(await session.ws_connect(url, max_msg_size=0, autoclose=False))

    async def run(self, argv: list[str]) -> tuple[int, bytes]:
        """Run one exec op; returns (exit code, stdout)."""
        start = {
            "type": "op.start",
            "op": "exec",
            "args": {"cmd": argv, "path": argv[0], "stdin": "false"},
        }
        await self.ws.send_str("control:" + _encode(start).decode())
        out: list[bytes] = []
        code: int | None = None
        while True:
            msg = await self.ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                if data[0] == 1:
                    out.append(data[1:])
                elif data[0] == 3:
                    code = data[1]
            elif msg.type is aiohttp.WSMsgType.TEXT:
                text: str = msg.data
                if text.startswith("control:"):
                    env: dict[str, Any] = msgspec.json.decode(text[8:])
                    if env.get("type") == "op.complete":
                        if code is None:
                            code = int(env.get("args", {}).get("exitCode", -1))
                        return code, b"".join(out)
                    if env.get("type") == "op.error":
                        raise ScenarioFailed(f"op.error: {env.get('args')}")
            else:
                raise ScenarioFailed(f"control socket ended mid-op ({msg.type.name})")

    async def close(self) -> None:
        await self.ws.close()


async def exec_latency(ctx: Ctx) -> Metrics:
    """B3: ``count`` sequential ``echo hi``, direct or over one control socket."""
    count = ctx.p("count")
    sprite = ctx.sprite(0)
    samples: list[float] = []
    async with _session(ctx) as session:
        control: ControlSocket | None = None
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            if ctx.variant == "control":
                if control is None:
                    control = await ControlSocket.open(session, ctx, sprite)
                code, out = await control.run(["echo", "hi"])
            else:
                code, _, out = await exec_direct(session, ctx, sprite, ["echo", "hi"])
            samples.append(time.perf_counter() - t0)
            expect(code == 0 and out == b"hi\n", f"echo hi gave {code} {out!r}")
        wall = time.perf_counter() - started
        if control is not None:
            await control.close()
    return latency_metrics(samples, wall)


async def _one_exec(session: aiohttp.ClientSession, ctx: Ctx, sprite: str) -> None:
    if ctx.variant == "control":
        control = await ControlSocket.open(session, ctx, sprite)
        try:
            code, out = await control.run(["echo", "hi"])
        finally:
            await control.close()
    else:
        code, _, out = await exec_direct(session, ctx, sprite, ["echo", "hi"])
    expect(code == 0 and out == b"hi\n", f"echo hi gave {code} {out!r}")


async def _fan_out(ctx: Ctx, sprites: list[str]) -> Metrics:
    completed = 0
    errors: list[str] = []
    async with _session(ctx, len(sprites)) as session:

        async def one(sprite: str) -> None:
            nonlocal completed
            try:
                await _one_exec(session, ctx, sprite)
                completed += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(one(s) for s in sprites))
        wall = time.perf_counter() - started
    if errors:
        raise ScenarioFailed(failures(errors, len(sprites), wall))
    return {"wall": wall, "completed": float(completed)}


async def fan_out(ctx: Ctx) -> Metrics:
    """B4: one ``echo hi`` on each of ``count`` sprites, all at once."""
    return await _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


async def contention(ctx: Ctx) -> Metrics:
    """B4s: ``count`` concurrent ``echo hi`` on one sprite."""
    return await _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


async def stream_throughput(ctx: Ctx) -> Metrics:
    """B5: ``head -c N /dev/zero``, stdout consumed as it arrives."""
    size = ctx.p("bytes")
    argv = ["head", "-c", str(size), "/dev/zero"]
    async with _session(ctx) as session:
        started = time.perf_counter()
        code, got, _ = await exec_direct(session, ctx, ctx.sprite(0), argv, keep=False)
        wall = time.perf_counter() - started
    expect(code == 0 and got == size, f"got {got} bytes, exit {code}")
    return {"wall": wall, "mbps": size / wall / 1e6, "bytes": float(got)}


async def progress_stream(ctx: Ctx) -> Metrics:
    """B6: a checkpoint's NDJSON progress stream, decoded event by event."""
    url = f"{ctx.url}/v1/sprites/{STREAM_SPRITE.format(chunk=ctx.variant[1:])}/checkpoint"
    events = 0
    first: float | None = None
    last_type = ""
    async with _session(ctx) as session:
        started = time.perf_counter()
        async with session.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                raise ScenarioFailed(f"checkpoint: {r.status}")
            tail = b""
            async for chunk in r.content.iter_any():
                buf = tail + chunk
                cut = buf.rfind(b"\n") + 1
                tail = buf[cut:]
                if not cut:
                    continue
                batch = event_decoder.decode_lines(buf[:cut])
                if batch and first is None:
                    first = time.perf_counter() - started
                # The consumer touches every event, as a caller of any SDK's
                # event iterator does (and as impl_ours.py's loop does).
                for event in batch:
                    events += 1
                    last_type = event.type
        wall = time.perf_counter() - started
    expect(events == ctx.p("events") and last_type == "complete", f"{events} events")
    return {
        "wall": wall,
        "eps": events / wall,
        "ttfe_ms": (first or wall) * 1000,
        "events": float(events),
    }


SCENARIOS: dict[str, Scenario] = {
    "B1": fleet_reads,
    "B2": list_all,
    "B3": exec_latency,
    "B4": fan_out,
    "B4s": contention,
    "B5": stream_throughput,
    "B6": progress_stream,
}


def unsupported(scenario: str, variant: str) -> str | None:
    """Why this implementation cannot run a scenario (None: it can)."""
    return None
