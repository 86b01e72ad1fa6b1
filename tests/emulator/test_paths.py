"""Unit tests of path confinement (``_paths``), without a server."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sprites_async.emulator._paths import (
    MAX_SYMLINKS,
    FsError,
    clean,
    resolve,
    resolve_in,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "home" / "sprite").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "home" / "sprite" / "a.txt").write_text("a")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host file next to the root that nothing may reach."""
    target = tmp_path / "outside.txt"
    target.write_text("host secret")
    return target


@pytest.mark.parametrize(
    ("path", "working_dir", "expected"),
    [
        ("a.txt", "/home/sprite", "/home/sprite/a.txt"),
        ("/etc/passwd", "/home/sprite", "/etc/passwd"),
        ("../../../../etc/passwd", "/home/sprite", "/etc/passwd"),
        ("/..", "/", "/"),
        ("//x//y/./z/", "/", "/x/y/z"),
        ("", "/home/sprite", "/home/sprite"),
        ("b", "home/sprite", "/home/sprite/b"),
        ("b", "", "/b"),
        ("x/../../..", "/tmp", "/"),
    ],
)
def test_clean_joins_and_clamps_at_root(path: str, working_dir: str, expected: str) -> None:
    assert clean(path, working_dir) == expected


def test_clean_refuses_nul_bytes() -> None:
    with pytest.raises(FsError) as info:
        clean("a\x00b")
    assert info.value.code == "EINVAL"
    assert info.value.status == 400


def test_resolve_plain_file(root: Path) -> None:
    r = resolve_in(root, "a.txt", "/home/sprite")
    assert r.exists
    assert r.path == r.real == "/home/sprite/a.txt"
    assert r.host == root / "home" / "sprite" / "a.txt"


def test_resolve_root_itself(root: Path) -> None:
    r = resolve(root, "/")
    assert r.is_root
    assert r.host == root
    assert r.exists


def test_missing_last_component_is_reported_not_raised(root: Path) -> None:
    r = resolve(root, "/home/sprite/new.txt")
    assert not r.exists
    assert r.host == root / "home" / "sprite" / "new.txt"


def test_missing_intermediate_component_is_enoent(root: Path) -> None:
    with pytest.raises(FsError) as info:
        resolve(root, "/home/nobody/x")
    assert (info.value.code, info.value.status, info.value.path) == (
        "ENOENT",
        404,
        "/home/nobody/x",
    )
    assert info.value.message == "no such file or directory"


def test_file_as_intermediate_component_is_enotdir(root: Path) -> None:
    with pytest.raises(FsError) as info:
        resolve(root, "/home/sprite/a.txt/x")
    assert info.value.code == "ENOTDIR"


