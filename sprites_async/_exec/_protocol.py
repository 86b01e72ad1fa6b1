"""The exec protocol without I/O: frames and the time in; output, events, the exit status out.

:class:`ExecProtocol` reads what the server sends for one command, on a
direct ``/exec`` socket or inside an operation of a ``/control`` socket, and
decides what it means. It does no I/O, starts no task and reads no clock:
the caller passes each frame and the current time, and asks when to wake it
next (:meth:`ExecProtocol.next_deadline`). The asyncio session in
``_session.py`` drives it; tests drive it byte by byte with no event loop.

The rules it implements:

* Non-TTY: binary frames are ``stream id + payload`` (1 stdout, 2 stderr,
  3 exit); other stream ids and empty frames are ignored. The ``03`` frame
  is authoritative for the exit code.
* A text ``exit`` message without a TTY is a hint: output and the ``03``
  frame may still follow, so the code waits ``exit_grace`` seconds for them
  and only then settles on the text's code. If the connection ends first,
  the text's code stands.
* TTY: binary frames are raw terminal output (stdout); the text ``exit`` is
  the exit code at once.
* An attached session does not know its framing until ``session_info``
  says whether it has a TTY (an old server that omits the flag and was
  reached through the legacy ``?id=`` form is a TTY): binary frames wait
  until then.
* Over ``/control``: text frames starting ``control:`` are envelopes.
  ``op.error`` before the start was acknowledged (and before
  ``session_info``) is a refusal: nothing ran, the command may be sent again
  (``op.busy`` on another control socket, anything else on a direct one);
  ``op.error`` with ``op.not_active`` or after the start is ignored.
  After the exit is known the socket is read on until ``op.complete`` (up
  to ``op_complete_timeout`` seconds: without it the socket is not reused).
  An ``op.complete`` with no exit seen gives its ``exitCode``; with
  ``ok: false`` it is a failure (a start error when nothing exited), even
  without ``session_info``: never a reason to send the command again.
* A connection that ends (or fails, or goes silent for ``dead_after``
  seconds) before any exit indication leaves the exit status unknown. An
  exit code is never invented: no 0 without a frame or message saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sprites_async import _frames

from ._events import ExecEvent, PortEvent, SessionInfoEvent

__all__ = ["ExecProtocol", "Failure"]

Output = Callable[[int, bytes], None]
"""Where output goes: ``(stream id, bytes)``, 1 for stdout, 2 for stderr."""


def _ignore(*_: object) -> None:
    return None


class Failure:
    """Why a command has no exit code.

    ``kind`` is ``"unknown"`` (the command may have run; its exit status was
    lost), ``"refused"`` (the server refused to start it over ``/control``:
    nothing ran; ``direct`` asks for a direct socket rather than another
    control one) or ``"failed"`` (``op.complete`` with ``ok: false``;
    ``reason`` is the server's error text).
    """

    __slots__ = ("direct", "kind", "reason")

    def __init__(
        self, kind: Literal["unknown", "refused", "failed"], reason: str, *, direct: bool = False
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.direct = direct

    def __repr__(self) -> str:
        return f"Failure({self.kind!r}, {self.reason!r})"


class ExecProtocol:
    """The state of one command's socket, fed frame by frame (see the module docstring).

    Output goes to ``on_output`` and events (:class:`SessionInfoEvent`,
    :class:`PortEvent`) to ``on_event`` as the frames carrying them are
    fed, in order. Once :attr:`done`, either :attr:`exit_code` is set or
    :attr:`failure` says why not.

    Attributes:
        tty: Whether the session has a terminal (None until an attached
            session's ``session_info``).
        control: Whether the frames come from an operation of a ``/control`` socket.
        legacy: Attached through the legacy ``?id=`` form (a TTY unless told otherwise).
        session_id: From ``session_info`` (or the attached id).
        info: The first ``session_info``.
        exit_code: The exit code once known.
        failure: Why there is no exit code, once done without one.
        done: Whether the outcome is decided (nothing more to read).
        on_output: Receives ``(stream id, bytes)``; may be replaced at any time.
        on_event: Receives each session info and port event.
    """

    __slots__ = (
        "_acked",
        "_clock",
        "_complete",
        "_complete_deadline",
        "_early",
        "_grace_deadline",
        "_op_failed",
        "_text_exit",
        "control",
        "dead_after",
        "done",
        "early_bytes",
        "exit_code",
        "exit_grace",
        "failure",
        "info",
        "info_deadline",
        "last_rx",
        "legacy",
        "on_event",
        "on_output",
        "op_complete_timeout",
        "session_id",
        "tty",
    )

    def __init__(
        self,
        *,
        tty: bool | None,
        control: bool = False,
        legacy: bool = False,
        session_id: str | None = None,
        exit_grace: float = 1.5,
        op_complete_timeout: float = 2.0,
        dead_after: float | None = None,
        on_output: Output = _ignore,
        on_event: Callable[[ExecEvent], object] = _ignore,
    ) -> None:
        self.tty = tty
        self.control = control
        self.legacy = legacy
        self.session_id = session_id
        self.exit_grace = exit_grace
        self.op_complete_timeout = op_complete_timeout
        self.dead_after = dead_after
        self.on_output = on_output
        self.on_event = on_event
        self.info: SessionInfoEvent | None = None
        self.exit_code: int | None = None
        self.failure: Failure | None = None
        self.done = False
        self.last_rx = 0.0
        self._clock = 0.0
        self.info_deadline: float | None = None
        self.early_bytes = 0
        self._early: list[bytes] | None = None  # made if bytes come before session_info
        self._acked = False
        self._complete: _frames.Envelope | None = None
        self._op_failed: str | None = None
        self._text_exit: int | None = None
        self._grace_deadline: float | None = None
        self._complete_deadline: float | None = None

    # ------------------------------------------------------------------- input

    def connected(self, now: float, session_info_timeout: float | None = None) -> None:
        """The socket is open at ``now``; with a timeout, ``session_info`` is due by then."""
        self.last_rx = self._clock = now
        if session_info_timeout is not None and self.info is None:
            self.info_deadline = now + session_info_timeout

    def receive_bytes(self, data: bytes, now: float) -> None:
        """A binary frame arrived."""
        self.last_rx = self._clock = now
        self._on_binary(data)

    def receive_text(self, text: str, now: float) -> None:
        """A text frame arrived."""
        self.last_rx = self._clock = now
        if self.control:
            env = _frames.decode_envelope(text)
            if env is not None:
                self._on_envelope(env)
                return
        msg = _frames.decode_message(text)
        if isinstance(msg, _frames.SessionInfoMessage):
            self._on_session_info(msg)
        elif isinstance(msg, _frames.ExitMessage):
            self._on_text_exit(msg.value, now)
        elif isinstance(msg, _frames.PortMessage):
            self.on_event(
                PortEvent(
                    opened=isinstance(msg, _frames.PortOpenedMessage),
                    port=msg.port,
                    address=msg.address,
                    pid=msg.pid,
                )
            )

    def receive_eof(self, close_code: int | None = None, *, by_peer: bool = True) -> None:
        """The connection ended: closed by the server (``by_peer``) or by us.

        Settles on what is known: an exit seen (a text exit's code if no
        frame came), else a completed control operation, else unknown.
        """
        how = f"closed (code {close_code})" if by_peer else "ended"
        self._settle(f"the connection {how} before the exit status arrived")

    def connection_lost(self, reason: str) -> None:
        """The connection failed or was given up on: unless decided, the exit status is unknown.

        Over ``/control`` that holds even when the exit frame came and only
        ``op.complete`` was missing: a socket that fails (rather than closes)
        there is not trusted to have delivered the right frame.
        """
        self._decide(Failure("unknown", reason))

    def timeout(self, now: float) -> None:
        """Called at (or after) :meth:`next_deadline`: an exit grace or op.complete wait ended."""
        self._clock = now
        grace = self._grace_deadline
        if grace is not None and now >= grace:
            self._settle_from_text()
        complete = self._complete_deadline
        if complete is not None and now >= complete and not self.done:
            # The exit is known; op.complete never came (the socket is not reused).
            self._settle("op.complete never came")

    def touch(self, now: float) -> None:
        """Count ``now`` as activity: not reading on purpose is not a dead peer."""
        self.last_rx = self._clock = now

    # ------------------------------------------------------------------ output

    def next_deadline(self) -> float | None:
        """When :meth:`timeout` must be called next (exit grace, op.complete), if ever."""
        a, b = self._grace_deadline, self._complete_deadline
        if a is None:
            return b
        if b is None:
            return a
        return min(a, b)

    def dead_deadline(self) -> float | None:
        """When the peer counts as dead if nothing arrives before (None: never)."""
        return None if self.dead_after is None else self.last_rx + self.dead_after

    def is_dead(self, now: float) -> bool:
        """Whether nothing arrived for ``dead_after`` seconds up to ``now``."""
        return self.dead_after is not None and now - self.last_rx >= self.dead_after

    @property
    def reusable(self) -> bool:
        """Over ``/control``: the operation completed cleanly, so its socket may serve another."""
        return self._complete is not None and self._op_failed is None

    # --------------------------------------------------------------- internals

    def _on_binary(self, data: bytes) -> None:
        tty = self.tty
        if tty is None:  # attached, session_info not seen yet: framing unknown
            if self._early is None:
                self._early = []
            self._early.append(data)
            self.early_bytes += len(data)
            return
        if tty:
            if data:
                self.on_output(1, data)
            return
        frame = _frames.parse_frame(data)
        if frame is None:
            return
        stream, payload = frame
        if stream == _frames.EXIT:
            code = _frames.exit_code_from_payload(payload)
            if code is not None:
                self._set_exit(code)
        elif payload:
            self.on_output(stream, payload)

    def _on_text_exit(self, code: int | None, now: float) -> None:
        if code is None or self.exit_code is not None:
            return
        self._text_exit = code
        if self.tty:
            self._set_exit(code)
        elif self._grace_deadline is None:
            self._grace_deadline = now + self.exit_grace

    def _on_session_info(self, msg: _frames.SessionInfoMessage) -> None:
        sid = None if msg.session_id is None else str(msg.session_id)
        if sid is not None:
            self.session_id = sid
        if self.tty is None:
            # Old servers did not report the flag; the legacy attach form is TTY.
            self.tty = msg.tty if msg.tty is not None else self.legacy
        info = SessionInfoEvent(
            session_id=sid,
            command=msg.command,
            created=msg.created,
            tty=bool(msg.tty) if msg.tty is not None else bool(self.tty),
            is_owner=msg.is_owner,
        )
        if self.info is None:
            self.info = info
            self.info_deadline = None
        self.on_event(info)
        early, self._early = self._early, None
        self.early_bytes = 0
        for data in early or ():
            self._on_binary(data)

    def _on_envelope(self, env: _frames.Envelope) -> None:
        kind = env.type
        if kind == "op.ack":
            self._acked = True
        elif kind == "op.complete":
            self._complete = env
            if env.args.get("ok") is False:
                self._op_failed = env.error_text
            self._settle("the operation completed without an exit status")
        elif kind == "op.error":
            code = env.args.get("code")
            if not self._acked and self.info is None and code != "op.not_active":
                reason = f"control op refused: {env.error_text}"
                self._decide(Failure("refused", reason, direct=code != "op.busy"))

    def _settle(self, unknown: str) -> None:
        """Decide from what is known, in order: exit seen, op.complete, else unknown."""
        if self._text_exit is not None and self.exit_code is None:
            self._settle_from_text()
        if self.exit_code is not None:
            self._decide(None)
            return
        env = self._complete
        if env is None:
            self._decide(Failure("unknown", unknown))
        elif self._op_failed is not None:
            self._decide(Failure("failed", self._op_failed))
        else:
            code = env.args.get("exitCode")
            if isinstance(code, int) and not isinstance(code, bool):
                self.exit_code = code
                self._decide(None)
            else:
                self._decide(Failure("unknown", "the operation completed without an exit status"))

    def _settle_from_text(self) -> None:
        if self.exit_code is None and self._text_exit is not None:
            self._set_exit(self._text_exit)
        self._grace_deadline = None

    def _set_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._grace_deadline = None
        if not self.control:
            self._decide(None)
        elif self._complete is None and self._complete_deadline is None:
            # The exit frame comes before op.complete; the socket is read on
            # until it arrives, since it alone says the socket is idle again.
            self._complete_deadline = self._clock + self.op_complete_timeout

    def _decide(self, failure: Failure | None) -> None:
        if self.done:
            return
        if failure is None and self.exit_code is None:
            failure = Failure("unknown", "no exit status")
        self.failure = failure
        self.done = True
        self._grace_deadline = self._complete_deadline = None
