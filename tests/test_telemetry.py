"""OpenTelemetry spans and metrics (the ``otel`` extra), with the SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aioresponses import aioresponses

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sprites_async import (
    CommandTimeoutError,
    NotFoundError,
    RetryPolicy,
    SpritesClient,
    SpritesConnectionError,
    StreamError,
)
from sprites_async._config import ExecSettings
from tests._emulator import no_leftovers, wait_for
from tests._mock import BASE, TOKEN, sprite_json, url

SETTINGS = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0)
NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


class Otel:
    """A tracer provider and a meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out

    def client(self, token: str = TOKEN, **kwargs: Any) -> SpritesClient:
        return SpritesClient(
            token,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **kwargs,
        )

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.shutdown()


def assert_no_secret(spans: list[ReadableSpan], *secrets: str) -> None:
    """No attribute, status, event or name of any span holds a secret (nor 'Bearer')."""
    for span in spans:
        texts = [span.name, str(span.status.description or "")]
        texts += [str(v) for v in (span.attributes or {}).values()]
        for event in span.events:
            texts += [str(v) for v in (event.attributes or {}).values()]
        for text in texts:
            for secret in (*secrets, "Bearer"):
                assert secret not in text, (span.name, text)


# ------------------------------------------------------------------ API calls


async def test_a_call_is_one_client_span_under_the_callers_span(
    mock: aioresponses, otel: Otel
) -> None:
    mock.get(
        url("/v1/sprites/alpha"),
        payload=sprite_json("alpha"),
        headers={"x-request-id": "req-1", "fly-request-id": "fly-1"},
    )
    tracer = otel.tracer_provider.get_tracer("app")
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        with tracer.start_as_current_span("handler") as parent:
            await client.sprites.get("alpha")
    span = otel.span("GET get sprite")
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.full"] == BASE + "/v1/sprites/alpha"
    assert attrs["server.address"] == "api.test"
    assert attrs["server.port"] == 443
    assert attrs["http.response.status_code"] == 200
    assert attrs["sprites.sprite"] == "alpha"
    assert attrs["sprites.operation"] == "get sprite"
    assert attrs["sprites.request_id"] == "req-1"
    assert attrs["sprites.fly_request_id"] == "fly-1"
    assert attrs["http.response.body.size"] > 0
    assert "http.request.resend_count" not in attrs
    assert_no_secret(otel.spans(), TOKEN)
    points = otel.metrics()["http.client.request.duration"]
    assert points[0].count == 1
    assert points[0].attributes["http.response.status_code"] == 200


async def test_the_query_string_stays_out_of_the_url(mock: aioresponses, otel: Otel) -> None:
    mock.get(url("/v1/sprites"), payload={"sprites": [], "has_more": False})
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        await client.sprites.list(prefix="secret-prefix")
    (span,) = otel.spans()
    assert span.attributes is not None
    assert span.attributes["url.full"] == BASE + "/v1/sprites"
    assert_no_secret(otel.spans(), TOKEN, "secret-prefix")


async def test_a_retried_call_records_its_resend_count(mock: aioresponses, otel: Otel) -> None:
    mock.get(url("/v1/sprites/alpha"), status=503, body=b"busy")
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json("alpha"))
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        await client.sprites.get("alpha")
    span = otel.span("GET get sprite")  # one span for both attempts
    assert span.attributes is not None
    assert span.attributes["http.request.resend_count"] == 1
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.UNSET
    (retries,) = otel.metrics()["sprites.retries"]
    assert retries.value == 1


async def test_a_failed_call_ends_its_span_with_an_error(mock: aioresponses, otel: Otel) -> None:
    mock.get(url("/v1/sprites/ghost"), status=404, payload={"error": "not found"})
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        with pytest.raises(NotFoundError):
            await client.sprites.get("ghost")
    span = otel.span("GET get sprite")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "404"
    assert span.attributes["http.response.status_code"] == 404
    assert_no_secret(otel.spans(), TOKEN)


async def test_connection_failures_are_retries_then_an_error_type(
    mock: aioresponses, otel: Otel
) -> None:
    refused = aiohttp.ClientConnectionError("connection refused")
    mock.get(url("/v1/sprites/alpha"), exception=refused)
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json("alpha"))
    for _ in range(3):
        mock.get(url("/v1/sprites/beta"), exception=refused)
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        await client.sprites.get("alpha")
        with pytest.raises(SpritesConnectionError):
            await client.sprites.get("beta")
    alpha, beta = otel.spans()
    assert alpha.attributes is not None
    assert alpha.attributes["http.request.resend_count"] == 1
    assert alpha.status.status_code is StatusCode.UNSET
    assert beta.attributes is not None
    assert beta.attributes["http.request.resend_count"] == 2
    assert beta.attributes["error.type"] == "SpritesConnectionError"
    assert "http.response.status_code" not in beta.attributes
    assert beta.status.status_code is StatusCode.ERROR
    (retries,) = otel.metrics()["sprites.retries"]
    assert retries.value == 3
    assert_no_secret(otel.spans(), TOKEN)


