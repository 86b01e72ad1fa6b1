"""Statistics and the Markdown report (``benchmarks/RESULTS.md``)."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ._findings import FINDINGS, OFFICIAL_NOTES
from ._scenarios import DASH, OURS, RAW, TIMES, Metric, Spec, Target, loop_of, on_loop

Run = Mapping[str, Any]
"""One worker result (see ``_worker``), plus ``rep``."""
Key = tuple[str, str, str]
"""(scenario, variant, client)."""


def value(run: Run, metric: Metric) -> float | None:
    """A metric of one successful run."""
    if not run.get("ok"):
        return None
    if metric.key in ("peak_rss_mb", "rss_growth_mb", "cpu"):
        v = run.get(metric.key)
    else:
        v = run.get("metrics", {}).get(metric.key)
    return None if v is None else float(v)


@dataclass
class Spread:
    """Median with min and max."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_json(self, values: Sequence[float]) -> dict[str, float | int]:
        """Median, min, max, quartiles (``statistics.quantiles``, inclusive) and n."""
        q1, q3 = (
            statistics.quantiles(values, n=4, method="inclusive")[::2]
            if len(values) > 1
            else (self.median, self.median)
        )
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": q1,
            "q3": q3,
            "n": self.n,
        }

    def fmt(self, digits: int, unit: str = "") -> str:
        u = f" {unit}" if unit and unit not in ("s", "ms", "µs", "MiB") else ""
        if self.n == 1 or self.low == self.high:
            return f"{self.median:,.{digits}f}{u}"
        low, high = f"{self.low:,.{digits}f}", f"{self.high:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({low}{DASH}{high}){u}"


def per_rep(runs: Sequence[Run], metric: Metric) -> dict[int, float]:
    """The metric per repetition: the mean of that repetition's successful runs
    (sprites-async and raw run twice per repetition, in ABBA order)."""
    grouped: dict[int, list[float]] = {}
    for run in runs:
        v = value(run, metric)
        if v is not None:
            grouped.setdefault(int(run["rep"]), []).append(v)
    return {rep: statistics.fmean(vs) for rep, vs in sorted(grouped.items())}


def values(runs: Sequence[Run], metric: Metric) -> list[float]:
    """The metric of every repetition that has a successful run."""
    return list(per_rep(runs, metric).values())


def ratios(
    mine: Sequence[Run], ref: Sequence[Run], metric: Metric, ref_metric: Metric
) -> list[float]:
    """Per-repetition ratios ``mine / ref`` (only repetitions where both succeeded)."""
    a, b = per_rep(mine, metric), per_rep(ref, ref_metric)
    return [a[rep] / b[rep] for rep in a if b.get(rep)]


