"""``python -m sprites_async`` as a real process: entry point, bytes, exit codes, a real TTY."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sprites_async.emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(exit_linger=0.0) as emulator:
        yield emulator


def env_for(emu: Emulator | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPRITES_TOKEN", "SPRITE_TOKEN")}
    env.pop("SPRITES_API_URL", None)
    if emu is not None:
        env["SPRITES_API_URL"] = emu.url
        env["SPRITES_TOKEN"] = emu.token
    return env


def cli(
    emu: Emulator | None, *argv: str, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sprites_async", *argv],
        input=stdin,
        capture_output=True,
        env=env_for(emu),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_entry_point_exit_codes_and_json(emu: Emulator, tmp_path: Path) -> None:
    assert cli(emu, "create", "proc-1").returncode == 0
    listed = cli(emu, "list", "--json")
    assert listed.returncode == 0
    assert [s["name"] for s in json.loads(listed.stdout)] == ["proc-1"]
    missing = cli(emu, "get", "nope")
    assert missing.returncode == 1 and b"404" in missing.stderr
    assert cli(emu, "get", "--bogus").returncode == 2
    no_token = cli(None, "list", cwd=tmp_path)
    assert no_token.returncode == 2 and b"--emulator" in no_token.stderr


def test_exec_passes_bytes_and_stdin_through(emu: Emulator) -> None:
    assert cli(emu, "create", "bytes").returncode == 0
    raw = bytes(range(256)) * 4
    # Not UTF-8, on purpose: the output is written as the bytes that arrived.
    done = cli(emu, "exec", "-i", "bytes", "--", "cat", stdin=raw)
    assert done.returncode == 0
    assert done.stdout == raw
    split = cli(emu, "exec", "bytes", "--", "sh", "-c", "printf 'a\\377'; printf 'b' >&2; exit 42")
    assert (split.returncode, split.stdout, split.stderr) == (42, b"a\xff", b"b")


def test_unreachable_api_is_exit_3(tmp_path: Path) -> None:
    env = env_for(None)
    env["SPRITES_TOKEN"] = "org/1/tok/secret"
    env["SPRITES_API_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    done = subprocess.run(
        [sys.executable, "-m", "sprites_async", "list"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr


def _read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} never came; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_console_raw_mode_resize_and_restore(emu: Emulator) -> None:
    assert cli(emu, "create", "tty").returncode == 0
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    before = termios.tcgetattr(slave)
    script = 'stty size; read line; stty size; echo "got:$line"; exit 3'
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", "console", "tty", "-c", script],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_for(emu),
    )
    try:
        seen = _read_until(master, b"30 100")
        # While the console runs, our terminal is in raw mode.
        assert not termios.tcgetattr(slave)[3] & termios.ICANON
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        time.sleep(0.5)  # the resize message travels before the keystrokes
        os.write(master, b"hello\r")
        seen += _read_until(master, b"got:hello")
        assert proc.wait(timeout=30) == 3
        # The terminal is exactly as it was before.
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    assert b"40 120" in seen


def test_console_refuses_without_terminal(emu: Emulator) -> None:
    assert cli(emu, "create", "notty").returncode == 0
    done = cli(emu, "console", "notty")
    assert done.returncode == 2 and b"terminal" in done.stderr


async def test_forward_relays_a_port() -> None:
    import asyncio
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        remote_port = probe.getsockname()[1]
    server = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {remote_port}))\n"
        "s.listen()\n"
        "print('listening', flush=True)\n"
        "c, _ = s.accept()\n"
        "c.sendall(c.recv(100).upper())\n"
        "c.close()\n"
    )
    async with Emulator(exit_linger=0.0) as emu, emu.client() as client:
        await client.sprites.create("fwd")
        sprite = client.sprite("fwd")
        async with sprite.process("python3", "-c", server) as remote:
            assert b"listening" in await remote.stdout.__anext__()
            cli_proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sprites_async",
                "-s",
                "fwd",
                "forward",
                f"0:{remote_port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env_for(emu),
            )
            try:
                line = (await asyncio.wait_for(cli_proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]
                assert line.startswith("forwarding 127.0.0.1:"), line
                local_port = int(line.split()[1].rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
                writer.write(b"hello through the tunnel")
                await writer.drain()
                assert await asyncio.wait_for(reader.read(100), 30) == b"HELLO THROUGH THE TUNNEL"
                writer.close()
                await writer.wait_closed()
                cli_proc.send_signal(signal.SIGINT)
                _, err = await asyncio.wait_for(cli_proc.communicate(), 30)
                assert cli_proc.returncode == 0, err
                assert b"1 connection(s)" in err
            finally:
                if cli_proc.returncode is None:
                    cli_proc.kill()
                    await cli_proc.wait()
            assert await remote.wait() == 0


def test_exec_forwards_ctrl_c_to_the_command(emu: Emulator) -> None:
    assert cli(emu, "create", "intr").returncode == 0
    script = 'trap "echo got-int; exit 5" INT; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", "exec", "intr", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(emu),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, err
    assert out == b"got-int\n"


def test_console_restores_terminal_when_killed_with_sigterm(emu: Emulator) -> None:
    assert cli(emu, "create", "term").returncode == 0
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", "console", "term", "-c", "echo up; sleep 60"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_for(emu),
    )
    try:
        _read_until(master, b"up")
        assert termios.tcgetattr(slave) != before  # raw mode while it runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_exec_tty_interactive_on_a_terminal(emu: Emulator) -> None:
    assert cli(emu, "create", "ttyexec").returncode == 0
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 70, 0, 0))
    before = termios.tcgetattr(slave)
    script = 'stty size; read x; echo "got:$x"; exit 4'
    argv = ["exec", "-t", "-i", "ttyexec", "--", "sh", "-c", script]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_for(emu),
    )
    try:
        seen = _read_until(master, b"20 70")
        os.write(master, b"typed\r")
        seen += _read_until(master, b"got:typed")
        assert proc.wait(timeout=30) == 4
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def _sessions(emu: Emulator, name: str) -> list[str]:
    async def listed() -> list[str]:
        async with emu.client() as client:
            return [s.command for s in await client.sprite(name).sessions.list()]

    return asyncio.run(listed())


def _no_sessions_left(emu: Emulator, name: str, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while _sessions(emu, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_exec_forwards_sigterm_and_leaves_nothing_running(emu: Emulator) -> None:
    # `timeout 2 sprites-async exec ...` sends TERM: the remote command must get
    # it (and end) instead of running on after this process died.
    assert cli(emu, "create", "sigterm").returncode == 0
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", "exec", "sigterm", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(emu),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 7, err
    assert out == b"got-term\n"
    assert _no_sessions_left(emu, "sigterm")


@pytest.mark.parametrize(
    "argv",
    [
        ("list",),
        ("exec", "pipe", "--", "sh", "-c", "seq 1 200000"),
        ("fs", "get", "-s", "pipe", "/home/sprite/big.txt", "-"),
    ],
    ids=["list", "exec", "fs-get"],
)
def test_a_closed_stdout_ends_quietly_like_cat(emu: Emulator, argv: tuple[str, ...]) -> None:
    emu.seed(1500)  # more output than a pipe holds: it cannot all fit before the close
    assert cli(emu, "create", "pipe").returncode == 0
    fill = cli(emu, "exec", "pipe", "--", "sh", "-c", "seq 1 200000 > /home/sprite/big.txt")
    assert fill.returncode == 0, fill.stderr
    reader_r, reader_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", *argv],
        stdout=reader_w,
        stderr=subprocess.PIPE,
        env=env_for(emu),
    )
    os.close(reader_w)
    try:
        with os.fdopen(reader_r, "rb") as reader:
            assert reader.read(1)  # like `head -c 1`: read a little, then leave
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert err == b""  # no traceback, no "Exception ignored" at exit
    assert proc.returncode == -signal.SIGPIPE  # died of SIGPIPE, as `cat` does
    if argv[0] == "exec":
        assert _no_sessions_left(emu, "pipe")
