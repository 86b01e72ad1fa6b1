"""WebSocket plumbing shared by ``/exec`` and ``/control``.

Exec parameters (query string or control ``args``), the fault-aware frame
sink, the WebSocket attachment and the handling of client frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ._framing import (
    SPRITE_HOME,
    classify_stdin,
    exit_frame,
    parse_go_duration,
    parse_signal,
    stream_frame,
)
from ._procs import ProcSpec
from ._sessions import Attachment, Session
from ._state import FaultConfig

NON_TTY_MAX_RUN = 10.0
"""Default ``max_run_after_disconnect`` of non-TTY sessions (TTY: forever)."""
WS_MAX_MESSAGE = 64 * 1024 * 1024
WS_CLOSE_TIMEOUT = 2.0

_json = msgspec.json.Encoder()


class ArgError(ValueError):
    """A bad exec parameter (answered with 400 and the message as text)."""


@dataclass
class ExecParams:
    """Exec parameters after defaults (Section 3.2)."""

    cmd: list[str]
    path: str
    tty: bool
    stdin: bool
    cols: int
    rows: int
    env: list[str] | None
    dir: str
    max_run: float | None
    """Seconds the command may outlive its last client; None means forever."""
    session_id: str | None

    def spec(self) -> ProcSpec:
        """The process description for a new session."""
        return ProcSpec(
            argv=self.cmd or [self.path],
            path=self.path,
            env=self.env,
            dir=self.dir,
            tty=self.tty,
            cols=self.cols,
            rows=self.rows,
            stdin=self.stdin,
        )


def parse_bool(value: str | None, default: bool) -> bool:
    """Go's ``strconv.ParseBool`` spellings; anything else is the default."""
    if value is None:
        return default
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    return default


def _parse_size(value: str | None, default: int) -> int:
    try:
        n = int(value) if value else default
    except ValueError:
        return default
    return n if 0 < n < 65536 else default


def parse_exec_params(get_all: Callable[[str], list[str]]) -> ExecParams:
    """Read exec parameters through ``get_all(name) -> values``."""

    def first(name: str) -> str | None:
        values = get_all(name)
        return values[0] if values else None

    cmd = get_all("cmd") + get_all("cmd[]")
    tty = parse_bool(first("tty"), False)
    raw_max = first("max_run_after_disconnect")
    max_run: float | None
    if raw_max is None or raw_max == "":
        max_run = None if tty else NON_TTY_MAX_RUN
    else:
        try:
            max_run = parse_go_duration(raw_max)
        except ValueError:
            raise ArgError(f"invalid max_run_after_disconnect: {raw_max}") from None
        if max_run <= 0:
            max_run = None
    return ExecParams(
        cmd=cmd,
        path=first("path") or (cmd[0] if cmd else "bash"),
        tty=tty,
        stdin=parse_bool(first("stdin"), tty),
        cols=_parse_size(first("cols"), 80),
        rows=_parse_size(first("rows"), 24),
        env=get_all("env") or None,
        dir=first("dir") or SPRITE_HOME,
        max_run=max_run,
        session_id=first("id") or first("session_id"),
    )


def query_getter(query: Mapping[str, str]) -> Callable[[str], list[str]]:
    """``get_all`` over a multidict query string."""
    getall = getattr(query, "getall", None)

    def get(name: str) -> list[str]:
        if getall is not None:
            return list(getall(name, []))
        value = query.get(name)
        return [value] if value is not None else []

    return get


def args_getter(args: Mapping[str, Any]) -> Callable[[str], list[str]]:
    """``get_all`` over control ``args``: strings and string lists only (Section 5.2)."""

    def get(name: str) -> list[str]:
        value = args.get(name)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return []

    return get


class FrameSink:
    """Sends frames on a server WebSocket and applies the frame-count drop fault."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, faults: FaultConfig
    ) -> None:
        self.ws = ws
        self._transport = request.transport
        self._faults = faults
        self.sent = 0
        self.dropped = False

    def check_initial(self) -> None:
        """``drop_ws_after_frames == 0`` drops right after the upgrade."""
        if self._faults.drop_ws_after_frames == 0:
            self.drop()

    def drop(self) -> None:
        """Drop the TCP connection without a close frame (frames already sent still arrive)."""
        self.dropped = True
        if self._transport is not None:
            self._transport.close()

    def _before(self) -> None:
        if self.dropped or self.ws.closed:
            raise ConnectionResetError("exec socket is closed")

    def _after(self) -> None:
        self.sent += 1
        limit = self._faults.drop_ws_after_frames
        if limit is not None and self.sent >= limit:
            self.drop()

    async def send_bytes(self, data: bytes) -> None:
        """One binary frame."""
        self._before()
        await self.ws.send_bytes(data)
        self._after()

    async def send_text(self, text: str) -> None:
        """One text frame."""
        self._before()
        await self.ws.send_str(text)
        self._after()

    async def send_json(self, obj: Any) -> None:
        """One text frame holding JSON."""
        await self.send_text(_json.encode(obj).decode())

    async def close(self, code: int = 1000) -> None:
        """Close handshake, unless the connection was dropped."""
        if self.dropped:
            return
        with contextlib.suppress(Exception):
            await self.ws.close(code=code)


class WSAttachment(Attachment):
    """Session output to a WebSocket, framed as Section 3.4 describes."""

    def __init__(self, sink: FrameSink, *, tty: bool, faults: FaultConfig) -> None:
        super().__init__()
        self.sink = sink
        self.tty = tty
        self._faults = faults

    async def send_info(self, info: dict[str, Any]) -> None:
        """``session_info`` as a text frame."""
        await self.sink.send_json(info)

    async def send_output(self, stream: int, data: bytes) -> None:
        """Raw bytes in TTY mode, stream-prefixed otherwise."""
        await self.sink.send_bytes(data if self.tty else stream_frame(stream, data))

    async def send_event(self, event: dict[str, Any]) -> None:
        """A JSON notification."""
        await self.sink.send_json(event)

    async def send_exit(self, code: int) -> None:
        """Text ``exit`` then (non-TTY) the binary ``03 NN``; nothing with ``suppress_exit``."""
        if self._faults.suppress_exit:
            return
        await self.sink.send_json({"type": "exit", "exit_code": code})
        if not self.tty:
            await self.sink.send_bytes(exit_frame(code))


async def handle_client_frame(
    session: Session, msg_type: WSMsgType, data: Any, *, control: bool
) -> None:
    """Apply one client frame to a session: stdin, EOF, resize or signal."""
    if msg_type == WSMsgType.BINARY:
        if not session.stdin or not isinstance(data, bytes):
            return  # stdin not connected: read and discard (Section 3.7)
        if session.tty:
            # Keystrokes: 0x04 is Ctrl-D, never the EOF marker.
            await session.proc.write_stdin(data)
            return
        action, payload = classify_stdin(data, control=control)
        if action == "data":
            await session.proc.write_stdin(payload)
        elif action == "eof":
            session.proc.close_stdin()
        return
    if msg_type != WSMsgType.TEXT:
        return
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "resize" and session.tty:
        cols, rows = obj.get("cols"), obj.get("rows")
        if isinstance(cols, int) and isinstance(rows, int):
            session.cols, session.rows = cols, rows
            session.proc.resize(cols, rows)
    elif kind == "signal":
        name = obj.get("signal")
        if isinstance(name, (str, int)):
            try:
                sig = parse_signal(str(name))
            except ValueError:
                return
            await session.proc.send_signal(sig)
