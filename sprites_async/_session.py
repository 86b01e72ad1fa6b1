"""The core session: configuration, lifecycle and the three I/O seams.

All network I/O of the SDK goes through :meth:`BaseClient._request` (plain
HTTP calls, whole body as bytes), :meth:`BaseClient._stream` (streamed
bodies: NDJSON, file downloads, read through a :class:`Body`) and
:meth:`BaseClient._ws_connect` (WebSocket upgrades, used through a
:class:`~sprites_async._websocket.WebSocket`). They add auth and client
headers, apply timeouts, retry by one rule (:meth:`BaseClient._retrying`)
and translate every aiohttp/OS error into the SDK's exceptions with one
function (:func:`_translate`), also while a body or a socket is in use: no
other module has an aiohttp exception to catch.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import enum
import ipaddress
import logging
import os
import platform
import ssl as ssl_module
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import replace
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NamedTuple,
    TypeAlias,
    TypeVar,
    cast,
    get_args,
)
from urllib.parse import quote, urlsplit
from urllib.request import (  # type: ignore[attr-defined]  # not in typeshed, but public
    getproxies_environment,
    proxy_bypass_environment,
)

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._config import (
    IDEMPOTENT_METHODS,
    ControlOptions,
    ExecSettings,
    RetryPolicy,
    TimeoutKind,
    Timeouts,
)
from ._errors import (
    APIError,
    ClientClosedError,
    ConfigurationError,
    ProtocolError,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
    api_error_from_response,
    parse_retry_after,
)
from ._resource import AsyncResource
from ._version import __version__
from ._websocket import WebSocket as WebSocket

if TYPE_CHECKING:
    from aiohttp.connector import Connection

    from ._control import ControlPool
    from ._proxy import Tunnels
    from ._telemetry import Telemetry
    from .fleet import CreationLimiter

__all__ = ["DEFAULT_BASE_URL", "BaseClient", "RequestOptions", "Timeouts", "request_options"]

logger = logging.getLogger("sprites_async")

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.sprites.dev"
TOKEN_ENV_VARS = ("SPRITES_TOKEN", "SPRITE_TOKEN")
BASE_URL_ENV_VAR = "SPRITES_API_URL"

Params = Mapping[str, str] | Sequence[tuple[str, str]] | None
ProxySetting: TypeAlias = str | Literal[False] | None
SSLSetting: TypeAlias = ssl_module.SSLContext | str | os.PathLike[str] | bool | None


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


class Body:
    """A response whose body is still streaming in: what the stream seam yields.

    ``status`` and ``headers`` are the response's. Every read (``read``,
    ``readany``, ``readchunk`` and the ``iter_*`` iterators) raises the SDK's
    errors: a connection reset or a stall while the body streams in is a
    :class:`SpritesConnectionError` (:class:`SpritesTimeoutError` for the
    stall) with the operation, sprite and request ids of this response,
    chained to what aiohttp raised.
    """

    __slots__ = ("_method", "_operation", "_path", "_resp", "_sprite", "headers", "status")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
    ) -> None:
        self._resp = resp
        self._method = method
        self._path = path
        self._operation = operation
        self._sprite = sprite
        self.status: int = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers

    def __repr__(self) -> str:
        return f"<Body {self._method} {self._path} status={self.status}>"

    @property
    def content(self) -> Body:
        """This object, for code that reads aiohttp's ``response.content``."""
        return self

    @property
    def total_bytes(self) -> int:
        """Bytes of the body received so far."""
        return self._resp.content.total_bytes

    def _error(self, exc: BaseException) -> SpritesConnectionError:
        return _translate(
            exc,
            self._method,
            self._path,
            self._operation,
            self._sprite,
            headers=self.headers,
            during="reading the body",
        )

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body; the whole rest of it when ``n`` is -1."""
        try:
            if n < 0:
                return await self._resp.read()
            return await self._resp.content.read(n)
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    async def readany(self) -> bytes:
        """Whatever part of the body has arrived (waiting for some); b"" at its end."""
        try:
            return await self._resp.content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    async def readchunk(self) -> tuple[bytes, bool]:
        """The next piece and whether it ends an HTTP chunk; ``(b"", False)`` at the end."""
        try:
            return await self._resp.content.readchunk()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc) from exc

    def iter_chunked(self, n: int) -> _Pieces[bytes]:
        """The body in pieces of at most ``n`` bytes."""
        return _Pieces(lambda: self.read(n), b"")

    def iter_any(self) -> _Pieces[bytes]:
        """The body in the pieces it arrives in."""
        return _Pieces(self.readany, b"")

    def iter_chunks(self) -> _Pieces[tuple[bytes, bool]]:
        """``(data, end_of_http_chunk)`` pairs, as aiohttp's ``iter_chunks``."""
        return _Pieces(self.readchunk, (b"", False))


