"""The integration examples against the emulator: examples/fastapi_backend.py (served by
uvicorn in this process) and examples/agent_tool.py."""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from sprites_async import Sprite, SpritesClient
from sprites_async.emulator import Emulator
from tests._examples import EXAMPLES, run_example


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(exit_linger=0.0) as emu:
        yield emu


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[SpritesClient]:
    async with emulator.client() as c:
        yield c


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> ModuleType:
    """Import an example with the emulator configured as "the real service" through the
    environment, so that the example's own connect() talks to the test's emulator."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("SPRITES_API_URL", emulator.url)
    monkeypatch.setenv("SPRITES_TOKEN", emulator.token)
    monkeypatch.delenv("SPRITE_TOKEN", raising=False)
    return importlib.import_module(name)


async def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def gone(sprite: Sprite, marker: str) -> bool:
    """No session of the sprite runs a command containing ``marker``."""
    return not [s for s in await sprite.sessions.list() if marker in s.command]


# ------------------------------------------------------------------ FastAPI


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port (lifespan included)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def backend(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Any, aiohttp.ClientSession]]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    module = load_example("fastapi_backend", monkeypatch, emulator)
    app = module.create_app()
    async with serve(app) as url, aiohttp.ClientSession() as http:
        yield url, app, http
    # The lifespan deleted its sandbox sprite at shutdown.
    assert not [n for n in emulator.state.sprites if n.startswith("api-sandbox-")]


async def test_fastapi_run_answers_the_commands_output(
    backend: tuple[str, Any, aiohttp.ClientSession],
) -> None:
    url, _, http = backend
    body = {"cmd": ["sh", "-c", "cat; echo err >&2; exit 3"], "stdin": "hello\n", "timeout": 20}
    async with http.post(url + "/run", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {
            "exit_code": 3,
            "stdout": "hello\n",
            "stderr": "err\n",
            "truncated": False,
        }
    # Arguments outside the limits are refused before anything runs.
    async with http.post(url + "/run", json={"cmd": ["true"], "timeout": 10_000}) as resp:
        assert resp.status == 422


async def test_fastapi_stream_streams_the_output_then_the_exit(
    backend: tuple[str, Any, aiohttp.ClientSession],
) -> None:
    url, _, http = backend
    script = "echo one; sleep 0.5; echo two >&2; sleep 0.5; echo three; exit 4"
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    async with http.post(url + "/stream", json={"cmd": ["sh", "-c", script]}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        async for chunk in resp.content.iter_any():
            arrivals.append((time.monotonic() - started, chunk))
    received = b"".join(chunk for _, chunk in arrivals)
    assert received == b"one\ntwo\nthree\n\n[exit 4]\n"
    # Streamed, not buffered: "one" arrived well before the command ended.
    first = next(t for t, chunk in arrivals if b"one" in chunk)
    assert arrivals[-1][0] - first > 0.5


async def test_fastapi_stream_client_that_leaves_ends_the_command(
    backend: tuple[str, Any, aiohttp.ClientSession], client: SpritesClient
) -> None:
    url, app, http = backend
    sprite: Sprite = client.sprite(app.state.sprite.name)
    marker = "leave-marker-7f3a"
    cmd = ["sh", "-c", "echo started; sleep 120; echo never", marker]

    async def ours_running() -> bool:
        return any(marker in s.command for s in await sprite.sessions.list())

    resp = await http.post(url + "/stream", json={"cmd": cmd, "timeout": 120})
    try:
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n") == b"started\n"
        assert await ours_running()
    finally:
        resp.close()  # the HTTP client goes away mid-stream
    started = time.monotonic()

    async def ours_gone() -> bool:
        return not await ours_running()

    await wait_for(ours_gone, "the command to end after the client left")
    # Ended by the app (well under a second here), not by its own 120 s, nor by the
    # server's timer for commands whose connection closed (10 s for non-TTY ones).
    assert time.monotonic() - started < 8


async def test_fastapi_timeouts_are_clean_errors_and_kill_the_command(
    backend: tuple[str, Any, aiohttp.ClientSession], client: SpritesClient
) -> None:
    url, app, http = backend
    sprite: Sprite = client.sprite(app.state.sprite.name)
    started = time.monotonic()
    body = {"cmd": ["sh", "-c", "sleep 120", "run-timeout-marker"], "timeout": 1}
    async with http.post(url + "/run", json=body) as resp:
        assert resp.status == 504
        answer = await resp.json()
    assert answer["error"] == "timeout"
    assert "1 s" in answer["detail"]
    assert time.monotonic() - started < 60
    await wait_for(lambda: gone(sprite, "run-timeout-marker"), "the timed-out command to end", 8)

    body = {"cmd": ["sh", "-c", "echo partial; sleep 120", "stream-timeout-marker"], "timeout": 1}
    async with http.post(url + "/stream", json=body) as resp:
        assert resp.status == 200
        assert await resp.read() == b"partial\n\n[timed out after 1 s]\n"
    await wait_for(lambda: gone(sprite, "stream-timeout-marker"), "the streamed command to end", 8)


async def test_fastapi_api_failure_is_a_502_or_the_streams_last_line(
    backend: tuple[str, Any, aiohttp.ClientSession], client: SpritesClient
) -> None:
    url, app, http = backend
    await client.sprite(app.state.sprite.name).delete()  # behind the app's back
    async with http.post(url + "/run", json={"cmd": ["true"]}) as resp:
        assert resp.status == 502
        answer = await resp.json()
    assert answer["error"] == "NotFoundError"
    assert answer["upstream_status"] == 404
    assert answer["request_id"]
    # A stream has sent its 200 before the command starts: the failure is its last line.
    async with http.post(url + "/stream", json={"cmd": ["true"]}) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
    assert text.startswith("\n[error: 404") and text.endswith("]\n"), text


# ------------------------------------------------------------------ agent tool


@pytest.fixture
async def tool(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, client: SpritesClient
) -> AsyncIterator[Any]:
    module = load_example("agent_tool", monkeypatch, emulator)
    limits = module.Limits(max_output=64, default_timeout=20)
    async with module.CodeExecutionTool(client, limits=limits) as t:
        yield t
    assert not [n for n in emulator.state.sprites if n.startswith("agent-")]


async def test_agent_tool_successful_run_keeps_its_files(tool: Any) -> None:
    answer = await tool.call(
        "c1",
        {"files": {"data/n.txt": "1\n2\n3\n"}, "code": "print(sum(map(int, open('data/n.txt'))))"},
    )
    assert answer == "[exit code 0]\nstdout:\n6"
    again = await tool.run("c1", command=["cat", "data/n.txt", "main.py"])
    assert again.ok and again.stdout.startswith("1\n2\n3\nprint(")
    assert not again.rolled_back
    # Output is bounded: 64 bytes kept per stream (its first and last 32),
    # the rest counted.
    big = await tool.run("c1", code="print('x' * 1000)")
    assert big.ok and big.stdout.rstrip("\n") == "x" * 63 and big.dropped == 1001 - 64
    assert "937 more bytes of output were cut" in big.to_text()


async def test_agent_tool_failing_run_is_rolled_back(tool: Any) -> None:
    await tool.run("c1", files={"keep.txt": "precious\n"}, command=["true"])
    failed = await tool.run(
        "c1",
        files={"new.txt": "from the failed run\n"},
        code="import os\nos.remove('keep.txt')\nraise SystemExit('boom')",
    )
    assert not failed.ok and failed.exit_code == 1 and failed.rolled_back
    assert "boom" in failed.stderr
    assert "restored to its state before this call" in failed.to_text()
    sprite = tool.sprite_of("c1")
    fs = sprite.fs("/home/sprite/work")
    assert await (fs / "keep.txt").read_text() == "precious\n"
    assert not await (fs / "new.txt").exists()  # the failed run's own upload is undone too


async def test_agent_tool_timeout_is_killed_and_rolled_back(tool: Any) -> None:
    started = time.monotonic()
    outcome = await tool.run(
        "c1", files={"t.txt": "x"}, code="import time\ntime.sleep(120)", timeout=1
    )
    assert outcome.timed_out and outcome.exit_code is None and outcome.rolled_back
    assert time.monotonic() - started < 60
    assert "timed out after" in outcome.to_text()
    sprite = tool.sprite_of("c1")
    assert not await (sprite.fs("/home/sprite/work") / "t.txt").exists()
    await wait_for(lambda: gone(sprite, "main.py"), "the timed-out run to end", 8)
    # The timeout asked for is capped by the tool's limit.
    capped = await tool.run("c1", command=["true"], timeout=10_000)
    assert capped.ok


async def test_agent_tool_one_sprite_per_conversation_and_cleanup(
    tool: Any, emulator: Emulator
) -> None:
    await asyncio.gather(
        tool.run("a", files={"who": "a"}, command=["true"]),
        tool.run("a", command=["true"]),  # a concurrent first call makes no second sprite
        tool.run("b", command=["true"]),
    )
    a, b = tool.sprite_of("a"), tool.sprite_of("b")
    assert a.name != b.name
    assert sorted(n for n in emulator.state.sprites if n.startswith("agent-")) == sorted(
        [a.name, b.name]
    )
    assert not (await tool.run("b", command=["cat", "who"])).ok  # b cannot see a's files
    await tool.end("a")
    assert a.name not in emulator.state.sprites and b.name in emulator.state.sprites
    assert tool.sprite_of("a") is None
    # The fixture's aclose() deletes b.


async def test_agent_tool_bad_arguments_are_answered_not_run(tool: Any) -> None:
    assert (await tool.call("c1", {})).startswith("[invalid arguments: give code or command")
    answer = await tool.call("c1", {"files": {"../escape": "x"}, "command": ["true"]})
    assert "inside the work folder" in answer
    assert "non-empty list" in await tool.call("c1", {"command": "ls -l"})
    assert tool.sprite_of("c1") is None  # nothing was made for calls that were refused


def test_agent_tool_example_runs_as_written() -> None:
    done = run_example("agent_tool.py")
    assert done.returncode == 0, done.stderr
    answers = done.stdout.split("--- model: ")[1:]
    assert len(answers) == 5
    assert "[exit code 0]\n    stdout:\n    6" in answers[0]
    assert "[exit code 1]" in answers[1] and "restored to its state" in answers[1]
    assert "1\n    2\n    3" in answers[2]
    assert "timed out after" in answers[3] and "restored to its state" in answers[3]
    assert "more bytes of output were cut" in answers[4]
    assert "conversation over: sprite agent-" in done.stderr
