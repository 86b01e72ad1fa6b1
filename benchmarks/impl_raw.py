"""The raw transport: the floor, a hand-written aiohttp + msgspec client per scenario.

What a careful engineer would write by hand for each scenario, and nothing
more: no SDK layers, no retries, no error mapping, no timers (no total or
read timeout: ``ClientTimeout(total=None)``, so aiohttp arms no timer per
request), no connector cap (``limit=0``; a scenario's own concurrency is the
only bound), a WebSocket closed the way the SDK closes it (our close frame
out, the connection dropped, the server's reply never awaited), pooled
``/control`` sockets kept open past the timed region exactly where the
SDK's pool keeps them, and JSON decoded by msgspec into bare Structs with
the same fields and types as the SDK's models (datetimes included), so both
sides deliver the same information. ``benchmarks/README.md`` says why this is
a floor.
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
    leftovers,
    open_sockets,
    raise_fd_limit,
    region_start,
    region_stop,
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


class RawEnvelope(msgspec.Struct):
    type: str
    args: dict[str, Any] = {}


sprite_decoder = msgspec.json.Decoder(RawSprite)
envelope_decoder = msgspec.json.Decoder(RawEnvelope)
page_decoder = msgspec.json.Decoder(RawPage)
event_decoder = msgspec.json.Decoder(RawEvent)
_encode = msgspec.json.encode


NO_TIMERS = aiohttp.ClientTimeout(total=None)
"""aiohttp's default is ``total=300, sock_connect=30``: a timer per request."""
CLOSE_AND_GO = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0)
"""``ws.close()`` sends the close frame and drops the connection at its first
wait instead of waiting for the server's reply, as the SDK does (protocol
reference section 12 item 11); aiohttp's default waits up to 10 s for it."""


def _session(ctx: Ctx) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {ctx.token}"},
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=NO_TIMERS,
    )


async def _ws(
    session: aiohttp.ClientSession, url: str, params: Any = None
) -> aiohttp.ClientWebSocketResponse[bool]:
    return await session.ws_connect(
        url, params=params, max_msg_size=0, autoclose=False, autoping=False, timeout=CLOSE_AND_GO
    )


# ----------------------------------------------------------------- REST


async def fleet_reads(ctx: Ctx) -> Metrics:
    """B1: ``count`` GET /v1/sprites/{name} with ``concurrency`` workers."""
    count, concurrency, fleet = ctx.p("count"), ctx.p("concurrency"), ctx.p("fleet")
    async with _session(ctx) as session:
        base = ctx.url + "/v1/sprites/"

        async def worker(first: int) -> None:
            for i in range(first, count, concurrency):
                name = ctx.sprite(i % fleet)
                async with session.get(base + name) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise ScenarioFailed(f"GET {name}: {resp.status}")
                expect(sprite_decoder.decode(body).name == name, "wrong sprite")

        started = region_start()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = region_stop(started)
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


async def list_all(ctx: Ctx) -> Metrics:
    """B2: walk every seeded sprite, 50 per page."""
    async with _session(ctx) as session:
        started = region_start()
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
        wall = region_stop(started)
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
    ws = await _ws(session, url, _exec_params(argv))
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
        return cls(await _ws(session, url))

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
                    env = envelope_decoder.decode(text[8:])
                    if env.type == "op.complete":
                        if code is None:
                            code = int(env.args.get("exitCode", -1))
                        return code, b"".join(out)
                    if env.type == "op.error":
                        raise ScenarioFailed(f"op.error: {env.args}")
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
        started = region_start()
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
        wall = region_stop(started)
        if control is not None:
            await control.close()
    return latency_metrics(samples, wall)


async def _one_exec(
    session: aiohttp.ClientSession, ctx: Ctx, sprite: str, kept: list[ControlSocket]
) -> tuple[int, bytes]:
    if ctx.variant == "control":
        # The SDK's pool keeps the socket for the sprite's next command and
        # closes it when the client closes: so does this, after the timed region.
        control = await ControlSocket.open(session, ctx, sprite)
        kept.append(control)
        return await control.run(["echo", "hi"])
    code, _, out = await exec_direct(session, ctx, sprite, ["echo", "hi"])
    return code, out


async def _fan_out(ctx: Ctx, sprites: list[str], concurrency: int = 0) -> Metrics:
    """``echo hi`` on each of ``sprites``: all at once, or ``concurrency`` at a time."""
    results: dict[int, tuple[int, bytes]] = {}
    errors: list[str] = []
    kept: list[ControlSocket] = []
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    async with _session(ctx) as session:

        async def one(i: int, sprite: str) -> None:
            try:
                if slots is None:
                    results[i] = await _one_exec(session, ctx, sprite, kept)
                else:
                    async with slots:
                        results[i] = await _one_exec(session, ctx, sprite, kept)
            except Exception as exc:
                errors.append(f"{sprite}: {type(exc).__name__}: {exc}")

        started = region_start()
        await asyncio.gather(*(one(i, s) for i, s in enumerate(sprites)))
        wall = region_stop(started)
        for control in kept:
            await control.close()
    if errors:
        raise ScenarioFailed(failures(errors, len(sprites), wall))
    bad = [(sprites[i], r) for i, r in sorted(results.items()) if r != (0, b"hi\n")]
    expect(not bad and len(results) == len(sprites), f"wrong results: {bad[:3]}")
    return {"wall": wall, "completed": float(len(results))}


