"""Service supervision: definitions, processes, crash restarts and logs (section 8).

One :class:`Supervisor` per emulator (:func:`supervisor_for`) keeps, per
sprite, a :class:`ServiceRuntime` for every defined service. Definitions and
the sticky "stopped by the user" flag live in SQLite (``emu_services``), so
they survive an emulator restart; the services start again in dependency
order when the sprite (cold after a restart) is first woken. Processes are started with the
exec module's runner (:class:`~._procs.SpriteProcess`), so services run in the
same sandbox as exec commands.

Choices where the protocol reference and the 2025 server source leave room:

* A process that exits 0 is ``stopped``; any other exit (including a death
  by signal, reported as ``128 + N``) is a crash: ``failed`` with ``error``
  ``exited with code N`` and ``next_restart_at`` set, then restarted after an
  exponential backoff (``config.extra["services_restart_backoff"]``, doubled
  per consecutive crash up to ``services_restart_backoff_max``; a run longer
  than ``services_stable_after`` seconds resets the doubling).
  ``restart_count`` counts crash restarts and never goes down.
* Starting a service first starts each service it ``needs`` that is not
  running (depth first, so in dependency order). Starting a running service
  is a no-op, as in the 2025 server.
* A failure to start (missing executable or directory) is reported and not
  retried, except when it happens during a crash restart, which keeps backing
  off.
* Output is appended raw to ``/.sprite/logs/services/<name>.log`` (stdout and
  stderr combined, truncated on start once over 1 MiB) and kept in memory as
  typed lines for the logs endpoint; lines already in the file when the
  runtime is created are replayed as ``stdout``.
* Services do not keep a sprite awake. Going cold stops them (not sticky)
  and the wake that follows starts them again (``_lifecycle``), as a VM's
  boot would; so does the first wake after an emulator restart, where every
  sprite comes back cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ._framing import SPRITE_HOME
from ._paths import FsError, resolve
from ._policy import network_isolated
from ._procs import ProcSpec, SpriteProcess, StartError, build_env, use_sandbox
from ._sandbox import Jail, jail_for
from ._state import EmulatorState
from ._wire import in_thread, rfc3339_nano

log = logging.getLogger(__name__)

LOG_DIR = "/.sprite/logs/services"
"""Where a sprite sees its service logs."""
DEFAULT_STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL when a stop names no ``timeout``."""
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
SIGNAL_WAIT = 10.0
"""Seconds a TERM or KILL sent over ``/services/signal`` is given to take effect."""
LOG_MEMORY_LINES = 10_000
LOG_FILE_MAX = 1 << 20
LOG_REPLAY_BYTES = 256 * 1024
MAX_LINE = 64 * 1024
SUBSCRIBER_DEPTH = 8192
_CLOSE_GRACE = 5.0

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

Event = dict[str, Any]
"""One NDJSON service event (``type``, ``timestamp`` in Unix milliseconds, ...)."""


def now_ms() -> int:
    """The current time in Unix milliseconds, as service events carry it."""
    return time.time_ns() // 1_000_000


def event(kind: str, **fields: Any) -> Event:
    """A service event stamped now."""
    return {"type": kind, **fields, "timestamp": now_ms()}


def log_files(name: str) -> dict[str, str]:
    """The ``log_files`` object of a ``complete`` event (one combined file)."""
    path = f"{LOG_DIR}/{name}.log"
    return {"stdout": path, "stderr": path, "combined": path}


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a service (it becomes a file name)."""
    return _NAME_RE.fullmatch(name) is not None


class ServiceFailure(Exception):
    """An operation refused; ``status`` is the HTTP status to answer with."""

    status = 500


class NotFound(ServiceFailure):
    """No such service (404)."""

    status = 404


class Invalid(ServiceFailure):
    """A bad definition or request (400)."""

    status = 400


class Conflict(ServiceFailure):
    """The operation conflicts with the service's state or another service (409)."""

    status = 409


class StartFailed(ServiceFailure):
    """The process could not be started (reported in the stream, not as a status)."""


