"""The exec wire codec, fed bytes (no I/O): frames, text messages, envelopes, UTF-8, HTTP exec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprites_async import _frames as f


def test_stdin_and_eof_frames() -> None:
    assert f.stdin_frame(b"abc") == b"\x00abc"
    assert f.EOF_FRAME == b"\x04"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"\x01hi\n", (1, b"hi\n")),
        (b"\x02oops\n", (2, b"oops\n")),
        (b"\x03\x07", (3, b"\x07")),
        (b"\x01", (1, b"")),
        (b"", None),
        (b"\x00abc", None),  # stdin id from the server: ignored
        (b"\x04", None),
        (b"\x09data", None),
        (b"\xffdata", None),
    ],
)
def test_parse_frame(frame: bytes, expected: tuple[int, bytes] | None) -> None:
    assert f.parse_frame(frame) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x00", 0),
        (b"\x07", 7),
        (b"\xff", 255),
        (b"", None),
        (b"\x00\x00\x00\x07", 7),  # the oldest SDK's 4-byte big-endian layout
        (b"\x00\x00\x00\xff", 255),
        (b"\x00\x00\x01\x00", 255),  # out of range: clamped like the server
        (b"\x07\x00", 7),  # any other length: the first byte
        (b"\x01\x02\x03", 1),
    ],
)
def test_exit_code_from_payload(payload: bytes, code: int | None) -> None:
    assert f.exit_code_from_payload(payload) == code


def test_session_info_with_string_or_int_id() -> None:
    msg = f.decode_message(
        '{"type":"session_info","session_id":"1847","command":"bash","created":1767609000,'
        '"cols":0,"rows":0,"is_owner":true,"tty":true}'
    )
    assert isinstance(msg, f.SessionInfoMessage)
    assert msg.session_id == "1847"
    assert msg.tty is True
    old = f.decode_message(b'{"type":"session_info","session_id":15}')
    assert isinstance(old, f.SessionInfoMessage)
    assert old.session_id == 15
    assert old.tty is None


def test_exit_message_keys() -> None:
    msg = f.decode_message('{"type":"exit","exit_code":3}')
    assert isinstance(msg, f.ExitMessage)
    assert msg.value == 3
    legacy = f.decode_message('{"type":"exit","code":4}')
    assert isinstance(legacy, f.ExitMessage)
    assert legacy.value == 4


def test_port_and_debug_messages() -> None:
    opened = f.decode_message('{"type":"port_opened","port":8080,"address":"0.0.0.0","pid":12}')
    assert isinstance(opened, f.PortOpenedMessage)
    assert (opened.port, opened.address, opened.pid) == (8080, "0.0.0.0", 12)
    closed = f.decode_message('{"type":"port_closed","port":8080}')
    assert isinstance(closed, f.PortClosedMessage)
    assert isinstance(f.decode_message('{"type":"debug","msg":"x","pid":3}'), f.DebugMessage)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"brand_new"}',
        "not json",
        "[1,2]",
        '{"no_type":1}',
        "",
        '{"type":"port_opened","port":"x"}',
    ],
)
def test_unknown_or_bad_messages_are_ignored(text: str) -> None:
    assert f.decode_message(text) is None


def test_an_exit_with_an_unreadable_code_carries_no_code() -> None:
    msg = f.decode_message('{"type":"exit","exit_code":"x"}')
    assert isinstance(msg, f.ExitMessage) and msg.value is None  # never invented


def test_client_messages() -> None:
    assert f.resize_message(120, 40) == '{"type":"resize","cols":120,"rows":40}'
    assert f.signal_message("TERM") == '{"type":"signal","signal":"TERM"}'


def test_envelopes() -> None:
    start = f.encode_envelope("op.start", op="exec", args={"cmd": ["sh", "-c", "x"], "tty": "true"})
    assert start.startswith("control:")
    assert '"args":{"cmd":["sh","-c","x"],"tty":"true"}' in start
    env = f.decode_envelope(
        'control:{"type":"op.complete","id":"","op":"exec","args":{"ok":true,"exitCode":3}}'
    )
    assert env is not None
    assert env.type == "op.complete"
    assert env.args == {"ok": True, "exitCode": 3}
    err = f.decode_envelope(
        'control:{"type":"op.error","id":"","args":{"code":"op.busy","message":"busy"}}'
    )
    assert err is not None
    assert err.error_text == "busy"
    assert f.decode_envelope('{"type":"session_info"}') is None  # operation data
    garbled = f.decode_envelope("control:{nope")
    assert garbled is not None
    assert garbled.type == ""


TEXT = "héllo wörld — 日本語 🎉 ok"


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Every way to cut ``data`` into pieces (including empty ones)."""
    return st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])]
    )


