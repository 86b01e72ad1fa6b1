"""Checkpoints of the sprite layer (section 6).

A checkpoint is a snapshot of the sprite's root directory under
``sprite_dir(name)/checkpoints/<id>``, made in a worker thread, whose
unchanged files are hard links to the previous snapshot's: creating costs
a walk of the tree and a link per file plus the changed bytes, restoring a
walk plus what differs (see "snapshots on disk" below). The live root
never shares a file with a snapshot: a later write in the sprite would
change the snapshot too. Under bubblewrap the snapshots are mounted
read-only at ``/.sprite/checkpoints`` (``_procs``).
Metadata lives in SQLite, so both survive an emulator restart.

Ids are ``v0``, ``v1``, ... per sprite. ``v0`` is the sprite as created (an
empty ``/home/sprite`` and ``/tmp``); it is made lazily the first time a
checkpoint route is used for the sprite, dated at the sprite's
``created_at``. The *active* checkpoint is the one the live state derives
from: the last one created or restored. It cannot be deleted.

``/.sprite`` (where the platform exposes the network policy) is not part of
the user's filesystem: snapshots leave it out and restores keep the live one.

Operations on one sprite are serialised by a lock and run as emulator-owned
tasks, so a client that goes away mid-stream does not leave a half-made
checkpoint or a half-restored root (section 12, item 28).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from . import _services
from ._sandbox import file_owner, give_to_sprite
from ._state import STATE_KEY, EmulatorState, NDJSONWriter, text_error
from ._wire import BodyTooLarge, go_json, read_capped, rfc3339_nano, rfc3339_seconds

log = logging.getLogger(__name__)

CURRENT = "Current"
"""Pseudo-id of the live state, listed first."""
_ACTIVE_ALIASES = frozenset({CURRENT, "active"})
_PLATFORM_DIR = ".sprite"
_BOOL_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


class CheckpointNotFound(LookupError):
    """No checkpoint with that id exists for the sprite."""


class ActiveCheckpoint(Exception):
    """The checkpoint is the one the live state derives from."""


@dataclass
class Checkpoint:
    """Metadata of one checkpoint (section 6.1)."""

    id: str
    seq: int
    create_time: datetime
    comment: str = ""
    is_auto: bool = False
    source_id: str | None = None
    history: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The list-entry shape (as recorded: no lineage fields)."""
        out: dict[str, Any] = {"id": self.id, "create_time": rfc3339_seconds(self.create_time)}
        if self.comment:
            out["comment"] = self.comment
        out["is_auto"] = self.is_auto
        return out

    def detail(self) -> dict[str, Any]:
        """The get shape: the summary plus ``source_id`` and ``history``."""
        out = self.summary()
        if self.source_id:
            out["source_id"] = self.source_id
        if self.history:
            out["history"] = self.history
        return out


_stores: weakref.WeakKeyDictionary[EmulatorState, CheckpointStore] = weakref.WeakKeyDictionary()


def store_for(state: EmulatorState) -> CheckpointStore:
    """The checkpoint store of an emulator (tests use it to make auto checkpoints)."""
    store = _stores.get(state)
    if store is None:
        store = _stores[state] = CheckpointStore(state)
    return store


