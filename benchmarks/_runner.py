"""``python -m benchmarks``: run the scenarios and write ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._procs import ROOT, BenchServer, run_worker, stop_workers
from ._report import Key, Run, machine, render, summary
from ._scenarios import BY_ID, LOOPS, ON_LOOP, OURS, RAW, SPECS, Spec, on_loop

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SEED_FULL = 10_000
SEED_QUICK = 1000


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sprites-async against the official SDK and the raw transport.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small counts, 1 repetition (< 1 min)"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=None,
        metavar="ID",
        help="run only this scenario (B1, B2, B2d, B3, B4, B4s, B5, B6, B7, B8); repeatable",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="uvloop: also run every async client on uvloop, in columns beside asyncio",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply each scenario's size (count, rounds, sessions, sprites) by F "
        "(e.g. 0.05: a short trial run)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="workers at once (default 1; quick 3): only for smoke runs, timings then suffer",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the report")
    parser.add_argument("--json", type=Path, default=None, help="also dump every run as JSON")
    parser.add_argument(
        "--render-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="do not run: render the report again from a --json dump",
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _order(
    items: Sequence[str], rep: int, *, abba: bool = True, loop: str = "asyncio"
) -> list[str]:
    """The run order of one repetition.

    sprites-async and raw, whose ratio is the target, run twice each in ABBA
    order (raw, ours, ours, raw; the next repetition ours, raw, raw, ours), so
    that load from other processes, which drifts over seconds, falls on both
    alike; the report uses the mean of each pair. The other implementations
    follow once each, in rotating order. Smoke runs (``abba=False``) run
    every implementation once.
    """
    pair = [c for c in (on_loop(RAW, loop), on_loop(OURS, loop)) if c in items]
    rest = [c for c in items if c not in pair]
    if rep % 2:
        pair.reverse()
    if rest:
        k = rep % len(rest)
        rest = [*rest[k:], *rest[:k]]
    twice = abba and len(pair) == 2
    return [*pair, *reversed(pair), *rest] if twice else [*pair, *rest]


def _job(
    spec: Spec,
    server: BenchServer,
    variant: str,
    client_id: str,
    quick: bool,
    scale: float = 1.0,
) -> dict[str, Any]:
    params = spec.params(quick, scale)
    rounds = params.pop("rounds", 1) if spec.id != "B2d" else 1
    ctx = {"url": server.url, "token": server.token, "variant": variant, "params": params}
    client, _, loop = client_id.partition(" @")
    return {
        "impl": client,
        "scenario": spec.id,
        "ctx": ctx,
        "rounds": rounds,
        "loop": loop or "asyncio",
        "ops": spec.ops,
        "ops_scale": spec.ops_scale,
    }


def clients_on(spec: Spec, loops: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(loop, result keys of the scenario's clients on it) for every loop that has some."""
    out = []
    for loop in loops:
        allowed = spec.clients if loop == "asyncio" else ON_LOOP[loop]
        group = [on_loop(c, loop) for c in spec.clients if c in allowed]
        if group:
            out.append((loop, group))
    return out


def run_spec(
    spec: Spec,
    server: BenchServer,
    *,
    quick: bool,
    reps: int,
    jobs: int,
    results: dict[Key, list[Run]],
    loops: Sequence[str] = ("asyncio",),
    scale: float = 1.0,
) -> None:
    """All repetitions of one scenario (on each loop in turn, within a repetition)."""
    timeout = spec.timeout_quick if quick else spec.timeout_full
    if not quick and RAW in spec.clients:
        # One unmeasured run first, so that nobody's first repetition pays for
        # the server's first touches (sprite directories, code paths, caches).
        for variant in spec.variants:
            run_worker(_job(spec, server, variant, RAW, quick, scale), timeout)
    groups = clients_on(spec, loops)
    planned = [
        (rep, variant, client)
        for rep in range(reps)
        for variant in spec.variants
        for loop, group in groups
        for client in _order(group, rep, abba=not quick, loop=loop)
    ]
    skip: set[tuple[str, str]] = set()

    def one(item: tuple[int, str, str]) -> None:
        rep, variant, client = item
        if (variant, client) in skip:
            return
        run: dict[str, Any] = run_worker(_job(spec, server, variant, client, quick, scale), timeout)
        run["rep"] = rep
        results.setdefault((spec.id, variant, client), []).append(run)
        if run.get("unsupported") or run.get("timeout"):
            skip.add((variant, client))  # same answer next time; do not wait again
        _log(_describe(spec, variant, client, rep, run))

    if jobs <= 1:
        for item in planned:
            one(item)
        return
    # Smoke runs only: several workers at once (their timings are not comparable).
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            list(pool.map(one, planned))
        except BaseException:
            stop_workers()
            raise
    for runs in results.values():
        runs.sort(key=lambda r: int(r["rep"]))


def run_all(
    specs: Sequence[Spec],
    *,
    quick: bool,
    reps: int,
    jobs: int = 1,
    loops: Sequence[str] = ("asyncio",),
    scale: float = 1.0,
) -> dict[Key, list[Run]]:
    """Every selected scenario: a fresh server per scenario (one shared in quick mode)."""
    results: dict[Key, list[Run]] = {}
    kw: dict[str, Any] = {"reps": reps, "jobs": jobs, "results": results, "loops": loops}
    if quick:
        events = max(spec.quick.get("events", 0) for spec in specs) or 100
        with BenchServer(seed=SEED_QUICK, events=events) as server:
            for spec in specs:
                run_spec(spec, server, quick=True, scale=scale, **kw)
        return results
    for spec in specs:
        with BenchServer(seed=SEED_FULL, events=spec.full.get("events", 100)) as server:
            run_spec(spec, server, quick=False, scale=scale, **kw)
    return results


