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
LOOPS = ("asyncio", "uvloop")
ON_LOOP = {"uvloop": (RAW, OURS, OFFICIAL_ASYNC)}
"""The clients that run on a loop other than asyncio (the sync SDK has no loop to choose)."""


def on_loop(client: str, loop: str) -> str:
    """The results key of ``client`` run on ``loop``: ``raw``, ``raw @uvloop`` ..."""
    return client if loop == "asyncio" else f"{client} @{loop}"


def loop_of(client_id: str) -> tuple[str, str]:
    """The inverse of :func:`on_loop`: (client, loop)."""
    client, _, loop = client_id.partition(" @")
    return client, loop or "asyncio"


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
    was: float | None = None
    """The first round's limit (issue 9), shown beside the current one (issue 15)."""

    def describe(self) -> str:
        """For the table, e.g. ``req/s >= 0.95x raw (was 0.8x)``."""
        if self.completion:
            return "all complete"
        sign = "\u2265" if self.metric.higher_is_better else "\u2264"
        text = f"{self.metric.label} {sign} {self.limit:g}{TIMES} {self.reference}"
        if self.was is not None and self.was != self.limit:
            text += f" (was {self.was:g}{TIMES})"
        return text

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
    timeout_full: float = 300.0
    timeout_quick: float = 20.0
    notes: str = ""
    server: dict[str, int] = field(default_factory=dict)
    ops: str = ""
    """The metric counting operations, for CPU per operation (empty: none)."""
    ops_scale: float = 1.0
    """Multiplies ``ops`` (B5 counts bytes, its operation is a MiB)."""
    op: str = "op"
    """What one operation is, for the tables: request, exec, MiB ..."""
    scalable: tuple[str, ...] = ()
    """Parameters that ``--scale`` multiplies."""

    def params(self, quick: bool, scale: float = 1.0) -> dict[str, int]:
        """Sizes for a full or a quick run (``rounds`` included), ``scalable`` ones scaled."""
        out = dict(self.quick if quick else self.full)
        for key in self.scalable:
            out[key] = max(1, round(out[key] * scale))
        return out


