"""What every command module shares: exit statuses, the usage error, the context, the token.

The command modules (``_commands``, ``_terminal``, ``_doctor``) import from
here, not from the package, which imports them to build its parser.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sprites_async._transport import TOKEN_ENV_VARS

from ._output import Output

if TYPE_CHECKING:
    from sprites_async._client import SpritesClient
    from sprites_async.emulator import Emulator

EXIT_OK = 0
EXIT_API = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a process that died of SIGPIPE (141 on Linux)."""

SPRITE_FILE = ".sprite"
PROG = "sprites-async"

NO_TOKEN_HELP = (
    "no Sprites token: set SPRITES_TOKEN (or SPRITE_TOKEN) to a token from "
    "https://sprites.dev/account.\n"
    "  To try things locally instead, add --emulator (a throw-away emulator for this one "
    "command),\n"
    "  or run `sprites-async emulator` in another terminal and export the two variables "
    "it prints."
)


class UsageError(Exception):
    """A mistake on the command line or in the local configuration (exit status 2)."""


@dataclass
class Context:
    """What a command handler gets besides its arguments."""

    out: Output
    args: argparse.Namespace
    client: SpritesClient | None = None
    emulator: Emulator | None = None
    sprite_file: Path | None = None
    sprite_file_data: dict[str, Any] = field(default_factory=dict)
    sprite_file_error: UsageError | None = None

    def need_client(self) -> SpritesClient:
        """The client, or the no-token usage error."""
        if self.client is None:
            raise UsageError(NO_TOKEN_HELP)
        return self.client

    def sprite_name(self, explicit: str | None = None) -> str:
        """The sprite to act on: the argument, ``--sprite``, or the ``.sprite`` file."""
        name = explicit or getattr(self.args, "sprite", None)
        if name:
            return str(name)
        if self.sprite_file_error is not None:
            raise self.sprite_file_error
        found = self.sprite_file_data.get("sprite")
        if isinstance(found, str) and found:
            return found
        raise UsageError(
            "which sprite? pass its NAME, --sprite NAME, or write a .sprite file "
            '({"organization": "...", "sprite": "..."}) in this folder or a parent'
        )


Handler = Callable[[Context], Awaitable[int]]


# ---------------------------------------------------------------------- config


def find_sprite_file(start: Path | None = None) -> Path | None:
    """The nearest ``.sprite`` file in ``start`` (default: the cwd) or a parent."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / SPRITE_FILE
        if candidate.is_file():
            return candidate
    return None


def read_sprite_file(path: Path) -> dict[str, Any]:
    """Parse a ``.sprite`` file; a usage error if it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object with 'organization' and 'sprite'")
    return data


def token_from_env() -> tuple[str | None, str | None]:
    """``(token, variable name)`` from the environment, or ``(None, None)``."""
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value, var
    return None, None
