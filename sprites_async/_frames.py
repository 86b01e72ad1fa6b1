"""The exec wire format, without any I/O: binary frames, JSON text messages, control envelopes.

Everything here is a pure function or a small state machine over bytes and
strings, so it can be tested by feeding bytes:

* non-TTY binary frames: one stream-id byte, then the payload
  (:func:`parse_frame`, :func:`exit_code_from_payload`, :func:`stdin_frame`);
* text messages, a tagged union on ``type`` (:func:`decode_message`);
* control envelopes, ``control:{json}`` text frames (:func:`decode_envelope`);
* incremental UTF-8 decoding for output split across frames (:class:`Utf8Decoder`);
* the HTTP exec body, frames written back to back (:class:`HttpExecParser`).

In TTY mode binary frames carry raw terminal bytes in both directions and
are not parsed at all.
"""

from __future__ import annotations

import codecs
from typing import Any

import msgspec

from ._models import JSONDecoder, decode_any

__all__ = [
    "CONTROL_PREFIX",
    "EOF_FRAME",
    "EXIT",
    "STDERR",
    "STDIN",
    "STDIN_EOF",
    "STDOUT",
    "DebugMessage",
    "Envelope",
    "ExitMessage",
    "HttpExecParser",
    "Message",
    "PortClosedMessage",
    "PortMessage",
    "PortOpenedMessage",
    "SessionInfoMessage",
    "Utf8Decoder",
    "decode_envelope",
    "decode_message",
    "encode_envelope",
    "exit_code_from_payload",
    "parse_frame",
    "resize_message",
    "signal_message",
    "stdin_frame",
]

STDIN = 0x00
STDOUT = 0x01
STDERR = 0x02
EXIT = 0x03
STDIN_EOF = 0x04

EOF_FRAME = b"\x04"
CONTROL_PREFIX = "control:"

# Stream ids the server may send; a frame with any other first byte is
# ignored, never taken for output (newer servers may add streams).
_SERVER_STREAMS = frozenset({STDOUT, STDERR, EXIT})


# ------------------------------------------------------------------ binary frames


def stdin_frame(data: bytes) -> bytes:
    """A non-TTY stdin frame: ``00`` + data."""
    return b"\x00" + data


def parse_frame(frame: bytes) -> tuple[int, bytes] | None:
    """Split a non-TTY server frame into ``(stream_id, payload)``.

    Returns None for frames a client must ignore: empty frames and unknown
    stream ids. An output frame with an empty payload is returned as is (the
    caller may drop it).
    """
    if not frame:
        return None
    stream = frame[0]
    if stream not in _SERVER_STREAMS:
        return None
    return stream, frame[1:]


def exit_code_from_payload(payload: bytes) -> int | None:
    """The exit code carried by an ``03`` frame's payload, or None if it has none.

    One byte is the protocol. Exactly four bytes are read as a big-endian
    integer (the oldest SDK's layout, kept as a harmless compatibility rule);
    a value outside 0-255 becomes 255, as the server clamps it. Any other
    length uses the first byte.
    """
    if not payload:
        return None
    if len(payload) == 4:
        value = int.from_bytes(payload, "big")
        return value if value <= 255 else 255
    return payload[0]


# ------------------------------------------------------------------ text messages


class SessionInfoMessage(msgspec.Struct, tag="session_info", tag_field="type", kw_only=True):
    """``session_info``: the first text message of a new or attached session."""

    session_id: str | int | None = None
    command: str | None = None
    created: float | None = None
    cols: int | None = None
    rows: int | None = None
    is_owner: bool | None = None
    tty: bool | None = None


class ExitMessage(msgspec.Struct, tag="exit", tag_field="type", kw_only=True):
    """``exit``: the process ended (``code`` is the oldest SDK's key)."""

    exit_code: int | None = None
    code: int | None = None

    @property
    def value(self) -> int | None:
        """The exit code, whichever key carried it."""
        return self.exit_code if self.exit_code is not None else self.code


