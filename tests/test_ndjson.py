"""NDJSON: the pure line decoder (any chunking) and the response-owning stream."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from sprites_async import NotFoundError, SpritesClient, StreamError
from sprites_async._resource import AsyncResource
from sprites_async._streams import (
    NOT_FINAL,
    PIECE_BYTES,
    EventOperation,
    NDJSONDecoder,
    NDJSONStream,
    NotFinal,
)
from tests._mock import TOKEN


class Progress(msgspec.Struct, tag="progress", tag_field="type"):
    data: str = ""


class Complete(msgspec.Struct, tag="complete", tag_field="type"):
    data: str = ""


class Failure(msgspec.Struct, tag="error", tag_field="type"):
    error: str = ""


Event = Progress | Complete | Failure
decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)

BODY = (
    b'{"type":"progress","data":"one"}\n'
    b"\n"
    b'{"type":"progress","data":"tw\xc3\xa9"}\r\n'
    b"   \n"
    b"{not json}\n"
    b'{"type":"unknown_kind"}\n'
    b'{"type":"complete","data":"done"}'  # no newline at the end
)
EXPECTED = [Progress("one"), Progress("twé"), Complete("done")]


def decode_all(pieces: list[bytes]) -> list[Event]:
    lines = NDJSONDecoder(decoder.decode)
    out: list[Event] = []
    for piece in pieces:
        out.extend(lines.feed(piece))
    out.extend(lines.finish())
    return out


def test_whole_body() -> None:
    assert decode_all([BODY]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode_all([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


@given(st.lists(st.integers(0, len(BODY)), max_size=20))
def test_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(BODY)]
    assert decode_all([BODY[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


def test_malformed_lines_are_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    lines = NDJSONDecoder(decoder.decode, what="test stream")
    with caplog.at_level(logging.DEBUG, logger="sprites_async"):
        out = lines.feed(BODY) + lines.finish()
    assert out == EXPECTED
    assert lines.skipped == 2
    assert any("malformed" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert any("unrecognised" in r.message for r in caplog.records)


def test_no_small_line_limit() -> None:
    big = "x" * (3 << 20)
    line = msgspec.json.encode(Progress(big)) + b"\n"
    lines = NDJSONDecoder(decoder.decode)
    out: list[Event] = []
    for i in range(0, len(line), 1000):  # 3 MiB in 1000-byte pieces: linear, not quadratic
        out.extend(lines.feed(line[i : i + 1000]))
    assert out == [Progress(big)]
    assert lines.pending == 0


def test_finish_without_leftover() -> None:
    lines = NDJSONDecoder(decoder.decode)
    assert lines.feed(b'{"type":"complete"}\n') == [Complete()]
    assert lines.finish() == []


# --------------------------------------------------------------------------- stream


def final(event: Event) -> str | NotFinal:
    if isinstance(event, Failure):
        raise StreamError(event.error)
    if isinstance(event, Complete):
        return event.data
    return NOT_FINAL


Handler = Callable[[web.Request], object]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], object]]:
    servers: list[TestServer] = []

    async def start(handler: Handler) -> SpritesClient:
        app = web.Application()
        app.router.add_route("*", "/stream", handler)  # type: ignore[arg-type]
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return SpritesClient(TOKEN, base_url=str(server.make_url("")))

    yield start  # type: ignore[misc]
    for server in servers:
        await server.close()


def chunked(*pieces: bytes, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
        await resp.write_eof()
        return resp

    return handler


def stream_of(client: SpritesClient, **kw: object) -> NDJSONStream[Event, str]:
    return NDJSONStream(
        client,
        "POST",
        "/stream",
        decoder=decoder,
        operation="test",
        final=final,
        **kw,  # type: ignore[arg-type]
    )


async def test_iterate_in_odd_chunks(serve: Callable[[Handler], object]) -> None:
    pieces = [BODY[i : i + 7] for i in range(0, len(BODY), 7)]
    async with await serve(chunked(*pieces)) as client:  # type: ignore[misc]
        stream = stream_of(client)
        async with stream:
            events = [e async for e in stream]
        assert events == EXPECTED
        assert stream.result == "done"
        assert stream.response is None  # released


async def test_await_gives_final_result(serve: Callable[[Handler], object]) -> None:
    async with await serve(chunked(BODY)) as client:  # type: ignore[misc]
        assert await stream_of(client) == "done"


async def test_in_band_error_raises(serve: Callable[[Handler], object]) -> None:
    body = b'{"type":"progress"}\n{"type":"error","error":"boom"}\n'
    async with await serve(chunked(body)) as client:  # type: ignore[misc]
        stream = stream_of(client)
        seen: list[Event] = []

        async def collect() -> None:
            async for event in stream:
                seen.append(event)

        with pytest.raises(StreamError, match="boom"):
            await collect()
        assert seen == [Progress()]
        assert stream.response is None


async def test_missing_final_event(serve: Callable[[Handler], object]) -> None:
    async with await serve(chunked(b'{"type":"progress"}\n')) as client:  # type: ignore[misc]
        with pytest.raises(StreamError, match="without its final event"):
            await stream_of(client, require_final=True)
        stream = stream_of(client)
        assert [e async for e in stream] == [Progress()]
        with pytest.raises(StreamError):
            _ = stream.result


async def test_http_errors_and_substitutes(serve: Callable[[Handler], object]) -> None:
    handler = chunked(b'{"error":"session not found"}', status=404)
    async with await serve(handler) as client:  # type: ignore[misc]
        with pytest.raises(NotFoundError, match="session not found"):
            await stream_of(client)
        stream = stream_of(client, on_api_error=lambda exc: "substitute")
        assert [e async for e in stream] == []
        assert stream.result == "substitute"


async def test_early_exit_releases_the_response(serve: Callable[[Handler], object]) -> None:
    async with await serve(chunked(BODY)) as client:  # type: ignore[misc]
        stream = stream_of(client)
        async with stream:
            async for _ in stream:
                break
            assert stream.response is not None
        assert stream.response is None
        await stream.aclose()  # idempotent


# ------------------------------------------------------------ the batch fast path


def feed_all(lines: NDJSONDecoder[Event], pieces: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for piece in pieces:
        out.extend(lines.feed(piece))
    out.extend(lines.finish())
    return out


MIXED = (
    b'{"type":"progress","data":"a"}\n'
    b'{"type":"progress","data":"b"}\r\n'
    b"\n"
    b"not json at all\n"
    b'{"type":"unknown-kind","x":1}\n'
    b'{"type":"progress","data":"c"}\n'
    b'{"type":"complete","data":"done"}'
)


@given(st.lists(st.integers(0, len(MIXED)), max_size=8))
def test_batch_path_equals_line_path_for_any_chunking(cuts: list[int]) -> None:
    bounds = sorted({0, len(MIXED), *cuts})
    pieces = [MIXED[a:b] for a, b in itertools.pairwise(bounds)]
    slow = feed_all(NDJSONDecoder(decoder.decode), pieces)
    fast_decoder = NDJSONDecoder(decoder.decode, decode_lines=decoder.decode_lines)
    fast = feed_all(fast_decoder, pieces)
    assert fast == slow
    assert [e.data for e in fast if isinstance(e, Progress)] == ["a", "b", "c"]
    assert fast_decoder.skipped == 2  # the malformed line and the unknown type, alone


def test_batch_path_decodes_a_chunk_in_one_call() -> None:
    calls: list[bytes] = []

    def decode_lines(block: bytes) -> list[Event]:
        calls.append(block)
        return decoder.decode_lines(block)

    lines = NDJSONDecoder(decoder.decode, decode_lines=decode_lines)
    chunk = b"".join(b'{"type":"progress","data":"%d"}\n' % i for i in range(50))
    events = lines.feed(chunk + b'{"type":"prog')
    assert len(events) == 50
    assert calls == [chunk]  # one call for the 50 complete lines; the partial one waits
    assert lines.pending == len(b'{"type":"prog')


async def test_next_batch_hands_out_whole_chunks(serve: Callable[[Handler], object]) -> None:
    half = BODY.index(b"\n", len(BODY) // 2) + 1
    async with await serve(chunked(BODY[:half], BODY[half:])) as client:  # type: ignore[misc]
        stream = stream_of(client)
        batches: list[list[Event]] = []
        async with stream:
            while batch := await stream.next_batch():
                batches.append(batch)
            assert await stream.next_batch() == []  # the end stays the end
        assert [e for b in batches for e in b] == EXPECTED
        assert stream.result == "done"  # the final hook saw every event
        assert stream.response is None


async def test_next_batch_after_next_event_loses_nothing(
    serve: Callable[[Handler], object],
) -> None:
    async with await serve(chunked(BODY)) as client:  # type: ignore[misc]
        async with stream_of(client) as stream:
            first = await stream.__anext__()
            rest: list[Event] = []
            while batch := await stream.next_batch():
                rest += batch
        assert [first, *rest] == EXPECTED


async def test_next_batch_reports_a_missing_final_event(
    serve: Callable[[Handler], object],
) -> None:
    body = b'{"type":"progress"}\n'
    async with await serve(chunked(body)) as client:  # type: ignore[misc]
        stream = stream_of(client, require_final=True)
        assert len(await stream.next_batch()) == 1
        with pytest.raises(StreamError, match="without its final event"):
            await stream.next_batch()
        assert stream.response is None


# ---------------------------------------------------------- the event operation


async def test_operation_without_outcome_gives_the_stream_result(
    serve: Callable[[Handler], object],
) -> None:
    # How sessions.kill is built: the stream's final hook is the outcome.
    async with await serve(chunked(BODY)) as client:  # type: ignore[misc]
        assert await EventOperation(stream_of(client)) == "done"
        op = EventOperation(stream_of(client))
        assert [e async for e in op] == EXPECTED
        gone = EventOperation(stream_of(client, on_api_error=lambda exc: "substitute"))
        assert await gone == "done"  # the server answered 200 here: no substitute


async def test_operation_substitute_and_missing_result(
    serve: Callable[[Handler], object],
) -> None:
    handler = chunked(b'{"error":"session gone"}', status=404)
    async with await serve(handler) as client:  # type: ignore[misc]
        op = EventOperation(stream_of(client, on_api_error=lambda exc: "substitute"))
        assert await op == "substitute"
    async with await serve(chunked(b'{"type":"progress"}\n')) as client:  # type: ignore[misc]
        with pytest.raises(StreamError, match="no final result"):
            await EventOperation(stream_of(client))


async def test_async_resource_opens_on_entry_and_closes_on_any_exit() -> None:
    calls: list[str] = []

    class Thing(AsyncResource):
        async def _aopen(self) -> None:
            calls.append("open")

        async def aclose(self) -> None:
            calls.append("close")

    thing = Thing()
    async with thing as entered:
        assert entered is thing and calls == ["open"]
    with pytest.raises(KeyError):
        async with thing:
            raise KeyError("not swallowed")
    assert calls == ["open", "close", "open", "close"]


def recording_decoder() -> tuple[NDJSONDecoder[Event], list[bytes]]:
    calls: list[bytes] = []

    def decode_lines(block: bytes | memoryview) -> list[Event]:
        calls.append(bytes(block))
        return decoder.decode_lines(block)

    return NDJSONDecoder(decoder.decode, decode_lines=decode_lines), calls


def test_batch_path_decodes_a_whole_chunk_in_place() -> None:
    # A busy stream's chunks are tens of kilobytes: the complete lines are
    # decoded where they lie, not copied into a buffer first.
    seen: list[object] = []

    def decode_lines(block: bytes | memoryview) -> list[Event]:
        seen.append(block)
        return decoder.decode_lines(block)

    lines = NDJSONDecoder(decoder.decode, decode_lines=decode_lines)
    chunk = b"".join(b'{"type":"progress","data":"%d"}\n' % i for i in range(50))
    assert len(lines.feed(chunk)) == 50
    assert seen[0] is chunk


def test_batch_path_finishes_a_split_line_then_decodes_the_rest() -> None:
    lines, calls = recording_decoder()
    body = b"".join(b'{"type":"progress","data":"%d"}\n' % i for i in range(5))
    cut = body.index(b"\n") - 3  # inside the first line
    assert lines.feed(body[:cut]) == []
    assert lines.pending == cut
    events = lines.feed(body[cut:] + b'{"type":"comp')
    assert [e.data for e in events if isinstance(e, Progress)] == ["0", "1", "2", "3", "4"]
    first = body.index(b"\n") + 1
    assert calls == [body[:first], body[first:]]  # the split line alone, then the rest
    assert lines.pending == len(b'{"type":"comp')
    assert lines.feed(b'lete"}') == []
    assert lines.finish() == [Complete()]


def test_batch_path_split_crlf_and_a_bad_line_in_the_rest() -> None:
    lines, _ = recording_decoder()
    out = lines.feed(b'{"type":"progress","data":"a"}\r')
    out += lines.feed(b'\n{"type":"progress","data":"b"}\n{oops}\n{"type":"complete"}\n')
    assert out == [Progress("a"), Progress("b"), Complete()]
    assert lines.skipped == 1  # the bad line alone; its neighbours in the view survive
    assert lines.pending == 0


def test_line_path_with_bytearray_pieces() -> None:
    lines = NDJSONDecoder(decoder.decode)
    out = lines.feed(bytearray(b'{"type":"progress","data":"x"}\n{"type":'))
    out += lines.feed(bytearray(b'"complete"}\n'))
    assert out == [Progress("x"), Complete()]


@given(st.lists(st.integers(0, len(MIXED)), max_size=8), st.integers(0, len(MIXED)))
def test_feeding_a_range_equals_feeding_its_slice(cuts: list[int], pad: int) -> None:
    # The stream feeds a big read a range at a time; a range must decode as
    # its bytes would, whatever surrounds it in the buffer.
    bounds = sorted({0, len(MIXED), *cuts})
    sliced = NDJSONDecoder(decoder.decode, decode_lines=decoder.decode_lines)
    ranged = NDJSONDecoder(decoder.decode, decode_lines=decoder.decode_lines)
    padded = b"x\n" * pad + MIXED + b"\n{junk"
    base = 2 * pad
    for a, b in itertools.pairwise(bounds):
        assert ranged.feed(padded, base + a, base + b) == sliced.feed(MIXED[a:b])
        assert ranged.pending == sliced.pending
    assert ranged.finish() == sliced.finish()


def big_body(count: int) -> bytes:
    return b"".join(b'{"type":"progress","data":"%06d"}\n' % i for i in range(count))


async def test_a_big_read_is_handed_out_in_pieces(serve: Callable[[Handler], object]) -> None:
    # One write the client reads at once: the first events come out before
    # the rest is decoded, and no batch holds more than a piece's lines.
    count = PIECE_BYTES // 10
    body = big_body(count) + b'{"type":"complete","data":"done"}\n'
    async with await serve(chunked(body)) as client:  # type: ignore[misc]
        stream = stream_of(client)
        batches: list[list[Event]] = []
        async with stream:
            while batch := await stream.next_batch():
                batches.append(batch)
        line = len(b'{"type":"progress","data":"000000"}\n')
        assert max(len(b) for b in batches) <= PIECE_BYTES // line
        events = [e for b in batches for e in b]
        assert [e.data for e in events] == [f"{i:06d}" for i in range(count)] + ["done"]
        assert stream.result == "done"


class OneRead:
    """Stands in for the stream seam: a body that arrives in the given reads."""

    _telemetry = None

    def __init__(self, *reads: bytes) -> None:
        self.reads = list(reads)

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kw: object) -> AsyncIterator[OneRead]:
        yield self

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""


async def batches_of(*reads: bytes) -> list[list[str]]:
    stream = NDJSONStream(OneRead(*reads), "POST", "/s", decoder=decoder, operation="test")  # type: ignore[arg-type]
    out: list[list[str]] = []
    async with stream:
        while batch := await stream.next_batch():
            out.append([e.data if isinstance(e, Progress | Complete) else "?" for e in batch])
    return out


async def test_pieces_end_at_the_last_newline_within_the_limit() -> None:
    line = len(b'{"type":"progress","data":"000000"}\n')
    per_piece = PIECE_BYTES // line
    count = 2 * per_piece + 5
    batches = await batches_of(big_body(count))
    assert [len(b) for b in batches] == [per_piece, per_piece, 5]
    assert [d for b in batches for d in b] == [f"{i:06d}" for i in range(count)]


async def test_a_line_longer_than_a_piece_is_decoded_whole() -> None:
    long = "y" * (3 * PIECE_BYTES)
    body = big_body(3) + msgspec.json.encode(Progress(long)) + b"\n" + big_body(2)
    batches = await batches_of(body + b'{"type":"complete","data":"done"}\n')
    assert batches == [["000000", "000001", "000002"], [long], ["000000", "000001", "done"]]
    # Split across reads, it is decoded whole too, once its newline comes.
    cut = len(big_body(3)) + PIECE_BYTES
    assert await batches_of(body[:cut], body[cut:]) == [
        ["000000", "000001", "000002"],
        [long],
        ["000000", "000001"],
    ]
