"""The benchmark rig still runs: ``python -m benchmarks --quick`` end to end.

No timing is asserted: only that every scenario ran for every implementation
and that ours and the raw transport did all their work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._scenarios import OURS, RAW, SPECS

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


@pytest.mark.slow
def test_quick_run_completes_every_scenario(tmp_path: Path) -> None:
    dump = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-write", "--json", str(dump)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Targets" in proc.stdout
    runs = {
        (e["scenario"], e["variant"], e["client"]): e["runs"]
        for e in json.loads(dump.read_text())["results"]
    }
    for spec in SPECS:
        for variant in spec.variants:
            for client in spec.clients:
                key = (spec.id, variant, client)
                assert runs.get(key), f"{key} did not run"
                for run in runs[key]:
                    if client in (RAW, OURS, "decode"):
                        assert run["ok"], f"{key}: {run.get('error')}"
                        assert run["metrics"], key
                    elif not run["ok"]:
                        # The official SDK may fail (that is recorded, not hidden),
                        # but not because the benchmark code is broken.
                        error = str(run.get("error"))
                        assert not error.startswith(HARNESS_BUGS), f"{key}: {error}"