@dataclass
class ServiceDef:
    """A service definition as stored and as returned by the API."""

    name: str
    cmd: str
    args: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    http_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    dir: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The definition's JSON fields (optional ones only when set)."""
        out: dict[str, Any] = {
            "name": self.name,
            "cmd": self.cmd,
            "args": list(self.args),
            "needs": list(self.needs),
        }
        if self.http_port is not None:
            out["http_port"] = self.http_port
        if self.env:
            out["env"] = dict(self.env)
        if self.dir:
            out["dir"] = self.dir
        return out

    @classmethod
    def from_stored(cls, name: str, raw: str) -> ServiceDef:
        """Rebuild a definition from its stored JSON."""
        doc = msgspec.json.decode(raw)
        return cls(
            name=name,
            cmd=doc["cmd"],
            args=list(doc.get("args") or []),
            needs=list(doc.get("needs") or []),
            http_port=doc.get("http_port"),
            env=dict(doc.get("env") or {}),
            dir=doc.get("dir"),
        )


class Subscription:
    """A bounded queue of a runtime's events for one reader; ``None`` ends it.

    A reader that falls more than ``SUBSCRIBER_DEPTH`` events behind is cut
    off (it gets an ``error`` event then the end) rather than letting a slow
    client hold the service's output in memory.
    """

    def __init__(self) -> None:
        # Unbounded: ``put`` enforces the depth, and must never raise QueueFull.
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.closed = False

    def put(self, ev: Event) -> None:
        """Queue an event (never blocks)."""
        if self.closed:
            return
        if self.queue.qsize() >= SUBSCRIBER_DEPTH:
            self.queue.put_nowait(event("error", data="log reader fell behind; events dropped"))
            self.close()
            return
        self.queue.put_nowait(ev)

    def close(self) -> None:
        """End the subscription after what is queued."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class _Lines:
    """Splits one output stream into lines (``\\n``, a trailing ``\\r`` dropped)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes (over-long ones cut at ``MAX_LINE`` bytes)."""
        self._buf += data
        out: list[str] = []
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i < 0:
                break
            out.append(_text(self._buf[start:i]))
            start = i + 1
        del self._buf[:start]
        while len(self._buf) >= MAX_LINE:
            out.append(_text(self._buf[:MAX_LINE]))
            del self._buf[:MAX_LINE]
        return out

    def flush(self) -> list[str]:
        """The unterminated rest, at the end of the output."""
        if not self._buf:
            return []
        out = [_text(self._buf)]
        self._buf.clear()
        return out


def _text(raw: bytes | bytearray) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return bytes(raw).decode("utf-8", errors="replace")


class ServiceRuntime:
    """The live side of one service: status, process, restart timer, log lines."""

    def __init__(self, sprite: str, definition: ServiceDef, *, sticky: bool) -> None:
        self.sprite = sprite
        self.definition = definition
        self.sticky = sticky
        """Stopped by the user: no crash restart, no start at boot."""
        self.status = "stopped"
        self.pid: int | None = None
        self.started_ns: int | None = None
        self.error: str | None = None
        self.restart_count = 0
        self.next_restart_ns: int | None = None
        self.last_exit: int | None = None
        self.proc: SpriteProcess | None = None
        self.done: asyncio.Future[int] | None = None
        """Resolved with the exit code once the current process is gone and accounted for."""
        self.lock = asyncio.Lock()
        self.deleted = False
        self.stop_requested = False
        self.crash_streak = 0
        self.spawned_at = 0.0
        self.restart_token = 0
        self.restart_timer: asyncio.Task[None] | None = None
        self.pump: asyncio.Task[None] | None = None
        """The task carrying the current (or last) process's output and exit."""
        self.lines: deque[Event] = deque(maxlen=LOG_MEMORY_LINES)
        self.subscribers: set[Subscription] = set()

    @property
    def name(self) -> str:
        """The service's name."""
        return self.definition.name

    @property
    def stoppable(self) -> bool:
        """Whether a stop has anything to do: a process or a pending restart."""
        return self.proc is not None or self.next_restart_ns is not None

    def state_wire(self) -> dict[str, Any]:
        """The ``state`` object of ``ServiceWithState``."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.pid is not None:
            out["pid"] = self.pid
        if self.started_ns is not None:
            out["started_at"] = rfc3339_nano(self.started_ns)
        if self.error:
            out["error"] = self.error
        out["restart_count"] = self.restart_count
        if self.next_restart_ns is not None:
            out["next_restart_at"] = rfc3339_nano(self.next_restart_ns)
        return out

    def to_wire(self) -> dict[str, Any]:
        """The full ``ServiceWithState`` object."""
        return {**self.definition.to_wire(), "state": self.state_wire()}

    def publish(self, ev: Event) -> None:
        """Record an output line and hand any event to every subscriber."""
        if ev["type"] in ("stdout", "stderr"):
            self.lines.append(ev)
        for sub in list(self.subscribers):
            sub.put(ev)
            if sub.closed:
                self.subscribers.discard(sub)

    def subscribe(self) -> Subscription:
        """Receive every event from now on (call :meth:`unsubscribe` when done)."""
        sub = Subscription()
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop receiving events."""
        self.subscribers.discard(sub)

    def close_subscribers(self) -> None:
        """End every subscription (service deleted, emulator closing)."""
        for sub in self.subscribers:
            sub.close()
        self.subscribers.clear()

    def cancel_restart(self) -> None:
        """Forget a scheduled crash restart (a restart already under way sees the token)."""
        self.restart_token += 1
        self.next_restart_ns = None
        if self.restart_timer is not None:
            self.restart_timer.cancel()
            self.restart_timer = None


