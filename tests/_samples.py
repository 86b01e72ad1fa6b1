"""Running the ```python blocks of Markdown files as a user who copied them would.

Shared by tests/test_readme_samples.py (README.md) and tests/test_docs_samples.py
(docs/). Each block is saved as a file and run with ``python`` in its own
process, with ``SPRITES_API_URL``/``SPRITES_TOKEN`` pointing at a fresh
emulator. A block that cannot run on its own (a pytest test file, a fragment)
must say so on its first line: ``# not run: <reason>``; any other block that
fails, hangs or leaves a sprite behind fails its test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sprites_async.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"#\s*not run:\s*(\S.*)")
SAMPLE_TIMEOUT = 120.0
"""Seconds a sample may take; each one needs a few on an idle machine."""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, the heading above it, its text."""

    line: int
    heading: str
    language: str
    code: str
    source: str = "README.md"

    @property
    def skip_reason(self) -> str | None:
        """The reason of a ``# not run:`` first line, or None for a runnable block."""
        first = self.code.lstrip().split("\n", 1)[0]
        found = NOT_RUN.fullmatch(first.strip())
        return found[1] if found else None

    @property
    def ident(self) -> str:
        """A test id: the section's heading and the line of the block."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{slug or 'top'}-L{self.line}"


def code_blocks(text: str, source: str = "README.md") -> list[Block]:
    """The fenced blocks of a Markdown text, with their language tag."""
    blocks: list[Block] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.match(r"^(```+)\s*([\w+-]*)\s*$", line)
        if fence:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence[1]):
                body.append(lines[i])
                i += 1
            blocks.append(
                Block(start + 1, heading, fence[2].lower(), "\n".join(body) + "\n", source)
            )
        i += 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks (also ```py) of one Markdown file."""
    source = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    return [
        b
        for b in code_blocks(path.read_text(encoding="utf-8"), source)
        if b.language in ("python", "py")
    ]


def env_for(emulator: Emulator) -> dict[str, str]:
    """The environment of a sample: this emulator's URL and token, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPRITES_", "SPRITE_"))}
    env["SPRITES_API_URL"] = emulator.url
    env["SPRITES_TOKEN"] = emulator.token
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_sample(block: Block, tmp_path: Path) -> None:
    """Run one block against a fresh emulator; skip it if marked ``# not run:``."""
    where = f"{block.source} line {block.line} ({block.heading})"
    if block.skip_reason is not None:
        pytest.skip(f"{block.source} line {block.line} is marked not run: {block.skip_reason}")
    script = tmp_path / "sample.py"
    script.write_text(block.code, encoding="utf-8")
    with Emulator(exit_linger=0.0) as emulator:
        try:
            done = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                env=env_for(emulator),
                cwd=tmp_path,
                timeout=SAMPLE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"{where} did not finish within {SAMPLE_TIMEOUT:.0f} s; output so far:\n"
                f"{exc.stdout!r}\n{exc.stderr!r}"
            )
        assert done.returncode == 0, (
            f"{where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        left = sorted(emulator.state.sprites)
        assert not left, f"{where} left sprites behind: {left}"
