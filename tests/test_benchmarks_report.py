"""The pure parts of the benchmark rig: run order, statistics, targets, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report as bench_report
from benchmarks._common import Ctx, latency_metrics
from benchmarks._report import Spread, ratios, render
from benchmarks._runner import _order, build_parser, main
from benchmarks._scenarios import BY_ID, OURS, RAW, SPECS, Target

CLIENTS = [RAW, OURS, "official-async", "official-sync"]


def test_ours_and_raw_run_abba_and_swap_every_repetition() -> None:
    orders = [_order(CLIENTS, rep) for rep in range(4)]
    assert [o[:4] for o in orders] == [[RAW, OURS, OURS, RAW], [OURS, RAW, RAW, OURS]] * 2
    assert {o[4] for o in orders} == {"official-async", "official-sync"}
    assert all(sorted(o) == sorted([*CLIENTS, RAW, OURS]) for o in orders)
    assert _order(["decode"], 3) == ["decode"]
    assert _order(CLIENTS, 1, abba=False)[:2] == [OURS, RAW]


def test_latency_metrics_median_and_nearest_rank_p99() -> None:
    samples = [i / 1000 for i in range(1, 201)]  # 1..200 ms
    m = latency_metrics(samples, wall=1.0)
    assert m["median_ms"] == pytest.approx(100.5)
    assert m["p99_ms"] == pytest.approx(198.0)
    assert m["completed"] == 200


def test_spread_formats_median_and_range() -> None:
    spread = Spread.of([3.0, 1.0, 2.0])
    assert spread is not None
    assert (spread.median, spread.low, spread.high) == (2.0, 1.0, 3.0)
    assert Spread.of([]) is None


def run(rep: int, ok: bool = True, **metrics: float) -> dict[str, Any]:
    return {"rep": rep, "ok": ok, "metrics": metrics, "cpu": 0.1, "peak_rss_mb": 30.0}


def test_ratios_pair_runs_of_the_same_repetition_only() -> None:
    mine = [run(0, rps=80.0), run(1, rps=90.0), run(2, ok=False)]
    ref = [run(1, rps=100.0), run(0, rps=100.0), run(2, rps=100.0)]
    rps = BY_ID["b1"].metrics[0]
    assert ratios(mine, ref, rps, rps) == [0.8, 0.9]


def test_two_runs_of_one_repetition_are_averaged() -> None:
    mine = [run(0, rps=70.0), run(0, rps=90.0), run(1, rps=50.0), run(1, ok=False)]
    ref = [run(0, rps=100.0), run(0, rps=100.0), run(1, rps=100.0)]
    rps = BY_ID["b1"].metrics[0]
    assert ratios(mine, ref, rps, rps) == [0.8, 0.5]


def test_targets_know_their_direction() -> None:
    b1 = BY_ID["b1"].targets[0]
    assert b1.met(0.95) and not b1.met(0.94)
    b2 = BY_ID["b2"].targets[0]
    assert b2.met(1.1) and not b2.met(1.11)
    assert "(was 0.8\u00d7)" in b1.describe()
    assert isinstance(b2, Target)


def test_report_says_not_run_with_the_reason_and_shows_failures() -> None:
    spec = BY_ID["b1"]
    results = {
        ("B1", "", RAW): [run(0, rps=100.0, wall=1.0)],
        ("B1", "", OURS): [run(0, rps=96.0, wall=1.1)],
        ("B1", "", "official-async"): [
            {"rep": 0, "ok": False, "unsupported": False, "error": "NetworkError: boom"}
        ],
        ("B1", "", "official-sync"): [
            {"rep": 0, "ok": False, "unsupported": True, "error": "sprites-py is missing"}
        ],
    }
    text = render(
        [spec],
        results,
        command="python -m benchmarks",
        quick=True,
        reps=1,
        jobs=1,
        started="now",
        machine_info={"cores": "2", "cpu": "x", "python": "3.11", "os": "linux", "load": "0"},
        load_after="0",
        server_note="server",
    )
    assert "0.96\u00d7" in text and "**yes**" in text
    assert "failed \u2014 NetworkError: boom" in text
    assert "not run \u2014 sprites-py is missing" in text


def test_every_scenario_has_targets_and_can_be_selected() -> None:
    ids = ["B1", "B2", "B2d", "B3", "B4", "B4s", "B5", "B6", "B7", "B8"]
    assert [s.id for s in SPECS] == ids
    assert all(spec.targets for spec in SPECS)
    args = build_parser().parse_args(["--quick", "--scenario", "B4s", "--no-write"])
    assert args.quick and args.scenario == ["B4s"] and args.no_write


def test_ctx_round_trips_through_json() -> None:
    ctx = Ctx("http://127.0.0.1:1", "t", "control", {"count": 3})
    assert Ctx.from_json(ctx.to_json()) == ctx
    assert ctx.sprite(7) == "sprite-00007"


@pytest.mark.parametrize("note", ["the server is the bottleneck", None])
def test_a_missed_target_gets_its_profiling_note(
    monkeypatch: pytest.MonkeyPatch, note: str | None
) -> None:
    if note is None:
        monkeypatch.delitem(bench_report.FINDINGS, ("B1", "", "rps"), raising=False)
    else:
        monkeypatch.setitem(bench_report.FINDINGS, ("B1", "", "rps"), note)
    results = {
        ("B1", "", RAW): [run(0, rps=100.0)],
        ("B1", "", OURS): [run(0, rps=50.0)],
    }
    text = render(
        [BY_ID["b1"]],
        results,
        command="python -m benchmarks",
        quick=False,
        reps=1,
        jobs=1,
        started="now",
        machine_info={"cores": "2", "cpu": "x", "python": "3.11", "os": "linux", "load": "0"},
        load_after="0",
        server_note="server",
    )
    missed = text.split("## Missed targets", 1)[1].split("## Per scenario", 1)[0]
    assert "**B1**" in missed and "0.50\u00d7" in missed
    assert (note or "not analysed yet") in missed
    assert "**NO**" in text


def test_a_saved_run_can_be_rendered_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = {
        "command": "python -m benchmarks --json runs.json",
        "started": "then",
        "machine": {"cores": "2", "cpu": "x", "python": "3.11", "os": "linux", "load": "0"},
        "quick": False,
        "reps": 1,
        "jobs": 1,
        "seed": 10_000,
        "scenarios": ["B1"],
        "load_after": "0",
    }
    results = [
        {"scenario": "B1", "variant": "", "client": RAW, "runs": [run(0, rps=100.0)]},
        {"scenario": "B1", "variant": "", "client": OURS, "runs": [run(0, rps=90.0)]},
    ]
    dump = tmp_path / "runs.json"
    dump.write_text(json.dumps({"meta": meta, "results": results}))
    assert main(["--render-json", str(dump), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "`python -m benchmarks --json runs.json`" in out
    assert "re-rendered" in out and "0.90\u00d7" in out


# ----------------------------------------------------------- round two (issue 15)


def test_rounds_add_up_and_rates_are_recomputed() -> None:
    from benchmarks._worker import combine

    rounds = [
        {"wall": 1.0, "completed": 100.0, "rps": 100.0, "ttfe_ms": 5.0},
        {"wall": 3.0, "completed": 100.0, "rps": 33.3, "ttfe_ms": 1.0},
        {"wall": 1.0, "completed": 100.0, "rps": 100.0, "ttfe_ms": 2.0},
    ]
    out = combine(rounds)
    assert out["wall"] == 5.0 and out["completed"] == 300.0
    assert out["rps"] == pytest.approx(60.0)  # 300 requests in 5 s, not a mean of rates
    assert out["ttfe_ms"] == 2.0  # the median round
    assert combine(rounds[:1]) == rounds[0]


def test_a_job_carries_rounds_loop_and_operations() -> None:
    from benchmarks._procs import BenchServer
    from benchmarks._runner import _job

    server = BenchServer(seed=1, events=1)
    server.url, server.token = "http://127.0.0.1:1", "t"
    job = _job(BY_ID["b4"], server, "direct", "sprites-async @uvloop", quick=False)
    assert (job["impl"], job["loop"], job["rounds"], job["ops"]) == (
        OURS,
        "uvloop",
        4,
        "completed",
    )
    assert "rounds" not in job["ctx"]["params"]
    b7 = _job(BY_ID["b7"], server, "", RAW, quick=False, scale=0.005)
    assert b7["ctx"]["params"]["sessions"] == 50 and b7["loop"] == "asyncio"
    assert BY_ID["b8"].params(quick=True, scale=0.0001)["sprites"] == 1


def test_uvloop_runs_only_the_async_clients_and_pairs_them_abba() -> None:
    from benchmarks._runner import clients_on

    groups = dict(clients_on(BY_ID["b3"], ["asyncio", "uvloop"]))
    assert groups["uvloop"] == [f"{c} @uvloop" for c in (RAW, OURS, "official-async")]
    assert groups["asyncio"] == CLIENTS
    assert dict(clients_on(BY_ID["b2d"], ["asyncio", "uvloop"])) == {"asyncio": ["decode"]}
    order = _order(groups["uvloop"], 0, loop="uvloop")
    assert order[:4] == [f"{RAW} @uvloop", f"{OURS} @uvloop", f"{OURS} @uvloop", f"{RAW} @uvloop"]


def test_summary_has_the_spread_of_per_repetition_ratios() -> None:
    from benchmarks._report import summary

    raw_runs = [run(r, rps=100.0, wall=1.0) for r in range(5)]
    ours_runs = [run(r, rps=v, wall=1.0) for r, v in enumerate([90.0, 95.0, 100.0, 105.0, 110.0])]
    results = {("B1", "", RAW): raw_runs, ("B1", "", OURS): ours_runs}
    entries = {(e["client"], e["metric"]): e for e in summary([BY_ID["b1"]], results)}
    ratio = entries[(OURS, "rps")]["ratio_to_raw"]
    assert (ratio["median"], ratio["min"], ratio["max"], ratio["n"]) == (1.0, 0.9, 1.1, 5)
    assert (ratio["q1"], ratio["q3"]) == pytest.approx((0.95, 1.05))
    assert ratio["per_rep"] == pytest.approx([0.9, 0.95, 1.0, 1.05, 1.1])
    assert "ratio_to_raw" not in entries[(RAW, "rps")]


def test_report_puts_uvloop_columns_beside_asyncio_and_ratios_beside_figures() -> None:
    results = {
        ("B1", "", RAW): [run(0, rps=100.0, cpu_us_op=50.0), run(1, rps=100.0, cpu_us_op=50.0)],
        ("B1", "", OURS): [run(0, rps=96.0, cpu_us_op=60.0), run(1, rps=98.0, cpu_us_op=70.0)],
        ("B1", "", "raw @uvloop"): [run(0, rps=200.0), run(1, rps=200.0)],
        ("B1", "", "sprites-async @uvloop"): [run(0, rps=100.0), run(1, rps=120.0)],
    }
    text = render(
        [BY_ID["b1"]],
        results,
        command="python -m benchmarks --loop uvloop",
        quick=False,
        reps=2,
        jobs=1,
        started="now",
        machine_info={"cores": "2", "cpu": "x", "python": "3.11", "os": "linux", "load": "0"},
        load_after="0",
        server_note="server",
        loops=["asyncio", "uvloop"],
    )
    header = next(line for line in text.splitlines() if line.startswith("| Scenario"))
    assert "raw (uvloop)" in header and "ratio (uvloop)" in header
    row = next(line for line in text.splitlines() if line.startswith("| B1 |"))
    assert "0.97\u00d7 (0.96\u20130.98, n=2)" in row  # asyncio: ours / raw
    assert "0.55\u00d7 (0.50\u20130.60, n=2)" in row  # uvloop, against raw on uvloop
    assert "**B1 on uvloop**" in text  # a miss on uvloop is listed as one
    assert "| CPU per request (\u00b5s) |" in text
    assert (
        "| \u2014 | sprites-async | 97 (96\u201398) req/s [0.97\u00d7 (0.96\u20130.98)] |" in text
    )
    assert "65.0 (60.0\u201370.0) [1.30\u00d7 (1.20\u20131.40)]" in text  # CPU per request
    assert "| \u2014 | sprites-async @uvloop |" in text


def test_worker_rounds_cpu_per_operation_and_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from benchmarks import _worker
    from benchmarks._common import region_start, region_stop

    seen: list[str] = []

    async def scenario(ctx: Ctx) -> dict[str, float]:
        import asyncio

        seen.append(type(asyncio.get_running_loop()).__module__)
        started = region_start()
        sum(range(20_000))  # some CPU inside the timed region
        wall = region_stop(started)
        return {"wall": wall, "completed": 10.0}

    module = types.ModuleType("fake_impl")
    module.SCENARIOS = {"B1": scenario}  # type: ignore[attr-defined]
    module.unsupported = lambda scenario, variant: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_impl", module)
    monkeypatch.setitem(_worker.IMPLEMENTATIONS, "raw", "fake_impl")
    ctx = Ctx("http://127.0.0.1:1", "t").to_json()
    job = {"impl": "raw", "scenario": "B1", "ctx": ctx, "rounds": 3, "ops": "completed"}
    result = _worker.run_job(job)
    assert result["ok"], result
    metrics = result["metrics"]
    assert metrics["completed"] == 30.0 and metrics["ops"] == 30.0
    assert metrics["cpu_us_op"] == pytest.approx(metrics["cpu_s"] / 30 * 1e6)
    assert metrics["cpu_s"] <= result["cpu"]
    assert seen == ["asyncio.unix_events"] * 3
    pytest.importorskip("uvloop")
    seen.clear()
    assert _worker.run_job({**job, "loop": "uvloop", "rounds": 1})["ok"]
    assert seen and seen[0].startswith("uvloop")
    sync = _worker.run_job({**job, "impl": "official-sync", "loop": "uvloop"})
    assert (sync["unsupported"] and "synchronous" in sync["error"]) or "cannot import" in sync[
        "error"
    ]


async def test_leftovers_fails_a_run_that_leaves_a_task() -> None:
    import asyncio

    from benchmarks._common import ScenarioFailed, leftovers, open_sockets

    assert await leftovers(open_sockets()) == {"sockets_left": 0.0, "tasks_left": 0.0}
    stray = asyncio.ensure_future(asyncio.sleep(10))
    try:
        with pytest.raises(ScenarioFailed, match="1 tasks"):
            await leftovers(open_sockets())
    finally:
        stray.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stray


def test_fd_limit_is_raised_never_lowered() -> None:
    import resource

    from benchmarks._common import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_fd_limit(16) == (soft, hard)  # never lowered
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
