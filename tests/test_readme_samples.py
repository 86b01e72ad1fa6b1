"""Every ```python block of README.md runs as written against a local emulator.

Each block is saved as a file and run with ``python`` in its own process, with
``SPRITES_API_URL``/``SPRITES_TOKEN`` pointing at a fresh emulator, as a user
who copied it would. A block that cannot run on its own (a pytest test file, a
fragment) must say so on its first line: ``# not run: <reason>``; any other
block that fails, hangs or leaves a sprite behind fails its test.
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

README = Path(__file__).resolve().parent.parent / "README.md"
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


def code_blocks(text: str) -> list[Block]:
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
            blocks.append(Block(start + 1, heading, fence[2].lower(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def python_blocks() -> list[Block]:
    """README.md's ```python blocks (also ```py)."""
    return [
        b for b in code_blocks(README.read_text(encoding="utf-8")) if b.language in ("python", "py")
    ]


def test_the_parser_sees_fences_languages_and_markers() -> None:
    text = (
        "# Top\n```sh\nls\n```\n## Use\n```python\nprint(1)\n```\n"
        "```py\n# not run: a pytest file\nx\n```\n```\nplain\n```\n"
    )
    blocks = code_blocks(text)
    assert [(b.language, b.heading) for b in blocks] == [
        ("sh", "Top"),
        ("python", "Use"),
        ("py", "Use"),
        ("", "Use"),
    ]
    assert blocks[1].code == "print(1)\n" and blocks[1].skip_reason is None
    assert blocks[2].skip_reason == "a pytest file"
    assert blocks[1].ident == "use-L6"


def test_the_readme_has_runnable_samples() -> None:
    # A parser that silently found nothing would turn every sample test green.
    blocks = python_blocks()
    assert len(blocks) >= 5
    assert sum(b.skip_reason is None for b in blocks) >= 5


def env_for(emulator: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPRITES_", "SPRITE_"))}
    env["SPRITES_API_URL"] = emulator.url
    env["SPRITES_TOKEN"] = emulator.token
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(README.parent), env.get("PYTHONPATH", "")) if p
    )
    return env


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.ident)
def test_readme_sample_runs_as_written(block: Block, tmp_path: Path) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"README line {block.line} is marked not run: {block.skip_reason}")
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
                f"README line {block.line} ({block.heading}) did not finish within "
                f"{SAMPLE_TIMEOUT:.0f} s; output so far:\n{exc.stdout!r}\n{exc.stderr!r}"
            )
        assert done.returncode == 0, (
            f"README line {block.line} ({block.heading}) exited {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
        left = sorted(emulator.state.sprites)
        assert not left, f"README line {block.line} left sprites behind: {left}"
