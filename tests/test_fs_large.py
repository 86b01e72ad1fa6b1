"""A 200 MiB upload and download through the emulator with the client's memory bounded.

tracemalloc traces every Python allocation in this process (the emulator's
too, which also streams), so a peak far below the file size proves that
neither side held the file in memory.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from sprites_async import SpritesClient
from sprites_async._fs import SpriteFS
from tests._emulator import RunningEmulator

SIZE = 200 * 1024 * 1024
BLOCK = 1024 * 1024
PEAK_LIMIT = 16 * 1024 * 1024  # measured: about 5 MiB up, 3.5 MiB down


def make_file(path: Path) -> str:
    """Write SIZE bytes in blocks (never all in memory); return their sha256."""
    digest = hashlib.sha256()
    seed = os.urandom(BLOCK)
    with path.open("wb") as fh:
        for i in range(SIZE // BLOCK):
            block = i.to_bytes(8, "big") + seed[8:]  # every block differs
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
async def test_200_mib_round_trip_in_bounded_memory(emu: RunningEmulator, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    expected = make_file(source)
    target = tmp_path / "downloaded.bin"

    async with SpritesClient(emu.token, base_url=emu.url) as client:
        fs = SpriteFS(client.sprite("box"))
        tracemalloc.start()
        try:
            # Relative to what is already traced (all of it, under PYTHONTRACEMALLOC).
            baseline, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            result = await fs.upload(source, "big/blob.bin")
            upload_peak = tracemalloc.get_traced_memory()[1] - baseline
            baseline, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            size = await fs.download("big/blob.bin", target)
            download_peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()

    assert result.size == SIZE and size == SIZE
    assert upload_peak < PEAK_LIMIT, f"upload peaked at {upload_peak / 2**20:.1f} MiB"
    assert download_peak < PEAK_LIMIT, f"download peaked at {download_peak / 2**20:.1f} MiB"
    stored = emu.state.sprite_root("box") / "home/sprite/big/blob.bin"
    assert stored.stat().st_size == SIZE
    assert file_digest(target) == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
