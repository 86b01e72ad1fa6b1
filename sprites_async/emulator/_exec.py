"""Command execution routes of the sprite layer (Sections 3 and 4).

* ``GET /exec`` with an upgrade: run a command over a WebSocket; without one:
  list sessions. ``HEAD /exec``: 200, no body (version probe).
* ``GET /exec/{id}`` with an upgrade (or ``/exec?id=``): attach; without: inspect.
* ``POST /exec/{id}/kill``: signal with escalation, NDJSON events.
* ``POST /exec``: HTTP exec, a framed ``application/octet-stream`` body.

Exit bytes of signal deaths are ``128 + N`` (see ``_framing.exit_status``).
A command that cannot start (no such executable or directory, not
executable) is answered ``500 failed to start process: <Go's exec error>``
before any upgrade, on ``GET`` and ``POST /exec`` alike. The real service
says ``failed to start process`` on ``POST /exec``; on a direct upgrade the
2025 server accepted the socket and closed it without an exit (Section
3.8), which no client can tell from an outage, so the emulator answers the
upgrade as it answers ``POST``. The kill endpoint
with ``timeout=0`` signals without ever escalating (GO uses it to forward
Ctrl-C) and waits at most a second for the exit before ``complete``.
Port notifications are best effort: every ``PORT_POLL_INTERVAL`` seconds the
sockets in LISTEN state (``/proc/net/tcp{,6}``) are matched with the socket
inodes held by the session's processes.

The ``exec-wsexec`` quirk makes ``/exec`` sockets behave like Fly's October
2025 ``pkg/wsexec`` handler (Section 12 item 11): no ``debug``, no
``session_info`` and no text ``exit`` (non-TTY: only the binary exit frame;
a TTY keeps the text ``exit``, its only exit indication); once stdin EOF
arrives the socket is never read again, so a client's close frame is never
answered; after the exit the server waits for the client to go first. It
applies to sockets that start a command; attach sockets keep their
``session_info`` (a client needs it to learn the framing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ._framing import (
    STREAM_EOF,
    exit_frame,
    parse_go_duration,
    parse_signal,
    stream_frame,
)
from ._procs import StartError
from ._sessions import Attachment, Session, SessionManager
from ._state import STATE_KEY, EmulatorState, NDJSONWriter, json_response, text_error
from ._wsio import (
    WS_CLOSE_TIMEOUT,
    WS_MAX_MESSAGE,
    ArgError,
    FrameSink,
    WSAttachment,
    handle_client_frame,
    parse_exec_params,
    query_getter,
)

DEFAULT_KILL_TIMEOUT = 10.0
HTTP_DISCONNECT_POLL = 0.25
"""Seconds between checks that an HTTP exec client is still connected."""
GONE_POLL = 0.05
"""Seconds between checks that a client the server no longer reads from is still connected."""
log = logging.getLogger(__name__)
MANAGER_KEY: web.AppKey[SessionManager] = web.AppKey("sprites_exec_sessions", SessionManager)


def manager_of(request: web.Request) -> SessionManager:
    """The session manager of the app serving ``request``."""
    return request.app[MANAGER_KEY]


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def new_socket(state: EmulatorState, *, capabilities: bool = True) -> web.WebSocketResponse:
    """A server WebSocket configured for exec traffic.

    ``capabilities`` adds ``X-Sprite-Capabilities`` (exec upgrades only: on
    ``/control`` the upgrade is not per command, so the header is absent).
    """
    ws = web.WebSocketResponse(
        max_msg_size=WS_MAX_MESSAGE, compress=False, timeout=WS_CLOSE_TIMEOUT
    )
    if capabilities and state.config.signal_capability:
        ws.headers["X-Sprite-Capabilities"] = "signal"
    return ws


async def exec_get(request: web.Request) -> web.StreamResponse:
    """``GET /exec``: new command or legacy attach (upgrade), or the session list."""
    name = request.match_info["name"]
    manager = manager_of(request)
    if not _is_upgrade(request):
        sessions = [s.describe() for s in manager.list(name)]
        return json_response({"sessions": sessions, "count": len(sessions)})
    try:
        params = parse_exec_params(query_getter(request.query))
    except ArgError as exc:
        return text_error(400, str(exc))
    if params.session_id is not None:
        return await _attach(request, params.session_id)
    if not params.cmd:
        return text_error(400, "No command specified")
    try:
        session = await manager.create(name, params.spec(), params.max_run)
    except StartError as exc:
        return text_error(500, f"failed to start process: {exc}")
    return await _serve(request, session, owner=True)


async def exec_head(request: web.Request) -> web.StreamResponse:
    """``HEAD /exec``: 200 with no body (clients only want the version header)."""
    return web.Response(status=200)


async def exec_session(request: web.Request) -> web.StreamResponse:
    """``GET /exec/{id}``: attach (upgrade) or inspect."""
    session_id = request.match_info["id"]
    if _is_upgrade(request):
        return await _attach(request, session_id)
    session = manager_of(request).get(request.match_info["name"], session_id)
    if session is None:
        return text_error(404, f"session not found: {session_id}")
    return json_response(session.describe())


async def _attach(request: web.Request, session_id: str) -> web.StreamResponse:
    session = manager_of(request).get(request.match_info["name"], session_id)
    if session is None:
        return text_error(404, f"session not found: {session_id}")
    return await _serve(request, session, owner=False)


async def _serve(request: web.Request, session: Session, *, owner: bool) -> web.StreamResponse:
    """Run one exec WebSocket until the exit was sent (plus linger) or the client left."""
    state = request.app[STATE_KEY]
    manager = manager_of(request)
    # Attach keeps session_info: without it a client cannot tell the framing.
    wsexec = owner and state.quirks.on("exec-wsexec")
    ws = new_socket(state)
    try:
        await ws.prepare(request)
    except BaseException:
        if owner:
            session.start()
            await session.terminate()
        raise
    manager.sockets.add(ws)
    sink = FrameSink(ws, request, state.faults)
    att_class = _WSExecAttachment if wsexec else WSAttachment
    att = att_class(sink, tty=session.tty, faults=state.faults)
    # Read from the first instant: stdin may arrive before session_info is out.
    reader = asyncio.ensure_future(_read_frames(ws, session, request if wsexec else None, manager))
    try:
        sink.check_initial()
        if owner and not wsexec:
            with contextlib.suppress(Exception):
                await sink.send_json(
                    {
                        "type": "debug",
                        "msg": f"session_created cmd={session.argv[0]}",
                        "pid": int(session.id),
                    }
                )
        try:
            attached = await session.attach(att, owner=owner)
        finally:
            # Even when cancelled in attach (a send to a dying socket): an owner
            # that never starts the session leaves it without a disconnect timer.
            if owner:
                session.start()
        if attached:
            waiters: set[asyncio.Future[Any]] = {att.finished, reader}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if att.finished.done() and att.finished.result() is not None:
            # pkg/wsexec never closes first: it waits for the client to go.
            await _linger(reader, None if wsexec else state.config.exit_linger, manager)
    finally:
        session.detach(att)
        reader.cancel()
        # wait(), not await: the reader's cancellation must not be mistaken for ours.
        await asyncio.wait({reader})
        await sink.close(1000)
        manager.sockets.discard(ws)
    return ws


class _WSExecAttachment(WSAttachment):
    """``exec-wsexec``: no ``session_info``; non-TTY exits carry only the binary frame."""

    async def send_info(self, info: dict[str, Any]) -> None:
        """Nothing: that handler sent no ``session_info``."""

    async def send_exit(self, code: int) -> None:
        """The binary ``03 NN`` alone (a TTY keeps the text ``exit``: it has nothing else)."""
        if self.tty:
            await super().send_exit(code)
        elif not self._faults.suppress_exit:
            await self.sink.send_bytes(exit_frame(code))


async def _linger(
    reader: asyncio.Task[None], seconds: float | None, manager: SessionManager
) -> None:
    """Keep the socket open after the exit, as the service does (~5 s), unless the client leaves.

    ``seconds=None``: until the client leaves (or the emulator stops).
    """
    if (seconds is not None and seconds <= 0) or reader.done():
        return
    closing = asyncio.ensure_future(manager.closing.wait())
    try:
        await asyncio.wait({reader, closing}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
        await asyncio.wait({closing})


async def until_client_gone(request: web.Request, manager: SessionManager) -> None:
    """Wait, without reading, until the client's connection is gone or the emulator stops.

    A handler that does not read its socket learns of a departed client only
    from the transport, so poll it.
    """
    closing = asyncio.ensure_future(manager.closing.wait())
    try:
        while not closing.done():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await asyncio.wait({closing}, timeout=GONE_POLL)
    finally:
        closing.cancel()
        await asyncio.wait({closing})


async def _read_frames(
    ws: web.WebSocketResponse,
    session: Session,
    wsexec: web.Request | None = None,
    manager: SessionManager | None = None,
) -> None:
    """Apply client frames until the client leaves.

    ``wsexec`` (the request, with the ``exec-wsexec`` quirk): after stdin EOF
    stop reading, as ``pkg/wsexec`` did, and only watch for the client leaving.
    """
    async for msg in ws:
        if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
            await handle_client_frame(session, msg.type, msg.data, control=False)
            if wsexec is not None and manager is not None and _is_stdin_eof(session, msg):
                await until_client_gone(wsexec, manager)
                return
        elif msg.type == WSMsgType.ERROR:
            return


def _is_stdin_eof(session: Session, msg: Any) -> bool:
    # Section 3.7: on /exec any binary frame starting with 04 is EOF (non-TTY only).
    return (
        msg.type == WSMsgType.BINARY
        and session.stdin
        and not session.tty
        and isinstance(msg.data, bytes)
        and msg.data[:1] == bytes([STREAM_EOF])
    )


# --------------------------------------------------------------------------
# Kill


async def exec_kill(request: web.Request) -> web.StreamResponse:
    """``POST /exec/{id}/kill``: signal, wait ``timeout``, escalate to SIGKILL."""
    state = request.app[STATE_KEY]
    manager = manager_of(request)
    name, session_id = request.match_info["name"], request.match_info["id"]
    session = manager.get(name, session_id)
    if session is None:
        if manager.exited(name, session_id) is not None:
            return text_error(410, f"session already exited: {session_id}")
        return text_error(404, f"session not found: {session_id}")

    body: dict[str, Any] = {}
    if request.can_read_body:
        with contextlib.suppress(msgspec.DecodeError, ValueError, RecursionError):
            decoded = msgspec.json.decode(await request.read())
            if isinstance(decoded, dict):
                body = decoded
    raw_signal = request.query.get("signal") or body.get("signal") or "SIGTERM"
    raw_timeout: Any = request.query.get("timeout")
    if raw_timeout is None:
        raw_timeout = body.get("timeout")
    try:
        sig = parse_signal(str(raw_signal))
        if raw_timeout is None or raw_timeout == "":
            timeout = DEFAULT_KILL_TIMEOUT
        elif isinstance(raw_timeout, (int, float)) and not isinstance(raw_timeout, bool):
            timeout = float(raw_timeout)
        else:
            timeout = parse_go_duration(str(raw_timeout))
    except ValueError as exc:
        return text_error(400, str(exc))

    writer = NDJSONWriter(request, state)
    try:
        return await _kill_stream(writer, state, session, sig, timeout)
    except ConnectionError:
        log.debug("kill of session %s: the client left the stream", session.id)
        return writer.response


async def _kill_stream(
    writer: NDJSONWriter,
    state: EmulatorState,
    session: Session,
    sig: signal.Signals,
    timeout: float,
) -> web.StreamResponse:
    await writer.prepare()
    # Quirk: the Python SDK's reading (section 4.4) - text in `data`,
    # failures in `error`, no `message` at all.
    quirky = state.quirks.on("kill-event-data-error")

    def event(kind: str, text: str, **fields: Any) -> dict[str, Any]:
        key = ("error" if kind == "error" else "data") if quirky else "message"
        return {"type": kind, key: text, **fields}

    pid = int(session.id)
    await writer.send(
        event("signal", f"Signaling {sig.name} to process group {pid}", signal=sig.name, pid=pid)
    )
    try:
        await session.proc.send_signal(sig)
    except OSError as exc:
        await writer.send(event("error", f"failed to signal process group {pid}: {exc}"))
        await writer.send({"type": "complete", "exit_code": None})
        return await writer.finish()
    if timeout > 0:
        try:
            await asyncio.wait_for(session.done.wait(), timeout)
        except asyncio.TimeoutError:
            await writer.send(event("timeout", f"Process did not exit within {timeout:g}s"))
            await session.proc.send_signal(signal.SIGKILL)
            await writer.send(event("killed", "Process killed with SIGKILL"))
            await session.done.wait()
    else:
        # timeout=0 (GO's Ctrl-C forwarding): deliver the signal, never escalate.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(session.done.wait(), 1.0)
    if session.done.is_set():
        await writer.send(event("exited", "Process exited"))
        await writer.send({"type": "complete", "exit_code": session.exit_code})
    else:
        await writer.send({"type": "complete", "exit_code": None})
    return await writer.finish()


# --------------------------------------------------------------------------
# HTTP exec


class _BodyAttachment(Attachment):
    """Session output to an HTTP response body: one chunk per frame."""

    def __init__(self, response: web.StreamResponse, state: EmulatorState) -> None:
        super().__init__()
        self._response = response
        self._state = state

    async def send_output(self, stream: int, data: bytes) -> None:
        """``01``/``02`` + bytes as its own chunk."""
        await self._response.write(stream_frame(stream, data))

    async def send_exit(self, code: int) -> None:
        """The final ``03 NN`` (unless ``suppress_exit``)."""
        if not self._state.faults.suppress_exit:
            await self._response.write(exit_frame(code))


async def exec_post(request: web.Request) -> web.StreamResponse:
    """``POST /exec``: run to completion, streaming frames in the response body."""
    state = request.app[STATE_KEY]
    manager = manager_of(request)
    query = request.query
    if "tty" in query:
        return text_error(400, "TTY not supported on POST /exec")
    if any(k in query for k in ("id", "detachable", "cc", "session_id")):
        return text_error(400, "Unsupported parameters for POST /exec")
    try:
        params = parse_exec_params(query_getter(query))
    except ArgError as exc:
        return text_error(400, str(exc))
    if not params.cmd:
        return text_error(400, "No command specified")
    try:
        session = await manager.create(request.match_info["name"], params.spec(), params.max_run)
    except StartError as exc:
        return text_error(500, f"failed to start process: {exc}")

    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff"},
    )
    att = _BodyAttachment(response, state)
    feeder: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        if params.stdin:
            feeder = asyncio.ensure_future(_feed_body(request, session))
        await session.attach(att, owner=True)
        session.start()
        await _until_finished_or_gone(request, att)
    finally:
        session.detach(att)
        session.start()
        if feeder is not None:
            feeder.cancel()
            await asyncio.wait({feeder})
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _until_finished_or_gone(request: web.Request, att: Attachment) -> None:
    """Wait for the exit; a silent command would otherwise never notice its client left."""
    while not att.finished.done():
        await asyncio.wait({att.finished}, timeout=HTTP_DISCONNECT_POLL)
        transport = request.transport
        if transport is None or transport.is_closing():
            return


async def _feed_body(request: web.Request, session: Session) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        async for chunk in request.content.iter_any():
            await session.proc.write_stdin(chunk)
    session.proc.close_stdin()


# --------------------------------------------------------------------------


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register the exec routes and install the session manager as ``state.sessions``."""
    manager = SessionManager(state)
    state.sessions = manager
    app[MANAGER_KEY] = manager
    base = "/v1/sprites/{name}/exec"
    app.router.add_get(base, exec_get, allow_head=False)
    app.router.add_route("HEAD", base, exec_head)
    app.router.add_post(base, exec_post)
    app.router.add_get(base + "/{id}", exec_session, allow_head=False)
    app.router.add_post(base + "/{id}/kill", exec_kill)

    async def _shutdown(app: web.Application) -> None:
        await manager.shutdown()

    app.on_shutdown.append(_shutdown)
