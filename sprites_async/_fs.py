"""The sprite's filesystem as pathlib-like objects (the ``/fs/...`` endpoints).

::

    fs = SpriteFS(sprite, root="/home/sprite")      # sprite.fs("/home/sprite")
    p = fs / "data" / "x.json"
    await p.write_text('{"a": 1}')
    print(await p.read_text(), (await p.stat()).size)
    async for chunk in p.open_read(offset=4, length=10):
        ...
    await fs.upload("big.tar", "big.tar")          # streamed, constant memory

Every path is made absolute against the root before it is sent, and
``workingDir`` is always sent as well. Errors carrying a POSIX ``code`` become
subclasses of both :class:`SpriteFSError` (an :class:`APIError`) and the
matching builtin (:class:`FileNotFoundError`, :class:`IsADirectoryError` ...),
with ``errno`` and ``filename`` set. A 404 *without* a code is the sprite (or
the endpoint) missing and stays a plain :class:`NotFoundError`.

Not provided: ``watch()`` (``/fs/watch``) — its message vocabulary is not
documented anywhere and no SDK implements it, so shipping it
would mean guessing a protocol.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from ._errors import (
    APIError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    _rebuild_error,
)
from ._models import (
    JSONDecoder,
    LiberalDecoder,
    RawSource,
    attach_raw,
    decode_any,
    raw_of,
    salvage,
    salvage_list,
    share_raw,
)
from ._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    RequestOptions,
    request_options,
)
from ._resource import AsyncResource
from ._validation import check_int, check_sprite_path

if TYPE_CHECKING:
    from ._body import Body
    from ._session import Response
    from ._sprites import Sprite

__all__ = [
    "ByteStream",
    "CopyResult",
    "FileInfo",
    "SpriteDirectoryNotEmptyError",
    "SpriteFS",
    "SpriteFSError",
    "SpriteFileExistsError",
    "SpriteFileNotFoundError",
    "SpriteIsADirectoryError",
    "SpriteNotADirectoryError",
    "SpritePath",
    "SpritePermissionError",
    "WriteResult",
]

logger = logging.getLogger("sprites_async")

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Bytes per local disk read/write in ``upload``/``download`` and per yielded chunk."""

_encode = msgspec.json.encode


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


# --------------------------------------------------------------------- models


class _Entry(msgspec.Struct, kw_only=True, dict=True):
    name: str = ""
    path: str = ""
    type: str | None = None
    size: int | None = None
    mode: str | int | None = None
    mod_time: datetime | None = msgspec.field(default=None, name="modTime")
    is_dir: bool = msgspec.field(default=False, name="isDir")


class _Listing(msgspec.Struct, kw_only=True):
    path: str = ""
    count: int | None = None
    entries: list[_Entry] | None = None


_listing_typed = JSONDecoder(msgspec.json.Decoder(_Listing))


def _decode_listing(data: bytes) -> _Listing:
    """A listing, liberally (see :func:`salvage`); every entry keeps its raw object."""
    try:
        listing = _listing_typed.decode(data)
    except msgspec.ValidationError:
        obj = decode_any(data)
        if not isinstance(obj, dict):
            raise
        entries = salvage_list(obj.get("entries"), _Entry, "entries")
        listing = salvage({**obj, "entries": []}, _Listing, "listing")
        listing.entries = entries
        return listing
    if listing.entries:
        share_raw(listing.entries, RawSource(data, "entries", "path"))
    return listing


_KINDS = frozenset({"file", "directory", "symlink"})