# ------------------------------------------------------------------ exec


@pytest.fixture(params=["direct", "control"])
async def traced(request: pytest.FixtureRequest, exec_emu: Any) -> AsyncIterator[Any]:
    o = Otel()
    client = o.client(exec_emu.token, base_url=exec_emu.url, exec_settings=SETTINGS)
    client.control = request.param == "control"
    o.mode = request.param  # type: ignore[attr-defined]
    o.sprite = client.sprite("box")  # type: ignore[attr-defined]
    o.emu_token = exec_emu.token  # type: ignore[attr-defined]
    yield o
    await no_leftovers(exec_emu, client)
    o.shutdown()


async def test_a_command_span_covers_it_and_parents_its_handshake(traced: Any) -> None:
    tracer = traced.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("job") as parent:
        result = await traced.sprite.exec("sh", "-c", "printf hello; exit 0")
    assert result.stdout == b"hello"
    span = traced.span("sprites exec")
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs["process.exit.code"] == 0
    assert attrs["sprites.sprite"] == "box"
    assert attrs["sprites.exec.session_id"] == result.session_id
    assert attrs["sprites.exec.output_bytes"] == 5
    assert attrs["sprites.exec.transport"] == (
        "control" if traced.mode == "control" else "websocket"
    )
    # Its handshake (/exec, or the /control socket the pool dialled) is its child.
    handshake = traced.span("GET exec" if traced.mode == "direct" else "GET control")
    assert handshake.parent is not None
    assert handshake.parent.span_id == span.context.span_id
    assert handshake.attributes is not None
    assert handshake.attributes["http.response.status_code"] == 101
    assert span.start_time <= handshake.start_time
    assert handshake.end_time <= span.end_time
    assert_no_secret(traced.spans(), traced.emu_token)
    found = traced.metrics()
    assert found["sprites.exec.duration"][0].count == 1
    assert found["sprites.handshake.duration"][0].count == 1
    received = [p for p in found["sprites.bytes"] if p.attributes["sprites.operation"] == "exec"]
    assert received[0].value == 5
    if traced.mode == "control":
        sockets = {p.attributes["sprites.state"]: p.value for p in found["sprites.control.sockets"]}
        assert sockets == {"idle": 1, "busy": 0}


async def test_a_failed_command_ends_its_span_with_an_error(traced: Any) -> None:
    result = await traced.sprite.exec("sh", "-c", "exit 3")
    assert result.exit_code == 3
    span = traced.span("sprites exec")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["process.exit.code"] == 3
    assert span.attributes["error.type"] == "exit_code"


async def test_a_timed_out_command_ends_its_span_with_an_error(traced: Any) -> None:
    with pytest.raises(CommandTimeoutError):
        await traced.sprite.exec("sleep", "30", timeout=0.5)
    span = traced.span("sprites exec")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "CommandTimeoutError"
    points = traced.metrics()["sprites.exec.duration"]
    assert points[0].attributes["error.type"] == "CommandTimeoutError"


async def test_a_cancelled_command_ends_its_span_with_an_error(traced: Any, exec_emu: Any) -> None:
    task = asyncio.ensure_future(traced.sprite.exec("sleep", "30"))
    await wait_for(lambda: exec_emu.state.sessions.list("box"), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = traced.span("sprites exec")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "cancelled"
    assert span.end_time is not None


async def test_a_streamed_upload_counts_its_bytes(traced: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defg"

    path = traced.sprite.fs("/tmp") / "telemetry.bin"
    await path.write_stream(chunks())
    assert await path.read_bytes() == b"abcdefg"
    write = [s for s in traced.spans() if s.name == "PUT fs write"]
    assert len(write) == 1
    assert write[0].attributes["http.request.body.size"] == 7
    assert write[0].attributes["http.response.status_code"] == 200
    read = traced.span("GET fs read")
    assert read.attributes is not None
    assert read.attributes["http.response.body.size"] == 7
    assert "?" not in str(read.attributes["url.full"])
    assert_no_secret(traced.spans(), traced.emu_token)


# ------------------------------------------------------------------ off / global


@pytest.fixture
def global_otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    """The app configured the global providers (restored after the test)."""
    import opentelemetry.metrics._internal as metrics_internal

    o = Otel()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", o.tracer_provider)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", o.meter_provider)
    assert trace.get_tracer_provider() is o.tracer_provider
    assert metrics.get_meter_provider() is o.meter_provider
    yield o
    o.shutdown()


async def test_off_by_default_even_with_a_global_provider(
    mock: aioresponses, global_otel: Otel
) -> None:
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json("alpha"))
    async with SpritesClient(TOKEN, base_url=BASE, retry=NO_WAIT) as client:
        assert client._telemetry is None
        await client.sprites.get("alpha")
    assert global_otel.spans() == []
    assert global_otel.metrics() == {}


