"""Who a sandboxed sprite is on the host (issue 18, the root-run emulator).

Started by root, a user namespace maps its user to the host's uid 0: the
sprite user was then root without capabilities, the *owner* of every
root-owned inode it could reach (the device nodes bubblewrap binds into
``/dev``, anything bound read-write), and uid 0 had it ever left its
namespaces. It must be an unprivileged host user instead: the emulator's own
user, or ``SANDBOX_HOST_ID`` when the emulator runs as root.

No probe here can damage the host: each operation tried on a host file would
leave it as it is even if it were allowed (the same mode, the same times, the
same owner), and the host's view of those files is compared before and after.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import descendants, proc_table, sandbox_available
from sprites_async.emulator._sandbox import SANDBOX_HOST_ID, SPRITE_UID, sprite_host_ids
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    assert_clean,
    next_text,
    private_fds,
    read_until,
    run_ws,
    ws_url,
)

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")

AS_ROOT = os.geteuid() == 0
OVERFLOW = 65534
"""What an id without a mapping in the sprite's user namespace reads as."""
DEVICES = [d for d in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom") if os.path.exists(d)]

PROBE = r"""
import errno, os, sys
for path in sys.argv[1:]:
    st = os.stat(path)
    out = [path, str(st.st_uid), str(st.st_gid)]
    calls = [
        ("chmod", lambda: os.chmod(path, st.st_mode & 0o7777)),
        ("utime", lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))),
    ]
    if st.st_uid == os.getuid():
        # Only an owner it believes its own: chown to it changes nothing.
        calls.append(("chown", lambda: os.chown(path, st.st_uid, st.st_gid)))
    for name, call in calls:
        try:
            call()
            out.append(name + "=ok")
        except OSError as e:
            out.append(name + "=" + errno.errorcode[e.errno])
    print(" ".join(out))
"""
"""Per path: its owner as the sprite sees it, then whether chmod/utime/chown to what it already is
are allowed (only the owner may set a mode or explicit times)."""


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.sandbox = "required"
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


async def sh(emu: RunningEmulator, script: str) -> tuple[int | None, str, str]:
    run = await run_ws(emu, ["sh", "-c", script], timeout=30.0)
    return run.exit_text, run.stdout.decode(), run.stderr.decode()


def host_view(paths: list[str]) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for p in paths:
        st = os.stat(p)
        out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


async def test_the_hosts_device_nodes_are_not_the_sprites(emu: RunningEmulator) -> None:
    before = host_view(DEVICES)
    assert all(uid == 0 for _, uid, _, _ in before.values())
    run = await run_ws(emu, ["python3", "-c", PROBE, *DEVICES], timeout=30)
    assert run.exit_text == 0, run.stderr
    for line in run.stdout.decode().splitlines():
        _path, uid, gid, *results = line.split()
        # Root's files belong to nobody the sprite knows, and it may not touch them.
        assert (int(uid), int(gid)) == (OVERFLOW, OVERFLOW), line
        assert results == ["chmod=EPERM", "utime=EPERM"], line
    assert len(run.stdout.splitlines()) == len(DEVICES)
    assert host_view(DEVICES) == before


async def test_root_owned_files_are_nobodys_and_root_has_no_group(emu: RunningEmulator) -> None:
    code, out, err = await sh(
        emu,
        "stat -c '%n %u %g' /usr /usr/bin/env /etc/passwd /etc/hostname; "
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status",
    )
    assert code == 0, err
    lines = out.splitlines()
    for line in lines[:4]:
        assert line.split()[1:] == [str(OVERFLOW), str(OVERFLOW)], line
    status = dict(line.split(":", 1) for line in lines[4:])
    assert status["Uid"].split() == [str(SPRITE_UID)] * 4
    assert status["Gid"].split() == [str(SPRITE_UID)] * 4
    assert status["Groups"].split() == []


@pytest.mark.skipif(not AS_ROOT, reason="the emulator's own user is the sprite's when not root")
async def test_sprite_processes_are_an_unprivileged_host_user(emu: RunningEmulator) -> None:
    assert sprite_host_ids() == (SANDBOX_HOST_ID, SANDBOX_HOST_ID)
    url = ws_url(emu, cmd=["sh", "-c", "echo ready; exec cat"], stdin=True)
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        info = await next_text(ws, timeout=30)
        while info.get("type") != "session_info":
            info = await next_text(ws, timeout=30)
        await read_until(ws, b"ready", timeout=30)
        leader = int(info["session_id"])
        pids = [leader, *descendants(proc_table(), leader)]
        seen = {}
        for pid in pids:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            seen[pid] = (fields["Uid"].split(), fields["Gid"].split(), fields["Groups"].split())
        await ws.close()
    assert len(seen) >= 2, seen  # bubblewrap and the command, at least
    expected = ([str(SANDBOX_HOST_ID)] * 4, [str(SANDBOX_HOST_ID)] * 4, [])
    assert all(v == expected for v in seen.values()), seen


async def test_what_the_emulator_makes_for_the_sprite_is_the_sprites(emu: RunningEmulator) -> None:
    host_uid, host_gid = sprite_host_ids()
    base = f"{emu.url}/v1/sprites/{SPRITE}/fs"
    for path in ("/home/sprite/up.txt", "/data/new/deep.txt"):
        async with emu.http.put(
            f"{base}/write", params={"path": path}, data=b"x\n", headers=emu.auth
        ) as resp:
            assert resp.status == 200, await resp.text()
    status, _ = await emu.api(
        "POST",
        f"/v1/sprites/{SPRITE}/fs/copy",
        json={"source": "/data", "dest": "/home/sprite/data-copy", "recursive": True},
    )
    assert status == 200
    root = emu.state.sprite_root(SPRITE)
    made = ["home/sprite", "home/sprite/up.txt", "data", "data/new", "data/new/deep.txt"]
    made += ["home/sprite/data-copy", "home/sprite/data-copy/new/deep.txt"]
    for rel in made:
        st = (root / rel).lstat()
        assert (st.st_uid, st.st_gid) == (host_uid, host_gid), rel
    code, out, err = await sh(
        emu,
        "set -e; echo y >> /home/sprite/up.txt; echo y >> /data/new/deep.txt; mkdir /data/new/sub; "
        "echo y >> data-copy/new/deep.txt; touch /tmp/t; stat -c %u /data/new/sub /tmp/t",
    )
    assert code == 0, err
    assert out.split() == [str(SPRITE_UID)] * 2
    assert (root / "home/sprite/up.txt").read_text() == "x\ny\n"
    assert (root / "data/new/sub").stat().st_uid == host_uid


@pytest.mark.skipif(not AS_ROOT, reason="chown to another uid needs root")
async def test_chown_speaks_the_sprites_ids(emu: RunningEmulator) -> None:
    target = emu.state.sprite_root(SPRITE) / "home/sprite/f"
    target.write_text("x\n")
    for uid, inside, writable in ((0, OVERFLOW, False), (SPRITE_UID, SPRITE_UID, True)):
        status, body = await emu.api(
            "POST",
            f"/v1/sprites/{SPRITE}/fs/chown",
            json={"path": "/home/sprite/f", "uid": uid, "gid": uid},
        )
        assert (status, body["affected"][0]["uid"], body["affected"][0]["gid"]) == (200, uid, uid)
        host = SANDBOX_HOST_ID if uid == SPRITE_UID else 0
        assert (target.stat().st_uid, target.stat().st_gid) == (host, host)
        _code, out, _err = await sh(
            emu, "stat -c %u f; { echo y >> f; } 2>/dev/null && echo wrote || echo refused"
        )
        assert out.split() == [str(inside), "wrote" if writable else "refused"]


async def test_a_restored_sprite_is_still_writable(emu: RunningEmulator) -> None:
    for route in ("/checkpoint", "/checkpoints/v0/restore"):
        async with emu.http.post(
            f"{emu.url}/v1/sprites/{SPRITE}{route}", json={}, headers=emu.auth
        ) as resp:
            assert resp.status == 200
            await resp.read()
    code, out, err = await sh(emu, "set -e; touch /home/sprite/x /tmp/y; stat -c %u /home/sprite")
    assert code == 0, err
    assert out.split() == [str(SPRITE_UID)]
