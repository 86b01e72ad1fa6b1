"""Wire models of sprite management, and the liberal decoding every model uses.

Every field except a sprite's ``name`` is optional on the wire: real responses
omit keys, send nulls, and add keys the docs never mention. Unknown keys are
ignored (but kept reachable through ``raw``); missing ones stay ``None``
(never "now").

Decoding is liberal in what it accepts (a field of an odd type or a ``null``
where a list belongs costs that field, never the response) without slowing
the common case: a response is first decoded by one typed msgspec call; only
if that refuses it (a ``null`` array, a field of an unexpected type) is it
decoded again into plain Python objects and converted field by field
(:func:`salvage`), where ``null`` arrays become empty, numbers and numeric or
boolean strings are coerced, and a field that still cannot be read is lost
alone (logged), never its whole object. An object whose identifying field
(a sprite's ``name``, a checkpoint's ``id`` ...) cannot be read makes the
response unreadable, with an error naming the entry: nothing is dropped
silently.
"""

from __future__ import annotations

import logging
import types
import typing
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

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


class SpriteInfo(msgspec.Struct, kw_only=True, dict=True):
    """What the API says about one sprite.

    ``status`` is a plain string: ``"cold"``, ``"warm"``, ``"running"``, or
    anything newer the service may send. ``labels`` is a list even when the
    service sent ``null``. :attr:`raw` holds the JSON object as received,
    including keys this SDK does not model.
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

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object this sprite was decoded from (``{}`` if built locally)."""
        return raw_of(self, self.name)


class OrgCounters(msgspec.Struct, kw_only=True):
    """Organisation-wide counters and limits that come with list pages."""

    name: str | None = None
    running: int | None = None
    warm: int | None = None
    cold: int | None = None
    running_limit: int | None = None
    warm_limit: int | None = None


class SpritePage(msgspec.Struct, kw_only=True, dict=True):
    """One page of ``GET /v1/sprites``.

    The service sends the org counters at the top level (observed); one SDK
    expects them nested under ``org``. Both are accepted; :attr:`counters`
    gives whichever arrived. :attr:`raw` is the page's JSON object.
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

    @property
    def raw(self) -> dict[str, Any]:
        """The page's JSON object as received."""
        return raw_of(self, None)


T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, ValueError, RecursionError)
"""What a decode callable of unknown make may raise for bad input.

msgspec raises ``RecursionError`` for JSON nested more deeply than it
supports; code that runs decoders it did not build (the NDJSON reader) catches
this tuple. Decoders built here use :class:`JSONDecoder` instead.
"""


_TOO_DEEP = "JSON is nested too deeply"


class JSONDecoder(Generic[T]):
    """A ``msgspec.json.Decoder`` whose only errors are msgspec's own.

    msgspec raises ``RecursionError`` for JSON nested more deeply than it
    supports (about 1000 levels), whatever the target type; a server must not
    be able to make a decoder fail in an undocumented way, so this one raises
    ``msgspec.DecodeError`` instead. Every JSON decoder of the SDK is one.
    """

    __slots__ = ("_decoder",)

    def __init__(self, decoder: msgspec.json.Decoder[T]) -> None:
        self._decoder = decoder

    def decode(self, data: bytes | str) -> T:
        """Decode one document; raises ``msgspec.DecodeError`` (or ``ValidationError``)."""
        try:
            return self._decoder.decode(data)
        except RecursionError as exc:
            raise msgspec.DecodeError(_TOO_DEEP) from exc

    def decode_lines(self, data: bytes | memoryview) -> list[T]:
        """Decode newline-delimited documents in one call (errors as :meth:`decode`)."""
        try:
            return self._decoder.decode_lines(data)
        except RecursionError as exc:
            raise msgspec.DecodeError(_TOO_DEEP) from exc


_any_decoder: JSONDecoder[object] = JSONDecoder(msgspec.json.Decoder())


def decode_any(data: bytes | str) -> object:
    """Plain Python objects (dicts, lists ...) of one JSON document."""
    return _any_decoder.decode(data)


# ------------------------------------------------------------------ raw objects


class RawSource:
    """The body a list of objects was decoded from, decoded again only on demand.

    Attaching one shared source to every entry of a list costs one attribute
    store per entry; the JSON is decoded into dicts only when some entry's
    ``raw`` is read, and entries are matched by their identifying field.
    """

    __slots__ = ("_by_ident", "_data", "_ident", "_key")

    def __init__(self, data: bytes, key: str | None, ident: str) -> None:
        self._data = data
        self._key = key
        self._ident = ident
        self._by_ident: dict[object, dict[str, Any]] | None = None

    def lookup(self, ident: object) -> dict[str, Any]:
        """The object whose identifying field equals ``ident`` (``{}`` if none does)."""
        if self._by_ident is None:
            try:
                top = decode_any(self._data)
            except msgspec.DecodeError:
                top = None
            items = top.get(self._key) if isinstance(top, dict) and self._key else top
            index: dict[object, dict[str, Any]] = {}
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict):
                    key = item.get(self._ident)
                    index.setdefault(key if isinstance(key, str) else str(key), item)
            self._by_ident = index
        return self._by_ident.get(ident, {})


