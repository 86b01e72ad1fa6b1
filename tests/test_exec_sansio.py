"""ExecProtocol fed frame by frame with no event loop: every exit-code rule, no socket.

Each rule here is also tested through a socket (test_exec_protocol.py,
test_control_pool.py, test_exec_emulator.py); these tests pin the rule
itself, with the time passed in by hand.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from sprites_async._exec import ExecEvent, PortEvent, SessionInfoEvent
from sprites_async._exec._protocol import ExecProtocol

GRACE = 1.5
COMPLETE = 2.0


class Feed:
    """An ExecProtocol, what it produced, and a hand-driven clock."""

    def __init__(self, **options: Any) -> None:
        self.out: list[tuple[int, bytes]] = []
        self.events: list[ExecEvent] = []
        self.order: list[str] = []
        options.setdefault("tty", False)
        self.p = ExecProtocol(
            exit_grace=GRACE,
            op_complete_timeout=COMPLETE,
            on_output=self._output,
            on_event=self._event,
            **options,
        )
        self.now = 100.0

    def _output(self, stream: int, data: bytes) -> None:
        self.out.append((stream, data))
        self.order.append("output")

    def _event(self, event: ExecEvent) -> None:
        self.events.append(event)
        self.order.append(type(event).__name__)

    def text(self, obj: Any) -> None:
        self.p.receive_text(
            obj if isinstance(obj, str) else msgspec.json.encode(obj).decode(), self.now
        )

    def control(self, obj: Any) -> None:
        self.text("control:" + msgspec.json.encode(obj).decode())

    def frame(self, data: bytes) -> None:
        self.p.receive_bytes(data, self.now)

    def info(self, sid: Any = "42", **extra: Any) -> None:
        self.text({"type": "session_info", "session_id": sid, "command": "cmd", **extra})

    def exit_text(self, code: Any) -> None:
        self.text({"type": "exit", "exit_code": code})

    def at(self, now: float) -> None:
        """Move the clock and wake the protocol, as the read loop does on a receive timeout."""
        self.now = now
        self.p.timeout(now)

    def stdout(self) -> bytes:
        return b"".join(data for stream, data in self.out if stream == 1)

    def stderr(self) -> bytes:
        return b"".join(data for stream, data in self.out if stream == 2)

    @property
    def reason(self) -> str:
        assert self.p.failure is not None
        return self.p.failure.reason


# ---------------------------------------------------------------- direct, non-TTY


def test_exit_text_waits_for_trailing_output_and_the_frame() -> None:
    f = Feed()
    f.info()
    f.frame(b"\x01early\n")
    f.exit_text(7)
    assert (f.p.done, f.p.exit_code) == (False, None)
    assert f.p.next_deadline() == pytest.approx(100.0 + GRACE)
    f.frame(b"\x01late\n")
    f.frame(b"\x02late err\n")
    f.frame(b"\x03\x07")
    assert f.p.done and f.p.failure is None
    assert f.p.exit_code == 7
    assert (f.stdout(), f.stderr()) == (b"early\nlate\n", b"late err\n")
    assert f.p.session_id == "42"
    assert f.p.next_deadline() is None


def test_exit_frame_wins_over_text() -> None:
    f = Feed()
    f.info()
    f.exit_text(1)
    f.frame(b"\x03\x03")
    assert (f.p.done, f.p.exit_code) == (True, 3)


def test_without_the_frame_the_text_code_stands_after_the_grace() -> None:
    f = Feed()
    f.info()
    f.frame(b"\x01x")
    f.exit_text(5)
    f.at(100.0 + GRACE - 0.01)  # a wake-up a little early changes nothing
    assert not f.p.done
    f.now = 101.0
    f.exit_text(9)  # a second text exit neither extends the grace nor changes the code
    assert f.p.next_deadline() == pytest.approx(100.0 + GRACE)
    f.at(100.0 + GRACE)
    assert (f.p.done, f.p.exit_code, f.stdout()) == (True, 9, b"x")


def test_text_exit_then_close_without_the_frame() -> None:
    f = Feed()
    f.info()
    f.exit_text(4)
    f.p.receive_eof(None)
    assert (f.p.done, f.p.exit_code, f.p.failure) == (True, 4, None)


def test_the_exit_frame_alone_decides_at_once() -> None:
    f = Feed()
    f.info()
    f.frame(b"\x03\xff")
    assert (f.p.done, f.p.exit_code) == (True, 255)
    assert f.p.next_deadline() is None


@pytest.mark.parametrize(
    ("frame", "code"),
    [(b"\x03\x00\x00\x00\x07", 7), (b"\x03\x00\x00\x01\x00", 255), (b"\x03\x02\x09", 2)],
)
def test_exit_frame_layouts(frame: bytes, code: int) -> None:
    f = Feed()
    f.frame(frame)
    assert f.p.exit_code == code


def test_an_exit_frame_without_a_code_is_no_exit() -> None:
    f = Feed()
    f.frame(b"\x03")
    assert not f.p.done
    f.p.receive_eof(1000)
    assert f.p.exit_code is None and f.p.failure is not None


def test_dropped_mid_output_is_unknown_never_zero() -> None:
    f = Feed()
    f.info(sid="1847")
    f.frame(b"\x01partial")
    f.p.connection_lost("the connection failed: reset")
    assert f.p.done and f.p.exit_code is None
    assert f.p.failure is not None and f.p.failure.kind == "unknown"
    assert f.reason == "the connection failed: reset"
    assert f.p.session_id == "1847"


def test_clean_close_without_exit_is_still_unknown() -> None:
    f = Feed()
    f.info()
    f.p.receive_eof(1000)
    assert f.p.exit_code is None
    assert f.reason == "the connection closed (code 1000) before the exit status arrived"


def test_a_connection_ended_by_us_says_so() -> None:
    f = Feed()
    f.p.receive_eof(None, by_peer=False)
    assert f.reason == "the connection ended before the exit status arrived"


def test_nothing_changes_a_decided_outcome() -> None:
    f = Feed()
    f.frame(b"\x03\x00")
    f.p.connection_lost("late failure")
    f.p.receive_eof(1006)
    assert (f.p.exit_code, f.p.failure) == (0, None)


def test_noise_is_ignored() -> None:
    f = Feed()
    f.text({"type": "debug", "msg": "session_created cmd=bash", "pid": 332})
    f.info(sid=332)  # an old server's integer id
    f.text("not json at all")
    f.text({"type": "something_new", "x": 1})
    f.text({"type": "exit", "exit_code": None})  # no code: not an exit
    f.frame(b"")
    f.frame(b"\x09unknown stream")
    f.frame(b"\x00stdin echoed?")
    f.frame(b"\x01")
    f.frame(b"\x01real")
    assert not f.p.done
    f.frame(b"\x03\x00")
    assert (f.p.exit_code, f.out) == (0, [(1, b"real")])
    assert f.p.session_id == "332"


def test_the_old_exit_key_is_read() -> None:
    f = Feed(tty=True)
    f.text({"type": "exit", "code": 6})
    assert f.p.exit_code == 6


def test_utf8_split_byte_by_byte_keeps_order_across_streams() -> None:
    text = "héllo 🎉".encode()
    f = Feed()
    f.info()
    for i in range(len(text)):
        f.frame(b"\x01" + text[i : i + 1])
        f.frame(bytes([2, 65 + i]))
    f.frame(b"\x03\x00")
    assert f.stdout().decode() == "héllo 🎉"
    assert f.stderr() == bytes(range(65, 65 + len(text)))
    assert [stream for stream, _ in f.out[:4]] == [1, 2, 1, 2]


def test_each_message_is_one_frame_and_payloads_are_passed_whole() -> None:
    f = Feed()
    big = bytes(range(256)) * 64
    f.frame(b"\x01" + big)
    # A payload split across two messages is not rejoined: the second
    # message's first byte is its stream id ("l" is no stream: ignored).
    f.frame(b"\x01he")
    f.frame(b"llo")
    assert f.out == [(1, big), (1, b"he")]


def test_control_envelopes_mean_nothing_on_a_direct_socket() -> None:
    f = Feed()
    f.control({"type": "op.complete", "args": {"ok": True, "exitCode": 0}})
    f.control({"type": "op.error", "args": {"code": "op.busy"}})
    assert not f.p.done and f.p.exit_code is None


# ---------------------------------------------------------------------------- TTY


def test_tty_frames_are_raw_and_the_text_exit_decides() -> None:
    f = Feed(tty=True)
    f.info(tty=True)
    f.frame(b"\x03raw bytes that look like an exit frame")
    f.frame(b"\x01more")
    f.frame(b"")
    assert not f.p.done
    assert f.out == [(1, b"\x03raw bytes that look like an exit frame"), (1, b"\x01more")]
    f.exit_text(3)
    assert (f.p.done, f.p.exit_code) == (True, 3)
    assert f.p.next_deadline() is None  # no grace with a TTY


def test_tty_close_without_exit_is_unknown() -> None:
    f = Feed(tty=True)
    f.frame(b"output")
    f.p.receive_eof(1000)
    assert f.p.exit_code is None and f.p.failure is not None


# ------------------------------------------------------------------------- attach


def test_attach_holds_frames_until_session_info_gives_the_framing() -> None:
    f = Feed(tty=None, session_id="77")
    f.frame(b"\x01scroll")
    f.frame(b"\x02back")
    assert f.out == [] and f.p.early_bytes == 12
    f.info(sid="77", tty=False)
    assert f.p.tty is False and f.p.early_bytes == 0
    assert f.out == [(1, b"scroll"), (2, b"back")]
    # The session info comes first, then the output it released.
    assert f.order == ["SessionInfoEvent", "output", "output"]


@pytest.mark.parametrize(("legacy", "tty"), [(True, True), (False, False)])
def test_without_a_tty_flag_the_legacy_attach_is_a_terminal(legacy: bool, tty: bool) -> None:
    f = Feed(tty=None, legacy=legacy)
    f.frame(b"\x01abc")
    f.text({"type": "session_info", "session_id": 5})
    assert f.p.tty is tty
    assert f.out == ([(1, b"\x01abc")] if tty else [(1, b"abc")])
    info = f.events[0]
    assert isinstance(info, SessionInfoEvent) and info.tty is tty


def test_the_session_info_deadline() -> None:
    f = Feed(tty=None)
    f.p.connected(50.0, 10.0)
    due = f.p.info_deadline
    assert due == 60.0
    f.info()
    assert f.p.info_deadline is None
    assert f.p.info is not None and f.p.info.session_id == "42"


# ------------------------------------------------------------------------- events


def test_events_come_in_order_with_their_fields() -> None:
    f = Feed()
    f.info(sid=9, is_owner=True, created=1700000000)
    f.text({"type": "port_opened", "port": 8080, "address": "10.0.0.1", "pid": 12})
    f.frame(b"\x01x")
    f.text({"type": "port_closed", "port": 8080, "address": "10.0.0.1", "pid": 12})
    f.info(sid=9)  # a repeated session_info is an event, not a new identity
    assert [type(e).__name__ for e in f.events] == [
        "SessionInfoEvent",
        "PortEvent",
        "PortEvent",
        "SessionInfoEvent",
    ]
    first = f.events[0]
    assert isinstance(first, SessionInfoEvent)
    assert (first.session_id, first.is_owner, first.created) == ("9", True, 1700000000)
    assert f.p.info is first
    assert f.events[1] == PortEvent(opened=True, port=8080, address="10.0.0.1", pid=12)
    assert f.events[2] == PortEvent(opened=False, port=8080, address="10.0.0.1", pid=12)


# ---------------------------------------------------------------------- dead peer


def test_dead_after_counts_from_the_last_frame() -> None:
    f = Feed(dead_after=45.0)
    f.p.connected(0.0)
    assert f.p.dead_deadline() == 45.0
    f.now = 30.0
    f.frame(b"\x01alive")
    assert f.p.dead_deadline() == 75.0
    assert not f.p.is_dead(74.9)
    assert f.p.is_dead(75.0)
    f.p.touch(80.0)  # a pong, or a reader that paused on purpose
    assert not f.p.is_dead(100.0)


def test_without_dead_after_the_peer_is_never_dead() -> None:
    f = Feed(dead_after=None)
    assert f.p.dead_deadline() is None
    assert not f.p.is_dead(1e9)


# ------------------------------------------------------------------------ control


def control_feed() -> Feed:
    f = Feed(control=True)
    f.control({"type": "op.ack", "id": ""})
    f.info()
    return f


def test_control_exit_frame_then_op_complete() -> None:
    f = control_feed()
    f.frame(b"\x01hi\n")
    f.exit_text(3)
    f.frame(b"\x03\x03")
    # The exit is known, but the socket is read on until op.complete.
    assert f.p.exit_code == 3 and not f.p.done
    assert f.p.next_deadline() == pytest.approx(100.0 + COMPLETE)
    f.control({"type": "op.complete", "id": "", "args": {"ok": True, "exitCode": 3}})
    assert (f.p.done, f.p.exit_code, f.p.reusable) == (True, 3, True)
    assert f.stdout() == b"hi\n"


def test_control_op_complete_never_comes() -> None:
    f = control_feed()
    f.frame(b"\x03\x02")
    f.at(100.0 + COMPLETE - 0.5)
    assert not f.p.done
    f.at(100.0 + COMPLETE)
    assert (f.p.done, f.p.exit_code, f.p.reusable) == (True, 2, False)


def test_control_text_exit_grace_then_op_complete_wait() -> None:
    f = control_feed()
    f.exit_text(4)
    f.at(100.0 + GRACE)
    assert f.p.exit_code == 4 and not f.p.done
    assert f.p.next_deadline() == pytest.approx(100.0 + GRACE + COMPLETE)
    f.at(100.0 + GRACE + COMPLETE)
    assert (f.p.done, f.p.exit_code) == (True, 4)


def test_control_text_exit_then_op_complete_keeps_the_text_code() -> None:
    f = control_feed()
    f.exit_text(4)
    f.control({"type": "op.complete", "args": {"ok": True, "exitCode": 9}})
    assert (f.p.done, f.p.exit_code) == (True, 4)


def test_control_exit_code_from_op_complete_when_the_stream_has_none() -> None:
    f = control_feed()
    f.control({"type": "op.complete", "args": {"ok": True, "exitCode": 7}})
    assert (f.p.done, f.p.exit_code, f.p.failure) == (True, 7, None)


@pytest.mark.parametrize("code", [None, True, "0", 1.0])
def test_control_op_complete_without_an_integer_exit_code_is_unknown(code: Any) -> None:
    args: dict[str, Any] = {"ok": True}
    if code is not None:
        args["exitCode"] = code
    f = control_feed()
    f.control({"type": "op.complete", "args": args})
    assert f.p.done and f.p.exit_code is None
    assert f.reason == "the operation completed without an exit status"


def test_control_failed_op_complete_is_a_failure_not_reused() -> None:
    f = control_feed()
    f.control({"type": "op.complete", "args": {"ok": False, "error": "oops"}})
    assert f.p.done and f.p.exit_code is None
    assert f.p.failure is not None and f.p.failure.kind == "failed"
    assert f.reason == "oops"
    assert not f.p.reusable


def test_control_exit_seen_wins_over_a_failed_op_complete() -> None:
    f = control_feed()
    f.frame(b"\x03\x01")
    f.control({"type": "op.complete", "args": {"ok": False, "error": "oops"}})
    assert (f.p.exit_code, f.p.failure, f.p.reusable) == (1, None, False)


@pytest.mark.parametrize(
    ("code", "direct"), [("op.busy", False), ("op.not_found", True), (None, True)]
)
def test_control_refused_start(code: str | None, direct: bool) -> None:
    f = Feed(control=True)
    args = {"message": "no"} if code is None else {"code": code, "message": "no"}
    f.control({"type": "op.error", "id": "", "op": "exec", "args": args})
    assert f.p.done and f.p.exit_code is None
    assert f.p.failure is not None
    assert (f.p.failure.kind, f.p.failure.direct) == ("refused", direct)
    assert f.reason == "control op refused: no"


@pytest.mark.parametrize("when", ["acked", "info", "not_active"])
def test_control_op_error_after_the_start_is_ignored(when: str) -> None:
    f = Feed(control=True)
    if when == "acked":
        f.control({"type": "op.ack"})
    elif when == "info":
        f.info()
    code = "op.not_active" if when == "not_active" else "op.busy"
    f.control({"type": "op.error", "args": {"code": code, "message": "x"}})
    assert not f.p.done
    f.frame(b"\x03\x00")
    f.control({"type": "op.complete", "args": {"ok": True}})
    assert (f.p.exit_code, f.p.reusable) == (0, True)


def test_control_close_before_exit_is_unknown_never_a_refusal() -> None:
    f = Feed(control=True)
    f.p.receive_eof(1006)
    assert f.p.failure is not None and f.p.failure.kind == "unknown"


def test_control_close_after_the_exit_frame_keeps_the_code_but_a_failure_does_not() -> None:
    closed = control_feed()
    closed.frame(b"\x03\x05")
    closed.p.receive_eof(1000)
    assert (closed.p.exit_code, closed.p.failure, closed.p.reusable) == (5, None, False)
    failed = control_feed()
    failed.frame(b"\x03\x05")
    failed.p.connection_lost("the connection failed: reset")
    assert failed.p.failure is not None and failed.p.failure.kind == "unknown"


def test_an_unreadable_envelope_is_never_operation_output() -> None:
    f = control_feed()
    f.text("control:{not json")
    f.text("control:[1, 2]")
    assert not f.p.done and f.out == [] and len(f.events) == 1


def test_the_protocol_module_does_no_io_and_reads_no_clock() -> None:
    import ast
    import inspect

    import sprites_async._exec._protocol as module

    imported: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "aiohttp", "anyio", "time", "socket", "selectors"}
