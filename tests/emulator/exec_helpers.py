"""Helpers for the emulator's exec/session/control tests: raw WebSocket runs and leak checks.

``wait_for`` and ``assert_no_leftovers`` live in tests/_emulator.py and are
imported from here too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec

from tests._emulator import RunningEmulator, assert_no_leftovers, wait_for

SPRITE = "box"


def exec_url(emu: RunningEmulator, route: str = "/exec", **params: Any) -> str:
    """``/v1/sprites/box{route}?params`` with list values repeated."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            pairs.append((key, str(v).lower() if isinstance(v, bool) else str(v)))
    query = "?" + urlencode(pairs) if pairs else ""
    return f"{emu.url}/v1/sprites/{SPRITE}{route}{query}"


def ws_url(emu: RunningEmulator, route: str = "/exec", **params: Any) -> str:
    return exec_url(emu, route, **params).replace("http://", "ws://", 1)


@dataclass
class Run:
    """Everything received on one exec socket."""

    messages: list[tuple[str, Any]] = field(default_factory=list)
    """("text", dict) or ("bin", bytes), in order."""
    close_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [m for kind, m in self.messages if kind == "text"]

    @property
    def binaries(self) -> list[bytes]:
        return [m for kind, m in self.messages if kind == "bin"]

    def stream(self, sid: int) -> bytes:
        return b"".join(b[1:] for b in self.binaries if b and b[0] == sid)

    @property
    def stdout(self) -> bytes:
        return self.stream(1)

    @property
    def stderr(self) -> bytes:
        return self.stream(2)

    @property
    def raw(self) -> bytes:
        return b"".join(self.binaries)

    @property
    def exit_frame(self) -> int | None:
        frames = [b for b in self.binaries if b and b[0] == 3]
        if not frames:
            return None
        assert len(frames[-1]) == 2
        return frames[-1][1]

    @property
    def exit_text(self) -> int | None:
        exits = [t for t in self.texts if t.get("type") == "exit"]
        return exits[-1]["exit_code"] if exits else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [t for t in self.texts if t.get("type") == kind]


async def collect(
    ws: aiohttp.ClientWebSocketResponse, run: Run, *, until_exit: bool = False
) -> Run:
    """Read until the socket closes (or, with ``until_exit``, until the exit arrived)."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            run.messages.append(("text", msgspec.json.decode(msg.data)))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            run.messages.append(("bin", msg.data))
        if until_exit and run.exit_text is not None and (run.exit_frame is not None or _tty(run)):
            break
    run.close_code = ws.close_code
    return run


def _tty(run: Run) -> bool:
    infos = run.of_type("session_info")
    return bool(infos and infos[0]["tty"])


async def run_ws(
    emu: RunningEmulator,
    cmd: Sequence[str],
    *,
    stdin: Iterable[bytes] | None = None,
    timeout: float = 10.0,
    **params: Any,
) -> Run:
    """Run a command over ``/exec`` and collect the whole conversation."""
    if stdin is not None:
        params.setdefault("stdin", True)
    async with emu.http.ws_connect(ws_url(emu, cmd=list(cmd), **params), headers=emu.auth) as ws:
        run = Run(headers=dict(ws._response.headers) if ws._response is not None else {})
        if stdin is not None:
            for chunk in stdin:
                await ws.send_bytes(chunk)
        return await asyncio.wait_for(collect(ws, run), timeout)


@asynccontextmanager
async def open_ws(
    emu: RunningEmulator, route: str = "/exec", **params: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with emu.http.ws_connect(ws_url(emu, route, **params), headers=emu.auth) as ws:
        yield ws


async def next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    """Skip binary frames until a text frame arrives."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            decoded: dict[str, Any] = msgspec.json.decode(msg.data)
            return decoded
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket ended: {msg.type}")


async def read_until(
    ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float = 5.0
) -> bytes:
    """Concatenate binary payloads (raw) until ``needle`` shows up."""
    buf = b""

    async def _loop() -> bytes:
        nonlocal buf
        while needle not in buf:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                buf += msg.data
            elif msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket ended before {needle!r}: {buf!r}")
        return buf

    return await asyncio.wait_for(_loop(), timeout)


async def list_sessions(emu: RunningEmulator) -> list[dict[str, Any]]:
    async with emu.http.get(exec_url(emu), headers=emu.auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["count"] == len(body["sessions"])
    sessions: list[dict[str, Any]] = body["sessions"]
    return sessions


def private_fds() -> set[str]:
    """Pipes and ptys this process holds (sockets excluded: the HTTP client keeps some)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("pipe:", "/dev/pt")):
            out.add(f"{fd}:{target}")
    return out


_EXEC_MODULES = ("_sessions.py", "_procs.py", "_inline.py", "_exec.py", "_control.py", "_wsio.py")


def exec_tasks() -> list[asyncio.Task[Any]]:
    """Pending tasks running code of the exec modules."""
    out = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "sprites_async/emulator/" in filename and filename.endswith(_EXEC_MODULES):
            out.append(task)
    return out


async def assert_clean(emu: RunningEmulator, fds: set[str]) -> None:
    """After ``aclose``: no processes, zombies, exec tasks or private descriptors left."""
    await emu.state.sessions.aclose()
    await assert_no_leftovers(emu.state.sessions.sids)  # type: ignore[attr-defined]
    await wait_for(lambda: not exec_tasks(), 3)
    assert private_fds() <= fds
