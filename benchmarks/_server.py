"""The benchmark server: the emulator with its inline executor, in its own process.

``python -m benchmarks._server --seed N`` serves on 127.0.0.1 (a free port)
and prints one JSON line ``{"url", "token", "pid"}`` once it is ready. It is
the emulator's own application (``create_app``) with three additions:

* the seeded sprites are made *rich* (two labels, a version, last-running
  time), so list pages carry every field the April-2026 shape has;
* ``POST /v1/sprites/ndjson-c{K}/checkpoint`` streams ``--events`` checkpoint
  progress events (``info`` lines, then one ``complete``), ``K`` events per
  write, for B6; the emulator's own checkpoint stream has only a few lines;
* it stops by itself when its parent process goes away, so an interrupted
  run never leaves a server behind.

Exec sockets linger ``--exit-linger`` seconds (default 5, as the real service
does) after the exit frame unless the client closes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web

from sprites_async.emulator import EmulatorConfig, create_app, default_token
from sprites_async.emulator._sprites import insert_sprite, new_record, seed_sprites
from sprites_async.emulator._state import STATE_KEY, EmulatorState

from ._common import raise_fd_limit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NDJSON_PREFIX = "ndjson-c"
"""Sprites named ``ndjson-c<K>`` stream B6 checkpoint events, K per write."""
NDJSON_CHUNKINGS = (1, 50)
_NDJSON_PATH = re.compile(r"^/v1/sprites/ndjson-c(\d+)/checkpoint$")
_LINES_KEY: web.AppKey[list[bytes]] = web.AppKey("bench_ndjson_lines", list)


def _event_lines(count: int) -> list[bytes]:
    """``count`` NDJSON lines as the service writes them: info..., then complete."""
    start = datetime(2026, 4, 3, 3, 2, 18, tzinfo=timezone.utc)
    lines = []
    for i in range(count):
        stamp = (start + timedelta(microseconds=37 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f")
        stamp += f"{i % 1000:03d}Z"  # nanosecond precision, as recorded
        if i == count - 1:
            event = {"type": "complete", "data": "Checkpoint v1 created successfully"}
        else:
            event = {"type": "info", "data": f"Copying layer {i + 1} of {count - 1}"}
        event["time"] = stamp
        lines.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")
    return lines


@web.middleware
async def ndjson_stream(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer B6's checkpoint requests with a long progress stream."""
    match = _NDJSON_PATH.match(request.path)
    if match is None or request.method != "POST":
        return await handler(request)
    per_write = max(1, int(match.group(1)))
    await request.read()
    lines = request.app[_LINES_KEY]
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )
    await response.prepare(request)
    for i in range(0, len(lines), per_write):
        await response.write(b"".join(lines[i : i + per_write]))
    await response.write_eof()
    return response


def enrich(state: EmulatorState) -> None:
    """Give every sprite the optional fields a real fleet has."""
    seen = datetime(2026, 4, 3, 3, 2, 48, tzinfo=timezone.utc)
    for i, rec in enumerate(state.sprites.values()):
        rec.labels = ["bench", f"shard-{i % 16}"]
        rec.version = "0.0.1-rc46"
        rec.last_running_at = seen


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGINT/SIGTERM or until the parent process is gone."""
    state_dir = Path(tempfile.mkdtemp(prefix="sprites-bench-"))
    config = EmulatorConfig(
        token=args.token or default_token(),
        state_dir=state_dir,
        inline_exec=True,
        exit_linger=args.exit_linger,
        # Nothing goes warm or cold during a run: status changes would only add noise.
        warm_after=3600.0,
        cold_after=7200.0,
        running_limit=100_000,
        warm_limit=100_000,
    )
    app = create_app(config)
    app.middlewares.append(ndjson_stream)
    app[_LINES_KEY] = _event_lines(args.events)  # made once: serving them is what we time
    state = app[STATE_KEY]
    seed_sprites(state, args.seed, prefix="sprite-")
    for k in NDJSON_CHUNKINGS:
        insert_sprite(state, new_record(state, f"{NDJSON_PREFIX}{k}"))
    enrich(state)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    try:
        await runner.setup()
        # B7 opens 10,000 sessions at once: a short accept queue turns the
        # overflow into SYN retransmits (1 s and more) on either client.
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=8192)
        await site.start()
        port = runner.addresses[0][1]
        line = {"url": f"http://127.0.0.1:{port}", "token": config.token, "pid": os.getpid()}
        print(json.dumps(line), flush=True)
        while not stop.is_set():
            if os.getppid() != parent:
                break  # orphaned: the benchmark runner died without stopping us
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    finally:
        await runner.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the server process."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server")
    parser.add_argument("--seed", type=int, default=10_000, help="sprites to create")
    parser.add_argument("--events", type=int, default=20_000, help="B6 events per stream")
    parser.add_argument("--exit-linger", type=float, default=5.0, help="seconds after exit")
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    # B7 holds 10,000 sockets at once in this process: as many as the hard limit allows.
    raise_fd_limit(1 << 20)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