class FileInfo(msgspec.Struct, kw_only=True, frozen=True, dict=True):
    """One entry of a directory listing (what :meth:`SpritePath.stat` returns).

    :attr:`raw` is the entry's JSON object as received (``{}`` for ``/``,
    which no listing describes).

    Attributes:
        name: The base name.
        path: The absolute path in the sprite.
        type: ``"file"``, ``"directory"``, ``"symlink"`` or ``"other"``
            (sockets, devices, anything newer). Symlinks are not followed.
        size: Bytes (a directory reports its inode size); None if not sent.
        mode: Permission bits as an int (the wire's octal string, parsed).
        mod_time: Last modification time; None if not sent.
    """

    name: str
    path: str
    type: str
    size: int | None = None
    mode: int | None = None
    mod_time: datetime | None = None

    @property
    def is_dir(self) -> bool:
        """True for a directory (False for a symlink to one)."""
        return self.type == "directory"

    @property
    def is_file(self) -> bool:
        """True for a regular file (False for a symlink to one)."""
        return self.type == "file"

    @property
    def is_symlink(self) -> bool:
        """True for a symbolic link."""
        return self.type == "symlink"

    @property
    def raw(self) -> dict[str, Any]:
        """The listing entry's JSON object."""
        return raw_of(self, self.path)


def _parse_mode(value: str | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value, 8)  # modes are octal text: "0644" and "644" alike
    except ValueError:
        return None


def _info(entry: _Entry) -> FileInfo:
    kind = entry.type if entry.type in _KINDS else None
    if kind is None:
        kind = "directory" if entry.is_dir and entry.type is None else "other"
    info = FileInfo(
        name=entry.name or posixpath.basename(entry.path),
        path=entry.path,
        type=kind,
        size=entry.size,
        mode=_parse_mode(entry.mode),
        mod_time=entry.mod_time,
    )
    attach_raw(info, entry.__dict__.get("_raw"))
    return info


class WriteResult(msgspec.Struct, kw_only=True, frozen=True):
    """What the server reports after a write.

    Attributes:
        path: The absolute path written.
        size: Bytes written.
        mode: The permission bits applied, when reported.
    """

    path: str
    size: int
    mode: int | None = None


class _WireWrite(msgspec.Struct, kw_only=True):
    path: str = ""
    size: int = 0
    mode: str | int | None = None


_write_decoder = LiberalDecoder(_WireWrite)


class _Copied(msgspec.Struct, kw_only=True):
    source: str = ""
    dest: str = ""


class CopyResult(msgspec.Struct, kw_only=True, frozen=True):
    """What a copy did.

    Attributes:
        copied: ``(source, dest)`` absolute paths of every entry copied.
        count: Number of entries copied.
        total_bytes: Bytes of file content copied.
    """

    copied: list[tuple[str, str]]
    count: int
    total_bytes: int


class _WireCopy(msgspec.Struct, kw_only=True):
    copied: list[_Copied] = msgspec.field(default_factory=list)
    count: int | None = None
    total_bytes: int = msgspec.field(default=0, name="totalBytes")


_copy_decoder = LiberalDecoder(_WireCopy)


# ---------------------------------------------------------------------- paths


def _path_text(part: object) -> str:
    return part.path if isinstance(part, SpritePath) else check_sprite_path(part)


def _join(base: str, *parts: object) -> str:
    path = base
    for part in parts:
        path = posixpath.join(path, _path_text(part))
    # Lexical normalisation: the server resolves the same way, and a stable
    # spelling makes paths comparable and the stat-by-parent lookup exact.
    path = posixpath.normpath(path)
    return "/" if path.startswith("//") else path


