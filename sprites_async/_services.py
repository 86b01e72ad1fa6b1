"""Services: long-lived processes the sprite runtime starts, restarts and brings back.

``create``, ``start``, ``stop`` and ``restart`` stream NDJSON events while
the server acts; like checkpoints they return an
:class:`~sprites_async.EventOperation`: iterate it for the events, or await
it for a :class:`ServiceResult`::

    await sprite.services.create("web", cmd="python3", args=["-m", "http.server", "3000"],
                                 http_port=3000)
    async for event in sprite.services.logs("web", follow=True):
        print(event)

A ``200`` stream can still report failure, so the status alone proves
nothing: an ``error`` event raises :class:`ServiceError`; so does a start
whose process exits (with a code other than 0) within the watch window, and
a stream that ends without ``complete``. Event timestamps
are Unix milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import msgspec

from ._errors import APIError, NotFoundError, StreamError, missing_as
from ._models import (
    JSONDecoder,
    LiberalDecoder,
    RawSource,
    decode_any,
    raw_of,
    salvage_list,
    share_raw,
)
from ._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    RequestOptions,
    quote_segment,
    request_options,
)
from ._paging import AsyncPaginator, ListPage
from ._resource import SpriteResource
from ._session import Response
from ._streams import EventOperation, EventTracker, NDJSONStream, OtherEvent, event_decoder
from ._validation import check_int, check_path_name, go_duration, signal_name

__all__ = [
    "Service",
    "ServiceComplete",
    "ServiceError",
    "ServiceErrorEvent",
    "ServiceEvent",
    "ServiceExit",
    "ServiceNotFoundError",
    "ServiceOutput",
    "ServiceResult",
    "ServiceStarted",
    "ServiceState",
    "ServiceStderr",
    "ServiceStdout",
    "ServiceStopped",
    "ServiceStopping",
    "ServicesResource",
]

FOLLOW_FOREVER = 24 * 3600.0
"""How long ``logs(follow=True)`` follows when no duration is given (the API needs a bound)."""


# --------------------------------------------------------------------- errors


class ServiceError(StreamError):
    """A service stream reported an ``error``, an early ``exit``, or ended without ``complete``.

    Attributes:
        service: The service's name.
        operation: ``"create service"``, ``"start service"`` ...
        sprite: The sprite's name.
        exit_code: The process's exit code, when it exited.
        server_message: The server's error text, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str,
        operation: str,
        sprite: str,
        exit_code: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.operation = operation
        self.sprite = sprite
        self.exit_code = exit_code
        self.server_message = server_message


class ServiceNotFoundError(NotFoundError):
    """No service with that name exists in the sprite."""


# ---------------------------------------------------------------------- models


class ServiceState(msgspec.Struct, kw_only=True):
    """A service's runtime state.

    Attributes:
        status: ``stopped``, ``starting``, ``running``, ``stopping``,
            ``failed``, or anything newer.
        pid: The process id while running.
        started_at: When it last started.
        error: Why it failed, when it did.
        restart_count: How often it was restarted after crashes.
        next_restart_at: When the next crash restart is scheduled.
    """

    name: str | None = None
    status: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    error: str | None = None
    restart_count: int | None = None
    next_restart_at: datetime | None = None


class Service(msgspec.Struct, kw_only=True, dict=True):
    """A service definition and its state.

    ``args`` and ``needs`` are lists even when the server sends ``null`` (it
    does for a service created without them). :attr:`raw` is the JSON object
    as received.

    Attributes:
        name: The service's name.
        cmd: The executable (no arguments).
        args: Its arguments.
        needs: Services that must start first.
        http_port: The port the sprite's URL routes to (auto-starts the service).
        env: Variables added to the service environment.
        dir: Working directory.
        state: Runtime state (None when the server sent none).
    """

    name: str
    cmd: str = ""
    args: list[str] = msgspec.field(default_factory=list)
    needs: list[str] = msgspec.field(default_factory=list)
    http_port: int | None = None
    env: dict[str, str] | None = None
    dir: str | None = None
    state: ServiceState | None = None

    @property
    def status(self) -> str | None:
        """``state.status``, for convenience."""
        return self.state.status if self.state else None

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object this service was decoded from (``{}`` if built locally)."""
        return raw_of(self, self.name)


_service_decoder = LiberalDecoder(Service)


class _Wrapped(msgspec.Struct):
    services: list[Service] = msgspec.field(default_factory=list)


_list_typed = JSONDecoder(msgspec.json.Decoder(list[Service] | _Wrapped))


def _decode_list(data: bytes) -> list[Service]:
    """A bare array or ``{"services": [...]}``; liberal as :func:`salvage_list`."""
    try:
        found = _list_typed.decode(data)
    except msgspec.ValidationError:
        obj = decode_any(data)
        if isinstance(obj, dict):
            return salvage_list(obj.get("services"), Service, "services")
        return salvage_list(obj, Service, "services")
    services = found.services if isinstance(found, _Wrapped) else found
    share_raw(services, RawSource(data, "services", "name"))
    return services


class _Stamped(msgspec.Struct, kw_only=True):
    timestamp: int | float | None = None
    """Unix milliseconds, as sent."""

    @property
    def type(self) -> str:
        """The event's ``type`` on the wire (``"started"``, ``"stdout"`` ...)."""
        return str(self.__struct_config__.tag)

    @property
    def time(self) -> datetime | None:
        """``timestamp`` as an aware datetime (UTC), or None."""
        if self.timestamp is None:
            return None
        return datetime.fromtimestamp(self.timestamp / 1000, tz=timezone.utc)


