"""The control channel, ``GET /v1/sprites/{name}/control`` (Section 5).

One WebSocket runs one operation at a time. Envelopes are text frames
``control:{json}``; while an op runs, every other frame is its data, framed
exactly as on ``/exec`` (or, for ``proxy``, raw relay bytes). With
``suppress_exit`` the exec data carries no exit, but ``op.complete`` still
reports ``exitCode``, which lets clients test their fallback to it.

The ``proxy`` op (Section 5.5) dials at once when ``args`` has ``host`` and
``port``, otherwise it waits for a text frame with the init JSON; then it
answers ``{"status":"connected","target":...}`` and relays until the target
closes (``op.complete``). A target that cannot be reached closes the whole
socket with 1011, as the 2025 server did. GO's pooled variant, an unprefixed
``{"type":"start","operation":"proxy","params":{...}}`` while idle, is
accepted too: no ``op.ack``/``op.complete`` (GO reads the ``connected`` reply
first), and its unprefixed ``{"type":"release"}`` ends the relay.

Quirks (see ``_quirks``): ``control-400``/``-403``/``-500``/``-502``/``-503``
refuse the upgrade with that status and a text body; ``control-hang`` never
answers the upgrade (the handler ends when the client gives up or the
emulator stops); ``control-no-ack`` sends no ``op.ack``;
``control-drop-after-start`` starts an exec op's command for real, then
drops the TCP connection without sending anything (no ack, no close frame):
the command runs on, detached, as after any disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ._exec import MANAGER_KEY, new_socket, until_client_gone
from ._procs import StartError
from ._proxy import READ_SIZE, ProxyInitError, dial, parse_init, sprite_network
from ._sessions import Session, SessionManager
from ._state import STATE_KEY, EmulatorState, text_error
from ._wsio import (
    ArgError,
    FrameSink,
    WSAttachment,
    args_getter,
    handle_client_frame,
    parse_exec_params,
)

PREFIX = "control:"
_LIST_ARGS = {"cmd", "cmd[]", "env"}
_REFUSALS: dict[str, tuple[int, str]] = {
    # 400 and 403 are what gorilla/websocket's Upgrader answers when a proxy
    # strips the upgrade headers or the origin check fails.
    "control-400": (
        400,
        "websocket: the client is not using the websocket protocol: "
        "'upgrade' token not found in 'Connection' header",
    ),
    "control-403": (403, "websocket: request origin not allowed by Upgrader.CheckOrigin"),
    "control-500": (500, "control channel unavailable"),
    "control-502": (502, "bad gateway"),
    "control-503": (503, "service unavailable"),
}


class _Op:
    """The running operation of a control socket."""

    def __init__(self, op_id: str, name: str) -> None:
        self.id = op_id
        self.name = name
        self.ready = asyncio.Event()
        self.session: Session | None = None
        self.attachment: WSAttachment | None = None
        self.task: asyncio.Task[None] | None = None
        self.bare = False
        """GO's unprefixed proxy start: no envelopes, ended by ``release``."""
        self.writer: asyncio.StreamWriter | None = None
        """Proxy: the connection to the target, once dialled."""
        self.dialled = asyncio.Event()
        """Proxy: set once the dial succeeded or failed (bytes sent meanwhile wait for it)."""


