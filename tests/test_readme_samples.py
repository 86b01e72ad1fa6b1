"""Every ```python block of README.md runs as written against a local emulator.

The runner is tests/_samples.py (shared with the docs' samples): each block runs
in its own process against a fresh emulator; a block that cannot run on its own
says so on its first line, ``# not run: <reason>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._samples import ROOT, Block, code_blocks, python_blocks, run_sample

README = ROOT / "README.md"


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


def test_the_readme_has_a_runnable_sample() -> None:
    # A parser that silently found nothing would turn every sample test green.
    blocks = python_blocks(README)
    assert sum(b.skip_reason is None for b in blocks) >= 1


@pytest.mark.parametrize("block", python_blocks(README), ids=lambda b: b.ident)
def test_readme_sample_runs_as_written(block: Block, tmp_path: Path) -> None:
    run_sample(block, tmp_path)
