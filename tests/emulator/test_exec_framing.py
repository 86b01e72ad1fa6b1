"""Pure helpers of the exec wire format: durations, signals, stdin leniency, exit bytes."""

from __future__ import annotations

import signal

import pytest

from sprites_async.emulator._framing import (
    classify_stdin,
    exit_frame,
    exit_status,
    parse_go_duration,
    parse_signal,
)
from sprites_async.emulator._wsio import ArgError, args_getter, parse_exec_params


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
        ("5.0s", 5.0),
        ("10", 10.0),
        ("2h45m30.5s", 9930.5),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1h30", "ten"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_signal_names() -> None:
    assert parse_signal("TERM") is signal.SIGTERM
    assert parse_signal("SIGTERM") is signal.SIGTERM
    assert parse_signal("sigint") is signal.SIGINT
    assert parse_signal("9") is signal.SIGKILL
    with pytest.raises(ValueError):
        parse_signal("NOPE")


def test_exit_status() -> None:
    assert exit_status(0) == 0
    assert exit_status(7) == 7
    assert exit_status(-15) == 143
    assert exit_status(-9) == 137
    assert exit_status(300) == 255
    assert exit_frame(143) == b"\x03\x8f"
    assert exit_frame(-1) == b"\x03\x00"


def test_stdin_on_exec() -> None:
    assert classify_stdin(b"\x00abc", control=False) == ("data", b"abc")
    assert classify_stdin(b"abc", control=False) == ("data", b"abc")
    assert classify_stdin(b"\x04", control=False) == ("eof", b"")
    assert classify_stdin(b"\x04tail", control=False) == ("eof", b"")
    assert classify_stdin(b"\x00", control=False) == ("ignore", b"")
    assert classify_stdin(b"", control=False) == ("ignore", b"")


def test_stdin_on_control() -> None:
    assert classify_stdin(b"\x04", control=True) == ("eof", b"")
    assert classify_stdin(b"\x04tail", control=True) == ("data", b"\x04tail")
    assert classify_stdin(b"\x00\x00x", control=True) == ("data", b"\x00x")
    assert classify_stdin(b"raw", control=True) == ("data", b"raw")


def test_exec_params_defaults() -> None:
    p = parse_exec_params(args_getter({"cmd": ["ls", "-l"]}))
    assert (p.path, p.tty, p.stdin, p.cols, p.rows, p.dir, p.max_run) == (
        "ls",
        False,
        False,
        80,
        24,
        "/home/sprite",
        10.0,
    )
    p = parse_exec_params(args_getter({"cmd": "bash", "tty": "true", "rows": "40"}))
    assert (p.cmd, p.tty, p.stdin, p.rows, p.max_run) == (["bash"], True, True, 40, None)
    p = parse_exec_params(
        args_getter({"cmd[]": ["a"], "max_run_after_disconnect": "1m", "tty": True})
    )
    assert (p.cmd, p.tty, p.max_run) == (["a"], False, 60.0)
    assert (
        parse_exec_params(args_getter({"cmd": "x", "max_run_after_disconnect": "0"})).max_run
        is None
    )
    assert parse_exec_params(args_getter({"id": "12"})).session_id == "12"
    assert parse_exec_params(args_getter({"session_id": "13"})).session_id == "13"
    with pytest.raises(ArgError):
        parse_exec_params(args_getter({"cmd": "x", "max_run_after_disconnect": "soon"}))
