"""The emulator under hostile input: escapes, bad names, oversized requests, bad frames, bad tokens.

Every filesystem route is tried with every kind of escape (lexical ``..``,
percent-encoded ``..``, host-absolute paths, symlinks that lead outside, in
``path``, ``workingDir``, ``source`` and ``dest``), and after each request a
fingerprint of everything outside the sprite's root (a sentinel directory, a
sibling sprite, the sprite's own non-root state) must be unchanged. Statuses
follow the emulator's documented rules (``_paths``/``_fs`` docstrings and
section 7.11): paths are resolved as if chrooted, so lexical escapes land
inside the root; a symlink whose target climbs above the root is refused with
``403 EACCES``; a NUL byte is ``400 EINVAL``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from sprites_async import SpritesClient
from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator import _exec as emu_exec
from tests._emulator import RunningEmulator, serve

TOKEN = "hostile-org/7/tokid/hostilesecret0123456789"
HOME = "/home/sprite"
SECRET = b"outside the sprite: never touched"
MAX_BODY = 1 << 20


@dataclass
class Box:
    emu: RunningEmulator
    root: Path
    outside: Path
    """The sentinel directory, next to the emulator's state (outside every root)."""
    watched: list[Path]

    def url(self, route: str) -> str:
        return f"{self.emu.url}/v1/sprites/box/fs/{route}"

    async def call(
        self,
        method: str,
        route: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        raw_query: str | None = None,
    ) -> tuple[int, Any]:
        target: str | URL = self.url(route)
        if raw_query is not None:
            target = URL(self.url(route) + "?" + raw_query, encoded=True)
        data = b"pwned" if route == "write" else None
        async with self.emu.http.request(
            method, target, params=params, json=json, data=data, headers=self.emu.auth
        ) as resp:
            raw = await resp.read()
            assert SECRET not in raw, "a file outside the sprite was read"
            body = await resp.json() if resp.content_type == "application/json" else raw
            return resp.status, body


