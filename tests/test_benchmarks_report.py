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
