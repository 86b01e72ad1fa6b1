"""Network (egress) policy of the sprite layer: ``/policy/network`` (section 9.1).

The policy is validated as strictly as the real server does, stored in
SQLite, and mirrored into the sprite at ``/.sprite/policy/network.json``
where a real sprite exposes it.

Enforcement is partial. Only a policy that denies everything
(:func:`denies_everything`) has an effect, and only under bubblewrap: exec
commands and services of that sprite started from then on run in a network
namespace of their own (``bwrap --unshare-net``) where the only interface is
a private loopback, so they cannot reach the host, its loopback, or anything
beyond. What is not enforced:

* domain allowlists and the ``defaults`` include: any policy with an allow
  leaves the network fully open (there is no DNS filtering);
* processes already running when the policy is set keep their network, and
  a policy relaxed later reaches only processes started after it;
* without bubblewrap (``sandbox="none"``, or ``auto`` without ``bwrap``)
  nothing is isolated.

Without a policy, a sandboxed sprite still has a network namespace of its
own (``_netns``: outbound NAT, no access to the host's loopback). A side
effect of deny-all isolation: each command gets a namespace of its own, so
the emulator's TCP proxy and port forwarding, which dial the sprite's
namespace, cannot reach listeners of an isolated sprite. Port notifications
and ``/ports/watch`` still report those listeners (read from the process's
own namespace), with addresses that only mean something inside it.

:func:`setup` also installs the sandbox's per-emulator parts: the check that
a required sandbox can run, ``GET /_emulator/sandbox``, and the release of a
sprite's network namespace and cgroups when it is deleted or the emulator
stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from ._paths import FsError, resolve
from ._sandbox import check_mode, jail_for, sandbox_status
from ._state import STATE_KEY, EmulatorState, text_error
from ._wire import BodyTooLarge, go_json, read_capped

log = logging.getLogger(__name__)

POLICY_FILE = "/.sprite/policy/network.json"
"""Where a sprite sees its active network policy."""
BODY_LIMIT = 1 << 20

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")
_RULE_KEYS = frozenset({"domain", "include", "action"})
_ACTIONS = frozenset({"allow", "deny"})
_INCLUDES = frozenset({"defaults"})


class InvalidPolicy(ValueError):
    """The document is not a valid network policy."""


def setup(app: web.Application, state: EmulatorState) -> None:
    """Create the policy table and register the ``/policy/network`` routes."""
    state.db.execute(
        "CREATE TABLE IF NOT EXISTS emu_network_policy ("
        " sprite TEXT PRIMARY KEY, sprite_id TEXT NOT NULL, rules TEXT NOT NULL)"
    )

    async def forget(name: str) -> None:
        state.db.execute("DELETE FROM emu_network_policy WHERE sprite = ?", (name,))

    state.sprite_deleted_hooks.append(forget)
    _setup_sandbox(app, state)
    app.router.add_get("/v1/sprites/{name}/policy/network", _get, allow_head=False)
    app.router.add_post("/v1/sprites/{name}/policy/network", _set)


def _setup_sandbox(app: web.Application, state: EmulatorState) -> None:
    """Refuse a required sandbox that cannot run; release sprites' sandbox resources."""
    check_mode(state.config.sandbox)
    jail = jail_for(state)

    async def forget(name: str) -> None:
        await jail.forget(name)

    async def close(app: web.Application) -> None:
        # on_cleanup: every session and service was ended at shutdown.
        await jail.aclose()

    async def status(request: web.Request) -> web.StreamResponse:
        from ._fsprobe import checkpoint_method

        sandboxed, line = sandbox_status(state.config.sandbox, jail)
        method, how = await asyncio.to_thread(checkpoint_method, state.config.state_dir)
        return go_json(
            {
                "mode": state.config.sandbox,
                "sandboxed": sandboxed,
                "status": line,
                "checkpoints": {"method": method, "status": how},
            }
        )

    state.sprite_deleted_hooks.append(forget)
    app.on_cleanup.append(close)
    app.router.add_get("/_emulator/sandbox", status, allow_head=False)


