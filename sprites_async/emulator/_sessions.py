"""Exec sessions: processes that outlive their sockets, with scrollback and attachments.

A :class:`Session` owns one running command (a real process or an inline
program) and fans its output out to any number of *attachments* (the socket
that started it, later ``attach`` sockets, an HTTP exec body, a control op).
Output is delivered in order and with backpressure: the pump awaits every
attachment's send before reading more, so a client that does not read stalls
the command through its pipe, as on the real service.

The :class:`SessionManager` is installed as ``state.sessions`` and is the
``SessionRegistry`` other modules call on restore, delete, going cold and
shutdown.

Choices where the protocol reference leaves room:

* Session ids are the host PID of the spawned process (under bubblewrap the
  outer ``bwrap``, not the PID inside the namespace); inline sessions get ids
  above the kernel's ``pid_max`` so they never collide with real ones.
* Scrollback is the last ``SCROLLBACK_BYTES`` of output, replayed byte for
  byte on attach (not a rendered screen for TTY sessions); for non-TTY
  sessions stdout and stderr are replayed merged, as stdout frames.
* When ``max_run_after_disconnect`` expires the command's group gets SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from ._framing import DEFAULT_PATH, STREAM_STDOUT
from ._inline import InlineProcess, match_inline
from ._policy import network_isolated
from ._procs import (
    ProcessLike,
    ProcSpec,
    SpriteProcess,
    build_env,
    listening_ports,
    listening_sockets,
    proc_table,
    resolve_executable,
    sprite_abspath,
    use_sandbox,
)
from ._sandbox import jail_for
from ._state import EmulatorState

SCROLLBACK_BYTES = 64 * 1024
"""Default size of each session's scrollback ring (``config.extra["exec_scrollback"]``)."""
PORT_POLL_INTERVAL = 0.5
"""Seconds between port scans (``config.extra["exec_port_poll"]``; 0 disables)."""
PORT_SETTLE = 0.05
"""Seconds between seeing a port change and announcing it (lets pending output go first)."""
SIDS_MEMORY = 65536
EXITED_MEMORY = 256
"""Exited session ids remembered per sprite, so that kill can answer 410 rather than 404."""
_RATE_WINDOW = 10.0


