"""Large files go through ``/fs/write`` and ``/fs/read`` in bounded memory."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator

from tests._emulator import RunningEmulator

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024
LIMIT = 8 * 1024 * 1024
"""Peak traced allocations allowed during a transfer: a small fraction of SIZE."""


async def test_50_mib_write_and_read_do_not_buffer_the_file(emu: RunningEmulator) -> None:
    emu.add_sprite("big")
    url = f"{emu.url}/v1/sprites/big/fs"
    # One chunk object reused for the whole upload, so the client side adds
    # nothing per chunk and the measured peak is the server's (plus aiohttp's
    # socket buffers on both ends).
    block = bytes(range(256)) * (CHUNK // 256)
    expected = hashlib.sha256()
    for _ in range(SIZE // CHUNK):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(SIZE // CHUNK):
            yield block

    tracemalloc.start()
    try:
        async with emu.http.put(
            url + "/write",
            params={"path": "/tmp/big.bin"},
            data=body(),
            headers={**emu.auth, "Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["size"] == SIZE
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        got = hashlib.sha256()
        received = 0
        async with emu.http.get(
            url + "/read", params={"path": "/tmp/big.bin"}, headers=emu.auth
        ) as resp:
            assert resp.status == 200
            assert resp.content_length == SIZE
            async for piece in resp.content.iter_chunked(CHUNK):
                got.update(piece)
                received += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == SIZE
    assert got.digest() == expected.digest()
    assert write_peak < LIMIT, f"write peaked at {write_peak} bytes"
    assert read_peak < LIMIT, f"read peaked at {read_peak} bytes"
    assert (emu.state.sprite_root("big") / "tmp/big.bin").stat().st_size == SIZE