_supervisors: weakref.WeakKeyDictionary[EmulatorState, Supervisor] = weakref.WeakKeyDictionary()


def supervisor_for(state: EmulatorState) -> Supervisor:
    """The service supervisor of an emulator (created on first use)."""
    sup = _supervisors.get(state)
    if sup is None:
        # The lifecycle reaches it through the state: importing this module
        # from there would close an import cycle.
        sup = _supervisors[state] = state.services = Supervisor(state)
    return sup


class Supervisor:
    """Every service of every sprite of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        # Weak: the registry maps the state to this object, which must not keep it alive.
        self._state_ref = weakref.ref(state)
        self._db = state.db
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emu_services ("
            " sprite TEXT NOT NULL, name TEXT NOT NULL, sprite_id TEXT NOT NULL,"
            " definition TEXT NOT NULL, stopped INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (sprite, name))"
        )
        self._sprites: dict[str, dict[str, ServiceRuntime]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    @property
    def _state(self) -> EmulatorState:
        state = self._state_ref()
        if state is None:
            raise RuntimeError("the emulator state is gone")
        return state

    # -- configuration

    def _extra(self, key: str, default: float) -> float:
        return float(self._state.config.extra.get(key, default))

    # -- definitions

    def services(self, sprite: str) -> dict[str, ServiceRuntime]:
        """The runtimes of a sprite's services by name (loaded from SQLite once)."""
        runtimes = self._sprites.get(sprite)
        if runtimes is not None:
            return runtimes
        runtimes = self._sprites[sprite] = {}
        sprite_id = self._sprite_id(sprite)
        rows = self._db.execute(
            "SELECT name, sprite_id, definition, stopped FROM emu_services"
            " WHERE sprite = ? ORDER BY name",
            (sprite,),
        ).fetchall()
        for name, row_id, raw, stopped in rows:
            if row_id != sprite_id:
                # Left over from a deleted sprite that had the same name.
                self._db.execute(
                    "DELETE FROM emu_services WHERE sprite = ? AND name = ?", (sprite, name)
                )
                continue
            rt = ServiceRuntime(sprite, ServiceDef.from_stored(name, raw), sticky=bool(stopped))
            self._replay_log_file(rt)
            runtimes[name] = rt
        return runtimes

    def process_roots(self, sprite: str) -> list[int]:
        """Host PIDs of the sprite's running service processes.

        Only runtimes already loaded are looked at: a sprite whose services
        were never touched since the emulator started has none running.
        """
        runtimes = self._sprites.get(sprite, {})
        return [rt.proc.pid for rt in runtimes.values() if rt.proc is not None]

    def processes(self, sprite: str) -> list[SpriteProcess]:
        """The sprite's running service processes (loaded runtimes only, as above)."""
        runtimes = self._sprites.get(sprite, {})
        return [rt.proc for rt in runtimes.values() if rt.proc is not None]

    def get(self, sprite: str, name: str) -> ServiceRuntime:
        """One runtime, or :class:`NotFound`."""
        rt = self.services(sprite).get(name)
        if rt is None:
            raise NotFound(f"service not found: {name}")
        return rt

    def _sprite_id(self, sprite: str) -> str:
        rec = self._state.sprites.get(sprite)
        return rec.id if rec is not None else ""

    def _save(self, rt: ServiceRuntime) -> None:
        d = rt.definition
        stored = {
            "cmd": d.cmd,
            "args": d.args,
            "needs": d.needs,
            "http_port": d.http_port,
            "env": d.env,
            "dir": d.dir,
        }
        self._db.execute(
            "INSERT INTO emu_services (sprite, name, sprite_id, definition, stopped)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sprite, name) DO UPDATE SET"
            " sprite_id = excluded.sprite_id, definition = excluded.definition,"
            " stopped = excluded.stopped",
            (
                rt.sprite,
                d.name,
                self._sprite_id(rt.sprite),
                msgspec.json.encode(stored).decode(),
                int(rt.sticky),
            ),
        )

    def _set_sticky(self, rt: ServiceRuntime, sticky: bool) -> None:
        if rt.sticky != sticky and not rt.deleted:
            rt.sticky = sticky
            self._save(rt)

    def validate(self, sprite: str, definition: ServiceDef) -> None:
        """Check ``needs`` (400) and the single HTTP port (409) against the other services."""
        others = {n: rt.definition for n, rt in self.services(sprite).items()}
        others[definition.name] = definition
        for need in definition.needs:
            if need == definition.name:
                raise Invalid("service cannot depend on itself")
            if need not in others:
                raise Invalid(f"dependency not found: {need}")
        if _has_cycle(definition.name, others):
            raise Invalid("circular dependency detected")
        if definition.http_port is not None:
            for other in others.values():
                if other.name != definition.name and other.http_port is not None:
                    raise Conflict("another service already has an HTTP port configured")

    async def put(self, sprite: str, definition: ServiceDef) -> ServiceRuntime:
        """Create or replace a definition (validated); a running old version is stopped."""
        self.validate(sprite, definition)
        runtimes = self.services(sprite)
        rt = runtimes.get(definition.name)
        if rt is None:
            rt = ServiceRuntime(sprite, definition, sticky=False)
            self._replay_log_file(rt)
            runtimes[definition.name] = rt
            self._save(rt)
            return rt
        async with rt.lock:
            rt.cancel_restart()
            if rt.proc is not None:
                await self._stop_locked(rt, DEFAULT_STOP_TIMEOUT)
            rt.definition = definition
            rt.sticky = False
            rt.error = None
            self._save(rt)
        return rt

    # -- starting

    async def start(self, rt: ServiceRuntime) -> None:
        """Start a service (and first what it needs); no-op when already running.

        Raises :class:`StartFailed` when a process cannot be started.
        """
        await self._start(rt, set())

    async def _start(self, rt: ServiceRuntime, chain: set[str]) -> None:
        if self.closing:
            raise StartFailed("the emulator is shutting down")
        if rt.deleted:
            raise StartFailed(f"service not found: {rt.name}")
        chain = chain | {rt.name}
        runtimes = self.services(rt.sprite)
        for need in rt.definition.needs:
            dep = runtimes.get(need)
            if dep is None:
                raise StartFailed(f"dependency not found: {need}")
            if need in chain:
                raise StartFailed("circular dependency detected")
            if dep.proc is None:
                try:
                    await self._start(dep, chain)
                except StartFailed as exc:
                    raise StartFailed(f"failed to start dependency {need}: {exc}") from exc
        async with rt.lock:
            self._set_sticky(rt, False)
            if rt.proc is not None:
                return
            rt.cancel_restart()
            await self._spawn(rt)

    async def _spawn(self, rt: ServiceRuntime) -> None:
        """Start the process of ``rt`` (lock held); :class:`StartFailed` if impossible."""
        state = self._state
        sprite = rt.sprite
        d = rt.definition
        rt.status = "starting"
        rt.error = None
        rt.stop_requested = False
        state.materialize(sprite)
        root = state.sprite_root(sprite)
        sandbox = use_sandbox(state.config.sandbox)
        env = build_env(None, tty=False, root=root, sandbox=sandbox)
        env.update(d.env)
        spec = ProcSpec(
            argv=[d.cmd, *d.args],
            path=d.cmd,
            env=[f"{k}={v}" for k, v in env.items()],
            dir=d.dir or SPRITE_HOME,
        )
        fd: int | None = None
        try:
            fd = await in_thread(_open_log, root, d.name, discard=_close_fd)
            isolate = sandbox and network_isolated(state, sprite)
            jail = jail_for(state) if sandbox else None
            proc = await _start_process(root, spec, sandbox, isolate, jail)
        except StartError as exc:
            _close_fd(fd)
            rt.status = "failed"
            rt.error = str(exc)
            rt.pid = None
            rt.publish(event("error", data=f"Failed to start service: {exc}"))
            raise StartFailed(str(exc)) from exc
        except BaseException:
            # Cancelled (a client gone, shutdown): nothing was left running.
            _close_fd(fd)
            rt.status = "stopped"
            raise
        rt.proc = proc
        rt.pid = proc.pid
        rt.started_ns = time.time_ns()
        rt.spawned_at = time.monotonic()
        rt.status = "running"
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        rt.done = done
        rt.pump = self.track(self._pump(rt, proc, fd, done))
        if self.closing:
            proc.kill()

    async def _pump(
        self, rt: ServiceRuntime, proc: SpriteProcess, fd: int | None, done: asyncio.Future[int]
    ) -> None:
        """Carry one process's output to the log and subscribers, then account for its exit."""
        splitters = {1: _Lines(), 2: _Lines()}
        kinds = {1: "stdout", 2: "stderr"}
        code = 255
        try:
            while True:
                item = await proc.output.get()
                if item is None:
                    break
                stream, data = item
                if fd is not None:
                    try:
                        os.write(fd, data)
                    except OSError as exc:
                        log.warning("service log of %s stopped: %s", rt.name, exc)
                        os.close(fd)
                        fd = None
                for line in splitters[stream].feed(data):
                    rt.publish(event(kinds[stream], data=line))
            for stream, splitter in splitters.items():
                for line in splitter.flush():
                    rt.publish(event(kinds[stream], data=line))
            code = await proc.wait()
        finally:
            if fd is not None:
                os.close(fd)
            # Kills what the service left in its session and releases the pipes.
            await asyncio.shield(proc.terminate())
            self._exited(rt, proc, code)
            if not done.done():
                done.set_result(code)

    def _exited(self, rt: ServiceRuntime, proc: SpriteProcess, code: int) -> None:
        if rt.proc is not proc:
            return
        rt.proc = None
        rt.pid = None
        rt.last_exit = code
        rt.publish(event("exit", exit_code=code))
        if rt.stop_requested or rt.deleted or self.closing:
            rt.status = "stopped"
            return
        if code == 0:
            rt.status = "stopped"
            rt.error = None
            return
        rt.status = "failed"
        rt.error = f"exited with code {code}" + self._port_in_use(rt)
        if not rt.sticky:
            self._schedule_restart(rt)

    def _port_in_use(self, rt: ServiceRuntime) -> str:
        """``": port N is already in use ..."`` when the last run's log says so, else ``""``."""
        since = (rt.started_ns or 0) // 1_000_000
        tail = [
            str(ev.get("data", ""))
            for ev in list(rt.lines)[-20:]
            if ev.get("type") in ("stdout", "stderr") and ev.get("timestamp", 0) >= since
        ]
        if not any(
            "EADDRINUSE" in line or "address already in use" in line.lower() for line in tail
        ):
            return ""
        port = rt.definition.http_port
        reason = f": port {port} is already in use" if port else ": its port is already in use"
        state = self._state
        if not (use_sandbox(state.config.sandbox) and jail_for(state).own_networks):
            reason += " (sprites share the host's network here, so their ports collide)"
        return reason

    # -- crash restarts

    def _schedule_restart(self, rt: ServiceRuntime) -> None:
        if time.monotonic() - rt.spawned_at >= self._extra("services_stable_after", STABLE_AFTER):
            rt.crash_streak = 0
        base = self._extra("services_restart_backoff", RESTART_BACKOFF)
        ceiling = self._extra("services_restart_backoff_max", RESTART_BACKOFF_MAX)
        delay = min(base * (2 ** min(rt.crash_streak, 30)), ceiling)
        rt.crash_streak += 1
        rt.cancel_restart()
        rt.next_restart_ns = time.time_ns() + int(delay * 1e9)
        rt.restart_timer = self.track(self._restart_later(rt, delay, rt.restart_token))

    async def _restart_later(self, rt: ServiceRuntime, delay: float, token: int) -> None:
        await asyncio.sleep(delay)
        if rt.restart_token != token:
            return
        # From here a stop no longer cancels this task; it bumps the token instead.
        rt.restart_timer = None
        async with rt.lock:
            if rt.restart_token != token or rt.sticky or rt.deleted or self.closing:
                return
            if rt.proc is not None:
                return
            rt.next_restart_ns = None
            rt.restart_count += 1
            try:
                await self._spawn(rt)
            except StartFailed:
                # Stops and deletions wait for the lock we hold; only shutdown can intervene.
                if not self._is_closing():
                    self._schedule_restart(rt)

    # -- stopping, signals, deletion

    async def stop(self, rt: ServiceRuntime, timeout: float) -> int | None:
        """Stop for good (sticky): SIGTERM, SIGKILL after ``timeout``; the exit code.

        A service that is only waiting for a crash restart is stopped without
        a process to signal (its last exit code is returned). Raises
        :class:`Conflict` when there is nothing to stop.
        """
        async with rt.lock:
            self._set_sticky(rt, True)
            if rt.proc is None:
                pending = rt.next_restart_ns is not None
                rt.cancel_restart()
                if not pending:
                    raise Conflict(f"service not running: {rt.name}")
                rt.status = "stopped"
                return rt.last_exit
            rt.cancel_restart()
            return await self._stop_locked(rt, timeout)

    async def _stop_locked(self, rt: ServiceRuntime, timeout: float) -> int:
        proc = rt.proc
        done = rt.done
        assert proc is not None
        assert done is not None
        rt.stop_requested = True
        rt.status = "stopping"
        if timeout > 0:
            await proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(asyncio.shield(done), timeout)
            except asyncio.TimeoutError:
                pass
        proc.kill()
        return await asyncio.shield(done)

    async def signal(self, rt: ServiceRuntime, sig: signal.Signals) -> None:
        """Send ``sig`` to the service's process group; wait a little for TERM/KILL."""
        proc, done = rt.proc, rt.done
        if proc is None or done is None or not await proc.send_signal(sig):
            raise Conflict(f"service not running: {rt.name}")
        if sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), SIGNAL_WAIT)

    async def delete(self, rt: ServiceRuntime) -> None:
        """Stop and forget a service (its log file stays); 409 if another needs it."""
        runtimes = self.services(rt.sprite)
        for other in runtimes.values():
            if other is not rt and rt.name in other.definition.needs:
                raise Conflict(f"cannot delete service {rt.name}: service {other.name} needs it")
        async with rt.lock:
            if rt.deleted:
                raise NotFound(f"service not found: {rt.name}")
            rt.cancel_restart()
            if rt.proc is not None:
                await self._stop_locked(rt, DEFAULT_STOP_TIMEOUT)
            rt.deleted = True
            if runtimes.get(rt.name) is rt:
                del runtimes[rt.name]
            self._db.execute(
                "DELETE FROM emu_services WHERE sprite = ? AND name = ?", (rt.sprite, rt.name)
            )
            rt.close_subscribers()

    # -- whole sprites

    async def start_all(self, sprite: str) -> None:
        """Start every service not stopped by the user, in dependency order (boot, restore)."""
        runtimes = self.services(sprite)
        for name in start_order({n: rt.definition for n, rt in runtimes.items()}):
            rt = runtimes.get(name)
            if rt is None or rt.sticky or rt.proc is not None:
                continue
            try:
                await self.start(rt)
            except StartFailed as exc:
                log.warning("service %s of sprite %s did not start: %s", name, sprite, exc)

    async def stop_all(self, sprite: str, *, forget: bool = False) -> None:
        """Kill every service process of a sprite now (restore; ``forget`` for deletion).

        Not sticky: :meth:`start_all` brings them back. With ``forget`` the
        definitions are dropped too.
        """
        runtimes = self._sprites.get(sprite)
        if runtimes is None:
            if forget:
                self._db.execute("DELETE FROM emu_services WHERE sprite = ?", (sprite,))
            return
        rts = list(runtimes.values())
        for rt in rts:
            rt.cancel_restart()
            rt.stop_requested = True
            if rt.proc is not None:
                rt.proc.kill()
        for rt in rts:
            # Waits out an operation in progress (a start would otherwise race the kill).
            async with rt.lock:
                rt.cancel_restart()
                if rt.proc is not None:
                    await self._stop_locked(rt, 0)
                rt.status = "stopped"
                if forget:
                    rt.deleted = True
                    rt.close_subscribers()
        if forget:
            self._sprites.pop(sprite, None)
            self._db.execute("DELETE FROM emu_services WHERE sprite = ?", (sprite,))

    async def aclose(self) -> None:
        """Kill every service process and end every task and stream (idempotent)."""
        self.closing = True
        runtimes = [rt for rts in self._sprites.values() for rt in rts.values()]
        for rt in runtimes:
            rt.cancel_restart()
            rt.close_subscribers()
        deadline = time.monotonic() + _CLOSE_GRACE
        while self._tasks:
            for rt in runtimes:
                if rt.proc is not None:
                    rt.proc.kill()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                break
            await asyncio.wait(set(self._tasks), timeout=min(0.5, remaining))

    # -- helpers

    def _is_closing(self) -> bool:
        # A method, not the attribute: mypy would keep an earlier narrowing across awaits.
        return self.closing

    def track(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task that :meth:`aclose` waits for."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _replay_log_file(self, rt: ServiceRuntime) -> None:
        """Seed the in-memory lines from a log file that already exists (as ``stdout``)."""
        try:
            target = resolve(self._state.sprite_root(rt.sprite), f"{LOG_DIR}/{rt.name}.log")
            fd = os.open(target.host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FsError, OSError):
            return
        try:
            st = os.fstat(fd)
            offset = max(0, st.st_size - LOG_REPLAY_BYTES)
            data = os.pread(fd, LOG_REPLAY_BYTES, offset)
        except OSError:
            return
        finally:
            os.close(fd)
        if offset:
            data = data[data.find(b"\n") + 1 :]
        stamp = int(st.st_mtime * 1000)
        lines = _Lines()
        for line in [*lines.feed(data), *lines.flush()]:
            rt.lines.append({"type": "stdout", "data": line, "timestamp": stamp})


def _has_cycle(start: str, defs: dict[str, ServiceDef]) -> bool:
    """Whether following ``needs`` from ``start`` comes back to a service on the path."""
    on_path: set[str] = set()
    seen: set[str] = set()

    def visit(name: str) -> bool:
        if name in on_path:
            return True
        if name in seen:
            return False
        seen.add(name)
        on_path.add(name)
        d = defs.get(name)
        if d is not None and any(visit(n) for n in d.needs):
            return True
        on_path.discard(name)
        return False

    return visit(start)


def start_order(defs: dict[str, ServiceDef]) -> list[str]:
    """Service names with every service after what it needs (ties by name)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: frozenset[str]) -> None:
        if name in seen or name in path or name not in defs:
            return
        for need in defs[name].needs:
            visit(need, path | {name})
        seen.add(name)
        order.append(name)

    for name in sorted(defs):
        visit(name, frozenset())
    return order


def _open_log(root: Path, name: str) -> int | None:
    """Open (create, append) a service's log file inside the sprite; None if impossible."""
    try:
        target = resolve(root, f"{LOG_DIR}/{name}.log", create_parents=True)
        fd = os.open(
            target.host,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
        )
    except (FsError, OSError) as exc:
        log.warning("cannot open the log of service %s: %s", name, exc)
        return None
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_size > LOG_FILE_MAX:
            os.ftruncate(fd, 0)
    return fd


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


async def _start_process(
    root: Path, spec: ProcSpec, sandbox: bool, isolate_network: bool, jail: Jail | None
) -> SpriteProcess:
    """``SpriteProcess.start`` that never leaves a process behind when cancelled."""
    task = asyncio.ensure_future(
        SpriteProcess.start(root, spec, sandbox=sandbox, isolate_network=isolate_network, jail=jail)
    )
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is None:
            await task.result().terminate()
        raise


def parse_names(values: Any) -> list[str]:
    """Strings from a JSON array, or ``ValueError``."""
    if not isinstance(values, list):
        raise ValueError("expected an array")
    out = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError("expected strings")
        out.append(v)
    return out
