"""Every example runs as written, end to end, in a subprocess with no token set."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sprites_async.emulator import Emulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def env_without_token() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("SPRITES_TOKEN", "SPRITE_TOKEN", "SPRITES_API_URL"):
        env.pop(var, None)
    return env


def run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env_without_token(),
        cwd=EXAMPLES.parent,
        timeout=timeout,
        check=False,
    )
    return done


def test_fleet_example() -> None:
    done = run_example("fleet.py")
    assert done.returncode == 0, done.stderr
    assert "No SPRITES_TOKEN set: using a local emulator" in done.stderr
    for phase in ("create", "wake", "job", "checkpoint"):
        assert f"{phase:<11} 20 ok" in done.stderr
    assert "broken + restored" in done.stdout
    assert ": verified" in done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("fleet-demo-")]
    assert len(rows) == 20
    assert all(row.split()[3] == "0" for row in rows)  # every job exited 0
    assert "done in" in done.stderr and "all good" in done.stderr


def test_web_backend_example_streams() -> None:
    done = run_example("web_backend.py", "--self-test")
    assert done.returncode == 0, done.stderr
    assert "HTTP 200 chunked" in done.stdout
    found = [re.match(r"\s+\+\s*([\d.]+)s\s+(.*)", line) for line in done.stdout.splitlines()]
    arrivals = [(float(m[1]), m[2]) for m in found if m]
    assert [text for _, text in arrivals] == [
        "line 0",
        "line 1",
        "line 2",
        "and a warning",
        "[exit 3]",
    ]
    # Streamed: "line 2" arrived well after "line 0" (the program sleeps between them).
    assert arrivals[2][0] - arrivals[0][0] > 0.4
    assert "deleting sandbox sprite" in done.stderr


def test_ci_matrix_example() -> None:
    done = run_example("ci_matrix.py")
    assert done.returncode == 0, done.stderr
    assert "setup ran, checkpointed as v1" in done.stderr
    results = [line.split()[:3] for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert sorted(results) == sorted(
        [str(s), m, "pass"] for s in range(3) for m in ("lenient", "strict")
    )
    assert "6/6 cells passed" in done.stderr


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # The real service's creation limit: the 11th creation waits a minute.
    with Emulator(exit_linger=0.0, creation_limit=10, creation_window=60.0) as emu:
        yield emu


def test_fleet_example_cleans_up_on_ctrl_c(emulator: Emulator) -> None:
    """With a token set, against a server that makes it wait: interrupt, then nothing is left."""
    env = env_without_token()
    env["SPRITES_API_URL"] = emulator.url
    env["SPRITES_TOKEN"] = emulator.token
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "fleet.py"), "--count", "15", "--prefix", "intr-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while len(emulator.state.sprites) < 10:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the example never created its sprites"
            time.sleep(0.05)
        time.sleep(0.2)  # now waiting for the creation limiter
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted: cleaning up" in err
    assert not [n for n in emulator.state.sprites if n.startswith("intr-")]
