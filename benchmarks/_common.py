"""What the runner, the worker processes and the implementations share."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import stat
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SPRITE_PREFIX = "sprite-"
STREAM_SPRITE = "ndjson-c{chunk}"
CONTENTION_SPRITE = "sprite-00000"
RESULT_MARK = "BENCH-RESULT "
"""A worker's last stdout line: this mark, then its result as JSON."""

Metrics = dict[str, float]
SyncScenario = Callable[["Ctx"], Metrics]
AsyncScenario = Callable[["Ctx"], Awaitable[Metrics]]
Scenario = SyncScenario | AsyncScenario


class Unsupported(Exception):
    """The implementation cannot run this scenario; the message says why."""


class ScenarioFailed(Exception):
    """The scenario ran but did not do its work (wrong output, missing exits ...)."""


@dataclass(frozen=True)
class Ctx:
    """What one measured run needs: where the server is and the scenario's knobs."""

    url: str
    token: str
    variant: str = ""
    params: Mapping[str, int] = field(default_factory=dict)

    def sprite(self, i: int) -> str:
        """The name of seeded sprite ``i``."""
        return f"{SPRITE_PREFIX}{i:05d}"

    def p(self, name: str) -> int:
        """One integer parameter of the scenario."""
        return int(self.params[name])

    def to_json(self) -> dict[str, Any]:
        """For the worker's command line."""
        return {
            "url": self.url,
            "token": self.token,
            "variant": self.variant,
            "params": dict(self.params),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ctx:
        """The inverse of :meth:`to_json`."""
        return cls(
            url=str(data["url"]),
            token=str(data["token"]),
            variant=str(data.get("variant", "")),
            params={k: int(v) for k, v in dict(data.get("params", {})).items()},
        )


def latency_metrics(samples: Sequence[float], wall: float) -> Metrics:
    """Median and p99 (nearest rank) in milliseconds of per-call latencies."""
    ordered = sorted(samples)
    rank = max(0, math.ceil(0.99 * len(ordered)) - 1)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[rank] * 1000,
        "wall": wall,
        "completed": float(len(ordered)),
    }


_cpu_at_start = [0.0]
REGIONS: list[tuple[float, float]] = []
"""(wall, CPU) of every timed region of this process, in order (the worker reads it)."""


def region_start() -> float:
    """Start the timed region: returns ``perf_counter()`` and notes the process CPU time."""
    _cpu_at_start[0] = time.process_time()
    return time.perf_counter()


def region_stop(started: float) -> float:
    """End the timed region begun by :func:`region_start`; returns its wall time.

    The process CPU time (user + system, every thread) spent in the region is
    recorded in :data:`REGIONS`, from which the worker derives CPU per operation.
    """
    wall = time.perf_counter() - started
    REGIONS.append((wall, time.process_time() - _cpu_at_start[0]))
    return wall


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (at most the hard limit).

    Returns the (soft, hard) limits in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    return soft, hard


def open_sockets() -> int:
    """How many socket file descriptors this process holds (Linux ``/proc``; -1 elsewhere)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    count = 0
    for fd in fds:
        try:
            if stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode):
                count += 1
        except OSError:
            continue  # the listing's own descriptor, gone already
    return count


def other_tasks() -> int:
    """Tasks of the running loop other than the current one."""
    current = asyncio.current_task()
    return sum(1 for t in asyncio.all_tasks() if t is not current and not t.done())


async def leftovers(sockets_before: int) -> Metrics:
    """Sockets and tasks still there once the client is closed (both must be 0)."""
    for _ in range(3):
        await asyncio.sleep(0)  # transports close on the next loop iteration
    left = max(0, open_sockets() - sockets_before) if sockets_before >= 0 else 0
    tasks = other_tasks()
    expect(left == 0 and tasks == 0, f"left behind: {left} sockets, {tasks} tasks")
    return {"sockets_left": float(left), "tasks_left": float(tasks)}


def expect(condition: bool, message: str) -> None:
    """Raise :class:`ScenarioFailed` unless ``condition`` holds."""
    if not condition:
        raise ScenarioFailed(message)


def failures(errors: Sequence[str], total: int, wall: float) -> str:
    """The message of a run in which some calls failed (the rest still count for nothing)."""
    return f"{len(errors)} of {total} failed (run took {wall:.2f} s); first: {errors[0]}"
