"""One measured run in a fresh process: ``python -m benchmarks._worker JOB_JSON``.

The job names an implementation, a scenario and a :class:`~._common.Ctx`,
and optionally ``rounds`` (the scenario runs that many times in this process,
each with its own event loop and client; the figures add up), ``loop``
(``asyncio`` or ``uvloop``) and ``ops`` (the metric counting the scenario's
operations, for CPU per operation).
The last stdout line is :data:`~._common.RESULT_MARK` followed by JSON:
``{"ok": true, "metrics": {...}, "cpu": s, "peak_rss_mb": x, "rss_growth_mb": y}``
or ``{"ok": false, "error": "...", "unsupported": bool}``.

``metrics`` gains ``cpu_s`` (process CPU time inside the timed regions only,
see :func:`~._common.region_start`), ``ops``, ``cpu_us_op`` (µs of CPU per
operation) and ``rss_kib_op`` (RSS growth per operation, KiB).

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
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from . import _common
from ._common import RESULT_MARK, Ctx, Metrics, ScenarioFailed, Unsupported

SUMMED = ("wall", "open_s", "completed", "bytes", "events", "items", "pages", "ops")
"""Metrics that add up over rounds; rates are recomputed from them."""
RATES = {"rps": ("completed", 1.0), "mbps": ("bytes", 1e-6), "eps": ("events", 1.0)}

IMPLEMENTATIONS = {
    "raw": "benchmarks.impl_raw",
    "sprites-async": "benchmarks.impl_ours",
    "official-async": "benchmarks.impl_official_async",
    "official-sync": "benchmarks.impl_official_sync",
    "decode": "benchmarks.impl_decode",
}


ASYNC_IMPLS = ("raw", "sprites-async", "official-async")


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


def combine(rounds: list[Metrics]) -> Metrics:
    """The figures of several rounds as one run: counts and walls add up, rates
    are recomputed from them, anything else is the median of the rounds."""
    if len(rounds) == 1:
        return dict(rounds[0])
    out: Metrics = {}
    for key in rounds[0]:
        vals = [r[key] for r in rounds if key in r]
        if key in SUMMED:
            out[key] = sum(vals)
        else:
            out[key] = statistics.median(vals)
    for rate, (count, scale) in RATES.items():
        if rate in out and count in out and out.get("wall"):
            out[rate] = out[count] * scale / out["wall"]
    return out


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, Metrics]], Metrics]:
    if loop == "uvloop":
        import uvloop

        run: Callable[[Coroutine[Any, Any, Metrics]], Metrics] = uvloop.run
        return run
    if loop != "asyncio":
        raise ImportError(f"unknown event loop {loop!r}")
    return asyncio.run


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and describe the outcome."""
    impl, scenario = job["impl"], job["scenario"]
    ctx = Ctx.from_json(job["ctx"])
    loop = str(job.get("loop", "asyncio"))
    rounds = int(job.get("rounds", 1))
    try:
        run_async = _runner(loop)
    except ImportError as exc:
        return {"ok": False, "unsupported": True, "error": f"{loop} is not installed: {exc}"}
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
    _common.REGIONS.clear()
    per_round: list[Metrics] = []
    try:
        for _ in range(rounds):
            if inspect.iscoroutinefunction(fn):
                if loop != "asyncio" and impl not in ASYNC_IMPLS:
                    raise Unsupported(f"{impl} does not run on an event loop of ours")
                per_round.append(run_async(fn(ctx)))
            else:
                if loop != "asyncio":
                    raise Unsupported(f"{impl} is synchronous: no event loop to choose")
                per_round.append(fn(ctx))
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
    metrics = combine(per_round)
    growth_kb = max(0, peak_kb - base_kb) if reset else None
    ops_key = job.get("ops")
    if _common.REGIONS:
        metrics["cpu_s"] = sum(c for _, c in _common.REGIONS)
    if ops_key and metrics.get(ops_key):
        ops = metrics[ops_key] * float(job.get("ops_scale", 1.0))
        metrics["ops"] = ops
        if "cpu_s" in metrics:
            metrics["cpu_us_op"] = metrics["cpu_s"] / ops * 1e6
        if growth_kb is not None:
            metrics["rss_kib_op"] = growth_kb / ops
    return {
        "ok": True,
        "metrics": metrics,
        "cpu": cpu,
        "elapsed": total,
        "peak_rss_mb": peak_kb / 1024,
        "rss_growth_mb": growth_kb / 1024 if growth_kb is not None else None,
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
