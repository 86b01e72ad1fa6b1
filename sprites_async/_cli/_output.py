"""Terminal output for the command-line tool: tables, progress, plain fallbacks.

On a terminal: aligned tables with a bold header, progress lines rewritten
in place. Otherwise (a pipe, a file, a test): tab-separated rows without a
header and one line per event, so that ``cut``/``awk`` work and nothing
contains escape sequences. ``NO_COLOR`` and ``TERM=dumb`` turn styling off.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import msgspec

__all__ = ["Output", "Progress"]

_BOLD = "\033[1m"
_DIM = "\033[2m"
_RED = "\033[31m"
_GREEN = "\033[32m"
_YELLOW = "\033[33m"
_RESET = "\033[0m"
_CLEAR_LINE = "\r\033[K"


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Where and how the tool writes. ``tty`` is decided from stdout unless given."""

    def __init__(
        self,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        *,
        tty: bool | None = None,
    ) -> None:
        self.out = stdout if stdout is not None else sys.stdout
        self.err = stderr if stderr is not None else sys.stderr
        self.tty = _isatty(self.out) if tty is None else tty
        self.err_tty = _isatty(self.err)
        plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
        self.color = self.tty and not plain
        self.err_color = self.err_tty and not plain

    # ----------------------------------------------------------------- styling

    def style(self, text: str, *codes: str, err: bool = False) -> str:
        """``text`` wrapped in ANSI ``codes`` when that stream shows colour."""
        if not (self.err_color if err else self.color) or not codes:
            return text
        return "".join(codes) + text + _RESET

    def bold(self, text: str) -> str:
        """Bold on a terminal."""
        return self.style(text, _BOLD)

    def status(self, status: str | None) -> str:
        """A sprite or step status, coloured by meaning on a terminal."""
        text = status or "-"
        colour = {
            "running": _GREEN,
            "ok": _GREEN,
            "warm": _YELLOW,
            "warn": _YELLOW,
            "skip": _DIM,
            "cold": _DIM,
            "fail": _RED,
            "failed": _RED,
            "timeout": _RED,
        }.get(text, _RED if text.startswith("exit ") else None)
        return self.style(text, colour) if colour else text

    # ----------------------------------------------------------------- writing

    def line(self, text: str = "") -> None:
        """One line on stdout."""
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A remark for the human, on stderr (never mixed into data on stdout)."""
        self.err.write(text + "\n")
        self.err.flush()

    def error(self, text: str) -> None:
        """``sprites-async: error: ...`` on stderr."""
        prefix = self.style("sprites-async: error:", _RED, _BOLD, err=True)
        self.err.write(f"{prefix} {text}\n")
        self.err.flush()

    def json(self, data: Any) -> None:
        """Pretty JSON on a terminal, one compact line otherwise."""
        raw = msgspec.json.decode(msgspec.json.encode(data))
        text = json.dumps(raw, indent=2 if self.tty else None, sort_keys=False)
        self.line(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Aligned columns with a header on a terminal; headerless TSV otherwise.

        Cells may contain styling; widths are computed on the visible text.
        """
        if not self.tty:
            for row in rows:
                self.line("\t".join(_unstyled(c).replace("\t", " ") for c in row))
            return
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(_unstyled(cell)))
        self.line("  ".join(self.bold(h.ljust(w)) for h, w in zip(headers, widths)).rstrip())
        for row in rows:
            cells = [c + " " * (w - len(_unstyled(c))) for c, w in zip(row, widths)]
            self.line("  ".join(cells).rstrip())

    def progress(self, label: str, total: int | None = None) -> Progress:
        """A progress display on stderr (so stdout stays clean for data)."""
        return Progress(self, label, total)


def _unstyled(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\033":
            end = text.find("m", i)
            if end != -1:
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


class Progress:
    """A bar (when ``total`` is known) or a status line, redrawn in place on a terminal.

    Without a terminal each :meth:`message` prints one line and
    :meth:`advance` stays silent; :meth:`done` prints the final line.
    """

    def __init__(self, output: Output, label: str, total: int | None) -> None:
        self._out = output
        self.label = label
        self.total = total
        self.count = 0
        self.text = ""
        self._live = output.err_tty
        self._drawn = False

    def advance(self, n: int = 1, text: str | None = None) -> None:
        """Count ``n`` more done items, optionally with a new status text."""
        self.count += n
        if text is not None:
            self.text = text
        self._draw()

    def message(self, text: str) -> None:
        """Show a status text (plain output: print it as its own line)."""
        self.text = text
        if self._live:
            self._draw()
        else:
            self._out.note(f"{self.label}: {text}")

    def _draw(self) -> None:
        if not self._live:
            return
        parts = [self.label]
        if self.total:
            width = 24
            filled = int(width * min(self.count, self.total) / self.total)
            parts.append("[" + "#" * filled + "." * (width - filled) + "]")
            parts.append(f"{self.count}/{self.total}")
        if self.text:
            parts.append(self.text)
        line = " ".join(parts)
        try:
            columns = os.get_terminal_size(self._out.err.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        if columns < 20:  # unknown (0) or absurd: do not cut the line to nothing
            columns = 100
        # One line only: a wrapped line cannot be redrawn in place.
        self._out.err.write(_CLEAR_LINE + line[: columns - 1])
        self._out.err.flush()
        self._drawn = True

    def done(self, text: str | None = None) -> None:
        """Finish: clear the live line and print ``text`` (if any) as a normal line."""
        if self._live and self._drawn:
            self._out.err.write(_CLEAR_LINE)
            self._out.err.flush()
        if text is not None:
            self._out.note(f"{self.label}: {text}")
