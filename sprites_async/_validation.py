"""Checks of user input made before anything is sent."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._models import URL_AUTH_VALUES

# Names become a hostname label in the sprite's URL; the service only documents
# that "" is refused, so this is the safe, observed-compatible set (section 2.8).
# It is enforced on create only: every other call takes any name the server
# could hold (check_path_name), so a sprite named outside this guess stays
# reachable.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: object, what: str = "sprite name") -> str:
    """Return ``name`` if it is a valid name for a new sprite, else raise ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits and hyphens, "
            "starting with a letter or digit"
        )
    return name


def check_path_name(name: object, what: str = "sprite name") -> str:
    """Return ``name`` unless no server could hold it as one URL path segment.

    Refused: empty, ``/``, control characters, ``.`` and ``..`` (which a
    URL normalises away). Everything else is percent-encoded and sent.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name or "/" in name or name in (".", "..") or _CONTROL_RE.search(name):
        raise ValueError(f"invalid {what} {name!r}")
    return name


def check_prefix(prefix: object) -> str:
    """A prefix for new names: any string a valid name could start with."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", prefix):
        raise ValueError(f"invalid prefix {prefix!r}: no sprite name can start with it")
    return prefix


def check_list_prefix(prefix: object) -> str:
    """A prefix to list by: any text a name could start with (no control characters).

    Not limited to the create rule, so sprites named outside it can be
    listed (and ``delete_many`` can find them).
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if _CONTROL_RE.search(prefix):
        raise ValueError(f"invalid prefix {prefix!r}: no sprite name can start with it")
    return prefix


def check_max_results(value: object) -> int:
    """``max_results`` must be an int in 1..50 (the documented page size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("max_results must be an int")
    if not 1 <= value <= 50:
        raise ValueError(f"max_results must be between 1 and 50, got {value}")
    return value


def check_url_auth(value: object) -> str:
    """``url_auth`` must be ``"sprite"`` or ``"public"``."""
    if value not in URL_AUTH_VALUES:
        raise ValueError(f"url_auth must be 'sprite' or 'public', got {value!r}")
    return str(value)


def check_labels(labels: object) -> list[str]:
    """Labels are a list of non-empty strings (a bare string is refused, not split)."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError("labels must be a list of strings, e.g. labels=['ci']")
    out = list(labels)
    for label in out:
        if not isinstance(label, str) or not label:
            raise ValueError(f"every label must be a non-empty string, got {label!r}")
    return out