class ControlConnection:
    """State of one control socket: idle, or running one op."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, state: EmulatorState
    ) -> None:
        self.request = request
        self.ws = ws
        self.state = state
        self.manager: SessionManager = request.app[MANAGER_KEY]
        self.sprite = request.match_info["name"]
        self.sink = FrameSink(ws, request, state.faults)
        self.op: _Op | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def _task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def envelope(self, message: dict[str, Any]) -> None:
        """Send ``control:{json}``."""
        await self.sink.send_text(PREFIX + msgspec.json.encode(message).decode())

    async def op_error(self, op_id: str, op: str, code: str, message: str) -> None:
        """Refuse a start or a stray frame; the running op (if any) is unaffected."""
        await self.envelope(
            {
                "type": "op.error",
                "id": op_id,
                "op": op,
                "args": {"code": code, "message": message, "error": message},
            }
        )

    async def start(self, op_id: str, op: str, args: dict[str, Any]) -> None:
        """Handle ``op.start``."""
        if self.op is not None:
            await self.op_error(op_id, op, "op.busy", "operation already running")
            return
        if op not in ("exec", "proxy"):
            await self.op_error(op_id, op, "op.not_found", f"unknown operation: {op}")
            return
        current = _Op(op_id, op)
        self.op = current
        quirks = self.state.quirks
        if op == "exec" and quirks.on("control-drop-after-start"):
            current.task = self._task(self._start_and_drop(current, args))
            return
        if not quirks.on("control-no-ack"):
            await self.envelope({"type": "op.ack", "id": op_id})
        if op == "exec":
            current.task = self._task(self._run_exec(current, args))
            return
        host, port = args.get("host"), args.get("port")
        current.ready.set()
        if isinstance(host, str) and isinstance(port, str) and host and port:
            current.task = self._task(self._run_proxy(current, host, port))

    async def start_bare_proxy(self, params: dict[str, Any]) -> None:
        """GO's ``{"type":"start","operation":"proxy","params":{...}}`` (Unconfirmed form)."""
        if self.op is not None:
            await self.op_error("", "proxy", "op.busy", "operation already running")
            return
        current = _Op("", "proxy")
        current.bare = True
        current.ready.set()
        self.op = current
        host = params.get("host") or "localhost"
        current.task = self._task(self._run_proxy(current, str(host), str(params.get("port", ""))))

    async def _complete(self, op: _Op, result: dict[str, Any]) -> None:
        if self.op is op:
            self.op = None
        with contextlib.suppress(Exception):
            await self.envelope({"type": "op.complete", "id": op.id, "op": op.name, "args": result})

    async def _start_and_drop(self, op: _Op, args: dict[str, Any]) -> None:
        """``control-drop-after-start``: start the command, then cut the connection.

        Nothing is sent first: the client sees the socket die right after its
        ``op.start``, yet the command runs (detached, for
        ``max_run_after_disconnect``).
        """
        try:
            params = parse_exec_params(args_getter(args))
            if params.session_id is None and params.cmd:
                session = await self.manager.create(self.sprite, params.spec(), params.max_run)
                session.start()  # nobody attached: the disconnect timer runs
        except (ArgError, StartError):
            pass
        finally:
            op.ready.set()
            self.sink.drop()

    async def _run_exec(self, op: _Op, args: dict[str, Any]) -> None:
        try:
            try:
                params = parse_exec_params(args_getter(args))
            except ArgError as exc:
                await self._complete(op, {"ok": False, "error": str(exc)})
                return
            owner = params.session_id is None
            if not owner:
                session = self.manager.get(self.sprite, params.session_id or "")
                if session is None:
                    await self._complete(
                        op, {"ok": False, "error": f"session not found: {params.session_id}"}
                    )
                    return
            elif not params.cmd:
                await self._complete(op, {"ok": False, "error": "No command specified"})
                return
            else:
                try:
                    session = await self.manager.create(self.sprite, params.spec(), params.max_run)
                except StartError as exc:
                    # As the real control handler: the op fails with the exec
                    # error's own text (Section 3.8). exitCode, which the real
                    # one omits, is the shell's status: PY and JS read only it.
                    await self._complete(
                        op, {"ok": False, "error": str(exc), "exitCode": exc.shell_status}
                    )
                    return
            att = WSAttachment(self.sink, tty=session.tty, faults=self.state.faults)
            op.session, op.attachment = session, att
            op.ready.set()
            try:
                attached = await session.attach(att, owner=owner)
            finally:
                # Even when cancelled in attach (a send to a dying socket): an owner
                # that never starts the session leaves it without a disconnect timer.
                if owner:
                    session.start()
            if not attached:
                if self.op is op:
                    await self._complete(
                        op, {"ok": False, "error": f"session not found: {session.id}"}
                    )
                return
            code = await att.finished
            if code is None:
                return  # socket gone: the session lives on, detached
            await self._complete(op, {"ok": True, "exitCode": code})
        finally:
            op.ready.set()

    async def data(self, msg_type: WSMsgType, data: Any) -> None:
        """A non-envelope frame: the running op's input, or ``op.not_active``."""
        op = self.op
        if op is None:
            await self.op_error("", "", "op.not_active", "no active operation")
            return
        await op.ready.wait()
        if self.op is not op:
            return
        if op.name == "proxy":
            await self._proxy_data(op, msg_type, data)
        elif op.session is not None:
            await handle_client_frame(op.session, msg_type, data, control=True)

    async def _proxy_data(self, op: _Op, msg_type: WSMsgType, data: Any) -> None:
        if op.task is None:
            # Not dialled yet: the first text frame is the init JSON.
            if msg_type == WSMsgType.TEXT:
                try:
                    host, port = parse_init(data)
                except ProxyInitError as err:
                    await self.fail(err)
                    return
                op.task = self._task(self._run_proxy(op, host, str(port)))
            return
        if msg_type != WSMsgType.BINARY:
            return  # text frames after the handshake carry nothing (Section 10)
        await op.dialled.wait()
        if op.writer is not None:
            try:
                op.writer.write(data)
                await op.writer.drain()
            except OSError:
                pass  # the relay task sees the target go and ends the op

    async def fail(self, err: ProxyInitError) -> None:
        """Close the whole control socket, as the 2025 server did after a failed proxy."""
        self.detach()
        message = err.reason.encode()[:123].decode("utf-8", "ignore").encode()
        if not self.sink.dropped:
            with contextlib.suppress(Exception):
                await self.ws.close(code=err.code, message=message)

    async def _run_proxy(self, op: _Op, host: str, port: str) -> None:
        try:
            try:
                if not port.isdigit():
                    raise ProxyInitError(1003, "Invalid port number")
                target_host, target_port = parse_init(
                    msgspec.json.encode({"host": host, "port": int(port)}).decode()
                )
                network = await sprite_network(self.state, self.sprite)
                reader, writer, target = await dial(target_host, target_port, network=network)
            except ProxyInitError as err:
                op.dialled.set()
                await self.fail(err)
                return
            op.writer = writer
            op.dialled.set()
            try:
                await self.sink.send_json({"status": "connected", "target": target})
                ok, error = True, None
                while True:
                    try:
                        chunk = await reader.read(READ_SIZE)
                    except OSError as exc:
                        ok, error = False, f"upstream closed: {exc}"
                        break
                    if not chunk:
                        break
                    await self.sink.send_bytes(chunk)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if op.bare:
                if self.op is op:
                    self.op = None
                return
            result: dict[str, Any] = {"ok": ok}
            if error is not None:
                result["error"] = error
            await self._complete(op, result)
        except ConnectionError:
            return  # the socket is gone; detach() cleans up

    def release(self) -> None:
        """GO's unprefixed ``release``: ends a bare proxy relay, otherwise nothing."""
        op = self.op
        if op is not None and op.bare:
            self.detach()

    def detach(self) -> None:
        """The socket is gone: detach the running op, as a direct disconnect would."""
        op, self.op = self.op, None
        if op is None:
            return
        if op.session is not None and op.attachment is not None:
            op.session.detach(op.attachment)
        if op.task is not None and not op.task.done() and op.task is not asyncio.current_task():
            op.task.cancel()
        if op.writer is not None:
            op.writer.close()


