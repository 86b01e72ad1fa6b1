"""The CLI's output helpers: terminal tables and progress versus plain output."""

from __future__ import annotations

import io

import pytest

from sprites_async._cli._output import Output


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_table_is_headerless_tsv() -> None:
    out = io.StringIO()
    Output(out, io.StringIO()).table(["A", "B"], [["x", "1"], ["tab\there", "2"]])
    assert out.getvalue() == "x\t1\ntab here\t2\n"


def test_terminal_table_aligns_and_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = FakeTTY()
    o = Output(out, io.StringIO())
    o.table(["NAME", "STATUS"], [["a", o.status("running")], ["long-name", "cold"]])
    lines = out.getvalue().splitlines()
    assert "\033[1m" in lines[0]  # bold header
    assert "\033[32mrunning\033[0m" in lines[1]
    # Alignment ignores the escape sequences.
    assert lines[2] == "long-name  cold"


def test_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTTY()
    o = Output(out, io.StringIO())
    o.table(["NAME"], [[o.status("running")]])
    assert "\033" not in out.getvalue()
    assert out.getvalue().splitlines() == ["NAME", "running"]


def test_progress_plain_prints_messages_only() -> None:
    err = io.StringIO()
    progress = Output(io.StringIO(), err).progress("restore x")
    progress.advance()
    progress.message("Restoring...")
    progress.done("ok")
    assert err.getvalue() == "restore x: Restoring...\nrestore x: ok\n"


def test_progress_live_redraws_one_line() -> None:
    err = FakeTTY()
    progress = Output(io.StringIO(), err).progress("create", total=4)
    progress.advance(2, "half")
    progress.done()
    text = err.getvalue()
    assert "\r\033[Kcreate [############............] 2/4 half" in text
    assert text.endswith("\r\033[K")


def test_json_compact_when_piped() -> None:
    out = io.StringIO()
    Output(out, io.StringIO()).json({"a": [1, 2]})
    assert out.getvalue() == '{"a": [1, 2]}\n'
