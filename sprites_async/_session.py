"""The core session: configuration, lifecycle and the three I/O seams.

All network I/O of the SDK goes through :meth:`BaseClient._request` (plain
HTTP calls, whole body as bytes), :meth:`BaseClient._stream` (streamed
bodies: NDJSON, file downloads, read through a :class:`~._body.Body`) and
:meth:`BaseClient._ws_connect` (WebSocket upgrades, used through a
:class:`~sprites_async._websocket.WebSocket`). They add auth and client
headers, apply timeouts, retry by one rule (:func:`~._retry.retrying`) and
translate every aiohttp/OS error into the SDK's exceptions with one
function (:func:`~._translate._translate`), also while a body or a socket
is in use: no other module has an aiohttp exception to catch.

Around it: :mod:`._transport` (token, base URL, proxy, TLS, the aiohttp
session), :mod:`._options` (query, ``extra_*`` arguments, path segments),
:mod:`._translate`, :mod:`._retry`, :mod:`._body` and :mod:`._websocket`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, cast

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from ._body import Body
from ._config import (
    IDEMPOTENT_METHODS,
    ControlOptions,
    ExecSettings,
    RetryPolicy,
    TimeoutKind,
    Timeouts,
)
from ._errors import ClientClosedError, ProtocolError
from ._options import Params, RequestOptions, _body_and_headers, _with_body, _with_query
from ._resource import AsyncResource
from ._retry import _HANDSHAKE_RETRY_STATUSES, _always, _nothing, log_attempt, retrying
from ._translate import (
    _api_error,
    _never_sent,
    _refused_upgrade,
    _wake_timeout,
)
from ._transport import (
    _WS_TIMEOUT,
    ProxySetting,
    SSLSetting,
    _client_timeouts,
    _Handshake,
    _open_session,
    _proxy_kwargs,
    _resolve_base_url,
    _resolve_proxy,
    _resolve_ssl,
    _resolve_token,
    _Secret,
    _upgrades,
    _user_agent,
    _WakeDeadlines,
)
from ._websocket import WebSocket

if TYPE_CHECKING:
    from ._control import ControlPool
    from ._proxy import Tunnels
    from ._telemetry import Telemetry
    from .fleet import CreationLimiter

__all__ = ["BaseClient", "Response"]

logger = logging.getLogger("sprites_async")

T = TypeVar("T")


class Response(NamedTuple):
    """What the request seam returns: status, headers and the whole body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    operation: str = ""
    sprite: str | None = None

    def parse(self, decode: Callable[[bytes], T]) -> T:
        """The body decoded by ``decode`` (a msgspec decoder's ``decode``).

        Raises:
            ProtocolError: The answer is not what the protocol says (not
                JSON, or not the expected shape), with the status, request
                ids, operation and sprite of this response.
        """
        try:
            return decode(self.body)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
            raise ProtocolError(
                f"{self.operation or 'request'}: the answer could not be read: {exc}",
                status_code=self.status,
                headers=self.headers,
                body=self.body,
                operation=self.operation or None,
                sprite=self.sprite,
            ) from exc


class _State(enum.Enum):
    UNOPENED = "unopened"  # no aiohttp session yet; it is made inside the running loop
    OPENED = "opened"
    CLOSED = "closed"  # aclose() ran; nothing may be used any more


