"""Exceptions raised by sprites-async.

The tree::

    SpritesError
    ├── ConfigurationError (also ValueError)      bad client configuration (missing token ...)
    ├── ClientClosedError (also RuntimeError)     the client was used after aclose()
    ├── APIError                                  the service answered with an error status
    │   ├── BadRequestError                       400
    │   ├── AuthenticationError                   401
    │   ├── PermissionDeniedError                 403
    │   ├── NotFoundError                         404
    │   ├── ConflictError                         409
    │   ├── GoneError                             410
    │   ├── RateLimitError                        429 (retry_after, limit, ...)
    │   └── ServerError                           5xx
    ├── SpritesConnectionError (also ConnectionError)   the request did not complete
    │   └── SpritesTimeoutError (also TimeoutError)     ... because a timeout expired
    ├── ProtocolError                             the server sent something we cannot use
    │   └── StreamError                           a stream reported failure or ended early
    └── ExecError                                 a command's outcome is not a clean exit
        ├── CommandStartError                     the sprite could not start the command
        │   └── CommandNotFoundError              ... because there is no such executable
        ├── ExitStatusUnknownError                the connection ended before an exit status
        ├── CommandFailedError                    check=True and the exit code was not 0
        └── CommandTimeoutError (also TimeoutError)  the command's own timeout expired

Every :class:`APIError` carries the HTTP status, the API's message and code,
the raw body, the request ids (``x-request-id``, ``fly-request-id``), the
operation and the sprite name, and prints them on one line. The token never
appears in any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from ._models import JSONDecoder

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "CommandFailedError",
    "CommandNotFoundError",
    "CommandStartError",
    "CommandTimeoutError",
    "ConfigurationError",
    "ConflictError",
    "ExecError",
    "ExitStatusUnknownError",
    "GoneError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "SpritesConnectionError",
    "SpritesError",
    "SpritesTimeoutError",
    "StreamError",
]

# Recorded 500 bodies that the service sent for sprites that did not exist
# (January-February 2026), instead of the documented 404.
_MAYBE_NOT_FOUND_500 = frozenset({"failed to retrieve sprite", "failed to delete sprite"})


class SpritesError(Exception):
    """Base class of every exception raised by sprites-async."""


class ConfigurationError(SpritesError, ValueError):
    """The client was configured wrongly (for example, no token could be found)."""


class ClientClosedError(SpritesError, RuntimeError):
    """The client (or a stream) was used after it was closed."""


class _ErrorBody(msgspec.Struct):
    """Every key any error body shape may carry (all optional)."""

    error: str | None = None
    errors: list[str] | None = None
    message: str | None = None
    code: str | None = None
    path: str | None = None
    limit: int | None = None
    window_seconds: int | None = None
    retry_after_seconds: float | None = None
    current_count: int | None = None
    upgrade_available: bool | None = None
    upgrade_url: str | None = None


_error_body_decoder = JSONDecoder(msgspec.json.Decoder(_ErrorBody))


def _parse_error_body(status: int, body: bytes) -> tuple[str, str | None, _ErrorBody | None]:
    """Return (message, code, parsed) following the rules every official SDK uses."""
    parsed: _ErrorBody | None = None
    stripped = body.strip()
    if stripped.startswith(b"{"):
        try:
            parsed = _error_body_decoder.decode(stripped)
        except msgspec.DecodeError:
            parsed = None
    if parsed is not None:
        code: str | None = parsed.code
        if parsed.message:
            # Structured shape: ``error`` is a machine code, ``message`` is prose.
            message = parsed.message
            code = code or parsed.error
        elif parsed.error:
            message = parsed.error
        elif parsed.errors:
            message = "; ".join(parsed.errors)
        else:
            message = f"API error (status {status})"
        return message, code, parsed
    text = stripped.decode("utf-8", "replace")
    return (text or f"API error (status {status})"), None, None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    return headers.get(name)


class _Answered(SpritesError):
    """An error that may stem from one answer of the server.

    It carries what identifies that answer (request ids), what the SDK was
    doing and for which sprite, and pickles from those attributes: keyword-only
    constructors do not survive pickling by default, and errors cross process
    boundaries in fleet tools.
    """

    def _note(
        self,
        message: str,
        headers: Mapping[str, str] | None,
        operation: str | None,
        sprite: str | None,
    ) -> None:
        self.message = message
        self.request_id = _header(headers, "x-request-id")
        self.fly_request_id = _header(headers, "fly-request-id")
        self.operation = operation
        self.sprite = sprite

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.__dict__.copy()))


class APIError(_Answered):
    """The service answered with an error status.

    Attributes:
        status_code: The HTTP status.
        message: The API's message (prose), or the text body.
        code: A machine-readable code when the body had one (``ENOENT``,
            ``sprite_creation_rate_limited`` ...).
        body: The raw response body.
        request_id: The ``x-request-id`` header, if any.
        fly_request_id: The ``fly-request-id`` header, if any.
        operation: What the SDK was doing (``"get sprite"``, ``"exec"`` ...).
        sprite: The sprite's name, when the call was about one sprite.
        headers: The response headers.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        operation: str | None = None,
        sprite: str | None = None,
    ) -> None:
        super().__init__(message)
        self._note(message, headers, operation, sprite)
        self.status_code = status_code
        self.code = code
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def is_not_found(self) -> bool:
        """True for a 404, and for the 500 bodies the service sent for missing sprites."""
        return self.status_code == 404

    def __str__(self) -> str:
        parts = [f"{self.status_code}: {self.message}"]
        details = []
        if self.operation:
            details.append(f"operation={self.operation}")
        if self.sprite:
            details.append(f"sprite={self.sprite}")
        if self.code:
            details.append(f"code={self.code}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        if self.fly_request_id:
            details.append(f"fly_request_id={self.fly_request_id}")
        if details:
            parts.append("(" + ", ".join(details) + ")")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


E = TypeVar("E", bound=SpritesError)


def _rebuild_error(cls: type[E], state: dict[str, Any]) -> E:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class BadRequestError(APIError):
    """400: the request was invalid."""


class AuthenticationError(APIError):
    """401: the token is missing, malformed or revoked."""


class PermissionDeniedError(APIError):
    """403: the token may not do this (or compute is unavailable)."""


class NotFoundError(APIError):
    """404: the sprite, session, checkpoint, service or file does not exist."""


class ConflictError(APIError):
    """409: the name is taken, or the resource is in the wrong state."""


class GoneError(APIError):
    """410: the resource existed but is gone (e.g. a session that already exited)."""


class RateLimitError(APIError):
    """429: a rate limit or quota was hit.

    Attributes:
        retry_after: Seconds to wait, from the body's ``retry_after_seconds``
            or the ``Retry-After`` header (None when neither was sent).
        limit: The limit, when the body says.
        window_seconds: The window of the limit, when the body says.
        current_count: The current count (concurrent-sprite quota).
        upgrade_url: Where to raise the quota, when the body says.
    """

    def __init__(self, message: str, **kwargs: Any) -> None:
        details: _ErrorBody | None = kwargs.pop("details", None)
        super().__init__(message, **kwargs)
        self.retry_after: float | None = None
        self.limit = details.limit if details else None
        self.window_seconds = details.window_seconds if details else None
        self.current_count = details.current_count if details else None
        self.upgrade_url = details.upgrade_url if details else None
        if details and details.retry_after_seconds is not None:
            self.retry_after = float(details.retry_after_seconds)
        else:
            self.retry_after = parse_retry_after(self.headers.get("Retry-After"))


class ServerError(APIError):
    """5xx: the service failed.

    ``possibly_not_found`` is True for the 500 bodies the service sent for
    sprites that did not exist (``failed to retrieve sprite``, ``failed to
    delete sprite``); :attr:`is_not_found` reports them as not found too.
    """

    @property
    def possibly_not_found(self) -> bool:
        """True when this 500 is the service's way of saying "no such sprite"."""
        return self.status_code == 500 and self.message.strip() in _MAYBE_NOT_FOUND_500

    @property
    def is_not_found(self) -> bool:
        return self.possibly_not_found


_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    429: RateLimitError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime as _dt

    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


_N = TypeVar("_N", bound=NotFoundError)


def missing_as(exc: APIError, cls: type[_N], *, not_found_500: bool = False) -> APIError:
    """``exc`` as ``cls`` when it says a sprite's resource (checkpoint, service) is missing.

    A 404 qualifies, and with ``not_found_500`` also a 500 whose message says
    "not found" (what the service answers for a missing checkpoint). A
    missing sprite (``sprite not found``), an endpoint an older server lacks
    (``route_not_found``) and every other error come back unchanged.
    """
    if exc.message.strip() == "sprite not found" or exc.code == "route_not_found":
        return exc
    if exc.status_code != 404 and not (
        not_found_500 and exc.status_code == 500 and "not found" in exc.message.lower()
    ):
        return exc
    return cls(
        exc.message,
        status_code=exc.status_code,
        code=exc.code,
        body=exc.body,
        headers=exc.headers,
        operation=exc.operation,
        sprite=exc.sprite,
    )


def api_error_from_response(
    status: int,
    headers: Mapping[str, str] | None,
    body: bytes,
    *,
    operation: str | None = None,
    sprite: str | None = None,
) -> APIError:
    """Build the right :class:`APIError` subclass for an error response."""
    message, code, parsed = _parse_error_body(status, body)
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    kwargs: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "body": body,
        "headers": headers,
        "operation": operation,
        "sprite": sprite,
    }
    if cls is RateLimitError:
        kwargs["details"] = parsed
    return cls(message, **kwargs)


