"""Checks of user input made before anything is sent."""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from datetime import timedelta

from ._models import URL_AUTH_VALUES

# Names become a hostname label in the sprite's URL; the service only documents
# that "" is refused, so this is the safe set every observed name fits.
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


def check_id(value: object, what: str) -> str:
    """An id the server made (a checkpoint's ...): any non-empty str without NUL.

    Sent percent-encoded, so even a ``/`` in it reaches the server as one segment.
    """
    if not isinstance(value, str):
        raise TypeError(f"a {what} must be a str, not {type(value).__name__}")
    if not value or "\x00" in value:
        raise ValueError(f"invalid {what} {value!r}")
    return value


def check_int(
    value: object, what: str, low: int = 0, high: int | None = None, *, octal: bool = False
) -> int:
    """``value`` if it is an int (not a bool) from ``low`` to ``high``, else ValueError.

    ``octal`` shows the bounds as ``0o...`` (file modes).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        shown = (f"{high:#o}", f"{value:#o}") if octal else (str(high), str(value))
        raise ValueError(f"{what} must be at most {shown[0]}, got {shown[1]}")
    return value


def check_port(port: object, what: str = "port") -> int:
    """A TCP port, 1 to 65535."""
    return check_int(port, what, 1, 65535)


def check_host(host: object) -> str:
    """A host name or address to dial: non-empty, no whitespace or NUL."""
    if not isinstance(host, str) or not host or any(c.isspace() or c == "\x00" for c in host):
        raise ValueError(f"host must be a non-empty host name or address, got {host!r}")
    return host


def check_sprite_path(path: object) -> str:
    """A path inside a sprite: a non-empty str without NUL bytes."""
    if not isinstance(path, str):
        raise TypeError(f"a sprite path must be a str, not {type(path).__name__}")
    if not path:
        raise ValueError("a sprite path must not be empty")
    if "\x00" in path:
        raise ValueError(f"a sprite path must not contain NUL bytes: {path!r}")
    return path


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


_ENV_KEY_RE = re.compile(r"[^=\x00]+")
_DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^0$")


def go_duration(seconds: object) -> str:
    """Seconds as a Go duration string: ``10s``, ``1.5s``, ``0s``.

    Takes an int, a float or a :class:`~datetime.timedelta`. Go's
    ``time.ParseDuration`` reads it; milliseconds are the finest unit kept.
    """
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"a duration must be a non-negative number of seconds, got {seconds!r}")
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


def check_argv(argv: Sequence[object]) -> tuple[str, ...]:
    if not argv:
        raise ValueError("no command: pass the program and its arguments, e.g. exec('ls', '-l')")
    out = []
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise TypeError(f"argument {i} must be a str, not {type(arg).__name__}: {arg!r}")
        if "\x00" in arg:
            raise ValueError(f"argument {i} contains a NUL byte: {arg!r}")
        out.append(arg)
    if not out[0]:
        raise ValueError("the program name (first argument) is empty")
    return tuple(out)


def check_env(env: object) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env keys and values must be str: {key!r}={value!r}")
        if not _ENV_KEY_RE.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r} (empty, '=' or NUL)")
        if "\x00" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
        out[key] = value
    return out


def check_cwd(cwd: object) -> str:
    if not isinstance(cwd, str):
        raise TypeError(f"cwd must be a str, not {type(cwd).__name__}")
    if "\x00" in cwd:
        raise ValueError("cwd contains a NUL byte")
    if not cwd.startswith("/"):
        raise ValueError(f"cwd must be an absolute path, got {cwd!r}")
    return cwd


def check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int")
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} must be between 1 and 65535, got {value}")
    return value


def check_duration(value: object, what: str) -> str:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be seconds or a Go duration string")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{what} must be >= 0")
        return go_duration(float(value))
    if isinstance(value, str) and _DURATION_RE.match(value):
        return value
    raise ValueError(
        f"{what} must be seconds or a Go duration such as '10s' or '5m', got {value!r}"
    )


def check_timeout(value: object, what: str = "timeout") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None")
    if value <= 0:
        raise ValueError(f"{what} must be > 0")
    return float(value)


def check_max_output(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("max_output must be an int (bytes) or None")
    if value < 0:
        raise ValueError("max_output must be >= 0")
    return value


_SIGNALS = frozenset(s.name[3:] for s in _signal.Signals if not s.name.startswith("SIG_"))


def signal_name(sig: str | int) -> str:
    """Normalise ``"TERM"``, ``"SIGTERM"``, ``"term"`` or ``15`` to ``"TERM"``."""
    if isinstance(sig, bool):
        raise TypeError("signal must be a name such as 'TERM' or a number")
    if isinstance(sig, int):
        try:
            return _signal.Signals(sig).name[3:]
        except ValueError:
            raise ValueError(f"unknown signal number {sig}") from None
    if not isinstance(sig, str):
        raise TypeError("signal must be a name such as 'TERM' or a number")
    name = sig.strip().upper()
    if name.startswith("SIG"):
        name = name[3:]
    if name not in _SIGNALS:
        raise ValueError(f"unknown signal {sig!r}")
    return name


def check_stdin(stdin: object) -> None:
    if stdin is None or isinstance(stdin, (bytes, bytearray, memoryview, str)):
        return
    if isinstance(stdin, AsyncIterable):
        return
    raise TypeError(
        f"stdin must be bytes, str or an async iterable of bytes, not {type(stdin).__name__}"
    )