async def test_telemetry_true_uses_the_global_providers(
    mock: aioresponses, global_otel: Otel
) -> None:
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json("alpha"))
    async with SpritesClient(TOKEN, base_url=BASE, retry=NO_WAIT, telemetry=True) as client:
        await client.sprites.get("alpha")
    assert [s.name for s in global_otel.spans()] == ["GET get sprite"]
    assert "http.client.request.duration" in global_otel.metrics()


def test_a_client_without_telemetry_never_imports_opentelemetry() -> None:
    code = (
        "import sys, sprites_async\n"
        "c = sprites_async.SpritesClient('t', base_url='http://127.0.0.1:9')\n"
        "assert c._telemetry is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert 'sprites_async._telemetry' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ streams


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(msgspec.json.encode(e) + b"\n" for e in events)


async def test_a_stream_span_lasts_until_the_stream_is_read(mock: aioresponses, otel: Otel) -> None:
    body = ndjson(
        {"type": "info", "data": "Creating checkpoint..."},
        {"type": "complete", "data": "Checkpoint v1 created"},
    )
    mock.post(url("/v1/sprites/alpha/checkpoint"), body=body, headers={"x-request-id": "r-9"})
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        async with client.sprite("alpha").checkpoints.create() as stream:
            async for _ in stream:
                assert otel.spans() == []  # still open while the events come
    span = otel.span("POST create checkpoint")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["sprites.request_id"] == "r-9"
    assert span.attributes["http.response.body.size"] == len(body)
    assert span.attributes["http.request.body.size"] > 0


async def test_an_error_event_ends_the_stream_span_with_an_error(
    mock: aioresponses, otel: Otel
) -> None:
    body = ndjson(
        {"type": "info", "data": "Creating checkpoint..."},
        {"type": "error", "error": "disk full", "time": "2026-01-31T12:24:41Z"},
    )
    mock.post(url("/v1/sprites/alpha/checkpoint"), body=body)
    async with otel.client(base_url=BASE, retry=NO_WAIT) as client:
        with pytest.raises(StreamError, match="disk full"):
            await client.sprite("alpha").checkpoints.create()
    span = otel.span("POST create checkpoint")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "CheckpointError"


async def test_a_detached_command_and_its_attach_have_spans_of_their_own(traced: Any) -> None:
    sprite = traced.sprite
    async with sprite.process(
        "sh", "-c", "echo one; sleep 30", max_run_after_disconnect="30s"
    ) as proc:
        assert await proc.stdout.__anext__() == b"one\n"
        session_id = await proc.detach()
    first = traced.span("sprites exec")
    assert first.status.status_code is StatusCode.UNSET  # left running on purpose
    assert first.attributes is not None
    assert first.attributes["sprites.exec.detached"] is True
    assert "process.exit.code" not in first.attributes
    async with sprite.sessions.attach(session_id) as proc:
        assert await proc.stdout.__anext__() == b"one\n"
        await proc.kill()
        await proc.wait()
    span = traced.span("sprites attach")
    assert span.attributes is not None
    assert span.attributes["sprites.exec.session_id"] == session_id
    assert span.attributes["process.exit.code"] != 0
    assert span.status.status_code is StatusCode.ERROR
    handshakes = [s for s in traced.spans() if s.name == "GET attach"]
    assert handshakes
    assert all(h.parent is not None for h in handshakes)
    assert {h.parent.span_id for h in handshakes if h.parent} == {span.context.span_id}
    assert_no_secret(traced.spans(), traced.emu_token)


async def test_the_pooled_socket_gauge_counts_every_client_of_a_meter(
    exec_emu: Any, otel: Otel
) -> None:
    clients = [
        otel.client(exec_emu.token, base_url=exec_emu.url, exec_settings=SETTINGS) for _ in range(2)
    ]
    try:
        for client in clients:
            assert (await client.sprite("box").exec("true")).exit_code == 0
        points = otel.metrics()["sprites.control.sockets"]
        assert {p.attributes["sprites.state"]: p.value for p in points} == {"idle": 2, "busy": 0}
    finally:
        await clients[1].aclose()
        await no_leftovers(exec_emu, clients[0])
