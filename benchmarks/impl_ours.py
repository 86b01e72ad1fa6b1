"""sprites-async, used the way its README shows."""

from __future__ import annotations

import asyncio
import time

# _checkpoints, _control and _exec are imported up front (the SDK imports them
# lazily on first use), so that the import is billed neither to the first
# measured call nor to RSS growth.
from sprites_async import SpritesClient, _checkpoints, _control, _exec  # noqa: F401
from sprites_async.fleet import exec_many

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

        started = region_start()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = region_stop(started)
    return {"wall": wall, "rps": count / wall, "completed": float(count)}


async def list_all(ctx: Ctx) -> Metrics:
    """B2: ``async for`` over ``client.sprites.list()``."""
    async with _client(ctx) as client:
        started = region_start()
        items = 0
        pages = 0
        async for page in client.sprites.list(prefix=SPRITE_PREFIX).pages():
            pages += 1
            items += len(page.sprites)
        wall = region_stop(started)
    expect(items == ctx.p("fleet"), f"listed {items} sprites, expected {ctx.p('fleet')}")
    return {"wall": wall, "items": float(items), "pages": float(pages)}


async def exec_latency(ctx: Ctx) -> Metrics:
    """B3: ``await sprite.exec("echo", "hi")``, one after the other."""
    count = ctx.p("count")
    samples: list[float] = []
    async with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = region_start()
        for _ in range(count):
            t0 = time.perf_counter()
            result = await sprite.exec("echo", "hi")
            samples.append(time.perf_counter() - t0)
            expect(result.exit_code == 0 and result.stdout == b"hi\n", f"echo hi: {result}")
        wall = region_stop(started)
    return latency_metrics(samples, wall)


async def _fan_out(ctx: Ctx, names: list[str]) -> Metrics:
    errors: list[str] = []
    results: dict[int, tuple[int | None, bytes]] = {}
    async with _client(ctx) as client:

        async def one(i: int, name: str) -> None:
            try:
                result = await client.sprite(name).exec("echo", "hi")
                results[i] = (result.exit_code, result.stdout)
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")

        started = region_start()
        await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
        wall = region_stop(started)
    if errors:
        raise ScenarioFailed(failures(errors, len(names), wall))
    bad = [(names[i], r) for i, r in sorted(results.items()) if r != (0, b"hi\n")]
    expect(not bad and len(results) == len(names), f"wrong results: {bad[:3]}")
    return {"wall": wall, "completed": float(len(results))}


async def fan_out(ctx: Ctx) -> Metrics:
    """B4: ``sprite.exec`` on ``count`` sprites from one ``gather``."""
    return await _fan_out(ctx, [ctx.sprite(i) for i in range(ctx.p("count"))])


async def contention(ctx: Ctx) -> Metrics:
    """B4s: ``count`` concurrent ``sprite.exec`` on one sprite."""
    return await _fan_out(ctx, [CONTENTION_SPRITE] * ctx.p("count"))


async def fleet_fan_out(ctx: Ctx) -> Metrics:
    """B8: ``exec_many(names, "echo", "hi", concurrency=...)``, every outcome checked."""
    names = [ctx.sprite(i) for i in range(ctx.p("sprites"))]
    async with _client(ctx) as client:
        started = region_start()
        result = await exec_many(
            names, "echo", "hi", client=client, concurrency=ctx.p("concurrency")
        )
        wall = region_stop(started)
    failed = [f"{o.sprite}: {o.describe()}" for o in result if not o.ok]
    if failed:
        raise ScenarioFailed(failures(failed, len(names), wall))
    values = result.values
    bad = [n for n in names if (values[n].exit_code, values[n].stdout) != (0, b"hi\n")]
    expect(not bad and len(values) == len(names), f"wrong results on {bad[:3]}")
    return {"wall": wall, "completed": float(len(values))}


async def live_sessions(ctx: Ctx) -> Metrics:
    """B7: ``sessions`` live ``sprite.process("cat")`` sessions, all open at once.

    Each is opened (all of them before any is fed), fed one line of its own
    with ``proc.write``, read from ``proc.stdout`` until that line is back,
    then ``close_stdin()`` and ``wait()``. Afterwards no socket and no task
    may be left.
    """
    count, spread = ctx.p("sessions"), ctx.p("sprites")
    raise_fd_limit(count + 1024)
    sockets_before = open_sockets()
    codes: dict[int, int] = {}
    errors: list[str] = []
    opened_at: list[float] = []
    all_open = asyncio.Event()
    settled = 0
    async with _client(ctx) as client:

        def settle() -> None:
            nonlocal settled
            settled += 1
            if settled == count:
                opened_at.append(time.perf_counter())
                all_open.set()

        async def one(i: int) -> None:
            sprite = client.sprite(ctx.sprite(i % spread))
            line = b"line %d\n" % i
            opened = False
            try:
                async with sprite.process("cat") as proc:
                    opened = True
                    settle()
                    await all_open.wait()
                    await proc.write(line)
                    out = b""
                    async for chunk in proc.stdout:
                        out += chunk
                        if len(out) >= len(line):
                            break
                    expect(out == line, f"session {i} read {out!r}")
                    await proc.close_stdin()
                    codes[i] = await proc.wait()
            except Exception as exc:
                errors.append(f"session {i}: {type(exc).__name__}: {exc}")
            finally:
                if not opened:
                    settle()

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
    """B5: ``sprite.process(...)`` and ``async for chunk in proc.stdout``."""
    size = ctx.p("bytes")
    got = 0
    async with _client(ctx) as client:
        sprite = client.sprite(ctx.sprite(0))
        started = region_start()
        async with sprite.process("head", "-c", str(size), "/dev/zero", stdin=False) as proc:
            async for chunk in proc.stdout:
                got += len(chunk)
            code = await proc.wait()
        wall = region_stop(started)
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
        started = region_start()
        async with sprite.checkpoints.create() as operation:
            async for event in operation:
                if first is None:
                    first = time.perf_counter() - started
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
