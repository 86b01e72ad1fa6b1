"""A code-execution tool for an LLM agent: one sprite per conversation, no framework needed.

    python examples/agent_tool.py     # a scripted conversation against the tool

An agent framework registers :data:`TOOL_SPEC` (a JSON-schema function
description, the shape most frameworks take) and, when the model calls the
tool, awaits ``tool.call(conversation_id, arguments)``, which answers the text
to give back to the model. Everything around it is bounded and undoable:

* **One sprite per conversation**, made on its first call and deleted by
  ``tool.end(conversation_id)`` (or ``tool.aclose()`` / leaving ``async with``
  for all of them): state persists between the calls of one conversation and
  never leaks into another.
* **Files through the filesystem API**: ``files`` (path -> text, relative to
  the work folder) and ``code`` (written to ``main.py``) are uploaded, not
  pasted into a shell command, so nothing needs quoting.
* **Checkpoint before each run, restore on failure**: a run that exits
  non-zero, times out or breaks leaves the sprite as it was before the call
  (files written by the failed run included), so the model can retry from a
  known state.
* **Bounded time and output**: ``timeout`` is capped at
  :attr:`Limits.max_timeout`; a command still running then is killed. At most
  :attr:`Limits.max_output` bytes of each stream are kept (its first and last
  halves), the rest counted.
  Exit codes are reported as the sprite gave them, and as unknown when it did
  not.

Without SPRITES_TOKEN it runs against a local emulator (see ``_common.py``).
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from _common import connect, note, run

from sprites_async import CommandTimeoutError, Sprite, SpritesClient, SpritesError
from sprites_async.fleet import CreationLimiter, unique_name

WORKDIR = "/home/sprite/work"

TOOL_SPEC: dict[str, Any] = {
    "name": "run_code",
    "description": (
        "Run code in this conversation's private Linux sandbox (Python 3, a POSIX shell). "
        "Files persist between calls; a call that fails (non-zero exit, timeout) is rolled "
        "back, as if it had not happened. Give `code` (Python, saved as main.py and run), "
        "or `command`, plus any `files` to write first."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python source, run as main.py"},
            "command": {
                "type": "array",
                "items": {"type": "string"},
                "description": "argv to run instead of main.py (no shell unless you name one)",
            },
            "files": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "relative path -> text, written before the run",
            },
            "timeout": {"type": "number", "description": "seconds (capped)"},
        },
    },
}


class ToolInputError(ValueError):
    """The model's arguments are unusable; the message is meant for the model."""


@dataclass(frozen=True)
class Limits:
    """What one call may use."""

    default_timeout: float = 30.0
    max_timeout: float = 120.0
    max_output: int = 16 * 1024
    """Bytes kept per stream (stdout, stderr)."""
    max_files: int = 50
    max_file_bytes: int = 1 << 20


@dataclass(frozen=True)
class RunOutcome:
    """What one call did."""

    ok: bool
    exit_code: int | None
    """None when the command did not report one (timed out, connection lost)."""
    stdout: str = ""
    stderr: str = ""
    dropped: int = 0
    """Output bytes beyond the limit, not kept."""
    timed_out: bool = False
    rolled_back: bool = False
    error: str | None = None
    seconds: float = 0.0

    def to_text(self) -> str:
        """The answer for the model: short, and explicit about anything unusual."""
        head = "exit code unknown" if self.exit_code is None else f"exit code {self.exit_code}"
        if self.timed_out:
            head = f"timed out after {self.seconds:.0f} s and was killed"
        parts = [f"[{head}]"]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout.rstrip()}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr.rstrip()}")
        if self.dropped:
            parts.append(f"[{self.dropped} more bytes of output were cut]")
        if self.error:
            parts.append(f"[error: {self.error}]")
        if self.rolled_back:
            parts.append("[the sandbox was restored to its state before this call]")
        return "\n".join(parts)


@dataclass
class _Conversation:
    sprite: Sprite
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runs: int = 0


