"""Mapping of filesystem error bodies to typed exceptions (section 7.11), without a server."""

from __future__ import annotations

import errno

import msgspec
import pytest

from sprites_async import APIError, NotFoundError, ServerError
from sprites_async._errors import api_error_from_response
from sprites_async._fs import (
    SpriteDirectoryNotEmptyError,
    SpriteFileExistsError,
    SpriteFileNotFoundError,
    SpriteFSError,
    SpriteIsADirectoryError,
    SpriteNotADirectoryError,
    SpritePermissionError,
    fs_error,
)


def response_error(status: int, body: object) -> APIError:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return api_error_from_response(status, {}, raw, operation="fs read", sprite="box")


@pytest.mark.parametrize(
    ("code", "status", "cls", "builtin"),
    [
        ("ENOENT", 404, SpriteFileNotFoundError, FileNotFoundError),
        ("EEXIST", 400, SpriteFileExistsError, FileExistsError),
        ("ENOTDIR", 400, SpriteNotADirectoryError, NotADirectoryError),
        ("EISDIR", 400, SpriteIsADirectoryError, IsADirectoryError),
        ("EACCES", 403, SpritePermissionError, PermissionError),
        ("EPERM", 403, SpritePermissionError, PermissionError),
        ("ENOTEMPTY", 400, SpriteDirectoryNotEmptyError, OSError),
        ("EINVAL", 400, SpriteFSError, OSError),
        ("EIO", 500, SpriteFSError, OSError),
        ("ELOOP", 400, SpriteFSError, OSError),
    ],
)
def test_every_code_maps_to_a_typed_builtin(
    code: str, status: int, cls: type[SpriteFSError], builtin: type[OSError]
) -> None:
    original = response_error(status, {"error": "it failed", "code": code, "path": "/srv/x"})
    err = fs_error(original, "/home/sprite/x", "/home/sprite/y")
    assert type(err) is cls
    assert isinstance(err, builtin) and isinstance(err, APIError)
    assert isinstance(err, SpriteFSError)
    assert err.errno == getattr(errno, code)
    assert err.code == code
    assert err.filename == "/srv/x"  # the server's path wins over ours
    assert err.filename2 == "/home/sprite/y"
    assert err.status_code == status
    assert err.message == "it failed" and err.strerror == "it failed"
    assert err.sprite == "box" and err.operation == "fs read"
    assert "it failed" in str(err)


def test_enoent_is_also_not_found_error() -> None:
    err = fs_error(response_error(404, {"error": "no such file", "code": "ENOENT"}), "/a")
    assert isinstance(err, NotFoundError) and isinstance(err, FileNotFoundError)
    assert err.filename == "/a"  # no path in the body: ours


def test_404_without_code_is_the_sprite_not_the_file() -> None:
    original = response_error(404, {"error": "sprite not found"})
    assert fs_error(original, "/a") is original
    text = response_error(404, b"404: Not Found")
    assert fs_error(text, "/a") is text


def test_text_bodies_fall_back_to_message_matching() -> None:
    err = fs_error(response_error(400, b"open /x: is a directory\n"), "/x")
    assert isinstance(err, IsADirectoryError) and err.errno == errno.EISDIR
    err = fs_error(response_error(500, b"remove /d: directory not empty"), "/d")
    assert isinstance(err, SpriteDirectoryNotEmptyError) and err.errno == errno.ENOTEMPTY
    err = fs_error(response_error(500, b"open /x: permission denied"), "/x")
    assert isinstance(err, PermissionError)


def test_unrelated_errors_pass_through() -> None:
    original = response_error(500, b"Storage not ready")
    assert fs_error(original, "/x") is original
    assert isinstance(original, ServerError)
    coded = response_error(429, {"error": "sprite_creation_rate_limited", "message": "slow"})
    assert fs_error(coded, "/x") is coded
