"""The sprite's network (egress) policy: ``/policy/network``.

::

    await sprite.policy.set([
        IncludeRule("defaults"),
        DomainRule("api.github.com", "allow"),
        DomainRule("*", "deny"),
    ])
    policy = await sprite.policy.get()

Rules are validated before anything is sent, with the server's own strict
rules, so a bad rule fails with a :class:`ValueError` naming it
instead of the server's bare ``400 invalid policy config``. An empty rule
list removes every restriction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from ._models import LiberalDecoder, attach_raw, raw_of
from ._options import ExtraBody, ExtraHeaders, ExtraQuery, request_options
from ._resource import SpriteResource

__all__ = ["DomainRule", "IncludeRule", "NetworkPolicy", "PolicyResource", "Rule"]

logger = logging.getLogger("sprites_async")

Action = Literal["allow", "deny"]
_ACTIONS = frozenset({"allow", "deny"})
_INCLUDES = frozenset({"defaults"})
_RULE_KEYS = frozenset({"domain", "include", "action"})
# One DNS label: letters, digits, '-' and '_' (seen in real hostnames), not
# starting or ending with '-'.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")


class DomainRule(msgspec.Struct, frozen=True):
    """Allow or deny a host name pattern.

    Attributes:
        domain: An exact host (``example.com``), a subdomain wildcard
            (``*.example.com``) or ``*`` (everything). More specific wins.
        action: ``"allow"`` or ``"deny"``.
    """

    domain: str
    action: Action


class IncludeRule(msgspec.Struct, frozen=True):
    """Include a curated rule set; only ``"defaults"`` exists (GitHub, npm, PyPI ...).

    Attributes:
        include: ``"defaults"``.
        action: Optional ``"allow"``/``"deny"`` applied to the whole set.
    """

    include: str = "defaults"
    action: Action | None = None


Rule = DomainRule | IncludeRule
"""A network policy rule."""


class NetworkPolicy(msgspec.Struct, frozen=True, dict=True):
    """A sprite's network policy: the rules, in order (empty: unrestricted).

    :attr:`raw` is the JSON object :meth:`PolicyResource.get` received,
    including any rule this SDK cannot represent.
    """

    rules: list[Rule] = msgspec.field(default_factory=list)

    @property
    def raw(self) -> dict[str, Any]:
        """The policy's JSON object as received (``{}`` if built locally)."""
        return raw_of(self, None)


class _WireRule(msgspec.Struct, kw_only=True):
    domain: str | None = None
    include: str | None = None
    action: str | None = None


class _WirePolicy(msgspec.Struct, kw_only=True):
    rules: list[_WireRule] | None = None


_policy_decoder = LiberalDecoder(_WirePolicy)


def _from_wire(rule: _WireRule) -> Rule | None:
    action = rule.action if rule.action in _ACTIONS else None
    if rule.domain is not None and rule.include is None and action is not None:
        return DomainRule(rule.domain, action)  # type: ignore[arg-type]
    if rule.include is not None and rule.domain is None:
        return IncludeRule(rule.include, action)  # type: ignore[arg-type]
    logger.warning("skipping a network policy rule this SDK cannot represent: %r", rule)
    return None


def _to_wire(rule: Rule) -> dict[str, str]:
    # Built by hand: ``include`` must always be sent, and an absent action
    # must be left out (the server refuses ``null`` values).
    if isinstance(rule, DomainRule):
        return {"domain": rule.domain, "action": rule.action}
    wire = {"include": rule.include}
    if rule.action is not None:
        wire["action"] = rule.action
    return wire


def validate_rule(rule: object, index: int = 0) -> Rule:
    """Check one rule as the server would; dicts are turned into typed rules.

    Raises:
        ValueError: The rule would be refused (the message says why).
        TypeError: It is not a rule or a mapping.
    """
    where = f"rule {index}"
    if isinstance(rule, Mapping):
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(
                f"{where}: unknown keys {sorted(unknown)} (allowed: domain, include, action)"
            )
        if ("domain" in rule) == ("include" in rule):
            raise ValueError(f"{where}: needs exactly one of 'domain' and 'include'")
        if "domain" in rule:
            if "action" not in rule:
                raise ValueError(f"{where}: a domain rule needs an action ('allow' or 'deny')")
            rule = DomainRule(rule["domain"], rule["action"])
        else:
            rule = IncludeRule(rule["include"], rule.get("action"))
    if isinstance(rule, DomainRule):
        if not isinstance(rule.domain, str):
            raise TypeError(f"{where}: domain must be a str")
        if rule.action not in _ACTIONS:
            raise ValueError(f"{where}: action must be 'allow' or 'deny', got {rule.action!r}")
        domain = rule.domain
        if domain != "*" and (len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain)):
            raise ValueError(
                f"{where}: invalid domain pattern {domain!r}: use an exact host "
                "('example.com'), a subdomain wildcard ('*.example.com') or '*'"
            )
        return rule
    if isinstance(rule, IncludeRule):
        if rule.include not in _INCLUDES:
            raise ValueError(f"{where}: include must be 'defaults', got {rule.include!r}")
        if rule.action is not None and rule.action not in _ACTIONS:
            raise ValueError(
                f"{where}: action must be 'allow', 'deny' or omitted, got {rule.action!r}"
            )
        return rule
    raise TypeError(
        f"{where}: expected a DomainRule, an IncludeRule or a mapping, got {type(rule).__name__}"
    )


def validate_rules(rules: NetworkPolicy | Iterable[Rule | Mapping[str, Any]]) -> list[Rule]:
    """Check every rule (see :func:`validate_rule`); return them as typed rules."""
    if isinstance(rules, NetworkPolicy):
        rules = rules.rules
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Iterable):
        raise TypeError("rules must be a NetworkPolicy or a list of rules")
    return [validate_rule(rule, i) for i, rule in enumerate(rules)]


class PolicyResource(SpriteResource):
    """The network policy of one sprite: ``sprite.policy``."""

    @property
    def _path(self) -> str:
        return self._sprite.path + "/policy/network"

    async def get(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> NetworkPolicy:
        """The current policy (no rules when none was ever set)."""
        sprite = self._sprite
        resp = await sprite.client._request(
            "GET",
            self._path,
            operation="get network policy",
            sprite=sprite.name,
            timeout="wake",
            options=request_options(extra_headers, extra_query, extra_body),
        )
        wire = resp.parse(_policy_decoder.decode)
        rules = [r for r in map(_from_wire, wire.rules or []) if r is not None]
        policy = NetworkPolicy(rules=rules)
        attach_raw(policy, resp.body)
        return policy

    async def set(
        self,
        rules: NetworkPolicy | Iterable[Rule | Mapping[str, Any]],
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> NetworkPolicy:
        """Replace the whole policy; return what was set.

        Rules may be :class:`DomainRule`/:class:`IncludeRule` objects or
        mappings with the wire keys. They are validated first.

        Raises:
            ValueError: A rule is invalid (nothing was sent).
            BadRequestError: The server refused the policy anyway.
        """
        checked = validate_rules(rules)
        sprite = self._sprite
        await sprite.client._request(
            "POST",
            self._path,
            operation="set network policy",
            sprite=sprite.name,
            json=msgspec.json.encode({"rules": [_to_wire(rule) for rule in checked]}),
            timeout="wake",
            idempotent=True,  # a full replacement: sending it twice is harmless
            options=request_options(extra_headers, extra_query, extra_body),
        )
        return NetworkPolicy(rules=checked)

    async def clear(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Remove every rule (outbound traffic is unrestricted again)."""
        await self.set(
            [], extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
        )