def attach_raw(obj: msgspec.Struct, source: object) -> None:
    """Remember where ``obj`` came from: a dict, the bytes of it, or a :class:`RawSource`.

    ``obj`` must be of a Struct type declared with ``dict=True``; frozen ones too.
    """
    obj.__dict__["_raw"] = source


def share_raw(items: typing.Iterable[msgspec.Struct], source: RawSource) -> None:
    """Attach one :class:`RawSource` to every entry of a decoded list (non-frozen types).

    The entries share one attribute dict: a dict per entry would cost about
    as much again (measured on a 50-sprite page: 7% of the decode against
    3%). :func:`raw_of` gives an entry its own dict once its raw is read.
    (An attribute a caller sets on one entry before that would show on its
    siblings too; the models carry no attributes of their own.)
    """
    shared = {"_raw": source, "_shared": True}
    for item in items:
        item.__dict__ = shared


def raw_of(obj: msgspec.Struct, ident: object) -> dict[str, Any]:
    """The JSON object ``obj`` was decoded from, decoded now if it was kept as bytes."""
    store = obj.__dict__
    source = store.get("_raw")
    if isinstance(source, dict):
        return source
    raw: object = {}
    if isinstance(source, RawSource):
        raw = source.lookup(ident)
    elif isinstance(source, (bytes, msgspec.Raw)):
        try:
            raw = decode_any(source)
        except msgspec.DecodeError:
            raw = {}
    result = raw if isinstance(raw, dict) else {}
    if store.get("_shared"):
        obj.__dict__ = {"_raw": result}  # the old dict belongs to its siblings too
    else:
        store["_raw"] = result
    return result


# -------------------------------------------------------------- liberal decoding


class UnreadableEntry(msgspec.ValidationError):
    """An object whose identifying field cannot be read: the whole answer is refused.

    Raised (and passed up through every level) instead of silently losing
    the object or the list that held it.
    """


_NOTHING = object()


def _optional_parts(tp: Any) -> tuple[Any, ...]:
    """The members of a union type (just ``(tp,)`` for anything else)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _struct_in(tp: Any) -> type[msgspec.Struct] | None:
    for part in _optional_parts(tp):
        if isinstance(part, type) and issubclass(part, msgspec.Struct):
            return part
    return None


def _list_in(tp: Any) -> Any:
    """The element type of the list in ``tp`` (``_NOTHING`` if it has none)."""
    for part in _optional_parts(tp):
        if typing.get_origin(part) is list:
            args = typing.get_args(part)
            return args[0] if args else Any
    return _NOTHING


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp``, as liberally as the meaning allows.

    Raises ``msgspec.ValidationError`` when nothing sensible can be made of
    it, :class:`UnreadableEntry` when an object inside it lacks its identity.
    """
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError:
        pass
    element = _list_in(tp)
    if value is None and element is not _NOTHING:
        return []  # the Go server marshals an empty (nil) slice as null
    struct = _struct_in(tp)
    if struct is not None and isinstance(value, dict):
        return salvage(value, struct, where)
    if element is not _NOTHING and isinstance(value, list):
        return _coerce_items(value, element, where)
    parts = _optional_parts(tp)
    if str in parts and isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)  # ids sent as numbers by older servers
        except ValueError:  # more digits than Python converts
            raise msgspec.ValidationError(f"{where}: number too long") from None
    # Numbers and booleans sent as strings ("80", "true"), numbers as bools.
    return msgspec.convert(value, tp, strict=False)


def _coerce_items(items: list[Any], element: Any, where: str) -> list[Any]:
    """A list element by element: an unreadable text or number is left out (and
    logged; ``raw`` still has it), an object that is not one refuses the answer."""
    out: list[Any] = []
    for i, item in enumerate(items):
        try:
            out.append(_coerce(item, element, f"{where}[{i}]"))
        except UnreadableEntry:
            raise
        except msgspec.ValidationError as exc:
            if _struct_in(element) is not None:
                raise UnreadableEntry(f"{where}[{i}]: {exc}") from None
            logger.warning("%s[%d]: ignored an unreadable element", where, i)
    return out