class SpritesConnectionError(SpritesError, ConnectionError):
    """The request could not be completed: refused, reset, DNS failure, dropped.

    Attributes:
        operation: What the SDK was doing.
        sprite: The sprite's name, when there is one.
        request_id: The ``x-request-id`` of the response whose body or
            WebSocket broke off, when there was a response.
        fly_request_id: Its ``fly-request-id``.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        sprite: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.sprite = sprite
        self.request_id = _header(headers, "x-request-id")
        self.fly_request_id = _header(headers, "fly-request-id")

    def __str__(self) -> str:
        details = [
            f"{key}={value}"
            for key in ("operation", "sprite", "request_id", "fly_request_id")
            if (value := getattr(self, key, None))
        ]
        return self.message + (f" ({', '.join(details)})" if details else "")


class SpritesTimeoutError(SpritesConnectionError, TimeoutError):
    """A connect, read, idle or handshake timeout expired."""


class ProtocolError(_Answered):
    """The server sent data that does not follow the protocol.

    When the data was one HTTP response (an answer that does not decode,
    for example), the error says which; otherwise these are None.

    Attributes:
        message: What was wrong.
        status_code: The response's HTTP status.
        request_id: The ``x-request-id`` response header.
        fly_request_id: The ``fly-request-id`` response header.
        operation: The SDK operation, e.g. ``"get sprite"``.
        sprite: The sprite's name, when the call concerned one.
        body: The start of the response body (at most 1 KiB).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        operation: str | None = None,
        sprite: str | None = None,
    ) -> None:
        super().__init__(message)
        self._note(message, headers, operation, sprite)
        self.status_code = status_code
        self.body = body[:1024]

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        details = [f"status={self.status_code}"]
        for key in ("operation", "sprite", "request_id", "fly_request_id"):
            value = getattr(self, key)
            if value:
                details.append(f"{key}={value}")
        return f"{self.message} ({', '.join(details)})"


