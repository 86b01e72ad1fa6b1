"""The running → warm → cold clock of sprites (protocol reference 11.5, 13.4).

A sprite is ``running`` while at least one *activity* is held on it: every
sprite-layer request holds one for as long as its handler runs (a WebSocket
handler runs as long as its socket is open), and modules may hold more through
``EmulatorState.activity``. When the last activity ends an idle timer starts:
after ``config.warm_after`` seconds the sprite becomes ``warm``, after
``config.cold_after`` more it becomes ``cold`` and its sessions are ended.
Management calls (``GET /v1/sprites/{name}`` ...) never touch this clock.

A warm sprite's processes are frozen, as a suspended VM's are, and go on
where they were when it wakes: sessions stay listed and keep their ids. The
cgroup freezer does it when the sprite has cgroups (sandboxed, with limits):
every process of the sprite, services included, stops at once. Otherwise the
exec sessions' processes get ``SIGSTOP`` and later ``SIGCONT`` (a process
can see that, and services keep running). The emulator's own helpers (the
sprite's network namespace holder, ``slirp4netns``) run outside the
sprite's cgroups and are never frozen: they hold no state of the sprite.
Frozen processes are thawed before anything ends them (cold, delete,
shutdown): a cgroup-v1-frozen process cannot even die.

Going cold is a stopped VM: every process ends. Sessions are terminated
(detached ones too), services are stopped (not sticky), and with cgroups
whatever else still runs in the sprite's cgroups (a daemon a command left
behind) is killed. Waking a cold sprite boots it: its services start again in
dependency order, except those the user stopped, before the waking request
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import EmulatorState, SpriteRecord


log = logging.getLogger("sprites_async.emulator")

_FREEZE_PASSES = 4


def _sids(proc: Any) -> list[int]:
    """The session ids a sprite process leads (its own and its inner shells')."""
    own = getattr(proc, "_sids", None)
    return list(own()) if callable(own) else [proc.pid]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class Lifecycle:
    """Activity counters and idle timers of every sprite of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._active: dict[str, int] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._cooling: dict[str, asyncio.Task[Any]] = {}
        self._booting: dict[str, asyncio.Task[None]] = {}
        self._frozen: dict[str, list[int]] = {}
        """Frozen sprites → the pids stopped by signal (empty: the cgroup freezer)."""
        self._closed = False

    def active(self, name: str) -> int:
        """How many activities are held on ``name`` right now."""
        return self._active.get(name, 0)

    async def wake(self, name: str) -> bool:
        """Wait as a sleeping sprite would, then hold an activity on it.

        Returns ``False`` (holding nothing) if the sprite vanished meanwhile.
        The caller must ``release`` after a ``True``.
        """
        rec = self._state.sprites.get(name)
        if rec is None:
            return False
        delay = self._state.faults.wake_delay
        if rec.status != "running" and delay > 0:
            await asyncio.sleep(delay)
        cooling = self._cooling.get(name)
        if cooling is not None:
            # Going cold kills the sprite's processes; a request arriving in
            # the middle must not start new ones that the same sweep kills.
            await asyncio.shield(cooling)
        if name not in self._state.sprites:
            return False
        self.acquire(name)
        booting = self._booting.get(name)
        if booting is not None:
            try:
                # A request to a sprite that was cold meets its services up,
                # as after a VM boot; shielded: other wakers wait on it too.
                await asyncio.shield(booting)
            except BaseException:
                self.release(name)
                raise
        return True

    def acquire(self, name: str) -> None:
        """Hold an activity: the sprite is ``running`` until the matching release."""
        self._active[name] = self._active.get(name, 0) + 1
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.thaw(name)
        rec = self._state.sprites.get(name)
        if rec is not None and rec.status != "running":
            was_cold = rec.status == "cold"
            rec.status = "running"
            rec.last_running_at = utcnow()
            self._save(rec)
            if was_cold and not self._closed and name not in self._booting:
                self._booting[name] = self._state.spawn(self._boot(name))

    def release(self, name: str) -> None:
        """Drop an activity; the last one starts the idle timer."""
        if name not in self._active:
            return  # forgotten (deleted) meanwhile, or an unbalanced release
        left = self._active[name] - 1
        if left > 0:
            self._active[name] = left
            return
        del self._active[name]
        rec = self._state.sprites.get(name)
        if rec is None:
            return
        # "Last running" is most useful as the moment it stopped running. Not
        # saved here (hot path); the warm transition or ``flush`` persists it.
        rec.last_running_at = utcnow()
        self._start_timer(name)

    def forget(self, name: str) -> None:
        """Stop tracking a deleted sprite."""
        self.thaw(name)
        self._active.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def flush(self) -> None:
        """Persist records whose last change is only in memory (at shutdown)."""
        self._state.store.save_many(
            rec for rec in self._state.sprites.values() if rec.status != "cold"
        )

    def frozen(self, name: str) -> bool:
        """Whether the sprite's processes are frozen (it is warm)."""
        return name in self._frozen

    def freeze(self, name: str) -> None:
        """Stop the sprite's processes where they are (see the module docstring)."""
        if name in self._frozen or self._closed:
            return
        from ._procs import proc_table, session_members
        from ._sandbox import existing_jail

        jail = existing_jail(self._state)
        if jail is not None and jail.freeze(name):
            self._frozen[name] = []
            return
        sids: set[int] = set()
        # The registry protocol does not list sessions; the real one (``_sessions``) does.
        listing = getattr(self._state.sessions, "list", None)
        for session in listing(name) if callable(listing) else []:
            if getattr(session, "inline", False):
                continue  # answered by the emulator itself: no process
            sids.update(_sids(session.proc))
        for proc in self._state.services.processes(name):
            sids.update(_sids(proc))
        stopped: list[int] = []
        seen: set[int] = set()
        # A process forked between the snapshot and its parent's stop would
        # run on: look again until a pass finds nobody new.
        for _ in range(_FREEZE_PASSES):
            fresh = [i.pid for i in session_members(proc_table(), sids) if i.pid not in seen]
            if not fresh:
                break
            for pid in fresh:
                seen.add(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        self._frozen[name] = stopped

    def thaw(self, name: str) -> None:
        """Let a frozen sprite's processes run again (no-op when not frozen)."""
        stopped = self._frozen.pop(name, None)
        if stopped is None:
            return
        from ._sandbox import existing_jail

        jail = existing_jail(self._state)
        if jail is not None:
            jail.thaw(name)
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Thaw every frozen sprite and freeze none any more (shutdown: processes must end)."""
        self._closed = True
        for name in list(self._frozen):
            self.thaw(name)

    def _start_timer(self, name: str) -> None:
        self._timers[name] = self._state.spawn(self._idle(name))

    async def _idle(self, name: str) -> None:
        config = self._state.config
        await asyncio.sleep(config.warm_after)
        rec = self._state.sprites.get(name)
        if rec is None or self.active(name):
            return
        if rec.status == "running":
            rec.status = "warm"
            rec.last_warming_at = utcnow()
            self._save(rec)
            try:
                self.freeze(name)
            except Exception:
                log.exception("freezing %s failed", name)
        await asyncio.sleep(config.cold_after)
        rec = self._state.sprites.get(name)
        if rec is None or self.active(name):
            return
        this = asyncio.current_task()
        if self._timers.get(name) is this:
            # From here on an acquire must not cancel us half-way through the kill.
            del self._timers[name]
        if this is not None:
            self._cooling[name] = this
        try:
            rec.status = "cold"
            self._save(rec)
            self.thaw(name)
            await self._stop_everything(name)
        finally:
            if self._cooling.get(name) is this:
                del self._cooling[name]

    async def _stop_everything(self, name: str) -> None:
        """End every process of a sprite going cold (sessions, services, strays)."""
        from ._sandbox import existing_jail

        try:
            await self._state.sessions.terminate_all(name)
        except Exception:
            # A background timer has nobody to report to; keep the clock going.
            log.exception("ending the sessions of %s failed", name)
        try:
            await self._state.services.stop_all(name)
        except Exception:
            log.exception("stopping the services of %s failed", name)
        jail = existing_jail(self._state)
        if jail is not None:
            jail.kill(name)

    async def _boot(self, name: str) -> None:
        try:
            cooling = self._cooling.get(name)
            if cooling is not None:
                # Woken (``activity``) while going cold: start after the stop.
                await asyncio.shield(cooling)
            await self._state.services.start_all(name)
        except Exception:
            log.exception("starting the services of %s failed", name)
        finally:
            if self._booting.get(name) is asyncio.current_task():
                del self._booting[name]

    def _save(self, rec: SpriteRecord) -> None:
        if self._state.sprites.get(rec.name) is rec:
            self._state.save_sprite(rec)
