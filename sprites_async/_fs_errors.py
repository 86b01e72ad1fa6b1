"""Filesystem errors: typed subclasses that are also the matching builtin ``OSError``s."""

from __future__ import annotations

import errno
import os
from typing import Any, NoReturn

import msgspec

from ._errors import (
    APIError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    _rebuild_error,
)
from ._models import JSONDecoder

# --------------------------------------------------------------------- errors


class SpriteFSError(APIError, OSError):
    """A filesystem operation failed inside the sprite (an error body with a POSIX ``code``).

    Both an :class:`APIError` (``status_code``, ``code``, ``body`` ...) and an
    :class:`OSError` (``errno``, ``strerror``, ``filename``, ``filename2``).
    ``code`` is the server's POSIX name (``"EINVAL"``, ``"EIO"`` ...); ``errno``
    is the matching number when Python knows it.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError keeps errno/filename outside __dict__; carry them explicitly.
        state = self.__dict__.copy()
        os_state = (self.errno, self.strerror, self.filename, self.filename2)
        return (_rebuild_fs_error, (type(self), state, os_state))


def _rebuild_fs_error(
    cls: type[SpriteFSError], state: dict[str, Any], os_state: tuple[Any, ...]
) -> APIError:
    err = _rebuild_error(cls, state)
    err.errno, err.strerror, err.filename, err.filename2 = os_state
    return err


class SpriteFileNotFoundError(SpriteFSError, NotFoundError, FileNotFoundError):
    """``ENOENT``: the file or a directory on its path does not exist."""


class SpriteFileExistsError(SpriteFSError, ConflictError, FileExistsError):
    """``EEXIST``: the path already exists."""


class SpriteNotADirectoryError(SpriteFSError, NotADirectoryError):
    """``ENOTDIR``: a directory was expected (the path or one of its parents is a file)."""


class SpriteIsADirectoryError(SpriteFSError, IsADirectoryError):
    """``EISDIR``: a file was expected, the path is a directory."""


class SpritePermissionError(SpriteFSError, PermissionDeniedError, PermissionError):
    """``EACCES``/``EPERM``: the sprite user may not do this."""


class SpriteDirectoryNotEmptyError(SpriteFSError):
    """``ENOTEMPTY``: the directory is not empty (``errno.ENOTEMPTY``; Python has no builtin)."""


_CODE_CLASSES: dict[str, type[SpriteFSError]] = {
    "ENOENT": SpriteFileNotFoundError,
    "EEXIST": SpriteFileExistsError,
    "ENOTDIR": SpriteNotADirectoryError,
    "EISDIR": SpriteIsADirectoryError,
    "EACCES": SpritePermissionError,
    "EPERM": SpritePermissionError,
    "ENOTEMPTY": SpriteDirectoryNotEmptyError,
}

# The Python SDK's fallback for servers that send text without a code.
_MESSAGE_CODES = (
    ("no such file or directory", "ENOENT"),
    ("file exists", "EEXIST"),
    ("not a directory", "ENOTDIR"),
    ("is a directory", "EISDIR"),
    ("permission denied", "EACCES"),
    ("not empty", "ENOTEMPTY"),
)


class _ErrorPath(msgspec.Struct):
    path: str | None = None


_error_path_decoder = JSONDecoder(msgspec.json.Decoder(_ErrorPath))


def _body_path(body: bytes) -> str | None:
    try:
        return _error_path_decoder.decode(body).path
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def fs_error(exc: APIError, path: str, path2: str | None = None) -> APIError:
    """The filesystem error for an :class:`APIError`, or ``exc`` itself.

    A 404 without ``code`` means the sprite or endpoint is missing: ``exc`` is
    returned unchanged so that a deleted sprite never looks like a missing file.
    """
    code = exc.code
    if code is None and exc.status_code != 404:
        lowered = exc.message.lower()
        code = next((c for text, c in _MESSAGE_CODES if text in lowered), None)
    if code is None or not code.startswith("E") or not code.isupper():
        return exc
    cls = _CODE_CLASSES.get(code, SpriteFSError)
    err = cls(
        exc.message,
        status_code=exc.status_code,
        code=code,
        body=exc.body,
        headers=exc.headers,
        operation=exc.operation,
        sprite=exc.sprite,
    )
    err.errno = getattr(errno, code, None)
    err.strerror = exc.message
    err.filename = _body_path(exc.body) or path
    if path2 is not None:
        err.filename2 = path2
    return err


def _local_error(cls: type[SpriteFSError], code: str, path: str, sprite: str, op: str) -> NoReturn:
    """Raise a filesystem error found by the client itself (no response behind it)."""
    number = getattr(errno, code)
    message = os.strerror(number)
    # The status the server uses for the same condition (only ENOENT's 404 is
    # observed; 403 and 400 are what an error of that code gets elsewhere).
    status = {"ENOENT": 404, "EACCES": 403}.get(code, 400)
    err = cls(message, status_code=status, code=code, operation=op, sprite=sprite)
    err.errno, err.strerror, err.filename = number, message, path
    raise err
