"""What a service is: its definition, its live runtime, its events and the errors of its operations.

Pure data and bookkeeping, no processes and no SQL: the supervisor
(``_supervisor``) runs the processes, ``_service_records`` keeps the
definitions, ``_service_logs`` the output.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ._wire import rfc3339_nano

if TYPE_CHECKING:
    from ._procs import SpriteProcess

LOG_DIR = "/.sprite/logs/services"
"""Where a sprite sees its service logs."""
LOG_MEMORY_LINES = 10_000
SUBSCRIBER_DEPTH = 8192

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


def has_cycle(start: str, defs: dict[str, ServiceDef]) -> bool:
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
