"""The running → warm → cold clock of sprites (protocol reference 11.5, 13.4).

A sprite is ``running`` while at least one *activity* is held on it: every
sprite-layer request holds one for as long as its handler runs (a WebSocket
handler runs as long as its socket is open), and modules may hold more through
``EmulatorState.activity``. When the last activity ends an idle timer starts:
after ``config.warm_after`` seconds the sprite becomes ``warm``, after
``config.cold_after`` more it becomes ``cold`` and its sessions are ended.
Management calls (``GET /v1/sprites/{name}`` ...) never touch this clock.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import EmulatorState, SpriteRecord


log = logging.getLogger("sprites_async.emulator")


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
        return True

    def acquire(self, name: str) -> None:
        """Hold an activity: the sprite is ``running`` until the matching release."""
        self._active[name] = self._active.get(name, 0) + 1
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        rec = self._state.sprites.get(name)
        if rec is not None and rec.status != "running":
            rec.status = "running"
            rec.last_running_at = utcnow()
            self._save(rec)

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
        self._active.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def flush(self) -> None:
        """Persist records whose last change is only in memory (at shutdown)."""
        self._state.store.save_many(
            rec for rec in self._state.sprites.values() if rec.status != "cold"
        )

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
            try:
                await self._state.sessions.terminate_all(name)
            except Exception:
                # A background timer has nobody to report to; keep the clock going.
                log.exception("ending the sessions of %s failed", name)
        finally:
            if self._cooling.get(name) is this:
                del self._cooling[name]

    def _save(self, rec: SpriteRecord) -> None:
        if self._state.sprites.get(rec.name) is rec:
            self._state.save_sprite(rec)