class _Pieces(Generic[T]):
    """An async iterator over ``read()`` results until ``end`` comes.

    A plain iterator, not an async generator: a caller that stops early
    leaves nothing for the event loop to finalize.
    """

    __slots__ = ("_end", "_read")

    def __init__(self, read: Callable[[], Awaitable[T]], end: T) -> None:
        self._read = read
        self._end = end

    def __aiter__(self) -> _Pieces[T]:
        return self

    async def __anext__(self) -> T:
        piece = await self._read()
        if piece == self._end:
            raise StopAsyncIteration
        return piece


class _State(enum.Enum):
    UNOPENED = "unopened"  # no aiohttp session yet; it is made inside the running loop
    OPENED = "opened"
    CLOSED = "closed"  # aclose() ran; nothing may be used any more


class _Handshake:
    """What :class:`_ObservedResponse` saw of a WebSocket upgrade response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: CIMultiDictProxy[str] | None = None
        self.body = b""


# Set by _ws_connect around the upgrade so that _ObservedResponse can keep the
# headers of the upgrade response and the body of a refused one, which
# aiohttp's public WebSocket API does not expose.
_handshake: contextvars.ContextVar[_Handshake | None] = contextvars.ContextVar(
    "sprites_async_handshake", default=None
)


class _ObservedResponse(aiohttp.ClientResponse):
    """Keeps the headers of a WebSocket upgrade response and the body of a refused one.

    aiohttp's public WebSocket API exposes neither. A response class costs
    one context-variable read per response; a ``TraceConfig`` would add a
    round of signal coroutines to every request of the session.
    """

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        resp = await super().start(connection)
        seen = _handshake.get()
        if seen is not None:
            seen.status = self.status
            seen.headers = self.headers
            if self.status >= 400:
                try:
                    seen.body = await self.read()
                except (aiohttp.ClientError, OSError):
                    pass
        return resp


def _resolve_token(token: str | None) -> str:
    if token is None:
        for var in TOKEN_ENV_VARS:
            value = os.environ.get(var)
            if value:
                token = value
                break
    if token is None:
        raise ConfigurationError(
            "no Sprites token: pass token=... or set SPRITES_TOKEN (or SPRITE_TOKEN)"
        )
    if not isinstance(token, str):
        raise ConfigurationError("the token must be a string")
    token = token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigurationError("the Sprites token is empty or contains whitespace")
    return token


def _resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {url!r}")
    return url


class _Secret(str):
    """A header value that does not show itself in ``repr`` (of a dict of headers, say).

    The header dicts the seams build live in their frames' locals, which
    tracebacks with locals and error trackers print.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


class RequestOptions(NamedTuple):
    """What a caller adds to one API call: ``extra_headers``, ``extra_query``, ``extra_body``.

    Made by :func:`request_options` from the keyword arguments every public
    call accepts, and applied by the seams, so that a field the service
    added (or one only some official SDKs send) can be used before the SDK
    models it.
    """

    headers: Mapping[str, str] | None = None
    query: Sequence[tuple[str, str]] = ()
    body: Mapping[str, object] | None = None

    @property
    def wire(self) -> bool:
        """Whether they change the request line or headers (a pooled socket cannot)."""
        return bool(self.headers) or bool(self.query)


ExtraHeaders: TypeAlias = Mapping[str, str] | None
ExtraQuery: TypeAlias = Mapping[str, object] | None
ExtraBody: TypeAlias = Mapping[str, object] | None