class CheckpointStore:
    """Checkpoint metadata (SQLite) and snapshots (directories) of every sprite."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._db = state.db
        self._locks: dict[str, asyncio.Lock] = {}
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emu_checkpoints ("
            " sprite TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " create_time TEXT NOT NULL, comment TEXT NOT NULL, is_auto INTEGER NOT NULL,"
            " source_id TEXT, history TEXT NOT NULL, PRIMARY KEY (sprite, id))"
        )
        # One row per sprite: which sprite instance the rows belong to, the
        # active checkpoint and the counters for new ones.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emu_checkpoint_heads ("
            " sprite TEXT PRIMARY KEY, sprite_id TEXT NOT NULL, active TEXT,"
            " next_version INTEGER NOT NULL, next_seq INTEGER NOT NULL)"
        )

    # --- queries -------------------------------------------------------------

    async def checkpoints(self, name: str) -> list[Checkpoint]:
        """All checkpoints of a sprite, newest first (``Current`` excluded)."""
        await self._ensure(name)
        rows = self._db.execute(
            "SELECT id, seq, create_time, comment, is_auto, source_id, history"
            " FROM emu_checkpoints WHERE sprite = ? ORDER BY seq DESC",
            (name,),
        ).fetchall()
        return [_from_row(row) for row in rows]

    async def get(self, name: str, cp_id: str) -> Checkpoint | None:
        """One checkpoint, or ``None``."""
        await self._ensure(name)
        return self._get(name, cp_id)

    async def active(self, name: str) -> str | None:
        """Id of the checkpoint the live state derives from."""
        await self._ensure(name)
        row = self._db.execute(
            "SELECT active FROM emu_checkpoint_heads WHERE sprite = ?", (name,)
        ).fetchone()
        return None if row is None else row[0]

    def snapshot_dir(self, name: str, cp_id: str) -> Path:
        """Host directory holding a checkpoint's copy of the sprite's root."""
        # Ids come from URLs (percent-decoded): never let one become a path.
        if not cp_id or "/" in cp_id or "\x00" in cp_id or cp_id in (".", ".."):
            raise CheckpointNotFound(cp_id)
        return self._state.sprite_dir(name) / "checkpoints" / cp_id

    # --- operations ----------------------------------------------------------

    async def create(self, name: str, comment: str = "", *, auto: bool = False) -> Checkpoint:
        """Snapshot the sprite's root as a new checkpoint.

        Automatic checkpoints get ``auto-<timestamp>`` ids and do not change
        the active checkpoint.
        """
        await self._ensure(name)
        task = self._state.spawn(self._create(name, comment, auto))
        # Shielded: a client hanging up must not abandon the copy half-way.
        result: Checkpoint = await asyncio.shield(task)
        return result

    async def restore(self, name: str, cp_id: str) -> Checkpoint:
        """End all sessions and replace the sprite's root with the checkpoint's copy."""
        await self._ensure(name)
        task = self._state.spawn(self._restore(name, cp_id))
        result: Checkpoint = await asyncio.shield(task)
        return result

    async def delete(self, name: str, cp_id: str) -> None:
        """Delete a checkpoint that is not the active one."""
        if cp_id in _ACTIVE_ALIASES:
            raise ActiveCheckpoint(cp_id)
        await self._ensure(name)
        async with self._lock(name):
            if self._get(name, cp_id) is None:
                raise CheckpointNotFound(cp_id)
            head = self._head(name)
            if head is not None and head[1] == cp_id:
                raise ActiveCheckpoint(cp_id)
            snapshot = self.snapshot_dir(name, cp_id)
            doomed = snapshot.with_name(cp_id + ".deleting")
            # Renamed first, so the id is gone at once even if the removal
            # of a big tree is interrupted (recovery removes *.deleting).
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.rename, snapshot, doomed)
            self._db.execute(
                "DELETE FROM emu_checkpoints WHERE sprite = ? AND id = ?", (name, cp_id)
            )
        await asyncio.to_thread(shutil.rmtree, doomed, True)

    # --- internals -----------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _sprite_id(self, name: str) -> str:
        record = self._state.sprites.get(name)
        return record.id if record is not None else ""

    def _head(self, name: str) -> tuple[str, str | None, int, int] | None:
        row = self._db.execute(
            "SELECT sprite_id, active, next_version, next_seq"
            " FROM emu_checkpoint_heads WHERE sprite = ?",
            (name,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def _get(self, name: str, cp_id: str) -> Checkpoint | None:
        row = self._db.execute(
            "SELECT id, seq, create_time, comment, is_auto, source_id, history"
            " FROM emu_checkpoints WHERE sprite = ? AND id = ?",
            (name, cp_id),
        ).fetchone()
        return None if row is None else _from_row(row)

    async def _ensure(self, name: str) -> None:
        """Create ``v0`` the first time, and forget a deleted namesake's checkpoints."""
        sprite_id = self._sprite_id(name)
        head = self._head(name)
        if head is not None and head[0] == sprite_id:
            return
        async with self._lock(name):
            head = self._head(name)
            if head is not None and head[0] == sprite_id:
                return
            record = self._state.sprites.get(name)
            created = record.created_at if record is not None else datetime.now(timezone.utc)
            checkpoints = self._state.sprite_dir(name) / "checkpoints"
            owner = file_owner(self._state.config.sandbox)
            await asyncio.to_thread(_make_v0, checkpoints, owner)
            with _transaction(self._db):
                self._db.execute("DELETE FROM emu_checkpoints WHERE sprite = ?", (name,))
                self._db.execute("DELETE FROM emu_checkpoint_heads WHERE sprite = ?", (name,))
                self._insert(name, Checkpoint("v0", 0, created))
                self._db.execute(
                    "INSERT INTO emu_checkpoint_heads VALUES (?, ?, 'v0', 1, 1)",
                    (name, sprite_id),
                )

    def _insert(self, name: str, cp: Checkpoint) -> None:
        self._db.execute(
            "INSERT INTO emu_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                cp.id,
                cp.seq,
                rfc3339_seconds(cp.create_time),
                cp.comment,
                int(cp.is_auto),
                cp.source_id,
                msgspec.json.encode(cp.history).decode(),
            ),
        )

    async def forget(self, name: str) -> None:
        """Drop a deleted sprite's checkpoint metadata (its directories go with it)."""
        async with self._lock(name):
            with _transaction(self._db):
                self._db.execute("DELETE FROM emu_checkpoints WHERE sprite = ?", (name,))
                self._db.execute("DELETE FROM emu_checkpoint_heads WHERE sprite = ?", (name,))
        self._locks.pop(name, None)

    async def _create(self, name: str, comment: str, auto: bool) -> Checkpoint:
        # The activity keeps the sprite running if the client has gone away.
        async with self._lock(name), self._state.activity(name):
            head = self._head(name)
            if head is None:
                # forget() ran between _ensure() and this lock: the sprite is gone.
                raise CheckpointNotFound(name)
            _, active, next_version, next_seq = head
            now = datetime.now(timezone.utc).replace(microsecond=0)
            if auto:
                cp_id = "auto-" + now.strftime("%Y%m%d-%H%M%S")
                suffix = 1
                while self._get(name, cp_id) is not None:
                    suffix += 1
                    cp_id = f"auto-{now:%Y%m%d-%H%M%S}-{suffix}"
            else:
                cp_id = f"v{next_version}"
            parent = self._get(name, active) if active else None
            cp = Checkpoint(
                id=cp_id,
                seq=next_seq,
                create_time=now,
                comment=comment,
                is_auto=auto,
                source_id=parent.id if parent else None,
                history=[*parent.history, parent.id] if parent else [],
            )
            await asyncio.to_thread(
                _snapshot, self._state.sprite_root(name), self.snapshot_dir(name, cp_id)
            )
            with _transaction(self._db):
                self._insert(name, cp)
                self._db.execute(
                    "UPDATE emu_checkpoint_heads SET active = ?, next_version = ?, next_seq = ?"
                    " WHERE sprite = ?",
                    (
                        active if auto else cp_id,
                        next_version if auto else next_version + 1,
                        next_seq + 1,
                        name,
                    ),
                )
            return cp

    async def _restore(self, name: str, cp_id: str) -> Checkpoint:
        async with self._lock(name), self._state.activity(name):
            cp = self._get(name, cp_id)
            if cp is None:
                raise CheckpointNotFound(cp_id)
            # A restore ends every session and restarts the environment; the
            # services come back from their (persisted) definitions.
            await self._state.sessions.terminate_all(name)
            await _services.stop_all(self._state, name)
            await asyncio.to_thread(
                _replace_root, self._state.sprite_root(name), self.snapshot_dir(name, cp_id)
            )
            self._db.execute(
                "UPDATE emu_checkpoint_heads SET active = ? WHERE sprite = ?", (cp_id, name)
            )
            await _services.start_all(self._state, name)
        # Off the restore's path (but still emulator-owned): the old root's removal.
        _ = self._state.spawn(asyncio.to_thread(_remove_trash, self._state.sprite_dir(name)))
        return cp


