"""Output buffers of a live session: an unread stream never blocks the one being read."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import SpritesClient
from sprites_async._config import ExecSettings
from sprites_async._exec import DEFAULT_MAX_OUTPUT, OutputEvent, _Collector, _Kept
from tests._emulator import no_leftovers
from tests._fakes import Conn, FakeSprites

BUFFER = 256 * 1024
FLOOD = 8_000_000  # ~30 times the buffer, far beyond what loopback sockets hold
SETTINGS = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0, buffer_size=BUFFER)


@pytest.fixture
async def sprite(exec_emu: Any) -> AsyncIterator[Any]:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = SETTINGS
    yield client.sprite("box")
    await no_leftovers(exec_emu, client)  # the sandbox process is gone, no task or socket left


def flood(stream: int) -> str:
    to = " >&2" if stream == 2 else ""
    other = "" if stream == 2 else " >&2"
    return f"head -c {FLOOD} /dev/zero{to}; echo END{other}"


@pytest.mark.parametrize(("flooded", "read"), [(2, 1), (1, 2)])
async def test_reading_one_stream_while_the_other_floods(
    sprite: Any, flooded: int, read: int
) -> None:
    async def body() -> None:
        async with sprite.process("sh", "-c", flood(flooded)) as proc:
            streams = {1: proc.stdout, 2: proc.stderr}
            chunks = [chunk async for chunk in streams[read]]
            assert b"".join(chunks) == b"END\n"
            assert await proc.wait() == 0
            unread = streams[flooded]
            tail = await unread.read()
            assert unread.dropped > 0
            assert unread.dropped + len(tail) == FLOOD  # nothing lost uncounted
            assert len(tail) <= BUFFER
            assert streams[read].dropped == 0

    await asyncio.wait_for(body(), 60)


async def test_events_carry_a_flood_on_either_stream(sprite: Any) -> None:
    script = f"head -c {FLOOD} /dev/zero >&2; echo mid; head -c {FLOOD} /dev/zero; echo END >&2"
    sizes = {"stdout": 0, "stderr": 0}

    async def body() -> None:
        async with sprite.process("sh", "-c", script) as proc:
            async for event in proc:
                if isinstance(event, OutputEvent):
                    sizes[event.stream] += len(event.data)
            assert proc.exit_code == 0
            assert (proc.stdout.dropped, proc.stderr.dropped) == (0, 0)

    await asyncio.wait_for(body(), 60)
    assert sizes == {"stdout": FLOOD + 4, "stderr": FLOOD + 4}


async def test_wait_alone_does_not_block_on_full_buffers(sprite: Any) -> None:
    script = f"head -c {FLOOD} /dev/zero; head -c {FLOOD} /dev/zero >&2; echo END"
    async with sprite.process("sh", "-c", script) as proc:
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        out = await proc.stdout.read()
        err = await proc.stderr.read()
    assert out.endswith(b"END\n")
    assert proc.stdout.dropped + len(out) == FLOOD + 4
    assert proc.stderr.dropped + len(err) == FLOOD
    assert proc.stdout.dropped > 0 and proc.stderr.dropped > 0


# ------------------------------------------------------- scripted server, exact


async def test_unread_stream_keeps_its_newest_bytes_and_memory_stays_bounded(
    fake: FakeSprites,
) -> None:
    frame = 64 * 1024
    count = 200  # 12.5 MiB of stderr nobody reads

    async def script(conn: Conn) -> None:
        await conn.info()
        for i in range(count):
            await conn.out(bytes([i]) * frame, stream=2)
        await conn.out(b"END\n")
        await conn.exit_frame(0)
        await conn.client_closed(timeout=20)

    fake.exec_script = script
    peak = 0
    async with fake.client(buffer_size=BUFFER) as client:
        async with client.sprite("box").process("cmd") as proc:

            async def read() -> None:
                nonlocal peak
                async for chunk in proc.stdout:
                    assert chunk == b"END\n"
                    peak = max(peak, proc._buffered)

            await asyncio.wait_for(read(), 30)
            assert await proc.wait() == 0
            peak = max(peak, proc._buffered)
            tail = await proc.stderr.read()
    assert peak <= BUFFER + frame
    assert proc.stderr.dropped + len(tail) == count * frame
    assert tail == b"".join(bytes([i]) * frame for i in range(count - len(tail) // frame, count))


async def test_backpressure_holds_for_the_stream_being_read(fake: FakeSprites) -> None:
    """A slow stdout reader holds the server back even while stderr goes unread."""
    frame = 64 * 1024
    count = 256  # 16 MiB of each stream
    sent: list[int] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        for i in range(count):
            await conn.out(b"o" * frame)
            await conn.out(b"e" * frame, stream=2)
            sent.append(i)
        await conn.exit_frame(0)
        await conn.client_closed(timeout=30)

    fake.exec_script = script
    async with fake.client(buffer_size=BUFFER) as client:
        async with client.sprite("box").process("cmd") as proc:
            first = await proc.stdout.__anext__()
            await asyncio.sleep(0.5)  # a slow reader
            assert len(sent) < count  # the server is held back
            total = len(first)
            async for chunk in proc.stdout:
                assert proc._held[1] <= BUFFER + frame
                assert proc._buffered <= 2 * (BUFFER + frame)
                total += len(chunk)
            assert total == count * frame  # nothing of the read stream is lost
            assert await proc.wait() == 0
            assert proc.stderr.dropped > 0


# ------------------------------------------------------------- exec() bounds


def test_kept_output_is_the_head_and_the_tail_whatever_the_chunking() -> None:
    rng = random.Random(7)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 3000))
        limit = rng.choice([None, 0, 1, 2, 7, 100, 1000, 2999, 5000])
        kept = _Kept(limit)
        i = 0
        while i < len(data):
            n = rng.randrange(1, 700)
            kept.add(data[i : i + n])
            i += n
        if limit is None or len(data) <= limit:
            assert (kept.value(), kept.dropped) == (data, 0)
        else:
            head, tail = limit // 2, limit - limit // 2
            assert kept.value() == data[:head] + data[len(data) - tail :]
            assert kept.dropped == len(data) - limit
        assert kept.tail_len <= kept.tail_limit


def test_a_single_chunk_is_given_back_without_a_copy() -> None:
    # exec("echo", "hi"): one frame of output, kept and returned as is.
    chunk = b"hi\n"
    kept = _Kept(DEFAULT_MAX_OUTPUT)
    kept.add(chunk)
    assert kept.value() is chunk
    kept.add(b"more")
    assert kept.value() == b"hi\nmore"
    # A mutable chunk is copied: its owner may reuse it.
    buffer = bytearray(b"x")
    other = _Kept(None)
    other.add(buffer)
    buffer[0] = ord("y")
    assert other.value() == b"x"


def test_exec_makes_a_keeper_only_for_streams_with_output() -> None:
    collector = _Collector(DEFAULT_MAX_OUTPUT)
    collector.add(1, b"out")
    assert list(collector.streams) == [1]
    assert (collector.value(1), collector.value(2), collector.dropped(2)) == (b"out", b"", 0)


async def test_exec_output_is_bounded_by_default(fake: FakeSprites) -> None:
    frame = 64 * 1024
    count = 320  # 20 MiB of stdout

    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"first line\n")
        for _ in range(count):
            await conn.out(b"." * frame)
        await conn.out(b"error: the last line\n")
        await conn.exit_frame(2)
        await conn.client_closed(timeout=20)

    fake.exec_script = script
    async with fake.client() as client:
        result = await client.sprite("box").exec("make")
    total = count * frame + len(b"first line\n") + len(b"error: the last line\n")
    assert len(result.stdout) == DEFAULT_MAX_OUTPUT == 8 * 1024 * 1024
    assert result.stdout_dropped == total - DEFAULT_MAX_OUTPUT
    assert result.truncated
    assert result.stdout.startswith(b"first line\n")
    assert result.stdout.endswith(b".error: the last line\n")
    assert (result.exit_code, result.stderr, result.stderr_dropped) == (2, b"", 0)


async def test_exec_max_output_none_keeps_everything(fake: FakeSprites) -> None:
    frame = 64 * 1024
    count = 160  # 10 MiB: beyond the default bound

    async def script(conn: Conn) -> None:
        await conn.info()
        for i in range(count):
            await conn.out(bytes([i]) * frame, stream=2)
        await conn.exit_frame(0)
        await conn.client_closed(timeout=20)

    fake.exec_script = script
    async with fake.client() as client:
        result = await client.sprite("box").exec("cmd", max_output=None)
    assert result.stderr == b"".join(bytes([i]) * frame for i in range(count))
    assert not result.truncated


async def test_a_stream_gets_a_queue_only_once_it_has_output(fake: FakeSprites) -> None:
    # Thousands of idle sessions may be alive at once: a stream that never
    # has output (stderr here) never gets a queue, and stdout gets one only
    # with its first output.
    async def script(conn: Conn) -> None:
        await conn.info()
        assert (await conn.recv())[0] == "bin"  # the stdin line
        await conn.out(b"hi\n")
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client, client.sprite("box").process("cat") as proc:
        assert await proc._session_id_soon() == "42"
        assert proc._buffers.out == [None, None, None]
        await proc.write(b"go\n")
        assert await proc.stdout.read() == b"hi\n"
        assert await proc.wait() == 0
        assert proc._buffers.out[1] is not None
        assert proc._buffers.out[2] is None


async def test_exec_queues_no_output_in_the_session(
    fake: FakeSprites, monkeypatch: pytest.MonkeyPatch
) -> None:
    # exec() collects output through its sink: the session's queues stay unmade.
    from sprites_async._exec._session import ExecSession

    seen: list[list[Any]] = []
    real = ExecSession.complete

    async def complete(self: ExecSession, *args: Any, **kwargs: Any) -> int:
        try:
            return await real(self, *args, **kwargs)
        finally:
            seen.append(list(self._buffers.out))

    monkeypatch.setattr(ExecSession, "complete", complete)

    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"out")
        await conn.out(b"err", stream=2)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        result = await client.sprite("box").exec("x")
    assert (result.stdout, result.stderr) == (b"out", b"err")
    assert seen == [[None, None, None]]
