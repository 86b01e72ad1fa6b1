"""Inline executor: answers a few synthetic commands without spawning processes.

Enabled by ``EmulatorConfig.inline_exec`` (for benchmarks, where process
start-up would dominate). The wire output is exactly what the real command
produces through pipes; anything not recognised here falls through to real
processes. TTY sessions always use real processes (line discipline, echo).

Recognised: ``echo ARGS...`` (with an optional leading ``-n``), ``true``,
``false``, ``cat`` (stdin back to stdout until EOF), ``exit K`` and
``sh -c "exit K"`` (also bash/dash), ``sleep S``, ``head -c N /dev/zero``.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
import signal
from collections.abc import Awaitable, Callable

from ._framing import STREAM_STDOUT
from ._procs import OutputItem, ProcSpec

Program = Callable[["InlineProcess"], Awaitable[int]]

_CHUNK = 65536
_EXIT_SCRIPT = re.compile(r"\s*exit(?:\s+(\d+))?\s*;?\s*")
_SHELLS = {"sh", "bash", "dash"}
_SIMPLE_DIRS = ("", "/bin", "/usr/bin")


def _name(arg0: str) -> str | None:
    """Command name if ``arg0`` is a bare name or lives in /bin or /usr/bin."""
    head, base = posixpath.split(arg0)
    return base if head in _SIMPLE_DIRS else None


def match_inline(spec: ProcSpec) -> Program | None:
    """The synthetic program for ``spec``, or None to run a real process."""
    if spec.tty or not spec.argv or spec.path != spec.argv[0]:
        return None
    name = _name(spec.argv[0])
    args = spec.argv[1:]
    if name == "echo":
        return _echo(args)
    if name in ("true", "false") and not args:
        code = 0 if name == "true" else 1
        return lambda proc: _const(code)
    if name == "cat" and not args:
        return _cat
    if spec.argv[0] == "exit" and len(args) <= 1:
        return _exit_code(args[0] if args else "0")
    if name in _SHELLS and len(args) == 2 and args[0] == "-c":
        m = _EXIT_SCRIPT.fullmatch(args[1])
        if m:
            return _exit_code(m.group(1) or "0")
    if name == "sleep" and len(args) == 1:
        return _sleep(args[0])
    if name == "head" and len(args) == 3 and args[0] == "-c" and args[2] == "/dev/zero":
        return _zeros(int(args[1])) if args[1].isdigit() else None
    return None


def _echo(args: list[str]) -> Program | None:
    newline = True
    if args and args[0] == "-n":
        newline = False
        args = args[1:]
    if args and (re.fullmatch(r"-[neE]+", args[0]) or args[0] in ("--help", "--version")):
        return None  # option handling we do not imitate: let coreutils answer
    text = (" ".join(args) + ("\n" if newline else "")).encode()

    async def run(proc: InlineProcess) -> int:
        if text:
            await proc.output.put((STREAM_STDOUT, text))
        return 0

    return run


async def _const(code: int) -> int:
    return code


async def _cat(proc: InlineProcess) -> int:
    while True:
        data = await proc.stdin_queue.get()
        if data is None:
            return 0
        await proc.output.put((STREAM_STDOUT, data))


def _exit_code(text: str) -> Program | None:
    if not text.isdigit():
        return None
    code = int(text) & 0xFF
    return lambda proc: _const(code)


def _sleep(text: str) -> Program | None:
    try:
        seconds = float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        return None
    if seconds < 0:
        return None

    async def run(proc: InlineProcess) -> int:
        await asyncio.sleep(seconds)
        return 0

    return run


def _zeros(count: int) -> Program:
    async def run(proc: InlineProcess) -> int:
        chunk = bytes(_CHUNK)
        left = count
        while left > 0:
            n = min(left, _CHUNK)
            # The bounded output queue plus the awaited WebSocket send is the backpressure.
            await proc.output.put((STREAM_STDOUT, chunk if n == _CHUNK else chunk[:n]))
            left -= n
        return 0

    return run


_IGNORED = {signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG, signal.SIGCONT}


class InlineProcess:
    """A :class:`~sprites_async.emulator._procs.ProcessLike` backed by a coroutine."""

    def __init__(self, pid: int, program: Program, *, stdin: bool) -> None:
        self.pid = pid
        self.output: asyncio.Queue[OutputItem] = asyncio.Queue(8)
        self.stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stdin_open = stdin
        self._signal: int | None = None
        self._code: int | None = None
        self._done = asyncio.get_running_loop().create_future()
        if not stdin:
            self.stdin_queue.put_nowait(None)
        self._task = asyncio.ensure_future(self._run(program))

    async def _run(self, program: Program) -> None:
        try:
            code = await program(self)
        except asyncio.CancelledError:
            code = 128 + (self._signal or signal.SIGKILL)
        self._code = code
        self._done.set_result(code)
        await self.output.put(None)

    async def write_stdin(self, data: bytes) -> None:
        """Queue stdin for ``cat``; dropped once closed."""
        if self._stdin_open and data and not self._done.done():
            self.stdin_queue.put_nowait(data)

    def close_stdin(self) -> None:
        """EOF for ``cat``."""
        if self._stdin_open:
            self._stdin_open = False
            self.stdin_queue.put_nowait(None)

    def resize(self, cols: int, rows: int) -> None:
        """No terminal, nothing to do."""

    async def send_signal(self, sig: int) -> bool:
        """Default signal actions: everything but the ignored ones terminates."""
        if self._done.done():
            return False
        if sig in _IGNORED or sig == 0:
            return True
        self._signal = sig
        self._task.cancel()
        return True

    def kill(self) -> None:
        """As SIGKILL."""
        if not self._done.done():
            self._signal = signal.SIGKILL
            self._task.cancel()

    async def wait(self) -> int:
        """The exit byte."""
        code: int = await asyncio.shield(self._done)
        return code

    async def terminate(self) -> None:
        """Stop the program (as SIGKILL) and wait for its task."""
        if not self._task.done():
            self._signal = self._signal or signal.SIGKILL
            self._task.cancel()
            while not self._task.done():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.output.get_nowait()
                await asyncio.sleep(0)
        await asyncio.wait({self._task})
