"""The exec sessions of a sprite (``sprite.sessions``): list, attach, kill."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from sprites_async import _frames
from sprites_async._errors import APIError, GoneError, StreamError
from sprites_async._models import (
    JSONDecoder,
    UnreadableEntry,
    attach_raw,
    decode_any,
    raw_of,
    salvage,
)
from sprites_async._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    quote_segment,
    request_options,
)
from sprites_async._paging import AsyncPaginator, ListPage
from sprites_async._streams import NOT_FINAL, EventOperation, NDJSONStream, NotFinal
from sprites_async._validation import go_duration, signal_name

from ._events import PortCallback

if TYPE_CHECKING:
    from sprites_async._sprites import Sprite

    from ._session import ExecSession

__all__ = ["ExecSessionInfo", "ExecSessions", "KillEvent"]


class _WireSession(msgspec.Struct, kw_only=True):
    id: str | int | None = None
    session_id: str | int | None = None
    command: str = ""
    workdir: str | None = None
    created: str | int | float | None = None
    tty: bool = False
    bytes_per_second: float = 0.0
    is_active: bool = False
    last_activity: str | None = None


class _WireSessionList(msgspec.Struct, kw_only=True):
    sessions: list[msgspec.Raw] | None = None
    count: int | None = None
    error: str | None = None


_session_list_decoder = JSONDecoder(msgspec.json.Decoder(_WireSessionList))
_session_decoder = JSONDecoder(msgspec.json.Decoder(_WireSession))


class ExecSessionInfo(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One entry of ``sprite.sessions.list()``.

    Attributes:
        id: The session id (the PID, as a string; PIDs are recycled).
        command: The resolved executable and its arguments, joined by spaces.
        workdir: The working directory.
        created: When it started (RFC 3339 text, as sent).
        tty: Whether it has a terminal.
        bytes_per_second: Recent output rate.
        is_active: The server's "recent activity" flag (unreliable).
        last_activity: RFC 3339 text, when sent.
    """

    id: str
    command: str = ""
    workdir: str | None = None
    created: str | None = None
    tty: bool = False
    bytes_per_second: float = 0.0
    is_active: bool = False
    last_activity: str | None = None

    @property
    def raw(self) -> dict[str, Any]:
        """The list entry's JSON object as received (``{}`` if built locally)."""
        return raw_of(self, self.id)


def _session_entry(entry: msgspec.Raw | object, where: str) -> ExecSessionInfo:
    """One session of the list: typed decode, else field by field; it must have an id."""
    if isinstance(entry, msgspec.Raw):
        try:
            wire = _session_decoder.decode(entry)
        except msgspec.ValidationError:
            entry = decode_any(entry)
            wire = salvage(entry, _WireSession, where)
    else:
        wire = salvage(entry, _WireSession, where)
    sid = wire.id if wire.id is not None else wire.session_id
    if sid is None or sid == "":
        raise UnreadableEntry(f"{where}: the session has no readable `id`")
    created = wire.created
    info = ExecSessionInfo(
        id=str(sid),
        command=wire.command,
        workdir=wire.workdir,
        created=None if created is None else str(created),
        tty=wire.tty,
        bytes_per_second=wire.bytes_per_second,
        is_active=wire.is_active,
        last_activity=wire.last_activity,
    )
    attach_raw(info, entry)
    return info


def _decode_sessions(data: bytes) -> tuple[list[ExecSessionInfo], str | None]:
    """The sessions of a list answer and its ``error`` text (a 200 may carry one).

    Nothing is dropped: an entry without a readable id makes the whole
    answer unreadable (``UnreadableEntry``, naming the entry).
    """
    entries: list[Any]
    try:
        page = _session_list_decoder.decode(data)
        entries, error = list(page.sessions or ()), page.error
    except msgspec.ValidationError:
        obj = decode_any(data)
        if not isinstance(obj, dict):
            raise
        found = obj.get("sessions")
        if found is not None and not isinstance(found, list):
            raise UnreadableEntry(
                f"sessions: expected an array, got {type(found).__name__}"
            ) from None
        entries = found or []
        error = _frames.as_text(obj.get("error")) if obj.get("error") else None
    out = [_session_entry(entry, f"sessions[{i}]") for i, entry in enumerate(entries)]
    return out, error


class KillEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a kill stream.

    ``type`` is ``signal``, ``timeout``, ``killed``, ``exited``, ``error`` or
    ``complete`` (which carries ``exit_code``); unknown types are passed on.
    ``message`` is the event's text, whether the server spelt its key
    ``message``, ``data`` or ``error`` (servers use all three).
    """

    type: str
    message: str = ""
    signal: str | None = None
    pid: int | None = None
    exit_code: int | None = None


class _WireKill(msgspec.Struct, kw_only=True):
    type: str
    message: str | None = None
    data: str | None = None
    error: str | None = None
    signal: str | None = None
    pid: int | None = None
    exit_code: int | None = None


_kill_typed = JSONDecoder(msgspec.json.Decoder(_WireKill))


def _decode_kill(line: bytes) -> KillEvent:
    """One kill event; odd fields are read liberally, a line without ``type`` is skipped."""
    try:
        wire = _kill_typed.decode(line)
    except msgspec.ValidationError:
        wire = salvage(decode_any(line), _WireKill, "kill event")
    return KillEvent(
        type=wire.type,
        message=wire.message or wire.data or wire.error or "",
        signal=wire.signal,
        pid=wire.pid,
        exit_code=wire.exit_code,
    )


def _kill_final(event: KillEvent) -> int | NotFinal | None:
    if event.type == "error":
        raise StreamError(f"kill failed: {event.message or 'error'}")
    if event.type == "complete":
        return event.exit_code
    return NOT_FINAL


def _kill_gone(exc: APIError) -> int | None:
    if isinstance(exc, GoneError):
        return None  # already exited: success
    raise exc


class ExecSessions:
    """The exec sessions of one sprite: ``sprite.sessions``."""

    __slots__ = ("_sprite",)

    def __init__(self, sprite: Sprite) -> None:
        self._sprite = sprite

    def list(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncPaginator[ExecSessionInfo, ListPage[ExecSessionInfo]]:
        """The sessions running now: ``await`` it, or ``async for`` it.

        An exited session disappears at once. The server answers in one
        piece, so awaiting gives the one page there is, a :class:`ListPage`
        (a ``list`` of :class:`ExecSessionInfo`), as ``checkpoints.list()``
        and ``services.list()`` do.

        Raises:
            APIError: Including a 200 answer that carries an ``error`` key.
        """
        sprite = self._sprite
        options = request_options(extra_headers, extra_query, extra_body)

        async def fetch(token: str | None) -> ListPage[ExecSessionInfo]:
            resp = await sprite.client._request(
                "GET",
                sprite.path + "/exec",
                operation="list sessions",
                sprite=sprite.name,
                options=options,
            )
            sessions, error = resp.parse(_decode_sessions)
            if error:
                raise APIError(
                    error,
                    status_code=resp.status,
                    body=resp.body,
                    headers=resp.headers,
                    operation="list sessions",
                    sprite=sprite.name,
                )
            return ListPage(sessions)

        return AsyncPaginator(fetch)

    def attach(
        self,
        session_id: str | int,
        *,
        stdin: bool = True,
        on_port: PortCallback | None = None,
        kill_on_exit: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ExecSession:
        """Attach to a running session: ``async with sprite.sessions.attach(id) as proc``.

        Uses the path form and falls back to ``?id=`` on 404 (remembered per
        sprite). Entering waits for ``session_info`` (its ``tty`` flag decides
        the framing); the scrollback then arrives first as output. Leaving
        the block detaches and leaves the command running unless
        ``kill_on_exit`` is set.

        Raises (on entering):
            NotFoundError: No such session (it may have exited while away).
        """
        from ._session import ExecSession

        sid = _check_session_id(session_id)
        return ExecSession(
            self._sprite,
            None,
            attach_id=sid,
            attach_stdin=stdin,
            on_port=on_port,
            kill_on_exit=kill_on_exit,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def kill(
        self,
        session_id: str | int,
        *,
        signal: str | int = "TERM",
        timeout: float = 10.0,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[KillEvent, int | None]:
        """Signal a session; escalate to KILL after ``timeout`` seconds (0: never).

        Returns an :class:`~sprites_async.EventOperation`: ``async for event
        in ...`` for the :class:`KillEvent` lines, or ``await`` it for the
        final exit code (None when the session
        had already exited — a 410, which counts as success).

        Raises:
            NotFoundError: No such session.
            StreamError: The server reported an ``error`` event.
        """
        sid = _check_session_id(session_id)
        name = signal_name(signal)
        seconds: object = timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError("timeout must be a number of seconds >= 0")
        sprite = self._sprite
        return EventOperation(
            NDJSONStream(
                sprite.client,
                "POST",
                sprite.path + "/exec/" + quote_segment(sid) + "/kill",
                decoder=_decode_kill,
                operation="kill session",
                sprite=sprite.name,
                params=[("signal", "SIG" + name), ("timeout", go_duration(float(timeout)))],
                # Only KILL is harmless twice: a repeated TERM/INT may be read as "force it".
                idempotent=name == "KILL",
                final=_kill_final,
                on_api_error=_kill_gone,
                options=request_options(extra_headers, extra_query, extra_body),
            )
        )


def _check_session_id(session_id: object) -> str:
    if isinstance(session_id, bool) or not isinstance(session_id, (str, int)):
        raise TypeError("session_id must be a str or an int")
    sid = str(session_id)
    if not sid or "/" in sid or "\x00" in sid:
        raise ValueError(f"invalid session id {session_id!r}")
    return sid
