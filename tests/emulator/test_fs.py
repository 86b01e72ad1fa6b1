"""Filesystem routes (``/fs/...``) over real loopback HTTP."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sprites_async.emulator._sandbox import file_owner
from tests._emulator import RunningEmulator

SPRITE = "fsbox"
HOME = "/home/sprite"


@dataclass
class Fs:
    """A thin raw-HTTP helper for one sprite's ``/fs`` routes."""

    emu: RunningEmulator
    name: str

    @property
    def root(self) -> Path:
        return self.emu.state.sprite_root(self.name)

    def url(self, route: str) -> str:
        return f"{self.emu.url}/v1/sprites/{self.name}/fs/{route}"

    async def call(
        self,
        method: str,
        route: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        async with self.emu.http.request(
            method,
            self.url(route),
            params=params,
            json=json,
            data=data,
            headers={**self.emu.auth, **(headers or {})},
        ) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    async def write(self, path: str, data: bytes = b"", **params: str) -> tuple[int, Any]:
        return await self.call(
            "PUT",
            "write",
            params={"path": path, "workingDir": HOME, **params},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    async def read(self, path: str, **params: str) -> tuple[int, Any]:
        return await self.call("GET", "read", params={"path": path, "workingDir": HOME, **params})

    async def list(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", "list", params={"path": path, "workingDir": HOME})


@pytest.fixture
def fs(emu: RunningEmulator) -> Fs:
    emu.add_sprite(SPRITE)
    return Fs(emu, SPRITE)


def fs_error(code: str, path: str) -> dict[str, str]:
    messages = {
        "ENOENT": "no such file or directory",
        "EISDIR": "is a directory",
        "ENOTDIR": "not a directory",
        "ENOTEMPTY": "directory not empty",
    }
    return {"error": messages[code], "code": code, "path": path}


# --- write / read -------------------------------------------------------------


async def test_write_then_read_roundtrip(fs: Fs) -> None:
    status, body = await fs.write("notes/a.txt", b"hello\n")
    assert status == 200
    assert body == {"path": "/home/sprite/notes/a.txt", "size": 6, "mode": "0644"}
    host = fs.root / "home/sprite/notes/a.txt"
    assert host.read_bytes() == b"hello\n"
    assert stat.S_IMODE(host.stat().st_mode) == 0o644
    assert await fs.read("notes/a.txt") == (200, b"hello\n")


async def test_write_applies_mode_without_umask(fs: Fs) -> None:
    status, body = await fs.write("run.sh", b"#!/bin/sh\n", mode="0755")
    assert (status, body["mode"]) == (200, "0755")
    assert stat.S_IMODE((fs.root / "home/sprite/run.sh").stat().st_mode) == 0o755
    status, body = await fs.write("secret", b"x", mode="600")
    assert body["mode"] == "0600"
    assert stat.S_IMODE((fs.root / "home/sprite/secret").stat().st_mode) == 0o600


async def test_write_replaces_whole_file_and_leaves_no_temp_files(fs: Fs) -> None:
    await fs.write("f", b"long original content")
    await fs.write("f", b"short")
    assert (fs.root / "home/sprite/f").read_bytes() == b"short"
    assert sorted(p.name for p in (fs.root / "home/sprite").iterdir()) == ["f"]


async def test_write_empty_body(fs: Fs) -> None:
    status, body = await fs.write("empty", b"")
    assert (status, body["size"]) == (200, 0)
    assert await fs.read("empty") == (200, b"")


@pytest.mark.parametrize("flag", ["mkdirParents", "mkdir"])
async def test_write_parents_flag_false_needs_existing_parent(fs: Fs, flag: str) -> None:
    status, body = await fs.write("x/y/z.txt", b"1", **{flag: "false"})
    assert (status, body) == (404, fs_error("ENOENT", "/home/sprite/x/y/z.txt"))
    status, _ = await fs.write("x/y/z.txt", b"1", **{flag: "true"})
    assert status == 200


async def test_write_creates_parents_by_default(fs: Fs) -> None:
    status, body = await fs.write("/tmp/deep/er/f", b"1")
    assert (status, body["path"]) == (200, "/tmp/deep/er/f")
    assert (fs.root / "tmp/deep/er/f").read_bytes() == b"1"


async def test_write_errors(fs: Fs) -> None:
    assert await fs.write(HOME, b"x") == (400, fs_error("EISDIR", HOME))
    status, body = await fs.write("m", b"x", mode="0999")
    assert (status, body["code"]) == (400, "EINVAL")
    (fs.root / "home/sprite/file").write_text("f")
    status, body = await fs.write("file/child", b"x")
    assert (status, body) == (400, fs_error("ENOTDIR", "/home/sprite/file/child"))
    status, body = await fs.call("PUT", "write", data=b"x")
    assert (status, body["code"]) == (400, "EINVAL")


async def test_write_body_over_limit_is_refused(fs: Fs) -> None:
    fs.emu.state.config.max_body = 10
    status, body = await fs.write("big", b"x" * 11)
    assert (status, body["code"]) == (400, "EINVAL")

    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 5

    status, body = await fs.call("PUT", "write", params={"path": "/tmp/big2"}, data=chunks())
    assert (status, body["code"]) == (400, "EINVAL")
    assert not (fs.root / "tmp/big2").exists()
    assert list((fs.root / "tmp").iterdir()) == []


async def test_read_errors(fs: Fs) -> None:
    assert await fs.read("nope") == (404, fs_error("ENOENT", "/home/sprite/nope"))
    assert await fs.read(HOME) == (400, fs_error("EISDIR", HOME))
    status, body = await fs.call("GET", "read")
    assert (status, body["code"]) == (400, "EINVAL")
    os.mkfifo(fs.root / "tmp/fifo")
    status, body = await fs.read("/tmp/fifo")
    assert (status, body["code"]) == (400, "EINVAL")


async def test_read_content_type_is_sniffed(fs: Fs) -> None:
    await fs.write("t.txt", "héllo".encode())
    await fs.write("b.bin", b"\x00\x01\x02")
    async with fs.emu.http.get(
        fs.url("read"), params={"path": "/home/sprite/t.txt"}, headers=fs.emu.auth
    ) as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Accept-Ranges"] == "bytes"
    async with fs.emu.http.get(
        fs.url("read"), params={"path": "/home/sprite/b.bin"}, headers=fs.emu.auth
    ) as resp:
        assert resp.headers["Content-Type"] == "application/octet-stream"


async def test_read_range_header(fs: Fs) -> None:
    await fs.write("r", b"0123456789")

    async def ranged(value: str) -> tuple[int, bytes, str | None]:
        async with fs.emu.http.get(
            fs.url("read"),
            params={"path": "/home/sprite/r"},
            headers={**fs.emu.auth, "Range": value},
        ) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Range")

    assert await ranged("bytes=2-4") == (206, b"234", "bytes 2-4/10")
    assert await ranged("bytes=7-") == (206, b"789", "bytes 7-9/10")
    assert await ranged("bytes=-3") == (206, b"789", "bytes 7-9/10")
    assert await ranged("bytes=5-100") == (206, b"56789", "bytes 5-9/10")
    status, _, content_range = await ranged("bytes=10-")
    assert (status, content_range) == (416, "bytes */10")
    # Multiple or malformed ranges are ignored: the whole file, 200.
    assert await ranged("bytes=0-1,3-4") == (200, b"0123456789", None)
    assert await ranged("items=1-2") == (200, b"0123456789", None)


async def test_read_offset_and_length_params(fs: Fs) -> None:
    await fs.write("r", b"0123456789")
    assert await fs.read("r", offset="3", length="4") == (200, b"3456")
    assert await fs.read("r", offset="8") == (200, b"89")
    assert await fs.read("r", length="2") == (200, b"01")
    assert await fs.read("r", offset="50") == (200, b"")
    status, body = await fs.read("r", offset="-1")
    assert (status, body["code"]) == (400, "EINVAL")


# --- list -------------------------------------------------------------------

_MODTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_list_directory_shape(fs: Fs) -> None:
    await fs.write("b.txt", b"twelve bytes", mode="0640")
    (fs.root / "home/sprite/adir").mkdir(mode=0o750)
    os.chmod(fs.root / "home/sprite/adir", 0o750)
    (fs.root / "home/sprite/link").symlink_to("adir")
    os.mkfifo(fs.root / "home/sprite/pipe")
    status, body = await fs.list(HOME)
    assert status == 200
    assert body["path"] == HOME
    assert body["count"] == 4
    entries = {e["name"]: e for e in body["entries"]}
    assert [e["name"] for e in body["entries"]] == ["adir", "b.txt", "link", "pipe"]
    assert entries["b.txt"] == {
        "name": "b.txt",
        "path": "/home/sprite/b.txt",
        "type": "file",
        "size": 12,
        "mode": "640",
        "modTime": entries["b.txt"]["modTime"],
        "isDir": False,
    }
    assert _MODTIME.match(entries["b.txt"]["modTime"])
    assert entries["adir"]["type"] == "directory"
    assert entries["adir"]["isDir"] is True
    assert entries["adir"]["mode"] == "750"
    assert entries["link"]["type"] == "symlink"
    assert entries["link"]["isDir"] is False
    assert entries["link"]["size"] == len("adir")
    assert entries["pipe"]["type"] == "other"


async def test_list_file_returns_single_entry(fs: Fs) -> None:
    await fs.write("one.txt", b"1")
    status, body = await fs.list("one.txt")
    assert status == 200
    assert body["count"] == 1
    assert body["path"] == "/home/sprite/one.txt"
    assert body["entries"][0]["name"] == "one.txt"
    assert body["entries"][0]["path"] == "/home/sprite/one.txt"


async def test_list_root_and_errors(fs: Fs) -> None:
    status, body = await fs.list("/")
    assert status == 200
    assert {e["path"] for e in body["entries"]} == {"/home", "/tmp"}
    assert await fs.list("missing") == (404, fs_error("ENOENT", "/home/sprite/missing"))
    await fs.write("f", b"")
    assert await fs.list("f/x") == (400, fs_error("ENOTDIR", "/home/sprite/f/x"))


# --- delete -----------------------------------------------------------------


async def test_delete_file_with_query_params(fs: Fs) -> None:
    await fs.write("gone.txt", b"x")
    status, body = await fs.call(
        "DELETE", "delete", params={"path": "gone.txt", "workingDir": HOME}
    )
    assert (status, body) == (200, {"deleted": ["/home/sprite/gone.txt"], "count": 1})
    assert not (fs.root / "home/sprite/gone.txt").exists()


async def test_delete_with_json_body(fs: Fs) -> None:
    await fs.write("d/x/y", b"x")
    status, body = await fs.call(
        "DELETE", "delete", json={"path": "d", "workingDir": HOME, "recursive": True}
    )
    assert (status, body) == (200, {"deleted": ["/home/sprite/d"], "count": 1})
    assert not (fs.root / "home/sprite/d").exists()


async def test_delete_directory_rules(fs: Fs) -> None:
    await fs.write("full/f", b"x")
    (fs.root / "home/sprite/empty").mkdir()
    params = {"path": "full", "workingDir": HOME}
    status, body = await fs.call("DELETE", "delete", params=params)
    assert (status, body) == (400, fs_error("ENOTEMPTY", "/home/sprite/full"))
    status, _ = await fs.call("DELETE", "delete", params={**params, "recursive": "false"})
    assert status == 400
    status, _ = await fs.call("DELETE", "delete", params={"path": "/home/sprite/empty"})
    assert status == 200
    status, _ = await fs.call("DELETE", "delete", params={**params, "recursive": "true"})
    assert status == 200
    assert sorted(os.listdir(fs.root / "home/sprite")) == []


async def test_delete_symlink_removes_link_only(fs: Fs) -> None:
    await fs.write("target/keep", b"x")
    (fs.root / "home/sprite/l").symlink_to("target")
    status, _ = await fs.call(
        "DELETE", "delete", params={"path": "/home/sprite/l", "recursive": "true"}
    )
    assert status == 200
    assert (fs.root / "home/sprite/target/keep").exists()
    assert not (fs.root / "home/sprite/l").is_symlink()


async def test_delete_errors(fs: Fs) -> None:
    status, body = await fs.call("DELETE", "delete", params={"path": "/nope"})
    assert (status, body) == (404, fs_error("ENOENT", "/nope"))
    status, body = await fs.call("DELETE", "delete", params={"path": "/", "recursive": "true"})
    assert (status, body["code"]) == (403, "EACCES")
    assert (fs.root / "home/sprite").is_dir()
    status, body = await fs.call("DELETE", "delete", params={"path": "/tmp", "recursive": "maybe"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("DELETE", "delete", data=b"{not json")
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("DELETE", "delete", json=["path"])
    assert (status, body["code"]) == (400, "EINVAL")


# --- rename -----------------------------------------------------------------


async def test_rename_moves_and_replaces(fs: Fs) -> None:
    await fs.write("old.txt", b"new content")
    await fs.write("existing.txt", b"old content")
    status, body = await fs.call(
        "POST",
        "rename",
        json={"source": "old.txt", "dest": "existing.txt", "workingDir": HOME, "asRoot": False},
    )
    assert (status, body) == (
        200,
        {"source": "/home/sprite/old.txt", "dest": "/home/sprite/existing.txt"},
    )
    assert (fs.root / "home/sprite/existing.txt").read_bytes() == b"new content"
    assert not (fs.root / "home/sprite/old.txt").exists()


async def test_rename_errors(fs: Fs) -> None:
    status, body = await fs.call("POST", "rename", json={"source": "/a", "dest": "/b"})
    assert (status, body) == (404, fs_error("ENOENT", "/a"))
    await fs.write("f", b"x")
    status, body = await fs.call("POST", "rename", json={"source": "/home/sprite/f"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call(
        "POST", "rename", json={"source": "/home/sprite/f", "dest": "/no/such/dir/f"}
    )
    assert (status, body["code"]) == (404, "ENOENT")
    status, body = await fs.call("POST", "rename", json={"source": "/", "dest": "/x"})
    assert (status, body["code"]) == (400, "EINVAL")
    await fs.write("d/inner", b"x")
    status, body = await fs.call(
        "POST", "rename", json={"source": "/home/sprite/d", "dest": "/home/sprite/d/inner/z"}
    )
    assert status == 400


# --- copy -------------------------------------------------------------------


async def test_copy_file(fs: Fs) -> None:
    await fs.write("src.txt", b"12345", mode="0700")
    status, body = await fs.call(
        "POST", "copy", json={"source": "src.txt", "dest": "dst.txt", "workingDir": HOME}
    )
    assert (status, body) == (
        200,
        {
            "copied": [{"source": "/home/sprite/src.txt", "dest": "/home/sprite/dst.txt"}],
            "count": 1,
            "totalBytes": 5,
        },
    )
    dst = fs.root / "home/sprite/dst.txt"
    assert dst.read_bytes() == b"12345"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o700


async def test_copy_directory_recursively(fs: Fs) -> None:
    await fs.write("src/a", b"aa")
    await fs.write("src/sub/b", b"bbb")
    (fs.root / "home/sprite/src/ln").symlink_to("a")
    status, body = await fs.call(
        "POST",
        "copy",
        json={"source": "src", "dest": "dst", "workingDir": HOME, "recursive": True},
    )
    assert status == 200
    assert body["count"] == 3
    assert body["totalBytes"] == 5
    assert body["copied"] == [
        {"source": "/home/sprite/src/a", "dest": "/home/sprite/dst/a"},
        {"source": "/home/sprite/src/ln", "dest": "/home/sprite/dst/ln"},
        {"source": "/home/sprite/src/sub/b", "dest": "/home/sprite/dst/sub/b"},
    ]
    dst = fs.root / "home/sprite/dst"
    assert (dst / "sub/b").read_bytes() == b"bbb"
    assert os.readlink(dst / "ln") == "a"
    # A real copy: changing it leaves the source alone.
    (dst / "a").write_bytes(b"changed")
    assert (fs.root / "home/sprite/src/a").read_bytes() == b"aa"


async def test_copy_errors(fs: Fs) -> None:
    await fs.write("d/f", b"x")
    status, body = await fs.call("POST", "copy", json={"source": "/home/sprite/d", "dest": "/e"})
    assert (status, body) == (400, fs_error("EISDIR", "/home/sprite/d"))
    status, body = await fs.call(
        "POST",
        "copy",
        json={"source": "/home/sprite/d", "dest": "/home/sprite/d/sub", "recursive": True},
    )
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "copy", json={"source": "/nope", "dest": "/x"})
    assert (status, body) == (404, fs_error("ENOENT", "/nope"))
    status, body = await fs.call(
        "POST", "copy", json={"source": "/home/sprite/d/f", "dest": "/home/sprite/d"}
    )
    assert (status, body["code"]) == (400, "EISDIR")


# --- chmod / chown ----------------------------------------------------------


async def test_chmod_file_and_recursive(fs: Fs) -> None:
    await fs.write("tree/a", b"x")
    await fs.write("tree/sub/b", b"x")
    (fs.root / "home/sprite/tree/ln").symlink_to("a")
    status, body = await fs.call(
        "POST", "chmod", json={"path": "tree/a", "workingDir": HOME, "mode": "0600"}
    )
    assert (status, body) == (
        200,
        {"affected": [{"path": "/home/sprite/tree/a", "mode": "0600"}], "count": 1},
    )
    assert stat.S_IMODE((fs.root / "home/sprite/tree/a").stat().st_mode) == 0o600
    status, body = await fs.call(
        "POST",
        "chmod",
        json={"path": "tree", "workingDir": HOME, "mode": "0750", "recursive": True},
    )
    assert status == 200
    assert [a["path"] for a in body["affected"]] == [
        "/home/sprite/tree",
        "/home/sprite/tree/a",
        "/home/sprite/tree/sub",
        "/home/sprite/tree/sub/b",
    ]
    assert body["count"] == 4
    for rel in ("tree", "tree/a", "tree/sub", "tree/sub/b"):
        assert stat.S_IMODE((fs.root / "home/sprite" / rel).stat().st_mode) == 0o750


async def test_chmod_errors(fs: Fs) -> None:
    status, body = await fs.call("POST", "chmod", json={"path": "/nope", "mode": "0644"})
    assert (status, body) == (404, fs_error("ENOENT", "/nope"))
    status, body = await fs.call("POST", "chmod", json={"path": "/tmp", "mode": "rwx"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "chmod", json={"path": "/tmp"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "chmod", json={"path": "/tmp", "mode": 644})
    assert (status, body["code"]) == (400, "EINVAL")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_chown_as_root(fs: Fs) -> None:
    await fs.write("own/f", b"x")
    status, body = await fs.call(
        "POST", "chown", json={"path": "own", "workingDir": HOME, "uid": 1000, "gid": 1001}
    )
    assert (status, body) == (
        200,
        {"affected": [{"path": "/home/sprite/own", "uid": 1000, "gid": 1001}], "count": 1},
    )
    status, body = await fs.call(
        "POST",
        "chown",
        json={"path": "own", "workingDir": HOME, "gid": "1002", "recursive": True},
    )
    assert status == 200
    # With the sandbox, what the API writes is the sprite user's (uid 1000 in the sprite,
    # an unprivileged id on the host: test_sandbox_host_uid.py); without it, root's.
    owner = file_owner(fs.emu.state.config.sandbox)
    assert body["affected"] == [
        {"path": "/home/sprite/own", "uid": 1000, "gid": 1002},
        {"path": "/home/sprite/own/f", "uid": 1000 if owner else 0, "gid": 1002},
    ]
    host_uid = owner[0] if owner else 1000
    assert (fs.root / "home/sprite/own").stat().st_uid == host_uid
    st = (fs.root / "home/sprite/own/f").stat()
    assert (st.st_uid, st.st_gid) == (owner[0] if owner else 0, 1002)


async def test_chown_without_privilege_is_eacces(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chown", refuse)
    await fs.write("f", b"x")
    status, body = await fs.call("POST", "chown", json={"path": "/home/sprite/f", "uid": 0})
    assert (status, body) == (
        403,
        {"error": "operation not permitted", "code": "EACCES", "path": "/home/sprite/f"},
    )


async def test_chown_errors(fs: Fs) -> None:
    status, body = await fs.call("POST", "chown", json={"path": "/tmp"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "chown", json={"path": "/tmp", "uid": "root"})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "chown", json={"path": "/tmp", "uid": -1})
    assert (status, body["code"]) == (400, "EINVAL")
    status, body = await fs.call("POST", "chown", json={"path": "/nope", "uid": 0})
    assert (status, body) == (404, fs_error("ENOENT", "/nope"))


# --- sprite layer -------------------------------------------------------------


async def test_missing_sprite_is_404_without_code(emu: RunningEmulator) -> None:
    async with emu.http.get(
        f"{emu.url}/v1/sprites/ghost/fs/list", params={"path": "/"}, headers=emu.auth
    ) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "sprite not found"}


async def test_routes_require_the_token(fs: Fs) -> None:
    async with fs.emu.http.get(fs.url("read"), params={"path": "/tmp"}) as resp:
        assert resp.status == 401


async def test_aborted_upload_leaves_nothing_behind(fs: Fs) -> None:
    await fs.write("/tmp/keep", b"old")
    host, port = fs.emu.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"PUT /v1/sprites/{SPRITE}/fs/write?path=/tmp/keep HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {fs.emu.token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        + b"x" * 1000
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    tmp = fs.root / "tmp"
    for _ in range(100):
        if sorted(p.name for p in tmp.iterdir()) == ["keep"]:
            break
        await asyncio.sleep(0.02)
    assert sorted(p.name for p in tmp.iterdir()) == ["keep"]
    assert (tmp / "keep").read_bytes() == b"old"