class ServiceStarted(_Stamped, tag="started", tag_field="type", kw_only=True):
    """The process started."""


class ServiceOutput(_Stamped, tag_field="type", kw_only=True):
    """Base of :class:`ServiceStdout`/:class:`ServiceStderr`: one line of output in ``data``."""

    data: str = ""


class ServiceStdout(ServiceOutput, tag="stdout", tag_field="type", kw_only=True):
    """A line the service wrote to stdout."""


class ServiceStderr(ServiceOutput, tag="stderr", tag_field="type", kw_only=True):
    """A line the service wrote to stderr."""


class ServiceExit(_Stamped, tag="exit", tag_field="type", kw_only=True):
    """The process exited while the stream was watching."""

    exit_code: int | None = None


class ServiceErrorEvent(_Stamped, tag="error", tag_field="type", kw_only=True):
    """A failure; ``data`` is the message."""

    data: str = ""


class ServiceStopping(_Stamped, tag="stopping", tag_field="type", kw_only=True):
    """A stop was requested."""


class ServiceStopped(_Stamped, tag="stopped", tag_field="type", kw_only=True):
    """The stop finished."""

    exit_code: int | None = None


class ServiceComplete(_Stamped, tag="complete", tag_field="type", kw_only=True):
    """The end of the stream; ``log_files`` maps ``stdout``/``stderr``/``combined`` to paths."""

    log_files: dict[str, str] = msgspec.field(default_factory=dict)


ServiceEvent = (
    ServiceStarted
    | ServiceStdout
    | ServiceStderr
    | ServiceExit
    | ServiceErrorEvent
    | ServiceStopping
    | ServiceStopped
    | ServiceComplete
    | OtherEvent
)
"""What service streams yield."""

_decode_event = event_decoder(
    ServiceStarted
    | ServiceStdout
    | ServiceStderr
    | ServiceExit
    | ServiceErrorEvent
    | ServiceStopping
    | ServiceStopped
    | ServiceComplete,
    frozenset({"started", "stdout", "stderr", "exit", "error", "stopping", "stopped", "complete"}),
    "service stream",
)


class ServiceResult(msgspec.Struct, kw_only=True, frozen=True):
    """What awaiting a service operation returns.

    Attributes:
        log_files: Paths of the service's logs (``stdout``, ``stderr``, ``combined``).
        exit_code: The exit code from a ``stopped`` event (stop, restart), or
            from an ``exit`` event when exiting was not a failure.
        output: The output lines seen, in order, as ``(stream, line)``.
    """

    log_files: dict[str, str]
    exit_code: int | None = None
    output: list[tuple[str, str]] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------- helpers


def _check_name(name: object) -> str:
    return check_path_name(name, "service name")


_QueryParams = list[tuple[str, str]]


