"""The one translation of aiohttp/OS errors into the SDK's errors.

:func:`_translate` turns what aiohttp or the OS raised into a
:class:`SpritesConnectionError` (a :class:`SpritesTimeoutError` for a
timeout); :func:`_api_error` turns an error answer into its
:class:`APIError`. The seams, :class:`~sprites_async._body.Body` and
:class:`~sprites_async._websocket.WebSocket` use them; with the two
predicates the retry loop asks (:func:`_never_sent`, :func:`_permanent`),
this is the only place that tells aiohttp's exception classes apart.
"""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ._errors import (
    APIError,
    SpritesConnectionError,
    SpritesTimeoutError,
    api_error_from_response,
)

__all__ = ["ROUTE_NOT_FOUND_CODE", "SOCKET_LOST"]

SOCKET_LOST: tuple[type[SpritesConnectionError], ...] = (
    SpritesConnectionError,
    SpritesTimeoutError,
)
"""What a read of a streamed :class:`Body` or a method of a seam
:class:`WebSocket` raises when the connection breaks or stalls."""


# On Python 3.10 asyncio.TimeoutError is not the builtin TimeoutError.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, TimeoutError)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    *_TIMEOUT_ERRORS,
)


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


def _refused_upgrade(
    exc: aiohttp.WSServerHandshakeError,
    path: str,
    body: bytes,
    operation: str,
    sprite: str | None,
) -> APIError | SpritesConnectionError:
    """The error for a WebSocket upgrade the server did not accept (``body``: its answer)."""
    _redact_request_info(exc)  # kept as the __cause__ of what is raised
    if exc.status >= 400:
        return _api_error("GET", path, exc.status, exc.headers, body, operation, sprite)
    return SpritesConnectionError(
        f"WebSocket handshake failed with status {exc.status}",
        operation=operation,
        sprite=sprite,
        headers=exc.headers,
    )


def _wake_timeout(
    path: str, operation: str, sprite: str | None, wake: float | None
) -> SpritesTimeoutError:
    """The error for a WebSocket handshake that outlived ``Timeouts.wake``."""
    where = f"sprite {sprite}" if sprite else path
    return SpritesTimeoutError(
        f"WebSocket handshake with {where} timed out after "
        f"{wake} s (Timeouts.wake): the sprite may still be waking",
        operation=operation,
        sprite=sprite,
    )


def _never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached the server (safe to send again)."""
    return isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError))


def _permanent(exc: BaseException) -> bool:
    """Whether another attempt would fail the same way (bad certificate, proxy refusal)."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return True
    return isinstance(exc, aiohttp.ClientHttpProxyError) and exc.status not in (502, 503, 504)


def _is_bare_timeout(exc: BaseException) -> bool:
    """A timeout of our own deadline, not aiohttp's (its timeouts are also ``ClientError``s)."""
    return isinstance(exc, _TIMEOUT_ERRORS) and not isinstance(exc, aiohttp.ClientError)


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
