"""What the ``/fs`` endpoints answer: the wire listings, the results and the byte stream handle."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec

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
from ._resource import AsyncResource

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
