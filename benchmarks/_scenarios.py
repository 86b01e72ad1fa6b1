"""The scenarios of the benchmark issue, their sizes and their targets."""

from __future__ import annotations

from dataclasses import dataclass, field

RAW = "raw"
OURS = "sprites-async"
OFFICIAL_ASYNC = "official-async"
OFFICIAL_SYNC = "official-sync"
CLIENTS = (RAW, OURS, OFFICIAL_ASYNC, OFFICIAL_SYNC)
TIMES = "\u00d7"
DASH = "\u2013"


@dataclass(frozen=True)
class Metric:
    """One figure a scenario reports."""

    key: str
    """Key in the worker's metrics, or ``peak_rss_mb`` / ``rss_growth_mb`` / ``cpu``."""
    label: str
    unit: str
    higher_is_better: bool = False
    digits: int = 1


@dataclass(frozen=True)
class Target:
    """``ours / reference`` of one metric must stay within ``limit``."""

    metric: Metric
    limit: float
    variant: str = ""
    reference: str = RAW
    """The implementation compared against (B2's decode compares columns instead)."""
    completion: bool = False
    """A completion target: every run of ours must finish all its work."""

    def describe(self) -> str:
        """For the table, e.g. ``req/s >= 0.8x raw``."""
        if self.completion:
            return "all complete"
        sign = "\u2265" if self.metric.higher_is_better else "\u2264"
        return f"{self.metric.label} {sign} {self.limit:g}{TIMES} {self.reference}"

    def met(self, ratio: float) -> bool:
        """Whether a ratio satisfies the target."""
        return ratio >= self.limit if self.metric.higher_is_better else ratio <= self.limit


@dataclass(frozen=True)
class Spec:
    """One scenario."""

    id: str
    title: str
    metrics: tuple[Metric, ...]
    full: dict[str, int]
    quick: dict[str, int]
    targets: tuple[Target, ...] = ()
    variants: tuple[str, ...] = ("",)
    clients: tuple[str, ...] = CLIENTS
    timeout_full: float = 120.0
    timeout_quick: float = 8.0
    notes: str = ""
    server: dict[str, int] = field(default_factory=dict)

    def params(self, quick: bool) -> dict[str, int]:
        """Sizes for a full or a quick run."""
        return dict(self.quick if quick else self.full)


WALL = Metric("wall", "wall", "s", digits=3)
CPU = Metric("cpu", "CPU", "s", digits=3)
PEAK = Metric("peak_rss_mb", "peak RSS", "MiB")
GROWTH = Metric("rss_growth_mb", "RSS growth", "MiB")
RPS = Metric("rps", "req/s", "req/s", higher_is_better=True, digits=0)
MEDIAN = Metric("median_ms", "median", "ms", digits=2)
P99 = Metric("p99_ms", "p99", "ms", digits=2)
MBPS = Metric("mbps", "MB/s", "MB/s", higher_is_better=True, digits=0)
EPS = Metric("eps", "events/s", "events/s", higher_is_better=True, digits=0)
TTFE = Metric("ttfe_ms", "first event", "ms", digits=2)
DONE = Metric("completed", "completed", "", higher_is_better=True, digits=0)
DECODE = {
    "ours": Metric("ours_us", "sprites-async decode_page", "µs", digits=1),
    "official": Metric("official_us", "official (json.loads + parse_sprite_info)", "µs"),
    "msgspec": Metric("msgspec_us", "bare msgspec Struct", "µs", digits=1),
    "json": Metric("json_us", "json.loads (dicts only)", "µs", digits=1),
}

SPECS: tuple[Spec, ...] = (
    Spec(
        "B1",
        "Fleet reads: GET /v1/sprites/{name}",
        (RPS, WALL, CPU, PEAK),
        full={"count": 5000, "concurrency": 100, "fleet": 10_000},
        quick={"count": 100, "concurrency": 10, "fleet": 1000},
        targets=(Target(RPS, 0.8),),
    ),
    Spec(
        "B2",
        "List everything: 200 pages of 50 rich entries",
        (WALL, CPU, PEAK),
        full={"fleet": 10_000},
        quick={"fleet": 1000},
        targets=(Target(WALL, 1.3),),
    ),
    Spec(
        "B2d",
        "Decode one 50-sprite page (µs per page, median of interleaved rounds)",
        tuple(DECODE.values()),
        full={"rounds": 61},
        quick={"rounds": 3},
        targets=(Target(DECODE["ours"], 1.2, reference="msgspec"),),
        clients=("decode",),
    ),
    Spec(
        "B3",
        "Exec latency: sequential `echo hi`",
        (MEDIAN, P99, WALL, CPU),
        full={"count": 200},
        quick={"count": 10},
        variants=("direct", "control"),
        targets=(Target(MEDIAN, 1.2, "direct"), Target(MEDIAN, 1.3, "control")),
    ),
    Spec(
        "B4",
        "Exec fan-out: one `echo hi` on each of N sprites at once",
        (WALL, GROWTH, CPU, PEAK),
        full={"count": 500},
        quick={"count": 10},
        variants=("direct", "control"),
        targets=(
            Target(WALL, 1.3, "direct"),
            Target(GROWTH, 1.3, "direct"),
            Target(WALL, 1.3, "control"),
            Target(GROWTH, 1.3, "control"),
        ),
    ),
    Spec(
        "B4s",
        "Exec contention: N concurrent `echo hi` on one sprite",
        (DONE, WALL, CPU, PEAK),
        full={"count": 100},
        quick={"count": 10},
        variants=("direct", "control"),
        timeout_full=60.0,
        targets=(
            Target(DONE, 1.0, "direct", completion=True),
            Target(DONE, 1.0, "control", completion=True),
            Target(WALL, 1.5, "direct"),
            Target(WALL, 1.5, "control"),
        ),
    ),
    Spec(
        "B5",
        "Stream throughput: `head -c N /dev/zero` read as it arrives",
        (MBPS, WALL, CPU, PEAK),
        full={"bytes": 256 * 1024 * 1024},
        quick={"bytes": 2 * 1024 * 1024},
        targets=(Target(MBPS, 0.8), Target(PEAK, 1.5)),
    ),
    Spec(
        "B6",
        "Progress stream: checkpoint NDJSON, K events per network chunk",
        (EPS, TTFE, WALL, CPU, PEAK),
        full={"events": 20_000},
        quick={"events": 1000},
        variants=("c50", "c1"),
        notes=(
            "Every client's consumer touches each event (counts it and reads its `type`), "
            "as any caller of an event iterator does. Runs before 2026-12-04 had the raw "
            "client only add up the length of each decoded batch, looking at no event: "
            "a floor no per-event API can reach, which made c50 read 0.26x."
        ),
        targets=(
            Target(EPS, 0.8, "c50"),
            Target(EPS, 0.8, "c1"),
            Target(TTFE, 2.0, "c50"),
            Target(TTFE, 2.0, "c1"),
        ),
    ),
)

BY_ID = {spec.id.lower(): spec for spec in SPECS}