def _from_row(row: tuple[Any, ...]) -> Checkpoint:
    cp_id, seq, created, comment, is_auto, source_id, history = row
    return Checkpoint(
        id=cp_id,
        seq=seq,
        create_time=datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc),
        comment=comment,
        is_auto=bool(is_auto),
        source_id=source_id,
        history=msgspec.json.decode(history),
    )


@contextlib.contextmanager
def _transaction(db: Any) -> Iterator[None]:
    # The connection is in autocommit mode; group related writes explicitly.
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# --- snapshots on disk (blocking; run in worker threads) ---------------------
#
# Cost in proportion to what changed, with hard links on a plain filesystem:
#
# * A snapshot is a tree of its own whose unchanged files are hard links to
#   the files of the previous snapshot (the *base*) and whose changed files
#   are copies of the live ones. Snapshots share inodes among themselves
#   only, and nothing ever writes a snapshot's file after it is made.
# * The live root never shares an inode with a snapshot: a process writing
#   into a file in place would change the snapshot too. A restore works in
#   place: it walks the snapshot and the live root side by side and leaves
#   alone the live files that already hold the snapshot's content; what
#   differs is set aside (undone on failure) and copied from the snapshot.
# * "Unchanged" is decided by the inode change time, which no process can
#   set back: the sprite directory's marker file records the base snapshot,
#   a filesystem timestamp taken when the live root last matched it (the
#   start of the last create, the end of the last restore) and the inode of
#   every live directory then. A live file whose ctime is older than the
#   mark, in a directory that is still the one the mark saw at that place
#   (moving a directory does not touch its files' ctimes), is the base's
#   file at the same path (a rename or a new link would have set its
#   ctime). Without a usable mark (first checkpoint, base deleted) every
#   file is copied.
# * Cost, measured (``benchmarks/checkpoints.py``): a create is one stat
#   and one link() per file, the links made by two threads; a restore is
#   one stat per live file. The rest is Python's walk.
#   Lookups in the base and live trees never pass through a symlinked
#   directory (``_subdir``): a link could otherwise reach any host file.

_MARK = "checkpoint-base"


@dataclass
class _Mark:
    """When the live root last matched a snapshot, and where its directories were."""

    base: Path
    since: int
    """A filesystem timestamp: live files with an older ctime are the base's."""
    dirs: dict[str, int]
    """Relative path → inode of every live directory at that time (``""``: the root)."""

    def trusted(self, rel: str, inode: int) -> bool:
        """Whether the live directory at ``rel`` is the one the mark saw there.

        Moving a directory changes its own ctime but not its files': without
        this, files of a directory moved to another place would be taken for
        the base's files at that place.
        """
        return self.dirs.get(rel) == inode


