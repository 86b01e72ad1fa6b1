"""OpenTelemetry spans and metrics (optional: ``pip install sprites-async[otel]``).

This is the only module that imports ``opentelemetry``, and it is imported
only when a client is created with telemetry on: a client without it keeps
``_telemetry = None`` and its request and exec paths test that one attribute
and nothing else (no span objects, no context work).

Only ``opentelemetry-api`` is needed: spans and metrics go to the providers
passed to the client, else to the global ones, which do nothing until the
application installs an SDK (the OpenTelemetry convention for libraries).

What is recorded never includes the token, a header other than the two
request ids, a query string, a command line or an environment.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._errors import APIError
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from multidict import CIMultiDictProxy

    from ._body import Body
    from ._exec import ExecSession
    from ._session import BaseClient, Response
    from ._websocket import WebSocket

SCOPE = "sprites_async"


def _error_type(exc: BaseException) -> str:
    # The semantic conventions: the status code for an HTTP error, else the
    # exception's class (a low-cardinality name, never its message).
    if isinstance(exc, APIError) and exc.status_code:
        return str(exc.status_code)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return type(exc).__qualname__


class Telemetry:
    """A client's tracer, meter and instruments."""

    def __init__(
        self,
        client: BaseClient,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        parts = urlsplit(client.base_url)
        # Never a user:password@ from the URL in an attribute.
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        self._base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._server: dict[str, str | int] = {"server.address": host, "server.port": port}
        self.http_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of Sprites API calls, retries included.",
        )
        self.handshakes = meter.create_histogram(
            "sprites.handshake.duration",
            unit="s",
            description="Duration of WebSocket handshakes (exec, attach, control, proxy).",
        )
        self.exec_duration = meter.create_histogram(
            "sprites.exec.duration",
            unit="s",
            description="Duration of commands, from start to exit status.",
        )
        self.retries = meter.create_counter(
            "sprites.retries",
            unit="{retry}",
            description="Requests and handshakes sent again after a failure.",
        )
        self.bytes = meter.create_counter(
            "sprites.bytes",
            unit="By",
            description="Bytes sent and received in bodies, streams and command output.",
        )
        clients = _watched.get(meter)
        if clients is None:
            # One gauge per meter for all its clients: a meter keeps the
            # callbacks of an instrument's first registration only.
            clients = _watched[meter] = weakref.WeakSet()
            meter.create_observable_up_down_counter(
                "sprites.control.sockets",
                callbacks=[functools.partial(_pooled_sockets, clients)],
                unit="{socket}",
                description="Open pooled /control sockets (state: idle or busy).",
            )
        clients.add(client)

    # ----------------------------------------------------------------- seams

    def trace_seams(self, client: BaseClient) -> None:
        """Run every call of ``client``'s three seams under a span of its own.

        The traced seams are set on the client itself, where they shadow its
        methods: a client without telemetry runs the methods as they are,
        with no test and no layer of ours in the way.
        """
        request, stream, ws_connect = client._request, client._stream, client._ws_connect

        async def traced_request(
            method: str,
            path: str,
            *,
            operation: str,
            sprite: str | None = None,
            json: bytes | None = None,
            data: bytes | None = None,
            **kwargs: Any,
        ) -> Response:
            call = request(
                method, path, operation=operation, sprite=sprite, json=json, data=data, **kwargs
            )
            return await self.request(
                call, method, path, operation, sprite, len(json or data or b"")
            )

        def traced_stream(
            method: str,
            path: str,
            *,
            operation: str,
            sprite: str | None = None,
            json: bytes | None = None,
            data: Any = None,
            **kwargs: Any,
        ) -> AbstractAsyncContextManager[Body]:
            def open_stream(body: Any) -> AbstractAsyncContextManager[Body]:
                return stream(
                    method, path, operation=operation, sprite=sprite, json=json, data=body, **kwargs
                )

            return self.stream(open_stream, data, len(json or b""), method, path, operation, sprite)

        async def traced_ws_connect(
            path: str, *, operation: str, sprite: str | None = None, **kwargs: Any
        ) -> tuple[WebSocket, CIMultiDictProxy[str]]:
            call = ws_connect(path, operation=operation, sprite=sprite, **kwargs)
            return await self.handshake(call, path, operation, sprite)

        client._request = traced_request  # type: ignore[method-assign]
        client._stream = traced_stream  # type: ignore[method-assign,assignment]
        client._ws_connect = traced_ws_connect  # type: ignore[method-assign]

    # ----------------------------------------------------------------- HTTP

    def _start(self, method: str, path: str, operation: str, sprite: str | None) -> Span:
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.full": self._base + path,
            **self._server,
            "sprites.operation": operation,
        }
        if sprite is not None:
            attributes["sprites.sprite"] = sprite
        return self._tracer.start_span(
            f"{method} {operation}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def _end(
        self,
        span: Span,
        started: float,
        error: BaseException | None,
        metric: Any,
        attributes: dict[str, str | int],
    ) -> None:
        if error is not None:
            kind = _error_type(error)
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
            attributes["error.type"] = kind
        span.end()
        metric.record(time.monotonic() - started, attributes)

    def _attributes(self, method: str, operation: str) -> dict[str, str | int]:
        return {"http.request.method": method, "sprites.operation": operation, **self._server}

    async def request(
        self,
        call: Awaitable[Response],
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
        sent: int,
    ) -> Response:
        """Run one API call (all its attempts) under a span of its own."""
        span = self._start(method, path, operation, sprite)
        started = time.monotonic()
        attributes = self._attributes(method, operation)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            resp = await call
        except BaseException as exc:
            otel_context.detach(token)
            self._end(span, started, exc, self.http_duration, attributes)
            raise
        otel_context.detach(token)
        attributes["http.response.status_code"] = resp.status
        self._transferred(span, sent, len(resp.body), operation)
        self._end(span, started, None, self.http_duration, attributes)
        return resp

    @asynccontextmanager
    async def stream(
        self,
        open_stream: Callable[[Any], AbstractAsyncContextManager[Body]],
        data: Any,
        json_size: int,
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
    ) -> AsyncIterator[Body]:
        """A streamed call: one span from the request to the block's exit.

        The span is current only while the request is sent (so that each
        attempt is recorded on it), not in the caller's block.
        """
        span = self._start(method, path, operation, sprite)
        started = time.monotonic()
        attributes = self._attributes(method, operation)
        sent = [len(data) if isinstance(data, (bytes, bytearray, memoryview)) else json_size]
        if isinstance(data, AsyncIterable):
            data = _counted(data, sent)
        resp: Any = None
        error: BaseException | None = None
        token: Any = otel_context.attach(trace.set_span_in_context(span))
        try:
            async with open_stream(data) as resp:
                otel_context.detach(token)
                token = None
                attributes["http.response.status_code"] = resp.status
                yield resp
        except BaseException as exc:
            error = exc
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
            received = getattr(getattr(resp, "content", None), "total_bytes", 0)
            received = received if isinstance(received, int) else 0
            self._transferred(span, sent[0], received, operation)
            self._end(span, started, error, self.http_duration, attributes)

    async def handshake(
        self,
        call: Awaitable[tuple[WebSocket, CIMultiDictProxy[str]]],
        path: str,
        operation: str,
        sprite: str | None,
    ) -> tuple[WebSocket, CIMultiDictProxy[str]]:
        """A WebSocket upgrade (all its attempts) under a span of its own."""
        span = self._start("GET", path, operation, sprite)
        started = time.monotonic()
        attributes: dict[str, str | int] = {"sprites.operation": operation}
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await call
        except BaseException as exc:
            otel_context.detach(token)
            self._end(span, started, exc, self.handshakes, attributes)
            raise
        otel_context.detach(token)
        self._end(span, started, None, self.handshakes, attributes)
        return result

    def attempt(
        self,
        status: int | None,
        attempt: int,
        headers: Mapping[str, str] | None,
        method: str,
    ) -> None:
        """One attempt's outcome, on the call's span (the current one)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if attempt > 1:
            span.set_attribute("http.request.resend_count", attempt - 1)
            self.retries.add(1, {"http.request.method": method})
        if headers:
            for header, name in _REQUEST_IDS:
                value = headers.get(header)
                if value:
                    span.set_attribute(name, value)

    def _transferred(self, span: Span, sent: int, received: int, operation: str) -> None:
        if sent:
            span.set_attribute("http.request.body.size", sent)
            self.bytes.add(sent, {"sprites.operation": operation, "sprites.direction": "sent"})
        if received:
            span.set_attribute("http.response.body.size", received)
            self.bytes.add(
                received, {"sprites.operation": operation, "sprites.direction": "received"}
            )

    # ----------------------------------------------------------------- exec

    def exec_span(self, session: ExecSession, operation: str) -> ExecSpan:
        """Open the span of a command (``exec`` or ``attach``)."""
        attributes: dict[str, str] = {"sprites.sprite": session.sprite.name}
        attributes["sprites.operation"] = operation
        span = self._tracer.start_span(
            f"sprites {operation}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        return ExecSpan(self, span, operation)


class ExecSpan:
    """The span of one command: from its start to its exit status."""

    __slots__ = ("_ended", "_failure", "_operation", "_started", "_telemetry", "received", "span")

    def __init__(self, telemetry: Telemetry, span: Span, operation: str) -> None:
        self._telemetry = telemetry
        self.span = span
        self._operation = operation
        self._started = time.monotonic()
        self._failure: BaseException | None = None
        self._ended = False
        self.received = 0

    @contextmanager
    def current(self, session: ExecSession) -> Iterator[None]:
        """Make the span current (its handshake becomes a child); end it if this fails."""
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield
        except BaseException as exc:
            self.fail(exc)
            self.end(session, exc)
            raise
        finally:
            otel_context.detach(token)

    def counting(self, sink: Callable[[int, bytes], None]) -> Callable[[int, bytes], None]:
        """Wrap an output sink to count the bytes it receives."""

        def count(stream: int, data: bytes) -> None:
            self.received += len(data)
            sink(stream, data)

        return count

    def fail(self, error: BaseException) -> None:
        """The caller gave up (timeout, cancellation): end with an error whatever the exit."""
        if self._failure is None:
            self._failure = error

    def end(self, session: ExecSession, error: BaseException | None) -> None:
        """Record the outcome and end the span (once)."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        exit_code = session.exit_code
        if session.session_id is not None:
            span.set_attribute("sprites.exec.session_id", session.session_id)
        span.set_attribute(
            "sprites.exec.transport", "control" if session.via_control else "websocket"
        )
        if session._detached and self._failure is None:
            # Left running on purpose: no exit status, and no error either.
            span.set_attribute("sprites.exec.detached", True)
            error = None
        error = self._failure or error
        if exit_code is not None:
            span.set_attribute("process.exit.code", exit_code)
        if self.received:
            span.set_attribute("sprites.exec.output_bytes", self.received)
            self._telemetry.bytes.add(
                self.received,
                {"sprites.operation": self._operation, "sprites.direction": "received"},
            )
        attributes: dict[str, str | int] = {"sprites.operation": self._operation}
        if error is not None:
            kind = _error_type(error)
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
            attributes["error.type"] = kind
        elif exit_code:
            # A command that exits non-zero failed, like a 4xx call.
            span.set_attribute("error.type", "exit_code")
            span.set_status(Status(StatusCode.ERROR, f"exit code {exit_code}"))
            attributes["error.type"] = "exit_code"
        span.end()
        self._telemetry.exec_duration.record(time.monotonic() - self._started, attributes)


_REQUEST_IDS = (
    ("x-request-id", "sprites.request_id"),
    ("fly-request-id", "sprites.fly_request_id"),
)


async def _counted(data: AsyncIterable[Any], sent: list[int]) -> AsyncIterator[Any]:
    async for chunk in data:
        sent[0] += len(chunk)
        yield chunk


_watched: weakref.WeakKeyDictionary[Any, weakref.WeakSet[BaseClient]] = weakref.WeakKeyDictionary()
"""Per meter: the clients whose pooled sockets its gauge reports.

Keyed by the meter, not kept on a client: a meter keeps the callbacks of an
instrument's first registration only, so all clients sharing a meter must
share the one callback, and with it this set."""


def _pooled_sockets(
    clients: weakref.WeakSet[BaseClient], options: CallbackOptions
) -> Iterator[Observation]:
    idle = busy = 0
    try:
        for client in list(clients):
            pool = client._control_pool
            if pool is not None:
                stats = pool.stats()
                idle += stats["idle"]
                busy += stats["open"] - stats["idle"]
    except RuntimeError:  # a reader thread raced the loop changing a pool: skip once
        return
    yield Observation(idle, {"sprites.state": "idle"})
    yield Observation(busy, {"sprites.state": "busy"})