class _Tracker(EventTracker[Any]):
    """Turns a service stream's events into an outcome, or a :class:`ServiceError`."""

    failure: ClassVar[type] = ServiceErrorEvent
    completion: ClassVar[type] = ServiceComplete

    def __init__(
        self, service: str, operation: str, sprite: str, *, exit_fails: bool, needs_complete: bool
    ) -> None:
        super().__init__(operation, sprite, needs_complete=needs_complete)
        self.service = service
        self.exit_fails = exit_fails
        self.exit_code: int | None = None
        self.exited = False
        self.output: list[tuple[str, str]] = []

    def error(self, message: str, *, server_message: str | None = None) -> ServiceError:
        return ServiceError(
            f"{self.operation} {self.service!r}: {message}",
            service=self.service,
            operation=self.operation,
            sprite=self.sprite,
            exit_code=self.exit_code,  # the last one an exit or stopped event reported
            server_message=server_message,
        )

    def failure_text(self, event: Any) -> str:
        return str(event.data)

    def on_event(self, event: Any) -> None:
        if isinstance(event, ServiceOutput):
            self.output.append(
                ("stdout" if isinstance(event, ServiceStdout) else "stderr", event.data)
            )
        elif isinstance(event, ServiceExit):
            self.exited = True
            self.exit_code = event.exit_code
        elif isinstance(event, ServiceStopped):
            self.exit_code = event.exit_code
        else:
            super().on_event(event)

    def on_end(self) -> None:
        # A zero exit in the watch window may be a one-shot service; any other
        # exit means the service did not come up.
        if self.exited and self.exit_fails and self.exit_code != 0:
            raise self.error(f"the process exited with code {self.exit_code} while starting")
        super().on_end()

    async def outcome(self) -> ServiceResult:
        self.on_end()
        log_files = self.complete.log_files if self.complete else {}
        return ServiceResult(log_files=log_files, exit_code=self.exit_code, output=self.output)


# -------------------------------------------------------------------- resource


