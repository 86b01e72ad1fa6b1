"""What one request is made of besides the seams: path segments, query, the ``extra_*`` arguments.

Every public call accepts ``extra_headers``, ``extra_query`` and
``extra_body``; :func:`request_options` checks them once into a
:class:`RequestOptions`, and the seams apply it to the request they build
(:func:`_with_query`, :func:`_with_body`, :func:`_body_and_headers`). Pure
functions, no I/O: resources import them without loading the session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, cast
from urllib.parse import quote

import msgspec

__all__ = [
    "ExtraBody",
    "ExtraHeaders",
    "ExtraQuery",
    "Params",
    "RequestOptions",
    "quote_segment",
    "request_options",
]

Params = Mapping[str, str] | Sequence[tuple[str, str]] | None


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


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (sprite names, ids, service names)."""
    return quote(value, safe="")