def _auto_args(query: Any) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key in set(query.keys()):
        if key == "op":
            continue
        values = list(query.getall(key))
        args[key] = values if key in _LIST_ARGS or len(values) > 1 else values[0]
    return args


async def control(request: web.Request) -> web.StreamResponse:
    """``GET /control``: the control WebSocket."""
    state = request.app[STATE_KEY]
    if state.faults.control_404:
        return text_error(404, "404 page not found")
    refusal = state.quirks.control_refusal()
    if refusal == "control-hang":
        return await _hang(request)
    if refusal is not None:
        status, reason = _REFUSALS[refusal]
        return text_error(status, reason)
    ws = new_socket(state, capabilities=False)
    await ws.prepare(request)
    conn = ControlConnection(request, ws, state)
    conn.manager.sockets.add(ws)
    try:
        conn.sink.check_initial()
        auto = request.query.get("op")
        if auto:
            await conn.start("", auto, _auto_args(request.query))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                text: str = msg.data
                if text.startswith(PREFIX):
                    await _envelope(conn, text[len(PREFIX) :])
                    continue
                bare = _bare_message(text)
                if bare.get("type") == "release":
                    conn.release()
                elif (
                    conn.op is None
                    and bare.get("type") == "start"
                    and bare.get("operation") == "proxy"
                ):
                    params = bare.get("params")
                    await conn.start_bare_proxy(params if isinstance(params, dict) else {})
                else:
                    await conn.data(msg.type, text)
            elif msg.type == WSMsgType.BINARY:
                await conn.data(msg.type, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    except ConnectionError:
        pass
    finally:
        conn.detach()
        if conn.tasks:
            # wait(), not await: a task's cancellation must not be mistaken for ours.
            await asyncio.wait(set(conn.tasks))
        await conn.sink.close(1000)
        conn.manager.sockets.discard(ws)
    return ws


async def _hang(request: web.Request) -> web.StreamResponse:
    """``control-hang``: hold the upgrade unanswered until the client or the emulator gives up."""
    await until_client_gone(request, request.app[MANAGER_KEY])
    transport = request.transport
    if transport is not None:
        transport.abort()  # the emulator is stopping: still never answer
    # Never reaches the client: aiohttp cannot write it to a closed transport.
    return web.Response(status=503)


async def _envelope(conn: ControlConnection, payload: str) -> None:
    try:
        message = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        return
    if not isinstance(message, dict) or message.get("type") != "op.start":
        return  # unknown control types are ignored
    op_id = message.get("id")
    op = message.get("op")
    args = message.get("args")
    await conn.start(
        op_id if isinstance(op_id, str) else "",
        op if isinstance(op, str) else "",
        args if isinstance(args, dict) else {},
    )


def _bare_message(text: str) -> dict[str, Any]:
    """An unprefixed JSON object (GO's ``release`` and proxy ``start``), else ``{}``."""
    if not text.startswith("{"):
        return {}
    try:
        obj = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register ``/control``."""
    app.router.add_get("/v1/sprites/{name}/control", control, allow_head=False)
