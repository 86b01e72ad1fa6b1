"""``exec`` (stream a command's output live) and ``console`` (an interactive terminal)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import IO, TYPE_CHECKING, Any

from sprites_async._errors import SpritesConnectionError

from ._context import EXIT_INTERRUPTED, Context, Handler, UsageError
from ._layout import examples

if TYPE_CHECKING:
    from sprites_async._exec import ExecSession

__all__ = ["add_commands", "raw_terminal"]

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]

logger = logging.getLogger("sprites_async.cli")

# What `timeout(1)` exits with when the limit expires; scripts know it.
EXIT_TIMEOUT = 124

FORWARDED_SIGNALS = {signal.SIGINT: "INT", signal.SIGTERM: "TERM"}
"""Signals ``exec`` passes on to the remote command (a second one abandons it)."""


def add_commands(command: AddCommand) -> None:
    """Register ``exec`` and ``console``."""
    p = command(
        "exec",
        cmd_exec,
        "run a command in a sprite, streaming its output; exits with its status "
        "(usage: exec [NAME] -- CMD [ARG ...])",
    )
    p.add_argument("-t", "--tty", action="store_true", help="run in a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="forward this process's stdin")
    p.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument("-w", "--workdir", metavar="DIR", help="absolute working directory")
    p.add_argument("--timeout", type=float, metavar="S", help="TERM then KILL after S seconds")
    p.add_argument("name", metavar="NAME", nargs="?", help="the sprite (else --sprite or .sprite)")
    p.usage = "%(prog)s [options] [NAME] [--] CMD [ARG ...]"
    examples(
        p,
        "exec demo -- uname -a",
        "exec demo -w /tmp -e CI=1 -- sh -c 'pwd; echo $CI'",
        "exec -s demo --timeout 30 ls -la /home",
        "exec demo python3 -c 'print(6 * 7)'",
    )

    p = command("console", cmd_console, "open an interactive shell in a sprite")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument(
        "-c", "--command", metavar="CMD", help="run CMD (with sh -c) instead of a login shell"
    )
    examples(p, "console demo  # on a terminal", "console demo -c 'uname -a'  # on a terminal")


def _env(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sink(stream: IO[str]) -> Callable[[bytes], None]:
    """A writer of raw bytes to a text stream's underlying file, flushing each chunk.

    Bytes go through untouched: the command's encoding is its own business.
    """
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:

        def write(data: bytes) -> None:
            buffer.write(data)
            buffer.flush()

        return write

    def write_text(data: bytes) -> None:  # a replaced sys.stdout without a buffer
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()

    return write_text


# ------------------------------------------------------------------------ stdin


async def _stdin_chunks(fd: int) -> AsyncGenerator[bytes, None]:
    """Chunks of ``fd`` until end of file, without blocking the loop.

    Pipes, terminals and sockets are watched with the loop's reader; a
    regular file cannot be (epoll refuses it) but never blocks, so it is
    read in a worker thread.
    """
    if stat.S_ISREG(os.fstat(fd).st_mode):
        while True:
            chunk = await asyncio.to_thread(os.read, fd, 65536)
            if not chunk:
                return
            yield chunk
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            loop.remove_reader(fd)
        queue.put_nowait(chunk)

    loop.add_reader(fd, readable)
    try:
        while True:
            chunk = await queue.get()
            if not chunk:
                return
            yield chunk
    finally:
        loop.remove_reader(fd)


async def _forward_stdin(proc: ExecSession, fd: int, *, close: bool) -> None:
    chunks = _stdin_chunks(fd)
    try:
        async for chunk in chunks:
            try:
                await proc.write(chunk)
            except (BrokenPipeError, SpritesConnectionError):
                return  # the command exited or its connection ended: the reader reports it
        if close:
            with contextlib.suppress(BrokenPipeError, SpritesConnectionError):
                await proc.close_stdin()
    finally:
        await chunks.aclose()


# ------------------------------------------------------------------------- exec


async def cmd_exec(ctx: Context) -> int:
    """``exec [NAME] -- CMD ...``: the command's exit status becomes ours."""
    args = ctx.args
    client = ctx.need_client()
    sprite = client.sprite(ctx.sprite_name(args.name))
    tty = args.tty
    cols = rows = None
    if tty:
        with contextlib.suppress(OSError, ValueError):
            cols, rows = _terminal_size(sys.stdout.fileno())
    write_out = _sink(sys.stdout)
    write_err = _sink(sys.stderr)
    proc = sprite.process(
        *args.argv,
        tty=tty,
        stdin=args.interactive or tty,
        env=_env(args.env),
        cwd=args.workdir,
        cols=cols,
        rows=rows,
    )
    with contextlib.ExitStack() as terminal:
        if tty and args.interactive and os.isatty(sys.stdin.fileno()):
            # Keystrokes go to the remote terminal as typed (Ctrl-C included).
            terminal.enter_context(raw_terminal(sys.stdin.fileno()))
        return await _run_exec(ctx, proc, write_out, write_err)


