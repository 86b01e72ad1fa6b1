"""Checkpoints that cost what changed: hard-linked snapshots, restores that keep unchanged files.

The on-disk functions are driven directly on a sprite directory laid out as
the emulator lays it out (``<sprite>/root``, ``<sprite>/checkpoints/<id>``);
the last tests go through the HTTP routes and the sandbox.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from sprites_async.emulator import _checkpoints
from sprites_async.emulator._checkpoints import _replace_root, _snapshot, store_for
from sprites_async.emulator._procs import use_sandbox
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import SPRITE, run_ws

AS_ROOT = os.geteuid() == 0
SPRITE_ID = 2000001000

Manifest = dict[str, tuple[Any, ...]]


def manifest(top: Path) -> Manifest:
    """Everything a restore must give back, per path (``/.sprite`` left out)."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == top and ".sprite" in dirnames:
            dirnames.remove(".sprite")
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(top))
            owner = (st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), owner)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), owner)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), owner, st.st_mtime_ns, digest)
    return out


def inodes(top: Path) -> set[tuple[int, int]]:
    out = set()
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            st = os.lstat(Path(dirpath) / name)
            if stat.S_ISREG(st.st_mode):
                out.add((st.st_dev, st.st_ino))
    return out


@pytest.fixture
def sprite(tmp_path: Path) -> Path:
    """A sprite directory whose root holds a bit of everything."""
    sprite_dir = tmp_path / "sprites" / "s"
    root = sprite_dir / "root"
    home = root / "home" / "sprite"
    (home / "src" / "deep").mkdir(parents=True)
    (home / "empty").mkdir()
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "opt").mkdir()
    (root / ".sprite" / "policy").mkdir(parents=True)
    (home / "a.txt").write_text("alpha")
    (home / "src" / "deep" / "b.bin").write_bytes(os.urandom(10000))
    (home / "secret").write_text("s")
    os.chmod(home / "secret", 0o600)
    (home / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(home / "run.sh", 0o755)
    (home / "ro").write_text("read only")
    os.chmod(home / "ro", 0o444)
    os.chmod(home / "empty", 0o700)
    os.symlink("a.txt", home / "link")
    os.symlink("/nowhere", home / "dangling")
    (root / "opt" / "tool").write_text("tool")
    if AS_ROOT:
        for path in (home, home / "a.txt", home / "src", home / "link"):
            os.lchown(path, SPRITE_ID, SPRITE_ID)
        os.lchown(root / "opt" / "tool", 1234, 5678)
    # File times tick coarsely and a file changed in the very tick a snapshot
    # starts counts as changed: let the tree's making be in the past.
    time.sleep(0.05)
    return sprite_dir


def snap(sprite_dir: Path, cp_id: str) -> Path:
    _snapshot(sprite_dir / "root", sprite_dir / "checkpoints" / cp_id)
    return sprite_dir / "checkpoints" / cp_id


def restore(sprite_dir: Path, cp_id: str) -> None:
    _replace_root(sprite_dir / "root", sprite_dir / "checkpoints" / cp_id)


def mutate(root: Path) -> None:
    """Change contents, modes, owners, links and directories in every way."""
    home = root / "home" / "sprite"
    with open(home / "a.txt", "r+") as f:
        f.write("ALPHA")  # in place, same size
    (home / "src" / "deep" / "b.bin").unlink()
    (home / "new").write_text("new")
    os.chmod(home / "secret", 0o644)
    os.unlink(home / "link")
    os.symlink("secret", home / "link")
    (home / "empty").rmdir()
    (home / "ro").chmod(0o644)
    (home / "ro").write_text("changed!!")
    if AS_ROOT:
        os.lchown(root / "opt" / "tool", 0, 0)


def test_restore_gives_back_exactly_the_checkpointed_tree(sprite: Path) -> None:
    root = sprite / "root"
    before = manifest(root)
    v1 = snap(sprite, "v1")
    assert manifest(v1) == before
    mutate(root)
    assert manifest(root) != before
    restore(sprite, "v1")
    assert manifest(root) == before
    # The platform directory is the live one, never part of a checkpoint.
    assert (root / ".sprite" / "policy").is_dir()
    assert not (v1 / ".sprite").exists()


def test_unchanged_files_are_shared_between_snapshots_only(sprite: Path) -> None:
    root = sprite / "root"
    home = root / "home" / "sprite"
    v1 = snap(sprite, "v1")
    (home / "a.txt").write_text("changed")
    v2 = snap(sprite, "v2")
    deep = "home/sprite/src/deep/b.bin"
    assert os.lstat(v1 / deep).st_ino == os.lstat(v2 / deep).st_ino
    assert os.lstat(v1 / deep).st_nlink == 2
    assert (v2 / "home/sprite/a.txt").read_text() == "changed"
    assert (v1 / "home/sprite/a.txt").read_text() == "alpha"
    # The live root shares no inode with any snapshot.
    assert not inodes(root) & (inodes(v1) | inodes(v2))


def test_a_restore_keeps_the_live_files_that_did_not_change(sprite: Path) -> None:
    root = sprite / "root"
    home = root / "home" / "sprite"
    v1 = snap(sprite, "v1")
    kept = os.lstat(home / "src/deep/b.bin").st_ino
    (home / "a.txt").write_text("changed")
    restore(sprite, "v1")
    # Same inode: the unchanged file was linked back, not copied again.
    assert os.lstat(home / "src/deep/b.bin").st_ino == kept
    assert (home / "a.txt").read_text() == "alpha"
    assert not inodes(root) & inodes(v1)


def test_restoring_an_older_checkpoint_keeps_files_shared_with_it(sprite: Path) -> None:
    root = sprite / "root"
    home = root / "home" / "sprite"
    snap(sprite, "v1")
    (home / "a.txt").write_text("v2 text")
    snap(sprite, "v2")
    kept = os.lstat(home / "src/deep/b.bin").st_ino
    restore(sprite, "v1")
    assert os.lstat(home / "src/deep/b.bin").st_ino == kept
    assert (home / "a.txt").read_text() == "alpha"
    restore(sprite, "v2")
    assert (home / "a.txt").read_text() == "v2 text"


def test_a_change_that_keeps_size_and_mtime_is_still_seen(sprite: Path) -> None:
    """The inode change time, which no process can set back, decides."""
    root = sprite / "root"
    target = root / "home/sprite/a.txt"
    v1 = snap(sprite, "v1")
    st = os.lstat(target)
    with open(target, "r+") as f:
        f.write("ALPHA")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    v2 = snap(sprite, "v2")
    assert (v2 / "home/sprite/a.txt").read_text() == "ALPHA"
    assert (v1 / "home/sprite/a.txt").read_text() == "alpha"
    restore(sprite, "v1")
    assert target.read_text() == "alpha"


def test_writes_in_the_live_root_never_change_a_snapshot(sprite: Path) -> None:
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    v2 = snap(sprite, "v2")
    expected = {cp: manifest(cp) for cp in (v1, v2)}

    def scribble() -> None:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    os.chmod(path, 0o666)
                    with open(path, "r+b") as f:
                        f.write(b"XX")

    scribble()
    restore(sprite, "v2")
    scribble()
    restore(sprite, "v1")
    scribble()
    assert {cp: manifest(cp) for cp in (v1, v2)} == expected


def _twin_dirs(home: Path) -> None:
    """``p/f`` and ``q/f``: the same size, mode and mtime, other contents."""
    for name, text in (("p", "from-p"), ("q", "from-q")):
        (home / name).mkdir()
        (home / name / "f").write_text(text)
        os.utime(home / name / "f", ns=(1_000_000_000, 1_000_000_000))


def _swap(home: Path) -> None:
    # A directory's rename sets its own ctime, not its files'.
    os.rename(home / "p", home / "tmp-p")
    os.rename(home / "q", home / "p")
    os.rename(home / "tmp-p", home / "q")


def test_a_snapshot_sees_files_whose_directory_moved(sprite: Path) -> None:
    home = sprite / "root" / "home" / "sprite"
    _twin_dirs(home)
    time.sleep(0.05)
    snap(sprite, "v1")
    _swap(home)
    v2 = snap(sprite, "v2")
    assert (v2 / "home/sprite/p/f").read_text() == "from-q"
    assert (v2 / "home/sprite/q/f").read_text() == "from-p"
    assert manifest(v2) == manifest(sprite / "root")


def test_a_restore_sees_files_whose_directory_moved(sprite: Path) -> None:
    home = sprite / "root" / "home" / "sprite"
    _twin_dirs(home)
    time.sleep(0.05)
    v1 = snap(sprite, "v1")
    _swap(home)
    restore(sprite, "v1")
    assert (home / "p/f").read_text() == "from-p"
    assert (home / "q/f").read_text() == "from-q"
    assert manifest(sprite / "root") == manifest(v1)


def test_first_snapshot_and_a_lost_base_copy_everything(sprite: Path) -> None:
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    assert os.lstat(v1 / "home/sprite/a.txt").st_nlink == 1
    os.rename(v1, sprite / "checkpoints" / "gone")  # the base disappeared
    v2 = snap(sprite, "v2")
    assert manifest(v2) == manifest(root)
    assert os.lstat(v2 / "home/sprite/a.txt").st_nlink == 1


def test_without_hard_links_every_checkpoint_is_a_full_copy(
    sprite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback on a filesystem that refuses hard links: right, at a full copy's cost."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    root = sprite / "root"
    snap(sprite, "v1")
    (root / "home/sprite/a.txt").write_text("changed")
    v2 = snap(sprite, "v2")
    assert manifest(v2) == manifest(root)
    assert os.lstat(v2 / "home/sprite/src/deep/b.bin").st_nlink == 1
    restore(sprite, "v1")
    assert (root / "home/sprite/a.txt").read_text() == "alpha"


def test_a_failed_snapshot_leaves_no_partial_tree_and_the_base_usable(
    sprite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = sprite / "root"
    v1 = snap(sprite, "v1")

    def full(*args: Any, **kwargs: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_checkpoints, "_link_or_copy", full)
    with pytest.raises(OSError):
        snap(sprite, "v2")
    monkeypatch.undo()
    assert sorted(os.listdir(sprite / "checkpoints")) == ["v1"]
    v2 = snap(sprite, "v2")
    assert manifest(v2) == manifest(root)
    assert os.lstat(v2 / "home/sprite/a.txt").st_ino == os.lstat(v1 / "home/sprite/a.txt").st_ino


def test_a_checkpoint_after_a_restore_shares_the_unchanged_files(sprite: Path) -> None:
    """The restore, and the removal of the old root after it, leave unchanged files unchanged."""
    v1 = snap(sprite, "v1")
    (sprite / "root/home/sprite/a.txt").write_text("changed")
    restore(sprite, "v1")
    _checkpoints._remove_trash(sprite)
    time.sleep(0.05)
    v2 = snap(sprite, "v2")
    deep = "home/sprite/src/deep/b.bin"
    assert os.lstat(v2 / deep).st_ino == os.lstat(v1 / deep).st_ino
    assert os.lstat(v2 / "home/sprite/a.txt").st_ino == os.lstat(v1 / "home/sprite/a.txt").st_ino


def test_changes_just_before_a_checkpoint_or_by_a_restore_count_once(sprite: Path) -> None:
    """File times tick coarsely: the mark is taken past the tick of the last change."""
    home = sprite / "root" / "home" / "sprite"
    (home / "fresh").write_text("written right before")
    snap(sprite, "v1")
    v2 = snap(sprite, "v2")  # nothing changed since v1: all shared
    files = [rel for rel, entry in manifest(v2).items() if entry[0] == "file"]
    assert all(os.lstat(v2 / rel).st_nlink == 2 for rel in files)
    restore(sprite, "v2")
    mark = int((sprite / "checkpoint-base").read_text().split()[1])
    # Every file the restore moved or copied is older than the mark.
    assert all(os.lstat(p).st_ctime_ns < mark for p in home.rglob("*") if not p.is_symlink())


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_restore_leaves_the_live_root_as_it_was(
    sprite: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    root = sprite / "root"
    snap(sprite, "v1")
    mutate(root)
    (root / "home/sprite/new").write_text("only live")
    os.chmod(root / "home/sprite/src", 0o750)  # a directory's own metadata too
    before = manifest(root)
    real = _checkpoints._link_or_copy
    calls = 0

    def failing(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(_checkpoints, "_link_or_copy", failing)
    with pytest.raises(OSError):
        restore(sprite, "v1")
    assert calls == fail_at
    assert manifest(root) == before
    assert sorted(p.name for p in sprite.iterdir()) == ["checkpoint-base", "checkpoints", "root"]
    monkeypatch.undo()
    restore(sprite, "v1")  # and the next attempt works
    assert manifest(root) == manifest(sprite / "checkpoints" / "v1")


def test_a_restore_touches_only_what_differs(sprite: Path) -> None:
    """In place: unchanged entries keep their inodes and their ctimes (nothing rewrote them)."""
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    (root / "home/sprite/a.txt").write_text("changed")
    (root / "home/sprite/extra").mkdir()
    kept = {
        p: (os.lstat(p).st_ino, os.lstat(p).st_ctime_ns)
        for p in (root / "home/sprite/src/deep/b.bin", root / "home/sprite/run.sh")
    }
    restore(sprite, "v1")
    assert {p: (os.lstat(p).st_ino, os.lstat(p).st_ctime_ns) for p in kept} == kept
    assert manifest(root) == manifest(v1)
    trash = [p for p in sprite.iterdir() if p.name.startswith("root.trash-")]
    assert len(trash) == 1  # what was replaced: the old a.txt and extra/
    assert sorted(os.listdir(trash[0])) == ["1", "2"]
    _checkpoints._remove_trash(sprite)
    assert not any(p.name.startswith("root.trash-") for p in sprite.iterdir())


def test_recover_finishes_a_restore_that_set_files_aside(sprite: Path) -> None:
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    (root / "home/sprite/a.txt").write_text("changed")
    # The crash came after a live file was moved into the trash, before its copy.
    trash = sprite / "root.trash-1"
    trash.mkdir()
    os.rename(root / "home/sprite/src/deep/b.bin", trash / "1")
    (sprite / "restoring").write_text("v1\n")
    _checkpoints.recover(sprite.parent.parent)
    assert manifest(root) == manifest(v1)
    assert sorted(p.name for p in sprite.iterdir()) == ["checkpoint-base", "checkpoints", "root"]


def test_recover_finishes_a_restore_that_moved_files_away(sprite: Path) -> None:
    """The layout an older emulator's restore left (a half-built ``root.restoring``)."""
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    (root / "home/sprite/a.txt").write_text("changed")
    staging = sprite / "root.restoring"
    (staging / "home/sprite/src/deep").mkdir(parents=True)
    os.rename(root / "home/sprite/src/deep/b.bin", staging / "home/sprite/src/deep/b.bin")
    (sprite / "restoring").write_text("v1\n")
    _checkpoints.recover(sprite.parent.parent)
    assert manifest(root) == manifest(v1)
    assert sorted(p.name for p in sprite.iterdir()) == ["checkpoint-base", "checkpoints", "root"]


def test_recover_finishes_a_restore_stopped_between_the_renames(sprite: Path) -> None:
    """The layout an older emulator's restore left between its two renames."""
    root = sprite / "root"
    v1 = snap(sprite, "v1")
    (root / "home/sprite/a.txt").write_text("changed")
    _checkpoints.copy_tree(v1, sprite / "root.restoring")
    os.rename(root / ".sprite", sprite / "root.restoring" / ".sprite")
    os.rename(root, sprite / "root.old")
    (sprite / "restoring").write_text("v1\n")
    _checkpoints.recover(sprite.parent.parent)
    assert manifest(root) == manifest(v1)
    assert (root / ".sprite" / "policy").is_dir()
    assert not (sprite / "restoring").exists()


def _decoy(host: Path, fake: Path) -> None:
    """``fake``: a file with all the metadata of ``host`` but other content."""
    fake.write_text("x" * len(host.read_text()))
    st = os.lstat(host)
    os.chmod(fake, stat.S_IMODE(st.st_mode))
    if AS_ROOT:
        os.lchown(fake, st.st_uid, st.st_gid)
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_snapshot_never_links_a_file_through_a_symlink(sprite: Path, tmp_path: Path) -> None:
    """A directory swapped for a symlink in the base cannot lead a link out of the tree."""
    home = sprite / "root" / "home" / "sprite"
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host secret")
    os.symlink(tmp_path / "host", home / "x")
    (home / "y").mkdir()
    _decoy(tmp_path / "host" / "secret", home / "y" / "secret")
    time.sleep(0.05)
    snap(sprite, "v1")  # has x -> host
    os.unlink(home / "x")
    os.rename(home / "y", home / "x")  # the files inside keep their old ctime
    v2 = snap(sprite, "v2")
    linked = os.lstat(v2 / "home/sprite/x/secret")
    assert linked.st_ino != os.lstat(tmp_path / "host" / "secret").st_ino
    assert (v2 / "home/sprite/x/secret").read_text() == "x" * len("host secret")


def test_a_restore_never_links_a_file_through_a_symlink(sprite: Path, tmp_path: Path) -> None:
    """A live directory swapped for a symlink cannot put a host file into the new root."""
    home = sprite / "root" / "home" / "sprite"
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host secret")
    (home / "x").mkdir()
    _decoy(tmp_path / "host" / "secret", home / "x" / "secret")
    time.sleep(0.05)
    snap(sprite, "v1")
    shutil.rmtree(home / "x")
    os.symlink(tmp_path / "host", home / "x")
    restore(sprite, "v1")
    restored = os.lstat(home / "x" / "secret")
    assert stat.S_ISDIR(os.lstat(home / "x").st_mode)
    assert restored.st_ino != os.lstat(tmp_path / "host" / "secret").st_ino
    assert (home / "x" / "secret").read_text() == "x" * len("host secret")


# --- through the routes and the sandbox ---------------------------------------


async def _checkpoint(emu: RunningEmulator) -> None:
    async with emu.http.post(
        f"{emu.url}/v1/sprites/{SPRITE}/checkpoint", json={}, headers=emu.auth
    ) as resp:
        assert b'"complete"' in await resp.read()


async def test_deleting_a_checkpoint_keeps_the_others_intact(emu: RunningEmulator) -> None:
    emu.add_sprite(SPRITE)
    home = emu.state.sprite_root(SPRITE) / "home" / "sprite"
    store = store_for(emu.state)
    (home / "big").write_bytes(os.urandom(50000))
    (home / "f").write_text("one")
    await _checkpoint(emu)  # v1
    (home / "f").write_text("two")
    await _checkpoint(emu)  # v2
    (home / "f").write_text("three")
    await _checkpoint(emu)  # v3
    v1, v3 = store.snapshot_dir(SPRITE, "v1"), store.snapshot_dir(SPRITE, "v3")
    expected = manifest(v1), manifest(v3)
    status, _ = await emu.api("DELETE", f"/v1/sprites/{SPRITE}/checkpoints/v2")
    assert status == 204
    assert (manifest(v1), manifest(v3)) == expected
    await store.restore(SPRITE, "v1")
    assert (home / "f").read_text() == "one"
    assert (home / "big").read_bytes() == (v3 / "home/sprite/big").read_bytes()


async def test_checkpoints_are_read_only_at_dot_sprite_checkpoints(
    emu: RunningEmulator,
) -> None:
    if not use_sandbox(emu.state.config.sandbox):
        pytest.skip("checkpoints are mounted in the sandbox only")
    emu.add_sprite(SPRITE)
    home = emu.state.sprite_root(SPRITE) / "home" / "sprite"
    (home / "f").write_text("in v1")
    await _checkpoint(emu)
    run = await run_ws(emu, ["cat", "/.sprite/checkpoints/v1/home/sprite/f"])
    assert (run.exit_text, run.stdout) == (0, b"in v1")
    run = await run_ws(emu, ["sh", "-c", "echo x > /.sprite/checkpoints/v1/home/sprite/f"])
    assert run.exit_text != 0
    assert b"Read-only file system" in run.stderr
    assert (store_for(emu.state).snapshot_dir(SPRITE, "v1") / "home/sprite/f").read_text() == (
        "in v1"
    )