class PortMessage(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of the port notifications."""

    port: int
    address: str = ""
    pid: int | None = None


class PortOpenedMessage(PortMessage, tag="port_opened"):
    """``port_opened``: a process in the session started listening."""


class PortClosedMessage(PortMessage, tag="port_closed"):
    """``port_closed``: a process in the session stopped listening."""


class DebugMessage(msgspec.Struct, tag="debug", tag_field="type", kw_only=True):
    """``debug``: diagnostics; ignored."""

    msg: str = ""


Message = SessionInfoMessage | ExitMessage | PortOpenedMessage | PortClosedMessage | DebugMessage

_message_decoder = JSONDecoder(msgspec.json.Decoder(Message))
_encoder = msgspec.json.Encoder()


def decode_message(data: str | bytes) -> Message | None:
    """Decode one server text frame; None for unknown types and non-JSON text.

    One typed msgspec call in the common case. A known message that call
    refuses (a field of an unexpected type) is read field by field instead,
    as the official Go SDK does (be liberal in what you accept): a bad field is lost,
    never the message. Only a port notification without a readable ``port``
    is dropped, having nothing left to say.
    """
    try:
        return _message_decoder.decode(data)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        return None
    try:
        obj = decode_any(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    return _read_fields(obj)


def _read_fields(obj: dict[str, Any]) -> Message | None:
    kind = obj.get("type")
    if kind == "session_info":
        return SessionInfoMessage(
            session_id=as_text(obj.get("session_id")),
            command=as_text(obj.get("command")),
            created=as_number(obj.get("created")),
            cols=as_int(obj.get("cols")),
            rows=as_int(obj.get("rows")),
            is_owner=as_flag(obj.get("is_owner")),
            tty=as_flag(obj.get("tty")),
        )
    if kind == "exit":
        return ExitMessage(exit_code=as_int(obj.get("exit_code")), code=as_int(obj.get("code")))
    if kind in ("port_opened", "port_closed"):
        port = as_int(obj.get("port"))
        if port is None:
            return None
        cls = PortOpenedMessage if kind == "port_opened" else PortClosedMessage
        return cls(port=port, address=as_text(obj.get("address")) or "", pid=as_int(obj.get("pid")))
    if kind == "debug":
        return DebugMessage(msg=as_text(obj.get("msg")) or "")
    return None


# Liberal readers of one JSON value: the value, or None when it cannot mean that.

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def as_text(value: object) -> str | None:
    """A string; integers (ids sent as numbers) become their decimal text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
    except ValueError:  # more digits than Python converts to text
        return None
    return None


def as_int(value: object) -> int | None:
    """An integer, from a number without a fraction or from decimal text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit() and text.isascii() and len(text) < 40:
            return int(text)
    return None


def as_number(value: object) -> float | None:
    """A number, from a JSON number or numeric text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def as_flag(value: object) -> bool | None:
    """A boolean, from ``true``/``false``, 0/1 or their usual spellings as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def resize_message(cols: int, rows: int) -> str:
    """``{"type":"resize","cols":C,"rows":R}``."""
    return _encoder.encode({"type": "resize", "cols": cols, "rows": rows}).decode()


def signal_message(name: str) -> str:
    """``{"type":"signal","signal":NAME}``."""
    return _encoder.encode({"type": "signal", "signal": name}).decode()


# ---------------------------------------------------------------- control envelopes


class Envelope(msgspec.Struct, kw_only=True):
    """A control envelope (``control:{json}``) as the server sends it."""

    type: str
    id: str = ""
    op: str = ""
    args: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def error_text(self) -> str:
        """The error text of ``op.error`` / failed ``op.complete`` (any key)."""
        for key in ("error", "message", "code"):
            value = self.args.get(key)
            if isinstance(value, str) and value:
                return value
        return "operation failed"


_envelope_decoder = JSONDecoder(msgspec.json.Decoder(Envelope))


def decode_envelope(text: str) -> Envelope | None:
    """The envelope in a text frame, or None if it is not one (operation data)."""
    if not text.startswith(CONTROL_PREFIX):
        return None
    body = text[len(CONTROL_PREFIX) :]
    try:
        return _envelope_decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        # A "control:" frame we cannot read is still an envelope: never op data.
        return Envelope(type="")
    # Valid JSON of odd types: read field by field, as the notifications are.
    try:
        obj = decode_any(body)
    except msgspec.DecodeError:
        return Envelope(type="")
    if not isinstance(obj, dict):
        return Envelope(type="")
    args = obj.get("args")
    return Envelope(
        type=as_text(obj.get("type")) or "",
        id=as_text(obj.get("id")) or "",
        op=as_text(obj.get("op")) or "",
        args=args if isinstance(args, dict) else {},
    )


def encode_envelope(
    type: str, *, op: str | None = None, args: dict[str, str | list[str]] | None = None
) -> str:
    """``control:{json}``. Argument values must be strings or lists of strings."""
    body: dict[str, Any] = {"type": type}
    if op is not None:
        body["op"] = op
    if args is not None:
        body["args"] = args
    return CONTROL_PREFIX + _encoder.encode(body).decode()


# ----------------------------------------------------------------------- UTF-8


class Utf8Decoder:
    """Decode UTF-8 that arrives in pieces; a character may straddle two pieces.

    Invalid bytes become U+FFFD (never an exception). Call :meth:`decode`
    with ``final=True`` (or :meth:`flush`) at the end so that an incomplete
    trailing sequence is reported rather than held forever.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes, final: bool = False) -> str:
        """The text completed by ``data``; an unfinished character is kept for later."""
        return self._decoder.decode(data, final)

    def flush(self) -> str:
        """Whatever is held back, as replacement characters."""
        return self._decoder.decode(b"", True)


