"""Every example runs as written, end to end, in a subprocess with no token set."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sprites_async.emulator import Emulator
from tests._examples import EXAMPLES, env_without_token, run_example


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


SILENT_CODE = b"""\
import time
print("started", flush=True)
time.sleep(120)
"""


def test_web_backend_stops_the_program_when_the_client_hangs_up() -> None:
    """A silent program must not outlive its HTTP client (until its 30 s timeout)."""
    with Emulator(exit_linger=0.0) as emulator:
        env = env_without_token()
        env["SPRITES_API_URL"] = emulator.url
        env["SPRITES_TOKEN"] = emulator.token
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "web_backend.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=EXAMPLES.parent,
        )
        try:
            assert proc.stderr is not None
            url = None
            for line in proc.stderr:
                found = re.search(r"listening on http://([\d.]+):(\d+)", line)
                if found:
                    url = (found[1], int(found[2]))
                    break
            assert url is not None, proc.communicate(timeout=30)
            (sprite,) = [n for n in emulator.state.sprites if n.startswith("web-sandbox-")]
            sessions = emulator.state.sessions

            with socket.create_connection(url, timeout=30) as conn:
                conn.sendall(
                    b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(SILENT_CODE), SILENT_CODE)
                )
                got = b""
                while b"started" not in got:
                    piece = conn.recv(4096)
                    assert piece, got
                    got += piece
                assert sessions.list(sprite), "the program should be running"
            # Hung up: the program goes well before its 30 s timeout.
            deadline = time.monotonic() + 10
            while sessions.list(sprite):
                assert time.monotonic() < deadline, "the program outlived its client"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert "Traceback" not in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