def _read_mark(sprite_dir: Path) -> _Mark | None:
    """The base snapshot and the time the live root matched it, if still valid."""
    try:
        head, _, dirs = (sprite_dir / _MARK).read_text().partition("\n")
        cp_id, ns = head.split()
        since = int(ns)
        inodes = msgspec.json.decode(dirs, type=dict[str, int])
    except (OSError, ValueError, msgspec.DecodeError):
        # An older emulator's mark has no directories: the next checkpoint copies.
        return None
    base = sprite_dir / "checkpoints" / cp_id
    if "/" in cp_id or cp_id in (".", "..") or not base.is_dir():
        return None
    return _Mark(base, since, inodes)


def _write_mark(sprite_dir: Path, cp_id: str, since: int, dirs: dict[str, int]) -> None:
    tmp = sprite_dir / (_MARK + ".tmp")
    tmp.write_bytes(f"{cp_id} {since}\n".encode() + msgspec.json.encode(dirs))
    os.replace(tmp, sprite_dir / _MARK)


def _fs_now(directory: Path) -> int:
    """The filesystem's current timestamp (its clock may lag ``time.time``)."""
    probe = directory / (_MARK + ".now")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        os.unlink(probe)


def _next_tick(directory: Path) -> int:
    """A filesystem timestamp later than every change made before this call.

    The clock stamping files is coarse: changes made just now may carry the
    very value :func:`_fs_now` reads, and a mark equal to their ctime would
    count them as changed (a big file moved by a restore, copied again by
    the next checkpoint). Waiting for the next tick (a few ms) avoids it.
    """
    first = _fs_now(directory)
    deadline = time.monotonic() + 1.0
    while True:
        now = _fs_now(directory)
        if now > first or time.monotonic() > deadline:
            return now
        time.sleep(0.001)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        a.st_size == b.st_size
        and a.st_mtime_ns == b.st_mtime_ns
        and a.st_mode == b.st_mode
        and a.st_uid == b.st_uid
        and a.st_gid == b.st_gid
    )


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _hard_link(existing: str, target: str) -> bool:
    try:
        os.link(existing, target, follow_symlinks=False)
    except OSError:
        return False  # EMLINK (too many links) and the like: a copy is always right
    return True


def _link_or_copy(
    linked: str | None, source: str, target: str, attach: Callable[[str, str], bool] = _hard_link
) -> bool:
    """Put ``linked`` at ``target`` with ``attach`` (False if impossible), else copy ``source``."""
    if linked is not None and attach(linked, target):
        return True
    shutil.copy2(source, target, follow_symlinks=False)
    return False


Prior = Callable[[tuple[str | None, ...], str, os.stat_result], str | None]
"""``(parallel directories, name, stat of the source file)`` → a file to link, or None."""


def _subdir(parent: str | None, name: str) -> str | None:
    """``parent/name`` if it is a directory itself, not a symlink to one (else None)."""
    if parent is None:
        return None
    path = f"{parent}/{name}"
    st = _lstat(path)
    return path if st is not None and stat.S_ISDIR(st.st_mode) else None


def _build_tree(
    src: str,
    dst: str,
    *,
    prior: Prior,
    others: tuple[str | None, ...] = (),
    exclude: frozenset[str] = frozenset(),
    attach: Callable[[str, str], bool] = _hard_link,
    rel: str = "",
    dirs: dict[str, int] | None = None,
    trust: Callable[[str, int], bool] | None = None,
    links: _Links | None = None,
) -> None:
    """Make ``dst`` a copy of ``src``, hard-linking the files ``prior`` names.

    ``others`` are the directories at the same place in other trees (the base
    snapshot, the live root), walked along with ``src``; a place where one of
    them has no directory of its own (none, a file, a symlink: a path
    through a symlink could lead anywhere on the host) becomes None.
    ``prior(others, name, src_stat)`` returns an existing file with the same
    content and metadata, or None to copy; ``attach(file, target)`` puts it
    in place (a hard link by default). Symlinks stay symlinks; sockets,
    FIFOs and devices are skipped (they cannot be copied and would block
    ``open``); files that vanish meanwhile are skipped too, since processes
    in the sprite may still be running. Ownership is kept when the emulator
    runs as root. ``exclude`` names top-level entries to leave out.

    ``rel`` is ``src``'s path relative to the top; ``dirs`` collects the
    inode of every directory below ``src`` by relative path, and a directory
    ``trust(rel, inode)`` refuses has no parallel directories (nothing in it
    is linked). With ``links``, files are put in place by its threads and
    the directories' metadata is left to :meth:`_Links.finish`.
    """
    os.mkdir(dst, 0o700)
    as_root = os.geteuid() == 0
    with os.scandir(src) as it:
        entries = list(it)
    batch: list[_Job] = []
    for entry in entries:
        if entry.name in exclude:
            continue
        source, target = entry.path, f"{dst}/{entry.name}"
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISDIR(st.st_mode):
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if dirs is not None:
                    dirs[sub] = st.st_ino
                if trust is None or trust(sub, st.st_ino):
                    inner = tuple(_subdir(o, entry.name) for o in others)
                else:
                    inner = (None,) * len(others)
                _build_tree(
                    source,
                    target,
                    prior=prior,
                    others=inner,
                    attach=attach,
                    rel=sub,
                    dirs=dirs,
                    trust=trust,
                    links=links,
                )
            elif stat.S_ISREG(st.st_mode):
                if links is not None:
                    batch.append((prior(others, entry.name, st), source, target, st))
                    continue
                if _link_or_copy(prior(others, entry.name, st), source, target, attach):
                    continue  # the same inode: owner and times are already right
            else:
                continue
        except FileNotFoundError:
            continue
        if as_root:
            os.lchown(target, st.st_uid, st.st_gid)
    if links is not None:
        links.submit(batch)
        links.dirs.append((src, dst))
        return
    _dir_meta(src, dst)