def machine() -> dict[str, str]:
    """Where the numbers come from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "load": load,
    }


def versions() -> dict[str, str]:
    """Versions of the libraries measured."""
    out = {}
    for dist in ("sprites-async", "sprites-py", "aiohttp", "msgspec", "httpx", "websockets"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _status(runs: Sequence[Run]) -> tuple[int, int, str | None, bool]:
    """(ok runs, attempted runs, first error, unsupported)."""
    ok = sum(1 for r in runs if r.get("ok"))
    unsupported = bool(runs) and all(r.get("unsupported") for r in runs)
    error = next((str(r.get("error")) for r in runs if not r.get("ok")), None)
    return ok, len(runs), error, unsupported


def _cell(runs: Sequence[Run], metric: Metric) -> str:
    ok, total, _, unsupported = _status(runs)
    if not runs:
        return "not run"
    if unsupported:
        return "not run"
    spread = Spread.of(values(runs, metric))
    if spread is None:
        return "failed"
    cell = spread.fmt(metric.digits, metric.unit)
    if ok < total:
        cell += f" ({total - ok}/{total} failed)"
    return cell


def _target_row(
    spec: Spec, target: Target, results: Mapping[Key, Sequence[Run]], loops: Sequence[str] = ()
) -> list[str]:
    row = _target_row_on(spec, target, results)
    for loop in loops:
        other = _target_row_on(spec, target, results, loop)
        row += [other[2], other[3], other[4], other[5]] if spec.id != "B2d" else ["—"] * 4
    return row


def _target_row_on(
    spec: Spec, target: Target, results: Mapping[Key, Sequence[Run]], loop: str = "asyncio"
) -> list[str]:
    v = target.variant
    name = spec.id + (f" {v}" if v else "")
    if spec.id == "B2d":
        runs = results.get((spec.id, v, "decode"), [])
        ref_metric = next(m for m in spec.metrics if m.key == f"{target.reference}_us")
        ref_cell = _cell(runs, ref_metric)
        ours_cell = _cell(runs, target.metric)
        # The decode job measures its ratios round by round (side by side in
        # one process); each repetition contributes the median of those.
        rs = values(runs, Metric("ours_ratio", "", ""))
        official = _cell(runs, next(m for m in spec.metrics if m.key == "official_us"))
        official_ratio = values(runs, Metric("official_ratio", "", ""))
        return [
            name,
            f"decode \u2264 {target.limit:g}{TIMES} bare msgspec",
            ref_cell,
            ours_cell,
            *_ratio_cells(rs, target),
            official + _ratio_suffix(official_ratio),
            "—",
        ]
    ours = results.get((spec.id, v, on_loop(OURS, loop)), [])
    ref = results.get((spec.id, v, on_loop(target.reference, loop)), [])
    offa = results.get((spec.id, v, on_loop("official-async", loop)), [])
    offs = results.get((spec.id, v, on_loop("official-sync", loop)), [])
    if target.completion:
        return [
            name,
            "every exec completes",
            _completion(ref),
            _completion(ours),
            "—",
            _met_completion(ours),
            _completion(offa),
            _completion(offs),
        ]
    rs = ratios(ours, ref, target.metric, target.metric)
    return [
        name,
        target.describe(),
        _cell(ref, target.metric),
        _cell(ours, target.metric),
        *_ratio_cells(rs, target),
        _cell(offa, target.metric) + _ratio_suffix(ratios(offa, ref, target.metric, target.metric)),
        _cell(offs, target.metric) + _ratio_suffix(ratios(offs, ref, target.metric, target.metric)),
    ]


def _missed_note(spec: Spec, target: Target, row: Sequence[str]) -> str:
    note = FINDINGS.get((spec.id, target.variant, target.metric.key), "not analysed yet.")
    return f"- **{row[0]}**, {row[1]} (measured {row[4]}): {note}"


def _ratio_suffix(rs: Sequence[float]) -> str:
    spread = Spread.of(rs)
    return "" if spread is None else f" [{spread.median:.2f}{TIMES}]"


def _ratio_cells(rs: Sequence[float], target: Target) -> list[str]:
    spread = Spread.of(rs)
    if spread is None:
        return ["—", "not measured"]
    text = f"{spread.median:.2f}{TIMES}"
    if spread.n > 1:
        text += f" ({spread.low:.2f}{DASH}{spread.high:.2f}, n={spread.n})"
    return [text, "**yes**" if target.met(spread.median) else "**NO**"]


def _completion(runs: Sequence[Run]) -> str:
    ok, total, error, unsupported = _status(runs)
    if not runs or unsupported:
        return "not run"
    if ok == total:
        done = values(runs, Metric("completed", "", ""))
        return f"all done in {ok}/{total} runs ({int(min(done))} each)"
    return f"{ok}/{total} runs complete; {error}"


def _met_completion(runs: Sequence[Run]) -> str:
    ok, total, _, unsupported = _status(runs)
    if not runs or unsupported:
        return "not measured"
    return "**yes**" if ok == total else "**NO**"


def _header(spec: Spec, metric: Metric) -> str:
    if metric.key == "cpu_us_op":
        return f"CPU per {spec.op} (µs)"
    return f"{metric.label} ({metric.unit})"


def _row_clients(
    spec: Spec, results: Mapping[Key, Sequence[Run]], variant: str, extra: Sequence[str]
) -> list[str]:
    """Every client of the scenario on asyncio, then those run on each other loop."""
    out = list(spec.clients)
    for lp in extra:
        out += [
            on_loop(c, lp) for c in spec.clients if (spec.id, variant, on_loop(c, lp)) in results
        ]
    return out


def _cell_vs_raw(client: str, runs: Sequence[Run], raw: Sequence[Run], metric: Metric) -> str:
    """A figure, with its per-repetition ratio to raw unless it is raw's (or B2d's)."""
    cell = _cell(runs, metric)
    if loop_of(client)[0] in (RAW, "decode") or not raw:
        return cell
    spread = Spread.of(ratios(runs, raw, metric, metric))
    if spread is None:
        return cell
    text = f"{spread.median:.2f}{TIMES}"
    if spread.n > 1:
        text += f" ({spread.low:.2f}{DASH}{spread.high:.2f})"
    return f"{cell} [{text}]"


def summary(specs: Sequence[Spec], results: Mapping[Key, Sequence[Run]]) -> list[dict[str, Any]]:
    """For the JSON dump: every metric of every client, median and spread over
    repetitions, and for clients other than raw the per-repetition ratios to
    raw on the same loop (median, min, max, quartiles, n, and the ratios)."""
    out: list[dict[str, Any]] = []
    by_id = {spec.id: spec for spec in specs}
    for (scenario, variant, client), runs in sorted(results.items()):
        spec = by_id.get(scenario)
        if spec is None:
            continue
        base, loop = loop_of(client)
        raw = results.get((scenario, variant, on_loop(RAW, loop)), [])
        for metric in spec.metrics:
            vals = values(runs, metric)
            spread = Spread.of(vals)
            if spread is None:
                continue
            entry: dict[str, Any] = {
                "scenario": scenario,
                "variant": variant,
                "client": base,
                "loop": loop,
                "metric": metric.key,
                "unit": metric.unit,
                "value": spread.as_json(vals),
            }
            rs = ratios(runs, raw, metric, metric) if base not in (RAW, "decode") else []
            ratio = Spread.of(rs)
            if ratio is not None:
                entry["ratio_to_raw"] = {**ratio.as_json(rs), "per_rep": rs}
            out.append(entry)
    return out


def render(
    specs: Sequence[Spec],
    results: Mapping[Key, Sequence[Run]],
    *,
    command: str,
    quick: bool,
    reps: int,
    jobs: int,
    started: str,
    machine_info: Mapping[str, str],
    load_after: str,
    server_note: str,
    loops: Sequence[str] = ("asyncio",),
    scale: float = 1.0,
) -> str:
    """The whole RESULTS.md."""
    extra = [lp for lp in loops if lp != "asyncio"]
    lines: list[str] = []
    add = lines.append
    add("# sprites-async benchmarks")
    add("")
    add(
        f"Generated by `{command}` on {started} ({'quick smoke run' if quick else 'full run'}, "
        f"{reps} repetition{'s' if reps != 1 else ''})."
    )
    if jobs > 1:
        add("")
        add(f"**{jobs} workers ran at once: a smoke run; its timings are not comparable.**")
    add("")
    add(
        "Machine: "
        + "; ".join(
            [
                f"{machine_info['cores']} cores ({machine_info['cpu']})",
                machine_info["python"],
                machine_info["os"],
                f"load average {machine_info['load']} at start, {load_after} at end",
            ]
        )
        + "."
    )
    add("")
    add("Libraries: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".")
    add("")
    add(server_note)
    add("")
    add("## Targets")
    add("")
    add("Ratios are `sprites-async / raw` computed per repetition (in each repetition both run")
    add("twice, back to back in ABBA order, and the mean of the two runs counts), reported as")
    add("the median with the min" + DASH + "max over repetitions; a target is met when the median")
    add("ratio is within it. Cells show the median over repetitions (min" + DASH + "max). The")
    add("official SDK's medians are shown beside ours, with their median ratio to raw in brackets.")
    if extra:
        add(f"The {', '.join(extra)} columns are the same clients on that event loop, against raw")
        add("on the same loop (the server always runs on asyncio).")
    add("")
    columns = ["Scenario", "Target", "raw", "sprites-async", "ratio", "met?"]
    columns += ["official async", "official sync"]
    for lp in extra:
        columns += [f"raw ({lp})", f"sprites-async ({lp})", f"ratio ({lp})", f"met? ({lp})"]
    add("| " + " | ".join(columns) + " |")
    add("|" + "---|" * len(columns))
    missed: list[str] = []
    for spec in specs:
        for target in spec.targets:
            row = _target_row(spec, target, results, extra)
            add("| " + " | ".join(row) + " |")
            if row[5] == "**NO**":
                missed.append(_missed_note(spec, target, row))
            for i, lp in enumerate(extra):
                if row[11 + 4 * i] == "**NO**":
                    on = [f"{row[0]} on {lp}", row[1], "", "", row[10 + 4 * i]]
                    missed.append(_missed_note(spec, target, on))
    add("")
    add("## Missed targets: what limits them")
    add("")
    if missed:
        add("Profiling notes (`benchmarks/_findings.py`, written from cProfile/tracemalloc runs;")
        add("see that file's date). A missed target without a note has not been analysed.")
        add("")
        lines.extend(missed)
    else:
        add("Every target measured in this run was met.")
    add("")
    add("## Per scenario")
    for spec in specs:
        add("")
        add(f"### {spec.id}: {spec.title}")
        add("")
        params = ", ".join(f"{k}={v:,}" for k, v in spec.params(quick, scale).items())
        add(f"Parameters: {params}.")
        if spec.clients != ("decode",):
            add("")
            add(
                "In brackets beside each figure of a client other than raw: its ratio to raw on "
                "the same loop, the median of the per-repetition ratios (min" + DASH + "max)."
            )
        add("")
        header = [
            "variant",
            "implementation",
            *[_header(spec, m) for m in spec.metrics],
            "runs ok",
        ]
        add("| " + " | ".join(header) + " |")
        add("|" + "---|" * len(header))
        notes: list[str] = []
        for variant in spec.variants:
            for client in _row_clients(spec, results, variant, extra):
                runs = results.get((spec.id, variant, client), [])
                ok, total, error, unsupported = _status(runs)
                label = "all four decoders" if client == "decode" else client
                if not runs or unsupported:
                    cells = ["not run"] * len(spec.metrics)
                    reason = error or "not selected"
                    notes.append(f"- {variant or '—'} / {label}: not run — {reason}")
                else:
                    raw = results.get((spec.id, variant, on_loop(RAW, loop_of(client)[1])), [])
                    cells = [_cell_vs_raw(client, runs, raw, m) for m in spec.metrics]
                    if error is not None:
                        notes.append(f"- {variant or '—'} / {label}: failed — {error}")
                add("| " + " | ".join([variant or "—", label, *cells, f"{ok}/{total}"]) + " |")
        if notes:
            add("")
            lines.extend(notes)
        for note in (spec.notes, OFFICIAL_NOTES.get(spec.id, "")):
            if note:
                add("")
                add(note)
    add("")
    return "\n".join(lines)
