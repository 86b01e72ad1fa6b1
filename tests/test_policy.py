"""Network policy: validation before the network, and get/set against the emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import (
    BadRequestError,
    NotFoundError,
    RetryPolicy,
    ServerError,
    SpritesClient,
)
from sprites_async._policy import (
    DomainRule,
    IncludeRule,
    NetworkPolicy,
    PolicyResource,
    validate_rule,
    validate_rules,
)
from tests._emulator import RunningEmulator

# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "rule",
    [
        DomainRule("example.com", "allow"),
        DomainRule("*.example.com", "deny"),
        DomainRule("*", "deny"),
        DomainRule("under_score.example.com.", "allow"),
        IncludeRule(),
        IncludeRule("defaults", "deny"),
    ],
)
def test_valid_rules(rule: Any) -> None:
    assert validate_rule(rule) == rule


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (DomainRule("example.com", "block"), "action must be 'allow' or 'deny'"),  # type: ignore[arg-type]
        (DomainRule("", "allow"), "invalid domain pattern"),
        (DomainRule("exa mple.com", "allow"), "invalid domain pattern"),
        (DomainRule("a.*.example.com", "allow"), "invalid domain pattern"),
        (DomainRule("*example.com", "allow"), "invalid domain pattern"),
        (DomainRule("-bad.com", "allow"), "invalid domain pattern"),
        (DomainRule("a" * 254, "allow"), "invalid domain pattern"),
        (IncludeRule("everything"), "include must be 'defaults'"),
        (IncludeRule("defaults", "maybe"), "action must be 'allow', 'deny' or omitted"),  # type: ignore[arg-type]
        ({"domain": "x.com"}, "needs an action"),
        ({"domain": "x.com", "include": "defaults", "action": "allow"}, "exactly one"),
        ({"action": "allow"}, "exactly one"),
        ({"domain": "x.com", "action": "allow", "comment": "no"}, "unknown keys"),
    ],
)
def test_invalid_rules_raise_value_error(rule: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_rule(rule, 3)
    with pytest.raises(ValueError, match="rule 3"):
        validate_rule(rule, 3)


def test_rule_collections() -> None:
    rules = validate_rules([{"include": "defaults"}, {"domain": "a.com", "action": "deny"}])
    assert rules == [IncludeRule(), DomainRule("a.com", "deny")]
    assert validate_rules(NetworkPolicy(rules=rules)) == rules
    assert validate_rules([]) == []
    with pytest.raises(TypeError):
        validate_rules("example.com")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        validate_rules([42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="rule 1"):
        validate_rules([IncludeRule(), DomainRule("bad domain", "allow")])


# ----------------------------------------------------------------- emulator


async def test_get_set_round_trip(emu_client: SpritesClient, emu: RunningEmulator) -> None:
    policy = PolicyResource(emu_client.sprite("box"))
    assert await policy.get() == NetworkPolicy(rules=[])
    rules = [
        IncludeRule(),
        DomainRule("api.github.com", "allow"),
        DomainRule("*.npmjs.org", "allow"),
        IncludeRule("defaults", "deny"),
        DomainRule("*", "deny"),
    ]
    assert await policy.set(rules) == NetworkPolicy(rules=rules)
    assert (await policy.get()).rules == rules
    mirrored = emu.state.sprite_root("box") / ".sprite/policy/network.json"
    assert json.loads(mirrored.read_text())["rules"][0] == {"include": "defaults"}
    await policy.clear()
    assert (await policy.get()).rules == []


async def test_invalid_rules_never_reach_the_server(emu_client: SpritesClient) -> None:
    policy = PolicyResource(emu_client.sprite("box"))
    with pytest.raises(ValueError, match="invalid domain pattern"):
        await policy.set([DomainRule("not a domain", "allow")])
    assert (await policy.get()).rules == []


async def test_missing_sprite(emu_client: SpritesClient) -> None:
    policy = PolicyResource(emu_client.sprite("ghost"))
    with pytest.raises(NotFoundError):
        await policy.get()


# ------------------------------------------------------- other server answers


@pytest.fixture
async def policy_fake() -> AsyncIterator[tuple[PolicyResource, dict[str, Any]]]:
    seen: dict[str, Any] = {"status": 204, "get": {"rules": []}}

    async def get(request: web.Request) -> web.Response:
        return web.json_response(seen["get"])

    async def post(request: web.Request) -> web.Response:
        seen["body"] = await request.json()
        status = seen["status"]
        return web.Response(status=status, text="invalid policy config\n" if status >= 400 else "")

    app = web.Application()
    app.router.add_get("/v1/sprites/box/policy/network", get)
    app.router.add_post("/v1/sprites/box/policy/network", post)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base_url = str(server.make_url("")).rstrip("/")
        async with SpritesClient("t", base_url=base_url, retry=RetryPolicy(max_attempts=1)) as c:
            yield PolicyResource(c.sprite("box")), seen
    finally:
        await server.close()


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_any_2xx_is_success(
    policy_fake: tuple[PolicyResource, dict[str, Any]], status: int
) -> None:
    policy, seen = policy_fake
    seen["status"] = status
    await policy.set([IncludeRule("defaults", "allow")])
    assert seen["body"] == {"rules": [{"include": "defaults", "action": "allow"}]}


async def test_server_refusal_is_a_bad_request(
    policy_fake: tuple[PolicyResource, dict[str, Any]],
) -> None:
    policy, seen = policy_fake
    seen["status"] = 400
    with pytest.raises(BadRequestError, match="invalid policy config"):
        await policy.set([])
    seen["status"] = 500
    with pytest.raises(ServerError):
        await policy.set([])


async def test_unrepresentable_rules_are_skipped_with_a_log(
    policy_fake: tuple[PolicyResource, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    policy, seen = policy_fake
    seen["get"] = {
        "rules": [
            {"include": "defaults"},
            {"domain": "a.com", "action": "allow"},
            {"something": "new"},
        ]
    }
    got = await policy.get()
    assert got.rules == [IncludeRule(), DomainRule("a.com", "allow")]
    assert "cannot represent" in caplog.text
