"""What untrusted code in a sandboxed sprite can and cannot do (issue 18).

Each probe here got through before the sandbox was hardened, with the
emulator running as root (as CI does): full capabilities, uid 0, the host's
``/etc/shadow``, ``mount``, the host's hostname, unbounded ``fork``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import sandbox_available
from sprites_async.emulator._sandbox import SPRITE_UID, jail_for, sprite_host_ids
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    assert_clean,
    private_fds,
    read_until,
    run_ws,
    ws_url,
)

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")

NEIGHBOUR = "neighbour"


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.sandbox = "required"
    emulator_config.max_processes = 64
    emulator_config.memory_limit = 256 << 20
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    emu.add_sprite(NEIGHBOUR)
    yield SPRITE
    await assert_clean(emu, fds)


async def sh(emu: RunningEmulator, script: str, **params: object) -> tuple[int | None, str, str]:
    run = await run_ws(emu, ["sh", "-c", script], timeout=30.0, **params)
    return run.exit_text, run.stdout.decode(), run.stderr.decode()


async def test_no_capabilities(emu: RunningEmulator) -> None:
    _, out, _ = await sh(emu, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status")
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert all(int(v, 16) == 0 for v in caps.values()), caps


async def test_runs_as_the_sprite_user(emu: RunningEmulator) -> None:
    code, out, err = await sh(emu, 'id -u; id -g; id -un; echo "$HOME"; pwd')
    assert code == 0, err
    assert out.split() == [str(SPRITE_UID), str(SPRITE_UID), "sprite", "/home/sprite"] * 1 + [
        "/home/sprite"
    ]


async def test_hosts_etc_is_not_there(emu: RunningEmulator) -> None:
    script = (
        "for f in shadow gshadow sudoers ssh ssl/private machine-id; do "
        "test -e /etc/$f && echo present $f; done; "
        "cat /etc/shadow 2>/dev/null && echo read-shadow; "
        "grep -c . /etc/passwd; grep '^sprite:' /etc/passwd; grep -w box /etc/hosts; "
        "touch /etc/x 2>/dev/null || echo etc-read-only"
    )
    _code, out, _err = await sh(emu, script)
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("present")], out
    assert "read-shadow" not in lines
    assert "sprite:x:1000:1000:sprite:/home/sprite:/bin/bash" in lines
    assert any(line.endswith("\tbox") for line in lines), out
    assert "etc-read-only" in lines
    assert int(lines[0]) <= 3  # root, sprite, nobody: not the host's accounts
    # Only the sprite's state directory holds its /etc, outside what it can write.
    etc = emu.state.sprite_dir(SPRITE) / "etc"
    assert (etc / "passwd").is_file()
    assert not (emu.state.sprite_root(SPRITE) / "etc").exists()


@pytest.mark.skipif(not Path("/etc/ssl/certs").is_dir(), reason="the host has no CA certificates")
async def test_programs_still_find_what_they_need(emu: RunningEmulator) -> None:
    script = (
        "ls /etc/ssl/certs | grep -q . && echo certs; "
        "python3 -c 'import ssl; print(len(ssl.create_default_context().get_ca_certs()) >= 0)'; "
        "ls -ld /home/sprite | cut -d' ' -f3"
    )
    code, out, err = await sh(emu, script)
    assert code == 0, err
    assert out.split() == ["certs", "True", "sprite"]


async def test_hostname_is_the_sprite_name(emu: RunningEmulator) -> None:
    code, out, err = await sh(emu, "hostname; cat /proc/sys/kernel/hostname")
    assert code == 0, err
    assert out.split() == [SPRITE, SPRITE]


async def test_cannot_mount_nor_make_namespaces(emu: RunningEmulator) -> None:
    script = (
        "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>/dev/null && echo mounted; "
        "unshare -r true 2>/dev/null && echo unshared; "
        "unshare -n true 2>/dev/null && echo netns; echo done"
    )
    _code, out, _ = await sh(emu, script)
    assert out.split() == ["done"]


async def test_no_controlling_terminal(emu: RunningEmulator) -> None:
    # Without one, nothing can push input into the emulator's terminal (TIOCSTI).
    probe = (
        "import errno, os\n"
        "try:\n"
        "    os.open('/dev/tty', os.O_RDWR)\n"
        "    print('tty')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "print(os.getsid(0) != os.getsid(os.getppid()) or os.getppid() == 1)\n"
    )
    run = await run_ws(emu, ["python3", "-c", probe])
    assert run.stdout.split()[0] == b"ENXIO", run.stdout


async def test_files_belong_to_the_sprites_host_user(emu: RunningEmulator) -> None:
    # The emulator's user, or an unprivileged id when the emulator is root
    # (test_sandbox_host_uid.py): never the host's root.
    host_uid, host_gid = sprite_host_ids()
    home = emu.state.sprite_root(SPRITE) / "home" / "sprite"
    (home / "from-host.txt").write_text("host\n")
    os.chown(home / "from-host.txt", host_uid, host_gid)
    code, out, err = await sh(
        emu, "set -e; echo inside > made.txt; echo more >> from-host.txt; stat -c %u made.txt"
    )
    assert code == 0, err
    assert out.strip() == str(SPRITE_UID)
    made = home / "made.txt"
    assert (made.stat().st_uid, made.stat().st_gid) == (host_uid, host_gid)
    assert made.read_text() == "inside\n"
    assert (home / "from-host.txt").read_text() == "host\nmore\n"


BOMB = (
    "import subprocess, sys\n"
    "ok = failed = 0\n"
    "for _ in range(300):\n"
    "    try:\n"
    "        subprocess.Popen(['sleep', '60'])\n"
    "        ok += 1\n"
    "    except OSError:\n"
    "        failed += 1\n"
    "print(ok, failed, flush=True)\n"
    "sys.stdin.read()\n"
)
"""Starts at most 300 processes (a bomb that cannot wreck the machine), holds them until EOF."""


async def test_process_limit_bounds_a_bomb_and_the_neighbour_stays_responsive(
    emu: RunningEmulator,
) -> None:
    jail = jail_for(emu.state)
    if not jail.cgroups.active and os.geteuid() == 0:
        pytest.skip("no writable cgroup here, and RLIMIT_NPROC does not bind root")
    url = ws_url(emu, cmd=["python3", "-c", BOMB], stdin=True)
    async with emu.http.ws_connect(url, headers=emu.auth) as bomb:
        line = await read_until(bomb, b"\n", timeout=60)
        ok, failed = (int(x) for x in line[1:].split())
        assert ok < 64 and failed > 0, (ok, failed)
        # The bomb's sleeps are alive; another sprite works at normal speed.
        other = ws_url(emu, cmd=["sh", "-c", "echo ok"]).replace(
            f"/sprites/{SPRITE}/", f"/sprites/{NEIGHBOUR}/"
        )
        started = time.monotonic()
        async with emu.http.ws_connect(other, headers=emu.auth) as ws:
            assert b"ok" in await read_until(ws, b"ok", timeout=20)
        assert time.monotonic() - started < 10
        # And so does the bombed sprite once its processes are gone.
        await bomb.send_bytes(b"\x04")
        await bomb.close()
    for _ in range(100):
        _code, out, _ = await sh(emu, "echo alive")
        if out == "alive\n":
            break
        await asyncio.sleep(0.1)
    assert out == "alive\n"


async def test_memory_limit(emu: RunningEmulator) -> None:
    hog = (
        "import sys\n"
        "blocks = []\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        blocks.append(bytearray(16 << 20))\n"
        "    print('allocated 1 GiB')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    run = await run_ws(emu, ["python3", "-c", hog], timeout=60)
    # Either the allocation fails (RLIMIT_DATA) or the kernel kills it (cgroup).
    assert run.stdout != b"allocated 1 GiB\n", run.stdout
    assert run.stdout == b"MemoryError\n" or run.exit_text == 137, (run.stdout, run.exit_text)


# -- the network ---------------------------------------------------------------

CONNECT = (
    "import errno, socket, sys\n"
    "for host in sys.argv[2:]:\n"
    "    try:\n"
    "        socket.create_connection((host, int(sys.argv[1])), timeout=3).close()\n"
    "        print(host, 'connected')\n"
    "    except OSError as e:\n"
    "        print(host, errno.errorcode.get(e.errno, e.errno))\n"
)
"""Prints ``<host> connected`` or ``<host> <errno name>`` for each host given."""

SERVE = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "conn, _ = s.accept()\n"
    "while data := conn.recv(65536):\n"
    "    conn.sendall(data.upper())\n"
)
"""Listens on ``argv[1]:argv[2]``, prints the port, upper-cases what one connection sends."""


def needs_own_network(emu: RunningEmulator) -> None:
    if not jail_for(emu.state).own_networks:
        pytest.skip("slirp4netns is not installed: sprites share the host's network")


@pytest.fixture
async def host_listener() -> AsyncIterator[int]:
    """A TCP server on the host's 127.0.0.1, as a developer's database would be."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def sprite_ws(emu: RunningEmulator, sprite: str, cmd: list[str], **params: object) -> str:
    return ws_url(emu, cmd=cmd, **params).replace(f"/sprites/{SPRITE}/", f"/sprites/{sprite}/")


