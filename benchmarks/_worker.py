"""One measured run in a fresh process: ``python -m benchmarks._worker JOB_JSON``.

The job names an implementation, a scenario and a :class:`~._common.Ctx`.
The last stdout line is :data:`~._common.RESULT_MARK` followed by JSON:
``{"ok": true, "metrics": {...}, "cpu": s, "peak_rss_mb": x, "rss_growth_mb": y}``
or ``{"ok": false, "error": "...", "unsupported": bool}``.

Peak RSS is the kernel's high-water mark (``VmHWM``), reset right before the
scenario starts (``/proc/self/clear_refs``), so imports do not count;
``rss_growth_mb`` is that peak minus the RSS at the start. CPU time is the
process's user + system time (all threads) over the scenario.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import json
import re
import sys
import time
import traceback
from typing import Any

from ._common import RESULT_MARK, Ctx, Metrics, ScenarioFailed, Unsupported

IMPLEMENTATIONS = {
    "raw": "benchmarks.impl_raw",
    "sprites-async": "benchmarks.impl_ours",
    "official-async": "benchmarks.impl_official_async",
    "official-sync": "benchmarks.impl_official_sync",
    "decode": "benchmarks.impl_decode",
}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and describe the outcome."""
    impl, scenario = job["impl"], job["scenario"]
    ctx = Ctx.from_json(job["ctx"])
    try:
        module = importlib.import_module(IMPLEMENTATIONS[impl])
    except ImportError as exc:
        return {"ok": False, "unsupported": True, "error": f"cannot import {exc.name}: {exc}"}
    reason = module.unsupported(scenario, ctx.variant)
    fn = module.SCENARIOS.get(scenario)
    if reason is not None or fn is None:
        return {"ok": False, "unsupported": True, "error": reason or "not implemented"}
    gc.collect()
    base_kb = _status_kb("VmRSS") or 0
    reset = _reset_peak()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        if inspect.iscoroutinefunction(fn):
            metrics: Metrics = asyncio.run(fn(ctx))
        else:
            metrics = fn(ctx)
    except Unsupported as exc:
        return {"ok": False, "unsupported": True, "error": str(exc)}
    except ScenarioFailed as exc:
        return {"ok": False, "unsupported": False, "error": str(exc)}
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        return {"ok": False, "unsupported": False, "error": f"{type(exc).__name__}: {exc}{where}"}
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak_kb = _peak_kb()
    return {
        "ok": True,
        "metrics": metrics,
        "cpu": cpu,
        "elapsed": total,
        "peak_rss_mb": peak_kb / 1024,
        "rss_growth_mb": max(0, peak_kb - base_kb) / 1024 if reset else None,
    }


def main() -> int:
    """Entry point of a worker process."""
    job = json.loads(sys.argv[1])
    result = run_job(job)
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
