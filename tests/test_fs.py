"""The filesystem client (``SpriteFS``/``SpritePath``) against the emulator over loopback."""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sprites_async import NotFoundError, SpritesClient
from sprites_async._fs import (
    FileInfo,
    SpriteDirectoryNotEmptyError,
    SpriteFileExistsError,
    SpriteFileNotFoundError,
    SpriteFS,
    SpriteFSError,
    SpriteIsADirectoryError,
    SpriteNotADirectoryError,
    SpritePath,
)
from tests._emulator import RunningEmulator


@pytest.fixture
def fs(emu_client: SpritesClient) -> SpriteFS:
    return SpriteFS(emu_client.sprite("box"))


def host(emu: RunningEmulator, path: str) -> Path:
    """Where a sprite path lives on the host, to check effects without the API."""
    return emu.state.sprite_root("box") / path.lstrip("/")


# ---------------------------------------------------------------- pure paths


def test_paths_join_and_normalise(emu_client: SpritesClient) -> None:
    fs = SpriteFS(emu_client.sprite("box"), root="/home/sprite/")
    assert fs.root == "/home/sprite"
    p = fs / "data" / "x.json"
    assert str(p) == "/home/sprite/data/x.json"
    assert p.name == "x.json" and p.suffix == ".json" and p.stem == "x"
    assert p.parent == fs / "data"
    assert (fs / "/etc" / "hosts").path == "/etc/hosts"
    assert (fs / "a/../b").path == "/home/sprite/b"
    assert p.with_suffix(".txt").path == "/home/sprite/data/x.txt"
    assert p.with_name("y").path == "/home/sprite/data/y"
    assert fs.path().path == "/home/sprite"
    assert (fs / "/").parent.path == "/"
    assert hash(fs / "a") == hash(fs / "a")


@pytest.mark.parametrize("bad", ["", "a\x00b"])
def test_bad_paths_are_refused_before_the_network(emu_client: SpritesClient, bad: str) -> None:
    fs = SpriteFS(emu_client.sprite("box"))
    with pytest.raises(ValueError, match="path"):
        fs / bad
    with pytest.raises(TypeError):
        fs / b"bytes"  # type: ignore[operator]


def test_root_must_be_absolute(emu_client: SpritesClient) -> None:
    with pytest.raises(ValueError, match="absolute"):
        SpriteFS(emu_client.sprite("box"), root="relative")


# ------------------------------------------------------------- read / write


async def test_write_and_read_round_trip(fs: SpriteFS, emu: RunningEmulator) -> None:
    p = fs / "sub" / "dir" / "a.txt"
    result = await p.write_text("héllo\n", mode=0o600)
    assert result.path == "/home/sprite/sub/dir/a.txt"
    assert result.size == len("héllo\n".encode())
    assert result.mode == 0o600
    assert await p.read_text() == "héllo\n"
    assert await p.read_bytes() == "héllo\n".encode()
    assert host(emu, p.path).stat().st_mode & 0o777 == 0o600


async def test_write_stream_and_atomic_write(fs: SpriteFS, emu: RunningEmulator) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 1000
        yield memoryview(b"end")  # type: ignore[misc]

    p = fs / "stream.bin"
    result = await p.write_stream(chunks(), atomic=True)
    assert result.size == 10_003
    assert result.path == p.path
    data = await p.read_bytes()
    assert data[:1000] == b"\x00" * 1000 and data.endswith(b"end")
    await p.write_bytes(b"replaced", atomic=True)
    assert await p.read_bytes() == b"replaced"
    # Only the file itself: no temporary names left next to it.
    assert sorted(os.listdir(host(emu, fs.root))) == ["stream.bin"]