class BaseClient(AsyncResource):
    """Configuration, lifecycle and the three I/O seams of a client; no resources.

    :class:`~sprites_async.SpritesClient` adds the resources (``sprites``,
    ``sprite()``) on top and documents the constructor's arguments. This
    class imports no resource module, so every resource module can depend
    on it without an import cycle. Features keep their per-client state in
    the attributes set at the end of ``__init__``: each feature's module
    fills its own on first use and registers what must be closed with
    ``_add_closer``, so the state goes with the client.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeouts | float | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 100,
        max_connections_per_host: int = 0,
        keepalive_timeout: float = 30.0,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        user_agent: str | None = None,
        control: bool | ControlOptions = True,
        exec_settings: ExecSettings | None = None,
        proxy: ProxySetting = None,
        ssl: SSLSetting = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        telemetry: bool = False,
    ) -> None:
        self._token = _resolve_token(token)
        self.base_url = _resolve_base_url(base_url)
        self._proxy = _resolve_proxy(proxy, self.base_url)
        self._ssl = _resolve_ssl(ssl, tls=self.base_url.startswith("https:"))
        self._proxy_kwargs = _proxy_kwargs(self._proxy)
        if timeout is None:
            self.timeouts = Timeouts()
        elif isinstance(timeout, Timeouts):
            self.timeouts = timeout
        else:
            self.timeouts = replace(Timeouts(), read=float(timeout))
        self.retry = retry if retry is not None else RetryPolicy()
        if max_connections < 0 or max_connections_per_host < 0:
            raise ValueError("connection limits must be >= 0")
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self._keepalive_timeout = keepalive_timeout
        self._trace_configs = list(trace_configs)
        self.control: bool | ControlOptions = control
        self.exec_settings: ExecSettings | None = exec_settings
        self._headers = {"User-Agent": user_agent or _user_agent()}
        # Sent with each request, never as a session default header: aiohttp
        # copies the session's default headers into the CONNECT request to a
        # proxy, where an Authorization header becomes Proxy-Authorization and
        # the proxy would read the token.
        self._auth = {"Authorization": _Secret(f"Bearer {self._token}")}
        self._client_timeouts = _client_timeouts(self.timeouts)
        self._state = _State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http_slots: asyncio.Semaphore | None = None
        self._wake_deadlines: _WakeDeadlines | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._telemetry: Telemetry | None = None
        if telemetry or tracer_provider is not None or meter_provider is not None:
            self._telemetry = _load_telemetry(self, tracer_provider, meter_provider)
        # Per-client state of features, made on first use by the feature's
        # own module (the /control pool by _control.pool_for, the tunnels by
        # _proxy.tunnels_for, the creation limiter by fleet; exec's set of
        # sprites that refuse attach by id). Unlike a registry keyed weakly
        # by the client, state held here cannot keep its client alive.
        self._control_pool: ControlPool | None = None
        self._tunnels: Tunnels | None = None
        self._legacy_attach: set[str] = set()
        self._fleet_limiter: CreationLimiter | None = None

    def __repr__(self) -> str:
        proxy = f" proxy={self.proxy!r}" if self.proxy else ""
        name = type(self).__name__
        return f"<{name} base_url={self.base_url!r}{proxy} state={self._state.value}>"

    @property
    def proxy(self) -> str | None:
        """The proxy in use, without its credentials, or None."""
        return str(self._proxy.url) if self._proxy is not None else None

    @property
    def org(self) -> str | None:
        """The organisation slug from the token's first segment, for display only."""
        first = self._token.split("/", 1)[0]
        return first if "/" in self._token and first else None

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._state is _State.CLOSED

    # ----------------------------------------------------------------- lifecycle

    async def _aopen(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this SpritesClient is closed; create a new one")
        self._ensure_session()

    async def aclose(self) -> None:
        """Close every pooled connection and the HTTP session. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                await close()
            except Exception:  # one failing pool must not keep the others open
                logger.exception("error while closing a pooled resource")
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Register a coroutine function that :meth:`aclose` runs (pools, sessions)."""
        self._check_open()
        self._closers.append(close)

    def __del__(self, _warn: Any = None) -> None:
        session = getattr(self, "_session", None)
        if session is not None and not session.closed:
            warnings.warn(
                f"unclosed {self!r}: use 'async with SpritesClient()' or await client.aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this SpritesClient is closed; create a new one")

    def _ensure_session(self) -> aiohttp.ClientSession:
        self._check_open()
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None:
            if loop is not self._loop:
                raise RuntimeError(
                    "this SpritesClient was opened in another event loop; "
                    "create one client per event loop"
                )
            return session
        session = _open_session(
            limit_per_host=self.max_connections_per_host,
            keepalive_timeout=self._keepalive_timeout,
            ssl=self._ssl,
            headers=self._headers,
            connect_timeout=self.timeouts.connect,
            trace_configs=self._trace_configs,
        )
        self._session = session
        self._loop = loop
        self._wake_deadlines = _WakeDeadlines(loop)
        self._state = _State.OPENED
        if self.max_connections:
            self._http_slots = asyncio.Semaphore(self.max_connections)
        return session

    # ---------------------------------------------------------------------- seams

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        sprite: str | None = None,
        params: Params = None,
        json: bytes | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        timeout: TimeoutKind = "api",
        idempotent: bool | None = None,
        ok: Container[int] | None = None,
        options: RequestOptions | None = None,
    ) -> Response:
        """Send one request and return its status, headers and whole body.

        A status >= 400 (or outside ``ok`` when given) raises the matching
        :class:`APIError`; connection failures raise
        :class:`SpritesConnectionError`/:class:`SpritesTimeoutError`.
        ``json`` is an already encoded JSON body. ``options`` (the caller's
        ``extra_*`` arguments) are applied here. Retries: see :func:`~._retry.retrying`.
        """
        session = self._ensure_session()
        json = _with_body(json, options, operation)
        params = _with_query(params, options)
        data, headers = _body_and_headers(self._auth, json, data, content_type, None, options)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        client_timeout = self._client_timeouts[timeout]
        url = self.base_url + path
        slots = self._http_slots

        async def once(attempt: int, started: float) -> Response:
            if slots is not None:
                await slots.acquire()
            try:
                async with session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=client_timeout,
                    **self._proxy_kwargs,
                ) as resp:
                    body = await resp.read()
            finally:
                if slots is not None:
                    slots.release()
            log_attempt(self._telemetry, method, path, resp.status, started, attempt, resp.headers)
            if resp.status < 400 and (ok is None or resp.status in ok):
                return Response(resp.status, resp.headers, body, operation, sprite)
            raise _api_error(method, path, resp.status, resp.headers, body, operation, sprite)

        return await retrying(
            once,
            self.retry,
            self._telemetry,
            method,
            path,
            operation,
            sprite,
            resend=_always if idempotent else _never_sent,
            statuses=self.retry.retry_statuses if idempotent else (),
        )

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        sprite: str | None = None,
        params: Params = None,
        json: bytes | None = None,
        data: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: TimeoutKind = "stream",
        idempotent: bool | None = None,
        options: RequestOptions | None = None,
    ) -> AsyncIterator[Body]:
        """Send a request and yield the response (a :class:`Body`) while its body streams in.

        ``headers`` are added to the request (``Range``, for example).
        Errors (status >= 400) are raised before yielding. The body is read by
        the caller under an idle timeout (``stream_idle``), never a total one;
        its reads raise the SDK's errors. The response is released when the
        block exits, normally or not. Nothing is retried once the body is
        yielded; before that, as :func:`~._retry.retrying` says.
        """
        session = self._ensure_session()
        json = _with_body(json, options, operation)
        params = _with_query(params, options)
        data, send_headers = _body_and_headers(
            self._auth, json, data, content_type, headers, options
        )
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        client_timeout = self._client_timeouts[timeout]
        url = self.base_url + path

        async def once(attempt: int, started: float) -> aiohttp.ClientResponse:
            resp = await session.request(
                method,
                url,
                params=params,
                data=data,
                headers=send_headers,
                timeout=client_timeout,
                **self._proxy_kwargs,
            )
            log_attempt(self._telemetry, method, path, resp.status, started, attempt, resp.headers)
            if resp.status < 400:
                return resp
            try:
                body = await resp.read()
            finally:
                resp.release()
            raise _api_error(method, path, resp.status, resp.headers, body, operation, sprite)

        resp = await retrying(
            once,
            self.retry,
            self._telemetry,
            method,
            path,
            operation,
            sprite,
            resend=_always if idempotent else _never_sent,
            statuses=self.retry.retry_statuses if idempotent else (),
        )
        try:
            yield Body(resp, method, path, operation, sprite)
        finally:
            resp.release()

    async def _ws_connect(
        self,
        path: str,
        *,
        operation: str,
        sprite: str | None = None,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        autoping: bool = True,
        heartbeat: float | None = None,
        max_msg_size: int = 16 * 1024 * 1024,
        retry_handshake: bool = True,
        options: RequestOptions | None = None,
    ) -> tuple[WebSocket, CIMultiDictProxy[str]]:
        """Upgrade to a WebSocket; return it with the upgrade response headers.

        The socket is a :class:`WebSocket`: aiohttp's messages, and every
        failure of its methods translated here, with the upgrade's request ids.
        The handshake may wake a cold sprite, so it is bounded by the ``wake``
        timeout (handshakes share a timer, so it may pass up to a tenth of
        ``wake``, at most a second, late: see ``_WakeDeadlines``). A refused
        upgrade raises the matching :class:`APIError` with the server's
        body. With ``retry_handshake``, handshakes refused with
        429/502/503/504 or whose connection could not be made are retried by
        the policy: the server starts a command only when it accepts the
        upgrade, so those cannot have started one. A handshake that timed out
        or broke off after it was sent is never retried (it may have).
        """
        session = self._ensure_session()
        if options is not None:
            _with_body(None, options, operation)  # a WebSocket upgrade has no body
            params = _with_query(params, options)
        _, send_headers = _body_and_headers(self._auth, None, None, None, headers, options)
        upgrade: dict[str, Any] = {
            "params": params,
            "headers": send_headers,
            "autoping": autoping,
            "heartbeat": heartbeat,
            "max_msg_size": max_msg_size,
            **self._proxy_kwargs,
        }
        # The first attempt runs here, without the retry loop's frame: a
        # handshake almost always succeeds at once, and thousands may be in
        # flight. A failed one goes on in the loop, which decides from it.
        started = time.monotonic()
        try:
            return await _handshake(self, session, path, operation, sprite, upgrade, 1, started)
        except Exception as exc:
            failed = (exc, started)
        return await retrying(
            functools.partial(_handshake, self, session, path, operation, sprite, upgrade),
            self.retry,
            self._telemetry,
            "GET",
            path,
            operation,
            sprite,
            resend=_never_sent if retry_handshake else _nothing,
            statuses=_HANDSHAKE_RETRY_STATUSES if retry_handshake else (),
            failed=failed,
        )


