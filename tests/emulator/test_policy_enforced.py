"""A deny-all network policy cuts new processes of a sprite off the network (bubblewrap)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._policy import denies_everything
from sprites_async.emulator._procs import sandbox_available
from tests._emulator import RunningEmulator, serve
from tests.emulator.exec_helpers import SPRITE, next_text, open_ws, read_until, run_ws

CONNECT = (
    "import errno,socket,sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print(errno.errorcode.get(e.errno, e.errno))\n"
)
"""Prints ``connected`` or the errno name of the failed connection to a host loopback port."""

DENY_ALL = [{"domain": "*", "action": "deny"}]
CUT_OFF = {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH"}

needs_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bwrap is not installed")


@pytest.mark.parametrize(
    ("rules", "deny_all"),
    [
        ([], False),
        ([{"domain": "*", "action": "deny"}], True),
        ([{"domain": "example.com", "action": "deny"}], True),
        ([{"include": "defaults", "action": "deny"}, {"domain": "x.io", "action": "deny"}], True),
        ([{"domain": "*", "action": "deny"}, {"domain": "x.io", "action": "allow"}], False),
        ([{"include": "defaults"}], False),
        ([{"include": "defaults", "action": "allow"}], False),
        ([{"domain": "*", "action": "allow"}], False),
    ],
)
def test_which_rule_sets_deny_everything(rules: list[dict[str, str]], deny_all: bool) -> None:
    assert denies_everything(rules) is deny_all


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.sandbox = "bwrap"
    # These tests contrast a policy with the host's network, which sprites
    # reach only when sharing it (test_sandbox_probes covers their own).
    emulator_config.sprite_network = "host"
    emulator_config.extra["services_restart_backoff"] = 60.0
    emulator_config.extra["exec_port_poll"] = 0.05
    return emulator_config


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    if not sandbox_available():
        pytest.skip("bwrap is not installed")
    async with serve(emulator_config) as running:
        running.add_sprite(SPRITE)
        yield running


@pytest.fixture
async def host_port() -> AsyncIterator[int]:
    """A TCP server on the host's 127.0.0.1 that accepts and closes connections."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def set_policy(emu: RunningEmulator, rules: list[dict[str, str]]) -> None:
    status, _ = await emu.api("POST", f"/v1/sprites/{SPRITE}/policy/network", json={"rules": rules})
    assert status == 204


async def connect_from_sprite(emu: RunningEmulator, port: int) -> str:
    run = await run_ws(emu, ["python3", "-c", CONNECT, str(port)])
    assert run.exit_text == 0, run.stderr
    return run.stdout.decode().strip()


@needs_bwrap
async def test_deny_all_cuts_exec_off_the_host(emu: RunningEmulator, host_port: int) -> None:
    assert await connect_from_sprite(emu, host_port) == "connected"
    await set_policy(emu, DENY_ALL)
    assert await connect_from_sprite(emu, host_port) in CUT_OFF
    # The sprite still has a loopback of its own, and no other interface.
    own_loopback = (
        "import socket\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
        "socket.create_connection(s.getsockname()).close()\n"
        "print([name for _, name in socket.if_nameindex()])\n"
    )
    run = await run_ws(emu, ["python3", "-c", own_loopback])
    assert run.stdout == b"['lo']\n"
    await set_policy(emu, [])
    assert await connect_from_sprite(emu, host_port) == "connected"


@needs_bwrap
async def test_a_policy_with_an_allow_is_not_enforced(emu: RunningEmulator, host_port: int) -> None:
    await set_policy(emu, [*DENY_ALL, {"domain": "example.com", "action": "allow"}])
    assert await connect_from_sprite(emu, host_port) == "connected"


@needs_bwrap
async def test_deny_all_cuts_services_off_the_host(emu: RunningEmulator, host_port: int) -> None:
    await set_policy(emu, DENY_ALL)
    url = f"{emu.url}/v1/sprites/{SPRITE}/services/probe?duration=3s"
    body = {"cmd": "python3", "args": ["-c", CONNECT, str(host_port)]}
    async with emu.http.put(url, json=body, headers=emu.auth) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events: list[dict[str, Any]] = [json.loads(line) for line in raw.splitlines()]
    printed = [e["data"].strip() for e in events if e["type"] == "stdout"]
    assert len(printed) == 1 and printed[0] in CUT_OFF, events


@needs_bwrap
async def test_listeners_of_an_isolated_sprite_are_still_reported(emu: RunningEmulator) -> None:
    await set_policy(emu, DENY_ALL)
    listener = (
        "import socket,sys\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); sys.stdin.read()\n"
    )
    watch_url = f"{emu.url}/v1/sprites/{SPRITE}/ports/watch".replace("http://", "ws://", 1)
    async with emu.http.ws_connect(watch_url, headers=emu.auth) as watch:
        assert json.loads(await watch.receive_str(timeout=5)) == {"type": "port_list", "ports": []}
        async with open_ws(emu, cmd=["python3", "-c", listener], stdin=True) as ex:
            port = int((await read_until(ex, b"\n"))[1:])
            notified = await next_text(ex)
            assert (notified["type"], notified["port"]) == ("port_opened", port)
            watched = json.loads(await watch.receive_str(timeout=5))
            assert watched == notified
            await ex.send_bytes(b"\x04")
            assert json.loads(await watch.receive_str(timeout=5))["type"] == "port_closed"