async def test_atomic_write_failure_leaves_nothing_behind(
    fs: SpriteFS, emu: RunningEmulator
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("source failed")

    p = fs / "never.bin"
    with pytest.raises(Exception, match="source failed"):
        await p.write_stream(broken(), atomic=True)
    assert not await p.exists()
    assert os.listdir(host(emu, fs.root)) == []


async def test_write_stream_refuses_non_bytes(fs: SpriteFS) -> None:
    async def chunks() -> AsyncIterator[object]:
        yield "text"

    with pytest.raises(Exception, match="bytes"):
        await (fs / "x").write_stream(chunks())  # type: ignore[arg-type]


# ------------------------------------------------------------------- ranges


async def test_open_read_ranges(fs: SpriteFS) -> None:
    p = fs / "digits"
    data = bytes(range(256)) * 40
    await p.write_bytes(data)

    async def read(**kw: int | None) -> bytes:
        async with p.open_read(**kw) as stream:  # type: ignore[arg-type]
            return b"".join([c async for c in stream])

    assert await read() == data
    assert await read(offset=10) == data[10:]
    assert await read(offset=10, length=100) == data[10:110]
    assert await read(length=5) == data[:5]
    assert await read(offset=len(data) - 3, length=100) == data[-3:]
    assert await read(offset=len(data) + 10) == b""
    assert await read(offset=3, length=0) == b""
    assert await read(offset=1, length=7, chunk_size=2) == data[1:8]
    chunks = [c async for c in p.open_read(chunk_size=1000)]
    assert max(map(len, chunks)) <= 1000 and b"".join(chunks) == data


async def test_open_read_can_stop_early(fs: SpriteFS) -> None:
    p = fs / "big"
    await p.write_bytes(b"x" * 500_000)
    async with p.open_read(chunk_size=1024) as stream:
        async for chunk in stream:
            assert chunk
            break
    assert await p.read_bytes() == b"x" * 500_000  # the connection was released cleanly


def test_open_read_validates_arguments(fs: SpriteFS) -> None:
    p = fs / "x"
    with pytest.raises(ValueError, match="offset"):
        p.open_read(offset=-1)
    with pytest.raises(ValueError, match="length"):
        p.open_read(length=-5)
    with pytest.raises(ValueError, match="chunk_size"):
        p.open_read(chunk_size=0)


# ------------------------------------------------------------- stat & dirs


async def test_stat_exists_and_kinds(fs: SpriteFS, emu: RunningEmulator) -> None:
    await (fs / "d" / "f.txt").write_bytes(b"12345")
    os.symlink("d", host(emu, "/home/sprite/link-to-dir"))
    os.symlink("d/f.txt", host(emu, "/home/sprite/link-to-file"))
    os.symlink("nowhere", host(emu, "/home/sprite/dangling"))

    info = await (fs / "d" / "f.txt").stat()
    assert isinstance(info, FileInfo)
    assert (info.name, info.path, info.type, info.size) == (
        "f.txt",
        "/home/sprite/d/f.txt",
        "file",
        5,
    )
    assert info.mode == 0o644 and info.is_file and info.mod_time is not None
    d = await (fs / "d").stat()
    assert d.is_dir and d.name == "d"
    root = await (fs / "/").stat()
    assert root.is_dir and root.path == "/"

    assert await (fs / "d").is_dir() and not await (fs / "d").is_file()
    assert await (fs / "d" / "f.txt").is_file()
    assert (await (fs / "link-to-dir").stat()).is_symlink
    assert await (fs / "link-to-dir").is_dir()
    assert await (fs / "link-to-file").is_file()
    assert await (fs / "link-to-file").is_symlink()
    assert not await (fs / "d").is_symlink() and not await (fs / "missing").is_symlink()
    assert await (fs / "dangling").is_symlink()
    assert not await (fs / "dangling").exists()  # as pathlib: the link is followed
    assert not await (fs / "dangling").is_file() and not await (fs / "dangling").is_dir()
    assert not await (fs / "missing").exists()
    assert not await (fs / "missing").is_dir()
    assert not await (fs / "d" / "f.txt" / "below-a-file").exists()

    with pytest.raises(SpriteFileNotFoundError) as caught:
        await (fs / "missing" / "x").stat()
    assert caught.value.filename == "/home/sprite/missing/x"
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(SpriteNotADirectoryError):
        await (fs / "d" / "f.txt" / "x").stat()


async def test_iterdir_and_scandir(fs: SpriteFS) -> None:
    for name in ("b", "a", "c"):
        await (fs / "dir" / name).write_bytes(name.encode())
    await (fs / "dir" / "sub").mkdir()
    names = sorted([p.name async for p in (fs / "dir").iterdir()])
    assert names == ["a", "b", "c", "sub"]
    assert all(isinstance(p, SpritePath) for p in [p async for p in (fs / "dir").iterdir()])
    kinds = {e.name: e.type for e in await (fs / "dir").scandir()}
    assert kinds == {"a": "file", "b": "file", "c": "file", "sub": "directory"}
    with pytest.raises(SpriteNotADirectoryError):
        await (fs / "dir" / "a").scandir()
    with pytest.raises(FileNotFoundError):
        [p async for p in (fs / "nope").iterdir()]


async def test_mkdir(fs: SpriteFS, emu: RunningEmulator) -> None:
    d = fs / "x" / "y" / "z"
    await d.mkdir()
    assert await d.is_dir()
    assert os.listdir(host(emu, d.path)) == []  # the marker file is gone
    await d.mkdir()  # exist_ok by default
    with pytest.raises(FileExistsError):
        await d.mkdir(exist_ok=False)
    with pytest.raises(FileNotFoundError):
        await (fs / "no" / "parent").mkdir(parents=False)
    await (fs / "x" / "w").mkdir(parents=False, mode=0o700)
    assert host(emu, "/home/sprite/x/w").stat().st_mode & 0o777 == 0o700
    await (fs / "file").write_bytes(b"")
    with pytest.raises(SpriteFileExistsError):
        await (fs / "file").mkdir()
    with pytest.raises(NotADirectoryError):
        await (fs / "file" / "below").mkdir()


async def test_mkdir_keeps_a_users_keep_file(fs: SpriteFS) -> None:
    await (fs / "d" / ".keep").write_bytes(b"mine")
    await (fs / "d").mkdir()
    assert await (fs / "d" / ".keep").read_bytes() == b"mine"


async def test_unlink_rmdir_rmtree(fs: SpriteFS) -> None:
    await (fs / "t" / "a" / "f").write_bytes(b"1")
    await (fs / "t" / "g").write_bytes(b"2")

    with pytest.raises(SpriteIsADirectoryError):
        await (fs / "t").unlink()
    with pytest.raises(SpriteDirectoryNotEmptyError) as caught:
        await (fs / "t").rmdir()
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOTEMPTY
    assert caught.value.code == "ENOTEMPTY"
    with pytest.raises(NotADirectoryError):
        await (fs / "t" / "g").rmdir()
    with pytest.raises(NotADirectoryError):
        await (fs / "t" / "g").rmtree()

    await (fs / "t" / "g").unlink()
    assert not await (fs / "t" / "g").exists()
    with pytest.raises(FileNotFoundError):
        await (fs / "t" / "g").unlink()
    await (fs / "t" / "g").unlink(missing_ok=True)

    await (fs / "t" / "empty").mkdir()
    await (fs / "t" / "empty").rmdir()
    await (fs / "t").rmtree()
    assert not await (fs / "t").exists()
    await (fs / "t").rmtree(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        await (fs / "t").rmtree()


async def test_rename_copy_chmod_chown(fs: SpriteFS, emu: RunningEmulator) -> None:
    src = fs / "src" / "a.txt"
    await src.write_bytes(b"data")
    await (fs / "dst").mkdir()
    moved = await src.rename("dst/b.txt")  # relative: to the root
    assert moved == fs / "dst" / "b.txt"
    assert not await src.exists()
    assert await moved.read_bytes() == b"data"

    other = fs / "other.txt"
    await other.write_bytes(b"other")
    await other.replace(moved)  # replaces an existing file
    assert await moved.read_bytes() == b"other"

    result = await (fs / "dst").copy(fs / "copy")
    assert result.count >= 1 and result.total_bytes == 5
    assert ("/home/sprite/dst/b.txt", "/home/sprite/copy/b.txt") in result.copied
    assert await (fs / "copy" / "b.txt").read_bytes() == b"other"

    await moved.chmod(0o755)
    assert host(emu, moved.path).stat().st_mode & 0o777 == 0o755
    await (fs / "copy").chmod(0o700, recursive=True)
    assert host(emu, "/home/sprite/copy/b.txt").stat().st_mode & 0o777 == 0o700

    await moved.chown(uid=os.getuid(), gid=os.getgid())
    with pytest.raises(ValueError, match="uid and/or gid"):
        await moved.chown()
    with pytest.raises(ValueError, match="mode"):
        await moved.chmod(0o10000)
    with pytest.raises(FileNotFoundError) as caught:
        await (fs / "ghost").rename("elsewhere")
    assert caught.value.filename == "/home/sprite/ghost"


async def test_read_errors_are_typed(fs: SpriteFS) -> None:
    await (fs / "dir" / "f").write_bytes(b"")
    with pytest.raises(SpriteFileNotFoundError) as missing:
        await (fs / "nope.txt").read_bytes()
    err = missing.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, NotFoundError)
    assert err.errno == errno.ENOENT and err.filename == "/home/sprite/nope.txt"
    assert err.status_code == 404 and err.sprite == "box"
    with pytest.raises(IsADirectoryError):
        await (fs / "dir").read_bytes()
    with pytest.raises(IsADirectoryError):
        await (fs / "dir").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        async for _ in (fs / "nope.txt").open_read():
            pass
    # Errors survive pickling with their OSError fields.
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is SpriteFileNotFoundError
    assert (again.errno, again.filename, again.status_code) == (
        errno.ENOENT,
        "/home/sprite/nope.txt",
        404,
    )


async def test_missing_sprite_is_not_a_missing_file(emu_client: SpritesClient) -> None:
    fs = SpriteFS(emu_client.sprite("ghost"))
    with pytest.raises(NotFoundError) as caught:
        await (fs / "a.txt").read_bytes()
    assert not isinstance(caught.value, (FileNotFoundError, SpriteFSError))
    assert caught.value.message == "sprite not found"
    with pytest.raises(NotFoundError) as caught:
        await (fs / "a.txt").exists()
    assert not isinstance(caught.value, FileNotFoundError)


async def test_upload_and_download_small_files(fs: SpriteFS, tmp_path: Path) -> None:
    tmp_path = tmp_path / "local"
    tmp_path.mkdir()
    local = tmp_path / "script.sh"
    local.write_bytes(b"#!/bin/sh\necho hi\n")
    local.chmod(0o750)
    result = await fs.upload(local, "bin/script.sh", chunk_size=4)
    assert result.size == local.stat().st_size
    assert (await (fs / "bin" / "script.sh").stat()).mode == 0o750  # the local mode by default
    back = tmp_path / "back.sh"
    assert await fs.download("bin/script.sh", back, chunk_size=3) == result.size
    assert back.read_bytes() == local.read_bytes()

    with pytest.raises(SpriteFileNotFoundError):
        await fs.download("missing.bin", tmp_path / "never.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.sh", "script.sh"]
    with pytest.raises(FileNotFoundError):
        await fs.upload(tmp_path / "no-such-local-file", "x")