async def _run_exec(
    ctx: Context,
    proc: ExecSession,
    write_out: Callable[[bytes], None],
    write_err: Callable[[bytes], None],
) -> int:
    from sprites_async._exec import OutputEvent

    args = ctx.args
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    interrupts = 0
    async with proc:

        def on_signal(name: str) -> None:
            # Like ssh: the first Ctrl-C (or TERM, from `timeout`, `kill` or a
            # supervisor) goes to the remote command, a second one gives up on
            # it (leaving the block then terminates it). Python's default for
            # TERM would kill this process and leave the command running.
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                _spawn(proc.signal(name))
            elif main_task is not None:
                main_task.cancel()

        for signum, name in FORWARDED_SIGNALS.items():
            loop.add_signal_handler(signum, on_signal, name)
        feeder = None
        if args.interactive:
            feeder = asyncio.ensure_future(
                _forward_stdin(proc, sys.stdin.fileno(), close=not args.tty)
            )
        try:
            async with _deadline(args.timeout) as expired:
                async for event in proc:
                    if isinstance(event, OutputEvent):
                        (write_out if event.stream == "stdout" else write_err)(event.data)
            if expired():
                ctx.out.note(f"sprites-async: the command did not finish within {args.timeout} s")
                await proc.terminate()
                return EXIT_TIMEOUT
            return await proc.wait()
        except asyncio.CancelledError:
            if interrupts > 1:
                return EXIT_INTERRUPTED
            raise
        finally:
            for signum in FORWARDED_SIGNALS:
                loop.remove_signal_handler(signum)
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder


@contextlib.asynccontextmanager
async def _deadline(seconds: float | None) -> AsyncIterator[Callable[[], bool]]:
    """Cancel the block after ``seconds``; yields a function telling whether that happened."""
    if seconds is None:
        yield lambda: False
        return
    task = asyncio.current_task()
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        if task is not None:
            task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, fire)
    try:
        yield lambda: fired
    except asyncio.CancelledError:
        if not fired:
            raise
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None:
            uncancel()
    finally:
        handle.cancel()


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a fire-and-forget coroutine (signal, resize) whose failure is only logged."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task[None]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("sprites-async: %s", task.exception())


# ---------------------------------------------------------------------- console


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode; always restore it on exit."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def cmd_console(ctx: Context) -> int:
    """``console [NAME]``: a login shell on a TTY; exits with the shell's status."""
    args = ctx.args
    client = ctx.need_client()
    sprite = client.sprite(ctx.sprite_name(args.name))
    fd_in = sys.stdin.fileno()
    fd_out = sys.stdout.fileno()
    if not os.isatty(fd_in):
        raise UsageError("console needs a terminal on stdin; use `exec` in scripts")
    cols, rows = _terminal_size(fd_out if os.isatty(fd_out) else fd_in)
    argv = ("sh", "-c", args.command) if args.command else ("bash", "-l")
    env = {"TERM": os.environ.get("TERM") or "xterm-256color"}
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    proc = sprite.process(*argv, tty=True, stdin=True, env=env, cols=cols, rows=rows)

    def on_resize() -> None:
        new_cols, new_rows = _terminal_size(fd_out if os.isatty(fd_out) else fd_in)
        if new_cols and new_rows:
            _spawn(_resize(proc, new_cols, new_rows))

    def on_hangup() -> None:
        # Unwind through the finally blocks, so the terminal is restored.
        if main_task is not None:
            main_task.cancel()

    with raw_terminal(fd_in):
        async with proc:
            handled = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP)
            loop.add_signal_handler(signal.SIGWINCH, on_resize)
            loop.add_signal_handler(signal.SIGTERM, on_hangup)
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
            feeder = asyncio.ensure_future(_forward_stdin(proc, fd_in, close=False))
            try:
                async for chunk in proc.stdout:
                    _write_all(fd_out, chunk)
                return await proc.wait()
            finally:
                for signum in handled:
                    loop.remove_signal_handler(signum)
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder


def _terminal_size(fd: int) -> tuple[int | None, int | None]:
    """``(columns, lines)`` of the terminal on ``fd``; None for what it does not know.

    A terminal nobody sized (a fresh pty, some CI runners) reports 0x0,
    which the server would refuse; the server's default (80x24) is better.
    """
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None, None
    return (size.columns or None), (size.lines or None)


async def _resize(proc: ExecSession, cols: int, rows: int) -> None:
    with contextlib.suppress(Exception):  # a resize racing the exit is harmless
        await proc.resize(cols, rows)
