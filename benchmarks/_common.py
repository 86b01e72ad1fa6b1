"""What the runner, the worker processes and the implementations share."""

from __future__ import annotations

import math
import statistics
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


def expect(condition: bool, message: str) -> None:
    """Raise :class:`ScenarioFailed` unless ``condition`` holds."""
    if not condition:
        raise ScenarioFailed(message)


def failures(errors: Sequence[str], total: int, wall: float) -> str:
    """The message of a run in which some calls failed (the rest still count for nothing)."""
    return f"{len(errors)} of {total} failed (run took {wall:.2f} s); first: {errors[0]}"