def request_options(
    extra_headers: ExtraHeaders = None,
    extra_query: ExtraQuery = None,
    extra_body: ExtraBody = None,
) -> RequestOptions | None:
    """Check the three ``extra_*`` arguments of a call; None when there are none.

    * ``extra_headers`` are sent with the request and win over the SDK's own
      headers (``User-Agent``, ``Content-Type``, ``Range``...), except
      ``Authorization``: the token is the client's (make another client for
      another token), so setting it here is a ``ValueError``.
    * ``extra_query`` parameters are appended to the SDK's (``True``/``False``
      become ``true``/``false``; a list repeats the key).
    * ``extra_body`` keys are merged over the JSON object the call sends.
      A call without a JSON body (GET, streamed uploads, WebSockets) raises
      ``TypeError`` before anything is sent.
    """
    if extra_headers is None and extra_query is None and extra_body is None:
        return None
    headers: dict[str, str] | None = None
    if extra_headers is not None:
        if not isinstance(extra_headers, Mapping):
            raise TypeError("extra_headers must be a mapping of header names to strings")
        headers = {}
        for name, value in cast("Mapping[object, object]", extra_headers).items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError("extra_headers names and values must be strings")
            if name.strip().lower() == "authorization":
                raise ValueError(
                    "extra_headers cannot set Authorization: the token belongs to the "
                    "client (create a SpritesClient with that token)"
                )
            headers[name] = value
    query: list[tuple[str, str]] = []
    if extra_query is not None:
        if not isinstance(extra_query, Mapping):
            raise TypeError("extra_query must be a mapping of parameter names to values")
        for key, given in extra_query.items():
            for item in given if isinstance(given, (list, tuple)) else (given,):
                query.append((str(key), _query_value(key, item)))
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise TypeError("extra_body must be a mapping of JSON keys to values")
    return RequestOptions(headers or None, tuple(query), extra_body)