def _describe(spec: Spec, variant: str, client: str, rep: int, run: Run) -> str:
    where = f"{spec.id}{' ' + variant if variant else ''} rep {rep + 1} {client}"
    if run.get("unsupported"):
        return f"{where}: not run ({run.get('error')})"
    if not run.get("ok"):
        return f"{where}: FAILED {run.get('error')}"
    shown = ", ".join(f"{k}={v:,.4g}" for k, v in run["metrics"].items())
    return f"{where}: {shown}; cpu={run['cpu']:.3f}s peak={run['peak_rss_mb']:.1f}MiB"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _server_note(seed: int) -> str:
    return (
        f"Server: the emulator's inline executor (`python -m benchmarks._server`, its own process, "
        f"127.0.0.1), seeded with {seed:,} sprites, lingering 5 s after an exit frame as the real "
        "service does. Every measured client runs in its own fresh process per repetition; "
        "peak RSS is the process high-water mark reset just before the scenario starts "
        "(imports excluded). CPU per operation is the client process's CPU time (user+system, "
        "every thread; `time.process_time`) inside the timed region only, divided by the "
        "operations done there (requests, pages, execs, MiB, events, sessions). Scenarios "
        "with `rounds` repeat their timed region that many times per run (each round with "
        "its own event loop and client) and add the rounds up, so that a repetition lasts "
        "seconds and its ratio is steady."
    )


def _rerender(path: Path) -> tuple[dict[str, Any], list[Spec], dict[Key, list[Run]]]:
    """Meta, scenarios and runs of a ``--json`` dump."""
    data = json.loads(path.read_text())
    meta: dict[str, Any] = data["meta"]
    specs = [BY_ID[i.lower()] for i in meta["scenarios"]]
    results: dict[Key, list[Run]] = {
        (e["scenario"], e["variant"], e["client"]): e["runs"] for e in data["results"]
    }
    return meta, specs, results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.render_json is not None:
        saved_meta, saved_specs, saved_results = _rerender(args.render_json)
        saved_meta["rerendered"] = True
        return _finish(args, saved_meta, saved_specs, saved_results)
    # SIGTERM stops a run as Ctrl-C does: servers and workers are stopped first.
    signal.signal(signal.SIGTERM, _interrupt)
    specs: list[Spec] = []
    for wanted in args.scenario or []:
        spec = BY_ID.get(wanted.lower())
        if spec is None:
            _log(f"unknown scenario {wanted!r}; known: {', '.join(s.id for s in SPECS)}")
            return 2
        specs.append(spec)
    if not specs:
        specs = list(SPECS)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if reps < 1:
        _log("--reps must be at least 1")
        return 2
    jobs = args.jobs if args.jobs is not None else (3 if args.quick else 1)
    if jobs < 1:
        _log("--jobs must be at least 1")
        return 2
    if args.scale <= 0:
        _log("--scale must be positive")
        return 2
    loops = ["asyncio"] if args.loop == "asyncio" else ["asyncio", args.loop]
    shown = ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])]
    meta: dict[str, Any] = {
        "command": shlex.join(shown),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "quick": args.quick,
        "reps": reps,
        "jobs": jobs,
        "seed": SEED_QUICK if args.quick else SEED_FULL,
        "scenarios": [spec.id for spec in specs],
        "loops": loops,
        "scale": args.scale,
    }
    t0 = time.perf_counter()
    try:
        results = run_all(
            specs, quick=args.quick, reps=reps, jobs=jobs, loops=loops, scale=args.scale
        )
    except KeyboardInterrupt:
        _log("interrupted; servers and workers stopped")
        return 130
    _log(f"done in {time.perf_counter() - t0:.1f} s")
    meta["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json is not None:
        dump = [
            {"scenario": s, "variant": v, "client": c, "runs": runs}
            for (s, v, c), runs in results.items()
        ]
        stats = summary(specs, results)
        args.json.write_text(
            json.dumps({"meta": meta, "summary": stats, "results": dump}, indent=1)
        )
    return _finish(args, meta, specs, results)


def _finish(
    args: argparse.Namespace,
    meta: dict[str, Any],
    specs: Sequence[Spec],
    results: dict[Key, list[Run]],
) -> int:
    """Render the report and write or print it."""
    report = render(
        specs,
        results,
        command=meta["command"],
        quick=bool(meta["quick"]),
        reps=int(meta["reps"]),
        jobs=int(meta["jobs"]),
        started=meta["started"],
        machine_info=meta["machine"],
        load_after=meta["load_after"],
        server_note=_server_note(int(meta["seed"])),
        loops=meta.get("loops", ["asyncio"]),
        scale=float(meta.get("scale", 1.0)),
    )
    if meta.get("rerendered"):
        report = report.replace(
            "\n\nMachine: ",
            "\n\n(Report re-rendered from that run's saved results with `--render-json`; "
            "the numbers are the run's.)\n\nMachine: ",
            1,
        )
    if args.no_write:
        print(report)
    else:
        args.output.write_text(report)
        _log(f"wrote {args.output}")
    return 0