async def fan_out(ctx: Ctx) -> Metrics:
    """B4: one ``echo hi`` on each of ``count`` sprites, all at once."""
    return await _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


async def contention(ctx: Ctx) -> Metrics:
    """B4s: ``count`` concurrent ``echo hi`` on one sprite."""
    return await _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


async def fleet_fan_out(ctx: Ctx) -> Metrics:
    """B8: one ``echo hi`` on each of ``sprites`` sprites, ``concurrency`` at a time:
    ``asyncio.gather`` behind a semaphore, results checked per sprite."""
    names = [ctx.sprite(i) for i in range(ctx.p("sprites"))]
    return await _fan_out(ctx, names, ctx.p("concurrency"))


async def live_sessions(ctx: Ctx) -> Metrics:
    """B7: ``sessions`` live ``cat`` sessions over ``/exec`` with stdin, all open at once.

    Each is opened (all of them before any is fed), fed one line of its own,
    read until that line is back, then sent stdin EOF and read to its exit
    frame. Afterwards no socket and no task may be left.
    """
    count, spread = ctx.p("sessions"), ctx.p("sprites")
    raise_fd_limit(count + 1024)
    sockets_before = open_sockets()
    codes: dict[int, int] = {}
    errors: list[str] = []
    opened_at: list[float] = []
    all_open = asyncio.Event()
    settled = 0
    async with _session(ctx) as session:
        base = f"{ctx.url}/v1/sprites/"

        def settle() -> None:
            nonlocal settled
            settled += 1
            if settled == count:
                opened_at.append(time.perf_counter())
                all_open.set()

        async def one(i: int) -> None:
            url = base + ctx.sprite(i % spread) + "/exec"
            line = b"line %d\n" % i
            try:
                ws = await _ws(session, url, [("cmd", "cat"), ("path", "cat"), ("stdin", "true")])
            except Exception as exc:
                errors.append(f"open {i}: {type(exc).__name__}: {exc}")
                settle()
                return
            settle()
            try:
                await all_open.wait()
                await ws.send_bytes(b"\x00" + line)
                out = b""
                code: int | None = None
                while code is None:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.BINARY:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            continue
                        raise ScenarioFailed(f"session {i} ended early ({msg.type.name})")
                    data: bytes = msg.data
                    if data[0] == 1:
                        out += data[1:]
                        if out == line:
                            await ws.send_bytes(b"\x04")  # stdin EOF: cat exits
                    elif data[0] == 3:
                        code = data[1]
                expect(out == line, f"session {i} read {out!r}")
                codes[i] = code
            except Exception as exc:
                errors.append(f"session {i}: {type(exc).__name__}: {exc}")
            finally:
                await ws.close()

        started = region_start()
        await asyncio.gather(*(one(i) for i in range(count)))
        wall = region_stop(started)
    open_s = opened_at[0] - started if opened_at else wall
    if errors:
        raise ScenarioFailed(failures(errors, count, wall))
    expect(len(codes) == count and set(codes.values()) == {0}, "wrong exit codes")
    return {
        "wall": wall,
        "open_s": open_s,
        "completed": float(len(codes)),
        **await leftovers(sockets_before),
    }


async def stream_throughput(ctx: Ctx) -> Metrics:
    """B5: ``head -c N /dev/zero``, stdout consumed as it arrives."""
    size = ctx.p("bytes")
    argv = ["head", "-c", str(size), "/dev/zero"]
    async with _session(ctx) as session:
        started = region_start()
        code, got, _ = await exec_direct(session, ctx, ctx.sprite(0), argv, keep=False)
        wall = region_stop(started)
    expect(code == 0 and got == size, f"got {got} bytes, exit {code}")
    return {"wall": wall, "mbps": size / wall / 1e6, "bytes": float(got)}


async def progress_stream(ctx: Ctx) -> Metrics:
    """B6: a checkpoint's NDJSON progress stream, decoded event by event."""
    url = f"{ctx.url}/v1/sprites/{STREAM_SPRITE.format(chunk=ctx.variant[1:])}/checkpoint"
    events = 0
    first: float | None = None
    last_type = ""
    async with _session(ctx) as session:
        started = region_start()
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
        wall = region_stop(started)
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
    "B7": live_sessions,
    "B8": fleet_fan_out,
}


def unsupported(scenario: str, variant: str) -> str | None:
    """Why this implementation cannot run a scenario (None: it can)."""
    return None
