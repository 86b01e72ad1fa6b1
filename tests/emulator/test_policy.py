"""Network policy routes (``/policy/network``) over real loopback HTTP."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from sprites_async.emulator._policy import InvalidPolicy, validate
from tests._emulator import RunningEmulator

NAME = "polbox"

VALID = {
    "rules": [
        {"include": "defaults"},
        {"include": "defaults", "action": "deny"},
        {"domain": "api.github.com", "action": "allow"},
        {"domain": "*.npmjs.org", "action": "allow"},
        {"domain": "blocked.com", "action": "deny"},
        {"domain": "*", "action": "deny"},
        {"domain": "_dmarc.example.com.", "action": "allow"},
    ]
}


@pytest.fixture
def url(emu: RunningEmulator) -> str:
    emu.add_sprite(NAME)
    return f"{emu.url}/v1/sprites/{NAME}/policy/network"


async def post(emu: RunningEmulator, url: str, body: bytes) -> tuple[int, str]:
    async with emu.http.post(
        url, data=io.BytesIO(body), headers={**emu.auth, "Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.text()


async def get(emu: RunningEmulator, url: str) -> Any:
    async with emu.http.get(url, headers=emu.auth) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        return await resp.json()


async def test_default_policy_is_empty(emu: RunningEmulator, url: str) -> None:
    assert await get(emu, url) == {"rules": []}


async def test_set_then_get_and_file(emu: RunningEmulator, url: str) -> None:
    assert await post(emu, url, json.dumps(VALID).encode()) == (204, "")
    assert await get(emu, url) == VALID
    policy = emu.state.sprite_root(NAME) / ".sprite" / "policy" / "network.json"
    assert json.loads(policy.read_text()) == VALID
    # Full replacement, including back to no rules.
    assert await post(emu, url, b'{"rules": []}') == (204, "")
    assert await get(emu, url) == {"rules": []}
    assert json.loads(policy.read_text()) == {"rules": []}


INVALID: list[Any] = [
    {},
    {"rules": None},
    {"rules": {}},
    {"rules": [], "extra": 1},
    {"egress": {"policy": "allow-all"}},
    {"rules": ["example.com"]},
    {"rules": [{}]},
    {"rules": [{"domain": "example.com"}]},
    {"rules": [{"domain": "example.com", "action": "block"}]},
    {"rules": [{"domain": "example.com", "action": "allow", "note": "x"}]},
    {"rules": [{"domain": "example.com", "include": "defaults", "action": "allow"}]},
    {"rules": [{"include": "everything"}]},
    {"rules": [{"include": "defaults", "action": "maybe"}]},
    {"rules": [{"action": "allow"}]},
    {"rules": [{"domain": "", "action": "allow"}]},
    {"rules": [{"domain": "exa mple.com", "action": "allow"}]},
    {"rules": [{"domain": "*example.com", "action": "allow"}]},
    {"rules": [{"domain": "a.*.com", "action": "allow"}]},
    {"rules": [{"domain": "**", "action": "allow"}]},
    {"rules": [{"domain": "-bad.com", "action": "allow"}]},
    {"rules": [{"domain": 5, "action": "allow"}]},
    {"rules": [{"domain": "x" * 64 + ".com", "action": "allow"}]},
    ["rules"],
]


@pytest.mark.parametrize("doc", INVALID)
def test_validate_rejects(doc: Any) -> None:
    with pytest.raises(InvalidPolicy):
        validate(doc)


async def test_invalid_documents_are_400_text(emu: RunningEmulator, url: str) -> None:
    assert await post(emu, url, json.dumps(VALID).encode()) == (204, "")
    for doc in INVALID:
        assert await post(emu, url, json.dumps(doc).encode()) == (400, "invalid policy config\n")
    for raw in (b"", b"{", b"null", b'{"rules": [] } trailing'):
        assert await post(emu, url, raw) == (400, "invalid policy config\n")
    # A rejected document leaves the previous policy in place.
    assert await get(emu, url) == VALID


async def test_oversized_body_is_rejected(emu: RunningEmulator, url: str) -> None:
    body = b'{"rules": [' + b" " * (2 << 20) + b"]}"
    assert await post(emu, url, body) == (400, "invalid policy config\n")


async def test_policy_file_never_written_outside(
    emu: RunningEmulator, url: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (emu.state.sprite_root(NAME) / ".sprite").symlink_to("../../../../../outside")
    assert await post(emu, url, json.dumps(VALID).encode()) == (204, "")
    assert list(outside.iterdir()) == []
    assert await get(emu, url) == VALID


async def test_policy_is_per_sprite_and_forgotten_with_the_sprite(
    emu: RunningEmulator, url: str
) -> None:
    emu.add_sprite("other")
    assert await post(emu, url, json.dumps(VALID).encode()) == (204, "")
    assert await get(emu, f"{emu.url}/v1/sprites/other/policy/network") == {"rules": []}
    async with emu.http.delete(f"{emu.url}/v1/sprites/{NAME}", headers=emu.auth) as resp:
        assert resp.status == 204
    emu.add_sprite(NAME)
    assert await get(emu, url) == {"rules": []}


async def test_missing_sprite(emu: RunningEmulator) -> None:
    async with emu.http.get(f"{emu.url}/v1/sprites/ghost/policy/network", headers=emu.auth) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "sprite not found"}
