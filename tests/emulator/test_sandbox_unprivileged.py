"""The sandbox probes with the emulator running as an ordinary user (``nobody``).

Developers run the emulator as themselves; CI runs it as root. Here a small
emulator is started as ``nobody`` through ``setpriv`` (so the test runs only
as root, and only where ``nobody`` can import the package), and the probes
of ``test_sandbox_probes`` are repeated from inside one of its sprites.
Without writable cgroups the process limit is ``RLIMIT_NPROC``, which binds a
non-root user.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import sprites_async
from sprites_async.emulator._procs import sandbox_available

NOBODY = 65534
ROOT = str(Path(sprites_async.__file__).resolve().parent.parent)

pytestmark = [
    pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed"),
]

CHILD = r"""
import asyncio, json, sys
from sprites_async.emulator import Emulator

PROBES = {
    "id": "id -u; id -un",
    "caps": "grep '^CapEff' /proc/self/status",
    "shadow": "test -e /etc/shadow && echo present || echo absent",
    "hostname": "hostname",
    "mount": "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>/dev/null && echo mounted"
    " || echo refused",
    "file": "echo x > /home/sprite/f && echo made",
}
CONNECT = (
    "import errno, socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print(errno.errorcode.get(e.errno, e.errno))\n"
)
BOMB = (
    "import subprocess\n"
    "ok = failed = 0\n"
    "procs = []\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        procs.append(subprocess.Popen(['sleep', '30']))\n"
    "        ok += 1\n"
    "    except OSError:\n"
    "        failed += 1\n"
    "print(ok, failed)\n"
    "for p in procs:\n"
    "    p.kill(); p.wait()\n"
)


async def main() -> None:
    async with Emulator(sandbox="required", exit_linger=0.0, max_processes=32) as emu:
        async with emu.client() as client:
            sprite = client.sprite(await client.sprites.create("lowly"))
            out = {"status": emu.sandbox_status, "state_dir": str(emu.state_dir)}
            for name, script in PROBES.items():
                res = await sprite.exec("sh", "-c", script, timeout=60)
                out[name] = res.stdout.decode().split()
            res = await sprite.exec("python3", "-c", CONNECT, sys.argv[1], timeout=60)
            out["host"] = res.stdout.decode().strip()
            res = await sprite.exec("python3", "-c", BOMB, timeout=120)
            out["bomb"] = [int(x) for x in res.stdout.split()]
            root = emu.state.sprite_root("lowly")
            out["owner"] = (root / "home" / "sprite" / "f").stat().st_uid
        print(json.dumps(out), flush=True)


asyncio.run(main())
"""


def child_command() -> list[str]:
    """A Python that ``nobody`` can run with this package importable, or skip."""
    site = next((p for p in sys.path if p.endswith("site-packages")), None)
    python = "/usr/bin/python3"
    if site is None or not os.access(python, os.X_OK):
        pytest.skip("no system Python for nobody to run")
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "env",
            f"PYTHONPATH={ROOT}:{site}",
            "HOME=/tmp",
            python,
            "-c",
            "import sprites_async.emulator, aiohttp, msgspec",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot import the package: {probe.stderr.decode()[-200:]}")
    return probe.args[:-1]


@pytest.fixture
async def host_listener() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_probes_as_an_unprivileged_user(host_listener: int) -> None:
    cmd = [*child_command(), CHILD, str(host_listener)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().splitlines()[-1])
    assert result["id"] == ["1000", "sprite"]
    assert result["caps"] == ["CapEff:", "0000000000000000"]
    assert result["shadow"] == ["absent"]
    assert result["hostname"] == ["lowly"]
    assert result["mount"] == ["refused"]
    assert result["file"] == ["made"]
    assert result["owner"] == NOBODY  # the emulator's user, who serves the fs API
    if "own network namespace" in result["status"]:
        assert result["host"] != "connected", result
    else:
        # Where slirp4netns cannot run for this user (/dev/net/tun is often
        # root-only in containers) the status line says the network is shared.
        assert "sprites reach the host's loopback" in result["status"], result
    ok, failed = result["bomb"]
    assert ok < 32 and failed > 0, result