class Attachment:
    """One consumer of a session's output. Subclasses implement the three sends.

    ``finished`` resolves with the exit code once it has been delivered, or
    with ``None`` when the attachment was detached (client gone, send failed).
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.closed = False
        self.finished: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def send_info(self, info: dict[str, Any]) -> None:
        """Deliver ``session_info`` (sockets only)."""

    async def send_output(self, stream: int, data: bytes) -> None:
        """Deliver output bytes of ``stream`` (1 stdout, 2 stderr)."""
        raise NotImplementedError

    async def send_event(self, event: dict[str, Any]) -> None:
        """Deliver a JSON notification (port events; sockets only)."""

    async def send_exit(self, code: int) -> None:
        """Deliver the exit status."""
        raise NotImplementedError

    def _resolve(self, value: int | None) -> None:
        self.closed = True
        if not self.finished.done():
            self.finished.set_result(value)


class Session:
    """A running command and everything attached to it."""

    def __init__(
        self,
        manager: SessionManager,
        sprite: str,
        proc: ProcessLike,
        *,
        spec: ProcSpec,
        command: str,
        max_run_after_disconnect: float | None,
    ) -> None:
        self.manager = manager
        self.sprite = sprite
        self.proc = proc
        self.id = str(proc.pid)
        self.argv = spec.argv
        self.tty = spec.tty
        self.stdin = spec.stdin
        self.cols = spec.cols if spec.tty else 0
        self.rows = spec.rows if spec.tty else 0
        self.command = command
        self.workdir = sprite_abspath(spec.dir)
        self.created = time.time()
        self.last_activity = self.created
        self.max_run_after_disconnect = max_run_after_disconnect
        self.exit_code: int | None = None
        self.done = asyncio.Event()
        self.attachments: list[Attachment] = []
        self.inline = isinstance(proc, InlineProcess)
        self._scrollback: deque[bytes] = deque()
        self._scrollback_size = 0
        self._scrollback_limit = int(
            manager.state.config.extra.get("exec_scrollback", SCROLLBACK_BYTES)
        )
        self._rate: deque[tuple[float, int]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._ports: set[tuple[int, str, int]] = set()

    # -- descriptions

    def info(self, *, is_owner: bool) -> dict[str, Any]:
        """The ``session_info`` message (Section 3.5)."""
        command = self.argv[0] if self.argv else self.command
        if self.manager.state.quirks.on("session-info-odd-types"):
            # What a client reading only the fields it needs still copes with.
            return {
                "type": "session_info",
                "session_id": int(self.id) if self.id.isdigit() else self.id,
                "command": {"path": command, "argv": list(self.argv)},
                "created": str(int(self.created)),
                "cols": str(self.cols),
                "rows": f"{self.rows} rows",
                "is_owner": 1 if is_owner else 0,
                "tty": "true" if self.tty else "false",
            }
        return {
            "type": "session_info",
            "session_id": self.id,
            "command": command,
            "created": int(self.created),
            "cols": self.cols,
            "rows": self.rows,
            "is_owner": is_owner,
            "tty": self.tty,
        }

    def describe(self) -> dict[str, Any]:
        """The list entry (Section 4.1)."""
        now = time.time()
        while self._rate and self._rate[0][0] < now - _RATE_WINDOW:
            self._rate.popleft()
        return {
            "id": self.id,
            "command": self.command,
            "workdir": self.workdir,
            "created": _rfc3339(self.created),
            "tty": self.tty,
            "bytes_per_second": sum(n for _, n in self._rate) / _RATE_WINDOW,
            "is_active": now - self.last_activity < _RATE_WINDOW,
            "last_activity": _rfc3339(self.last_activity),
        }

    # -- attachments

    async def attach(self, att: Attachment, *, owner: bool) -> bool:
        """Register ``att`` and send it ``session_info`` plus the scrollback.

        False if the session already ended. Later output waits on the
        attachment's lock, so it always follows the scrollback.
        """
        if self.exit_code is not None:
            return False
        # Uncontended, so this does not yield: snapshot and registration are atomic.
        await att.lock.acquire()
        try:
            self.attachments.append(att)
            self._cancel_expiry()
            snapshot = b"" if owner else b"".join(self._scrollback)
            try:
                await att.send_info(self.info(is_owner=owner))
                if snapshot:
                    await att.send_output(STREAM_STDOUT, snapshot)
                for port, address, pid in sorted(self._ports):
                    await att.send_event(_port_event("port_opened", port, address, pid))
            except Exception:
                self.detach(att)
                return False
        finally:
            att.lock.release()
        return True

    def detach(self, att: Attachment) -> None:
        """Forget ``att`` (idempotent); start the disconnect timer if nobody is left."""
        if att in self.attachments:
            self.attachments.remove(att)
        att._resolve(None)
        if not self.attachments and self.exit_code is None and self._pump is not None:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        limit = self.max_run_after_disconnect
        if limit is None or self._expiry is not None:
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(limit, self._expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if not self.attachments and self.exit_code is None:
            self.proc.kill()

    # -- running

    def start(self) -> None:
        """Start moving output; call after the owner attached (so it sees every frame)."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._run())
            if not self.attachments:
                self._arm_expiry()

    async def _deliver(
        self, att: Attachment, send: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        async with att.lock:
            if att.closed:
                return
            try:
                await send(*args)
            except Exception:
                self.detach(att)

    async def _run(self) -> None:
        try:
            while True:
                item = await self.proc.output.get()
                if item is None:
                    break
                stream, data = item
                self._record(data)
                for att in list(self.attachments):
                    await self._deliver(att, att.send_output, stream, data)
            code = await self.proc.wait()
            self.exit_code = code
            self._cancel_expiry()
            self.manager._on_exit(self)
            for att in list(self.attachments):
                await self._deliver(att, att.send_exit, code)
                att._resolve(code)
            self.attachments.clear()
        finally:
            self._cancel_expiry()
            if self.exit_code is None:
                self.exit_code = 137
                self.manager._on_exit(self)
            for att in self.attachments:
                att._resolve(None)
            self.attachments.clear()
            self.done.set()
            self.manager._track(self.proc.terminate())

    def _record(self, data: bytes) -> None:
        now = time.time()
        self.last_activity = now
        # One bucket per second keeps the rate window small however chatty the command is.
        second = float(int(now))
        if self._rate and self._rate[-1][0] == second:
            self._rate[-1] = (second, self._rate[-1][1] + len(data))
        else:
            self._rate.append((second, len(data)))
        self._scrollback.append(data)
        self._scrollback_size += len(data)
        while self._scrollback_size > self._scrollback_limit and self._scrollback:
            excess = self._scrollback_size - self._scrollback_limit
            first = self._scrollback[0]
            if len(first) <= excess:
                self._scrollback.popleft()
                self._scrollback_size -= len(first)
            else:
                self._scrollback[0] = first[excess:]
                self._scrollback_size -= excess

    async def publish_ports(self, current: set[tuple[int, str, int]]) -> None:
        """Send ``port_opened``/``port_closed`` for changes since the last scan."""
        opened = current - self._ports
        closed = self._ports - current
        self._ports = current
        for kind, items in (("port_closed", closed), ("port_opened", opened)):
            for port, address, pid in sorted(items):
                event = _port_event(kind, port, address, pid)
                for att in list(self.attachments):
                    await self._deliver(att, att.send_event, event)

    async def terminate(self) -> None:
        """Kill the command (SIGKILL to its whole group) and wait until the session ended."""
        if self._pump is None:
            self.start()
        if self.exit_code is None:
            self.proc.kill()
        await self.done.wait()


class SessionManager:
    """All sessions of one emulator, by sprite; installed as ``state.sessions``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.closing = asyncio.Event()
        self.sockets: set[Any] = set()
        """Open exec/control WebSockets, closed at shutdown."""
        self._live: dict[str, dict[str, Session]] = {}
        self._exited: dict[str, OrderedDict[str, int]] = {}
        self._cleanups: set[asyncio.Task[Any]] = set()
        self._inline_ids = itertools.count(_inline_base())
        self._poller: asyncio.Task[None] | None = None
        self.sids: deque[int] = deque(maxlen=SIDS_MEMORY)
        """Root PIDs of the latest processes started (tests look for leftovers with it)."""

    # -- creation and lookup

    async def create(self, sprite: str, spec: ProcSpec, max_run: float | None) -> Session:
        """Start a command (not yet pumping output: attach the owner, then ``start``)."""
        proc: ProcessLike
        program = match_inline(spec) if self.state.config.inline_exec else None
        live = self._live.setdefault(sprite, {})
        if program is not None:
            pid = next(self._inline_ids)
            while str(pid) in live:
                pid = next(self._inline_ids)
            proc = InlineProcess(pid, program, stdin=spec.stdin)
            command = " ".join([_which(spec.argv[0]), *spec.argv[1:]])
        else:
            root = self.state.sprite_root(sprite)
            sandbox = use_sandbox(self.state.config.sandbox)
            env = build_env(spec.env, tty=spec.tty, root=root, sandbox=sandbox)
            exe, _ = resolve_executable(root, spec.path, env, sprite_abspath(spec.dir))
            command = " ".join([exe, *spec.argv[1:]])
            isolate = sandbox and network_isolated(self.state, sprite)
            jail = jail_for(self.state) if sandbox else None
            proc = await SpriteProcess.start(
                root, spec, sandbox=sandbox, isolate_network=isolate, jail=jail
            )
            self.sids.append(proc.pid)
        session = Session(
            self, sprite, proc, spec=spec, command=command, max_run_after_disconnect=max_run
        )
        live[session.id] = session
        exited = self._exited.get(sprite)
        if exited is not None:
            exited.pop(session.id, None)
        if not session.inline:
            self._ensure_poller()
        return session

    def get(self, sprite: str, session_id: str) -> Session | None:
        """A live session, or None."""
        return self._live.get(sprite, {}).get(session_id)

    def exited(self, sprite: str, session_id: str) -> int | None:
        """Exit code of a recently exited session, or None if unknown."""
        exited = self._exited.get(sprite)
        return exited.get(session_id) if exited is not None else None

    def list(self, sprite: str) -> list[Session]:
        """Live sessions of a sprite, oldest first."""
        return sorted(self._live.get(sprite, {}).values(), key=lambda s: s.created)

    def _on_exit(self, session: Session) -> None:
        live = self._live.get(session.sprite, {})
        if live.get(session.id) is session:
            del live[session.id]
        exited = self._exited.setdefault(session.sprite, OrderedDict())
        exited[session.id] = session.exit_code if session.exit_code is not None else 255
        while len(exited) > EXITED_MEMORY:
            exited.popitem(last=False)

    def _track(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    # -- ports

    def _ensure_poller(self) -> None:
        interval = float(self.state.config.extra.get("exec_port_poll", PORT_POLL_INTERVAL))
        if (
            interval > 0
            and (self._poller is None or self._poller.done())
            and not self.closing.is_set()
        ):
            self._poller = asyncio.ensure_future(self._poll_ports(interval))

    async def _poll_ports(self, interval: float) -> None:
        while True:
            sessions = [s for live in self._live.values() for s in live.values() if not s.inline]
            if not sessions:
                return
            changed = [(s, ports) for s, ports in _scan_ports(sessions) if ports != s._ports]
            if changed:
                # A program typically prints its port right after listen(): give that
                # output a moment to go out first, then publish what still holds.
                await asyncio.sleep(PORT_SETTLE)
                rescanned = dict(_scan_ports([s for s, _ in changed]))
                for session, ports in rescanned.items():
                    if ports != session._ports and session.exit_code is None:
                        await session.publish_ports(ports)
            await asyncio.sleep(interval)

    # -- SessionRegistry

    async def terminate_all(self, sprite: str) -> None:
        """End every session and process of a sprite (restore, delete, going cold)."""
        sessions = list(self._live.get(sprite, {}).values())
        await asyncio.gather(*(s.terminate() for s in sessions))
        await self._drain_cleanups()

    async def shutdown(self) -> None:
        """Stop everything: sessions, then open sockets (app ``on_shutdown``)."""
        self.closing.set()
        sessions = [s for live in self._live.values() for s in live.values()]
        await asyncio.gather(*(s.terminate() for s in sessions))
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        await self._drain_cleanups()

    async def aclose(self) -> None:
        """End every session of every sprite (emulator shutdown); idempotent."""
        await self.shutdown()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait({self._poller})

    async def _drain_cleanups(self) -> None:
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)


@functools.lru_cache(maxsize=256)
def _which(name: str) -> str:
    """Absolute path of a command for inline sessions' list entries (cached: hot path)."""
    return shutil.which(name, path=DEFAULT_PATH) or name


def _scan_ports(sessions: list[Session]) -> list[tuple[Session, set[tuple[int, str, int]]]]:
    """``(session, {(port, address, pid)})`` for the TCP listeners of each session's processes."""
    listening = listening_sockets()
    table = proc_table()
    return [
        (session, listening_ports([int(session.id)], table=table, listening=listening))
        for session in sessions
    ]


def _port_event(kind: str, port: int, address: str, pid: int) -> dict[str, Any]:
    return {"type": kind, "port": port, "address": address, "pid": pid}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _inline_base() -> int:
    """Inline session ids start above the kernel's PID range, so they never collide."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read()) + 1
    except (OSError, ValueError):
        return 1 << 22
