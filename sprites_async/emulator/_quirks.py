"""Quirks: ways the real service has been seen to answer, or may answer.

The emulator and the SDK were written from one reading of the protocol, so
a test passing on both proves only that they agree. A quirk makes the
emulator answer the way another reading (an official SDK's expectation, an
older server, a recorded incident) says the service can, so the SDK is also
tested against answers it was not written around.

Quirks are named; :data:`QUIRKS` lists them with what each does. A *profile*
names a set of quirks; ``real-world`` turns on every quirk that can hold at
once (of the mutually exclusive ``/control`` refusals it picks one).

Turn them on with ``Emulator(quirks=["null-arrays", ...])``,
``python -m sprites_async.emulator --quirk NAME`` (repeatable), the pytest
plugin (the ``sprites_emulator_quirks`` ini option, or the
``sprites_quirks(...)`` marker), or at run time through ``emu.quirks`` (a
:class:`QuirkSet`) and ``POST /_emulator/quirks``.

Handlers ask ``state.quirks.on("name")``; the set is mutable, so a test may
switch a quirk on or off between two calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["PROFILES", "QUIRKS", "QuirkSet", "resolve_quirks"]

QUIRKS: dict[str, str] = {
    # Decoding: what Go's encoding/json and older servers send.
    "null-arrays": (
        "every empty JSON array in an answer is sent as null (Go marshals a nil slice "
        "as null; services' args/needs do so in practice)"
    ),
    "session-info-odd-types": (
        "session_info carries fields of unexpected types (session_id as a number, "
        "cols/rows as strings, tty as a string, an object where a string is expected)"
    ),
    "kill-event-data-error": (
        "kill events carry their text in data (progress) and error (failures) instead of message"
    ),
    # The control channel, refused or broken in each way the SDKs fall back from.
    "control-400": "/control answers 400 to the upgrade",
    "control-403": "/control answers 403 to the upgrade",
    "control-500": "/control answers 500 to the upgrade",
    "control-502": "/control answers 502 to the upgrade",
    "control-503": "/control answers 503 to the upgrade",
    "control-hang": "/control accepts the TCP connection and never answers the upgrade",
    "control-no-ack": "op.ack is never sent on /control",
    "control-drop-after-start": (
        "the /control socket is dropped (no close frame) right after op.start is "
        "read; the command still starts and runs on the server"
    ),
    # Exec.
    "exec-wsexec": (
        "exec sockets that start a command behave like Fly's October 2025 pkg/wsexec handler: no "
        "session_info, no text exit message (only the binary exit frame), the socket "
        "is not read once stdin is closed, so a close frame is never answered (attach keeps "
        "its session_info: without it a client cannot tell the framing)"
    ),
    # Filesystem.
    "fs-range-ignored": "/fs/read ignores Range and always answers 200 with the whole file",
    # Endpoints only newer servers have.
    "no-ports-watch": "/ports/watch answers 404",
    "no-http-exec": "POST /exec (HTTP exec) answers 404",
    "no-service-logs": "/services/{svc}/logs answers 404",
    "no-service-restart": "/services/{svc}/restart answers 404",
    "no-checkpoint-delete": "DELETE /checkpoints/{cp} answers 404",
    # Lost answers.
    "post-answer-lost": (
        "the first answer to each non-idempotent POST route (method and path) is "
        "lost: the effect is committed, then the connection is dropped before the "
        "response is written"
    ),
}

CONTROL_REFUSALS: tuple[str, ...] = (
    "control-400",
    "control-403",
    "control-500",
    "control-502",
    "control-503",
    "control-hang",
)
"""Mutually exclusive: at most one of them decides how ``/control`` is refused."""

PROFILES: dict[str, frozenset[str]] = {
    "real-world": frozenset(q for q in QUIRKS if q not in CONTROL_REFUSALS[1:]),
    "old-server": frozenset(
        {
            "null-arrays",
            "no-ports-watch",
            "no-http-exec",
            "no-service-logs",
            "no-service-restart",
            "no-checkpoint-delete",
        }
    ),
}
"""Named sets of quirks; ``real-world`` refuses ``/control`` with 400."""


def resolve_quirks(names: Iterable[str] | str | None) -> frozenset[str]:
    """Quirk and profile names to the set of quirks they turn on.

    Raises ``ValueError`` naming the unknown entries (a typo must not
    silently test nothing).
    """
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = [names]
    out: set[str] = set()
    unknown: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise TypeError(f"quirk names are strings, not {type(raw).__name__}")
        for name in (part.strip() for part in raw.split(",")):
            if not name:
                continue
            if name in PROFILES:
                out |= PROFILES[name]
            elif name in QUIRKS:
                out.add(name)
            else:
                unknown.append(name)
    if unknown:
        known = ", ".join(sorted([*QUIRKS, *PROFILES]))
        raise ValueError(f"unknown emulator quirk(s): {', '.join(unknown)} (known: {known})")
    return frozenset(out)


class QuirkSet:
    """The quirks in force in one emulator; mutable at run time."""

    __slots__ = ("_on",)

    def __init__(self, names: Iterable[str] | str | None = None) -> None:
        self._on: set[str] = set(resolve_quirks(names))

    def on(self, name: str) -> bool:
        """Whether quirk ``name`` is in force (a name not in :data:`QUIRKS` is a bug)."""
        if name not in QUIRKS:
            raise KeyError(name)
        return name in self._on

    def add(self, *names: str) -> None:
        """Turn quirks (or profiles) on."""
        self._on |= resolve_quirks(names)

    def discard(self, *names: str) -> None:
        """Turn quirks (or profiles) off."""
        self._on -= resolve_quirks(names)

    def set(self, names: Iterable[str] | str | None) -> None:
        """Replace the whole set."""
        self._on = set(resolve_quirks(names))

    def clear(self) -> None:
        """Turn every quirk off."""
        self._on.clear()

    def control_refusal(self) -> str | None:
        """The ``/control`` refusal in force (``"control-403"``, ``"control-hang"``...), if any."""
        for name in CONTROL_REFUSALS:
            if name in self._on:
                return name
        return None

    def __contains__(self, name: object) -> bool:
        return name in self._on

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._on))

    def __len__(self) -> int:
        return len(self._on)

    def __repr__(self) -> str:
        return f"QuirkSet({sorted(self._on)!r})"
