"""Pure helpers of exec: request building, durations, signal names, results."""

from __future__ import annotations

import pytest

from sprites_async import CommandFailedError, ExecResult
from sprites_async._exec import DEFAULT_PATH, ExecRequest
from sprites_async._validation import go_duration, signal_name


def test_query_for_a_plain_command() -> None:
    req = ExecRequest.build(["sh", "-c", "echo hi"])
    assert req.query() == [
        ("cmd", "sh"),
        ("cmd", "-c"),
        ("cmd", "echo hi"),
        ("path", "sh"),
        ("stdin", "false"),
    ]


def test_query_and_control_args_for_a_tty() -> None:
    req = ExecRequest.build(
        ["bash"],
        tty=True,
        stdin=True,
        cols=120,
        env={"A": "b=c"},
        cwd="/srv",
        max_run_after_disconnect="5m",
    )
    query = req.query()
    assert ("tty", "true") in query
    assert ("cols", "120") in query
    assert ("rows", "24") in query
    assert ("dir", "/srv") in query
    assert ("env", "A=b=c") in query
    assert ("env", f"PATH={DEFAULT_PATH}") in query
    assert ("env", "TERM=xterm-256color") in query
    assert ("max_run_after_disconnect", "5m") in query
    args = req.control_args()
    assert args["tty"] == "true"
    assert args["rows"] == "24"
    assert args["stdin"] == "true"
    assert all(isinstance(v, (str, list)) for v in args.values())
    http = ExecRequest.build(["true"], tty=False).query(http=True)
    assert ("tty", "true") not in http


def test_user_env_wins_over_the_base() -> None:
    req = ExecRequest.build(["env"], env={"HOME": "/root", "PATH": "/x"})
    assert req.env is not None
    assert "HOME=/root" in req.env
    assert "PATH=/x" in req.env
    assert ExecRequest.build(["env"], env={}, env_replace=True).env == ()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (10, "10s"), (1.5, "1.5s"), (0.25, "0.25s"), (90, "90s")]
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(
    ("given", "name"), [("TERM", "TERM"), ("sigint", "INT"), (" SIGKILL ", "KILL"), (1, "HUP")]
)
def test_signal_names(given: str | int, name: str) -> None:
    assert signal_name(given) == name


@pytest.mark.parametrize("bad", ["NOPE", "SIG", 999, True, 1.5])
def test_bad_signal_names(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        signal_name(bad)  # type: ignore[arg-type]


def test_result_helpers() -> None:
    result = ExecResult(exit_code=0, stdout="é\n".encode(), stderr=b"\xff", argv=("x",))
    assert result.ok
    assert result.stdout_text == "é\n"
    assert result.stderr_text == "\ufffd"
    assert not result.truncated
    assert result.check() is result
    failed = ExecResult(exit_code=3, stdout_dropped=5, argv=("x", "y"))
    assert failed.truncated
    with pytest.raises(CommandFailedError, match="x y exited with status 3") as info:
        failed.check()
    assert info.value.result is failed
