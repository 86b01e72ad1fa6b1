"""Shared fixtures for the client tests."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses

from sprites_async import RetryPolicy, SpritesClient

BASE = "https://api.test"
TOKEN = "my-org/1234/tokid/supersecretvalue"


def url(path: str) -> re.Pattern[str]:
    """Match ``BASE + path`` with any query string."""
    return re.compile(re.escape(BASE + path) + r"(\?.*)?$")


def sprite_json(name: str = "alpha", **extra: Any) -> dict[str, Any]:
    """A sprite object in the April-2026 shape."""
    data: dict[str, Any] = {
        "id": f"sprite-0000-{name}",
        "name": name,
        "organization": "my-org",
        "status": "cold",
        "version": None,
        "url": f"https://{name}-abcde.sprites.app",
        "url_settings": {"auth": "sprite"},
        "created_at": "2026-04-03T03:02:18.641609Z",
        "updated_at": "2026-04-03T03:02:18.641609Z",
        "last_running_at": None,
        "last_warming_at": None,
        "environment_version": None,
    }
    data.update(extra)
    return data


class _CompatClientResponse(ClientResponse):
    """aioresponses 0.7.9 predates the ``stream_writer`` argument that aiohttp
    3.14 made required (pnuckowski/aioresponses#289, still open); supply an
    already-finished writer so its fake responses can be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    if _NEEDS_STREAM_WRITER:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatClientResponse)
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[SpritesClient]:
    async with SpritesClient(
        TOKEN, base_url=BASE, retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
    ) as c:
        yield c


def requests_to(m: aioresponses, method: str, path: str) -> list[Any]:
    """The recorded calls of one method to one path (any query)."""
    out = []
    for (meth, u), calls in m.requests.items():
        if meth == method and str(u).split("?")[0] == BASE + path:
            out.extend(calls)
    return out


# ------------------------------------------------------------------ leak checks
#
# Every test must leave no child process and (for async tests) no task behind.
# These run around every test so that a leak fails the test that caused it.


def _descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of ``pid`` (from /proc; zombies excluded)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may contain spaces or parens: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    before = _descendants(os.getpid())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = _descendants(os.getpid()) - before
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if leaked:
        names = {}
        for pid in leaked:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    names[pid] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                names[pid] = "?"
        pytest.fail(f"test left child processes running: {names}")


def _open_sockets() -> set[str]:
    """Socket inodes this process holds open."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    sockets_before = _open_sockets()
    yield
    current = asyncio.current_task()
    leftover: list[asyncio.Task[object]] = []
    leaked_sockets: set[str] = set()
    for _ in range(100):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        leaked_sockets = _open_sockets() - sockets_before
        if not leftover and not leaked_sockets:
            return
        await asyncio.sleep(0.01)
    if leftover:
        pytest.fail(f"test left tasks running: {leftover}")
    pytest.fail(f"test left {len(leaked_sockets)} socket(s) open")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        fixturenames = getattr(item, "fixturenames", None)
        if func is not None and fixturenames is not None and inspect.iscoroutinefunction(func):
            # First in the list: set up before, and torn down after, every other
            # fixture, so the emulator and clients are closed when it checks.
            fixturenames.insert(0, "_no_leaked_tasks")
