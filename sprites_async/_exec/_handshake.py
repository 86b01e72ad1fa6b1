"""Opening a command's socket: a direct ``/exec`` handshake, an attach, or a ``/control`` lease.

Each start is sent at most once. The direct handshake runs in the reader
task, so that a caller cancelled during it can still stop the command the
server started on accepting the upgrade.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from sprites_async import _frames
from sprites_async._errors import APIError, NotFoundError, SpritesTimeoutError
from sprites_async._options import quote_segment

from ._connection import _SOCKET_LOST, _close_late_ws, _first_done, _shielded
from ._request import _start_error_of

if TYPE_CHECKING:
    from sprites_async._websocket import WebSocket

    from ._session import ExecSession


async def open_session(session: ExecSession, prefer_control: bool) -> None:
    """Open the session's socket and start reading it (``ExecSession.start``)."""
    session._started = True
    loop = asyncio.get_running_loop()
    session._finished = loop.create_future()
    if session._attach_id is not None:
        await _start_attach(session)
        return
    # A pooled socket was opened without the caller's extra headers/query.
    if prefer_control and session._options is None and await _start_on_lease(session):
        return
    # The handshake runs in the reader task, not in the caller: the server
    # starts the command when it accepts the upgrade, before the 101
    # reaches us, so a caller cancelled meanwhile must still get hold of
    # the socket to stop what it started (see _cancelled_in_handshake).
    # One coroutine for the handshake and the reading: a frame less kept
    # alive per live session than a handshake coroutine awaiting the reader.
    opened = session._opened = loop.create_future()
    session._reader = asyncio.ensure_future(session._read_loop(None, _connect))
    try:
        # Awaited directly, not through a waiter: a cancellation of the
        # caller cancels ``opened`` alone, which _connect expects.
        await opened
    except asyncio.CancelledError as exc:
        if session._span is not None:
            session._span.fail(exc)
        await _cancelled_in_handshake(session)
        raise


async def _start_on_lease(session: ExecSession) -> bool:
    """Start the command on a pooled ``/control`` socket; False if none is to be had."""
    from sprites_async._control import pool_for

    assert session._request is not None
    lease = await pool_for(session._client).acquire(session._sprite.name)
    if lease is None:
        return False
    session._lease = lease
    session._proto.control = True
    session._begin(lease.ws)
    frame = _frames.encode_envelope("op.start", op="exec", args=session._request.control_args())
    try:
        await lease.ws.send_str(frame)
    except _SOCKET_LOST as exc:
        # Part of the frame may be out (a failed drain comes after the
        # write): the command may have started.
        session._lost(f"sending op.start failed: {exc}", exc)
    except asyncio.CancelledError as exc:
        # The frame may be out: stop what it may have started.
        if session._span is not None:
            session._span.fail(exc)
        await _shielded(session.terminate())
        await session._release()
        raise
    return True


async def _connect(session: ExecSession) -> WebSocket | None:
    """The ``/exec`` handshake (in the reader task); None once ``_opened`` has the error."""
    assert session._request is not None
    try:
        ws, headers = await session._client._ws_connect(
            session._sprite.path + "/exec",
            operation="exec",
            sprite=session._sprite.name,
            params=session._request.query(),
            autoping=False,
            options=session._options,
        )
    except BaseException as exc:
        started = (
            _start_error_of(exc, session._request, session._sprite.name)
            if isinstance(exc, APIError)
            else None
        )
        if started is not None:
            started.__cause__ = exc
            exc = started
        opened, session._opened = session._opened, None
        if opened is not None and not opened.done():
            opened.set_exception(exc)
            opened.exception()  # start() re-raises it; never "not retrieved"
        if isinstance(exc, asyncio.CancelledError):
            raise
        return None
    session._set_capabilities(headers)
    session._ws = ws
    # Dropped here: nothing of the handshake stays alive with the session.
    opened, session._opened = session._opened, None
    if opened is not None and not opened.done():
        opened.set_result(None)
    return ws


async def _cancelled_in_handshake(session: ExecSession) -> None:
    """Stop a command whose ``/exec`` handshake was cancelled midway.

    The server starts the command when it accepts the upgrade, before the
    101 reaches us: dropping the handshake would leave it running unseen
    (for ``max_run_after_disconnect``). Give the handshake up to
    ``kill_grace`` more seconds, then terminate what it started, as for
    any cancellation; callers (``__aenter__`` too) re-raise afterwards.
    """
    reader = session._reader
    assert reader is not None
    if session._ws is None and not reader.done():
        # The caller's cancellation cancelled the first future: a new one,
        # which _connect resolves just the same.
        later = session._opened = asyncio.get_running_loop().create_future()
        await _first_done((later, reader), session._settings.kill_grace)
        if later.done() and not later.cancelled():
            later.exception()  # the handshake's error: given up on, never "not retrieved"
    if session._ws is None:
        # Never opened, or not in time: give up on it; a socket that
        # still opens after this is closed by _close_late_ws.
        session._opened = None
        reader.cancel()
        reader.add_done_callback(functools.partial(_close_late_ws, session))
        return
    await _shielded(session.terminate())
    await _shielded(session.aclose())


async def _start_attach(session: ExecSession) -> None:
    client = session._client
    name = session._sprite.name
    sid = session._attach_id or ""
    params = [("stdin", "true" if session._attach_stdin else "false")]
    # Sprites whose server answered the path form with 404: use ?id= at once.
    legacy = client._legacy_attach
    ws: WebSocket | None = None
    if name not in legacy:
        try:
            ws, headers = await client._ws_connect(
                session._sprite.path + "/exec/" + quote_segment(sid),
                operation="attach",
                sprite=name,
                params=params,
                autoping=False,
                options=session._options,
            )
        except NotFoundError:
            ws = None
    if ws is None:
        ws, headers = await client._ws_connect(
            session._sprite.path + "/exec",
            operation="attach",
            sprite=name,
            params=[("id", sid), *params],
            autoping=False,
            options=session._options,
        )
        session._proto.legacy = True
        legacy.add(name)
    session._set_capabilities(headers)
    session._begin(ws)
    loop = asyncio.get_running_loop()
    session._proto.connected(loop.time(), session._settings.session_info_timeout)
    deadline = session._proto.info_deadline
    try:
        await session._info_or_end(None if deadline is None else deadline - loop.time())
    except BaseException:
        await _shielded(session.aclose())
        raise
    if session.info is None:
        error = session._error
        await _shielded(session.aclose())
        if error is not None:
            raise error
        raise SpritesTimeoutError(
            f"no session_info within {session._settings.session_info_timeout} s of attaching",
            operation="attach",
            sprite=name,
        )