def _dir_meta(src: str, dst: str) -> None:
    # Last, so a read-only directory's mode does not stop its own filling.
    shutil.copystat(src, dst, follow_symlinks=False)
    if os.geteuid() == 0:
        st = os.lstat(src)
        os.lchown(dst, st.st_uid, st.st_gid)


_Job = tuple["str | None", str, str, os.stat_result]
"""``(file to link or None, source, target, source's stat)``."""

_LINK_THREADS = 2
"""Measured: two threads make 50,000 hard links about 25% faster than one (ext4)."""


def _attach_batch(batch: list[_Job]) -> None:
    as_root = os.geteuid() == 0
    for linked, source, target, st in batch:
        try:
            if not _link_or_copy(linked, source, target) and as_root:
                os.lchown(target, st.st_uid, st.st_gid)
        except FileNotFoundError:
            continue  # vanished meanwhile (processes may still run)


class _Links:
    """The files of one snapshot, linked or copied by a few threads while the walk goes on.

    The kernel's link() is most of a snapshot's cost; it runs without the
    GIL, so two can run at once.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(_LINK_THREADS, thread_name_prefix="sprites-checkpoint")
        self._futures: list[Future[None]] = []
        self.dirs: list[tuple[str, str]] = []

    def submit(self, batch: list[_Job]) -> None:
        if batch:
            self._futures.append(self._pool.submit(_attach_batch, batch))

    def finish(self) -> None:
        """Wait for every file, then set the directories' metadata (raises the first error)."""
        for future in self._futures:
            future.result()
        for src, dst in self.dirs:  # deepest first: each was appended after its children
            _dir_meta(src, dst)

    def close(self) -> None:
        """Stop: nothing is being written once this returns."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def copy_tree(src: Path, dst: Path, *, exclude: frozenset[str] = frozenset()) -> None:
    """Copy a directory tree, keeping symlinks as symlinks (a full copy, nothing shared)."""
    _build_tree(str(src), str(dst), prior=lambda *_: None, exclude=exclude)


def _make_v0(checkpoints: Path, owner: tuple[int, int] | None) -> None:
    # Leftovers of a deleted sprite with the same name, or of lost metadata.
    shutil.rmtree(checkpoints, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(checkpoints.parent / _MARK)
    v0 = checkpoints / "v0"
    (v0 / "home" / "sprite").mkdir(parents=True)
    # Restores keep ownership: a restored /home/sprite must be the sprite user's.
    give_to_sprite(v0 / "home" / "sprite", owner)
    (v0 / "tmp").mkdir()
    os.chmod(v0 / "tmp", 0o1777)


def _snapshot(root: Path, dest: Path) -> None:
    """Snapshot ``root`` as ``dest``: links to the base snapshot for unchanged files."""
    partial = dest.with_name(dest.name + ".partial")
    for leftover in (partial, dest):
        # Only an interrupted earlier attempt can have left these: the id is
        # not in the database, so nothing refers to them.
        shutil.rmtree(leftover, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sprite_dir = root.parent
    mark = _read_mark(sprite_dir)
    # Taken before the walk: whatever changes during it is not older than the mark.
    started = _next_tick(sprite_dir)

    def prior(dirs: tuple[str | None, ...], name: str, st: os.stat_result) -> str | None:
        # Older than the mark, in a directory the mark saw at this very place:
        # the file the base holds here (a rename or a new link sets the ctime).
        # Should the base have none, the link fails and the file is copied.
        if mark is None or dirs[0] is None or st.st_ctime_ns >= mark.since:
            return None
        return f"{dirs[0]}/{name}"

    inodes = {"": os.lstat(root).st_ino}
    trusted = mark is not None and mark.trusted("", inodes[""])
    links = _Links()
    try:
        _build_tree(
            str(root),
            str(partial),
            prior=prior,
            others=(str(mark.base) if mark and trusted else None,),
            exclude=frozenset({_PLATFORM_DIR}),
            dirs=inodes,
            trust=mark.trusted if mark else None,
            links=links,
        )
        links.finish()
        os.rename(partial, dest)
    except BaseException:
        links.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        links.close()
    _write_mark(sprite_dir, dest.name, started, inodes)


def _replace_root(root: Path, snapshot: Path) -> None:
    """Make ``root`` the snapshot's tree again, in place, touching only what differs.

    Both trees are walked side by side; a live file still as the base
    snapshot had it (the mark, as in :func:`_snapshot`) whose base file is
    the snapshot's very inode is left alone, so the cost is the walk plus
    what differs. Whatever goes (removed or replaced) is first moved aside
    into a trash directory, so a failure undoes every step (:class:`_Undo`);
    a crash is finished by :func:`recover` from the journal, which names
    the snapshot. The sprite's processes are stopped during a restore.
    """
    sprite_dir = root.parent
    for leftover in (root.with_name(root.name + ".restoring"), root.with_name(root.name + ".old")):
        shutil.rmtree(leftover, ignore_errors=True)  # left by an older emulator's restore
    mark = _read_mark(sprite_dir)
    same_base = mark is not None and mark.base == snapshot

    def unchanged(live: os.DirEntry[str], snap: os.DirEntry[str], base_dir: str | None) -> bool:
        # Only called in directories the mark trusts (see ``_Mark.trusted``).
        assert mark is not None
        if live.stat(follow_symlinks=False).st_ctime_ns >= mark.since:
            return False
        if same_base:
            return True  # the live file is the base's, which is the snapshot
        # The live file is the base's; the base's must be the snapshot's inode.
        based = _lstat(f"{base_dir}/{live.name}") if base_dir is not None else None
        snap_st = snap.stat(follow_symlinks=False)
        return based is not None and (based.st_ino, based.st_dev) == (
            snap_st.st_ino,
            snap_st.st_dev,
        )

    journal = sprite_dir / _JOURNAL
    journal.write_text(snapshot.name + "\n")
    undo = _Undo(sprite_dir / f"{_TRASH}{time.monotonic_ns()}")
    inodes: dict[str, int] = {}
    try:
        _sync_tree(
            str(snapshot),
            str(root),
            "",
            None if mark is None or same_base else str(mark.base),
            _Sync(unchanged, mark.trusted if mark else None, undo, inodes),
        )
    except BaseException:
        undo.rollback()
        journal.unlink(missing_ok=True)
        raise
    # After the copies (which set ctimes): the live root matches the snapshot.
    built = _next_tick(sprite_dir)
    _write_mark(sprite_dir, snapshot.name, built, inodes)
    journal.unlink()
    # The trash (what the restore replaced) is removed off the restore's path
    # (``_remove_trash``): it is no longer part of the sprite.


Unchanged = Callable[["os.DirEntry[str]", "os.DirEntry[str]", "str | None"], bool]
"""``(live entry, snapshot entry, base directory)`` → keep the live file."""


@dataclass
class _Sync:
    """What :func:`_sync_tree` needs all the way down."""

    unchanged: Unchanged
    trust: Callable[[str, int], bool] | None
    """Whether the mark saw this live directory here; None: no mark, nothing is kept."""
    undo: _Undo
    inodes: dict[str, int]
    """Filled: relative path → inode of every live directory once restored."""


class _Undo:
    """What an in-place restore did, to undo it on failure (newest first)."""

    def __init__(self, trash: Path) -> None:
        self.trash = trash
        self._steps: list[Callable[[], None]] = []
        self._count = 0

    def set_aside(self, path: str) -> None:
        """Move a live entry out of the root (into the trash), to come back on undo."""
        if self._count == 0:
            self.trash.mkdir()
        self._count += 1
        aside = f"{self.trash}/{self._count}"
        os.rename(path, aside)
        self._steps.append(lambda: os.rename(aside, path))

    def created(self, path: str) -> None:
        """A new entry, removed on undo."""

        def remove() -> None:
            st = _lstat(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            elif st is not None:
                os.unlink(path)

        self._steps.append(remove)

    def changed_dir(self, path: str, st: os.stat_result) -> None:
        """A directory whose metadata is about to change, to be set back on undo."""
        self._steps.append(lambda: _set_dir_meta(path, st))

    def rollback(self) -> None:
        for step in reversed(self._steps):
            with contextlib.suppress(OSError):
                step()
        with contextlib.suppress(OSError):
            os.rmdir(self.trash)  # empty again when every step came back


def _set_dir_meta(path: str, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.lchown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _sync_tree(snap: str, live: str, rel: str, base: str | None, ctx: _Sync) -> None:
    """Make directory ``live`` hold what directory ``snap`` holds (see :func:`_replace_root`).

    ``rel`` is their path relative to the top (``""``: the roots). ``base``
    is the base snapshot's directory at the same place (None where it has
    none of its own: a symlink could lead anywhere on the host). File types
    come from the directory entries; only live files are stat'ed.
    """
    undo = ctx.undo
    as_root = os.geteuid() == 0
    live_st = os.lstat(live)
    ctx.inodes[rel] = live_st.st_ino
    trusted = ctx.trust is not None and ctx.trust(rel, live_st.st_ino)
    with os.scandir(snap) as it:
        want = {e.name: e for e in it}
    with os.scandir(live) as it:
        have = {e.name: e for e in it}
    if not rel:
        # The live platform directory stays; snapshots never hold one.
        want.pop(_PLATFORM_DIR, None)
        have.pop(_PLATFORM_DIR, None)
    if not as_root and not live_st.st_mode & stat.S_IWUSR:
        # A read-only directory of ours: writable while it is put right (its
        # mode is set back below, with the rest of its metadata).
        undo.changed_dir(live, live_st)
        os.chmod(live, stat.S_IMODE(live_st.st_mode) | stat.S_IRWXU)
    for name, entry in have.items():
        if name not in want:
            undo.set_aside(entry.path)
    for name, entry in want.items():
        target = f"{live}/{name}"
        sub = f"{rel}/{name}" if rel else name
        cur = have.get(name)
        if entry.is_dir(follow_symlinks=False):
            if cur is not None and cur.is_dir(follow_symlinks=False):
                _sync_tree(entry.path, target, sub, _subdir(base, name), ctx)
                continue
            if cur is not None:
                undo.set_aside(cur.path)
            undo.created(target)
            copy_tree(Path(entry.path), Path(target))
            for dirpath, _, _ in os.walk(target):
                inner = os.path.relpath(dirpath, live)
                ctx.inodes[f"{rel}/{inner}" if rel else inner] = os.lstat(dirpath).st_ino
            continue
        if entry.is_symlink():
            st = entry.stat(follow_symlinks=False)
            link = os.readlink(entry.path)
            if cur is not None and cur.is_symlink():
                cur_st = cur.stat(follow_symlinks=False)
                if os.readlink(cur.path) == link and (cur_st.st_uid, cur_st.st_gid) == (
                    st.st_uid,
                    st.st_gid,
                ):
                    continue
            if cur is not None:
                undo.set_aside(cur.path)
            undo.created(target)
            os.symlink(link, target)
        elif entry.is_file(follow_symlinks=False):
            if (
                trusted
                and cur is not None
                and cur.is_file(follow_symlinks=False)
                and ctx.unchanged(cur, entry, base)
            ):
                continue
            st = entry.stat(follow_symlinks=False)
            if cur is not None:
                undo.set_aside(cur.path)
            undo.created(target)
            _link_or_copy(None, entry.path, target)
        else:
            continue  # snapshots hold no special files
        if as_root:
            os.lchown(target, st.st_uid, st.st_gid)
    # Last: the entries' changes above moved the directory's own times.
    want_st = os.lstat(snap)
    live_st = os.lstat(live)
    if (
        live_st.st_mode != want_st.st_mode
        or live_st.st_mtime_ns != want_st.st_mtime_ns
        or (live_st.st_uid, live_st.st_gid) != (want_st.st_uid, want_st.st_gid)
    ):
        undo.changed_dir(live, live_st)
        _set_dir_meta(live, want_st)


_JOURNAL = "restoring"
_TRASH = "root.trash-"


def _remove_trash(sprite_dir: Path) -> None:
    """Remove old roots left by restores."""
    with contextlib.suppress(OSError):
        for path in sprite_dir.iterdir():
            if path.name.startswith(_TRASH):
                shutil.rmtree(path, ignore_errors=True)


def recover(state_dir: Path) -> None:
    """Clean up after operations an earlier emulator process did not finish."""
    sprites = state_dir / "sprites"
    if not sprites.is_dir():
        return
    for sprite_dir in sprites.iterdir():
        root = sprite_dir / "root"
        old = sprite_dir / "root.old"
        staging = sprite_dir / "root.restoring"
        try:
            restoring: str | None = (sprite_dir / _JOURNAL).read_text().strip()
        except OSError:
            restoring = None
        if not root.exists():
            if restoring and staging.is_dir():
                os.rename(staging, root)  # built completely: only the swap was left
            elif old.is_dir():
                os.rename(old, root)
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
        _remove_trash(sprite_dir)
        if restoring is not None:
            # Some live files may have been moved into the lost new tree:
            # finish the restore (they come from the snapshot again).
            snapshot = sprite_dir / "checkpoints" / restoring
            if root.is_dir() and restoring and "/" not in restoring and snapshot.is_dir():
                _replace_root(root, snapshot)
                _remove_trash(sprite_dir)
            (sprite_dir / _JOURNAL).unlink(missing_ok=True)
        checkpoints = sprite_dir / "checkpoints"
        if checkpoints.is_dir():
            for path in checkpoints.iterdir():
                if path.name.endswith((".partial", ".deleting")):
                    shutil.rmtree(path, ignore_errors=True)


# --- HTTP --------------------------------------------------------------------


def setup(app: web.Application, state: EmulatorState) -> None:
    """Create the checkpoint tables, recover interrupted work, register routes."""
    state.sprite_deleted_hooks.append(store_for(state).forget)
    recover(state.config.state_dir)
    base = "/v1/sprites/{name}"
    app.router.add_post(base + "/checkpoint", _create)
    app.router.add_get(base + "/checkpoints", _list, allow_head=False)
    app.router.add_get(base + "/checkpoints/{cp}", _get, allow_head=False)
    app.router.add_post(base + "/checkpoints/{cp}/restore", _restore)
    app.router.add_delete(base + "/checkpoints/{cp}", _delete)


def _info(data: str) -> dict[str, str]:
    return {"type": "info", "data": data, "time": rfc3339_nano()}


def _complete(data: str) -> dict[str, str]:
    return {"type": "complete", "data": data, "time": rfc3339_nano()}


def _error(error: str) -> dict[str, str]:
    return {"type": "error", "error": error, "time": rfc3339_nano()}


async def _create(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    try:
        raw = await read_capped(request, 1 << 20)
        body: Any = msgspec.json.decode(raw) if raw.strip() else {}
    except (BodyTooLarge, msgspec.DecodeError, RecursionError):
        return text_error(400, "invalid request body")
    comment = body.get("comment") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(comment, (str, type(None))):
        return text_error(400, "invalid request body")
    stream = NDJSONWriter(request, state)
    try:
        return await _create_stream(stream, state, name, comment)
    except ConnectionError:
        log.debug("checkpoint of sprite %s: the client left the stream", name)
        return stream.response


async def _create_stream(
    stream: NDJSONWriter, state: EmulatorState, name: str, comment: str | None
) -> web.StreamResponse:
    await stream.prepare()
    await stream.send(_info("Creating checkpoint..."))
    try:
        cp = await store_for(state).create(name, comment or "")
    except Exception as exc:
        # The status line is gone already: report in-band, as the real server
        # does; a client treats a stream without "complete" as a failure.
        log.warning("checkpoint of sprite %s failed", name, exc_info=True)
        await stream.send(_error(f"Failed to create checkpoint: {exc}"))
        return await stream.finish()
    await stream.send(_info("Checkpoint created successfully"))
    for line in (
        "\nCheckpoint Details:",
        f"  ID: {cp.id}",
        f"  Created: {cp.create_time:%Y-%m-%d %H:%M:%S}",
        f"  Path: checkpoints/{cp.id}",
        "\nTo restore this checkpoint:",
        f"  sprite checkpoint restore {cp.id}",
        f"  curl -X POST /checkpoints/{cp.id}/restore",
    ):
        await stream.send(_info(line))
    await stream.send(_complete(f"Checkpoint {cp.id} created successfully"))
    return await stream.finish()


async def _list(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    include_auto = request.query.get("includeAuto", "") in _BOOL_TRUE
    checkpoints = [
        cp for cp in await store_for(state).checkpoints(name) if include_auto or not cp.is_auto
    ]
    history = request.query.get("history")
    if history is not None:
        lines = "".join(f"{cp.id}\n" for cp in checkpoints if history in cp.history)
        return web.Response(text=lines, content_type="text/plain", charset="utf-8")
    current = {
        "id": CURRENT,
        "create_time": rfc3339_seconds(datetime.now(timezone.utc)),
        "is_auto": False,
    }
    return go_json([current, *(cp.summary() for cp in checkpoints)])


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    cp = await store_for(state).get(request.match_info["name"], request.match_info["cp"])
    if cp is None:
        return text_error(404, "checkpoint not found")
    return go_json(cp.detail())


async def _restore(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    cp_id = request.match_info["cp"]
    stream = NDJSONWriter(request, state)
    try:
        return await _restore_stream(stream, state, name, cp_id)
    except ConnectionError:
        log.debug("restore of sprite %s: the client left the stream", name)
        return stream.response


async def _restore_stream(
    stream: NDJSONWriter, state: EmulatorState, name: str, cp_id: str
) -> web.StreamResponse:
    await stream.prepare()
    await stream.send(_info(f"Restoring from checkpoint {cp_id}..."))
    try:
        await store_for(state).restore(name, cp_id)
    except CheckpointNotFound:
        # The recorded message text of the real service (section 6.5).
        await stream.send(
            _error(
                "Failed to restore checkpoint: failed to restore checkpoint: checkpoint not"
                f" found: checkpoint with path checkpoints/{cp_id} not found"
            )
        )
        return await stream.finish()
    except Exception as exc:
        log.warning("restore of sprite %s to %s failed", name, cp_id, exc_info=True)
        await stream.send(_error(f"Failed to restore checkpoint: {exc}"))
        return await stream.finish()
    await stream.send(_info("Container components started successfully"))
    await stream.send(_complete(f"Restore from {cp_id} complete"))
    return await stream.finish()


async def _delete(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        await store_for(state).delete(request.match_info["name"], request.match_info["cp"])
    except CheckpointNotFound:
        return text_error(404, "checkpoint not found")
    except ActiveCheckpoint:
        return text_error(409, "cannot delete active checkpoint")
    return web.Response(status=204)
