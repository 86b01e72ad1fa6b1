"""Child processes of a run: the benchmark server and the measured workers.

Both are started in their own session (so a Ctrl-C in the terminal reaches
only the runner, which then stops them) and are always stopped by the
runner, on success, failure or interrupt. The server also exits by itself
if the runner dies without stopping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ._common import RESULT_MARK

ROOT = Path(__file__).resolve().parent.parent
_LIVE: set[subprocess.Popen[str]] = set()
"""Workers running right now (several at once with ``--jobs``)."""


def _stop(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the child's process group, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class BenchServer:
    """``python -m benchmarks._server`` as a context manager."""

    def __init__(self, *, seed: int, events: int, exit_linger: float = 5.0) -> None:
        self.args = [
            "--seed",
            str(seed),
            "--events",
            str(events),
            "--exit-linger",
            str(exit_linger),
        ]
        self.url = ""
        self.token = ""
        self.pid = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> BenchServer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._server", *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._proc = proc
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60.0)
            line = proc.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"the benchmark server did not start (exit {proc.poll()})")
            info = json.loads(line)
        except BaseException:
            _stop(proc, 2.0)
            raise
        self.url, self.token, self.pid = info["url"], info["token"], int(info["pid"])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            _stop(self._proc, 5.0)
            self._proc = None


def run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter; always returns a result dict."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._worker", json.dumps(job)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _LIVE.add(proc)
    started = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, 2.0)
        error = f"timed out after {timeout:g} s"
        return {"ok": False, "unsupported": False, "timeout": True, "error": error}
    finally:
        _stop(proc, 2.0)
        _LIVE.discard(proc)
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            result["process_s"] = time.perf_counter() - started
            return result
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "unsupported": False, "error": f"worker exited {proc.returncode}: {tail}"}


def stop_workers() -> None:
    """Stop every worker still running (on interrupt, from the main thread)."""
    for proc in list(_LIVE):
        _stop(proc, 1.0)