async def _handshake(
    client: BaseClient,
    session: aiohttp.ClientSession,
    path: str,
    operation: str,
    sprite: str | None,
    upgrade: dict[str, Any],
    attempt: int,
    started: float,
) -> tuple[WebSocket, CIMultiDictProxy[str]]:
    """One attempt of :meth:`BaseClient._ws_connect` (``upgrade``: ``ws_connect``'s arguments)."""
    task = cast("asyncio.Task[Any]", asyncio.current_task())
    wake = client.timeouts.wake
    deadlines = client._wake_deadlines
    deadline = deadlines.start(task, wake) if deadlines is not None and wake is not None else None
    seen = _upgrades[task] = _Handshake()  # what _ObservedResponse keeps of the answer
    try:
        ws = await session.ws_connect(
            client.base_url + path, timeout=_WS_TIMEOUT, autoclose=False, **upgrade
        )
    except aiohttp.WSServerHandshakeError as exc:
        log_attempt(client._telemetry, "GET", path, exc.status, started, attempt, exc.headers)
        raise _refused_upgrade(exc, path, seen.body, operation, sprite) from exc
    except asyncio.CancelledError:
        if deadline is None or not deadline.end():
            raise
        # The wake deadline passed: never retried (the command may have started).
        error = _wake_timeout(path, operation, sprite, wake)
        log_attempt(client._telemetry, "GET", path, None, started, attempt, None, error=error)
        raise error from None
    finally:
        del _upgrades[task]
        if deadline is not None:
            deadline.end()
    headers = seen.headers if seen.headers is not None else _EMPTY_HEADERS
    log_attempt(client._telemetry, "GET", path, 101, started, attempt, headers)
    quiet = not upgrade["autoping"] and upgrade["heartbeat"] is None
    raw = cast("aiohttp.ClientWebSocketResponse[Literal[True]]", ws)  # text frames decoded
    return WebSocket(raw, path, operation, sprite, headers, quiet=quiet), headers


def _load_telemetry(client: BaseClient, tracer_provider: Any, meter_provider: Any) -> Telemetry:
    try:
        from ._telemetry import Telemetry
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "telemetry needs OpenTelemetry: pip install 'sprites-async[otel]'"
        ) from exc
    telemetry = Telemetry(client, tracer_provider, meter_provider)
    telemetry.trace_seams(client)
    return telemetry


_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
