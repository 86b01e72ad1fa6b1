"""Every ``$ sprites-async ...`` example in the tool's ``--help`` texts runs as written.

Each command's and subcommand's help is parsed for its examples, and each
example runs, in order, against a fresh emulator holding the world the
examples assume: a sprite ``demo`` with checkpoints ``v1`` and ``v2``, a file
``/home/sprite/notes.txt`` (and ``notes.txt`` in the current folder), a
service ``web`` and two sprites ``ci-1``/``ci-2`` labelled ``ci``. An
example commented ``# until Ctrl-C`` runs as a process that is interrupted
once it has printed something; ``# on a terminal`` runs on a pseudo-terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sprites_async._cli import EXIT_OK, PROG, _subcommands, build_parser, main
from sprites_async.emulator import Emulator

EXAMPLE = re.compile(rf"^\s*\$ {PROG} (?P<args>.*?)\s*(?:#\s*(?P<note>.*))?$")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """``(path, parser)`` for the tool, each command and each subcommand."""
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        found.append((path, parser))
        for name, child in _subcommands(parser).items():
            if path == "" and name == "emulator":
                continue  # the emulator's own parser, run through the top-level example
            walk(f"{path} {name}".strip(), child)

    walk("", build_parser())
    return found


def examples_of(parser: argparse.ArgumentParser) -> list[tuple[list[str], str]]:
    """The ``$ sprites-async ...`` lines of a help text: ``(argv, note)``."""
    out = []
    for line in parser.format_help().splitlines():
        found = EXAMPLE.match(line)
        if found:
            out.append((shlex.split(found["args"]), found["note"] or ""))
    return out


PARSERS = parsers()


def test_every_command_has_examples() -> None:
    missing = [path or PROG for path, parser in PARSERS if not examples_of(parser)]
    assert missing == []
    assert len(PARSERS) > 25  # the walk really went through the subcommands


def test_the_example_parser() -> None:
    parser = argparse.ArgumentParser(
        epilog="examples:\n  $ sprites-async exec demo -- sh -c 'echo a b'  # until Ctrl-C\n"
        "  $ sprites-async list\n  not $ sprites-async this",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    assert examples_of(parser) == [
        (["exec", "demo", "--", "sh", "-c", "echo a b"], "until Ctrl-C"),
        (["list"], ""),
    ]


@pytest.fixture
def world(cli_emu: Emulator, tmp_path: Path) -> Emulator:
    """The emulator and folder every example assumes."""
    (tmp_path / "notes.txt").write_text("notes\n")
    asyncio.run(_populate(cli_emu))
    return cli_emu


async def _populate(emulator: Emulator) -> None:
    async with emulator.client() as client:
        await client.sprites.create("demo")
        demo = client.sprite("demo")
        await (demo.fs() / "notes.txt").write_text("remote notes\n")
        await demo.checkpoints.create(comment="first")
        await demo.checkpoints.create(comment="second")
        await demo.services.create(
            "web", cmd="python3", args=["-m", "http.server", "0"], duration=0.2
        )
        for name in ("ci-1", "ci-2"):
            await client.sprites.create(name, labels=["ci"])


def env_for(emulator: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPRITES_", "SPRITE_"))}
    env["SPRITES_API_URL"] = emulator.url
    env["SPRITES_TOKEN"] = emulator.token
    return env


def run_until_interrupted(emulator: Emulator, argv: list[str]) -> tuple[int, bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env_for(emulator),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it has started and said so
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, first + rest


def run_on_a_terminal(emulator: Emulator, argv: list[str]) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_for(emulator),
    )
    os.close(slave)
    output = b""
    try:
        os.write(master, b"exit\r")  # ends an interactive shell; harmless otherwise
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, output


@pytest.mark.parametrize(
    "parser", [p for _, p in PARSERS], ids=[path.replace(" ", "-") or PROG for path, _ in PARSERS]
)
def test_help_examples_run(
    parser: argparse.ArgumentParser, world: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, note in examples_of(parser):
        shown = f"{PROG} {shlex.join(argv)}"
        if "until Ctrl-C" in note:
            code, output = run_until_interrupted(world, argv)
            assert code == EXIT_OK, f"{shown}: exit {code}\n{output.decode(errors='replace')}"
            assert output, shown
            continue
        if "on a terminal" in note:
            code, output = run_on_a_terminal(world, argv)
            assert code == EXIT_OK, f"{shown}: exit {code}\n{output.decode(errors='replace')}"
            continue
        code = main(argv)
        captured = capsys.readouterr()
        assert code == EXIT_OK, f"{shown}: exit {code}\n{captured.out}\n{captured.err}"
