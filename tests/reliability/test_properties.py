"""Property tests: every decoder of server data, fed any bytes, fails only in its documented way.

Documented outcomes, decoder by decoder:

* ``_frames``: ``parse_frame``, ``exit_code_from_payload``, ``decode_message``,
  ``decode_envelope``, :class:`Utf8Decoder` and :class:`HttpExecParser` never
  raise (unknown or unreadable input is ignored: ``None`` / an empty envelope).
* :class:`NDJSONDecoder` never raises: lines it cannot decode are skipped and
  counted (with the plain msgspec decoders and with the checkpoint/service
  event decoders, on the line path and on the ``decode_lines`` batch path).
* The checkpoint/service event decoders, used alone, raise only
  ``msgspec.DecodeError`` (``ValidationError`` is a subclass) for a line they
  cannot use, which is what the NDJSON reader skips.
* Model decoders (sprites, pages, checkpoints, services, policy, fs listings)
  are msgspec decoders: only ``msgspec.DecodeError``.
* ``api_error_from_response`` never raises; ``sessions.list()`` raises only
  :class:`ProtocolError` or :class:`APIError` for a bad 200 body.

Inputs are random bytes, mutations of valid documents (byte flips, inserts,
deletions, truncation, splices) and JSON nested deeper than msgspec's
recursion limit (which made msgspec raise ``RecursionError``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sprites_async import APIError, ProtocolError, SpritesClient
from sprites_async import _checkpoints as cps
from sprites_async import _frames as f
from sprites_async import _fs_types as sfs
from sprites_async import _models as models
from sprites_async import _policy as pol
from sprites_async import _services as svc
from sprites_async._errors import api_error_from_response
from sprites_async._exec import _sessions as ex
from sprites_async._session import Response
from sprites_async._streams import NDJSONDecoder
from sprites_async.emulator._framing import exit_frame, stream_frame

# Deterministic (no example database, no random seed), and a fixed budget so
# the whole file stays within a few seconds.
EXAMPLES = 300
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DEEP = 2000
"""Nesting beyond msgspec's recursion limit (1000)."""


# --------------------------------------------------------------- input strategies

VALID_DOCS: list[bytes] = [
    b'{"type":"session_info","session_id":"1847","command":"bash","created":1767609000,'
    b'"cols":0,"rows":0,"is_owner":true,"tty":true}',
    b'{"type":"exit","exit_code":3}',
    b'{"type":"port_opened","port":8080,"address":"0.0.0.0","pid":12}',
    b'{"type":"info","data":"Creating checkpoint","time":"2026-01-31T15:39:02.123456789Z"}',
    b'{"type":"complete","data":"Checkpoint v3 created","time":"2026-01-31T15:39:02Z"}',
    b'{"type":"stdout","data":"hello","timestamp":1767609000123}',
    b'{"type":"complete","log_files":{"stdout":"/x"},"timestamp":1}',
    b'{"id":"sprite-1","name":"alpha","organization":"o","status":"cold","url":"https://a",'
    b'"url_settings":{"auth":"sprite"},"created_at":"2026-04-03T03:02:18.641609Z",'
    b'"updated_at":"2026-04-03T03:02:18.641609Z","last_running_at":null,"labels":["a"]}',
    b'{"name":"o","running":0,"warm":1,"cold":2,"running_limit":20,"warm_limit":20,'
    b'"sprites":[{"name":"a","status":"warm"},{"name":"b","created_at":"nope"}],'
    b'"next_continuation_token":"YQ","has_more":true}',
    b'[{"id":"v1","create_time":"2026-01-31T15:39:02Z","comment":"c","is_auto":false,'
    b'"history":["v0"]},{"id":"Current"}]',
    b'[{"name":"web","cmd":"python3","args":["-m","http.server"],"needs":[],"http_port":8000,'
    b'"state":{"name":"web","status":"running","pid":12,"started_at":"2026-01-31T15:39:02Z"}}]',
    b'{"services":[{"name":"db"}]}',
    b'{"rules":[{"include":"defaults"},{"domain":"*.npmjs.org","action":"allow"}]}',
    b'{"sessions":[{"id":"12","command":"bash","tty":true,"created":"2026-01-31T15:39:02Z"},'
    b'{"session_id":15},{"bogus":1}],"count":3}',
    b'{"path":"/home/sprite","count":1,"entries":[{"name":"a","path":"/home/sprite/a",'
    b'"type":"file","size":1,"mode":"644","modTime":"2026-08-04T00:00:00Z","isDir":false}]}',
    b'{"error":"sprite_creation_rate_limited","message":"slow down","limit":10,'
    b'"window_seconds":60,"retry_after_seconds":30,"current_count":12}',
    b'{"errors":["invalid sprite name format"]}',
]


