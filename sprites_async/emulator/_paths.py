"""Confinement of sprite paths to a sprite's root directory.

Every path an API client names (filesystem routes, the policy file) is
interpreted as if the process were chrooted into the sprite's root
(``EmulatorState.sprite_root``):

* a relative ``path`` is joined to ``workingDir``; the result is cleaned
  lexically, like Go's ``filepath.Join`` in the real server, so ``..`` in the
  request can never climb above ``/``;
* the cleaned path is then walked one component at a time with ``lstat`` and
  ``readlink`` (``RESOLVE_IN_ROOT``-style): an absolute symlink target is
  taken from the sprite's ``/``, not the host's (a target spelled with the
  root's own host path, as unsandboxed processes write them, is mapped back
  into the root), and a relative target whose ``..`` would climb above the
  sprite's ``/`` is refused with ``EACCES`` rather than followed;
* more than :data:`MAX_SYMLINKS` symlinks in one resolution fail with ``ELOOP``.

The filesystem API therefore sees only the sprite's own tree. Exec'd
processes may see more (the exec module binds the host's ``/usr``, ``/etc``
... read-only), so ``/etc/passwd`` can exist for ``cat`` yet be ``ENOENT``
for ``GET /fs/read``: exposing host files is exactly what this module
prevents.

This is a guard against mistakes (a stray ``../``, a symlink a test left
pointing at ``/etc/passwd`` or at a sibling sprite), **not a security
boundary**: a process inside the sprite can swap a checked directory for a
symlink between the walk and the operation that follows it (a TOCTOU race).
Only the final ``open`` of a read uses ``O_NOFOLLOW``. Use ``bwrap`` or a real
VM to contain untrusted code.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ._state import json_response

MAX_SYMLINKS = 40
"""Symlinks followed in one resolution before failing (Linux's limit)."""

_STATUS_BY_CODE = {
    "ENOENT": 404,
    "EISDIR": 400,
    "ENOTDIR": 400,
    "ENOTEMPTY": 400,
    "EINVAL": 400,
    "EEXIST": 400,
    "ELOOP": 400,
    "EACCES": 403,
    "EIO": 500,
}

_CODE_BY_ERRNO = {
    errno.ENOENT: "ENOENT",
    errno.EEXIST: "EEXIST",
    errno.ENOTDIR: "ENOTDIR",
    errno.EISDIR: "EISDIR",
    errno.EACCES: "EACCES",
    # The real server runs unprivileged operations as the sprite user; EPERM
    # (e.g. chown by a non-root emulator) is reported the same way as EACCES.
    errno.EPERM: "EACCES",
    errno.ENOTEMPTY: "ENOTEMPTY",
    errno.EINVAL: "EINVAL",
    errno.ELOOP: "ELOOP",
    errno.ENAMETOOLONG: "EINVAL",
    errno.EBUSY: "EINVAL",
    errno.EXDEV: "EINVAL",
}

_ERRNO_BY_CODE = {
    "ENOENT": errno.ENOENT,
    "EEXIST": errno.EEXIST,
    "ENOTDIR": errno.ENOTDIR,
    "EISDIR": errno.EISDIR,
    "EACCES": errno.EACCES,
    "ENOTEMPTY": errno.ENOTEMPTY,
    "EINVAL": errno.EINVAL,
    "ELOOP": errno.ELOOP,
    "EIO": errno.EIO,
}


class FsError(Exception):
    """A filesystem failure reported as ``{"error","code","path"}`` (section 7.11)."""

    def __init__(self, code: str, path: str, message: str | None = None) -> None:
        if message is None:
            # Go's syscall errors read like strerror in lower case ("no such
            # file or directory"), which is what clients match on.
            message = os.strerror(_ERRNO_BY_CODE.get(code, errno.EIO)).lower()
        super().__init__(message)
        self.code = code
        self.path = path
        self.message = message

    @property
    def status(self) -> int:
        """HTTP status recommended for this code (section 7.11)."""
        return _STATUS_BY_CODE.get(self.code, 500)

    @classmethod
    def from_os(cls, exc: OSError, path: str) -> FsError:
        """Translate an ``OSError`` about the sprite path ``path``."""
        code = _CODE_BY_ERRNO.get(exc.errno or 0, "EIO")
        message = exc.strerror.lower() if exc.strerror else None
        return cls(code, path, message)

    def response(self) -> web.Response:
        """The JSON error response for this failure."""
        return json_response(
            {"error": self.message, "code": self.code, "path": self.path}, self.status
        )


def clean(path: str, working_dir: str = "/") -> str:
    """The sprite-absolute, lexically cleaned form of ``path``.

    Relative paths are joined to ``working_dir`` (itself taken from ``/`` when
    relative). ``..`` stops at ``/``, as ``cd /..`` does.
    """
    if "\x00" in path or "\x00" in working_dir:
        raise FsError("EINVAL", path.replace("\x00", ""), "invalid argument: NUL byte in path")
    if not path.startswith("/"):
        path = (working_dir or "/") + "/" + path
    # POSIX keeps a leading "//" distinct; a sprite path never needs it.
    return posixpath.normpath("/" + path.lstrip("/"))


@dataclass(frozen=True)
class Resolved:
    """A sprite path after confinement."""

    path: str
    """The cleaned path as requested (used in responses and errors)."""
    real: str
    """Sprite-absolute path after resolving symlinks (no symlink components)."""
    host: Path
    """Host path of ``real``, always inside the sprite's root."""
    lstat: os.stat_result | None
    """``lstat`` of ``host`` taken during the walk; ``None`` if it does not exist."""

    @property
    def exists(self) -> bool:
        """Whether the final component existed during the walk."""
        return self.lstat is not None

    @property
    def is_root(self) -> bool:
        """Whether this names the sprite's ``/`` itself."""
        return self.real == "/"


def resolve(
    root: Path,
    path: str,
    *,
    follow_last: bool = True,
    create_parents: bool = False,
    owner: tuple[int, int] | None = None,
) -> Resolved:
    """Resolve the cleaned sprite path ``path`` inside ``root``.

    Intermediate components must be directories (after following symlinks);
    the final one may be missing (see :attr:`Resolved.exists`). With
    ``follow_last`` false a final symlink is returned itself (for delete,
    rename, lstat). With ``create_parents`` missing intermediate directories
    are created (mode 0755) as the walk reaches them, so creation can never
    happen outside ``root`` either; ``owner`` is the host ``(uid, gid)`` to
    give them (see ``_sandbox.file_owner``). Raises :class:`FsError`.
    Blocking: call it from a worker thread.
    """
    pending: deque[str] = deque(c for c in path.split("/") if c not in ("", "."))
    done: list[str] = []
    links = 0
    while pending:
        comp = pending.popleft()
        if comp == ".":
            continue
        if comp == "..":
            # Only symlink targets can still contain "..": clean() removed the
            # request's own. Climbing above "/" means the link points outside.
            if not done:
                raise FsError("EACCES", path, "permission denied: symlink leads outside the sprite")
            done.pop()
            continue
        last = not pending
        host = root.joinpath(*done, comp)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            if last:
                return Resolved(path, _join(done, comp), host, None)
            if not create_parents:
                raise FsError("ENOENT", path) from None
            try:
                os.mkdir(host, 0o755)
                if owner is not None:
                    os.lchown(host, *owner)
            except FileExistsError:
                # Lost a race with a concurrent creator: walk it again.
                pending.appendleft(comp)
                continue
            except OSError as exc:
                raise FsError.from_os(exc, path) from exc
            done.append(comp)
            continue
        except OSError as exc:
            raise FsError.from_os(exc, path) from exc
        if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
            links += 1
            if links > MAX_SYMLINKS:
                raise FsError("ELOOP", path)
            try:
                target = os.readlink(host)
            except OSError as exc:
                raise FsError.from_os(exc, path) from exc
            if not target:
                raise FsError("ENOENT", path)
            if target.startswith("/"):
                # The link was made inside the sprite: "/" is the sprite's root.
                done.clear()
                target = _strip_host_root(root, target)
            pending.extendleft(reversed([c for c in target.split("/") if c not in ("", ".")]))
            continue
        if not last and not stat.S_ISDIR(st.st_mode):
            raise FsError("ENOTDIR", path)
        done.append(comp)
        if last:
            return Resolved(path, _join(done), host, st)
    try:
        st = os.lstat(root.joinpath(*done))
    except OSError as exc:
        raise FsError.from_os(exc, path) from exc
    return Resolved(path, _join(done), root.joinpath(*done), st)


def resolve_in(
    root: Path,
    path: str,
    working_dir: str = "/",
    *,
    follow_last: bool = True,
    create_parents: bool = False,
    owner: tuple[int, int] | None = None,
) -> Resolved:
    """:func:`clean` then :func:`resolve`: the usual entry point for a request."""
    return resolve(
        root,
        clean(path, working_dir),
        follow_last=follow_last,
        create_parents=create_parents,
        owner=owner,
    )


def child(parent: str, name: str) -> str:
    """The sprite path of ``name`` inside the sprite directory ``parent``."""
    return parent.rstrip("/") + "/" + name


def display_name(name: str) -> str:
    """A file name safe for JSON (undecodable bytes become U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


def _strip_host_root(root: Path, target: str) -> str:
    # Unsandboxed processes (sandbox "none") see host paths, so a link they
    # make may hold the root's host path; it means the same file in the sprite.
    for prefix in {str(root), os.path.realpath(root)}:
        if target == prefix or target.startswith(prefix + "/"):
            return target[len(prefix) :] or "/"
    return target


def _join(done: list[str], *more: str) -> str:
    return "/" + "/".join([*done, *more])
