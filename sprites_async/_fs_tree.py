"""The namespace half of :class:`~sprites_async.SpritePath`.

Metadata and listing (``stat``, ``exists``, ``is_*``, ``scandir``), and the
changes to the tree (``mkdir``, ``unlink``/``rmdir``/``rmtree``, ``rename``,
``copy``, ``chmod``, ``chown``); reading and writing contents is in :mod:`._fs`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ._fs_errors import (
    SpriteFileExistsError,
    SpriteFileNotFoundError,
    SpriteIsADirectoryError,
    SpriteNotADirectoryError,
    _local_error,
)
from ._fs_path import _SpritePathBase
from ._fs_types import (
    CopyResult,
    FileInfo,
    _copy_decoder,
    _info,
    _lists_itself,
    _same_path,
)
from ._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    request_options,
)
from ._validation import check_int

if TYPE_CHECKING:
    from ._fs import SpritePath


class _SpriteTree(_SpritePathBase):
    """Metadata, listing and changes to the tree; only :class:`SpritePath` is ever made."""

    __slots__ = ()

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

    replace = rename

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
