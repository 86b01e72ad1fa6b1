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

The errors are in ``_fs_errors``, the wire structs and results in
``_fs_types``; :class:`SpritePath` is assembled from ``_fs_path`` and
``_fs_tree`` (see its class body).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import (
    APIError,
    ProtocolError,
)
from ._fs_errors import (
    SpriteDirectoryNotEmptyError,
    SpriteFileExistsError,
    SpriteFileNotFoundError,
    SpriteFSError,
    SpriteIsADirectoryError,
    SpriteNotADirectoryError,
    SpritePermissionError,
    _local_error,
    fs_error,
)
from ._fs_path import _join, _path_text
from ._fs_tree import _SpriteTree
from ._fs_types import ByteStream, CopyResult, FileInfo, WriteResult, _write_result
from ._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    RequestOptions,
    request_options,
)
from ._validation import check_int

if TYPE_CHECKING:
    from ._body import Body
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


# ------------------------------------------------------------ filesystem


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


class SpritePath(_SpriteTree):
    """An absolute path inside a sprite, with pathlib-like async methods.

    Pure operations (``/``, ``name``, ``parent`` ...) never touch the network.
    """

    # Built in layers, each in its own module: the pure path and the single
    # requests (_fs_path), the namespace methods (_fs_tree), and here the
    # contents: whole-file and streamed reads and writes.

    __slots__ = ()

    # --------------------------------------------------------------- contents

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
