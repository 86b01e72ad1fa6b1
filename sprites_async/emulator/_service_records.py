"""Services as records: definitions and the sticky flag in SQLite, runtimes in memory.

Definitions and the "stopped by the user" flag live in the ``emu_services``
table, so they survive an emulator restart. A sprite's rows are loaded into
:class:`~._service_model.ServiceRuntime` objects on first use; rows left by a
deleted sprite of the same name are dropped then. What runs the processes is
the supervisor (``_supervisor``).
"""

from __future__ import annotations

import weakref

import msgspec

from ._procs import SpriteProcess
from ._service_logs import replay_log_file
from ._service_model import Conflict, Invalid, NotFound, ServiceDef, ServiceRuntime, has_cycle
from ._state import EmulatorState


class ServiceRecords:
    """Every defined service of every sprite of one emulator, loaded per sprite on demand."""

    def __init__(self, state: EmulatorState) -> None:
        # Weak: the supervisor holding this object is kept in a registry keyed by the state.
        self._state_ref = weakref.ref(state)
        self._db = state.db
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emu_services ("
            " sprite TEXT NOT NULL, name TEXT NOT NULL, sprite_id TEXT NOT NULL,"
            " definition TEXT NOT NULL, stopped INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (sprite, name))"
        )
        self._sprites: dict[str, dict[str, ServiceRuntime]] = {}

    @property
    def _state(self) -> EmulatorState:
        state = self._state_ref()
        if state is None:
            raise RuntimeError("the emulator state is gone")
        return state

    # -- reading

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
            replay_log_file(self._state.sprite_root(sprite), rt)
            runtimes[name] = rt
        return runtimes

    def loaded(self, sprite: str) -> dict[str, ServiceRuntime] | None:
        """The runtimes of a sprite if they were loaded, else None (nothing is read)."""
        return self._sprites.get(sprite)

    def all_loaded(self) -> list[ServiceRuntime]:
        """Every runtime loaded so far, of every sprite."""
        return [rt for rts in self._sprites.values() for rt in rts.values()]

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

    def validate(self, sprite: str, definition: ServiceDef) -> None:
        """Check ``needs`` (400) and the single HTTP port (409) against the other services."""
        others = {n: rt.definition for n, rt in self.services(sprite).items()}
        others[definition.name] = definition
        for need in definition.needs:
            if need == definition.name:
                raise Invalid("service cannot depend on itself")
            if need not in others:
                raise Invalid(f"dependency not found: {need}")
        if has_cycle(definition.name, others):
            raise Invalid("circular dependency detected")
        if definition.http_port is not None:
            for other in others.values():
                if other.name != definition.name and other.http_port is not None:
                    raise Conflict("another service already has an HTTP port configured")

    # -- writing

    def add(self, sprite: str, definition: ServiceDef) -> ServiceRuntime:
        """Record a new service (not started), with the lines its old log file holds."""
        rt = ServiceRuntime(sprite, definition, sticky=False)
        replay_log_file(self._state.sprite_root(sprite), rt)
        self.services(sprite)[definition.name] = rt
        self.save(rt)
        return rt

    def save(self, rt: ServiceRuntime) -> None:
        """Store the definition and the sticky flag of ``rt``."""
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

    def set_sticky(self, rt: ServiceRuntime, sticky: bool) -> None:
        """Set "stopped by the user" (stored at once; a deleted service is left alone)."""
        if rt.sticky != sticky and not rt.deleted:
            rt.sticky = sticky
            self.save(rt)

    def remove(self, rt: ServiceRuntime) -> None:
        """Forget one service (its log file stays)."""
        runtimes = self._sprites.get(rt.sprite, {})
        if runtimes.get(rt.name) is rt:
            del runtimes[rt.name]
        self._db.execute(
            "DELETE FROM emu_services WHERE sprite = ? AND name = ?", (rt.sprite, rt.name)
        )

    def forget_sprite(self, sprite: str) -> None:
        """Forget every service of a sprite (the sprite is being deleted)."""
        self._sprites.pop(sprite, None)
        self._db.execute("DELETE FROM emu_services WHERE sprite = ?", (sprite,))

    def _sprite_id(self, sprite: str) -> str:
        rec = self._state.sprites.get(sprite)
        return rec.id if rec is not None else ""