WALL = Metric("wall", "wall", "s", digits=3)
CPU = Metric("cpu", "CPU", "s", digits=3)
CPU_OP = Metric("cpu_us_op", "CPU/op", "µs", digits=1)
"""Process CPU time in the timed region per operation (see ``Spec.op``)."""
OPEN = Metric("open_s", "time to open all", "s", digits=3)
RSS_OP = Metric("rss_kib_op", "RSS growth per session", "KiB", digits=1)
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
        (RPS, WALL, CPU_OP, PEAK),
        full={"count": 10_000, "concurrency": 100, "fleet": 10_000},
        quick={"count": 100, "concurrency": 10, "fleet": 1000},
        targets=(Target(RPS, 0.95, was=0.8),),
        scalable=("count",),
        ops="completed",
        op="request",
    ),
    Spec(
        "B2",
        "List everything: 200 pages of 50 rich entries, walked `rounds` times",
        (WALL, CPU_OP, PEAK),
        full={"fleet": 10_000, "rounds": 10},
        quick={"fleet": 1000, "rounds": 1},
        targets=(Target(WALL, 1.1, was=1.3),),
        scalable=("rounds",),
        ops="pages",
        op="page",
    ),
    Spec(
        "B2d",
        "Decode one 50-sprite page (µs per page, median of interleaved rounds)",
        tuple(DECODE.values()),
        full={"rounds": 61},
        quick={"rounds": 3},
        targets=(Target(DECODE["ours"], 1.15, reference="msgspec", was=1.2),),
        clients=("decode",),
    ),
    Spec(
        "B3",
        "Exec latency: sequential `echo hi`",
        (MEDIAN, P99, WALL, CPU_OP),
        full={"count": 2000},
        quick={"count": 10},
        variants=("direct", "control"),
        targets=(
            Target(MEDIAN, 1.1, "direct", was=1.2),
            Target(MEDIAN, 1.1, "control", was=1.3),
        ),
        scalable=("count",),
        ops="completed",
        op="exec",
    ),
    Spec(
        "B4",
        "Exec fan-out: one `echo hi` on each of N sprites at once, `rounds` fresh clients",
        (WALL, GROWTH, CPU_OP, PEAK),
        full={"count": 500, "rounds": 4},
        quick={"count": 10, "rounds": 1},
        variants=("direct", "control"),
        targets=(
            Target(WALL, 1.15, "direct", was=1.3),
            Target(GROWTH, 1.15, "direct", was=1.3),
            Target(WALL, 1.15, "control", was=1.3),
            Target(GROWTH, 1.15, "control", was=1.3),
        ),
        scalable=("rounds",),
        ops="completed",
        op="exec",
    ),
    Spec(
        "B4s",
        "Exec contention: N concurrent `echo hi` on one sprite, `rounds` fresh clients",
        (DONE, WALL, CPU_OP, PEAK),
        full={"count": 100, "rounds": 20},
        quick={"count": 10, "rounds": 1},
        variants=("direct", "control"),
        timeout_full=90.0,
        targets=(
            Target(DONE, 1.0, "direct", completion=True),
            Target(DONE, 1.0, "control", completion=True),
            Target(WALL, 1.2, "direct", was=1.5),
            Target(WALL, 1.2, "control", was=1.5),
        ),
        scalable=("rounds",),
        ops="completed",
        op="exec",
    ),
    Spec(
        "B5",
        "Stream throughput: `head -c N /dev/zero` read as it arrives, `rounds` commands",
        (MBPS, WALL, CPU_OP, PEAK),
        full={"bytes": 256 * 1024 * 1024, "rounds": 4},
        quick={"bytes": 2 * 1024 * 1024, "rounds": 1},
        targets=(Target(MBPS, 0.9, was=0.8), Target(PEAK, 1.2, was=1.5)),
        scalable=("rounds",),
        ops="bytes",
        ops_scale=1 / (1024 * 1024),
        op="MiB",
    ),
    Spec(
        "B6",
        "Progress stream: checkpoint NDJSON, K events per network chunk, `rounds` streams",
        (EPS, TTFE, WALL, CPU_OP, PEAK),
        full={"events": 20_000, "rounds": 5},
        quick={"events": 1000, "rounds": 1},
        variants=("c50", "c1"),
        notes=(
            "Every client's consumer touches each event (counts it and reads its `type`), "
            "as any caller of an event iterator does. Runs before 2026-12-04 had the raw "
            "client only add up the length of each decoded batch, looking at no event: "
            "a floor no per-event API can reach, which made c50 read 0.26x."
        ),
        targets=(
            Target(EPS, 1.0, "c50", was=0.8),
            Target(EPS, 1.0, "c1", was=0.8),
            Target(TTFE, 1.5, "c50", was=2.0),
            Target(TTFE, 1.5, "c1", was=2.0),
        ),
        scalable=("rounds",),
        ops="events",
        op="event",
    ),
    Spec(
        "B7",
        "Many live sessions: N concurrent `cat` sessions in one client, each fed a line, "
        "read, then exited",
        (OPEN, WALL, RSS_OP, GROWTH, CPU_OP),
        full={"sessions": 10_000, "sprites": 100},
        quick={"sessions": 50, "sprites": 10},
        clients=(RAW, OURS),
        timeout_full=600.0,
        targets=(Target(RSS_OP, 1.2), Target(OPEN, 1.2)),
        ops="completed",
        op="session",
        scalable=("sessions",),
        notes=(
            "Every session is opened before any is fed; then each writes its own line, "
            "reads it back, closes stdin and reads its exit status (all must be 0). "
            "After the client is closed no socket and no task may be left "
            "(checked in-process; a run that leaves any fails). The worker raises "
            "its soft file-descriptor limit to the hard one when the sessions need it. "
            "The official SDK is not measured here."
        ),
    ),
    Spec(
        "B8",
        "Fleet fan-out: one `echo hi` on each of N sprites, C at a time, `rounds` fresh clients",
        (WALL, CPU_OP, GROWTH, PEAK),
        full={"sprites": 1000, "concurrency": 200, "rounds": 3},
        quick={"sprites": 20, "concurrency": 5, "rounds": 1},
        variants=("direct", "control"),
        targets=(Target(WALL, 1.15, "direct"), Target(WALL, 1.15, "control")),
        ops="completed",
        op="exec",
        scalable=("sprites",),
        notes=(
            "sprites-async: `sprites_async.fleet.exec_many(names, 'echo', 'hi', "
            "concurrency=200)`; raw and the official async client: `asyncio.gather` "
            "behind a semaphore; the official sync client: a pool of 200 threads. "
            "Every sprite's result is checked (exit 0, stdout `hi`)."
        ),
    ),
)

BY_ID = {spec.id.lower(): spec for spec in SPECS}
