"""Commands beyond the control pool's capacity run at once, not in batches (issue 13 item 6)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from sprites_async import SpritesClient
from sprites_async._config import ControlOptions, ExecSettings
from sprites_async._control import pool_for
from tests._emulator import no_leftovers

SLEEP = 4.0  # long enough to dominate 200 handshakes and spawns on a busy machine


def make_client(exec_emu: Any, **options: Any) -> SpritesClient:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
    client.control = ControlOptions(**options)
    return client


async def test_200_concurrent_commands_run_as_one_batch(
    exec_emu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(exec_emu)
    sprite = client.sprite("box")
    started = time.monotonic()
    assert (await sprite.exec("sleep", str(SLEEP))).exit_code == 0
    single = time.monotonic() - started

    caplog.set_level(logging.DEBUG, logger="sprites_async")
    started = time.monotonic()
    results = await asyncio.gather(
        *(sprite.exec("sh", "-c", f"sleep {SLEEP}; echo $0", str(i)) for i in range(200))
    )
    elapsed = time.monotonic() - started
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(200)]
    # Two batches of 100 would take at least 2 * SLEEP.
    assert elapsed < 1.8 * single, (elapsed, single)
    assert pool_for(client).stats("box")["open"] <= 100
    assert any("uses a direct socket" in r.getMessage() for r in caplog.records)
    await no_leftovers(exec_emu, client)


async def test_waiting_for_a_pooled_socket_is_logged(
    exec_emu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sprites_async")
    client = make_client(exec_emu, max_per_sprite=1, when_full="wait")
    sprite = client.sprite("box")
    first = asyncio.ensure_future(sprite.exec("sleep", "0.5"))
    await asyncio.sleep(0.2)
    second = await sprite.exec("echo", "queued")
    assert second.stdout == b"queued\n"
    assert (await first).exit_code == 0
    assert any("waiting for one" in r.getMessage() for r in caplog.records)
    assert pool_for(client).dials == 1
    await no_leftovers(exec_emu, client)
