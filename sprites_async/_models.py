"""Wire models of sprite management, decoded from bytes with msgspec.

Every field except a sprite's ``name`` is optional on the wire: real responses
omit keys, send nulls, and add keys the docs never mention. Unknown keys are
ignored; missing ones stay ``None`` (never "now").
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Generic, Literal, TypeVar

import msgspec

__all__ = ["OrgCounters", "SpriteConfig", "SpriteInfo", "SpritePage", "URLSettings"]

logger = logging.getLogger("sprites_async")

URLAuth = Literal["sprite", "public"]
URL_AUTH_VALUES: frozenset[str] = frozenset({"sprite", "public"})

KNOWN_STATUSES: frozenset[str] = frozenset({"cold", "warm", "running"})


class URLSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Who may reach the sprite's URL: ``"sprite"`` (org members, default) or ``"public"``."""

    auth: str | None = None
    private_access: str | None = None


class SpriteConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Resource hints some SDKs send on create (never seen in responses)."""

    ram_mb: int | None = None
    cpus: int | None = None
    region: str | None = None
    storage_gb: int | None = None


class SpriteInfo(msgspec.Struct, kw_only=True):
    """What the API says about one sprite (section 2.1 of the protocol reference).

    ``status`` is a plain string: ``"cold"``, ``"warm"``, ``"running"``, or
    anything newer the service may send.
    """

    name: str
    id: str | None = None
    organization: str | None = None
    status: str | None = None
    url: str | None = None
    url_settings: URLSettings | None = None
    labels: list[str] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: str | None = None
    environment_version: str | None = None
    last_running_at: datetime | None = None
    last_warming_at: datetime | None = None
    last_started_at: datetime | None = None
    last_active_at: datetime | None = None
    config: SpriteConfig | None = None
    environment: dict[str, str] | None = None
    bucket_name: str | None = None
    primary_region: str | None = None
    org_slug: str | None = None
    """Set instead of ``organization`` by the documented minimal list entry."""

    @property
    def is_running(self) -> bool:
        """True when the sprite is awake right now."""
        return self.status == "running"


class OrgCounters(msgspec.Struct, kw_only=True):
    """Organisation-wide counters and limits that come with list pages."""

    name: str | None = None
    running: int | None = None
    warm: int | None = None
    cold: int | None = None
    running_limit: int | None = None
    warm_limit: int | None = None


class SpritePage(msgspec.Struct, kw_only=True):
    """One page of ``GET /v1/sprites``.

    The service sends the org counters at the top level (observed); one SDK
    expects them nested under ``org``. Both are accepted; :attr:`counters`
    gives whichever arrived.
    """

    sprites: list[SpriteInfo] = msgspec.field(default_factory=list)
    has_more: bool = False
    next_continuation_token: str | None = None
    org_name: str | None = msgspec.field(default=None, name="name")
    running: int | None = None
    warm: int | None = None
    cold: int | None = None
    running_limit: int | None = None
    warm_limit: int | None = None
    org: OrgCounters | None = None

    @property
    def counters(self) -> OrgCounters:
        """The org counters, from the top level or the nested ``org`` object."""
        if self.org is not None and self.running is None and self.org_name is None:
            return self.org
        return OrgCounters(
            name=self.org_name,
            running=self.running,
            warm=self.warm,
            cold=self.cold,
            running_limit=self.running_limit,
            warm_limit=self.warm_limit,
        )

    @property
    def next_token(self) -> str | None:
        """The token of the next page, or None when this is the last page.

        A page that says ``has_more`` with no token (seen during the February
        2026 incident) is treated as the last page.
        """
        if self.has_more and self.next_continuation_token:
            return self.next_continuation_token
        return None

    @property
    def items(self) -> list[SpriteInfo]:
        """The sprites of this page (the paginator's view of it)."""
        return self.sprites


T = TypeVar("T")


class JSONDecoder(Generic[T]):
    """A ``msgspec.json.Decoder`` whose only error is ``msgspec.DecodeError``.

    msgspec raises ``RecursionError`` for JSON nested more deeply than it
    supports (about 1000 levels), whatever the target type; a server must not
    be able to make a model decoder fail in an undocumented way.
    """

    __slots__ = ("_decoder",)

    def __init__(self, decoder: msgspec.json.Decoder[T]) -> None:
        self._decoder = decoder

    def decode(self, data: bytes) -> T:
        """Decode one document; raises ``msgspec.DecodeError`` (or ``ValidationError``)."""
        try:
            return self._decoder.decode(data)
        except RecursionError as exc:
            raise msgspec.DecodeError("JSON is nested too deeply") from exc


_sprite_decoder = JSONDecoder(msgspec.json.Decoder(SpriteInfo))
_page_decoder = JSONDecoder(msgspec.json.Decoder(SpritePage))
_any_decoder: JSONDecoder[object] = JSONDecoder(msgspec.json.Decoder())


def decode_sprite(data: bytes) -> SpriteInfo:
    """Decode one sprite object (``msgspec.DecodeError`` if it is not one)."""
    return _sprite_decoder.decode(data)


def decode_page(data: bytes) -> SpritePage:
    """Decode a list page in one msgspec call.

    If one entry is malformed (say, an unparseable timestamp), the page is
    converted again entry by entry so one odd record cannot hide the others;
    each skipped entry is logged with its error. That slow path only runs on
    bad data.
    """
    try:
        return _page_decoder.decode(data)
    except msgspec.ValidationError:
        raw = _any_decoder.decode(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("sprites"), list):
            raise
        good: list[SpriteInfo] = []
        for entry in raw["sprites"]:
            try:
                good.append(msgspec.convert(entry, SpriteInfo))
            except msgspec.ValidationError as exc:
                logger.warning("skipping malformed sprite in list page: %s", exc)
        if len(good) == len(raw["sprites"]):
            # The entries were fine: the page envelope itself is malformed.
            raise
        envelope = msgspec.convert({**raw, "sprites": []}, SpritePage)
        return msgspec.structs.replace(envelope, sprites=good)
