"""The official SDK's synchronous client: ``sprites.SpritesClient`` (sprites-py 0.7.2).

Concurrency is what a sync user has: a thread pool with one thread per
concurrent call. Its exec calls run on the SDK's own background event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# See impl_official_async: imported up front, not lazily during a measurement.
import sprites
import sprites.checkpoint
import sprites.control
import sprites.exec
import sprites.loop
import sprites.sprite
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
from .impl_official_async import CountingSink

NAME = "official-sync"


def _client(ctx: Ctx) -> Any:
    return sprites.SpritesClient(ctx.token, base_url=ctx.url, control_mode=ctx.variant == "control")


def _in_threads(workers: int, jobs: list[Callable[[], None]]) -> tuple[float, list[str]]:
    errors: list[str] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = region_start()
        list(pool.map(guarded, jobs))
        wall = region_stop(started)
    return wall, errors


def fleet_reads(ctx: Ctx) -> Metrics:
    """B1: ``concurrency`` threads sharing one client."""
    count, concurrency, fleet = ctx.p("count"), ctx.p("concurrency"), ctx.p("fleet")
    with _client(ctx) as client:

        def get(name: str) -> Callable[[], None]:
            def job() -> None:
                expect(client.get_sprite(name).name == name, "wrong sprite")

            return job

        wall, errors = _in_threads(concurrency, [get(ctx.sprite(i % fleet)) for i in range(count)])
    if errors:
        raise ScenarioFailed(failures(errors, count, wall))
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


def list_all(ctx: Ctx) -> Metrics:
    """B2: ``list_sprites`` page after page."""
    with _client(ctx) as client:
        started = region_start()
        items = pages = 0
        token: str | None = None
        while True:
            page = client.list_sprites(
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


def exec_latency(ctx: Ctx) -> Metrics:
    """B3."""
    count = ctx.p("count")
    samples: list[float] = []
    with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = region_start()
        for _ in range(count):
            t0 = time.perf_counter()
            out = sprite.command("echo", "hi").output()
            samples.append(time.perf_counter() - t0)
            expect(out == b"hi\n", f"echo hi gave {out!r}")
        wall = region_stop(started)
    return latency_metrics(samples, wall)


def _fan_out(ctx: Ctx, names: list[str], concurrency: int = 0) -> Metrics:
    with _client(ctx) as client:

        def run(name: str) -> Callable[[], None]:
            def job() -> None:
                out = client.sprite(name).command("echo", "hi").output()
                expect(out == b"hi\n", f"echo hi gave {out!r}")

            return job

        wall, errors = _in_threads(concurrency or len(names), [run(n) for n in names])
    if errors:
        raise ScenarioFailed(failures(errors, len(names), wall))
    return {"wall": wall, "completed": float(len(names))}


def fan_out(ctx: Ctx) -> Metrics:
    """B4: one thread per concurrent exec."""
    return _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


def contention(ctx: Ctx) -> Metrics:
    """B4s."""
    return _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


def fleet_fan_out(ctx: Ctx) -> Metrics:
    """B8: a pool of ``concurrency`` threads."""
    names = [ctx.sprite(i) for i in range(ctx.p("sprites"))]
    return _fan_out(ctx, names, ctx.p("concurrency"))


def stream_throughput(ctx: Ctx) -> Metrics:
    """B5."""
    size = ctx.p("bytes")
    sink = CountingSink()
    with _client(ctx) as client:
        argv = ("head", "-c", str(size), "/dev/zero")
        cmd = client.sprite(ctx.sprite(0)).command(*argv, stdout=sink)
        started = region_start()
        cmd.run()
        wall = region_stop(started)
    expect(sink.size == size, f"got {sink.size} bytes")
    return {"wall": wall, "mbps": size / wall / 1e6, "bytes": float(sink.size)}


def progress_stream(ctx: Ctx) -> Metrics:
    """B6: ``create_checkpoint`` reads the whole body, then iterates."""
    name = STREAM_SPRITE.format(chunk=ctx.variant[1:])
    events = 0
    first: float | None = None
    last_type = ""
    with _client(ctx) as client:
        sprite = client.sprite(name)
        started = region_start()
        for message in sprite.create_checkpoint():
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
