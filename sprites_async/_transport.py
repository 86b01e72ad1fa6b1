"""How a client reaches the API: token, base URL, proxy, TLS, and the aiohttp session.

Everything here is decided once per client, from its arguments and the
environment (:func:`_resolve_token`, :func:`_resolve_base_url`,
:func:`_resolve_proxy`, :func:`_resolve_ssl`), or once per event loop
(:func:`_open_session`: the connector and the ``aiohttp.ClientSession`` the
seams send through). :class:`_ObservedResponse` is that session's response
class: it keeps what aiohttp's WebSocket API does not expose of an upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import math
import os
import platform
import ssl as ssl_module
import sys
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias, get_args
from urllib.parse import urlsplit
from urllib.request import (  # type: ignore[attr-defined]  # not in typeshed, but public
    getproxies_environment,
    proxy_bypass_environment,
)

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._config import TimeoutKind, Timeouts
from ._errors import ConfigurationError
from ._version import __version__

if TYPE_CHECKING:
    from aiohttp.connector import Connection

__all__ = ["BASE_URL_ENV_VAR", "DEFAULT_BASE_URL", "TOKEN_ENV_VARS", "is_loopback_url"]

DEFAULT_BASE_URL = "https://api.sprites.dev"
TOKEN_ENV_VARS = ("SPRITES_TOKEN", "SPRITE_TOKEN")
BASE_URL_ENV_VAR = "SPRITES_API_URL"
ProxySetting: TypeAlias = str | Literal[False] | None
SSLSetting: TypeAlias = ssl_module.SSLContext | str | os.PathLike[str] | bool | None


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


def _resolve_ssl(value: SSLSetting, *, tls: bool = True) -> ssl_module.SSLContext | bool:
    """What the connector verifies TLS with: a context, True (system CAs) or False.

    ``tls`` False says the client never negotiates TLS (a plain-HTTP base
    URL, such as the local emulator's; proxies are plain HTTP too): then
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are not loaded, which would cost
    ~20 ms of CPU and a few MiB per client for certificates no connection
    uses. A value given explicitly is still
    checked, so a wrong path fails the same way whatever the URL.
    """
    if value is False:
        return False
    if isinstance(value, ssl_module.SSLContext):
        return value
    if value is None or value is True:
        if not tls:
            return True
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
        return _ca_context(cafile, capath, _mtime(cafile), _mtime(capath))
    except (OSError, ssl_module.SSLError) as exc:
        raise ConfigurationError(f"{source}: cannot load CA certificates: {exc}") from exc


def _mtime(path: str | None) -> int | None:
    try:
        return None if path is None else os.stat(path).st_mtime_ns
    except OSError:
        return None  # create_default_context reports it


# Loading a CA bundle costs ~20 ms of CPU (a fleet script making a client per
# task, or a test suite making one per test, pays it each time), so clients
# verifying against the same unchanged files share one context, as aiohttp's
# default context is shared. The modification times in the key make an edited
# bundle load anew. Failures are not cached (lru_cache keeps only returns).
@functools.lru_cache(maxsize=8)
def _ca_context(
    cafile: str | None, capath: str | None, _cafile_mtime: int | None, _capath_mtime: int | None
) -> ssl_module.SSLContext:
    return ssl_module.create_default_context(cafile=cafile, capath=capath)


def _user_agent() -> str:
    return (
        f"sprites-async/{__version__} (python/{platform.python_version()}; "
        f"aiohttp/{aiohttp.__version__})"
    )


def _proxy_kwargs(proxy: _Proxy | None) -> dict[str, Any]:
    """The proxy arguments of every request: per request, not per session.

    aiohttp's session-level ``proxy_auth`` is deprecated and it has no
    session-level proxy headers.
    """
    if proxy is None:
        return {}
    return {"proxy": proxy.url, "proxy_headers": proxy.headers}


def _client_timeouts(timeouts: Timeouts) -> dict[TimeoutKind, aiohttp.ClientTimeout]:
    """aiohttp's timeout of a plain request, for each kind of call."""
    return {
        kind: aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read_timeout(kind),
        )
        for kind in get_args(TimeoutKind)
    }


def _open_session(
    *,
    limit_per_host: int,
    keepalive_timeout: float,
    ssl: ssl_module.SSLContext | bool,
    headers: Mapping[str, str],
    connect_timeout: float | None,
    trace_configs: list[aiohttp.TraceConfig],
) -> aiohttp.ClientSession:
    """The aiohttp session of a client, made inside the running loop."""
    connector = aiohttp.TCPConnector(
        limit=0,  # requests are bounded by the client's _http_slots; WebSockets must not be
        limit_per_host=limit_per_host,
        keepalive_timeout=keepalive_timeout,
        ttl_dns_cache=300,
        ssl=ssl,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=headers,
        # Every plain request passes its own timeout; this default is what
        # a WebSocket upgrade gets (aiohttp's ws_connect takes none), and
        # there the read limit must not cut a cold sprite's slow 101: the
        # handshake is bounded by Timeouts.wake in _ws_connect instead.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        trace_configs=trace_configs or None,
        response_class=_ObservedResponse,
        auto_decompress=True,
    )
    # aiohttp (3.10+) silently re-sends a GET/PUT/DELETE once when the
    # connection drops, whatever the SDK decided: a PUT that starts a
    # service or a WebSocket upgrade that starts a command must not go
    # twice. The seams' one retry loop (_retry.retrying) decides every repetition.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class _Handshake:
    """What :class:`_ObservedResponse` saw of a WebSocket upgrade response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: CIMultiDictProxy[str] | None = None
        self.body = b""


_upgrades: dict[asyncio.Task[Any] | None, _Handshake] = {}
"""The WebSocket upgrades in flight, by the task awaiting each (``_ws_connect``
sets and removes its entry): what :class:`_ObservedResponse` fills in.

