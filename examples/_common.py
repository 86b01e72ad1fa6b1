"""Shared by the examples: use the real service when a token is set, else a local emulator.

With ``SPRITES_TOKEN`` (or ``SPRITE_TOKEN``) in the environment the examples
talk to sprites.dev (``SPRITES_API_URL`` overrides the address). Without
one they start the local emulator inside the same process, say so on
stderr, and everything they create disappears when they exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sprites_async import SpritesClient
from sprites_async.fleet import CreationLimiter, FleetProgress, FleetResult

# The emulator enforces the service's creation limit (10 per window) on a
# compressed time scale, so the examples show creations waiting for the
# limiter instead of failing with 429, without taking minutes.
EMULATOR_CREATION_WINDOW = 2.0


@dataclass
class Session:
    """What an example works with."""

    client: SpritesClient
    limiter: CreationLimiter
    local: bool
    """True when running against the embedded emulator."""


def have_token() -> bool:
    """Whether a Sprites token is configured."""
    return any(os.environ.get(var, "").strip() for var in ("SPRITES_TOKEN", "SPRITE_TOKEN"))


@asynccontextmanager
async def connect(*, quiet: bool = False) -> AsyncIterator[Session]:
    """A client for the real service, or for an embedded emulator when no token is set."""
    if have_token():
        async with SpritesClient() as client:
            yield Session(client, CreationLimiter.for_client(client), local=False)
        return
    from sprites_async.emulator import Emulator

    async with Emulator(
        exit_linger=0.0, creation_limit=10, creation_window=EMULATOR_CREATION_WINDOW
    ) as emulator:
        if not quiet:
            note(
                f"No SPRITES_TOKEN set: using a local emulator at {emulator.url} "
                "(nothing is kept after this run; set SPRITES_TOKEN to use sprites.dev)."
            )
        async with emulator.client() as client:
            limiter = CreationLimiter(10, EMULATOR_CREATION_WINDOW)
            yield Session(client, limiter, local=True)


def note(text: str) -> None:
    """A progress remark on stderr."""
    print(text, file=sys.stderr, flush=True)


def run(main: Callable[[], Awaitable[int]]) -> None:
    """``asyncio.run(main())`` where Ctrl-C cancels ``main`` so its cleanup runs.

    Python 3.10's ``asyncio.run`` cancels *every* task on Ctrl-C at once,
    including the ones deleting sprites; cancelling only the main task lets
    ``async with`` blocks finish their cleanup in order.
    """

    async def guarded() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        interrupted = False

        def interrupt() -> None:
            nonlocal interrupted
            if task is not None and not interrupted:
                interrupted = True
                note("\ninterrupted: cleaning up (Ctrl-C again is ignored until done)")
                task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
        try:
            return await main()
        except asyncio.CancelledError:
            if interrupted:
                return 130
            raise

    sys.exit(asyncio.run(guarded()))


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


class Bar:
    """A one-line progress display for fleet phases (an ``on_progress`` callback).

    On a terminal the line is redrawn in place; otherwise only the end of
    the phase is printed, so logs stay short.
    """

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.live = sys.stderr.isatty()

    def __call__(self, event: FleetProgress) -> None:
        if event.event != "finished" or not self.live:
            return
        width = 30
        filled = width * event.finished // max(1, self.total)
        failed = f", {event.failed} failed" if event.failed else ""
        sys.stderr.write(
            f"\r\033[K{self.label:<11} [{'#' * filled}{'.' * (width - filled)}] "
            f"{event.finished}/{self.total} ({event.running} running{failed})"
        )
        sys.stderr.flush()

    def done(self, result: FleetResult[Any]) -> None:
        """Close the line with the phase's summary."""
        if self.live:
            sys.stderr.write("\r\033[K")
        note(f"{self.label:<11} {result.summary()}")
