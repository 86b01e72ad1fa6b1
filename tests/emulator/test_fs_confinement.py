"""Nothing outside a sprite's root is ever read, written, listed, chmodded or deleted."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._emulator import RunningEmulator

HOME = "/home/sprite"
SECRET = b"host secret: must never leak"


@dataclass
class Box:
    emu: RunningEmulator
    root: Path
    sentinel: Path
    sibling_home: Path

    async def call(
        self,
        method: str,
        route: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        async with self.emu.http.request(
            method,
            f"{self.emu.url}/v1/sprites/box/fs/{route}",
            params=params,
            json=json,
            data=data,
            headers=self.emu.auth,
        ) as resp:
            raw = await resp.read()
            assert SECRET not in raw
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, raw

    async def read(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", "read", params={"path": path, "workingDir": HOME})

    async def write(self, path: str, data: bytes = b"pwned") -> tuple[int, Any]:
        return await self.call("PUT", "write", params={"path": path, "workingDir": HOME}, data=data)


def _fingerprint(paths: list[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for top in paths:
        if top.is_file():
            st = top.stat()
            out[str(top)] = (top.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                content = p.read_bytes() if p.is_file() and not p.is_symlink() else None
                out[str(p)] = (content, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


@pytest.fixture
async def box(emu: RunningEmulator, tmp_path: Path) -> AsyncIterator[Box]:
    emu.add_sprite("box")
    emu.add_sprite("sibling")
    root = emu.state.sprite_root("box")
    sibling_home = emu.state.sprite_root("sibling") / "home" / "sprite"
    (sibling_home / "secret.txt").write_bytes(SECRET)
    sentinel = tmp_path / "host-secret.txt"
    sentinel.write_bytes(SECRET)
    sentinel.chmod(0o600)
    home = root / "home" / "sprite"
    (home / "passwd").symlink_to("/etc/passwd")
    (home / "hostlink").symlink_to(sentinel)
    (home / "uplink").symlink_to("../../../../../host-secret.txt")
    (home / "dirup").symlink_to("../../..")
    (home / "sib").symlink_to(sibling_home)
    (home / "sibrel").symlink_to("../../../../sibling/root/home/sprite")
    (home / "loop1").symlink_to("loop2")
    (home / "loop2").symlink_to("loop1")
    (home / "mine.txt").write_bytes(b"mine")
    watched = [sentinel, emu.state.sprite_root("sibling"), Path("/etc/passwd")]
    before = _fingerprint(watched)
    yield Box(emu, root, sentinel, sibling_home)
    assert _fingerprint(watched) == before, "a file outside the sprite's root changed"


@pytest.mark.parametrize(
    "path",
    [
        "../../../../../../etc/passwd",
        "/../../../etc/passwd",
        "/etc/passwd",
        "passwd",
        "hostlink",
        "sib/secret.txt",
        "/home/sprite/./../../etc/passwd",
    ],
)
async def test_reads_cannot_reach_host_files(box: Box, path: str) -> None:
    status, body = await box.read(path)
    assert status == 404
    assert body["code"] == "ENOENT"


@pytest.mark.parametrize("path", ["uplink", "dirup/etc/passwd", "sibrel/secret.txt"])
async def test_symlinks_leading_outside_are_refused(box: Box, path: str) -> None:
    status, body = await box.read(path)
    assert (status, body["code"]) == (403, "EACCES")
    status, body = await box.write(path)
    assert (status, body["code"]) == (403, "EACCES")
    status, body = await box.call("GET", "list", params={"path": path, "workingDir": HOME})
    assert (status, body["code"]) == (403, "EACCES")


async def test_symlink_loops_fail_cleanly(box: Box) -> None:
    status, body = await box.read("loop1")
    assert (status, body["code"]) == (400, "ELOOP")
    status, body = await box.write("loop1/x")
    assert (status, body["code"]) == (400, "ELOOP")


async def test_absolute_links_name_the_sprites_own_files(box: Box) -> None:
    (box.root / "etc").mkdir()
    (box.root / "etc" / "passwd").write_bytes(b"sprite's passwd")
    assert await box.read("passwd") == (200, b"sprite's passwd")
    # Writing through the link changes the sprite's file, not the host's.
    status, _ = await box.write("passwd", b"rewritten")
    assert status == 200
    assert (box.root / "etc" / "passwd").read_bytes() == b"rewritten"


async def test_writes_with_escaping_paths_land_inside(box: Box) -> None:
    status, body = await box.write("../../../../host-secret.txt")
    assert (status, body["path"]) == (200, "/host-secret.txt")
    assert (box.root / "host-secret.txt").read_bytes() == b"pwned"
    status, _ = await box.write("hostlink")
    assert status == 200
    inside = box.root / str(box.sentinel).lstrip("/")
    assert inside.read_bytes() == b"pwned"
    status, _ = await box.write("sib/secret.txt")
    assert status == 200
    assert (box.root / str(box.sibling_home / "secret.txt").lstrip("/")).exists()


async def test_listing_never_shows_outside(box: Box) -> None:
    status, body = await box.call("GET", "list", params={"path": "/.."})
    assert status == 200
    assert {e["name"] for e in body["entries"]} == {"home", "tmp"}
    status, body = await box.call("GET", "list", params={"path": "sib", "workingDir": HOME})
    assert status == 404


async def test_delete_cannot_escape(box: Box) -> None:
    for path in ("dirup/tmp", "sibrel/secret.txt"):
        status, body = await box.call(
            "DELETE", "delete", params={"path": path, "workingDir": HOME, "recursive": "true"}
        )
        assert (status, body["code"]) == (403, "EACCES")
    status, body = await box.call(
        "DELETE", "delete", params={"path": "../../../..", "workingDir": HOME, "recursive": "true"}
    )
    assert (status, body["code"]) == (403, "EACCES")
    # A link pointing outside is itself inside: deleting removes only the link.
    status, _ = await box.call("DELETE", "delete", params={"path": "uplink", "workingDir": HOME})
    assert status == 200
    assert not (box.root / "home/sprite/uplink").is_symlink()
    status, _ = await box.call("DELETE", "delete", params={"path": HOME, "recursive": "true"})
    assert status == 200


async def test_chmod_and_chown_cannot_escape(box: Box) -> None:
    status, body = await box.call(
        "POST", "chmod", json={"path": "/home/sprite/uplink", "mode": "0777"}
    )
    assert (status, body["code"]) == (403, "EACCES")
    status, body = await box.call(
        "POST", "chmod", json={"path": "/home/sprite/hostlink", "mode": "0777"}
    )
    assert status == 404
    status, body = await box.call(
        "POST", "chmod", json={"path": HOME, "mode": "0777", "recursive": True}
    )
    assert status == 200
    assert "/home/sprite/mine.txt" in [a["path"] for a in body["affected"]]
    assert all(not a["path"].endswith(("link", "sib", "sibrel", "dirup")) for a in body["affected"])
    if os.geteuid() == 0:
        status, body = await box.call(
            "POST", "chown", json={"path": HOME, "uid": 4321, "gid": 4321, "recursive": True}
        )
        assert status == 200
        assert (box.root / "home/sprite/hostlink").lstat().st_uid == 4321
    status, body = await box.call(
        "POST", "chown", json={"path": "dirup", "workingDir": HOME, "uid": 1}
    )
    assert (status, body["code"]) == (403, "EACCES")


async def test_copy_and_rename_cannot_escape(box: Box) -> None:
    for route in ("copy", "rename"):
        status, body = await box.call(
            "POST", route, json={"source": "uplink", "dest": "/tmp/x", "workingDir": HOME}
        )
        if route == "copy":
            assert (status, body["code"]) == (403, "EACCES")
        status, body = await box.call(
            "POST",
            route,
            json={"source": "/home/sprite/mine.txt", "dest": "dirup/stolen", "workingDir": HOME},
        )
        assert (status, body["code"]) == (403, "EACCES")
    # Renaming moved the outward link itself, which is harmless.
    assert (box.root / "tmp/x").is_symlink()
    status, body = await box.call(
        "POST",
        "copy",
        json={"source": HOME, "dest": "/tmp/copy", "recursive": True},
    )
    assert status == 200
    copy = box.root / "tmp/copy"
    assert (copy / "hostlink").is_symlink()
    assert (copy / "sib").is_symlink()
    for dirpath, _, filenames in os.walk(copy):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                assert SECRET not in p.read_bytes()
    # Copying into an existing link that points outside replaces the link.
    (box.root / "tmp/copy2").mkdir()
    (box.root / "tmp/copy2/mine.txt").symlink_to(box.sentinel)
    status, _ = await box.call(
        "POST", "copy", json={"source": HOME, "dest": "/tmp/copy2", "recursive": True}
    )
    assert status == 200
    assert (box.root / "tmp/copy2/mine.txt").read_bytes() == b"mine"