def _query_value(key: object, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(f"extra_query[{key!r}]: expected str, int, float or bool, not {value!r}")


def _with_query(params: Params, options: RequestOptions | None) -> Params:
    if options is None or not options.query:
        return params
    if params is None:
        return list(options.query)
    base = list(params.items()) if isinstance(params, Mapping) else list(params)
    return [*base, *options.query]


def _with_body(json: bytes | None, options: RequestOptions | None, operation: str) -> bytes | None:
    if options is None or options.body is None:
        return json
    if json is None:
        raise TypeError(f"{operation}: extra_body needs a call that sends a JSON body")
    merged = msgspec.json.decode(json)
    if not isinstance(merged, dict):
        raise TypeError(f"{operation}: extra_body needs a call whose JSON body is an object")
    merged.update(options.body)
    return msgspec.json.encode(merged)


class _Proxy(NamedTuple):
    """A resolved proxy: its URL without credentials, and the header carrying them."""

    url: URL
    headers: Mapping[str, str] | None


def _resolve_proxy(proxy: ProxySetting, base_url: str) -> _Proxy | None:
    """The proxy every call to ``base_url`` goes through, or None.

    ``None`` reads the environment the way httpx, requests and Go's
    ``http.ProxyFromEnvironment`` do: ``HTTPS_PROXY`` (or ``HTTP_PROXY`` for an
    ``http://`` API, then ``ALL_PROXY``), lowercase names first, unless
    ``NO_PROXY`` names the API host. As in Go (sprites-go), a loopback API
    (a local emulator) never goes through an environment proxy. Every call
    goes to one host, so this is decided once, not per request.
    """
    if proxy is False:
        return None
    parts = urlsplit(base_url)
    if proxy is None:
        env = getproxies_environment()
        host = parts.hostname or ""
        if not host or _is_loopback(host) or proxy_bypass_environment(host, env):
            return None
        scheme = parts.scheme
        value = env.get(scheme) or env.get("all")
        if not value:
            return None
        source = f"{scheme.upper()}_PROXY" if env.get(scheme) else "ALL_PROXY"
    elif isinstance(proxy, str):
        value, source = proxy, "proxy="
    else:
        raise TypeError(f"proxy must be a URL string, False or None, not {type(proxy).__name__}")
    value = value.strip()
    if "://" not in value:
        value = "http://" + value  # what requests and curl assume for "host:port"
    try:
        url = URL(value)
    except ValueError as exc:
        raise ConfigurationError(f"{source}: not a proxy URL") from exc
    if url.scheme != "http" or not url.host:
        shown = url.with_user(None).with_password(None) if url.host else url.scheme + "://..."
        raise ConfigurationError(
            f"{source}: unsupported proxy {str(shown)!r}: only http:// proxies are supported "
            "(https:// APIs are reached through a CONNECT tunnel in them)"
        )
    headers = None
    if url.user is not None or url.password is not None:
        userinfo = f"{url.user or ''}:{url.password or ''}".encode()
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(userinfo).decode("ascii")}
        url = url.with_user(None)  # the credentials travel in the header only
    return _Proxy(url.with_path("").with_query(None).with_fragment(None), headers)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost`` or a loopback address): the emulator."""
    return _is_loopback(urlsplit(url).hostname or "")


def _resolve_ssl(value: SSLSetting) -> ssl_module.SSLContext | bool:
    """What the connector verifies TLS with: a context, True (system CAs) or False."""
    if value is False:
        return False
    if isinstance(value, ssl_module.SSLContext):
        return value
    if value is None or value is True:
        cafile = os.environ.get("SSL_CERT_FILE") or None
        capath = os.environ.get("SSL_CERT_DIR") or None
        if cafile is None and capath is None:
            return True
        source = "SSL_CERT_FILE/SSL_CERT_DIR"
    elif isinstance(value, (str, os.PathLike)):
        cafile, capath, source = os.fspath(value), None, "ssl="
    else:
        raise TypeError(
            "ssl must be an ssl.SSLContext, a CA bundle path, True, False or None, "
            f"not {type(value).__name__}"
        )
    try:
        return ssl_module.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl_module.SSLError) as exc:
        raise ConfigurationError(f"{source}: cannot load CA certificates: {exc}") from exc


def _user_agent() -> str:
    return (
        f"sprites-async/{__version__} (python/{platform.python_version()}; "
        f"aiohttp/{aiohttp.__version__})"
    )


SOCKET_LOST: tuple[type[SpritesConnectionError], ...] = (
    SpritesConnectionError,
    SpritesTimeoutError,
)
"""What a read of a streamed :class:`Body` or a method of a seam
:class:`WebSocket` raises when the connection breaks or stalls."""


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (sprite names, ids, service names)."""
    return quote(value, safe="")


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
        self._ssl = _resolve_ssl(ssl)
        # Per request, not per session: aiohttp's session-level proxy_auth is
        # deprecated and it has no session-level proxy headers.
        self._proxy_kwargs: dict[str, Any] = (
            {"proxy": self._proxy.url, "proxy_headers": self._proxy.headers}
            if self._proxy is not None
            else {}
        )
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
        self._client_timeouts = {
            kind: aiohttp.ClientTimeout(
                total=None,
                connect=None,
                sock_connect=self.timeouts.connect,
                sock_read=self.timeouts.read_timeout(kind),
            )
            for kind in get_args(TimeoutKind)
        }
        self._state = _State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http_slots: asyncio.Semaphore | None = None
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
        connector = aiohttp.TCPConnector(
            limit=0,  # requests are bounded by _http_slots; WebSockets must not be
            limit_per_host=self.max_connections_per_host,
            keepalive_timeout=self._keepalive_timeout,
            ttl_dns_cache=300,
            ssl=self._ssl,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=self._headers,
            # Every plain request passes its own timeout; this default is what
            # a WebSocket upgrade gets (aiohttp's ws_connect takes none), and
            # there the read limit must not cut a cold sprite's slow 101: the
            # handshake is bounded by Timeouts.wake in _ws_connect instead.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
            trace_configs=self._trace_configs or None,
            response_class=_ObservedResponse,
            auto_decompress=True,
        )
        # aiohttp (3.10+) silently re-sends a GET/PUT/DELETE once when the
        # connection drops, whatever the SDK decided: a PUT that starts a
        # service or a WebSocket upgrade that starts a command must not go
        # twice. The seams' one retry loop (_retrying) decides every repetition.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        self._session = session
        self._loop = loop
        self._state = _State.OPENED
        if self.max_connections:
            self._http_slots = asyncio.Semaphore(self.max_connections)
        return session

    # ---------------------------------------------------------------------- seams

    def _url(self, path: str) -> str:
        return self.base_url + path

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
        _traced: bool = False,
    ) -> Response:
        """Send one request and return its status, headers and whole body.

        A status >= 400 (or outside ``ok`` when given) raises the matching
        :class:`APIError`; connection failures raise
        :class:`SpritesConnectionError`/:class:`SpritesTimeoutError`.
        ``json`` is an already encoded JSON body. ``options`` (the caller's
        ``extra_*`` arguments) are applied here. Retries: see :meth:`_retrying`.
        """
        if self._telemetry is not None and not _traced:
            return await self._telemetry.request(
                self._request(
                    method,
                    path,
                    operation=operation,
                    sprite=sprite,
                    params=params,
                    json=json,
                    data=data,
                    content_type=content_type,
                    timeout=timeout,
                    idempotent=idempotent,
                    ok=ok,
                    options=options,
                    _traced=True,
                ),
                method,
                path,
                operation,
                sprite,
                len(json or data or b""),
            )
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
            self._log(method, path, resp.status, started, attempt, resp.headers)
            if resp.status < 400 and (ok is None or resp.status in ok):
                return Response(resp.status, resp.headers, body, operation, sprite)
            raise _api_error(method, path, resp.status, resp.headers, body, operation, sprite)

        return await self._retrying(
            once,
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
        _traced: bool = False,
    ) -> AsyncIterator[Body]:
        """Send a request and yield the response (a :class:`Body`) while its body streams in.

        ``headers`` are added to the request (``Range``, for example).
        Errors (status >= 400) are raised before yielding. The body is read by
        the caller under an idle timeout (``stream_idle``), never a total one;
        its reads raise the SDK's errors. The response is released when the
        block exits, normally or not. Nothing is retried once the body is
        yielded; before that, as :meth:`_retrying` says.
        """
        if self._telemetry is not None and not _traced:
            traced = self._telemetry.stream(
                lambda body: self._stream(
                    method,
                    path,
                    operation=operation,
                    sprite=sprite,
                    params=params,
                    json=json,
                    data=body,
                    content_type=content_type,
                    headers=headers,
                    timeout=timeout,
                    idempotent=idempotent,
                    options=options,
                    _traced=True,
                ),
                data,
                len(json or b""),
                method,
                path,
                operation,
                sprite,
            )
            async with traced as traced_resp:
                yield traced_resp
            return
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
            self._log(method, path, resp.status, started, attempt, resp.headers)
            if resp.status < 400:
                return resp
            try:
                body = await resp.read()
            finally:
                resp.release()
            raise _api_error(method, path, resp.status, resp.headers, body, operation, sprite)

        resp = await self._retrying(
            once,
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
        _traced: bool = False,
    ) -> tuple[WebSocket, CIMultiDictProxy[str]]:
        """Upgrade to a WebSocket; return it with the upgrade response headers.

        The socket is a :class:`WebSocket`: aiohttp's messages, and every
        failure of its methods translated here, with the upgrade's request ids.
        The handshake may wake a cold sprite, so it is bounded by the ``wake``
        timeout. A refused upgrade raises the matching :class:`APIError` with
        the server's body. With ``retry_handshake``, handshakes refused with
        429/502/503/504 or whose connection could not be made are retried by
        the policy: the server starts a command only when it accepts the
        upgrade, so those cannot have started one. A handshake that timed out
        or broke off after it was sent is never retried (it may have).
        """
        if self._telemetry is not None and not _traced:
            return cast(
                "tuple[WebSocket, CIMultiDictProxy[str]]",
                await self._telemetry.handshake(
                    self._ws_connect(
                        path,
                        operation=operation,
                        sprite=sprite,
                        params=params,
                        headers=headers,
                        autoping=autoping,
                        heartbeat=heartbeat,
                        max_msg_size=max_msg_size,
                        retry_handshake=retry_handshake,
                        options=options,
                        _traced=True,
                    ),
                    path,
                    operation,
                    sprite,
                ),
            )
        session = self._ensure_session()
        _with_body(None, options, operation)  # a WebSocket upgrade has no body
        params = _with_query(params, options)
        _, send_headers = _body_and_headers(self._auth, None, None, None, headers, options)
        url = self.base_url + path
        ws_timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)

        async def once(attempt: int, started: float) -> tuple[WebSocket, CIMultiDictProxy[str]]:
            seen = _Handshake()
            token = _handshake.set(seen)
            try:
                async with _timeout(self.timeouts.wake):
                    ws = await session.ws_connect(
                        url,
                        params=params,
                        headers=send_headers,
                        autoping=autoping,
                        heartbeat=heartbeat,
                        max_msg_size=max_msg_size,
                        timeout=ws_timeout,
                        autoclose=False,
                        **self._proxy_kwargs,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                _redact_request_info(exc)  # kept as the __cause__ of what is raised
                self._log("GET", path, exc.status, started, attempt, exc.headers)
                if exc.status >= 400:
                    raise _api_error(
                        "GET", path, exc.status, exc.headers, seen.body, operation, sprite
                    ) from exc
                raise SpritesConnectionError(
                    f"WebSocket handshake failed with status {exc.status}",
                    operation=operation,
                    sprite=sprite,
                    headers=exc.headers,
                ) from exc
            except _TIMEOUT_ERRORS as exc:
                if isinstance(exc, aiohttp.ClientError):
                    raise  # aiohttp's connect timeout: a transport failure
                # Our wake timer: say so. Never retried (the command may have started).
                where = f"sprite {sprite}" if sprite else path
                error = SpritesTimeoutError(
                    f"WebSocket handshake with {where} timed out after "
                    f"{self.timeouts.wake} s (Timeouts.wake): the sprite may still be waking",
                    operation=operation,
                    sprite=sprite,
                )
                self._log("GET", path, None, started, attempt, None, error=error)
                raise error from exc
            finally:
                _handshake.reset(token)
            upgrade_headers = seen.headers if seen.headers is not None else _EMPTY_HEADERS
            self._log("GET", path, 101, started, attempt, upgrade_headers)

            def translate(exc: BaseException, during: str) -> SpritesConnectionError:
                return _translate(
                    exc, "GET", path, operation, sprite, headers=upgrade_headers, during=during
                )

            raw = cast("aiohttp.ClientWebSocketResponse[Literal[True]]", ws)
            return WebSocket(raw, translate), upgrade_headers

        return await self._retrying(
            once,
            "GET",
            path,
            operation,
            sprite,
            resend=_never_sent if retry_handshake else _nothing,
            statuses=_HANDSHAKE_RETRY_STATUSES if retry_handshake else (),
        )

    async def _retrying(
        self,
        once: Callable[[int, float], Awaitable[T]],
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
        *,
        resend: Callable[[BaseException], bool],
        statuses: Container[int],
    ) -> T:
        """Call ``once(attempt, started)`` until an attempt succeeds: the seams' one retry loop.

        An attempt ends in one of three ways:

        * It returns: that is the result.
        * It raises an :class:`APIError` (a refusal, logged by ``once``):
          retried if its status is in ``statuses``, after the policy's backoff
          or the server's ``Retry-After`` (the body's ``retry_after_seconds``
          of a 429, the header of a 503); a ``Retry-After`` longer than the
          policy allows is not waited for and the error is raised.
        * It raises an aiohttp/OS error (the transport failed): translated to
          :class:`SpritesConnectionError`/:class:`SpritesTimeoutError`, and
          retried after the policy's backoff only if ``resend(exc)`` says the
          request may go again (idempotent, or certainly never sent) and
          another attempt could end otherwise (not a bad certificate or a
          proxy's refusal).

        Any other exception (the SDK's own errors, cancellation) ends the
        call. Every attempt counts against ``retry.max_attempts``.
        """
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return await once(attempt, started)
            except APIError as error:
                if error.status_code not in statuses:
                    raise
                delay = self._status_backoff(error, attempt)
                if delay is None:
                    raise
            except SpritesError:
                raise  # already decided (a handshake timeout, a refused upgrade)
            except _TRANSPORT_ERRORS as exc:
                delay = self._delay_or_raise(
                    exc, method, path, operation, sprite, attempt, started, resend(exc)
                )
            await asyncio.sleep(delay)

    def _status_backoff(self, error: APIError, attempt: int) -> float | None:
        """The wait before retrying a request the server refused, or None to give up.

        Honours ``Retry-After`` (the body's ``retry_after_seconds`` for 429s).
        """
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None and error.status_code == 503:
            retry_after = parse_retry_after(CIMultiDict(error.headers).get("Retry-After"))
        return self.retry.backoff(attempt, retry_after)

    def _delay_or_raise(
        self,
        exc: BaseException,
        method: str,
        path: str,
        operation: str,
        sprite: str | None,
        attempt: int,
        started: float,
        may_retry: bool,
    ) -> float:
        """After a transport failure: the wait before the next attempt, or raise.

        The raised error is the SDK's translation of ``exc``, chained to it.
        """
        error = _translate(exc, method, path, operation, sprite)
        self._log(method, path, None, started, attempt, None, error=error)
        delay = self.retry.backoff(attempt) if may_retry and not _permanent(exc) else None
        if delay is None:
            raise error from exc
        return delay

    def _log(
        self,
        method: str,
        path: str,
        status: int | None,
        started: float,
        attempt: int,
        headers: Mapping[str, str] | None,
        *,
        error: BaseException | None = None,
    ) -> None:
        if self._telemetry is not None:
            self._telemetry.attempt(status, attempt, headers, method)
        if not logger.isEnabledFor(logging.DEBUG if error is None else logging.INFO):
            return
        extra = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "attempt": attempt,
            "request_id": headers.get("x-request-id") if headers else None,
            "fly_request_id": headers.get("fly-request-id") if headers else None,
        }
        if error is not None:
            logger.info(
                "%s %s failed (attempt %d): %s",
                method,
                path,
                attempt,
                error,
                extra={"sprites": extra},
            )
        else:
            logger.debug(
                "%s %s -> %s in %.1f ms (attempt %d, request_id=%s)",
                method,
                path,
                status,
                extra["duration_ms"],
                attempt,
                extra["request_id"],
                extra={"sprites": extra},
            )


