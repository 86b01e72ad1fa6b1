"""sprites-async, used the way its README shows."""

from __future__ import annotations

import asyncio
import time

# _checkpoints, _control and _exec are imported up front (the SDK imports them
# lazily on first use), so that the import is billed neither to the first
# measured call nor to RSS growth.
from sprites_async import SpritesClient, _checkpoints, _control, _exec  # noqa: F401

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

NAME = "sprites-async"


def _client(ctx: Ctx) -> SpritesClient:
    if ctx.variant in ("direct", "control"):
        # ``control`` switches the pooled /control sockets on (the default) or off.
        return SpritesClient(ctx.token, base_url=ctx.url, control=ctx.variant == "control")
    return SpritesClient(ctx.token, base_url=ctx.url)


async def fleet_reads(ctx: Ctx) -> Metrics:
    """B1: ``client.sprites.get`` from ``concurrency`` tasks."""
    count, concurrency, fleet = ctx.p("count"), ctx.p("concurrency"), ctx.p("fleet")
    async with _client(ctx) as client:
        sprites = client.sprites

        async def worker(first: int) -> None:
            for i in range(first, count, concurrency):
                name = ctx.sprite(i % fleet)
                expect((await sprites.get(name)).name == name, "wrong sprite")

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


async def list_all(ctx: Ctx) -> Metrics:
    """B2: ``async for`` over ``client.sprites.list()``."""
    async with _client(ctx) as client:
        started = time.perf_counter()
        items = 0
        pages = 0
        async for page in client.sprites.list(prefix=SPRITE_PREFIX).pages():
            pages += 1
            items += len(page.sprites)
        wall = time.perf_counter() - started
    expect(items == ctx.p("fleet"), f"listed {items} sprites, expected {ctx.p('fleet')}")
    return {"wall": wall, "items": float(items), "pages": float(pages)}


async def exec_latency(ctx: Ctx) -> Metrics:
    """B3: ``await sprite.exec("echo", "hi")``, one after the other."""
    count = ctx.p("count")
    samples: list[float] = []
    async with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            result = await sprite.exec("echo", "hi")
            samples.append(time.perf_counter() - t0)
            expect(result.exit_code == 0 and result.stdout == b"hi\n", f"echo hi: {result}")
        wall = time.perf_counter() - started
    return latency_metrics(samples, wall)


async def _fan_out(ctx: Ctx, names: list[str]) -> Metrics:
    errors: list[str] = []
    completed = 0
    async with _client(ctx) as client:

        async def one(name: str) -> None:
            nonlocal completed
            try:
                result = await client.sprite(name).exec("echo", "hi")
                expect(result.exit_code == 0 and result.stdout == b"hi\n", f"echo hi: {result}")
                completed += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in names))
        wall = time.perf_counter() - started
    if errors:
        raise ScenarioFailed(failures(errors, len(names), wall))
    return {"wall": wall, "completed": float(completed)}


async def fan_out(ctx: Ctx) -> Metrics:
    """B4: ``sprite.exec`` on ``count`` sprites from one ``gather``."""
    return await _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


async def contention(ctx: Ctx) -> Metrics:
    """B4s: ``count`` concurrent ``sprite.exec`` on one sprite."""
    return await _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


async def stream_throughput(ctx: Ctx) -> Metrics:
    """B5: ``sprite.process(...)`` and ``async for chunk in proc.stdout``."""
    size = ctx.p("bytes")
    got = 0
    async with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = time.perf_counter()
        async with sprite.process("head", "-c", str(size), "/dev/zero", stdin=False) as proc:
            async for chunk in proc.stdout:
                got += len(chunk)
            code = await proc.wait()
        wall = time.perf_counter() - started
    expect(code == 0 and got == size, f"got {got} bytes, exit {code}")
    return {"wall": wall, "mbps": size / wall / 1e6, "bytes": float(got)}


async def progress_stream(ctx: Ctx) -> Metrics:
    """B6: ``async for event in sprite.checkpoints.create()``."""
    name = STREAM_SPRITE.format(chunk=ctx.variant[1:])
    events = 0
    first: float | None = None
    last_type = ""
    async with _client(ctx) as client:
        sprite = client.sprite(name)
        started = time.perf_counter()
        async with sprite.checkpoints.create() as operation:
            async for event in operation:
                if first is None:
                    first = time.perf_counter() - started
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