def salvage(obj: object, cls: type[S], where: str = "answer") -> S:
    """Build ``cls`` from plain JSON objects field by field (the slow, liberal path).

    Missing or unreadable optional fields take their defaults (unreadable
    ones are logged); a required field that cannot be read raises
    :class:`UnreadableEntry` naming ``where``. The object is kept as the
    result's ``raw`` when ``cls`` has room for it.
    """
    if not isinstance(obj, dict):
        raise UnreadableEntry(f"{where}: expected an object, got {type(obj).__name__}")
    kwargs: dict[str, Any] = {}
    lost: list[str] = []
    for field in msgspec.structs.fields(cls):
        value = obj.get(field.encode_name, _NOTHING)
        if value is _NOTHING:
            if field.required:
                raise UnreadableEntry(f"{where}: required field `{field.encode_name}` is missing")
            continue
        try:
            kwargs[field.name] = _coerce(value, field.type, f"{where}.{field.encode_name}")
        except UnreadableEntry:
            raise
        except msgspec.ValidationError as exc:
            if field.required:
                raise UnreadableEntry(
                    f"{where}: required field `{field.encode_name}` is unreadable: {exc}"
                ) from None
            lost.append(field.encode_name)
    if lost:
        logger.warning("%s: ignored unreadable field(s) %s", where, ", ".join(lost))
    result = cls(**kwargs)
    if cls.__struct_config__.dict:
        attach_raw(result, obj)
    return result


def salvage_list(items: object, cls: type[S], where: str, ident: str = "name") -> list[S]:
    """Every entry of a JSON array as ``cls`` (``null`` is empty); see :func:`salvage`.

    Error messages name an entry by its index and its ``ident`` key (when
    that is a string).

    Raises:
        UnreadableEntry: One entry cannot be read (index and name in the message).
    """
    if items is None:
        return []
    if not isinstance(items, list):
        raise UnreadableEntry(f"{where}: expected an array, got {type(items).__name__}")
    out: list[S] = []
    for i, entry in enumerate(items):
        label = entry.get(ident) if isinstance(entry, dict) else None
        named = f" ({label!r})" if isinstance(label, str) else ""
        out.append(salvage(entry, cls, f"{where}[{i}]{named}"))
    return out


class LiberalDecoder(Generic[S]):
    """One typed msgspec decode; on refusal, :func:`salvage` of the plain objects.

    ``keep_raw`` stores the body on the result (decoded again only if
    ``raw`` is read); ``salvage_with`` replaces :func:`salvage` for types
    that need more than it does (lists, unions).
    """

    __slots__ = ("_cls", "_decoder", "_keep_raw", "_salvage")

    def __init__(
        self,
        cls: type[S],
        *,
        keep_raw: bool = True,
        salvage_with: typing.Callable[[object], S] | None = None,
    ) -> None:
        self._cls = cls
        self._decoder = JSONDecoder(msgspec.json.Decoder(cls))
        self._keep_raw = keep_raw and cls.__struct_config__.dict
        self._salvage = salvage_with

    def decode(self, data: bytes) -> S:
        """Decode one document; raises ``msgspec.DecodeError`` (or ``ValidationError``)."""
        try:
            result = self._decoder.decode(data)
        except msgspec.ValidationError:
            obj = decode_any(data)
            if self._salvage is not None:
                return self._salvage(obj)
            return salvage(obj, self._cls)
        if self._keep_raw:
            result.__dict__["_raw"] = data
        return result


# ------------------------------------------------------------------ sprite pages


def _salvage_page(obj: object) -> SpritePage:
    if not isinstance(obj, dict):
        raise UnreadableEntry(f"expected a list page object, got {type(obj).__name__}")
    sprites = salvage_list(obj.get("sprites"), SpriteInfo, "sprites")
    page = salvage({**obj, "sprites": []}, SpritePage, "page")
    page.sprites = sprites
    attach_raw(page, obj)
    return page


_sprite_decoder = LiberalDecoder(SpriteInfo)
_page_decoder = JSONDecoder(msgspec.json.Decoder(SpritePage))


def decode_sprite(data: bytes) -> SpriteInfo:
    """Decode one sprite object (``msgspec.DecodeError`` if it is not one)."""
    return _sprite_decoder.decode(data)


def decode_page(data: bytes) -> SpritePage:
    """Decode a list page in one msgspec call, plus one attribute store per entry.

    A page the typed decoder refuses (``null`` arrays, an odd field) is
    salvaged entry by entry: every sprite with a readable ``name`` is kept
    (its unreadable fields lost, its ``raw`` intact); an entry without one
    makes the whole page a ``ValidationError`` naming it, so callers such as
    ``delete_many`` never silently miss a sprite.
    """
    try:
        page = _page_decoder.decode(data)
    except msgspec.ValidationError:
        return _salvage_page(decode_any(data))
    page.__dict__["_raw"] = data
    share_raw(page.sprites, RawSource(data, "sprites", "name"))
    return page