def _deep(kind: str, depth: int) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else (b'{"a":' * depth + b"}" * depth)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid document with a few random edits (or deep nesting spliced in)."""
    doc = bytearray(draw(st.sampled_from(VALID_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "deep", "dup"]))
        pos = draw(st.integers(0, len(doc)))
        if op == "flip" and pos < len(doc):
            doc[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            doc[pos:pos] = draw(
                st.sampled_from(
                    [b"{", b"}", b"[", b'"', b",", b":", b"\\u", b"\xff", b"\n", b"-1e999"]
                )
            )
        elif op == "delete":
            del doc[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del doc[pos:]
        elif op == "deep":
            # Replace a value after a colon with something nested too deeply.
            colon = doc.find(b":", pos)
            if colon >= 0:
                doc[colon + 1 : colon + 1] = _deep(draw(st.sampled_from(["list", "dict"])), DEEP)
        elif op == "dup":
            doc[pos:pos] = doc[: draw(st.integers(0, len(doc)))]
    return bytes(doc)


def deep_docs() -> st.SearchStrategy[bytes]:
    """Documents of the right outer shape holding a value nested too deeply."""
    return st.builds(
        lambda prefix, kind, depth, suffix: prefix + _deep(kind, depth) + suffix,
        st.sampled_from(
            [
                b'{"type":"exit","x":',
                b'{"type":"info","x":',
                b'{"type":"brand_new","x":',
                b'{"type":"stdout","data":"a","x":',
                b'{"name":"a","x":',
                b'{"sprites":[{"name":"a","x":',
                b'{"sprites":[{"name":"a"}],"has_more":"x","x":',
                b'[{"id":"v1","x":',
                b'[{"name":"web","x":',
                b'{"rules":[{"x":',
                b'{"sessions":[{"id":"1","x":',
                b'{"error":"boom","x":',
                b'{"type":"op.complete","args":{"x":',
                b"",
            ]
        ),
        st.sampled_from(["list", "dict"]),
        st.integers(DEEP, DEEP + 500),
        st.sampled_from([b"}", b"}]}", b"}]", b"", b"}}"]),
    )


ANY_BYTES = st.one_of(st.binary(max_size=300), mutated(), deep_docs())


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------------ frames


@PROPERTY
@given(st.one_of(st.binary(max_size=64), ANY_BYTES))
def test_frame_parsing_never_raises(frame: bytes) -> None:
    parsed = f.parse_frame(frame)
    if parsed is not None:
        stream, payload = parsed
        assert stream in (f.STDOUT, f.STDERR, f.EXIT)
        assert bytes([stream]) + payload == frame
    code = f.exit_code_from_payload(frame)
    assert code is None or 0 <= code <= 255


@PROPERTY
@given(st.sampled_from([f.STDOUT, f.STDERR]), st.binary(max_size=200), st.integers(-300, 600))
def test_server_frames_round_trip(stream: int, payload: bytes, code: int) -> None:
    # What the emulator writes is what the client reads back.
    assert f.parse_frame(stream_frame(stream, payload)) == (stream, payload)
    exit_stream, exit_payload = f.parse_frame(exit_frame(code)) or (None, b"")
    assert exit_stream == f.EXIT
    assert f.exit_code_from_payload(exit_payload) == max(0, min(255, code))
    assert f.stdin_frame(payload)[1:] == payload
    assert f.stdin_frame(payload)[0] == f.STDIN


@PROPERTY
@given(st.one_of(ANY_BYTES, st.text(max_size=200)))
def test_text_messages_never_raise(data: bytes | str) -> None:
    msg = f.decode_message(data)
    assert msg is None or isinstance(
        msg,
        (
            f.SessionInfoMessage,
            f.ExitMessage,
            f.PortOpenedMessage,
            f.PortClosedMessage,
            f.DebugMessage,
        ),
    )
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    for candidate in (text, f.CONTROL_PREFIX + text):
        env = f.decode_envelope(candidate)
        if candidate.startswith(f.CONTROL_PREFIX):
            assert isinstance(env, f.Envelope)
            assert isinstance(env.error_text, str)
        else:
            assert env is None


ARG_VALUES = st.one_of(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3))


@PROPERTY
@given(
    st.text(min_size=1, max_size=20),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=10), ARG_VALUES, max_size=4)),
)
def test_envelopes_round_trip(
    type_: str, op: str | None, args: dict[str, str | list[str]] | None
) -> None:
    env = f.decode_envelope(f.encode_envelope(type_, op=op, args=args))
    assert env is not None
    assert (env.type, env.op, env.args) == (type_, op or "", args or {})


@PROPERTY
@given(st.integers(0, 65535), st.integers(0, 65535), st.text(max_size=20))
def test_client_messages_are_json(cols: int, rows: int, name: str) -> None:
    assert msgspec.json.decode(f.resize_message(cols, rows)) == {
        "type": "resize",
        "cols": cols,
        "rows": rows,
    }
    assert msgspec.json.decode(f.signal_message(name)) == {"type": "signal", "signal": name}


@PROPERTY
@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=10))
def test_utf8_decoder_never_raises_and_matches_whole_decoding(data: bytes, cuts: list[int]) -> None:
    dec = f.Utf8Decoder()
    out = "".join(dec.decode(p) for p in chunked(data, cuts)) + dec.flush()
    assert out == data.decode("utf-8", "replace")


@PROPERTY
@given(st.lists(ANY_BYTES, max_size=8))
def test_http_exec_parser_never_raises_nor_invents_bytes(chunks: list[bytes]) -> None:
    parser = f.HttpExecParser()
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    code, rest = parser.finish()
    out.extend(rest)
    assert code is None or 0 <= code <= 255
    assert all(stream in (f.STDOUT, f.STDERR) for stream, _ in out)
    assert sum(len(d) for _, d in out) <= sum(len(c) for c in chunks)


@PROPERTY
@given(
    st.lists(
        st.tuples(st.sampled_from([f.STDOUT, f.STDERR]), st.binary(min_size=1, max_size=30)),
        max_size=6,
    ),
    st.integers(0, 255),
)
def test_http_exec_round_trip_one_frame_per_chunk(
    frames: list[tuple[int, bytes]], code: int
) -> None:
    # The emulator writes one frame per chunk: then the split is exact.
    parser = f.HttpExecParser()
    out: list[tuple[int, bytes]] = []
    for stream, payload in frames:
        out.extend(parser.feed(stream_frame(stream, payload)))
    out.extend(parser.feed(exit_frame(code)))
    got_code, rest = parser.finish()
    out.extend(rest)
    assert got_code == code
    for stream in (f.STDOUT, f.STDERR):
        sent = b"".join(p for s, p in frames if s == stream)
        assert b"".join(d for s, d in out if s == stream) == sent


# ------------------------------------------------------------------------ NDJSON


class Progress(msgspec.Struct, tag="progress", tag_field="type"):
    data: str = ""


class Complete(msgspec.Struct, tag="complete", tag_field="type"):
    data: str = ""


Event = Progress | Complete
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def _ndjson_decoders() -> list[tuple[str, NDJSONDecoder[Any]]]:
    out: list[tuple[str, NDJSONDecoder[Any]]] = [
        ("msgspec", NDJSONDecoder(_event_decoder.decode)),
        (
            "msgspec-batch",
            NDJSONDecoder(_event_decoder.decode, decode_lines=_event_decoder.decode_lines),
        ),
        ("kill", NDJSONDecoder(ex._decode_kill)),
    ]
    for name, ev in (("checkpoint", cps._decode_event), ("service", svc._decode_event)):
        out.append((name, NDJSONDecoder(ev)))
        out.append((name + "-batch", NDJSONDecoder(ev, decode_lines=ev.decode_lines)))  # type: ignore[attr-defined]
    return out


NDJSON_INPUT = st.lists(
    st.one_of(ANY_BYTES, st.just(b"\n"), st.just(b"\r\n"), st.sampled_from(VALID_DOCS)),
    max_size=6,
).map(lambda parts: b"\n".join(parts))


@PROPERTY
@given(NDJSON_INPUT, st.lists(st.integers(0, 5000), max_size=8))
def test_ndjson_decoders_never_raise(body: bytes, cuts: list[int]) -> None:
    for _name, lines in _ndjson_decoders():
        for piece in chunked(body, cuts):
            lines.feed(piece)
        lines.finish()
        assert lines.pending == 0


EVENTS = st.lists(
    st.builds(Progress, st.text(max_size=30)) | st.builds(Complete, st.text(max_size=30)),
    max_size=10,
)


@PROPERTY
@given(
    EVENTS,
    st.lists(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n  \n"]), min_size=10, max_size=10),
    st.booleans(),
    st.lists(st.integers(0, 5000), max_size=12),
)
def test_ndjson_any_chunking_yields_the_same_events(
    events: list[Event], seps: list[bytes], final_newline: bool, cuts: list[int]
) -> None:
    body = b"".join(msgspec.json.encode(e) + sep for e, sep in zip(events, seps))
    if not final_newline and body:
        body = body.rstrip(b"\r\n ")
    for batch in (False, True):
        lines = NDJSONDecoder(
            _event_decoder.decode, decode_lines=_event_decoder.decode_lines if batch else None
        )
        out: list[Event] = []
        for piece in chunked(body, cuts):
            out.extend(lines.feed(piece))
        out.extend(lines.finish())
        assert out == events
        assert lines.skipped == 0


@PROPERTY
@given(
    st.lists(
        st.one_of(
            st.sampled_from(VALID_DOCS),
            st.builds(msgspec.json.encode, st.builds(Progress, st.text(max_size=10))),
            mutated(),
            st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
        ),
        max_size=8,
    ),
    st.lists(st.integers(0, 5000), max_size=6),
)
def test_ndjson_batch_path_equals_line_path(lines_: list[bytes], cuts: list[int]) -> None:
    body = b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines_)
    pieces = chunked(body, cuts)
    for ev in (cps._decode_event, svc._decode_event, _event_decoder):
        decode = ev.decode if isinstance(ev, msgspec.json.Decoder) else ev
        slow_dec = NDJSONDecoder(decode)
        fast_dec = NDJSONDecoder(decode, decode_lines=ev.decode_lines)  # type: ignore[union-attr]
        slow = [x for p in pieces for x in slow_dec.feed(p)] + slow_dec.finish()
        fast = [x for p in pieces for x in fast_dec.feed(p)] + fast_dec.finish()
        assert fast == slow


@PROPERTY
@given(ANY_BYTES)
def test_event_decoders_raise_only_decode_errors(line: bytes) -> None:
    for ev in (cps._decode_event, svc._decode_event):
        try:
            ev(line)
        except msgspec.DecodeError:
            pass


# ------------------------------------------------------------------------ models


MODEL_DECODERS: list[tuple[str, Any]] = [
    ("decode_sprite", models.decode_sprite),
    ("decode_page", models.decode_page),
    ("checkpoint", cps._checkpoint_decoder.decode),
    ("checkpoint list", cps._decode_list),
    ("service", svc._service_decoder.decode),
    ("service list", svc._decode_list),
    ("policy", pol._policy_decoder.decode),
    ("fs listing", sfs._decode_listing),
    ("session list", ex._decode_sessions),
    ("fs copy", sfs._copy_decoder.decode),
]


@PROPERTY
@given(ANY_BYTES)
def test_model_decoders_raise_only_decode_errors(data: bytes) -> None:
    for _name, decode in MODEL_DECODERS:
        try:
            decode(data)
        except msgspec.DecodeError:
            pass


@PROPERTY
@given(ANY_BYTES, st.integers(400, 599), st.one_of(st.none(), st.text(max_size=20)))
def test_error_bodies_never_raise(body: bytes, status: int, retry_after: str | None) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    err = api_error_from_response(status, headers, body, operation="op", sprite="alpha")
    assert isinstance(err, APIError)
    assert err.status_code == status
    assert str(err) and repr(err)


def test_valid_documents_decode() -> None:
    # The seeds of the mutations are themselves accepted (so mutations test something).
    assert models.decode_sprite(VALID_DOCS[7]).name == "alpha"
    page = models.decode_page(VALID_DOCS[8])
    # The entry with a malformed field is kept, without that field.
    assert [(s.name, s.created_at) for s in page.sprites] == [("a", None), ("b", None)]
    assert [c.id for c in cps._decode_list(VALID_DOCS[9])] == ["v1", "Current"]
    assert [s.name for s in svc._decode_list(VALID_DOCS[10])] == ["web"]
    assert len(pol._policy_decoder.decode(VALID_DOCS[12]).rules or []) == 2
    assert sfs._decode_listing(VALID_DOCS[14]).count == 1


# ------------------------------------------------------ the public calls, end to end


class _FakeClient(SpritesClient):
    """A client whose request seam answers every call with one fixed 200 body."""

    body = b""

    async def _request(  # type: ignore[override]
        self, *args: Any, operation: str, sprite: str | None = None, **kwargs: Any
    ) -> Response:
        headers: Any = {"x-request-id": "req-1", "fly-request-id": "fly-1"}
        return Response(200, headers, self.body, operation, sprite)


async def _public_calls(body: bytes) -> list[object]:
    """Every public call that decodes a plain JSON answer, all fed ``body``."""
    client = _FakeClient("org/1/tok/fakesecret", base_url="http://127.0.0.1:9")
    client.body = body
    sprite = client.sprite("alpha")
    return await asyncio.gather(
        client.sprites.get("alpha"),
        client.sprites.list(),
        sprite.sessions.list(),
        sprite.checkpoints.list(),
        sprite.checkpoints.get("v1"),
        sprite.services.list(),
        sprite.services.get("web"),
        sprite.policy.get(),
        sprite.fs().path("/tmp").scandir(),
        return_exceptions=True,
    )


@PROPERTY
@given(ANY_BYTES)
def test_public_calls_raise_only_sdk_errors(body: bytes) -> None:
    for outcome in asyncio.run(_public_calls(body)):
        if isinstance(outcome, BaseException):
            # A 200 that does not decode is the server breaking the protocol.
            assert isinstance(outcome, (ProtocolError, APIError)), repr(outcome)


def test_an_unreadable_answer_names_the_call() -> None:
    outcomes = asyncio.run(_public_calls(b"<html>bad gateway</html>"))
    assert all(isinstance(o, ProtocolError) for o in outcomes), outcomes
    first = outcomes[0]
    assert isinstance(first, ProtocolError)
    assert first.status_code == 200 and first.body.startswith(b"<html>")
    assert (first.operation, first.sprite) == ("get sprite", "alpha")
    assert (first.request_id, first.fly_request_id) == ("req-1", "fly-1")
    assert "status=200, operation=get sprite, sprite=alpha, request_id=req-1" in str(first)
    assert isinstance(first.__cause__, msgspec.DecodeError)