class ServicesResource(SpriteResource):
    """Services of one sprite: ``sprite.services``."""

    def _path(self, name: str | None = None, action: str | None = None) -> str:
        path = self._sprite.path + "/services"
        if name is not None:
            path += "/" + quote_segment(name)
        if action is not None:
            path += "/" + action
        return path

    def list(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncPaginator[Service, ListPage[Service]]:
        """Every service with its state: ``await`` it, or ``async for`` it.

        The server answers in one piece (a bare array or ``{"services":
        [...]}``), so awaiting gives the one page there is, a
        :class:`ListPage` (a ``list`` of :class:`Service`).
        """
        sprite = self._sprite
        options = request_options(extra_headers, extra_query, extra_body)

        async def fetch(token: str | None) -> ListPage[Service]:
            resp = await sprite.client._request(
                "GET",
                self._path(),
                operation="list services",
                sprite=sprite.name,
                timeout="wake",
                options=options,
            )
            return ListPage(resp.parse(_decode_list))

        return AsyncPaginator(fetch)

    async def get(
        self,
        name: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> Service:
        """One service.

        Raises:
            ServiceNotFoundError: No such service.
        """
        path = self._path(_check_name(name))
        options = request_options(extra_headers, extra_query, extra_body)
        resp = await self._call("GET", path, "get service", options)
        return resp.parse(_service_decoder.decode)

    def create(
        self,
        name: str,
        *,
        cmd: str,
        args: Iterable[str] = (),
        needs: Iterable[str] = (),
        http_port: int | None = None,
        env: Mapping[str, str] | None = None,
        dir: str | None = None,
        duration: float | timedelta | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        """Create or update a service and start it, streaming its first output.

        Args:
            name: The service's name.
            cmd: The executable (arguments go in ``args``).
            args: Its arguments.
            needs: Services that must be started first.
            http_port: Route the sprite's URL to this port (one service per sprite).
            env: Extra environment variables.
            dir: Working directory.
            duration: Seconds of output to stream after starting (server default 5 s).

        Raises:
            ServiceError: An ``error`` event, or the process exited while starting.
            BadRequestError: Invalid definition (unknown or circular ``needs`` ...).
            ConflictError: Another service already has an HTTP port.
        """
        name = _check_name(name)
        if not cmd:
            raise ValueError("cmd must be a non-empty executable name or path")
        args, needs = _strings(args, "args"), _strings(needs, "needs")
        body: dict[str, Any] = {"cmd": cmd, "args": args, "needs": needs}
        if http_port is not None:
            body["http_port"] = check_int(http_port, "http_port", 1, 65535)
        if env is not None:
            pairs: list[tuple[object, object]] = list(env.items())
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
                raise TypeError("env must map str to str")
            body["env"] = dict(env)
        if dir is not None:
            body["dir"] = dir
        return self._operation(
            "PUT",
            name,
            None,
            "create service",
            duration,
            json=msgspec.json.encode(body),
            exit_fails=True,
            idempotent=False,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def start(
        self,
        name: str,
        *,
        duration: float | timedelta | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        """Start a stopped service, streaming its first output (``duration`` seconds)."""
        return self._operation(
            "POST",
            _check_name(name),
            "start",
            "start service",
            duration,
            exit_fails=True,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def stop(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        """Stop a service (sticky: it stays stopped until started).

        Args:
            timeout: Grace period before the process is killed (server default 10 s).

        Raises:
            ConflictError: The service is not running.
        """
        params = None if timeout is None else [("timeout", go_duration(timeout))]
        return self._operation(
            "POST",
            _check_name(name),
            "stop",
            "stop service",
            None,
            params=params,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def restart(
        self,
        name: str,
        *,
        duration: float | timedelta | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        """Stop the service if it runs, then start it; the events of both."""
        return self._operation(
            "POST",
            _check_name(name),
            "restart",
            "restart service",
            duration,
            exit_fails=True,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def _operation(
        self,
        method: str,
        name: str,
        action: str | None,
        operation: str,
        duration: float | timedelta | None,
        *,
        json: bytes | None = None,
        params: _QueryParams | None = None,
        exit_fails: bool = False,
        needs_complete: bool = True,
        idempotent: bool | None = None,
        options: RequestOptions | None = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        if duration is not None:
            params = [*(params or []), ("duration", go_duration(duration))]
        sprite = self._sprite
        tracker = _Tracker(
            name, operation, sprite.name, exit_fails=exit_fails, needs_complete=needs_complete
        )
        stream: NDJSONStream[ServiceEvent, Any] = NDJSONStream(
            sprite.client,
            method,
            self._path(name, action),
            decoder=_decode_event,
            operation=operation,
            sprite=sprite.name,
            params=params,
            json=json,
            idempotent=idempotent,
            on_api_error=_raise_not_found,
            options=options,
        )
        return EventOperation(
            stream, on_event=tracker.on_event, on_end=tracker.on_end, outcome=tracker.outcome
        )

    def logs(
        self,
        name: str,
        *,
        lines: int | None = None,
        follow: bool = False,
        duration: float | timedelta | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[ServiceEvent, ServiceResult]:
        """The service's log as events: buffered lines, then new ones when following.

        Args:
            lines: How many buffered lines to send first (default: all).
            follow: Keep streaming new output, for ``duration`` seconds
                (default :data:`FOLLOW_FOREVER`, a day: the API needs a bound).
            duration: How long to follow; implies ``follow``.

        An ``error`` event raises :class:`ServiceError`; ``exit`` events are
        just events here. The server sends nothing while the service is
        quiet, so a follow stream is ended by the client's ``stream_idle``
        timeout after that much silence (``Timeouts(stream_idle=None)``
        disables it).
        """
        name = _check_name(name)
        params: _QueryParams = []
        if lines is not None:
            params.append(("lines", str(check_int(lines, "lines", 0))))
        if duration is None and follow:
            duration = FOLLOW_FOREVER
        params.append(("duration", "0" if duration is None else go_duration(duration)))
        return self._operation(
            "GET",
            name,
            "logs",
            "service logs",
            None,
            params=params,
            needs_complete=False,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    async def delete(
        self,
        name: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Delete a service (its logs are kept).

        Raises:
            ServiceNotFoundError: No such service.
            ConflictError: Other services need it.
        """
        path = self._path(_check_name(name))
        options = request_options(extra_headers, extra_query, extra_body)
        await self._call("DELETE", path, "delete service", options)

    async def signal(
        self,
        name: str,
        sig: str | int,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Send a signal to the service's process (``"HUP"``, ``signal.SIGTERM``, 15 ...).

        A signal that kills the process counts as a crash: the runtime restarts it.

        Raises:
            ServiceNotFoundError: No such service.
            ConflictError: The service is not running.
        """
        body = msgspec.json.encode({"name": _check_name(name), "signal": signal_name(sig)})
        options = request_options(extra_headers, extra_query, extra_body)
        await self._call("POST", self._path("signal"), "signal service", options, json=body)

    async def _call(
        self,
        method: str,
        path: str,
        operation: str,
        options: RequestOptions | None,
        *,
        json: bytes | None = None,
    ) -> Response:
        """A plain request; a missing service raises :class:`ServiceNotFoundError`."""
        sprite = self._sprite
        try:
            return await sprite.client._request(
                method,
                path,
                operation=operation,
                sprite=sprite.name,
                json=json,
                timeout="wake",
                options=options,
            )
        except APIError as exc:
            raise _not_found(exc) from exc


def _strings(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    out = list(values)
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"every item of {what} must be a str")
    return out


def _not_found(exc: APIError) -> APIError:
    """A missing service as :class:`ServiceNotFoundError`; a missing sprite stays as it is."""
    return missing_as(exc, ServiceNotFoundError)


def _raise_not_found(exc: APIError) -> Any:
    raise _not_found(exc) from exc
