"""The positional words of a command: ``[NAME] SLOT ...``, declared and placed after parsing."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ._context import PROG


@dataclass(frozen=True)
class Slot:
    """A positional argument of a command that may also be preceded by the sprite's NAME."""

    dest: str
    metavar: str
    required: bool = True
    default: str | None = None


@dataclass(frozen=True)
class Layout:
    """The positional words of a command: ``[NAME] SLOT ...``.

    A word more than the slots is the sprite's NAME (``checkpoint restore demo
    v1``). ``prefer_name`` decides the ambiguous cases where the optional slots
    are not all filled (``fs ls demo``: a sprite, ``fs ls /tmp``: a path).
    """

    slots: tuple[Slot, ...] = ()
    name: bool = True
    prefer_name: Callable[[list[str]], bool] | None = None

    def usage(self) -> str:
        """The positional part of the usage line."""
        parts = ["[NAME]"] if self.name else []
        parts += [s.metavar if s.required else f"[{s.metavar}]" for s in self.slots]
        return " ".join(parts)


def positionals(parser: argparse.ArgumentParser, layout: Layout) -> None:
    """Give ``parser`` the positional words of ``layout`` (placed after parsing)."""
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(layout=layout)
    parser.usage = f"%(prog)s [options] {layout.usage()}".rstrip()


def examples(parser: argparse.ArgumentParser, *lines: str) -> None:
    """Add an ``examples:`` section to the help; tests run every one of them."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    body = "\n".join(f"  $ {PROG} {line}" for line in lines)
    parser.epilog = f"examples:\n{body}"


def place_words(args: argparse.Namespace, extra: list[str]) -> str | None:
    """Put the positional words where they belong; an error message, or None."""
    unknown = [w for w in extra if w.startswith("-") and w != "-"]
    if unknown:
        return f"unrecognized arguments: {' '.join(unknown)}"
    layout: Layout | None = getattr(args, "layout", None)
    if layout is None:
        if args.command == "exec" and extra:
            return "exec: give at most one sprite NAME before -- (exec [NAME] -- CMD ...)"
        return f"unrecognized arguments: {' '.join(extra)}" if extra else None
    words = [*args.words, *extra]
    del args.words
    slots = layout.slots
    name = None
    needed = sum(s.required for s in slots)
    if layout.name and (
        len(words) == len(slots) + 1
        or (len(words) > needed and layout.prefer_name is not None and layout.prefer_name(words))
    ):
        name, words = words[0], words[1:]
    if len(words) > len(slots):
        extra_words = words[len(slots) + (1 if layout.name and name is None else 0) :]
        return f"too many arguments: {' '.join(extra_words)} (usage: {layout.usage()})"
    if len(words) < needed:
        missing = [s.metavar for s in slots if s.required][len(words) :]
        return f"missing {' '.join(missing)} (usage: {layout.usage()})"
    optional = len(words) - needed  # how many optional slots get a word, left to right
    for slot in slots:
        if slot.required or optional > 0:
            if not slot.required:
                optional -= 1
            setattr(args, slot.dest, words.pop(0))
        else:
            setattr(args, slot.dest, slot.default)
    if name is not None:
        given = getattr(args, "sprite", None)
        if given and given != name:
            return f"two sprites given: {name!r} and --sprite {given!r}"
        args.sprite = name
    return None