class CodeExecutionTool:
    """The tool: ``async with CodeExecutionTool(client) as tool: await tool.call(cid, args)``."""

    def __init__(
        self,
        client: SpritesClient,
        *,
        prefix: str = "agent-",
        limits: Limits | None = None,
        limiter: CreationLimiter | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.limits = limits or Limits()
        self.limiter = limiter or CreationLimiter.for_client(client)
        self._conversations: dict[str, _Conversation] = {}
        self._creating: dict[str, asyncio.Lock] = {}

    async def __aenter__(self) -> CodeExecutionTool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def sprite_of(self, conversation_id: str) -> Sprite | None:
        """The conversation's sprite, if it has one yet."""
        conv = self._conversations.get(conversation_id)
        return conv.sprite if conv else None

    async def call(self, conversation_id: str, arguments: Mapping[str, Any]) -> str:
        """The tool as the framework calls it: the model's arguments in, text for the model out.

        Raises:
            SpritesError: The sandbox itself failed (not the model's code); in
                particular a failed restore, which the operator must see.
        """
        try:
            outcome = await self.run(
                conversation_id,
                code=arguments.get("code"),
                command=arguments.get("command"),
                files=arguments.get("files"),
                timeout=arguments.get("timeout"),
            )
        except ToolInputError as exc:
            return f"[invalid arguments: {exc}]"
        return outcome.to_text()

    async def run(
        self,
        conversation_id: str,
        *,
        code: str | None = None,
        command: list[str] | None = None,
        files: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunOutcome:
        """Write the files, run the command in the conversation's sprite, roll back on failure.

        Raises:
            ToolInputError: Unusable arguments (nothing was done).
            SpritesError: The sandbox could not be made, checkpointed or restored.
        """
        uploads, argv, limit = self._check(code, command, files, timeout)
        conv = await self._conversation(conversation_id)
        async with conv.lock:  # one call at a time per conversation: checkpoints are linear
            conv.runs += 1
            sprite = conv.sprite
            checkpoint = await sprite.checkpoints.create(comment=f"before run {conv.runs}")
            started = time.monotonic()
            try:
                fs = sprite.fs(WORKDIR)
                for path, text in uploads.items():
                    await (fs / path).write_text(text)
                result = await sprite.exec(
                    *argv, cwd=WORKDIR, timeout=limit, max_output=self.limits.max_output
                )
            except CommandTimeoutError:
                outcome = RunOutcome(ok=False, exit_code=None, timed_out=True)
            except SpritesError as exc:
                outcome = RunOutcome(ok=False, exit_code=None, error=str(exc))
            else:
                outcome = RunOutcome(
                    ok=result.ok,
                    exit_code=result.exit_code,
                    stdout=result.stdout.decode(errors="replace"),
                    stderr=result.stderr.decode(errors="replace"),
                    dropped=result.stdout_dropped + result.stderr_dropped,
                )
            seconds = time.monotonic() - started
            if outcome.ok:
                return replace(outcome, seconds=seconds)
            # A failed run is undone, whatever it wrote; a failing restore is raised:
            # the conversation's state would otherwise be silently half-changed.
            await sprite.checkpoints.restore(checkpoint.id)
            return replace(outcome, seconds=seconds, rolled_back=True)

    async def end(self, conversation_id: str) -> None:
        """The conversation is over: delete its sprite (and its checkpoints)."""
        conv = self._conversations.pop(conversation_id, None)
        self._creating.pop(conversation_id, None)
        if conv is not None:
            async with conv.lock:  # let a call in progress finish first
                await self.limiter.delete(self.client, conv.sprite.name)

    async def aclose(self) -> None:
        """End every conversation (each sprite is deleted even if another deletion fails)."""
        results = await asyncio.gather(
            *(self.end(cid) for cid in list(self._conversations)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _conversation(self, conversation_id: str) -> _Conversation:
        creating = self._creating.setdefault(conversation_id, asyncio.Lock())
        async with creating:  # two first calls at once make one sprite
            conv = self._conversations.get(conversation_id)
            if conv is None:
                name = unique_name(self.prefix)
                await self.limiter.create(self.client, name, labels=["agent-tool"])
                sprite = self.client.sprite(name)
                try:
                    await sprite.fs(WORKDIR).path().mkdir(parents=True, exist_ok=True)
                except BaseException:
                    await self.limiter.delete(self.client, name)
                    raise
                conv = self._conversations[conversation_id] = _Conversation(sprite)
            return conv

    def _check(
        self,
        code: object,
        command: object,
        files: object,
        timeout: object,
    ) -> tuple[dict[str, str], list[str], float]:
        """The model's arguments, checked; nothing reaches the sprite before this passes."""
        uploads: dict[str, str] = {}
        if files is not None:
            if not isinstance(files, Mapping) or len(files) > self.limits.max_files:
                raise ToolInputError(f"files must map at most {self.limits.max_files} paths")
            for path, text in files.items():
                uploads[_relative(path)] = _text(text, f"files[{path!r}]", self.limits)
        if code is not None:
            uploads["main.py"] = _text(code, "code", self.limits)
        if command is None:
            if code is None:
                raise ToolInputError("give code or command")
            argv = ["python3", "main.py"]
        elif (
            isinstance(command, list)
            and command
            and all(isinstance(a, str) and "\0" not in a for a in command)
        ):
            argv = list(command)
        else:
            raise ToolInputError("command must be a non-empty list of strings")
        if timeout is None:
            limit = self.limits.default_timeout
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
            limit = min(float(timeout), self.limits.max_timeout)
        else:
            raise ToolInputError("timeout must be a positive number of seconds")
        return uploads, argv, limit


def _relative(path: object) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ToolInputError(f"bad file path {path!r}")
    clean = posixpath.normpath(path)
    if clean.startswith(("/", "..")) or clean == ".":
        raise ToolInputError(f"file paths stay inside the work folder: {path!r}")
    return clean


def _text(value: object, what: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ToolInputError(f"{what} must be text")
    if len(value.encode()) > limits.max_file_bytes:
        raise ToolInputError(f"{what} is larger than {limits.max_file_bytes} bytes")
    return value


# ------------------------------------------------------------------ demo

CONVERSATION: list[tuple[str, dict[str, Any]]] = [
    (
        "write a data file and sum it",
        {
            "files": {"data/numbers.txt": "1\n2\n3\n"},
            "code": "print(sum(int(x) for x in open('data/numbers.txt')))",
        },
    ),
    (
        "a buggy step: deletes the data, then crashes",
        {
            "code": "import os\nos.remove('data/numbers.txt')\nraise SystemExit('oops')",
        },
    ),
    ("the data is back", {"command": ["cat", "data/numbers.txt"]}),
    ("a run that hangs", {"code": "import time\ntime.sleep(60)", "timeout": 2}),
    ("too much output", {"code": "print('x' * 100_000)"}),
]


async def main() -> int:
    async with (
        connect() as session,
        CodeExecutionTool(
            session.client, limiter=session.limiter, limits=Limits(max_output=200)
        ) as tool,
    ):
        for title, arguments in CONVERSATION:
            print(f"--- model: {title}\n    call run_code({arguments})", flush=True)
            answer = await tool.call("demo-conversation", arguments)
            print("    " + answer.replace("\n", "\n    "), flush=True)
        sprite = tool.sprite_of("demo-conversation")
        await tool.end("demo-conversation")
        note(f"conversation over: sprite {sprite.name if sprite else '?'} deleted")
    return 0


if __name__ == "__main__":
    run(main)
