"""Filesystem API of the sprite layer: ``/v1/sprites/{name}/fs/...`` (section 7).

Every path is confined to the sprite's root by :mod:`._paths` (read its
docstring for the rules and for why this is not a security boundary).
Blocking filesystem work runs in worker threads; file contents are streamed
in both directions, so memory use does not grow with file size.

Operations run as the emulator's own user; ``asRoot`` is accepted and
ignored. When the emulator runs as root with the sandbox, what they create
(files written, parent directories, copies) is given to the sprite user's
host id (``_sandbox.SANDBOX_HOST_ID``) so that the sprite can change it, and
``chown`` speaks the sprite's ids: uid/gid 1000 is that host id, both ways.
A body larger than ``EmulatorConfig.max_body`` is refused with ``EINVAL``
and nothing is written.

Emulator extensions (the real behaviour is unconfirmed, section 7.1):
``GET /fs/read`` honours a single-range ``Range: bytes=...`` header with
``206``/``416``, and the query parameters ``offset``/``length`` which select
a slice with a plain ``200`` (both ignored under the ``fs-range-ignored``
quirk). Error statuses follow the emulator
recommendation of section 7.11 (404 ENOENT; 400 EISDIR, ENOTDIR, ENOTEMPTY,
EINVAL, EEXIST, ELOOP; 403 EACCES; 500 EIO).
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from ._paths import FsError, Resolved, child, display_name, resolve_in
from ._sandbox import SPRITE_UID, file_owner, give_to_sprite
from ._state import STATE_KEY, EmulatorState
from ._wire import BodyTooLarge, go_json, in_thread, read_capped, rfc3339_seconds

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Bytes per disk read/write while streaming file contents."""
JSON_BODY_LIMIT = 1 << 20

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register the ``/fs`` routes (and, for now, the ``/proxy`` route)."""
    base = "/v1/sprites/{name}/fs"
    app.router.add_get(base + "/read", _read, allow_head=False)
    app.router.add_put(base + "/write", _write)
    app.router.add_get(base + "/list", _list, allow_head=False)
    app.router.add_delete(base + "/delete", _delete)
    app.router.add_post(base + "/rename", _rename)
    app.router.add_post(base + "/copy", _copy)
    app.router.add_post(base + "/chmod", _chmod)
    app.router.add_post(base + "/chown", _chown)


# --- request parameters -----------------------------------------------------


class _Params:
    """Parameters from the query string and/or a JSON body (body wins)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    @classmethod
    async def from_request(cls, request: web.Request, *, body: bool) -> _Params:
        values: dict[str, Any] = dict(request.query)
        if body:
            try:
                raw = await read_capped(request, JSON_BODY_LIMIT)
            except BodyTooLarge:
                raise FsError("EINVAL", "", "invalid request: body too large") from None
            if raw.strip():
                try:
                    doc = msgspec.json.decode(raw)
                except (msgspec.DecodeError, RecursionError):
                    raise FsError("EINVAL", "", "invalid request: malformed JSON") from None
                if not isinstance(doc, dict):
                    raise FsError("EINVAL", "", "invalid request: body must be a JSON object")
                values.update(doc)
        return cls(values)

    def string(self, key: str, default: str | None = None) -> str:
        value = self._values.get(key)
        if value is None:
            if default is None:
                raise FsError("EINVAL", "", f"invalid request: {key} is required")
            return default
        if not isinstance(value, str):
            raise FsError("EINVAL", "", f"invalid request: {key} must be a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._values.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        # strconv.ParseBool's vocabulary, as the Go server parses query flags.
        if isinstance(value, str) and value in _TRUE:
            return True
        if isinstance(value, str) and value in _FALSE:
            return False
        raise FsError("EINVAL", "", f"invalid request: {key} must be a boolean")

    def optional_flag(self, key: str) -> bool | None:
        return None if self._values.get(key) is None else self.flag(key, False)

    def ident(self, key: str) -> int | None:
        value = self._values.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
            raise FsError("EINVAL", "", f"invalid request: {key} must be a numeric id")
        return value

    def integer(self, key: str) -> int | None:
        value = self._values.get(key)
        if value is None:
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < 0 or isinstance(value, bool):
            raise FsError("EINVAL", "", f"invalid request: {key} must be a non-negative integer")
        return number


def _parse_mode(text: str, path: str) -> int:
    try:
        mode = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise FsError("EINVAL", path, f"invalid mode: {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise FsError("EINVAL", path, f"invalid mode: {text!r}")
    return mode


def _root(request: web.Request) -> Path:
    return request.app[STATE_KEY].sprite_root(request.match_info["name"])


def _owner(request: web.Request) -> tuple[int, int] | None:
    return file_owner(request.app[STATE_KEY].config.sandbox)


def _entry(name: str, path: str, st: os.stat_result) -> dict[str, Any]:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "directory"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    else:
        kind = "other"
    return {
        "name": name,
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(mode) & 0o777:03o}",
        "modTime": rfc3339_seconds(st.st_mtime),
        "isDir": stat.S_ISDIR(mode),
    }


# --- read -------------------------------------------------------------------


@dataclass
class _OpenFile:
    fd: int
    size: int
    path: str


def _open_for_read(root: Path, path: str, working_dir: str) -> _OpenFile:
    r = resolve_in(root, path, working_dir)
    if r.lstat is None:
        raise FsError("ENOENT", r.path)
    if stat.S_ISDIR(r.lstat.st_mode):
        raise FsError("EISDIR", r.path)
    if not stat.S_ISREG(r.lstat.st_mode):
        # A FIFO or device would block a worker thread forever.
        raise FsError("EINVAL", r.path, "invalid argument: not a regular file")
    try:
        fd = os.open(r.host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FsError("EINVAL", r.path, "invalid argument: not a regular file")
    return _OpenFile(fd, st.st_size, r.path)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` for a single ``bytes=`` range; ``None`` to ignore the header.

    Raises ``ValueError`` when the range is well formed but unsatisfiable.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # RFC 9110 lets a server ignore ranges it does not support
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise ValueError
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise ValueError
    return start, end


def _sniff(head: bytes) -> str:
    """A content type from the first bytes, in the spirit of Go's DetectContentType."""
    if not head:
        return "text/plain; charset=utf-8"
    if b"\x00" in head:
        return "application/octet-stream"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sniff boundary is still text.
        if exc.start < len(head) - 3:
            return "application/octet-stream"
    return "text/plain; charset=utf-8"


async def _read(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=False)
        path = params.string("path")
        working_dir = params.string("workingDir", "/")
        offset = params.integer("offset")
        length = params.integer("length")
        opened = await in_thread(
            _open_for_read,
            _root(request),
            path,
            working_dir,
            discard=lambda o: os.close(o.fd),
        )
    except FsError as err:
        return err.response()
    try:
        size = opened.size
        start, end, status = 0, size, 200
        headers = {"Accept-Ranges": "bytes"}
        if request.app[STATE_KEY].quirks.on("fs-range-ignored"):
            # A server that knows no ranges: the whole file, 200, no Accept-Ranges.
            headers = {}
        elif offset is not None or length is not None:
            start = min(offset or 0, size)
            end = size if length is None else min(size, start + length)
        elif "Range" in request.headers:
            try:
                picked = _byte_range(request.headers["Range"], size)
            except ValueError:
                unsatisfiable = FsError("EINVAL", opened.path, "requested range not satisfiable")
                refusal = unsatisfiable.response()
                refusal.set_status(416)
                refusal.headers["Content-Range"] = f"bytes */{size}"
                return refusal
            if picked is not None:
                start, end = picked
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        head = await in_thread(os.pread, opened.fd, 512, 0)
        headers["Content-Type"] = _sniff(head)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        pos = start
        try:
            while pos < end:
                data = await in_thread(os.pread, opened.fd, min(CHUNK, end - pos), pos)
                if not data:
                    break  # truncated underneath us; the client sees a short body
                await resp.write(data)
                pos += len(data)
            await resp.write_eof()
        except ConnectionError:
            # A client that stops a download is normal, not a server error.
            log.debug("fs read of %s: the client left after %d bytes", opened.path, pos - start)
        return resp
    finally:
        os.close(opened.fd)


# --- write ------------------------------------------------------------------


@dataclass
class _PendingWrite:
    target: Resolved
    fd: int
    tmp: str
    closed: bool = False


def _prepare_write(
    root: Path, path: str, working_dir: str, parents: bool, owner: tuple[int, int] | None
) -> _PendingWrite:
    r = resolve_in(root, path, working_dir, create_parents=parents, owner=owner)
    if r.is_root or (r.lstat is not None and stat.S_ISDIR(r.lstat.st_mode)):
        raise FsError("EISDIR", r.path)
    try:
        # A temporary file in the same directory, renamed over the target at
        # the end, so readers never see a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=".sprite-write-", dir=r.host.parent)
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    pending = _PendingWrite(r, fd, tmp)
    if owner is not None:
        try:
            os.fchown(fd, *owner)
        except OSError as exc:
            _discard(pending)
            raise FsError.from_os(exc, r.path) from exc
    return pending


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _discard(pending: _PendingWrite) -> None:
    if not pending.closed:
        pending.closed = True
        os.close(pending.fd)
    try:
        os.unlink(pending.tmp)
    except FileNotFoundError:
        pass


def _commit_write(pending: _PendingWrite, mode: int) -> None:
    # fchmod rather than the mode of open(): the umask must not apply.
    os.fchmod(pending.fd, mode)
    pending.closed = True
    os.close(pending.fd)
    try:
        os.replace(pending.tmp, pending.target.host)
    except OSError as exc:
        raise FsError.from_os(exc, pending.target.path) from exc


async def _write(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    limit = state.config.max_body
    try:
        params = _Params(request.query)
        path = params.string("path")
        working_dir = params.string("workingDir", "/")
        mode = _parse_mode(params.string("mode", "0644"), path)
        flags = [params.optional_flag("mkdirParents"), params.optional_flag("mkdir")]
        # Parents are created unless the client explicitly asked not to:
        # the real server creates them with either spelling and with neither.
        parents = True if True in flags else False not in flags
        if request.content_length is not None and request.content_length > limit:
            raise FsError("EINVAL", path, "request body too large")
        pending = await in_thread(
            _prepare_write,
            _root(request),
            path,
            working_dir,
            parents,
            _owner(request),
            discard=_discard,
        )
    except FsError as err:
        return err.response()
    size = 0
    committed = False
    try:
        buf = bytearray()
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise FsError("EINVAL", pending.target.path, "request body too large")
            buf += chunk
            if len(buf) >= CHUNK:
                await in_thread(_write_all, pending.fd, buf)
                buf = bytearray()
        if buf:
            await in_thread(_write_all, pending.fd, buf)
        await in_thread(_commit_write, pending, mode)
        committed = True
    except FsError as err:
        return err.response()
    except OSError as exc:
        return FsError.from_os(exc, pending.target.path).response()
    finally:
        if not committed:
            _discard(pending)
    return go_json({"path": pending.target.path, "size": size, "mode": f"{mode:04o}"})


# --- list -------------------------------------------------------------------


def _list_sync(root: Path, path: str, working_dir: str) -> dict[str, Any]:
    r = resolve_in(root, path, working_dir)
    if r.lstat is None:
        raise FsError("ENOENT", r.path)
    if not stat.S_ISDIR(r.lstat.st_mode):
        name = posixpath.basename(r.path)
        return {"path": r.path, "count": 1, "entries": [_entry(name, r.path, r.lstat)]}
    entries = []
    try:
        with os.scandir(r.host) as it:
            found = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    for entry in found:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we were listing
        name = display_name(entry.name)
        entries.append(_entry(name, child(r.path, name), st))
    return {"path": r.path, "count": len(entries), "entries": entries}


async def _list(request: web.Request) -> web.StreamResponse:
    try:
        params = _Params(request.query)
        path = params.string("path")
        working_dir = params.string("workingDir", "/")
        result = await asyncio.to_thread(_list_sync, _root(request), path, working_dir)
    except FsError as err:
        return err.response()
    return go_json(result)


# --- delete -----------------------------------------------------------------


def _delete_sync(root: Path, path: str, working_dir: str, recursive: bool) -> dict[str, Any]:
    r = resolve_in(root, path, working_dir, follow_last=False)
    if r.lstat is None:
        raise FsError("ENOENT", r.path)
    if r.is_root:
        raise FsError("EACCES", r.path, "permission denied: cannot delete /")
    try:
        if not stat.S_ISDIR(r.lstat.st_mode):
            os.unlink(r.host)
        elif recursive:
            # rmtree uses fd-relative calls on Linux and never follows symlinks.
            shutil.rmtree(r.host)
        else:
            os.rmdir(r.host)
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    return {"deleted": [r.path], "count": 1}


async def _delete(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=True)
        result = await asyncio.to_thread(
            _delete_sync,
            _root(request),
            params.string("path"),
            params.string("workingDir", "/"),
            params.flag("recursive", False),
        )
    except FsError as err:
        return err.response()
    return go_json(result)


# --- rename -----------------------------------------------------------------


def _rename_sync(root: Path, source: str, dest: str, working_dir: str) -> dict[str, Any]:
    src = resolve_in(root, source, working_dir, follow_last=False)
    if src.lstat is None:
        raise FsError("ENOENT", src.path)
    dst = resolve_in(root, dest, working_dir, follow_last=False)
    if src.is_root or dst.is_root:
        raise FsError("EINVAL", src.path, "invalid argument: cannot rename /")
    try:
        os.rename(src.host, dst.host)
    except OSError as exc:
        raise FsError.from_os(exc, src.path) from exc
    return {"source": src.path, "dest": dst.path}


async def _rename(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=True)
        result = await asyncio.to_thread(
            _rename_sync,
            _root(request),
            params.string("source"),
            params.string("dest"),
            params.string("workingDir", "/"),
        )
    except FsError as err:
        return err.response()
    return go_json(result)


# --- copy -------------------------------------------------------------------


class _Copier:
    """Recursive copy that never follows a symlink on either side."""

    def __init__(self, preserve: bool, owner: tuple[int, int] | None = None) -> None:
        self.preserve = preserve
        self.owner = owner
        self.copied: list[dict[str, str]] = []
        self.total = 0

    def file(self, src: Path, dst: Path, src_path: str, dst_path: str) -> None:
        self._clear_link(dst)
        if self.preserve:
            shutil.copy2(src, dst, follow_symlinks=False)
        else:
            shutil.copyfile(src, dst, follow_symlinks=False)
            shutil.copymode(src, dst, follow_symlinks=False)
        give_to_sprite(dst, self.owner)
        self.total += os.lstat(dst).st_size
        self.copied.append({"source": src_path, "dest": dst_path})

    def link(self, src: Path, dst: Path, src_path: str, dst_path: str) -> None:
        self._clear_link(dst, any_file=True)
        os.symlink(os.readlink(src), dst)
        give_to_sprite(dst, self.owner)
        self.copied.append({"source": src_path, "dest": dst_path})

    def tree(self, src: Path, dst: Path, src_path: str, dst_path: str) -> None:
        self._clear_link(dst)
        try:
            os.mkdir(dst)
            give_to_sprite(dst, self.owner)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(dst).st_mode):
                raise FsError("ENOTDIR", dst_path) from None
        with os.scandir(src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            s, d = Path(entry.path), dst / entry.name
            sp, dp = child(src_path, entry.name), child(dst_path, entry.name)
            if entry.is_symlink():
                self.link(s, d, sp, dp)
            elif entry.is_dir(follow_symlinks=False):
                self.tree(s, d, sp, dp)
            elif entry.is_file(follow_symlinks=False):
                self.file(s, d, sp, dp)
            # Sockets, FIFOs and devices are skipped: copying them is meaningless.
        if self.preserve:
            shutil.copystat(src, dst, follow_symlinks=False)
        else:
            shutil.copymode(src, dst, follow_symlinks=False)

    @staticmethod
    def _clear_link(dst: Path, *, any_file: bool = False) -> None:
        # Writing through an existing symlink in the destination would follow
        # it on the host, possibly out of the sprite: replace it instead.
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or (any_file and not stat.S_ISDIR(st.st_mode)):
            os.unlink(dst)


def _copy_sync(
    root: Path,
    source: str,
    dest: str,
    working_dir: str,
    recursive: bool,
    preserve: bool,
    owner: tuple[int, int] | None = None,
) -> dict[str, Any]:
    src = resolve_in(root, source, working_dir)
    if src.lstat is None:
        raise FsError("ENOENT", src.path)
    dst = resolve_in(root, dest, working_dir)
    copier = _Copier(preserve, owner)
    try:
        if stat.S_ISDIR(src.lstat.st_mode):
            if not recursive:
                raise FsError("EISDIR", src.path)
            if dst.real == src.real or dst.real.startswith(src.real.rstrip("/") + "/"):
                raise FsError("EINVAL", dst.path, "invalid argument: cannot copy into itself")
            if dst.lstat is not None and not stat.S_ISDIR(dst.lstat.st_mode):
                raise FsError("ENOTDIR", dst.path)
            copier.tree(src.host, dst.host, src.path, dst.path)
        elif stat.S_ISREG(src.lstat.st_mode):
            if dst.is_root or (dst.lstat is not None and stat.S_ISDIR(dst.lstat.st_mode)):
                raise FsError("EISDIR", dst.path)
            if dst.real == src.real:
                raise FsError("EINVAL", dst.path, "invalid argument: source and dest are the same")
            copier.file(src.host, dst.host, src.path, dst.path)
        else:
            raise FsError("EINVAL", src.path, "invalid argument: not a regular file")
    except OSError as exc:
        raise FsError.from_os(exc, src.path) from exc
    return {"copied": copier.copied, "count": len(copier.copied), "totalBytes": copier.total}


async def _copy(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=True)
        result = await asyncio.to_thread(
            _copy_sync,
            _root(request),
            params.string("source"),
            params.string("dest"),
            params.string("workingDir", "/"),
            params.flag("recursive", False),
            params.flag("preserveAttrs", False),
            _owner(request),
        )
    except FsError as err:
        return err.response()
    return go_json(result)


# --- chmod / chown ----------------------------------------------------------


def _walk(host: Path, path: str) -> list[tuple[Path, str, bool]]:
    """``(host, sprite path, is_symlink)`` for ``host`` and everything below it."""
    found = [(host, path, False)]
    index = 0
    while index < len(found):
        dir_host, dir_path, is_link = found[index]
        index += 1
        if is_link or not stat.S_ISDIR(os.lstat(dir_host).st_mode):
            continue
        with os.scandir(dir_host) as it:
            for entry in sorted(it, key=lambda e: e.name):
                name = display_name(entry.name)
                found.append((Path(entry.path), child(dir_path, name), entry.is_symlink()))
    return found


def _chmod_sync(
    root: Path, path: str, working_dir: str, mode: int, recursive: bool
) -> dict[str, Any]:
    r = resolve_in(root, path, working_dir)
    if r.lstat is None:
        raise FsError("ENOENT", r.path)
    affected = []
    try:
        targets = _walk(r.host, r.path) if recursive else [(r.host, r.path, False)]
        for host, sprite_path, is_link in targets:
            if is_link:
                continue  # Linux cannot chmod a symlink; following it could leave the sprite
            os.chmod(host, mode)
            affected.append({"path": sprite_path, "mode": f"{mode:04o}"})
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    return {"affected": affected, "count": len(affected)}


async def _chmod(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=True)
        path = params.string("path")
        mode = _parse_mode(params.string("mode"), path)
        result = await asyncio.to_thread(
            _chmod_sync,
            _root(request),
            path,
            params.string("workingDir", "/"),
            mode,
            params.flag("recursive", False),
        )
    except FsError as err:
        return err.response()
    return go_json(result)


def _chown_sync(
    root: Path,
    path: str,
    working_dir: str,
    uid: int | None,
    gid: int | None,
    recursive: bool,
    owner: tuple[int, int] | None = None,
) -> dict[str, Any]:
    r = resolve_in(root, path, working_dir)
    if r.lstat is None:
        raise FsError("ENOENT", r.path)
    affected = []
    # The sprite's ids in, the sprite's ids out: its uid 1000 is ``owner`` on the host.
    host_uid, host_gid = owner or (SPRITE_UID, SPRITE_UID)
    new_uid = -1 if uid is None else host_uid if uid == SPRITE_UID else uid
    new_gid = -1 if gid is None else host_gid if gid == SPRITE_UID else gid
    try:
        targets = _walk(r.host, r.path) if recursive else [(r.host, r.path, False)]
        for host, sprite_path, is_link in targets:
            # lchown: a symlink's own owner changes; its target is never touched.
            if is_link:
                os.lchown(host, new_uid, new_gid)
            else:
                os.chown(host, new_uid, new_gid)
            st = os.lstat(host)
            shown_uid = SPRITE_UID if st.st_uid == host_uid else st.st_uid
            shown_gid = SPRITE_UID if st.st_gid == host_gid else st.st_gid
            affected.append({"path": sprite_path, "uid": shown_uid, "gid": shown_gid})
    except OSError as exc:
        raise FsError.from_os(exc, r.path) from exc
    return {"affected": affected, "count": len(affected)}


async def _chown(request: web.Request) -> web.StreamResponse:
    try:
        params = await _Params.from_request(request, body=True)
        path = params.string("path")
        uid, gid = params.ident("uid"), params.ident("gid")
        if uid is None and gid is None:
            raise FsError("EINVAL", path, "invalid request: uid or gid is required")
        result = await asyncio.to_thread(
            _chown_sync,
            _root(request),
            path,
            params.string("workingDir", "/"),
            uid,
            gid,
            params.flag("recursive", False),
            _owner(request),
        )
    except FsError as err:
        return err.response()
    return go_json(result)