def fingerprint(paths: list[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for top in paths:
        st = top.lstat()
        out[str(top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                content = p.read_bytes() if p.is_file() and not p.is_symlink() else None
                out[str(p)] = (content, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(
        token=TOKEN,
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        inline_exec=True,
        sandbox="none",
        max_body=MAX_BODY,
        warm_after=30.0,
        cold_after=60.0,
    )


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(config(tmp_path)) as running:
        yield running


@pytest.fixture
async def box(emu: RunningEmulator, tmp_path: Path) -> AsyncIterator[Box]:
    emu.add_sprite("box")
    emu.add_sprite("sibling")
    root = emu.state.sprite_root("box")
    home = root / "home" / "sprite"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "sub").mkdir()
    (outside / "sub" / "deep.txt").write_bytes(SECRET)
    (emu.state.sprite_root("sibling") / "home" / "sprite" / "secret.txt").write_bytes(SECRET)
    (home / "mine.txt").write_bytes(b"mine")
    # Links inside the sprite that, followed on the host, would leave it.
    (home / "out_rel").symlink_to(os.path.relpath(outside, home))
    (home / "out_rel_file").symlink_to(os.path.relpath(outside / "secret.txt", home))
    (home / "out_abs").symlink_to(outside)
    (home / "dirup").symlink_to("../../..")
    watched = [
        outside,
        emu.state.sprite_dir("sibling"),
        *[p for p in emu.state.sprite_dir("box").iterdir() if p.name != "root"],
    ]
    b = Box(emu, root, outside, watched)
    before = fingerprint(watched)
    yield b
    assert fingerprint(watched) == before, "something outside the sprite's root changed"


# ----------------------------------------------------------- (a) path escapes


def _escapes(box: Box) -> dict[str, tuple[str, str]]:
    """Escape kind -> (path, workingDir)."""
    home = box.root / "home" / "sprite"
    rel = os.path.relpath(box.outside / "secret.txt", home)
    return {
        "dotdot": (rel, HOME),
        "dotdot-absolute": ("/../../../../../../../.." + str(box.outside / "secret.txt"), "/"),
        "host-absolute": (str(box.outside / "secret.txt"), HOME),
        "workingdir-dotdot": ("secret.txt", os.path.relpath(box.outside, home)),
        "workingdir-host": ("secret.txt", str(box.outside)),
        "sibling": ("../../../../sibling/root/home/sprite/secret.txt", HOME),
        "abs-link": ("out_abs/secret.txt", HOME),
    }


REFUSED = {
    # Through a link whose target climbs above the sprite's "/": 403 EACCES.
    "link-dir": ("out_rel/secret.txt", HOME),
    "link-up": ("dirup/x", HOME),
    "workingdir-link": ("secret.txt", f"{HOME}/out_rel"),
}

FS_CALLS = ["read", "write", "list", "delete", "rename-src", "rename-dst", "copy-src",
            "copy-dst", "chmod", "chown"]  # fmt: skip


async def fs_call(box: Box, call: str, path: str, working_dir: str) -> tuple[int, Any]:
    q = {"path": path, "workingDir": working_dir}
    if call == "read":
        return await box.call("GET", "read", params=q)
    if call == "write":
        return await box.call("PUT", "write", params=q)
    if call == "list":
        return await box.call("GET", "list", params=q)
    if call == "delete":
        return await box.call("DELETE", "delete", params={**q, "recursive": "true"})
    if call in ("rename-src", "rename-dst", "copy-src", "copy-dst"):
        route, side = call.split("-")
        ok = "/home/sprite/mine.txt" if side == "dst" else "/tmp/new"
        src, dst = (path, ok) if side == "src" else (ok, path)
        body = {"source": src, "dest": dst, "workingDir": working_dir, "recursive": True}
        status, reply = await box.call("POST", route, json=body)
        if status == 200 and route == "rename":
            # Put it back so that the next call starts from the same tree.
            await box.call(
                "POST", "rename", json={"source": reply["dest"], "dest": reply["source"]}
            )
        return status, reply
    if call == "chmod":
        return await box.call("POST", "chmod", json={**q, "mode": "0777", "recursive": True})
    assert call == "chown"
    return await box.call("POST", "chown", json={**q, "uid": os.getuid(), "gid": os.getgid()})


async def test_lexical_and_absolute_escapes_stay_inside(box: Box) -> None:
    # A write through a host-absolute path lands in the sprite, not on the host.
    host_path = str(box.outside / "secret.txt")
    assert await fs_call(box, "write", host_path, HOME) == (
        200,
        {"path": host_path, "size": 5, "mode": "0644"},
    )
    assert (box.root / host_path.lstrip("/")).read_bytes() == b"pwned"
    tried = 0
    for call in FS_CALLS:
        for kind, (path, wd) in _escapes(box).items():
            status, body = await fs_call(box, call, path, wd)
            tried += 1
            # Resolved inside the root: missing there (404), or done there (200).
            assert status in (200, 404), (call, kind, status, body)
            if status == 404:
                assert body["code"] == "ENOENT", (call, kind, body)
    assert tried == len(FS_CALLS) * 7


async def test_symlinks_leading_outside_are_refused(box: Box) -> None:
    for call in FS_CALLS:
        for kind, (path, wd) in REFUSED.items():
            status, body = await fs_call(box, call, path, wd)
            assert (status, body["code"]) == (403, "EACCES"), (call, kind, body)
    # A final component that is an outward link: followed by read/write/list/
    # copy/chmod/chown (refused), taken as the link itself by delete/rename.
    for call in ("read", "write", "list", "copy-src", "chmod", "chown"):
        status, body = await fs_call(box, call, "out_rel_file", HOME)
        assert (status, body["code"]) == (403, "EACCES"), (call, body)


async def test_percent_encoded_and_nul_paths(box: Box) -> None:
    rel = os.path.relpath(box.outside / "secret.txt", box.root / "home" / "sprite")
    encoded = rel.replace(".", "%2e").replace("/", "%2f")
    for route, method in (("read", "GET"), ("list", "GET"), ("write", "PUT")):
        status, body = await box.call(
            method, route, raw_query=f"path={encoded}&workingDir=%2fhome%2fsprite"
        )
        assert status in (200, 404), (route, body)
        status, body = await box.call(method, route, raw_query="path=a%00b&workingDir=%2f")
        assert (status, body["code"]) == (400, "EINVAL"), route
    for route in ("chmod", "rename", "copy"):
        doc = {"path": "a\x00b", "source": "a\x00b", "dest": "x", "mode": "0644"}
        status, body = await box.call("POST", route, json=doc)
        assert (status, body["code"]) == (400, "EINVAL"), route


async def test_sdk_refuses_bad_input_before_the_network() -> None:
    # Nothing listens on port 9: anything sent would be a connection error.
    async with SpritesClient(TOKEN, base_url="http://127.0.0.1:9") as client:
        for bad in ("..", ".", "", "a/b", "a\x00b", "tab\there"):
            with pytest.raises(ValueError):
                client.sprite(bad)
            with pytest.raises(ValueError):
                await client.sprites.get(bad)
            with pytest.raises(ValueError):
                await client.sprites.delete(bad)
        # Names outside the create rule stay reachable: they are only encoded.
        assert client.sprite("UPPER_%2e").path == "/v1/sprites/UPPER_%252e"
        with pytest.raises(ValueError):
            await client.sprites.create("UPPER")
        sprite = client.sprite("box")
        fs = sprite.fs()
        for bad in ("a\x00b", ""):
            with pytest.raises(ValueError):
                await (fs / bad).read_bytes()
        for bad in ("", "v1\x00"):
            with pytest.raises(ValueError):
                await sprite.checkpoints.get(bad)
        with pytest.raises(ValueError):
            await sprite.services.get("../web")


# ------------------------------------------------------------ (b) sprite names


BAD_NAMES = ["..", "%2e%2e", "%2E%2E", "UPPER", "a" * 64, "%C3%BCn%C3%AF", "a%20b", "-lead",
             "a%2fb", "a_b", "%00"]  # fmt: skip


def _routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method != "HEAD":
            out.append((route.method, template))
    return out


async def test_invalid_sprite_names_on_every_route(box: Box, tmp_path: Path) -> None:
    app = create_app(config(tmp_path / "other"))
    routes = [(m, t) for m, t in _routes(app) if "{name}" in t]
    assert len(routes) >= 30
    for method, template in routes:
        for bad in BAD_NAMES:
            path = template.replace("{name}", bad)
            path = re.sub(r"\{\w+\}", "x1", path)
            url = URL(box.emu.url + path, encoded=True)
            async with box.emu.http.request(method, url, headers=box.emu.auth) as resp:
                await resp.read()
                assert 400 <= resp.status < 500, (method, path, resp.status)
    # Creating one is refused with the recorded body.
    for bad in ["", "..", "UPPER", "a" * 64, "ünï", "a b", "-lead", "a/b", None, 7]:
        status, body = await box.emu.api("POST", "/v1/sprites", json={"name": bad})
        assert (status, body) == (400, {"errors": ["invalid sprite name format"]}), bad
    assert sorted(box.emu.state.sprites) == ["box", "sibling"]


# ------------------------------------------------- (c) oversized requests


async def _healthy(emu: RunningEmulator) -> None:
    status, body = await emu.api("GET", "/v1/sprites/box/fs/read?path=mine.txt&workingDir=" + HOME)
    assert (status, body) == (200, "mine")


async def test_oversized_bodies_are_refused(box: Box) -> None:
    big = b'{"name":"' + b"a" * (MAX_BODY + 10) + b'"}'
    json_routes = [
        ("POST", "/v1/sprites"),
        ("PUT", "/v1/sprites/box"),
        ("POST", "/v1/sprites/box/fs/rename"),
        ("POST", "/v1/sprites/box/fs/chmod"),
        ("DELETE", "/v1/sprites/box/fs/delete"),
        ("POST", "/v1/sprites/box/policy/network"),
        ("PUT", "/v1/sprites/box/services/web"),
        ("POST", "/v1/sprites/box/checkpoint"),
    ]
    deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    for method, path in json_routes:
        for body in (big, deep):
            async with box.emu.http.request(
                method,
                box.emu.url + path,
                data=io.BytesIO(body),
                headers={**box.emu.auth, "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                assert resp.status == 400, (method, path, len(body), resp.status)
    # A file write beyond max_body: refused, and nothing is left behind.
    status, body = await box.emu.api(
        "PUT",
        "/v1/sprites/box/fs/write?path=big.bin&workingDir=" + HOME,
        data=io.BytesIO(b"x" * (MAX_BODY + 1)),
    )
    assert (status, body["code"]) == (400, "EINVAL")
    assert not (box.root / "home/sprite/big.bin").exists()
    assert not [p for p in (box.root / "home/sprite").iterdir() if p.name.startswith(".sprite-")]
    await _healthy(box.emu)


async def test_oversized_headers_and_urls_are_refused(box: Box) -> None:
    for headers, url in (
        ({**box.emu.auth, "X-Big": "a" * 20000}, box.emu.url + "/v1/sprites"),
        ({"Authorization": "Bearer " + "a" * 20000}, box.emu.url + "/v1/sprites"),
        (box.emu.auth, box.emu.url + "/v1/sprites?prefix=" + "a" * 20000),
        ({**box.emu.auth, **{f"X-H{i}": "v" for i in range(200)}}, box.emu.url + "/v1/sprites"),
    ):
        async with box.emu.http.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status in (400, 413, 414, 431), resp.status
    await _healthy(box.emu)


# --------------------------------------------------- (d) malformed WebSocket frames


async def recv(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 10)


def _ws_url(emu: RunningEmulator, path: str) -> str:
    return emu.url.replace("http://", "ws://") + path


async def _run_cat(ws: aiohttp.ClientWebSocketResponse, data: bytes) -> tuple[bytes, int | None]:
    await ws.send_bytes(b"\x00" + data)
    await ws.send_bytes(b"\x04")
    out, code = b"", None
    while code is None:
        msg = await recv(ws)
        if msg.type != aiohttp.WSMsgType.TEXT and msg.type != aiohttp.WSMsgType.BINARY:
            break
        if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
            out += msg.data[1:]
        elif msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x03":
            code = msg.data[1]
    return out, code


GARBAGE_TEXT = [
    "not json",
    "",
    "[1,2,3]",
    "null",
    '{"type":"resize","cols":"wide","rows":-1}',
    '{"type":"resize","cols":99999999999999999999,"rows":1}',
    '{"type":"signal","signal":{"x":1}}',
    '{"type":"signal","signal":"NOPE"}',
    '{"type":"brand_new"}',
    "control:{nope",
    '{"a":' + "[" * 5000 + "]" * 5000 + "}",
    "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
]
GARBAGE_BINARY = [b"", b"\x09abc", b"\xff", b"\x05", b"\x03\x07", b"\x01stdout-from-client"]


async def test_exec_socket_survives_malformed_frames(box: Box, monkeypatch: Any) -> None:
    url = _ws_url(box.emu, "/v1/sprites/box/exec?cmd=cat&path=cat&stdin=true")
    async with box.emu.http.ws_connect(url, headers=box.emu.auth) as ws:
        for text in GARBAGE_TEXT:
            await ws.send_str(text)
        for frame in GARBAGE_BINARY[:-2]:  # 03/01 from a client would be stdin data
            await ws.send_bytes(frame)
        out, code = await _run_cat(ws, b"still alive\n")
    # Unknown ids and empty frames are ignored (lenient stdin, section 3.7):
    # only "\x09abc"-style raw frames may reach stdin, the text never does.
    assert out.endswith(b"still alive\n")
    assert b"not json" not in out
    assert code == 0
    # A frame beyond the socket's message limit closes that socket (1009) only.
    monkeypatch.setattr(emu_exec, "WS_MAX_MESSAGE", 64 * 1024)
    async with box.emu.http.ws_connect(url, headers=box.emu.auth) as ws:
        await ws.send_bytes(b"\x00" + b"x" * (256 * 1024))
        msg = await recv(ws)
        while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = await recv(ws)
        # aiohttp drops the connection (1006) or closes with 1009 "message too big".
        assert ws.closed and ws.close_code in (1006, 1009)
    monkeypatch.undo()
    async with box.emu.http.ws_connect(url, headers=box.emu.auth) as ws:
        assert await _run_cat(ws, b"next client\n") == (b"next client\n", 0)
    await _healthy(box.emu)


async def _control_reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        msg = await recv(ws)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        if msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith("control:"):
            reply: dict[str, Any] = json.loads(msg.data[len("control:") :])
            if reply["type"] != "op.ack":
                return reply


async def test_control_socket_survives_malformed_frames(box: Box) -> None:
    url = _ws_url(box.emu, "/v1/sprites/box/control")
    async with box.emu.http.ws_connect(url, headers=box.emu.auth) as ws:
        # Binary or unprefixed text while idle: op.error op.not_active (section 5.7).
        for frame in GARBAGE_BINARY:
            await ws.send_bytes(frame)
            reply = await _control_reply(ws)
            assert (reply["type"], reply["args"]["code"]) == ("op.error", "op.not_active")
        for text in ["not json", "[1]", '{"type":"brand_new"}']:
            await ws.send_str(text)
            reply = await _control_reply(ws)
            assert (reply["type"], reply["args"]["code"]) == ("op.error", "op.not_active")
        # Unreadable or unknown envelopes are ignored; an unknown op is op.not_found.
        for text in [
            "control:",
            "control:{nope",
            "control:[1,2]",
            'control:{"type":"brand_new"}',
            'control:{"type":"op.start","op":' + "[" * 5000 + "]" * 5000 + "}",
        ]:
            await ws.send_str(text)
        await ws.send_str('control:{"type":"op.start","args":"not an object","op":7}')
        reply = await _control_reply(ws)
        assert (reply["type"], reply["args"]["code"]) == ("op.error", "op.not_found")
        await ws.send_str('control:{"type":"op.start","op":"frobnicate"}')
        reply = await _control_reply(ws)
        assert (reply["type"], reply["args"]["code"]) == ("op.error", "op.not_found")
        # The socket still runs commands.
        await ws.send_str(
            'control:{"type":"op.start","op":"exec","args":{"cmd":["echo","ok"],"stdin":"false"}}'
        )
        reply = await _control_reply(ws)
        assert reply["type"] == "op.complete" and reply["args"]["ok"] is True, reply
        assert reply["args"]["exitCode"] == 0
    async with box.emu.http.ws_connect(url, headers=box.emu.auth) as ws:
        await ws.send_str(
            'control:{"type":"op.start","op":"exec","args":{"cmd":["exit","3"],"stdin":"false"}}'
        )
        reply = await _control_reply(ws)
        assert (reply["type"], reply["args"]["exitCode"]) == ("op.complete", 3)
    await _healthy(box.emu)


# ------------------------------------------------------ (e) tokens on every route


PUBLIC = {("GET", "/_emulator/health")}
BAD_AUTH: dict[str, dict[str, str]] = {
    "missing": {},
    "wrong": {"Authorization": "Bearer hostile-org/7/tokid/wrongsecret0123456789"},
    "prefix": {"Authorization": "Bearer " + TOKEN[:-1]},
    "longer": {"Authorization": "Bearer " + TOKEN + "0"},
    "no-scheme": {"Authorization": TOKEN},
    "basic": {"Authorization": "Basic " + TOKEN},
    "empty-bearer": {"Authorization": "Bearer "},
    "bearer-only": {"Authorization": "Bearer"},
    "token-header": {"X-Token": TOKEN},
    "query": {},  # the token in the query string is no credential either
}


async def test_every_route_needs_the_token(box: Box, tmp_path: Path) -> None:
    app = create_app(config(tmp_path / "other"))
    routes = [(m, t) for m, t in _routes(app) if (m, t) not in PUBLIC]
    assert len(routes) >= 40
    checked = 0
    for method, template in routes:
        path = template.replace("{name}", "box")
        path = re.sub(r"\{\w+\}", "x1", path)
        for kind, headers in BAD_AUTH.items():
            url = box.emu.url + path + (f"?token={TOKEN}" if kind == "query" else "")
            # Upgrade requests too: refused before any upgrade (section 13.2).
            for upgrade in (False, True) if method == "GET" else (False,):
                extra = (
                    {
                        "Upgrade": "websocket",
                        "Connection": "Upgrade",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version": "13",
                    }
                    if upgrade
                    else {}
                )
                async with box.emu.http.request(
                    method, url, headers={**headers, **extra}, data=b"{}"
                ) as resp:
                    body = await resp.json()
                    assert (resp.status, body) == (401, {"error": "authentication failed"}), (
                        method,
                        path,
                        kind,
                    )
                checked += 1
    assert checked >= len(routes) * len(BAD_AUTH)
    # The public route needs nothing.
    async with box.emu.http.get(box.emu.url + "/_emulator/health") as resp:
        assert resp.status == 200
    assert sorted(box.emu.state.sprites) == ["box", "sibling"]