class SpriteFS:
    """A sprite's filesystem rooted at ``root``; ``fs / "a" / "b"`` makes a :class:`SpritePath`.

    Relative paths resolve against ``root`` (default ``/home/sprite``, the
    sprite user's home); absolute paths are used as they are.
    """

    def __init__(self, sprite: Sprite, root: str = "/home/sprite") -> None:
        root = _path_text(root)
        if not root.startswith("/"):
            raise ValueError(f"the root must be an absolute path, got {root!r}")
        self._sprite = sprite
        self.root = _join(root)

    def __repr__(self) -> str:
        return f"<SpriteFS sprite={self._sprite.name!r} root={self.root!r}>"

    @property
    def sprite(self) -> Sprite:
        """The sprite this filesystem belongs to."""
        return self._sprite

    def path(self, *parts: str | SpritePath) -> SpritePath:
        """A path below the root (no parts: the root itself)."""
        return SpritePath(self, _join(self.root, *parts))

    def __truediv__(self, other: str | SpritePath) -> SpritePath:
        return self.path(other)

    async def upload(
        self,
        local_path: str | os.PathLike[str],
        remote: str | SpritePath,
        *,
        mode: int | None = None,
        atomic: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> WriteResult:
        """Copy a local file into the sprite without holding it in memory.

        The file is read ``chunk_size`` bytes at a time in a worker thread and
        streamed as the request body. ``mode`` defaults to the local file's
        permission bits.
        """
        target = self.path(remote)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        fh = await asyncio.to_thread(open, local_path, "rb")
        try:
            if mode is None:
                mode = (await asyncio.to_thread(os.fstat, fh.fileno())).st_mode & 0o7777

            async def chunks() -> AsyncIterator[bytes]:
                while True:
                    chunk = await asyncio.to_thread(fh.read, chunk_size)
                    if not chunk:
                        return
                    yield chunk

            return await target.write_stream(
                chunks(),
                mode=mode,
                atomic=atomic,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=extra_body,
            )
        finally:
            await asyncio.to_thread(fh.close)

    async def download(
        self,
        remote: str | SpritePath,
        local_path: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> int:
        """Copy a file out of the sprite without holding it in memory; return its size.

        Chunks are written in a worker thread to a temporary file next to
        ``local_path``, which replaces ``local_path`` only once the whole file
        has arrived: a failed download never leaves a truncated file behind.
        """
        source = self.path(remote)
        local = os.fspath(local_path)
        tmp = _partial_name(local)
        fh = await asyncio.to_thread(open, tmp, "xb")
        done = False
        total = 0
        try:
            async with source.open_read(
                chunk_size=chunk_size,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=extra_body,
            ) as stream:
                async for chunk in stream:
                    await asyncio.to_thread(fh.write, chunk)
                    total += len(chunk)
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(os.replace, tmp, local)
            done = True
        finally:
            if not done:
                await asyncio.to_thread(_discard_local, fh, tmp)
        return total


def _partial_name(local: str) -> str:
    """A temporary name next to ``local`` (same directory, so os.replace is atomic)."""
    head, tail = os.path.split(local)
    return os.path.join(head, f".{tail}.{secrets.token_hex(4)}.part")


def _discard_local(fh: Any, tmp: str) -> None:
    fh.close()
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


class SpritePath:
    """An absolute path inside a sprite, with pathlib-like async methods.

    Pure operations (``/``, ``name``, ``parent`` ...) never touch the network.
    """

    __slots__ = ("_fs", "path")

    def __init__(self, fs: SpriteFS, path: str) -> None:
        self._fs = fs
        self.path = path

    # ------------------------------------------------------------- pure parts

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<SpritePath {self._fs.sprite.name}:{self.path}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpritePath):
            return NotImplemented
        return self.path == other.path and self._fs.sprite == other._fs.sprite

    def __hash__(self) -> int:
        return hash((self._fs.sprite.name, self.path))

    def __truediv__(self, other: str | SpritePath) -> SpritePath:
        return SpritePath(self._fs, _join(self.path, other))

    def joinpath(self, *parts: str | SpritePath) -> SpritePath:
        """This path with ``parts`` appended (an absolute part replaces it)."""
        return SpritePath(self._fs, _join(self.path, *parts))

    @property
    def fs(self) -> SpriteFS:
        """The filesystem this path belongs to."""
        return self._fs

    @property
    def name(self) -> str:
        """The last component (``""`` for ``/``)."""
        return posixpath.basename(self.path)

    @property
    def parent(self) -> SpritePath:
        """The containing directory (``/`` is its own parent)."""
        return SpritePath(self._fs, posixpath.dirname(self.path))

    @property
    def suffix(self) -> str:
        """The extension of the last component, dot included (``""`` if none)."""
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        """The last component without its suffix."""
        return posixpath.splitext(self.name)[0]

    def with_name(self, name: str) -> SpritePath:
        """A sibling path with another last component."""
        if not name or "/" in name or "\x00" in name or name in (".", ".."):
            raise ValueError(f"invalid name {name!r}")
        if self.path == "/":
            raise ValueError("/ has no name to replace")
        return self.parent / name

    def with_suffix(self, suffix: str) -> SpritePath:
        """This path with its suffix replaced (``""`` removes it)."""
        if suffix and not suffix.startswith("."):
            raise ValueError(f"invalid suffix {suffix!r}")
        return self.with_name(self.stem + suffix)

    # ------------------------------------------------------------------ calls

    @property
    def _sprite(self) -> Sprite:
        return self._fs.sprite

    def _params(self, **extra: str) -> list[tuple[str, str]]:
        return [("path", self.path), ("workingDir", self._fs.root), *extra.items()]

    async def _call(
        self,
        method: str,
        endpoint: str,
        *,
        operation: str,
        params: list[tuple[str, str]] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        other: str | None = None,
        options: RequestOptions | None = None,
    ) -> Response:
        sprite = self._sprite
        try:
            resp = await sprite.client._request(
                method,
                sprite.path + "/fs/" + endpoint,
                operation=operation,
                sprite=sprite.name,
                params=params,
                json=None if json is None else _encode(json),
                timeout="wake",
                idempotent=idempotent,
                options=options,
            )
        except APIError as exc:
            raise fs_error(exc, self.path, other) from exc
        return resp

    async def _listing(self, options: RequestOptions | None = None) -> _Listing:
        resp = await self._call(
            "GET", "list", operation="fs list", params=self._params(), options=options
        )
        return resp.parse(_decode_listing)

    async def read_bytes(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bytes:
        """The whole file's contents (use :meth:`open_read` for big files)."""
        resp = await self._call(
            "GET",
            "read",
            operation="fs read",
            params=self._params(),
            options=request_options(extra_headers, extra_query, extra_body),
        )
        return resp.body

    async def read_text(
        self,
        encoding: str = "utf-8",
        errors: str = "strict",
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> str:
        """The whole file, decoded."""
        return (
            await self.read_bytes(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
            )
        ).decode(encoding, errors)

    async def write_bytes(
        self,
        data: bytes | bytearray | memoryview,
        *,
        mode: int = 0o644,
        atomic: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> WriteResult:
        """Replace the file with ``data``, creating parent directories.

        Args:
            data: The new contents.
            mode: Permission bits of the file.
            atomic: Write a temporary file in the same directory, then rename
                it over this path, so readers never see a partial file.
        """
        payload = bytes(data)
        options = request_options(extra_headers, extra_query, extra_body)
        if atomic:
            return await self._atomically(lambda tmp: tmp._write(payload, mode, options), options)
        return await self._write(payload, mode, options)

    async def write_text(
        self,
        text: str,
        encoding: str = "utf-8",
        errors: str = "strict",
        *,
        mode: int = 0o644,
        atomic: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> WriteResult:
        """Replace the file with ``text``, encoded."""
        return await self.write_bytes(
            text.encode(encoding, errors),
            mode=mode,
            atomic=atomic,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )

    def _write_params(self, mode: int) -> list[tuple[str, str]]:
        mode = check_int(mode, "mode", 0, 0o7777, octal=True)
        return self._params(mode=f"{mode:04o}", mkdirParents="true")

    async def _write(
        self, payload: bytes, mode: int, options: RequestOptions | None = None
    ) -> WriteResult:
        sprite = self._sprite
        try:
            resp = await sprite.client._request(
                "PUT",
                sprite.path + "/fs/write",
                operation="fs write",
                sprite=sprite.name,
                params=self._write_params(mode),
                data=payload,
                content_type="application/octet-stream",
                timeout="wake",
                idempotent=True,  # the whole file is replaced: repeating it is harmless
                options=options,
            )
        except APIError as exc:
            raise fs_error(exc, self.path) from exc
        return _write_result(resp.body, self.path)

    async def write_stream(
        self,
        chunks: AsyncIterable[bytes | bytearray | memoryview],
        *,
        mode: int = 0o644,
        atomic: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> WriteResult:
        """Replace the file with the bytes of ``chunks``, streamed as they come.

        Nothing is buffered beyond one chunk; the request is not retried
        (the iterable cannot be replayed).
        """
        options = request_options(extra_headers, extra_query, extra_body)
        if atomic:
            return await self._atomically(
                lambda tmp: tmp._write_stream(chunks, mode, options), options
            )
        return await self._write_stream(chunks, mode, options)

    async def _write_stream(
        self,
        chunks: AsyncIterable[bytes | bytearray | memoryview],
        mode: int,
        options: RequestOptions | None = None,
    ) -> WriteResult:
        sprite = self._sprite
        params = self._write_params(mode)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"write_stream() needs bytes chunks, got {type(chunk)}")
                if chunk:
                    yield bytes(chunk)

        try:
            async with sprite.client._stream(
                "PUT",
                sprite.path + "/fs/write",
                operation="fs write",
                sprite=sprite.name,
                params=params,
                data=body(),
                content_type="application/octet-stream",
                idempotent=False,
                options=options,
            ) as resp:
                raw = await resp.read()
        except APIError as exc:
            raise fs_error(exc, self.path) from exc
        return _write_result(raw, self.path)

    async def _atomically(
        self,
        write: Callable[[SpritePath], Awaitable[WriteResult]],
        options: RequestOptions | None = None,
    ) -> WriteResult:
        if self.path == "/":
            _local_error(SpriteIsADirectoryError, "EISDIR", "/", self._sprite.name, "fs write")
        tmp = self.with_name(f".{self.name}.{secrets.token_hex(6)}.tmp")
        try:
            result = await write(tmp)
            await tmp._rename(self, options)
        except BaseException:
            try:
                await asyncio.shield(tmp._remove(missing_ok=True, options=options))
            except Exception as cleanup:  # the original error matters more
                logger.warning("could not remove temporary file %s: %s", tmp.path, cleanup)
            raise
        return WriteResult(path=self.path, size=result.size, mode=result.mode)

    def open_read(
        self,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = 64 * 1024,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ByteStream:
        """Stream the file (or ``length`` bytes from ``offset``) in chunks.

        Use ``async for chunk in p.open_read(...)``, or ``async with`` it to
        be sure the response is released when you stop early.

        The range is sent as a standard ``Range`` header (whether the real
        server honours it is unconfirmed). A ``206`` is placed by
        its ``Content-Range``; a ``200`` means the range was ignored and the
        whole file follows, so it is skipped and trimmed client-side; a
        ``416`` (``offset`` past the end) yields nothing. Either way the
        caller gets exactly the bytes asked for, with no extra request.
        """
        check_int(offset, "offset")
        if length is not None:
            check_int(length, "length")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        options = request_options(extra_headers, extra_query, extra_body)
        return ByteStream(self._read_chunks(offset, length, chunk_size, options))

    async def _read_chunks(
        self,
        offset: int,
        length: int | None,
        chunk_size: int,
        options: RequestOptions | None = None,
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        sprite = self._sprite
        ranged = bool(offset) or length is not None
        headers = None
        if ranged:
            last = "" if length is None else str(offset + length - 1)
            headers = {"Range": f"bytes={offset}-{last}"}
        try:
            async with sprite.client._stream(
                "GET",
                sprite.path + "/fs/read",
                operation="fs read",
                sprite=sprite.name,
                params=self._params(),
                headers=headers,
                options=options,
            ) as resp:
                skip = await self._bytes_to_skip(resp, offset, ranged)
                remaining = length
                # A reset or stall raises the seam's typed error, with the request ids.
                async for chunk in resp.iter_chunked(chunk_size):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    if remaining is not None:
                        if len(chunk) >= remaining:
                            yield chunk[:remaining]
                            return
                        remaining -= len(chunk)
                    yield chunk
        except APIError as exc:
            if exc.status_code == 416 and ranged:
                return  # the range starts at or past the end of the file
            raise fs_error(exc, self.path) from exc

    async def _bytes_to_skip(self, resp: Body, offset: int, ranged: bool) -> int:
        """How many leading bytes of the body precede ``offset``."""
        if not ranged:
            return 0
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            unit, _, spec = content_range.partition(" ")
            start_text = spec.partition("-")[0]
            if unit.lower() != "bytes" or not start_text.isdigit():
                raise ProtocolError(f"206 with an unusable Content-Range: {content_range!r}")
            start = int(start_text)
            if start > offset:
                raise ProtocolError(f"asked for bytes from {offset}, got them from {start}")
            return offset - start
        # 200: the server ignored the range and sends the whole file.
        return offset

    async def stat(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> FileInfo:
        """Information about this path.

        There is no stat endpoint, so it is found by listing. The path
        itself is listed first, as every official SDK does: a single entry
        whose ``path`` is this path is the answer (a file or a symlink).
        Otherwise this is a directory, and only then is the parent listed to
        find its entry (a directory the parent's listing leaves out is still
        reported, without size, mode or time). ``/`` has no parent. A final
        symlink is reported as the server lists it: the emulator follows a
        link to a file (its target's type and size under the link's name),
        reports a link to a directory as the parent lists it (a symlink),
        and a dangling one as not found; :meth:`is_symlink` asks the parent.
        """
        options = request_options(extra_headers, extra_query, extra_body)
        try:
            listing = await self._listing(options)
        except SpriteFileNotFoundError as exc:
            exc.filename = self.path
            raise
        entries = listing.entries or []
        if len(entries) == 1 and _same_path(entries[0].path, self.path):
            return _info(entries[0])
        if self.path == "/":
            return FileInfo(name="", path="/", type="directory")
        try:
            parent = await self.parent._listing(options)
        except SpriteFileNotFoundError as exc:  # removed in between
            exc.filename = self.path
            raise
        name = self.name
        for entry in parent.entries or []:
            if entry.name == name or (not entry.name and _same_path(entry.path, self.path)):
                return _info(entry)
        return FileInfo(name=name, path=self.path, type="directory")

    async def exists(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """True if the path exists (False for a dangling symlink, as with pathlib)."""
        try:
            await self.stat(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
            )
        except (SpriteFileNotFoundError, SpriteNotADirectoryError):
            return False
        return True

    async def _kind(self, **extras: Any) -> str | None:
        """The type of what this path points to (symlinks followed), or None."""
        try:
            info = await self.stat(**extras)
        except (SpriteFileNotFoundError, SpriteNotADirectoryError):
            return None
        if not info.is_symlink:
            return info.type
        try:
            listing = await self._listing(request_options(**extras))
        except (SpriteFileNotFoundError, SpriteNotADirectoryError):
            return None  # dangling
        if _lists_itself(listing):
            return _info((listing.entries or [])[0]).type
        return "directory"

    async def is_dir(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """True for a directory or a symlink to one."""
        return (
            await self._kind(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
            )
            == "directory"
        )

    async def is_file(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """True for a regular file or a symlink to one."""
        return (
            await self._kind(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
            )
            == "file"
        )

    async def is_symlink(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """True for a symbolic link, dangling or not (the parent's listing tells)."""
        if self.path == "/":
            return False
        try:
            listing = await self.parent._listing(
                request_options(extra_headers, extra_query, extra_body)
            )
        except (SpriteFileNotFoundError, SpriteNotADirectoryError):
            return False
        if _lists_itself(listing):
            return False  # the parent is a file
        name = self.name
        for entry in listing.entries or []:
            if entry.name == name or (not entry.name and _same_path(entry.path, self.path)):
                return entry.type == "symlink"
        return False

    async def scandir(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> list[FileInfo]:
        """The entries of this directory.

        Raises:
            SpriteNotADirectoryError: The path is not a directory.
        """
        listing = await self._listing(request_options(extra_headers, extra_query, extra_body))
        if _lists_itself(listing):
            _local_error(SpriteNotADirectoryError, "ENOTDIR", self.path, self._sprite.name, "list")
        return [_info(e) for e in listing.entries or []]

    async def iterdir(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncIterator[SpritePath]:
        """Yield the paths of this directory's entries (one listing request)."""
        for entry in await self.scandir(
            extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
        ):
            yield self / entry.name

    async def mkdir(
        self,
        mode: int | None = None,
        *,
        parents: bool = True,
        exist_ok: bool = True,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Create this directory.

        There is no mkdir endpoint. Like the official SDKs this
        writes a marker file with parent creation enabled and deletes it;
        the marker has a random name, so an existing ``.keep`` of the user's
        is never overwritten or removed. ``mode`` (if given) is applied to the
        directory afterwards with chmod; the server's default applies
        otherwise. With ``parents=False`` or ``exist_ok=False`` the parent or
        the path is checked first (one extra request; not atomic).
        """
        options = request_options(extra_headers, extra_query, extra_body)
        extras: dict[str, Any] = {"extra_headers": extra_headers, "extra_query": extra_query}
        if not parents and not await self.parent.is_dir(**extras):
            _local_error(SpriteFileNotFoundError, "ENOENT", self.path, self._sprite.name, "mkdir")
        if not exist_ok and await self.exists(**extras):
            _local_error(SpriteFileExistsError, "EEXIST", self.path, self._sprite.name, "mkdir")
        marker = self / f".sprites-async-mkdir-{secrets.token_hex(6)}"
        try:
            await marker._write(b"", 0o600, options)
        except (SpriteNotADirectoryError, SpriteFileExistsError) as exc:
            if await self.exists(**extras) and not await self.is_dir(**extras):
                _local_error(SpriteFileExistsError, "EEXIST", self.path, self._sprite.name, "mkdir")
            raise exc
        await marker._remove(missing_ok=True, options=options)
        if mode is not None:
            await self.chmod(mode, **extras)

    async def _delete(self, recursive: bool, options: RequestOptions | None = None) -> None:
        params = self._params(recursive="true" if recursive else "false")
        await self._call("DELETE", "delete", operation="fs delete", params=params, options=options)

    async def _remove(self, *, missing_ok: bool, options: RequestOptions | None = None) -> None:
        try:
            await self._delete(False, options)
        except SpriteFileNotFoundError:
            if not missing_ok:
                raise

    async def unlink(
        self,
        missing_ok: bool = False,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Remove this file or symlink.

        The delete endpoint would also remove an empty directory; the path is
        checked first (one more request) so that this behaves like
        :meth:`pathlib.Path.unlink`.

        Raises:
            SpriteIsADirectoryError: It is a directory (use :meth:`rmdir`/:meth:`rmtree`).
            SpriteFileNotFoundError: It does not exist and ``missing_ok`` is False.
        """
        options = request_options(extra_headers, extra_query, extra_body)
        try:
            if (
                await self.stat(
                    extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
                )
            ).is_dir:
                _local_error(
                    SpriteIsADirectoryError, "EISDIR", self.path, self._sprite.name, "unlink"
                )
            await self._delete(False, options)
        except SpriteFileNotFoundError:
            if not missing_ok:
                raise

    async def rmdir(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Remove this directory, which must be empty.

        Raises:
            SpriteDirectoryNotEmptyError: It is not empty.
            SpriteNotADirectoryError: It is not a directory.
        """
        options = request_options(extra_headers, extra_query, extra_body)
        if not (
            await self.stat(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
            )
        ).is_dir:
            _local_error(SpriteNotADirectoryError, "ENOTDIR", self.path, self._sprite.name, "rmdir")
        await self._delete(False, options)

    async def rmtree(
        self,
        missing_ok: bool = False,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Remove this directory and everything in it (a symlink is never followed)."""
        options = request_options(extra_headers, extra_query, extra_body)
        try:
            if not (
                await self.stat(
                    extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
                )
            ).is_dir:
                _local_error(
                    SpriteNotADirectoryError, "ENOTDIR", self.path, self._sprite.name, "rmtree"
                )
            await self._delete(True, options)
        except SpriteFileNotFoundError:
            if not missing_ok:
                raise

    async def rename(
        self,
        target: str | SpritePath,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpritePath:
        """Move this path to ``target`` (replacing a file there); return the new path.

        A relative ``target`` is relative to the filesystem's root, as a
        relative target of :meth:`pathlib.Path.rename` is to the working directory.
        """
        return await self._rename(target, request_options(extra_headers, extra_query, extra_body))

    async def _rename(
        self, target: str | SpritePath, options: RequestOptions | None = None
    ) -> SpritePath:
        dest = self._other(target, "rename")
        body = {"source": self.path, "dest": dest.path, "workingDir": self._fs.root}
        await self._call(
            "POST",
            "rename",
            operation="fs rename",
            json=body,
            idempotent=False,
            other=dest.path,
            options=options,
        )
        return dest

    replace = rename

    def _other(self, target: str | SpritePath, op: str) -> SpritePath:
        if isinstance(target, SpritePath):
            if target._fs.sprite != self._sprite:
                raise ValueError(f"{op}() works within one sprite; use read/write across sprites")
            return target
        return self._fs.path(target)

    async def copy(
        self,
        target: str | SpritePath,
        *,
        recursive: bool = True,
        preserve_attrs: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> CopyResult:
        """Copy this file or directory tree to ``target`` (relative: to the root)."""
        dest = self._other(target, "copy")
        body = {
            "source": self.path,
            "dest": dest.path,
            "workingDir": self._fs.root,
            "recursive": recursive,
            "preserveAttrs": preserve_attrs,
        }
        # idempotent=False: once dest exists, a repeated copy may land inside it.
        resp = await self._call(
            "POST",
            "copy",
            operation="fs copy",
            json=body,
            idempotent=False,
            other=dest.path,
            options=request_options(extra_headers, extra_query, extra_body),
        )
        wire = resp.parse(_copy_decoder.decode)
        copied = [(c.source, c.dest) for c in wire.copied]
        count = wire.count if wire.count is not None else len(copied)
        return CopyResult(copied=copied, count=count, total_bytes=wire.total_bytes)

    async def chmod(
        self,
        mode: int,
        *,
        recursive: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Change permission bits (of everything below, with ``recursive``)."""
        mode = check_int(mode, "mode", 0, 0o7777, octal=True)
        body = {
            "path": self.path,
            "workingDir": self._fs.root,
            "mode": f"{mode:04o}",
            "recursive": recursive,
        }
        # An absolute mode: setting it twice is harmless.
        await self._call(
            "POST",
            "chmod",
            operation="fs chmod",
            json=body,
            idempotent=True,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    async def chown(
        self,
        uid: int | None = None,
        gid: int | None = None,
        *,
        recursive: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Change the owner and/or group (numeric ids; at least one of them)."""
        if uid is None and gid is None:
            raise ValueError("chown() needs uid and/or gid")
        for name, value in (("uid", uid), ("gid", gid)):
            if value is not None:
                check_int(value, name)
        body: dict[str, Any] = {"path": self.path, "workingDir": self._fs.root}
        if uid is not None:
            body["uid"] = uid
        if gid is not None:
            body["gid"] = gid
        body["recursive"] = recursive
        # Absolute ids: setting them twice is harmless.
        await self._call(
            "POST",
            "chown",
            operation="fs chown",
            json=body,
            idempotent=True,
            options=request_options(extra_headers, extra_query, extra_body),
        )


def _same_path(got: str, wanted: str) -> bool:
    return bool(got) and posixpath.normpath(got) == posixpath.normpath(wanted)


def _lists_itself(listing: _Listing) -> bool:
    """True when a listing is of a non-directory: its one entry is the listed path."""
    entries = listing.entries or []
    return (
        len(entries) == 1
        and bool(listing.path)
        and entries[0].path == listing.path
        and entries[0].type != "directory"
    )


def _write_result(raw: bytes, path: str) -> WriteResult:
    try:
        wire = _write_decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError included
        wire = _WireWrite(path=path)
    return WriteResult(path=wire.path or path, size=wire.size, mode=_parse_mode(wire.mode))


class ByteStream(AsyncResource):
    """Chunks of a file being downloaded; iterate it, and close it if you stop early.

    An async iterator and an async context manager: leaving the ``async with``
    block (or calling :meth:`aclose`) releases the HTTP response.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> ByteStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop reading and release the response. Idempotent."""
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()

    async def read(self) -> bytes:
        """Everything that is left, as one bytes object."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)