class StreamError(ProtocolError):
    """A stream reported a failure in-band, or ended without its final event."""


class ExecError(SpritesError):
    """Base class for command outcomes that are not a clean exit status."""


class ExitStatusUnknownError(ExecError, ConnectionError):
    """The connection ended before the command's exit status arrived.

    The command may still be running (or may have finished unseen): the SDK
    never invents an exit code. ``session_id`` lets the caller re-attach or
    inspect the session list.
    """

    def __init__(
        self, message: str, *, session_id: str | None = None, sprite: str | None = None
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.sprite = sprite
        self.stdout = b""
        """What ``exec()`` received of stdout before the connection ended."""
        self.stderr = b""
        """What ``exec()`` received of stderr before the connection ended."""

    def __str__(self) -> str:
        details = [
            f"{k}={v}" for k, v in (("sprite", self.sprite), ("session_id", self.session_id)) if v
        ]
        return str(self.args[0]) + (f" ({', '.join(details)})" if details else "")


class _Result(Protocol):
    @property
    def exit_code(self) -> int: ...


class CommandFailedError(ExecError):
    """``check=True`` was given and the command exited with a non-zero code."""

    def __init__(self, result: _Result, *, argv: tuple[str, ...] = ()) -> None:
        self.result = result
        self.argv = argv
        self.exit_code = result.exit_code
        cmd = " ".join(argv) if argv else "command"
        super().__init__(f"{cmd!s} exited with status {result.exit_code}")


class CommandTimeoutError(ExecError, TimeoutError):
    """The command did not finish within its timeout; it was signalled and killed."""

    def __init__(self, message: str, *, session_id: str | None = None, timeout: float) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.timeout = timeout


# How a sprite says a command could not be started: the text of Go's exec
# errors (``exec: "x": executable file not found in $PATH``, ``fork/exec /x:
# permission denied``, ``chdir /d: no such file or directory``), after the
# HTTP answer's ``failed to start process`` prefix. Matched loosely: the
# official SDKs match nothing here, and the real wording may change.
_START_PREFIX = "failed to start process"
_NOT_FOUND_WORDS = ("executable file not found", "command not found")
_NO_SUCH_FILE = "no such file or directory"
_CANNOT_EXECUTE_WORDS = (
    "permission denied",
    "exec format error",
    "is a directory",
    "not executable",
)


def start_failure_kind(text: str, *, prefixed: bool, name: str = "") -> str | None:
    """What a server's error text says about a command that did not start.

    Returns ``"not_found"``, ``"not_executable"``, ``"cwd"`` (the working
    directory is missing or unusable), ``"other"`` (a start failure of no
    known kind), or None when ``text`` is not about starting a command.
    ``prefixed``: the text comes from an HTTP answer, which says it is a
    start failure only with a leading ``failed to start process``; anything
    else there (``failed to create runner``, an outage) is not one. That
    prefix alone (the real service gives no detail on ``POST /exec``) is
    ``"other"``. ``name`` (the executable asked for) guards the generic
    words: "no such file" or "permission denied" count only in an exec
    error (``exec: ...``, ``fork/exec ...``) or next to that name.
    """
    low = text.strip().lower()
    if prefixed and not low.startswith(_START_PREFIX):
        return None
    if low.startswith(_START_PREFIX):
        low = low[len(_START_PREFIX) :].lstrip(" :")
        if not low:
            return "other"
    if low.startswith("chdir ") or " chdir " in low:
        return "cwd"
    if any(w in low for w in _NOT_FOUND_WORDS):
        return "not_found"
    about_exec = low.startswith(("exec:", "exec ", "fork/exec")) or bool(
        name and name.lower() in low
    )
    if about_exec and _NO_SUCH_FILE in low:
        return "not_found"
    if about_exec and any(w in low for w in _CANNOT_EXECUTE_WORDS):
        return "not_executable"
    # Unknown words (a fork that failed for want of memory ...) may well be
    # an outage: left as the error the transport gave.
    return None


class CommandStartError(ExecError, _Answered):
    """The sprite could not start the command: nothing ran.

    Raised instead of a generic failure when the server reports that the
    executable or the working directory is missing or unusable. Not an
    outage, and not an unknown outcome: the command never started, and the
    SDK does not send it again.

    Attributes:
        argv: The command as given.
        cwd: The working directory asked for (None: the sprite's default).
        reason: ``"not_found"``, ``"not_executable"``, ``"cwd"`` or ``"other"``.
        server_message: The server's own words.
        exit_code: What a shell reports for such a command: 127 when there
            is no such executable, else 126. A convention for callers that
            act like a shell (the CLI exits with it); the sprite sent no
            exit status.
        status_code: The HTTP status when the answer was an HTTP error
            (500), None over a control socket.
        request_id: The ``x-request-id`` header of that answer, if any.
        fly_request_id: The ``fly-request-id`` header, if any.
        operation: What the SDK was doing (``"exec"``, ``"exec (http)"``).
        sprite: The sprite's name.
    """

    def __init__(
        self,
        server_message: str,
        *,
        argv: tuple[str, ...] = (),
        cwd: str | None = None,
        reason: str = "other",
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        operation: str | None = "exec",
        sprite: str | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.reason = reason
        self.server_message = server_message.strip()
        self.exit_code = 127 if reason == "not_found" else 126
        self.status_code = status_code
        self._note(self._summary(), headers, operation, sprite)
        super().__init__(self.message)

    def _summary(self) -> str:
        name = self.argv[0] if self.argv else "command"
        if self.reason == "not_found":
            head = f"{name}: command not found"
        elif self.reason == "not_executable":
            head = f"{name}: cannot execute (not an executable file)"
        elif self.reason == "cwd":
            head = f"{name}: cannot start in {self.cwd or 'the working directory'}"
        else:
            head = f"{name}: the sprite could not start the command"
        detail = self.server_message
        if detail.lower().startswith(_START_PREFIX) and detail[len(_START_PREFIX) :].strip(" :"):
            detail = detail[len(_START_PREFIX) :].strip(" :")  # the line says so already
        return f"{head} [{detail}]" if detail else head

    def __str__(self) -> str:
        details = [
            f"{k}={v}"
            for k, v in (
                ("sprite", self.sprite),
                ("status", self.status_code),
                ("request_id", self.request_id),
                ("fly_request_id", self.fly_request_id),
            )
            if v
        ]
        return self.message + (f" ({', '.join(details)})" if details else "")


class CommandNotFoundError(CommandStartError):
    """There is no such executable in the sprite (``exit_code`` 127, as a shell says)."""


def command_start_error(
    text: str,
    *,
    prefixed: bool,
    argv: tuple[str, ...],
    cwd: str | None,
    status_code: int | None = None,
    headers: Mapping[str, str] | None = None,
    operation: str | None = "exec",
    sprite: str | None = None,
) -> CommandStartError | None:
    """The typed error for a server's start-failure text, or None if it is not one."""
    kind = start_failure_kind(text, prefixed=prefixed, name=argv[0] if argv else "")
    if kind is None:
        return None
    cls = CommandNotFoundError if kind == "not_found" else CommandStartError
    return cls(
        text,
        argv=argv,
        cwd=cwd,
        reason=kind,
        status_code=status_code,
        headers=headers,
        operation=operation,
        sprite=sprite,
    )
