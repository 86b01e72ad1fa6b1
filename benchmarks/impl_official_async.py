"""The official SDK's asyncio client: ``sprites.AsyncSpritesClient`` (sprites-py 0.7.2).

Used the way its README shows: ``client.get_sprite``, ``client.list_sprites``
page by page, ``sprite.command(...).output()`` / ``.run()``, and
``sprite.create_checkpoint()``. ``control_mode=True`` selects its pooled
control sockets for the ``control`` variants.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

# Imported up front (the SDK imports them lazily on first use), so that the
# import is billed neither to the first measured call nor to RSS growth. An
# ImportError here tells the worker that sprites-py is not installed.
import sprites
import sprites.async_exec
import sprites.async_sprite
import sprites.control
import sprites.websocket

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
    region_start,
    region_stop,
)

NAME = "official-async"


def _client(ctx: Ctx) -> Any:
    control = ctx.variant == "control"
    return sprites.AsyncSpritesClient(ctx.token, base_url=ctx.url, control_mode=control)


class CountingSink:
    """A binary "file" that only counts what is written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        return None


async def fleet_reads(ctx: Ctx) -> Metrics:
    """B1."""
    count, concurrency, fleet = ctx.p("count"), ctx.p("concurrency"), ctx.p("fleet")
    async with _client(ctx) as client:

        async def worker(first: int) -> None:
            for i in range(first, count, concurrency):
                name = ctx.sprite(i % fleet)
                sprite = await client.get_sprite(name)
                expect(sprite.name == name, "wrong sprite")

        started = region_start()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = region_stop(started)
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


async def list_all(ctx: Ctx) -> Metrics:
    """B2: ``list_sprites`` page after page (what ``list_all_sprites`` does, keeping
    the rich entries that ``list_all_sprites`` throws away)."""
    async with _client(ctx) as client:
        started = region_start()
        items = pages = 0
        token: str | None = None
        while True:
            page = await client.list_sprites(
                sprites.ListOptions(prefix=SPRITE_PREFIX, max_results=50, continuation_token=token)
            )
            pages += 1
            items += len(page.sprites)
            if not page.has_more:
                break
            token = page.next_continuation_token
            if pages > 10 * ctx.p("fleet"):
                raise ScenarioFailed("pagination does not end")
        wall = region_stop(started)
    expect(items == ctx.p("fleet"), f"listed {items} sprites, expected {ctx.p('fleet')}")
    return {"wall": wall, "items": float(items), "pages": float(pages)}


async def exec_latency(ctx: Ctx) -> Metrics:
    """B3."""
    count = ctx.p("count")
    samples: list[float] = []
    async with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = region_start()
        for _ in range(count):
            t0 = time.perf_counter()
            out = await sprite.command("echo", "hi").output()
            samples.append(time.perf_counter() - t0)
            expect(out == b"hi\n", f"echo hi gave {out!r}")
        wall = region_stop(started)
    return latency_metrics(samples, wall)


async def _fan_out(ctx: Ctx, names: list[str], concurrency: int = 0) -> Metrics:
    errors: list[str] = []
    completed = 0
    slots = asyncio.Semaphore(concurrency or len(names))
    async with _client(ctx) as client:

        async def one(name: str) -> None:
            nonlocal completed
            try:
                async with slots:
                    out = await client.sprite(name).command("echo", "hi").output()
                expect(out == b"hi\n", f"{name}: echo hi gave {out!r}")
                completed += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        started = region_start()
        await asyncio.gather(*(one(n) for n in names))
        wall = region_stop(started)
    if errors:
        raise ScenarioFailed(failures(errors, len(names), wall))
    return {"wall": wall, "completed": float(completed)}


async def fan_out(ctx: Ctx) -> Metrics:
    """B4."""
    return await _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


async def contention(ctx: Ctx) -> Metrics:
    """B4s."""
    return await _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


async def fleet_fan_out(ctx: Ctx) -> Metrics:
    """B8: ``gather`` behind a semaphore (sprites-py has no fleet helper)."""
    names = [ctx.sprite(i) for i in range(ctx.p("sprites"))]
    return await _fan_out(ctx, names, ctx.p("concurrency"))


async def stream_throughput(ctx: Ctx) -> Metrics:
    """B5: stdout goes to a counting sink as frames arrive (the SDK also keeps
    its own copy of everything, which shows in peak RSS)."""
    size = ctx.p("bytes")
    sink = CountingSink()
    async with _client(ctx) as client:
        argv = ("head", "-c", str(size), "/dev/zero")
        cmd = client.sprite(ctx.sprite(0)).command(*argv, stdout=sink)
        started = region_start()
        await cmd.run()
        wall = region_stop(started)
    expect(sink.size == size, f"got {sink.size} bytes")
    return {"wall": wall, "mbps": size / wall / 1e6, "bytes": float(sink.size)}


async def progress_stream(ctx: Ctx) -> Metrics:
    """B6: ``create_checkpoint`` returns once the whole body is read."""
    name = STREAM_SPRITE.format(chunk=ctx.variant[1:])
    events = 0
    first: float | None = None
    last_type = ""
    async with _client(ctx) as client:
        sprite = client.sprite(name)
        started = region_start()
        for message in await sprite.create_checkpoint():
            if first is None:
                first = time.perf_counter() - started
            events += 1
            last_type = message.type
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
    "B8": fleet_fan_out,
}


def unsupported(scenario: str, variant: str) -> str | None:
    """Why this implementation cannot run a scenario (None: it can)."""
    return None
