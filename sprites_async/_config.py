"""Every setting of a client in one place: timeouts, retries, exec and ``/control`` pooling.

These are plain frozen dataclasses with no I/O, so any module may import them
without pulling in the transport.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._session import BaseClient

__all__ = [
    "DEFAULT_CONTROL_OPTIONS",
    "DEFAULT_EXEC_SETTINGS",
    "IDEMPOTENT_METHODS",
    "ControlOptions",
    "ExecSettings",
    "RetryPolicy",
    "TimeoutKind",
    "Timeouts",
    "control_enabled",
    "options_for",
    "settings_for",
]

TimeoutKind = Literal["api", "wake", "create", "stream"]


@dataclass(frozen=True)
class Timeouts:
    """Timeouts in seconds. None disables one.

    None of them is a total limit on a request: a stream may run for hours as
    long as bytes keep coming.

    Attributes:
        connect: Establishing a TCP/TLS connection.
        read: Waiting for the response (and between reads) on ordinary API calls.
        wake: Waiting for the response or WebSocket handshake of a call that may
            wake a cold sprite (exec, files, checkpoints, services, policy).
            Normally 1-2 s; occasionally far longer.
        create: Waiting for ``POST /v1/sprites`` (it may wait for capacity).
        stream_idle: The longest silence allowed between two chunks of a
            streamed body (NDJSON progress, logs, downloads).
    """

    connect: float | None = 10.0
    read: float | None = 30.0
    wake: float | None = 120.0
    create: float | None = 120.0
    stream_idle: float | None = 300.0

    def read_timeout(self, kind: TimeoutKind) -> float | None:
        """The read limit of a call of ``kind``: the longest wait for the answer or a chunk."""
        read = {
            "api": self.read,
            "wake": self.wake,
            "create": self.create,
            "stream": self.stream_idle,
        }[kind]
        if kind == "stream" and self.wake is not None and read is not None:
            # The first byte of a stream may also have to wait for a wake.
            read = max(read, self.wake)
        return read


IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    Idempotent requests (GET, HEAD, PUT, DELETE) are retried on connection
    errors, timeouts and the statuses in ``retry_statuses``. A non-idempotent
    request (POST) is retried only when it certainly never reached the server
    (the connection could not be established): creating a sprite or starting
    a command twice is worse than an error.

    Attributes:
        max_attempts: Total attempts including the first (1 disables retries).
        base_delay: The backoff before attempt ``n`` is drawn uniformly from
            ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``.
        max_delay: Cap of the backoff.
        retry_statuses: Statuses worth another attempt.
        max_retry_after: A ``Retry-After`` longer than this is not waited
            for; the error is raised instead so the caller can decide.
    """

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({429, 500, 502, 503, 504})
    )
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts the attempts already made (1 after the first).
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)


@dataclass(frozen=True)
class ExecSettings:
    """Timing and buffering of exec connections (seconds and bytes).

    The defaults follow the official SDKs; tests use small values. A client
    uses ``client.exec_settings`` when set, else :data:`DEFAULT_EXEC_SETTINGS`.

    Attributes:
        exit_grace: After a text ``exit`` (non-TTY), how long to wait for
            trailing output and the authoritative ``03`` frame.
        ping_interval: Seconds between WebSocket pings (None: never ping).
        dead_after: A connection with no frame and no pong for this long is
            dead (None: never). Pongs keep a silent command alive.
        kill_grace: After TERM, how long the command has before KILL.
        kill_wait: After KILL, how long to wait for the exit.
        close_timeout: How long closing may take in the rare case where it
            cannot be done at once (the server's close reply is never
            awaited; see ``close_now``).
        session_info_timeout: Attach: how long to wait for ``session_info``.
        op_complete_timeout: Control: how long to wait for ``op.complete``
            after the exit before giving up on reusing the socket.
        buffer_size: Bytes of unread output a live session buffers per
            stream. A full stream that is read stops the reading of the
            socket (the server then slows down); a full one nobody reads
            drops its oldest bytes (see :class:`ExecSession`).
        stdin_chunk: Largest stdin frame sent.
        max_port_events: Unread port/session events kept (oldest dropped).
    """

    exit_grace: float = 1.5
    ping_interval: float | None = 15.0
    dead_after: float | None = 45.0
    kill_grace: float = 3.0
    kill_wait: float = 3.0
    close_timeout: float = 1.0
    session_info_timeout: float = 10.0
    op_complete_timeout: float = 2.0
    buffer_size: int = 1 << 20
    stdin_chunk: int = 64 * 1024
    max_port_events: int = 256


DEFAULT_EXEC_SETTINGS = ExecSettings()


def settings_for(client: BaseClient) -> ExecSettings:
    """The exec settings of ``client`` (``client.exec_settings`` or the default)."""
    return client.exec_settings or DEFAULT_EXEC_SETTINGS


@dataclass(frozen=True)
class ControlOptions:
    """How a client pools ``/control`` sockets.

    Attributes:
        enabled: Use control sockets at all (False: always direct ``/exec``).
        max_per_sprite: Most pooled sockets (open or dialling) per sprite.
        max_total: Most pooled sockets per client, all sprites together.
        when_full: What a command does when every pooled socket it may use
            is busy: ``"direct"`` runs it on its own ``/exec`` socket at
            once (no queueing; WebSockets are not otherwise limited),
            ``"wait"`` queues it for the next free pooled socket.
        max_waiters: Most callers waiting for a socket (``when_full="wait"``);
            one more raises.
        max_idle: Idle sockets kept per sprite before draining ...
        drain_to: ... down to this many (least recently used closed first).
        idle_timeout: Seconds an idle socket is kept.
        close_timeout: Bounds the rare close that cannot be done at once; the
            server's close reply is never awaited (see :func:`close_now`).
        probe_timeout: Seconds a ``/control`` handshake may take before the
            command goes to a direct ``/exec`` socket instead.
        fallback_ttl: Seconds a sprite whose ``/control`` dial failed uses
            direct sockets before ``/control`` is probed again.
    """

    enabled: bool = True
    max_per_sprite: int = 100
    max_total: int = 1000
    when_full: Literal["direct", "wait"] = "direct"
    max_waiters: int = 10_000
    max_idle: int = 20
    drain_to: int = 10
    idle_timeout: float = 30.0
    close_timeout: float = 1.0
    probe_timeout: float = 3.0
    fallback_ttl: float = 300.0


DEFAULT_CONTROL_OPTIONS = ControlOptions()


_CONTROL_DISABLED = ControlOptions(enabled=False)


def options_for(client: BaseClient) -> ControlOptions:
    """The pool options of ``client`` (its ``control=`` argument)."""
    value = client.control
    if value is True:
        return DEFAULT_CONTROL_OPTIONS
    if value is False:
        return _CONTROL_DISABLED
    return value


def control_enabled(client: BaseClient) -> bool:
    """Whether ``client`` runs commands over pooled control sockets."""
    return options_for(client).enabled
