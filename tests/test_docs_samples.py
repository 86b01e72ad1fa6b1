"""Every ```python block of the documentation (docs/**/*.md) runs as written.

Same runner as README.md's samples (tests/_samples.py): each block runs in its
own process against a fresh emulator and must exit 0 without leaving a sprite
behind; a block that cannot run on its own says so on its first line,
``# not run: <reason>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._samples import ROOT, Block, python_blocks, run_sample

DOCS = ROOT / "docs"


def docs_blocks() -> list[Block]:
    """The ```python blocks of every page under docs/, page by page."""
    return [b for page in sorted(DOCS.rglob("*.md")) for b in python_blocks(page)]


def test_the_docs_have_runnable_samples() -> None:
    # A parser or a glob that silently found nothing would turn every sample test green.
    blocks = docs_blocks()
    assert sum(b.skip_reason is None for b in blocks) >= 8
    assert {b.source for b in blocks} >= {
        "docs/guides/quickstart.md",
        "docs/guides/fleet.md",
        "docs/guides/web-backends.md",
        "docs/guides/testing.md",
    }


def test_ci_builds_the_docs_strictly_and_offline() -> None:
    # mkdocs --quiet hides the warnings that --strict turns into a failure (mkdocs 1.6), so a
    # quiet build passes with broken references; the plugins below fetch from the network.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    build = [line for line in ci.splitlines() if "mkdocs build" in line]
    assert len(build) == 1 and "--strict" in build[0]
    assert not re.search(r"\s(-q|--quiet)\b", build[0])
    assert ci.index("mypy --strict") < ci.index("mkdocs build") < ci.index("-m pytest")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "strict: true" in config
    assert not re.search(r"^\s*-\s*(social|privacy|optimize)\b", config, re.MULTILINE)
    assert re.search(r"^\s*font:\s*false\s*$", config, re.MULTILINE)


def test_a_failing_sample_fails_its_test(tmp_path: Path) -> None:
    # The runner must not pass a sample that exits non-zero.
    bad = Block(1, "bad", "python", "raise SystemExit(3)\n", "docs/x.md")
    with pytest.raises(AssertionError, match="exited 3"):
        run_sample(bad, tmp_path)


@pytest.mark.parametrize("block", docs_blocks(), ids=lambda b: f"{Path(b.source).stem}-{b.ident}")
def test_docs_sample_runs_as_written(block: Block, tmp_path: Path) -> None:
    run_sample(block, tmp_path)
