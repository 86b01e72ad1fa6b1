"""Service supervision: processes, crash restarts, stops and signals (section 8).

One :class:`Supervisor` per emulator (:func:`supervisor_for`) runs the
services whose records (:class:`~._service_records.ServiceRecords`: one
:class:`ServiceRuntime` per defined service, definitions and the sticky
"stopped by the user" flag in SQLite) it keeps; the services start again in
dependency order when the sprite (cold after a restart) is first woken.
Processes are started with the exec module's runner
(:class:`~._procs.SpriteProcess`), so services run in the same sandbox as
exec commands.

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
* Output goes to the service's log file and to its subscribers
  (``_service_logs``).
* Services do not keep a sprite awake. Going cold stops them (not sticky)
  and the wake that follows starts them again (``_lifecycle``), as a VM's
  boot would; so does the first wake after an emulator restart, where every
  sprite comes back cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import weakref
from pathlib import Path
from typing import Any

from ._framing import SPRITE_HOME
from ._policy import network_isolated
from ._procs import ProcSpec, SpriteProcess, StartError, build_env, use_sandbox
from ._sandbox import Jail, jail_for
from ._service_logs import close_fd, copy_output, open_log, says_port_in_use
from ._service_model import (
    Conflict,
    Event,
    NotFound,
    ServiceDef,
    ServiceFailure,
    ServiceRuntime,
    StartFailed,
    Subscription,
    event,
    log_files,
    parse_names,
    start_order,
    valid_name,
)
from ._service_records import ServiceRecords
from ._state import EmulatorState
from ._wire import in_thread

__all__ = [  # the service model is re-exported: the HTTP handlers (_services) take it from here
    "DEFAULT_STOP_TIMEOUT",
    "Event",
    "ServiceDef",
    "ServiceFailure",
    "ServiceRuntime",
    "StartFailed",
    "Subscription",
    "Supervisor",
    "event",
    "log_files",
    "parse_names",
    "supervisor_for",
    "valid_name",
]

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL when a stop names no ``timeout``."""
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
SIGNAL_WAIT = 10.0
"""Seconds a TERM or KILL sent over ``/services/signal`` is given to take effect."""
_CLOSE_GRACE = 5.0


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
        self.records = ServiceRecords(state)
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

    # -- definitions (kept by the records)

    def services(self, sprite: str) -> dict[str, ServiceRuntime]:
        """The runtimes of a sprite's services by name (loaded from SQLite once)."""
        return self.records.services(sprite)

    def process_roots(self, sprite: str) -> list[int]:
        """Host PIDs of the sprite's running service processes (loaded runtimes only)."""
        return self.records.process_roots(sprite)

    def processes(self, sprite: str) -> list[SpriteProcess]:
        """The sprite's running service processes (loaded runtimes only)."""
        return self.records.processes(sprite)

    def get(self, sprite: str, name: str) -> ServiceRuntime:
        """One runtime, or :class:`NotFound`."""
        return self.records.get(sprite, name)

    def validate(self, sprite: str, definition: ServiceDef) -> None:
        """Check ``needs`` (400) and the single HTTP port (409) against the other services."""
        self.records.validate(sprite, definition)

    async def put(self, sprite: str, definition: ServiceDef) -> ServiceRuntime:
        """Create or replace a definition (validated); a running old version is stopped."""
        self.validate(sprite, definition)
        rt = self.services(sprite).get(definition.name)
        if rt is None:
            return self.records.add(sprite, definition)
        async with rt.lock:
            rt.cancel_restart()
            if rt.proc is not None:
                await self._stop_locked(rt, DEFAULT_STOP_TIMEOUT)
            rt.definition = definition
            rt.sticky = False
            rt.error = None
            self.records.save(rt)
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
            self.records.set_sticky(rt, False)
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
            fd = await in_thread(open_log, root, d.name, discard=close_fd)
            isolate = sandbox and network_isolated(state, sprite)
            jail = jail_for(state) if sandbox else None
            proc = await _start_process(root, spec, sandbox, isolate, jail)
        except StartError as exc:
            close_fd(fd)
            rt.status = "failed"
            rt.error = str(exc)
            rt.pid = None
            rt.publish(event("error", data=f"Failed to start service: {exc}"))
            raise StartFailed(str(exc)) from exc
        except BaseException:
            # Cancelled (a client gone, shutdown): nothing was left running.
            close_fd(fd)
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
        """Carry one process's output (to the log and subscribers), then account for its exit."""
        code = 255
        try:
            await copy_output(rt, proc, fd)
            code = await proc.wait()
        finally:
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
        if not says_port_in_use(rt):
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
            self.records.set_sticky(rt, True)
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
            self.records.remove(rt)
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
        runtimes = self.records.loaded(sprite)
        if runtimes is None:
            if forget:
                self.records.forget_sprite(sprite)
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
            self.records.forget_sprite(sprite)

    async def aclose(self) -> None:
        """Kill every service process and end every task and stream (idempotent)."""
        self.closing = True
        runtimes = self.records.all_loaded()
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
