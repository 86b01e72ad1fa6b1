"""Checkpoints of the sprite layer (section 6).

A checkpoint is a snapshot of the sprite's root directory under
``sprite_dir(name)/checkpoints/<id>``, made in a worker thread, whose
unchanged files are hard links to the previous snapshot's: creating and
restoring cost a walk of the tree plus the changed bytes (see "snapshots on
disk" below). The live root never shares a file with a snapshot: a later
write in the sprite would change the snapshot too. Under bubblewrap the
snapshots are mounted read-only at ``/.sprite/checkpoints`` (``_procs``).
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
#   into a file in place would change the snapshot too. A restore builds a
#   new root of copies from the snapshot, except for files the live root
#   already holds unchanged: those are moved over from the live root (never
#   shared with anything; see ``_replace_root`` for why not hard links).
# * "Unchanged" is decided by the inode change time, which no process can
#   set back: the sprite directory's marker file records the base snapshot
#   and a filesystem timestamp taken when the live root last matched it
#   (the start of the last create, the end of the last restore). A live
#   file whose ctime is older than the mark, and whose size, mtime, mode,
#   owner match the base's file at the same path, is that file. Without a
#   usable mark (first checkpoint, base deleted) every file is copied.
#   Lookups in the base and live trees never pass through a symlinked
#   directory (``_subdir``): a link could otherwise reach any host file.

_MARK = "checkpoint-base"


def _read_mark(sprite_dir: Path) -> tuple[Path, int] | None:
    """The base snapshot and the time the live root matched it, if still valid."""
    try:
        cp_id, ns = (sprite_dir / _MARK).read_text().split()
        since = int(ns)
    except (OSError, ValueError):
        return None
    base = sprite_dir / "checkpoints" / cp_id
    if "/" in cp_id or cp_id in (".", "..") or not base.is_dir():
        return None
    return base, since


def _write_mark(sprite_dir: Path, cp_id: str, since: int) -> None:
    tmp = sprite_dir / (_MARK + ".tmp")
    tmp.write_text(f"{cp_id} {since}\n")
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
    """
    os.mkdir(dst, 0o700)
    as_root = os.geteuid() == 0
    with os.scandir(src) as it:
        entries = list(it)
    for entry in entries:
        if entry.name in exclude:
            continue
        source, target = entry.path, f"{dst}/{entry.name}"
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISDIR(st.st_mode):
                inner = tuple(_subdir(o, entry.name) for o in others)
                _build_tree(source, target, prior=prior, others=inner, attach=attach)
            elif stat.S_ISREG(st.st_mode):
                if _link_or_copy(prior(others, entry.name, st), source, target, attach):
                    continue  # the same inode: owner and times are already right
            else:
                continue
        except FileNotFoundError:
            continue
        if as_root:
            os.lchown(target, st.st_uid, st.st_gid)
    # Last, so a read-only directory's mode does not stop its own filling.
    shutil.copystat(src, dst, follow_symlinks=False)
    if as_root:
        st = os.lstat(src)
        os.lchown(dst, st.st_uid, st.st_gid)


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
        if mark is None or dirs[0] is None or st.st_ctime_ns >= mark[1]:
            return None
        candidate = f"{dirs[0]}/{name}"
        old = _lstat(candidate)
        return candidate if old is not None and _same(st, old) else None

    try:
        _build_tree(
            str(root),
            str(partial),
            prior=prior,
            others=(str(mark[0]) if mark else None,),
            exclude=frozenset({_PLATFORM_DIR}),
        )
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _write_mark(sprite_dir, dest.name, started)


def _replace_root(root: Path, snapshot: Path) -> None:
    """Make ``root`` the snapshot's tree again, keeping the live files that did not change.

    A new tree is built from the snapshot: unchanged live files are *moved*
    into it (a rename; a hard link would do too, but removing the old tree
    would then change their ctime, and the next checkpoint would copy them
    all), the others copied. Until the new tree takes the root's place, a
    failure moves the files back; a crash is finished by :func:`recover`
    from the journal file, which names the snapshot.
    """
    staging = root.with_name(root.name + ".restoring")
    old = root.with_name(root.name + ".old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    sprite_dir = root.parent
    mark = _read_mark(sprite_dir)
    snap = str(snapshot)
    same_base = mark is not None and mark[0] == snapshot

    def prior(dirs: tuple[str | None, ...], name: str, st: os.stat_result) -> str | None:
        # The live file is the base's (ctime), and the base's file is the
        # snapshot's very inode: then the live file has the snapshot's content.
        live_dir, base_dir = dirs
        if mark is None or live_dir is None or base_dir is None:
            return None
        live_path = f"{live_dir}/{name}"
        live = _lstat(live_path)
        if live is None or live.st_ctime_ns >= mark[1] or not _same(live, st):
            return None
        based = st if same_base else _lstat(f"{base_dir}/{name}")
        if based is None or (based.st_ino, based.st_dev) != (st.st_ino, st.st_dev):
            return None
        return live_path

    moved: list[tuple[str, str]] = []

    def move(existing: str, target: str) -> bool:
        try:
            os.rename(existing, target)
        except OSError:
            return False
        moved.append((target, existing))
        return True

    journal = sprite_dir / _JOURNAL
    journal.write_text(snapshot.name + "\n")
    try:
        others = (str(root), str(mark[0])) if mark else (None, None)
        _build_tree(snap, str(staging), prior=prior, others=others, attach=move)
    except BaseException:
        for target, existing in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(target, existing)
        shutil.rmtree(staging, ignore_errors=True)
        journal.unlink(missing_ok=True)
        raise
    # After the moves (which change ctimes), before anyone else can reach
    # the new tree: it matches the snapshot.
    built = _next_tick(sprite_dir)
    platform = root / _PLATFORM_DIR
    if platform.is_dir() and not platform.is_symlink():
        os.rename(platform, staging / _PLATFORM_DIR)
    # Two renames: the root is never a half-made tree. recover() finishes a
    # restore interrupted between them.
    if root.exists():
        os.rename(root, old)
    os.rename(staging, root)
    _write_mark(sprite_dir, snapshot.name, built)
    journal.unlink()
    # Removing the old tree costs as much as it has files: done after the
    # restore (``_remove_trash``), as it is no longer part of the sprite.
    with contextlib.suppress(FileNotFoundError):
        os.rename(old, sprite_dir / f"{_TRASH}{time.monotonic_ns()}")


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