def test_absolute_symlink_is_taken_from_the_sprite_root(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("sprite passwd")
    (root / "home" / "sprite" / "pw").symlink_to("/etc/passwd")
    r = resolve(root, "/home/sprite/pw")
    assert r.real == "/etc/passwd"
    assert r.host == root / "etc" / "passwd"
    assert r.path == "/home/sprite/pw"


def test_absolute_symlink_to_host_file_stays_inside(root: Path, outside: Path) -> None:
    (root / "home" / "sprite" / "leak").symlink_to(outside)
    # Taken as the sprite's own <outside>, whose directories do not exist.
    with pytest.raises(FsError) as info:
        resolve(root, "/home/sprite/leak")
    assert info.value.code == "ENOENT"
    (root / "home" / "sprite" / "leak2").symlink_to("/outside.txt")
    r = resolve(root, "/home/sprite/leak2")
    assert not r.exists
    assert r.host == root / "outside.txt"


def test_relative_symlink_climbing_out_is_refused(root: Path, outside: Path) -> None:
    (root / "home" / "sprite" / "up").symlink_to("../../../outside.txt")
    with pytest.raises(FsError) as info:
        resolve(root, "/home/sprite/up")
    assert (info.value.code, info.value.status) == ("EACCES", 403)


def test_relative_symlink_within_root_is_followed(root: Path) -> None:
    (root / "tmp" / "t").symlink_to("../home/sprite")
    r = resolve(root, "/tmp/t/a.txt")
    assert r.real == "/home/sprite/a.txt"
    assert r.exists


def test_symlink_dotdot_is_physical(root: Path) -> None:
    # /tmp/s -> /home/sprite, so /tmp/s/../sprite... is resolved from /home.
    (root / "tmp" / "s").symlink_to("/home/sprite")
    (root / "tmp" / "s2").symlink_to("s/..")
    assert resolve(root, "/tmp/s2/sprite/a.txt").real == "/home/sprite/a.txt"


def test_follow_last_false_returns_the_link(root: Path) -> None:
    (root / "tmp" / "l").symlink_to("/home/sprite/a.txt")
    r = resolve(root, "/tmp/l", follow_last=False)
    assert r.real == "/tmp/l"
    assert r.lstat is not None
    assert r.host.is_symlink()


def test_symlink_loop_is_eloop(root: Path) -> None:
    (root / "tmp" / "x").symlink_to("y")
    (root / "tmp" / "y").symlink_to("x")
    with pytest.raises(FsError) as info:
        resolve(root, "/tmp/x")
    assert info.value.code == "ELOOP"


def test_long_symlink_chain_within_limit(root: Path) -> None:
    for i in range(MAX_SYMLINKS):
        (root / "tmp" / f"l{i}").symlink_to(f"l{i + 1}" if i + 1 < MAX_SYMLINKS else "/home")
    assert resolve(root, "/tmp/l0/sprite/a.txt").exists


def test_empty_symlink_is_enoent(tmp_path: Path, root: Path) -> None:
    # Linux refuses to create an empty symlink; a mocked readlink stands in.
    (root / "tmp" / "e").symlink_to("placeholder")
    real_readlink = os.readlink
    try:
        os.readlink = lambda p: ""  # type: ignore[assignment,misc]
        with pytest.raises(FsError) as info:
            resolve(root, "/tmp/e")
    finally:
        os.readlink = real_readlink
    assert info.value.code == "ENOENT"


def test_create_parents_stays_inside_root(root: Path, tmp_path: Path) -> None:
    (root / "home" / "sprite" / "out").symlink_to(str(tmp_path / "escape"))
    r = resolve(root, "/home/sprite/out/deep/file", create_parents=True)
    assert not (tmp_path / "escape").exists()
    assert r.host.parent.is_dir()
    assert root in r.host.parents


def test_dangling_final_symlink_resolves_to_target_inside(root: Path) -> None:
    (root / "tmp" / "d").symlink_to("/home/sprite/new.txt")
    r = resolve(root, "/tmp/d")
    assert not r.exists
    assert r.real == "/home/sprite/new.txt"


@pytest.mark.parametrize(
    ("err", "code", "status"),
    [
        (errno.ENOENT, "ENOENT", 404),
        (errno.EEXIST, "EEXIST", 400),
        (errno.EISDIR, "EISDIR", 400),
        (errno.ENOTDIR, "ENOTDIR", 400),
        (errno.ENOTEMPTY, "ENOTEMPTY", 400),
        (errno.EINVAL, "EINVAL", 400),
        (errno.EACCES, "EACCES", 403),
        (errno.EPERM, "EACCES", 403),
        (errno.EIO, "EIO", 500),
        (errno.ENOSPC, "EIO", 500),
    ],
)
def test_os_errors_map_to_codes_and_statuses(err: int, code: str, status: int) -> None:
    fs_err = FsError.from_os(OSError(err, os.strerror(err)), "/p")
    assert (fs_err.code, fs_err.status, fs_err.path) == (code, status, "/p")
    assert fs_err.message == os.strerror(err).lower()


def test_link_spelled_with_the_roots_host_path_maps_into_root(root: Path) -> None:
    # What `ln -s "$HOME/a.txt"` makes when exec runs without a sandbox.
    (root / "tmp" / "h").symlink_to(root / "home" / "sprite" / "a.txt")
    r = resolve(root, "/tmp/h")
    assert (r.real, r.exists) == ("/home/sprite/a.txt", True)
    (root / "tmp" / "r").symlink_to(root)
    assert resolve(root, "/tmp/r/home/sprite/a.txt").real == "/home/sprite/a.txt"
