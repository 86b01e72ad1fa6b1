"""Checkpoint streams without the emulator: decoding at every split, id fallbacks, failures.

A small loopback ``aiohttp.web`` app plays the sprite layer so that each case
controls the exact bytes (and their timing) of the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import RetryPolicy, ServerError, SpritesClient, StreamError
from sprites_async._checkpoints import (
    CheckpointComplete,
    CheckpointError,
    CheckpointErrorEvent,
    CheckpointInfo,
    CheckpointNotFoundError,
    CheckpointsResource,
    _decode_event,
    checkpoint_id_from_events,
)
from sprites_async._streams import NDJSONDecoder, OtherEvent

RECORDED = (
    b'{"type":"info","data":"Creating checkpoint...","time":"2026-01-31T12:24:41.779658713Z"}\n'
    b'{"type":"info","data":"Checkpoint created successfully","time":"2026-01-31T12:24:43.5Z"}\n'
    b'{"type":"info","data":"\\nCheckpoint Details:","time":"2026-01-31T12:24:43.5Z"}\r\n'
    b'{"type":"info","data":"  ID: v1","time":"2026-01-31T12:24:43.5Z"}\n'
    b"\n"
    b'{"type":"stdout","data":"never observed, but typed by SDKs"}\n'
    b"not json at all\n"
    b'{"type":"complete","data":"Checkpoint v1 created successfully",'
    b'"time":"2026-01-31T12:24:43.58Z"}'
)


def decode_all(chunks: list[bytes]) -> list[Any]:
    decoder = NDJSONDecoder(_decode_event)
    out: list[Any] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.finish()


def test_events_are_the_same_at_every_split_point() -> None:
    whole = decode_all([RECORDED])
    assert [type(e) for e in whole] == [
        CheckpointInfo,
        CheckpointInfo,
        CheckpointInfo,
        CheckpointInfo,
        OtherEvent,
        CheckpointComplete,
    ]
    assert whole[2].data == "\nCheckpoint Details:"
    assert whole[4].type == "stdout" and whole[4].fields["data"].startswith("never")
    assert whole[0].timestamp is not None and whole[0].timestamp.microsecond == 779659
    for cut in range(1, len(RECORDED)):
        assert decode_all([RECORDED[:cut], RECORDED[cut:]]) == whole, cut
    assert decode_all([bytes([b]) for b in RECORDED]) == whole


def test_known_type_with_a_bad_field_is_read_field_by_field_not_mislabelled() -> None:
    bad = (
        b'{"type":"complete","data":42}\n{"type":"info","data":"ok","time":"garbage"}\n'
        b'{"type":"error","error":{"nested":1},"time":7}\n'
    )
    events = decode_all([bad])
    assert [type(e) for e in events] == [CheckpointComplete, CheckpointInfo, CheckpointErrorEvent]
    assert events[0].data == "42"  # a number where text belongs, read as its text
    assert events[1].timestamp is None  # a malformed stamp does not lose the event
    assert (events[2].error, events[2].time) == ("", "7")  # an unreadable field is lost alone


def info(data: str) -> CheckpointInfo:
    return CheckpointInfo(data=data)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([info("x"), CheckpointComplete(data="Checkpoint v7 created successfully")], "v7"),
        ([info("  ID: v3"), CheckpointComplete(data="Checkpoint v3 created")], "v3"),
        ([info("  ID: v4"), CheckpointComplete(data="done")], "v4"),
        ([info("Creating checkpoint..."), CheckpointComplete(data="done")], None),
        ([], None),
    ],
)
def test_checkpoint_id_parsing(events: list[Any], expected: str | None) -> None:
    assert checkpoint_id_from_events(events) == expected


# --------------------------------------------------------- a scripted server


class Script:
    """What the fake sprite layer answers; requests are recorded."""

    def __init__(self) -> None:
        self.create_lines: list[bytes] = []
        self.restore_lines: list[bytes] = []
        self.list_body: list[dict[str, Any]] = []
        self.get_status = 200
        self.get_body = b'{"id":"v1"}'
        self.gate: asyncio.Event | None = None
        self.requests: list[tuple[str, str, bytes]] = []


async def _stream_lines(
    request: web.Request, lines: list[bytes], script: Script
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for i, line in enumerate(lines):
        await resp.write(line)
        if i == 0 and script.gate is not None:
            await script.gate.wait()  # hold the rest until the client saw the first event
    await resp.write_eof()
    return resp


def make_app(script: Script) -> web.Application:
    async def record(request: web.Request) -> None:
        script.requests.append((request.method, request.path_qs, await request.read()))

    async def create(request: web.Request) -> web.StreamResponse:
        await record(request)
        return await _stream_lines(request, script.create_lines, script)

    async def restore(request: web.Request) -> web.StreamResponse:
        await record(request)
        return await _stream_lines(request, script.restore_lines, script)

    async def listing(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.json_response(script.list_body)

    async def get(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(status=script.get_status, body=script.get_body)

    app = web.Application()
    app.router.add_post("/v1/sprites/box/checkpoint", create)
    app.router.add_post("/v1/sprites/box/checkpoints/{cp}/restore", restore)
    app.router.add_get("/v1/sprites/box/checkpoints", listing)
    app.router.add_get("/v1/sprites/box/checkpoints/{cp}", get)
    return app


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def checkpoints(script: Script) -> AsyncIterator[CheckpointsResource]:
    server = TestServer(make_app(script), host="127.0.0.1")
    await server.start_server()
    retry = RetryPolicy(max_attempts=1)
    try:
        async with SpritesClient(
            "t", base_url=str(server.make_url("")).rstrip("/"), retry=retry
        ) as c:
            yield CheckpointsResource(c.sprite("box"))
    finally:
        await server.close()


def line(**fields: Any) -> bytes:
    return msgspec.json.encode(fields) + b"\n"


async def test_events_arrive_before_the_body_ends(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.gate = asyncio.Event()
    script.create_lines = [
        line(type="info", data="Creating checkpoint..."),
        line(type="complete", data="Checkpoint v1 created successfully"),
    ]
    op = checkpoints.create(comment="c")
    async with op:
        first = await asyncio.wait_for(op.__anext__(), 5)
        assert isinstance(first, CheckpointInfo)
        script.gate.set()  # only now does the server send the rest
        rest = [e async for e in op]
    assert [type(e) for e in rest] == [CheckpointComplete]
    assert script.requests[0][2] == b'{"comment":"c"}'


async def test_create_sends_empty_object_without_comment(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.create_lines = [line(type="complete", data="Checkpoint v2 created")]
    script.get_body = b'{"id":"v2","create_time":"2026-01-31T15:39:02Z","is_auto":false}'
    cp = await checkpoints.create()
    assert cp.id == "v2"
    assert script.requests[0][2] == b"{}"
    assert script.requests[1][:2] == ("GET", "/v1/sprites/box/checkpoints/v2")


async def test_id_falls_back_to_the_newest_in_the_list(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.create_lines = [line(type="info", data="Creating..."), line(type="complete", data="ok")]
    script.list_body = [
        {"id": "Current", "create_time": "2026-01-31T15:39:04Z", "is_auto": False},
        {"id": "v2", "create_time": "2026-01-31T15:39:02Z", "comment": "second"},
        {"id": "v1", "create_time": "2026-01-31T15:39:02Z"},
        {"id": "v0", "create_time": "2026-01-31T15:35:26Z"},
    ]
    cp = await checkpoints.create()
    assert cp.id == "v2" and cp.comment == "second"
    assert [r[1] for r in script.requests][-1] == "/v1/sprites/box/checkpoints"


async def test_error_event_and_early_end_raise(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.create_lines = [
        line(type="info", data="Creating checkpoint..."),
        line(type="error", error="disk full", time="2026-01-31T12:24:41Z"),
        line(type="complete", data="never reached"),
    ]
    with pytest.raises(CheckpointError, match="disk full") as caught:
        await checkpoints.create()
    assert caught.value.server_message == "disk full"
    assert isinstance(caught.value, StreamError)

    script.restore_lines = [line(type="info", data="Restoring from checkpoint v1...")]
    with pytest.raises(CheckpointError, match="without a 'complete'"):
        await checkpoints.restore("v1")
    events: list[Any] = []

    async def collect() -> None:
        async for event in checkpoints.restore("v1"):
            events.append(event)

    with pytest.raises(CheckpointError):
        await collect()
    assert len(events) == 1

    script.restore_lines = []
    with pytest.raises(CheckpointError):
        await checkpoints.restore("v1")


async def test_restore_path_is_percent_encoded(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.restore_lines = [line(type="complete", data="Restore from a/b complete")]
    assert await checkpoints.restore("a/b") is None
    assert script.requests[0][1] == "/v1/sprites/box/checkpoints/a%2Fb/restore"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b"checkpoint not found", CheckpointNotFoundError),
        (
            500,
            b"Failed to get checkpoint: failed to get checkpoint: checkpoint not found: "
            b"checkpoint with path checkpoints/nonexistent not found\n",
            CheckpointNotFoundError,
        ),
        (500, b"Storage not ready", ServerError),
    ],
)
async def test_get_maps_not_found(
    checkpoints: CheckpointsResource,
    script: Script,
    status: int,
    body: bytes,
    expected: type[Exception],
) -> None:
    script.get_status, script.get_body = status, body
    with pytest.raises(expected) as caught:
        await checkpoints.get("nonexistent")
    assert caught.value.status_code == status  # type: ignore[attr-defined]


async def test_guard_reports_a_failed_restore(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.create_lines = [line(type="complete", data="Checkpoint v1 created")]
    script.restore_lines = [line(type="error", error="restore broke")]
    with pytest.raises(CheckpointError, match="restore broke") as caught:
        async with checkpoints.guard():
            raise KeyError("block failed")
    cause = caught.value.__cause__
    assert isinstance(cause, CheckpointError) and cause.server_message == "restore broke"
    assert isinstance(cause.__context__, KeyError)


async def test_unknown_events_reach_the_caller(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.restore_lines = [
        line(type="progress", percent=50),
        line(type="complete", data="Restore from v1 complete"),
    ]
    events = [e async for e in checkpoints.restore("v1")]
    assert isinstance(events[0], OtherEvent) and events[0].fields["percent"] == 50
    assert not any(isinstance(e, CheckpointErrorEvent) for e in events)


async def test_cancelling_a_create_releases_everything(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.gate = asyncio.Event()  # never set: the stream stalls after its first line
    script.create_lines = [
        line(type="info", data="Creating checkpoint..."),
        line(type="complete", data="Checkpoint v1 created"),
    ]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(checkpoints.create(), 0.3)
    script.gate.set()  # let the server handler finish; the leak check runs after the test


def test_event_type_is_the_wire_tag() -> None:
    for cls in (CheckpointInfo, CheckpointErrorEvent, CheckpointComplete):
        assert cls.type == cls.__struct_config__.tag
        event = _decode_event(line(type=cls.type, time="2026-01-31T12:24:41Z"))
        assert type(event) is cls and event.type == cls.type
        assert b'"type":"%s"' % cls.type.encode() in msgspec.json.encode(event)


async def test_error_in_the_middle_of_one_chunk(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    many = [line(type="info", data=f"step {i}") for i in range(300)]
    script.restore_lines = [
        b"".join([*many, line(type="error", error="bad layer"), *many, line(type="complete")])
    ]
    events: list[Any] = []

    async def collect() -> None:
        async for event in checkpoints.restore("v1"):
            events.append(event)

    with pytest.raises(CheckpointError, match="bad layer"):
        await collect()
    # Every event before the error reached the caller; the error is raised, nothing follows.
    assert [e.data for e in events] == [f"step {i}" for i in range(300)]


async def test_the_id_is_found_near_the_end_of_a_long_stream(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    progress = [line(type="info", data=f"Copying layer {i}") for i in range(5000)]
    script.create_lines = [
        b"".join(progress),
        line(type="info", data="  ID: v7"),
        line(type="info", data="  Path: checkpoints/v7"),
        line(type="complete", data="done"),
    ]
    script.get_body = b'{"id":"v7","create_time":"2026-01-31T15:39:02Z","is_auto":false}'
    cp = await checkpoints.create()
    assert cp.id == "v7"
    assert script.requests[-1][1] == "/v1/sprites/box/checkpoints/v7"


async def test_an_id_line_far_from_the_end_falls_back_to_the_list(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    # Only the stream's last lines are kept (memory stays bounded); the
    # documented last resort, the newest checkpoint in the list, then applies.
    script.create_lines = [
        line(type="info", data="  ID: v7"),
        b"".join(line(type="info", data=f"Copying layer {i}") for i in range(5000)),
        line(type="complete", data="done"),
    ]
    script.list_body = [{"id": "v8", "create_time": "2026-01-31T15:39:04Z"}]
    cp = await checkpoints.create()
    assert cp.id == "v8"
    assert script.requests[-1][1] == "/v1/sprites/box/checkpoints"


async def test_stopping_early_and_closing_ends_the_iteration(
    checkpoints: CheckpointsResource, script: Script
) -> None:
    script.restore_lines = [
        b"".join(line(type="info", data=f"step {i}") for i in range(100)),
        line(type="complete"),
    ]
    op = checkpoints.restore("v1")
    async for _ in op:
        break
    await op.aclose()
    assert [e async for e in op] == []
    await op.aclose()  # idempotent
    with pytest.raises(CheckpointError, match="without a 'complete'"):
        await op