def _load_telemetry(client: BaseClient, tracer_provider: Any, meter_provider: Any) -> Telemetry:
    try:
        from ._telemetry import Telemetry
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "telemetry needs OpenTelemetry: pip install 'sprites-async[otel]'"
        ) from exc
    return Telemetry(client, tracer_provider, meter_provider)


# On Python 3.10 asyncio.TimeoutError is not the builtin TimeoutError.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, TimeoutError)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    *_TIMEOUT_ERRORS,
)
_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


ROUTE_NOT_FOUND_CODE = "route_not_found"


def _api_error(
    method: str,
    path: str,
    status: int,
    headers: Mapping[str, str] | None,
    body: bytes,
    operation: str,
    sprite: str | None,
) -> APIError:
    """The :class:`APIError` for an error answer; a missing route says so.

    A sprite server without a route (older than this SDK) answers like Go's
    ``http.ServeMux``: 404 ``404 page not found``. Left as is, the message
    would read like a missing file, service or checkpoint; the error gets
    ``code="route_not_found"`` and a message naming the endpoint.
    """
    error = api_error_from_response(status, headers, body, operation=operation, sprite=sprite)
    if status == 404 and body.strip() == b"404 page not found":
        error.code = ROUTE_NOT_FOUND_CODE
        error.message = (
            f"the server has no {method} {path} endpoint (404 page not found): "
            "the sprite (or the API) runs an older version without it"
        )
        error.args = (error.message,)
    return error