Not a context variable: one set around the upgrade is copied into every
handle asyncio makes meanwhile, among them the new connection's reader,
which would keep it (and the :class:`_Handshake`) for the socket's life."""


class _ObservedResponse(aiohttp.ClientResponse):
    """Keeps the headers of a WebSocket upgrade response and the body of a refused one.

    aiohttp's public WebSocket API exposes neither. A response class costs
    one test per response (two lookups while upgrades are in flight); a
    ``TraceConfig`` would add a round of signal coroutines to every request
    of the session. aiohttp starts the response in the task that awaits the
    upgrade, which is what :data:`_upgrades` is keyed by.
    """

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        resp = await super().start(connection)
        seen = _upgrades.get(asyncio.current_task()) if _upgrades else None
        if seen is not None:
            seen.status = self.status
            seen.headers = self.headers
            if self.status >= 400:
                try:
                    seen.body = await self.read()
                except (aiohttp.ClientError, OSError):
                    pass
        return resp


_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0)
"""No deadline on receive (the caller's), and no wait for the server's close reply.

``ws_close=0`` ends ``close()``'s wait for the reply at its first suspension
(a server that closed first has already replied): the SDK never waits for
it, because a peer that stopped reading (Fly's ``pkg/wsexec`` once stdin is
closed) never sends one. A caller needs no zero deadline of its own around
``close()`` for that; only a close frame stuck behind a full send buffer
still needs a bound."""


class _WakeDeadlines:
    """Bounds WebSocket handshakes by ``Timeouts.wake`` with one timer per slice of time.

    A timer per handshake (``asyncio.timeout``) costs a timer handle, a
    timeout object and a context copy, kept in the loop's heap until its
    deadline, for a deadline that almost never passes. Handshakes whose
    deadlines fall in the same slice (a tenth of ``wake``, at most a second)
    share one timer: each waits in the slice's set until its handshake ends;
    the timer cancels the tasks still waiting. A deadline passes at most one
    slice late. One per client, made with its session.
    """

    __slots__ = ("_loop", "_slices")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slices: dict[float, set[_Deadline]] = {}

    def start(self, task: asyncio.Task[Any], wake: float) -> _Deadline:
        """Put ``task`` under a deadline ``wake`` seconds from now (rounded up to its slice)."""
        due = self._loop.time() + wake
        step = min(1.0, wake / 10)
        if step > 0:
            due = math.ceil(due / step) * step
        waiting = self._slices.get(due)
        if waiting is None:
            waiting = self._slices[due] = set()
            self._loop.call_at(due, self._expire, due)
        deadline = _Deadline(task, waiting)
        waiting.add(deadline)
        return deadline

    def _expire(self, due: float) -> None:
        for deadline in self._slices.pop(due):
            deadline.passed = True
            deadline.task.cancel()


class _Deadline:
    """One handshake under a shared wake deadline (:class:`_WakeDeadlines`)."""

    __slots__ = ("_cancelling", "_waiting", "passed", "task")

    def __init__(self, task: asyncio.Task[Any], waiting: set[_Deadline]) -> None:
        self.task = task
        self._waiting: set[_Deadline] | None = waiting
        self._cancelling = _cancelling(task)
        self.passed = False

    def end(self) -> bool:
        """Stop waiting; whether the deadline passed and cancelled the task, alone.

        A cancellation the deadline made is undone here, as ``asyncio.timeout``
        does; if the task was cancelled by someone else too, that one stands
        (False). Only the first call counts.
        """
        if self._waiting is None:
            return False
        self._waiting.discard(self)
        self._waiting = None
        return self.passed and _cut_by_deadline(self.task, self._cancelling)


def _cancelling(task: asyncio.Task[Any]) -> int:
    if sys.version_info >= (3, 11):
        return task.cancelling()
    return 0  # pragma: no cover - Python 3.10


def _cut_by_deadline(task: asyncio.Task[Any], cancelling: int) -> bool:
    """After our deadline cancelled ``task``: whether only we did (as ``asyncio.timeout`` tells).

    On Python 3.10 tasks do not count cancellations; the deadline's is taken
    to be the only one, as ``async_timeout`` does there.
    """
    if sys.version_info >= (3, 11):
        return task.uncancel() <= cancelling
    return True  # pragma: no cover - Python 3.10


def _timeout(delay: float | None) -> AbstractAsyncContextManager[Any]:
    """``asyncio.timeout`` where it exists (3.11+), else ``async_timeout`` (an aiohttp
    dependency on 3.10)."""
    if delay is None:
        return nullcontext()
    if sys.version_info >= (3, 11):
        return asyncio.timeout(delay)
    import async_timeout  # type: ignore[import-not-found]  # Python 3.10 only

    return async_timeout.timeout(delay)  # type: ignore[no-any-return]