async def test_host_loopback_is_out_of_reach(emu: RunningEmulator, host_listener: int) -> None:
    needs_own_network(emu)
    # 10.0.2.2 is slirp4netns's alias for the host, refused with --disable-host-loopback.
    run = await run_ws(
        emu, ["python3", "-c", CONNECT, str(host_listener), "127.0.0.1", "10.0.2.2"], timeout=30
    )
    results = dict(line.split() for line in run.stdout.decode().splitlines())
    assert results.keys() == {"127.0.0.1", "10.0.2.2"}
    assert "connected" not in results.values(), results
    # Nor the emulator's own API.
    api_port = emu.url.rsplit(":", 1)[1]
    run = await run_ws(emu, ["python3", "-c", CONNECT, api_port, "127.0.0.1"], timeout=30)
    assert run.stdout.split()[1] != b"connected", run.stdout


async def test_ports_bound_in_a_sprite_are_not_the_hosts(emu: RunningEmulator) -> None:
    needs_own_network(emu)
    # As root the host's port 80 can be checked; otherwise any port shows the same.
    port = 80 if os.geteuid() == 0 else 18080
    url = ws_url(emu, cmd=["python3", "-c", SERVE, "0.0.0.0", str(port)], stdin=True)
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        line = await read_until(ws, b"\n", timeout=30)
        assert int(line[1:]) == port
        # The same port is still free on the host: the sprite bound its own.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("0.0.0.0", port))
        await ws.close()