# ------------------------------------------------------------------- HTTP exec


class HttpExecParser:
    """Recover output and exit code from an HTTP exec (``POST .../exec``) body.

    The body is the non-TTY frame stream written back to back without length
    prefixes, so frame boundaries are only the server's HTTP chunk
    boundaries. Feed it one chunk at a time: a chunk starting with ``01`` or
    ``02`` starts a frame of that stream; a chunk that is ``03 xx`` is the
    exit frame; any other chunk continues the previous frame. The last two
    bytes of output are held back until more arrives, so that a body whose
    exit frame was merged into its last chunk still ends as ``03 xx``. The
    separation of stdout and stderr is approximate when chunks were merged or
    split on the way.
    """

    __slots__ = ("_exit", "_exit_pending", "_held", "_stream", "_tail")

    def __init__(self) -> None:
        self._stream = STDOUT
        self._exit: int | None = None
        self._exit_pending = False
        self._held: list[tuple[int, bytes]] = []
        # The last two raw bytes of the body, each with whether it was passed
        # on as output (True) or consumed as a frame marker (False). The body
        # must end with ``03 xx`` whatever the chunking, and a chunk boundary
        # may have turned the final ``xx`` into a marker.
        self._tail: list[tuple[int, bool]] = []

    def _note(self, data: bytes, is_output: bool) -> None:
        tail = self._tail
        for b in data[-2:]:
            tail.append((b, is_output))
        del tail[:-2]

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Parse one chunk; return the ``(stream_id, bytes)`` pieces it released."""
        out: list[tuple[int, bytes]] = []
        if not chunk:
            return out
        if self._exit_pending:
            self._exit_pending = False
            self._exit = chunk[0]
            self._note(chunk[:1], False)
            chunk = chunk[1:]
            if not chunk:
                return out
        if self._exit is not None:
            # More bytes after an "exit frame": it was output that began with 03.
            self._hold(self._stream, bytes([EXIT, self._exit]), out)
            self._tail = [(b, True) for b, _ in self._tail]
            self._exit = None
        first = chunk[0]
        if first in (STDOUT, STDERR):
            self._stream = first
            self._note(chunk[:1], False)
            chunk = chunk[1:]
        elif first == EXIT and len(chunk) <= 2:
            if len(chunk) == 1:
                self._exit_pending = True
            else:
                self._exit = chunk[1]
            self._note(chunk, False)
            return out
        if chunk:
            self._note(chunk, True)
            self._hold(self._stream, chunk, out)
        return out

    def _hold(self, stream: int, data: bytes, out: list[tuple[int, bytes]]) -> None:
        held = self._held
        held.append((stream, data))
        total = sum(len(d) for _, d in held)
        while total > 2:
            s, d = held[0]
            excess = total - 2
            if len(d) <= excess:
                out.append(held.pop(0))
                total -= len(d)
            else:
                out.append((s, d[:excess]))
                held[0] = (s, d[excess:])
                total = 2

    def finish(self) -> tuple[int | None, list[tuple[int, bytes]]]:
        """End of body: ``(exit code or None, the output still held back)``."""
        held, self._held = self._held, []
        if self._exit is not None:
            return self._exit, held
        tail = self._tail
        if len(tail) < 2 or tail[0][0] != EXIT:
            return None, held
        # The body ends in ``03 xx``: drop those bytes from the output they
        # were mistaken for (at most the two bytes still held back).
        trim = sum(1 for _, is_output in tail if is_output)
        while trim and held:
            s, d = held[-1]
            if len(d) <= trim:
                held.pop()
                trim -= len(d)
            else:
                held[-1] = (s, d[:-trim])
                trim = 0
        return tail[1][0], held