def validate(doc: Any) -> list[dict[str, str]]:
    """The rules of a network-policy document, or :class:`InvalidPolicy`.

    Exactly the key ``rules`` (a list); each rule exactly one of ``domain``
    and ``include``; ``include`` only ``defaults`` with an optional action;
    ``domain`` an exact host, ``*.host`` or ``*`` with a required action of
    ``allow`` or ``deny``; no other keys anywhere.
    """
    if not isinstance(doc, dict) or set(doc) != {"rules"}:
        raise InvalidPolicy("the document must have exactly the key 'rules'")
    rules = doc["rules"]
    if not isinstance(rules, list):
        raise InvalidPolicy("'rules' must be a list")
    for rule in rules:
        if not isinstance(rule, dict) or not set(rule) <= _RULE_KEYS:
            raise InvalidPolicy(f"invalid rule: {rule!r}")
        if not all(isinstance(v, str) for v in rule.values()):
            raise InvalidPolicy(f"rule values must be strings: {rule!r}")
        action = rule.get("action")
        if action is not None and action not in _ACTIONS:
            raise InvalidPolicy(f"invalid action: {action!r}")
        if ("domain" in rule) == ("include" in rule):
            raise InvalidPolicy("a rule needs exactly one of 'domain' and 'include'")
        if "include" in rule:
            if rule["include"] not in _INCLUDES:
                raise InvalidPolicy(f"unknown include: {rule['include']!r}")
            continue
        domain = rule["domain"]
        if action is None:
            raise InvalidPolicy("a domain rule needs an action")
        if domain != "*" and (len(domain) > 253 or not _DOMAIN.fullmatch(domain)):
            raise InvalidPolicy(f"invalid domain pattern: {domain!r}")
    return rules


def current_rules(state: EmulatorState, name: str) -> list[dict[str, str]]:
    """The sprite's stored rules (empty when it never had a policy)."""
    row = state.db.execute(
        "SELECT sprite_id, rules FROM emu_network_policy WHERE sprite = ?", (name,)
    ).fetchone()
    if row is None or row[0] != _sprite_id(state, name):
        return []
    rules: list[dict[str, str]] = msgspec.json.decode(row[1])
    return rules


def denies_everything(rules: list[dict[str, str]]) -> bool:
    """Whether a rule set lets no outbound traffic through at all.

    With rules, only names some rule allows resolve (section 9.1), so a
    non-empty rule set is deny-all exactly when no rule allows anything: no
    ``domain`` rule with ``"action": "allow"`` and no ``include`` (whose
    action defaults to allow) unless it says ``"action": "deny"``. An empty
    rule set is no policy: everything is allowed.
    """
    if not rules:
        return False
    for rule in rules:
        if "include" in rule:
            if rule.get("action", "allow") != "deny":
                return False
        elif rule.get("action") == "allow":
            return False
    return True


def network_isolated(state: EmulatorState, name: str) -> bool:
    """Whether new processes of sprite ``name`` must run without a network."""
    try:
        return denies_everything(current_rules(state, name))
    except sqlite3.OperationalError:
        return False  # the policy module is not set up in this app: no policy


def _sprite_id(state: EmulatorState, name: str) -> str:
    # Rows are keyed by name; the sprite id tells apart a deleted sprite's
    # leftovers from a new sprite that reuses the name.
    record = state.sprites.get(name)
    return record.id if record is not None else ""


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return go_json({"rules": current_rules(state, request.match_info["name"])})


async def _set(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    try:
        raw = await read_capped(request, BODY_LIMIT)
        rules = validate(msgspec.json.decode(raw))
    except (BodyTooLarge, msgspec.DecodeError, RecursionError, InvalidPolicy) as exc:
        log.debug("rejected network policy for %s: %s", name, exc)
        return text_error(400, "invalid policy config")
    state.db.execute(
        "INSERT INTO emu_network_policy (sprite, sprite_id, rules) VALUES (?, ?, ?)"
        " ON CONFLICT (sprite) DO UPDATE SET sprite_id = excluded.sprite_id,"
        " rules = excluded.rules",
        (name, _sprite_id(state, name), msgspec.json.encode(rules).decode()),
    )
    try:
        await asyncio.to_thread(
            _write_policy_file,
            state.sprite_root(name),
            msgspec.json.encode({"rules": rules}) + b"\n",
        )
    except (FsError, OSError) as exc:
        # The stored policy is authoritative; the file is a convenience copy
        # that a process in the sprite may have made impossible to write.
        log.warning("could not write %s for sprite %s: %s", POLICY_FILE, name, exc)
    return web.Response(status=204)


def _write_policy_file(root: Path, data: bytes) -> None:
    # Confined like any client path: /.sprite could be a symlink planted by a
    # process in the sprite.
    target = resolve(root, POLICY_FILE, create_parents=True)
    fd, tmp = tempfile.mkstemp(prefix=".network-", dir=target.host.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target.host)
    except BaseException:
        os.unlink(tmp)
        raise
