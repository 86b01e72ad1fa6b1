"""Checkpoint routes over real loopback HTTP: NDJSON streams, snapshots, restore."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sprites_async.emulator import EmulatorConfig, _checkpoints, create_app
from sprites_async.emulator._checkpoints import store_for
from sprites_async.emulator._state import STATE_KEY
from tests._emulator import RunningEmulator

NAME = "cpbox"
NANO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
SECOND_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def base(emu: RunningEmulator, name: str = NAME) -> str:
    return f"{emu.url}/v1/sprites/{name}"


def parse_ndjson(raw: bytes) -> list[dict[str, Any]]:
    """Every line is one JSON event with an RFC 3339 nanosecond ``time``."""
    assert raw.endswith(b"\n")
    events = [json.loads(line) for line in raw.decode().split("\n")[:-1]]
    for event in events:
        assert NANO_TIME.match(event.pop("time")), event
    return events


async def stream(emu: RunningEmulator, path: str, **kwargs: Any) -> list[dict[str, Any]]:
    async with emu.http.post(base(emu) + path, headers=emu.auth, **kwargs) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Cache-Control"] == "no-cache"
        return parse_ndjson(await resp.read())


async def checkpoint(emu: RunningEmulator, comment: str | None = None) -> list[dict[str, Any]]:
    return await stream(emu, "/checkpoint", json={} if comment is None else {"comment": comment})


async def get_json(emu: RunningEmulator, path: str, name: str = NAME) -> tuple[int, Any]:
    async with emu.http.get(base(emu, name) + path, headers=emu.auth) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def created_events(cp_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "info", "data": "Creating checkpoint..."},
        {"type": "info", "data": "Checkpoint created successfully"},
        {"type": "info", "data": "\nCheckpoint Details:"},
        {"type": "info", "data": f"  ID: {cp_id}"},
        {"type": "info", "data": "<created>"},
        {"type": "info", "data": f"  Path: checkpoints/{cp_id}"},
        {"type": "info", "data": "\nTo restore this checkpoint:"},
        {"type": "info", "data": f"  sprite checkpoint restore {cp_id}"},
        {"type": "info", "data": f"  curl -X POST /checkpoints/{cp_id}/restore"},
        {"type": "complete", "data": f"Checkpoint {cp_id} created successfully"},
    ]


@pytest.fixture
def home(emu: RunningEmulator) -> Path:
    emu.add_sprite(NAME)
    return emu.state.sprite_root(NAME) / "home" / "sprite"


async def test_fresh_sprite_lists_current_and_v0(emu: RunningEmulator, home: Path) -> None:
    rec = emu.state.sprites[NAME]
    status, body = await get_json(emu, "/checkpoints")
    assert status == 200
    assert [cp["id"] for cp in body] == ["Current", "v0"]
    assert body[0]["is_auto"] is False
    assert SECOND_TIME.match(body[0]["create_time"])
    assert body[1] == {
        "id": "v0",
        "create_time": rec.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "is_auto": False,
    }


async def test_list_is_a_bare_array_ending_with_newline(emu: RunningEmulator, home: Path) -> None:
    async with emu.http.get(base(emu) + "/checkpoints", headers=emu.auth) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        raw = await resp.read()
    assert raw.startswith(b"[")
    assert raw.endswith(b"]\n")


async def test_create_streams_the_recorded_events(emu: RunningEmulator, home: Path) -> None:
    events = await checkpoint(emu, "first")
    created = events[4].pop("data")
    assert re.match(r"^  Created: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", created)
    events[4]["data"] = "<created>"
    assert events == created_events("v1")
    events = await checkpoint(emu)
    assert events[-1] == {"type": "complete", "data": "Checkpoint v2 created successfully"}
    status, body = await get_json(emu, "/checkpoints")
    assert status == 200
    assert [cp["id"] for cp in body] == ["Current", "v2", "v1", "v0"]
    assert body[2]["comment"] == "first"
    assert "comment" not in body[1]


async def test_create_without_body_and_bad_bodies(emu: RunningEmulator, home: Path) -> None:
    events = await stream(emu, "/checkpoint")
    assert events[-1]["data"] == "Checkpoint v1 created successfully"
    for bad in (b"{nope", b"[1]", b'{"comment": 5}'):
        async with emu.http.post(base(emu) + "/checkpoint", data=bad, headers=emu.auth) as resp:
            assert resp.status == 400
            assert await resp.text() == "invalid request body\n"


async def test_get_returns_lineage(emu: RunningEmulator, home: Path) -> None:
    await checkpoint(emu, "one")
    await checkpoint(emu, "two")
    status, body = await get_json(emu, "/checkpoints/v2")
    assert status == 200
    assert body == {
        "id": "v2",
        "create_time": body["create_time"],
        "comment": "two",
        "is_auto": False,
        "source_id": "v1",
        "history": ["v0", "v1"],
    }
    assert SECOND_TIME.match(body["create_time"])
    status, body = await get_json(emu, "/checkpoints/v0")
    assert body == {"id": "v0", "create_time": body["create_time"], "is_auto": False}


async def test_get_unknown_checkpoint_is_404_text(emu: RunningEmulator, home: Path) -> None:
    assert await get_json(emu, "/checkpoints/nonexistent") == (404, "checkpoint not found\n")
    assert await get_json(emu, "/checkpoints/Current") == (404, "checkpoint not found\n")


async def test_checkpoint_modify_restore_brings_files_back(
    emu: RunningEmulator, home: Path
) -> None:
    (home / "keep.txt").write_text("original")
    (home / "gone.txt").write_text("will be deleted")
    (home / "dir").mkdir()
    (home / "dir" / "nested.bin").write_bytes(b"\x00\x01")
    (home / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(home / "script.sh", 0o751)
    (home / "link").symlink_to("keep.txt")
    await checkpoint(emu, "baseline")

    (home / "keep.txt").write_text("modified")
    (home / "gone.txt").unlink()
    (home / "new.txt").write_text("created after")
    (home / "dir" / "nested.bin").write_bytes(b"changed")
    os.chmod(home / "script.sh", 0o600)
    (home / "link").unlink()

    events = await stream(emu, "/checkpoints/v1/restore")
    assert events == [
        {"type": "info", "data": "Restoring from checkpoint v1..."},
        {"type": "info", "data": "Container components started successfully"},
        {"type": "complete", "data": "Restore from v1 complete"},
    ]
    assert (home / "keep.txt").read_text() == "original"
    assert (home / "gone.txt").read_text() == "will be deleted"
    assert not (home / "new.txt").exists()
    assert (home / "dir" / "nested.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((home / "script.sh").stat().st_mode) == 0o751
    assert os.readlink(home / "link") == "keep.txt"
    # The snapshot is a real copy: writing after the restore leaves it intact.
    (home / "keep.txt").write_text("again")
    await stream(emu, "/checkpoints/v1/restore")
    assert (home / "keep.txt").read_text() == "original"


async def test_restore_v0_empties_the_sprite(emu: RunningEmulator, home: Path) -> None:
    (home / "a").write_text("a")
    (emu.state.sprite_root(NAME) / "opt").mkdir()
    events = await stream(emu, "/checkpoints/v0/restore")
    assert events[-1] == {"type": "complete", "data": "Restore from v0 complete"}
    root = emu.state.sprite_root(NAME)
    assert sorted(os.listdir(root)) == ["home", "tmp"]
    assert os.listdir(home) == []


async def test_snapshots_do_not_share_data_with_the_sprite(
    emu: RunningEmulator, home: Path
) -> None:
    (home / "f").write_text("v1 content")
    await checkpoint(emu)
    (home / "f").write_text("later")
    snap = store_for(emu.state).snapshot_dir(NAME, "v1") / "home" / "sprite" / "f"
    assert snap.read_text() == "v1 content"
    assert snap.stat().st_ino != (home / "f").stat().st_ino


async def test_restore_terminates_sessions_first(emu: RunningEmulator, home: Path) -> None:
    seen: list[tuple[str, bool]] = []
    real = emu.state.sessions

    class Recorder:
        async def terminate_all(self, sprite: str) -> None:
            # The root must still be the pre-restore one when sessions end.
            seen.append((sprite, (home / "marker").exists()))
            await real.terminate_all(sprite)

        async def aclose(self) -> None:
            await real.aclose()

    (home / "marker").write_text("x")
    emu.state.sessions = Recorder()
    try:
        await stream(emu, "/checkpoints/v0/restore")
    finally:
        emu.state.sessions = real
    assert seen == [(NAME, True)]
    assert not (home / "marker").exists()


async def test_restore_unknown_checkpoint_is_200_with_error_event(
    emu: RunningEmulator, home: Path
) -> None:
    (home / "untouched").write_text("x")
    events = await stream(emu, "/checkpoints/nonexistent/restore")
    assert events == [
        {"type": "info", "data": "Restoring from checkpoint nonexistent..."},
        {
            "type": "error",
            "error": "Failed to restore checkpoint: failed to restore checkpoint: checkpoint"
            " not found: checkpoint with path checkpoints/nonexistent not found",
        },
    ]
    assert (home / "untouched").exists()


async def test_ndjson_odd_splits_still_form_lines(emu: RunningEmulator, home: Path) -> None:
    emu.state.faults.ndjson_chunk = 7
    pieces: list[bytes] = []
    async with emu.http.post(base(emu) + "/checkpoint", json={}, headers=emu.auth) as resp:
        async for piece in resp.content.iter_any():
            pieces.append(piece)
    # How the pieces arrive depends on TCP coalescing; the lines must parse anyway.
    events = parse_ndjson(b"".join(pieces))
    assert events[-1] == {"type": "complete", "data": "Checkpoint v1 created successfully"}


async def delete(emu: RunningEmulator, cp: str) -> tuple[int, str]:
    async with emu.http.delete(base(emu) + f"/checkpoints/{cp}", headers=emu.auth) as resp:
        return resp.status, await resp.text()


async def test_delete_rules(emu: RunningEmulator, home: Path) -> None:
    await checkpoint(emu)  # v1, now active
    await checkpoint(emu)  # v2, now active
    assert await delete(emu, "v2") == (409, "cannot delete active checkpoint\n")
    assert await delete(emu, "Current") == (409, "cannot delete active checkpoint\n")
    assert await delete(emu, "active") == (409, "cannot delete active checkpoint\n")
    assert await delete(emu, "v9") == (404, "checkpoint not found\n")
    assert await delete(emu, "v1") == (204, "")
    assert await get_json(emu, "/checkpoints/v1") == (404, "checkpoint not found\n")
    assert not store_for(emu.state).snapshot_dir(NAME, "v1").exists()
    await stream(emu, "/checkpoints/v0/restore")
    assert await delete(emu, "v0") == (409, "cannot delete active checkpoint\n")
    assert await delete(emu, "v2") == (204, "")
    # Ids are never reused.
    events = await checkpoint(emu)
    assert events[-1]["data"] == "Checkpoint v3 created successfully"
    status, body = await get_json(emu, "/checkpoints/v3")
    assert (status, body["source_id"], body["history"]) == (200, "v0", ["v0"])


async def test_include_auto_and_history_filter(emu: RunningEmulator, home: Path) -> None:
    await checkpoint(emu)  # v1 from v0
    auto = await store_for(emu.state).create(NAME, auto=True)
    assert auto.id.startswith("auto-")
    await checkpoint(emu)  # v2 from v1 (auto checkpoints do not move the active one)
    status, body = await get_json(emu, "/checkpoints")
    assert [cp["id"] for cp in body] == ["Current", "v2", "v1", "v0"]
    status, body = await get_json(emu, "/checkpoints?includeAuto=true")
    assert [cp["id"] for cp in body] == ["Current", "v2", auto.id, "v1", "v0"]
    assert body[2]["is_auto"] is True
    async with emu.http.get(
        base(emu) + "/checkpoints", params={"history": "v1"}, headers=emu.auth
    ) as resp:
        assert resp.content_type == "text/plain"
        assert await resp.text() == "v2\n"
    status, text = await get_json(emu, "/checkpoints?history=v0&includeAuto=true")
    assert text == f"v2\n{auto.id}\nv1\n"
    status, text = await get_json(emu, "/checkpoints?history=nothing")
    assert (status, text) == (200, "")


async def test_platform_dir_is_kept_across_restore(emu: RunningEmulator, home: Path) -> None:
    async with emu.http.post(
        base(emu) + "/policy/network",
        json={"rules": [{"domain": "example.com", "action": "allow"}]},
        headers=emu.auth,
    ) as resp:
        assert resp.status == 204
    policy = emu.state.sprite_root(NAME) / ".sprite" / "policy" / "network.json"
    assert policy.exists()
    await checkpoint(emu)
    assert not (store_for(emu.state).snapshot_dir(NAME, "v1") / ".sprite").exists()
    await stream(emu, "/checkpoints/v0/restore")
    assert json.loads(policy.read_text()) == {
        "rules": [{"domain": "example.com", "action": "allow"}]
    }


async def test_missing_sprite_is_404_json(emu: RunningEmulator) -> None:
    for method, path in (
        ("POST", "/checkpoint"),
        ("GET", "/checkpoints"),
        ("GET", "/checkpoints/v0"),
        ("POST", "/checkpoints/v0/restore"),
        ("DELETE", "/checkpoints/v0"),
    ):
        async with emu.http.request(
            method, f"{emu.url}/v1/sprites/ghost{path}", headers=emu.auth
        ) as resp:
            assert resp.status == 404, path
            assert await resp.json() == {"error": "sprite not found"}


async def test_deleted_sprite_name_reuse_starts_fresh(emu: RunningEmulator, home: Path) -> None:
    await checkpoint(emu, "old life")
    async with emu.http.delete(f"{emu.url}/v1/sprites/{NAME}", headers=emu.auth) as resp:
        assert resp.status == 204
    emu.add_sprite(NAME)
    status, body = await get_json(emu, "/checkpoints")
    assert status == 200
    assert [cp["id"] for cp in body] == ["Current", "v0"]


@pytest.fixture
async def config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(token="t/1/2/3", state_dir=tmp_path / "state", exit_linger=0.0)


async def _started(config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        try:
            yield RunningEmulator(
                url=str(server.make_url("")).rstrip("/"),
                token=config.token,
                state=app[STATE_KEY],
                http=http,
            )
        finally:
            await server.close()


async def test_checkpoints_survive_a_restart(config: EmulatorConfig) -> None:
    async for emu in _started(config):
        emu.add_sprite(NAME)
        home = emu.state.sprite_root(NAME) / "home" / "sprite"
        (home / "f").write_text("saved")
        await checkpoint(emu, "persisted")
        (home / "f").write_text("changed")
    async for emu in _started(config):
        assert NAME in emu.state.sprites
        status, body = await get_json(emu, "/checkpoints/v1")
        assert (status, body["comment"]) == (200, "persisted")
        await stream(emu, "/checkpoints/v1/restore")
        assert (emu.state.sprite_root(NAME) / "home/sprite/f").read_text() == "saved"
        events = await checkpoint(emu)
        assert events[-1]["data"] == "Checkpoint v2 created successfully"


async def test_interrupted_work_is_recovered_at_startup(config: EmulatorConfig) -> None:
    async for emu in _started(config):
        emu.add_sprite(NAME)
        await checkpoint(emu)
    sprite_dir = config.state_dir / "sprites" / NAME
    # A restore that died between its two renames, and a half-made checkpoint.
    os.rename(sprite_dir / "root", sprite_dir / "root.old")
    (sprite_dir / "root.restoring").mkdir()
    (sprite_dir / "checkpoints" / "v2.partial").mkdir()
    async for emu in _started(config):
        assert (sprite_dir / "root" / "home" / "sprite").is_dir()
        assert not (sprite_dir / "root.old").exists()
        assert not (sprite_dir / "root.restoring").exists()
        assert not (sprite_dir / "checkpoints" / "v2.partial").exists()
        events = await checkpoint(emu)
        assert events[-1]["data"] == "Checkpoint v2 created successfully"


async def test_concurrent_creates_get_distinct_ids(emu: RunningEmulator, home: Path) -> None:
    results = await asyncio.gather(*(checkpoint(emu, f"c{i}") for i in range(4)))
    ids = sorted(events[-1]["data"].split()[1] for events in results)
    assert ids == ["v1", "v2", "v3", "v4"]
    status, body = await get_json(emu, "/checkpoints")
    assert status == 200
    assert [cp["id"] for cp in body] == ["Current", "v4", "v3", "v2", "v1", "v0"]


async def test_failed_snapshot_is_an_error_event(
    emu: RunningEmulator, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(root: Path, dest: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_checkpoints, "_snapshot", broken)
    events = await checkpoint(emu)
    assert events == [
        {"type": "info", "data": "Creating checkpoint..."},
        {
            "type": "error",
            "error": "Failed to create checkpoint: [Errno 28] No space left on device",
        },
    ]
    monkeypatch.undo()
    status, body = await get_json(emu, "/checkpoints")
    assert status == 200
    assert [cp["id"] for cp in body] == ["Current", "v0"]
    events = await checkpoint(emu)
    assert events[-1]["data"] == "Checkpoint v1 created successfully"


async def test_failed_restore_is_an_error_event(
    emu: RunningEmulator, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await checkpoint(emu)

    def broken(root: Path, snapshot: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_checkpoints, "_replace_root", broken)
    events = await stream(emu, "/checkpoints/v0/restore")
    assert events == [
        {"type": "info", "data": "Restoring from checkpoint v0..."},
        {"type": "error", "error": "Failed to restore checkpoint: [Errno 5] Input/output error"},
    ]
    # Still on v1: v0 was never restored, so it may be deleted, v1 may not.
    assert await delete(emu, "v1") == (409, "cannot delete active checkpoint\n")
    assert await delete(emu, "v0") == (204, "")


async def test_restore_ends_a_live_exec_session(emu: RunningEmulator, home: Path) -> None:
    """Integration with the exec module: a running command does not survive a restore."""
    await checkpoint(emu)
    url = base(emu).replace("http://", "ws://", 1) + "/exec?cmd=sleep&cmd=30&stdin=false"
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        while (await ws.receive_json(timeout=10))["type"] != "session_info":
            pass  # "debug" messages may come first
        status, listed = await get_json(emu, "/exec")
        assert (status, listed["count"]) == (200, 1)
        events = await stream(emu, "/checkpoints/v1/restore")
        assert events[-1] == {"type": "complete", "data": "Restore from v1 complete"}
        # The socket ends (exit frame and/or close) instead of sleeping 30 s.
        while not ws.closed:
            msg = await ws.receive(timeout=10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
    status, listed = await get_json(emu, "/exec")
    assert (status, listed["count"]) == (200, 0)


@pytest.mark.parametrize("cp", ["..%2F..%2Fetc", "v1%2F..", "%2E%2E%2Fv1", "%00"])
async def test_path_like_checkpoint_ids_are_unknown(
    emu: RunningEmulator, home: Path, cp: str
) -> None:
    await checkpoint(emu)
    assert await get_json(emu, f"/checkpoints/{cp}") == (404, "checkpoint not found\n")
    assert await delete(emu, cp) == (404, "checkpoint not found\n")
    events = await stream(emu, f"/checkpoints/{cp}/restore")
    assert events[-1]["type"] == "error"
    assert sorted(os.listdir(store_for(emu.state).snapshot_dir(NAME, "v1").parent)) == [
        "v0",
        "v1",
    ]
    with pytest.raises(_checkpoints.CheckpointNotFound):
        store_for(emu.state).snapshot_dir(NAME, "../x")