@given(chunkings(TEXT.encode()))
def test_utf8_across_any_split(pieces: list[bytes]) -> None:
    dec = f.Utf8Decoder()
    out = "".join(dec.decode(p) for p in pieces) + dec.flush()
    assert out == TEXT


def test_utf8_byte_by_byte_and_invalid_bytes() -> None:
    dec = f.Utf8Decoder()
    data = TEXT.encode()
    assert "".join(dec.decode(data[i : i + 1]) for i in range(len(data))) == TEXT
    dec = f.Utf8Decoder()
    assert dec.decode(b"a\xffb") == "a\ufffdb"
    assert dec.decode(b"\xe6\x97") == ""  # unfinished character held back
    assert dec.flush() == "\ufffd"


def http_body(frames: list[bytes]) -> tuple[list[tuple[int, bytes]], int | None]:
    parser = f.HttpExecParser()
    out: list[tuple[int, bytes]] = []
    for chunk in frames:
        out.extend(parser.feed(chunk))
    code, rest = parser.finish()
    out.extend(rest)
    return out, code


def joined(pieces: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(d for s, d in pieces if s == stream)


def test_http_exec_one_frame_per_chunk() -> None:
    out, code = http_body([b"\x01hello\n", b"\x02oops\n", b"\x01more", b"\x03\x07"])
    assert (joined(out, 1), joined(out, 2), code) == (b"hello\nmore", b"oops\n", 7)


def test_http_exec_exit_merged_into_last_chunk() -> None:
    out, code = http_body([b"\x01hello\x03\x00"])
    assert (joined(out, 1), code) == (b"hello", 0)


def test_http_exec_exit_split_over_chunks() -> None:
    out, code = http_body([b"\x01hi", b"\x03", b"\x05"])
    assert (joined(out, 1), code) == (b"hi", 5)


def test_http_exec_continuation_chunks_and_output_starting_with_03() -> None:
    out, code = http_body([b"\x02err", b"-continued", b"\x03\x41", b"\x01x", b"\x03\x02"])
    # "03 41" followed by more data was output, not an exit frame.
    assert joined(out, 2) == b"err-continued\x03A"
    assert joined(out, 1) == b"x"
    assert code == 2


def test_http_exec_without_exit_frame() -> None:
    out, code = http_body([b"\x01partial output"])
    assert code is None
    assert joined(out, 1) == b"partial output"
    assert http_body([]) == ([], None)


@given(st.binary(max_size=64), st.integers(0, 255))
def test_http_exec_any_stdout_then_exit(payload: bytes, exit_code: int) -> None:
    out, code = http_body([b"\x01" + payload, b"\x03" + bytes([exit_code])])
    assert code == exit_code
    assert joined(out, 1) == payload


@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(min_size=1, max_size=20)), max_size=6),
    st.integers(0, 255),
    st.data(),
)
def test_http_exec_exit_code_survives_any_chunking(
    frames: list[tuple[int, bytes]], exit_code: int, data: st.DataObject
) -> None:
    body = b"".join(bytes([s]) + p for s, p in frames) + bytes([3, exit_code])
    pieces = data.draw(chunkings(body))
    out, code = http_body([p for p in pieces if p])
    assert code == exit_code
    # However the body was cut, no byte is invented.
    assert sum(len(d) for _, d in out) <= len(body) - 2


@pytest.mark.parametrize(
    "pieces",
    [
        # Found by hypothesis: the final exit byte arrives alone and looks like
        # a stdout marker, so only the raw tail of the body shows ``03 01``.
        [b"\x01\x00\x01\x00\x00\x01\x00\x00\x03", b"\x01"],
        [b"\x01abc\x03", b"\x02"],
        [b"\x01abc", b"\x03", b"\x01"],
        [b"\x01ab\x03\x01"],
    ],
)
def test_http_exec_exit_split_at_the_last_byte(pieces: list[bytes]) -> None:
    out, code = http_body(pieces)
    body = b"".join(pieces)
    assert code == body[-1]
    assert sum(len(d) for _, d in out) <= len(body) - 2