def _never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached the server (safe to send again)."""
    return isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError))


def _always(exc: BaseException) -> bool:
    """An idempotent request may be sent again whatever became of the last one."""
    return True


def _nothing(exc: BaseException) -> bool:
    """A handshake whose caller retries nothing (a ``/control`` probe goes direct instead)."""
    return False


_HANDSHAKE_RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Refused upgrades worth another attempt. Not 500: a sprite answers 500 when
it could not start the command, and that may not be the whole story."""


def _permanent(exc: BaseException) -> bool:
    """Whether another attempt would fail the same way (bad certificate, proxy refusal)."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return True
    return isinstance(exc, aiohttp.ClientHttpProxyError) and exc.status not in (502, 503, 504)


def _timeout(delay: float | None) -> AbstractAsyncContextManager[Any]:
    """``asyncio.timeout`` where it exists (3.11+), else ``async_timeout`` (an aiohttp
    dependency on 3.10)."""
    if delay is None:
        return nullcontext()
    if sys.version_info >= (3, 11):
        return asyncio.timeout(delay)
    import async_timeout  # type: ignore[import-not-found]  # Python 3.10 only

    return async_timeout.timeout(delay)  # type: ignore[no-any-return]


def _body_and_headers(
    auth: Mapping[str, str],
    json: bytes | None,
    data: Any,
    content_type: str | None,
    headers: Mapping[str, str] | None,
    options: RequestOptions | None = None,
) -> tuple[Any, dict[str, str]]:
    """The request body and every header it is sent with (a pre-encoded JSON body wins).

    The caller's ``extra_headers`` win over the SDK's; the token wins over all.
    """
    out = dict(headers) if headers else {}
    if json is not None:
        data, content_type = json, "application/json"
    if content_type is not None:
        out["Content-Type"] = content_type
    if options is not None and options.headers:
        out.update(options.headers)
    out.update(auth)
    return data, out


def _redact_request_info(exc: aiohttp.ClientResponseError) -> None:
    """Hide the token in the request an aiohttp error keeps (its ``repr`` prints the headers).

    Such errors (``WSServerHandshakeError``, ``TooManyRedirects``) stay reachable
    as the ``__cause__`` of the SDK's error, so they must not carry the token.
    """
    info = exc.request_info
    secret = [name for name in ("Authorization", "Proxy-Authorization") if name in info.headers]
    if not secret:
        return
    headers = CIMultiDict(info.headers)
    for name in secret:
        headers[name] = "<redacted>"
    exc.request_info = aiohttp.RequestInfo(
        info.url, info.method, CIMultiDictProxy(headers), info.real_url
    )
    exc.args = (exc.request_info, *exc.args[1:])


def _translate(
    exc: BaseException,
    method: str,
    path: str,
    operation: str,
    sprite: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    during: str | None = None,
) -> SpritesConnectionError:
    """Map an aiohttp/OS error to the SDK's transport errors (the one boundary).

    ``headers`` are those of the response whose body or WebSocket broke off
    (the error carries their request ids); ``during`` names that step
    (``"reading the body"``, ``"WebSocket send"``). An error this function
    already made (a :class:`Body` read inside a caller's own ``except``)
    comes back as a copy, so that ``raise ... from exc`` does not chain it
    to itself.
    """
    if isinstance(exc, SpritesConnectionError):
        return copy.copy(exc)
    if isinstance(exc, aiohttp.ClientResponseError):
        _redact_request_info(exc)  # it stays reachable as the new error's __cause__
    where = f"{method} {path}: {during}" if during else f"{method} {path}"
    if isinstance(exc, _TIMEOUT_ERRORS):
        timeout_cls = (
            _AsyncioTimeout if isinstance(exc, asyncio.TimeoutError) else SpritesTimeoutError
        )
        return timeout_cls(
            f"{where} timed out", operation=operation, sprite=sprite, headers=headers
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = (
            f"TLS certificate verification failed for {exc.host}: {exc.certificate_error} "
            "(a private CA? pass ssl= a CA bundle path or an ssl.SSLContext, or set SSL_CERT_FILE)"
        )
    elif isinstance(exc, aiohttp.ClientSSLError):
        detail = f"TLS handshake with {exc.host} failed: {exc.os_error}"
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        detail = f"the proxy refused the tunnel: {exc.status} {exc.message}"
        if exc.status == 407:
            detail += " (check the credentials in the proxy URL, or HTTPS_PROXY)"
    elif isinstance(exc, aiohttp.ClientProxyConnectionError):
        detail = f"cannot connect to the proxy {exc.host}:{exc.port}: {exc.os_error}"
    else:
        detail = str(exc) or type(exc).__name__
    return SpritesConnectionError(
        f"{where} failed: {detail}", operation=operation, sprite=sprite, headers=headers
    )


if sys.version_info >= (3, 11):
    _AsyncioTimeout = SpritesTimeoutError
else:

    class _AsyncioTimeout(SpritesTimeoutError, asyncio.TimeoutError):
        """A translated ``asyncio.TimeoutError`` that still is one.

        From Python 3.11 ``asyncio.TimeoutError`` is the builtin
        ``TimeoutError``, which every :class:`SpritesTimeoutError` is; on 3.10
        they differ, and code that catches ``asyncio.TimeoutError`` around a
        ``receive(timeout=...)`` of the seam's WebSocket must still see it.
        """