async def test_a_sprites_commands_share_its_network_but_neighbours_do_not(
    emu: RunningEmulator,
) -> None:
    needs_own_network(emu)
    url = ws_url(emu, cmd=["python3", "-c", SERVE, "127.0.0.1", "0"], stdin=True)
    async with emu.http.ws_connect(url, headers=emu.auth) as server:
        port = (await read_until(server, b"\n", timeout=30))[1:].strip().decode()
        mine = await run_ws(emu, ["python3", "-c", CONNECT, port, "127.0.0.1"], timeout=30)
        assert mine.stdout == b"127.0.0.1 connected\n"
        other = sprite_ws(emu, NEIGHBOUR, ["python3", "-c", CONNECT, port, "127.0.0.1"])
        async with emu.http.ws_connect(other, headers=emu.auth) as ws:
            out = await read_until(ws, b"\n", timeout=30)
        assert b"connected" not in out, out
        await server.close()


async def test_the_proxy_reaches_a_server_inside_the_sprite(emu: RunningEmulator) -> None:
    needs_own_network(emu)
    url = ws_url(emu, cmd=["python3", "-c", SERVE, "127.0.0.1", "0"], stdin=True)
    async with emu.http.ws_connect(url, headers=emu.auth) as server:
        port = int((await read_until(server, b"\n", timeout=30))[1:])
        proxy = f"{emu.url}/v1/sprites/{SPRITE}/proxy"
        async with emu.http.ws_connect(proxy, headers=emu.auth) as ws:
            await ws.send_json({"host": "localhost", "port": port})
            assert (await ws.receive_json(timeout=10))["status"] == "connected"
            await ws.send_bytes(b"hello")
            msg = await ws.receive(timeout=10)
            assert msg.data == b"HELLO"
        await server.close()


async def test_deleting_a_sprite_releases_its_network_and_cgroups(emu: RunningEmulator) -> None:
    status, _ = await emu.api("POST", "/v1/sprites", json={"name": "doomed"})
    assert status in (200, 201)
    url = ws_url(emu, cmd=["true"]).replace(f"/sprites/{SPRITE}/", "/sprites/doomed/")
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        async for _ in ws:
            pass
    jail = jail_for(emu.state)
    network = jail._networks.get("doomed")
    cgroups = [Path(f).parent for f in jail.cgroups.procs_files("doomed")]
    if network is None and not cgroups:
        pytest.skip("neither a sprite network nor cgroups here")
    assert (network is not None) == jail.own_networks
    status, _ = await emu.api("DELETE", "/v1/sprites/doomed")
    assert status == 204
    assert "doomed" not in jail._networks
    if network is not None:
        assert network.holder.returncode is not None
        assert network.slirp.returncode is not None
    for d in cgroups:
        assert not d.exists()
