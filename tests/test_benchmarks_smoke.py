"""The benchmark rig still runs: ``python -m benchmarks --quick`` end to end.

No timing is asserted: only that every scenario ran for every implementation
and that ours and the raw transport did all their work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks._scenarios import BY_ID, OURS, RAW, SPECS

ROOT = Path(__file__).resolve().parent.parent

# What a bug in the benchmark code (rather than a failure of the SDK being
# measured) looks like.
HARNESS_BUGS = (
    "AttributeError",
    "TypeError",
    "NameError",
    "KeyError",
    "ImportError",
    "worker exited",
)


def _quick(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    dump = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-write", "--json", str(dump), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Targets" in proc.stdout
    data: dict[str, Any] = json.loads(dump.read_text())
    return proc.stdout, data


def _check_runs(data: dict[str, Any], clients: dict[str, tuple[str, ...]], loop: str) -> None:
    runs = {(e["scenario"], e["variant"], e["client"]): e["runs"] for e in data["results"]}
    suffix = "" if loop == "asyncio" else f" @{loop}"
    for scenario, names in clients.items():
        spec = BY_ID[scenario.lower()]
        for variant in spec.variants:
            for client in names:
                key = (spec.id, variant, client + suffix)
                assert runs.get(key), f"{key} did not run"
                for run in runs[key]:
                    if client in (RAW, OURS, "decode"):
                        assert run["ok"], f"{key}: {run.get('error')}"
                        assert run["metrics"], key
                        if spec.ops:
                            # CPU per operation, from the timed region only.
                            assert run["metrics"]["cpu_us_op"] > 0, key
                            assert run["metrics"]["ops"] > 0, key
                    elif not run["ok"]:
                        # The official SDK may fail (that is recorded, not hidden),
                        # but not because the benchmark code is broken.
                        error = str(run.get("error"))
                        assert not error.startswith(HARNESS_BUGS), f"{key}: {error}"


@pytest.mark.slow
def test_quick_run_completes_every_scenario(tmp_path: Path) -> None:
    out, data = _quick(tmp_path)
    _check_runs(data, {spec.id: spec.clients for spec in SPECS}, "asyncio")
    # B7 and B8 ran at their tiny scale; B7 left no socket and no task behind.
    b7 = [e for e in data["results"] if e["scenario"] == "B7"]
    assert {e["client"] for e in b7} == {RAW, OURS}
    for entry in b7:
        for run in entry["runs"]:
            assert run["metrics"]["completed"] == BY_ID["b7"].quick["sessions"]
            assert run["metrics"]["sockets_left"] == 0 and run["metrics"]["tasks_left"] == 0
    # The summary has a ratio to raw, with its spread, beside every figure of ours.
    ours = [s for s in data["summary"] if s["client"] == OURS and s["scenario"] == "B8"]
    assert ours and all(
        {"median", "min", "max", "q1", "q3"} <= set(s["ratio_to_raw"]) for s in ours
    )
    assert "CPU per exec" in out


@pytest.mark.slow
def test_quick_run_on_uvloop_puts_its_columns_beside_asyncio(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    scenarios = ("B3", "B7", "B8")
    args = [a for s in scenarios for a in ("--scenario", s)]
    out, data = _quick(tmp_path, "--loop", "uvloop", *args)
    clients = {
        s: tuple(c for c in BY_ID[s.lower()].clients if c != "official-sync") for s in scenarios
    }
    _check_runs(data, clients, "uvloop")
    _check_runs(data, clients, "asyncio")
    assert "sprites-async (uvloop)" in out and "| direct | sprites-async @uvloop |" in out
    assert not any("official-sync @" in e["client"] for e in data["results"])
