"""What every :class:`~sprites_async.SpritePath` is made of: the pure path and one request per call.

The pure half (``/``, ``name``, ``parent`` ...) never touches the network.
The other half is the single requests (list, write, delete, rename) that
both the contents methods (:mod:`._fs`) and the namespace methods
(:mod:`._fs_tree`) build on, so neither of those needs the other.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ._errors import APIError
from ._fs_errors import SpriteFileNotFoundError, fs_error
from ._fs_types import WriteResult, _decode_listing, _Listing, _write_result
from ._options import RequestOptions
from ._validation import check_int, check_sprite_path

if TYPE_CHECKING:
    from ._fs import SpriteFS, SpritePath
    from ._session import Response
    from ._sprites import Sprite


_encode = msgspec.json.encode


def _path_text(part: object) -> str:
    return part.path if isinstance(part, _SpritePathBase) else check_sprite_path(part)


def _join(base: str, *parts: object) -> str:
    path = base
    for part in parts:
        path = posixpath.join(path, _path_text(part))
    # Lexical normalisation: the server resolves the same way, and a stable
    # spelling makes paths comparable and the stat-by-parent lookup exact.
    path = posixpath.normpath(path)
    return "/" if path.startswith("//") else path


class _SpritePathBase:
    """The pure path and the single requests; only :class:`SpritePath` is ever made."""

    __slots__ = ("_fs", "path")

    def __init__(self, fs: SpriteFS, path: str) -> None:
        self._fs = fs
        self.path = path

    def _at(self, path: str) -> SpritePath:
        # Only SpritePath is instantiated, so type(self) is always it.
        return cast("SpritePath", type(self)(self._fs, path))

    # ------------------------------------------------------------- pure parts

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<SpritePath {self._fs.sprite.name}:{self.path}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _SpritePathBase):
            return NotImplemented
        return self.path == other.path and self._fs.sprite == other._fs.sprite

    def __hash__(self) -> int:
        return hash((self._fs.sprite.name, self.path))

    def __truediv__(self, other: str | SpritePath) -> SpritePath:
        return self._at(_join(self.path, other))

    def joinpath(self, *parts: str | SpritePath) -> SpritePath:
        """This path with ``parts`` appended (an absolute part replaces it)."""
        return self._at(_join(self.path, *parts))

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
        return self._at(posixpath.dirname(self.path))

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

    async def _delete(self, recursive: bool, options: RequestOptions | None = None) -> None:
        params = self._params(recursive="true" if recursive else "false")
        await self._call("DELETE", "delete", operation="fs delete", params=params, options=options)

    async def _remove(self, *, missing_ok: bool, options: RequestOptions | None = None) -> None:
        try:
            await self._delete(False, options)
        except SpriteFileNotFoundError:
            if not missing_ok:
                raise

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

    def _other(self, target: str | SpritePath, op: str) -> SpritePath:
        if isinstance(target, _SpritePathBase):
            if target._fs.sprite != self._sprite:
                raise ValueError(f"{op}() works within one sprite; use read/write across sprites")
            return target
        return self._fs.path(target)
