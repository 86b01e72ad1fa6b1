"""Checkpoints: create, list, get, restore, delete, and a restore-on-error guard (section 6).

``create`` and ``restore`` stream NDJSON progress events. They return an
:class:`EventOperation`, which is both an async iterator of typed events
(decoded line by line as the bytes arrive) and awaitable for the outcome::

    cp = await sprite.checkpoints.create(comment="before upgrade")
    async for event in sprite.checkpoints.restore(cp.id):
        print(event)

A ``200`` stream can still fail: an ``error`` event raises
:class:`CheckpointError` with the server's message, and so does a stream
that ends without its ``complete`` event (section 12, item 26).
"""

from __future__ import annotations

import logging
import re
import typing
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

from ._errors import APIError, NotFoundError, StreamError
from ._models import (
    JSONDecoder,
    LiberalDecoder,
    RawSource,
    decode_any,
    raw_of,
    salvage,
    salvage_list,
    share_raw,
)
from ._session import ExtraBody, ExtraHeaders, ExtraQuery, quote_segment, request_options
from ._streams import NDJSONStream

if TYPE_CHECKING:
    from ._sprites import Sprite

__all__ = [
    "Checkpoint",
    "CheckpointComplete",
    "CheckpointError",
    "CheckpointErrorEvent",
    "CheckpointEvent",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointsResource",
    "EventOperation",
    "OtherEvent",
]

logger = logging.getLogger("sprites_async")

CURRENT = "Current"
"""The pseudo-id the list uses for the live state."""

E = TypeVar("E")
R = TypeVar("R")


# --------------------------------------------------------------------- errors


class CheckpointError(StreamError):
    """A checkpoint or restore stream reported an ``error`` event or ended early.

    Attributes:
        operation: ``"create checkpoint"`` or ``"restore checkpoint"``.
        sprite: The sprite's name.
        checkpoint_id: The checkpoint being restored (None for create).
        server_message: The server's ``error`` text, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        sprite: str,
        checkpoint_id: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.sprite = sprite
        self.checkpoint_id = checkpoint_id
        self.server_message = server_message


class CheckpointNotFoundError(NotFoundError):
    """The checkpoint does not exist (a 404, or the 500 the service sends for it)."""


# --------------------------------------------------------------------- events


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return msgspec.json.decode(msgspec.json.encode(value), type=datetime)
    except msgspec.ValidationError:
        return None


class _Timed(msgspec.Struct, kw_only=True, gc=False):
    # gc=False: events hold only strings, so they can never be part of a
    # reference cycle, and untracked objects make a 20,000-line stream much
    # cheaper to decode (no collector passes triggered by them).
    type: ClassVar[str]
    """The event's ``type`` on the wire (``"info"``, ``"error"``, ``"complete"``).

    A class attribute equal to the struct's tag: plain attribute speed for
    callers that test it on every line."""
    time: str | None = None
    """RFC 3339 with nanoseconds, as sent. Kept as text: a malformed stamp
    must not make a ``complete`` or ``error`` line undecodable."""

    @property
    def timestamp(self) -> datetime | None:
        """``time`` parsed (microsecond precision), or None."""
        return _parse_time(self.time)


class CheckpointInfo(_Timed, tag="info", tag_field="type", kw_only=True):
    """A progress line (``data`` is human-readable text)."""

    type: ClassVar[str] = "info"
    data: str = ""


class CheckpointErrorEvent(_Timed, tag="error", tag_field="type", kw_only=True):
    """The operation failed; ``error`` is the server's message."""

    type: ClassVar[str] = "error"
    error: str = ""


class CheckpointComplete(_Timed, tag="complete", tag_field="type", kw_only=True):
    """The operation succeeded (``data`` is a summary line)."""

    type: ClassVar[str] = "complete"
    data: str = ""


class OtherEvent(msgspec.Struct, kw_only=True):
    """An event of a type this SDK does not know (newer servers add some).

    Attributes:
        type: The event's ``type``.
        fields: The whole decoded line.
    """

    type: str
    fields: dict[str, Any]


CheckpointEvent = CheckpointInfo | CheckpointErrorEvent | CheckpointComplete | OtherEvent
"""What checkpoint and restore streams yield."""


class _TypeOnly(msgspec.Struct):
    type: str


_type_only_decoder = JSONDecoder(msgspec.json.Decoder(_TypeOnly))
_fields_decoder = JSONDecoder(msgspec.json.Decoder(dict[str, Any]))


class _EventDecoder:
    """Decodes NDJSON event lines of a tagged union; unknown types become :class:`OtherEvent`.

    A line of a known type that does not fit its Struct (a ``null`` array,
    a field of an odd type) is read field by field (:func:`salvage`); only
    one whose required fields cannot be read raises (and is skipped and
    logged by the NDJSON reader). ``decode_lines`` decodes a whole chunk in
    one msgspec call; the reader redoes a refused chunk line by line.
    """

    __slots__ = ("_classes", "_decoder", "_what", "decode_lines")

    def __init__(self, union: Any, known: frozenset[str], what: str) -> None:
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union)
        self._classes: dict[object, type[msgspec.Struct]] = {
            cls.__struct_config__.tag: cls for cls in typing.get_args(union)
        }
        assert set(self._classes) == known, (set(self._classes), known)
        self._what = what
        self.decode_lines = self._decoder.decode_lines

    def __call__(self, line: bytes) -> Any:
        try:
            return self._decoder.decode(line)
        except msgspec.ValidationError:
            typed = _type_only_decoder.decode(line)
            cls = self._classes.get(typed.type)
            if cls is not None:
                return salvage(decode_any(line), cls, f"{self._what} {typed.type!r} event")
            logger.debug("%s: unknown event type %r", self._what, typed.type)
            return OtherEvent(type=typed.type, fields=_fields_decoder.decode(line))
        except RecursionError as exc:  # msgspec's answer to JSON nested too deeply
            raise msgspec.DecodeError("JSON is nested too deeply") from exc


def event_decoder(union: Any, known: frozenset[str], what: str) -> Callable[[bytes], Any]:
    """One-line decoder (with a chunk fast path) for a tagged union of events."""
    return _EventDecoder(union, known, what)


_decode_event = event_decoder(
    CheckpointInfo | CheckpointErrorEvent | CheckpointComplete,
    frozenset({"info", "error", "complete"}),
    "checkpoint stream",
)


# ------------------------------------------------------------------ operation


class EventOperation(Generic[E, R]):
    """A server operation that streams NDJSON events: iterate it, or await it.

    * ``async for event in op`` yields typed events as each line arrives;
      a failure event, or an end without the final event, raises.
    * ``await op`` consumes the stream and returns the outcome.
    * ``async with op as events:`` releases the response on exit (use it
      when you may stop iterating early); :meth:`aclose` does the same.

    Closing early only stops the client; the server may finish the operation.
    Shared by checkpoint and service streams.
    """

    def __init__(
        self,
        stream: NDJSONStream[E, Any],
        *,
        on_event: Callable[[E], None],
        on_end: Callable[[], None],
        outcome: Callable[[], Awaitable[R]],
        quiet: frozenset[type] = frozenset(),
        on_batch: Callable[[list[E]], None] | None = None,
    ) -> None:
        self._stream = stream
        self._on_event = on_event
        self._on_end = on_end
        self._outcome = outcome
        # Event types ``on_event`` has nothing to do for (progress lines):
        # skipping the call matters when a stream carries many thousands.
        self._quiet = quiet
        # Sees the events of each decoded chunk at once, before they are
        # handed out (one call per chunk, not per event).
        self._on_batch = on_batch
        self._iter: AsyncGenerator[E, None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._stream!r}>"

    def __aiter__(self) -> AsyncGenerator[E, None]:
        # An async generator resumes much faster than a coroutine per
        # ``__anext__``; every ``async for`` over this operation shares it.
        if self._iter is None:
            self._iter = self._events()
        return self._iter

    def __anext__(self) -> Awaitable[E]:
        return self.__aiter__().__anext__()

    async def _events(self) -> AsyncGenerator[E, None]:
        stream = self._stream
        on_event = self._on_event
        on_batch = self._on_batch
        quiet = self._quiet
        try:
            while True:
                batch = await stream.next_batch()
                if not batch:
                    break
                if on_batch is not None:
                    on_batch(batch)
                if quiet.issuperset(map(type, batch)):
                    for event in batch:
                        yield event
                else:
                    for event in batch:
                        if type(event) not in quiet:
                            on_event(event)
                        yield event
            self._on_end()
        except Exception as exc:
            await stream._close(exc)  # the stream's span (if any) ends with it
            raise
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        """Release the response. Idempotent."""
        it = self._iter
        if it is not None and not getattr(it, "ag_running", False):
            await it.aclose()
        await self._stream.aclose()

    async def __aenter__(self) -> EventOperation[E, R]:
        _ = await self._stream.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _wait(self) -> R:
        async with self:
            async for _ in self:
                pass
        return await self._outcome()

    def __await__(self) -> Generator[Any, None, R]:
        return self._wait().__await__()


# ---------------------------------------------------------------------- model


class Checkpoint(msgspec.Struct, kw_only=True, dict=True):
    """A checkpoint (section 6.1); :attr:`raw` is the JSON object as received.

    Attributes:
        id: ``v0``, ``v1`` ..., ``auto-...``, or ``Current`` (the live state,
            only in a list asked to include it).
        create_time: When it was made (second precision).
        comment: The comment given at creation.
        is_auto: Made automatically by the platform.
        source_id: The checkpoint it derives from, when reported.
        history: Ids in its lineage (filled by :meth:`CheckpointsResource.get`).
        health: Empty or None when healthy; ``"mount_failed"`` otherwise.
    """

    id: str
    create_time: datetime | None = None
    comment: str | None = None
    is_auto: bool = False
    source_id: str | None = None
    history: list[str] = msgspec.field(default_factory=list)
    health: str | None = None

    @property
    def is_current(self) -> bool:
        """True for the ``Current`` pseudo-entry."""
        return self.id == CURRENT

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object this checkpoint was decoded from (``{}`` if built locally)."""
        return raw_of(self, self.id)


_checkpoint_decoder = LiberalDecoder(Checkpoint)
_list_typed = JSONDecoder(msgspec.json.Decoder(list[Checkpoint] | None))


def _decode_list(data: bytes) -> list[Checkpoint]:
    """A bare array of checkpoints (``null`` is empty); liberal as :func:`salvage_list`."""
    try:
        found = _list_typed.decode(data)
    except msgspec.ValidationError:
        return salvage_list(decode_any(data), Checkpoint, "checkpoints", "id")
    if found is None:
        return []
    share_raw(found, RawSource(data, None, "id"))
    return found


_CREATED_RE = re.compile(r"Checkpoint (\S+) created")
_ID_RE = re.compile(r"ID: (\S+)")


def checkpoint_id_from_events(events: list[CheckpointEvent]) -> str | None:
    """The new checkpoint's id as section 6.2 finds it, or None.

    First the ``complete`` line (``Checkpoint v3 created ...``), then an
    ``info`` line ``ID: v3``. The caller falls back to listing.
    """
    for event in events:
        if isinstance(event, CheckpointComplete):
            found = _CREATED_RE.search(event.data)
            if found:
                return found.group(1)
    for event in events:
        if isinstance(event, CheckpointInfo):
            found = _ID_RE.search(event.data)
            if found:
                return found.group(1)
    return None


def _check_id(checkpoint_id: object) -> str:
    if not isinstance(checkpoint_id, str):
        raise TypeError(f"a checkpoint id must be a str, not {type(checkpoint_id).__name__}")
    if not checkpoint_id or "\x00" in checkpoint_id:
        raise ValueError(f"invalid checkpoint id {checkpoint_id!r}")
    return checkpoint_id


def _time_key(cp: Checkpoint) -> float:
    return cp.create_time.timestamp() if cp.create_time else 0.0


def _newest(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    real = [cp for cp in checkpoints if not cp.is_current]
    if real and all(cp.create_time is not None for cp in real):
        # The list is newest first; a stable sort by time keeps that order
        # among checkpoints made within the same second.
        real.sort(key=_time_key, reverse=True)
    return real[0] if real else None


# ------------------------------------------------------------------- resource


class CheckpointsResource:
    """Checkpoints of one sprite: ``sprite.checkpoints``."""

    def __init__(self, sprite: Sprite) -> None:
        self._sprite = sprite

    def __repr__(self) -> str:
        return f"<CheckpointsResource sprite={self._sprite.name!r}>"

    def create(
        self,
        comment: str | None = None,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[CheckpointEvent, Checkpoint]:
        """Checkpoint the sprite's filesystem; iterate for progress, await for the checkpoint.

        The new id is read from the stream (``Checkpoint vN created``, else
        ``ID: vN``); if neither line came, the newest checkpoint in the list
        is taken. Awaiting returns the full :class:`Checkpoint` (one more
        request).

        Raises:
            CheckpointError: The stream reported an error or ended early.
        """
        if comment is not None and not isinstance(comment, str):
            raise TypeError("comment must be a str")
        sprite = self._sprite
        body = {"comment": comment} if comment else {}
        operation = "create checkpoint"
        stream: NDJSONStream[CheckpointEvent, Any] = NDJSONStream(
            sprite.client,
            "POST",
            sprite.path + "/checkpoint",
            decoder=_decode_event,
            operation=operation,
            sprite=sprite.name,
            json=msgspec.json.encode(body),
            idempotent=False,
            options=request_options(extra_headers, extra_query, extra_body),
        )
        seen: deque[CheckpointEvent] = deque(maxlen=_ID_WINDOW)
        tracker = _Tracker(operation, sprite.name, None, seen)

        async def outcome() -> Checkpoint:
            tracker.check_complete()
            found = checkpoint_id_from_events(list(seen))
            if found is not None:
                return await self.get(found, extra_headers=extra_headers, extra_query=extra_query)
            newest = _newest(await self.list(extra_headers=extra_headers, extra_query=extra_query))
            if newest is None:
                raise CheckpointError(
                    "the checkpoint was made but its id is not in the stream or the list",
                    operation=operation,
                    sprite=sprite.name,
                )
            return newest

        return EventOperation(
            stream,
            on_event=tracker.on_event,
            on_end=tracker.on_end,
            outcome=outcome,
            quiet=_QUIET,
            on_batch=tracker.on_batch,
        )

    def restore(
        self,
        checkpoint_id: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> EventOperation[CheckpointEvent, None]:
        """Restore the sprite's filesystem from a checkpoint.

        All exec sessions end and the environment restarts; the first calls
        afterwards may need the SDK's retries while the sprite comes back.

        Raises:
            CheckpointError: An ``error`` event (an unknown id is reported
                this way, with status 200) or an end without ``complete``.
        """
        checkpoint_id = _check_id(checkpoint_id)
        sprite = self._sprite
        operation = "restore checkpoint"
        stream: NDJSONStream[CheckpointEvent, Any] = NDJSONStream(
            sprite.client,
            "POST",
            f"{sprite.path}/checkpoints/{quote_segment(checkpoint_id)}/restore",
            decoder=_decode_event,
            operation=operation,
            sprite=sprite.name,
            idempotent=False,  # a second restore would restart it again and drop later writes
            options=request_options(extra_headers, extra_query, extra_body),
        )
        tracker = _Tracker(operation, sprite.name, checkpoint_id, None)

        async def outcome() -> None:
            tracker.check_complete()

        return EventOperation(
            stream,
            on_event=tracker.on_event,
            on_end=tracker.on_end,
            outcome=outcome,
            quiet=_QUIET,
        )

    async def list(
        self,
        *,
        include_auto: bool = False,
        include_current: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> list[Checkpoint]:
        """The sprite's checkpoints, newest first.

        Args:
            include_auto: Include the platform's automatic ``auto-...`` checkpoints.
            include_current: Keep the ``Current`` pseudo-entry (the live state).
        """
        sprite = self._sprite
        params = [("includeAuto", "true")] if include_auto else None
        resp = await sprite.client._request(
            "GET",
            sprite.path + "/checkpoints",
            operation="list checkpoints",
            sprite=sprite.name,
            params=params,
            timeout="wake",
            options=request_options(extra_headers, extra_query, extra_body),
        )
        found = resp.parse(_decode_list)
        return [
            cp
            for cp in found
            if (include_current or not cp.is_current) and (include_auto or not cp.is_auto)
        ]

    async def get(
        self,
        checkpoint_id: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> Checkpoint:
        """One checkpoint, with its lineage.

        Raises:
            CheckpointNotFoundError: No such checkpoint (404, or the 500
                "... not found" the service answers).
            NotFoundError: No such sprite.
        """
        checkpoint_id = _check_id(checkpoint_id)
        sprite = self._sprite
        try:
            resp = await sprite.client._request(
                "GET",
                f"{sprite.path}/checkpoints/{quote_segment(checkpoint_id)}",
                operation="get checkpoint",
                sprite=sprite.name,
                timeout="wake",
                options=request_options(extra_headers, extra_query, extra_body),
            )
        except APIError as exc:
            raise _not_found(exc) from exc
        return resp.parse(_checkpoint_decoder.decode)

    async def delete(
        self,
        checkpoint_id: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Delete a checkpoint.

        Raises:
            ConflictError: It is the active checkpoint (or ``Current``).
            CheckpointNotFoundError: No such checkpoint.
        """
        checkpoint_id = _check_id(checkpoint_id)
        sprite = self._sprite
        try:
            await sprite.client._request(
                "DELETE",
                f"{sprite.path}/checkpoints/{quote_segment(checkpoint_id)}",
                operation="delete checkpoint",
                sprite=sprite.name,
                timeout="wake",
                options=request_options(extra_headers, extra_query, extra_body),
            )
        except APIError as exc:
            raise _not_found(exc) from exc

    @asynccontextmanager
    async def guard(
        self,
        comment: str | None = None,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncIterator[Checkpoint]:
        """Checkpoint on entry; if the block raises, restore that checkpoint and re-raise.

        Nothing happens on success (the checkpoint stays). Cancellation
        counts as a failure: the restore runs before the cancellation
        propagates. If the restore itself fails, :class:`CheckpointError`
        is raised from it (the block's error is its context).
        """
        checkpoint = await self.create(
            comment=comment,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
        try:
            yield checkpoint
        except GeneratorExit:
            raise
        except BaseException as exc:
            try:
                await self.restore(
                    checkpoint.id, extra_headers=extra_headers, extra_query=extra_query
                )
            except Exception as restore_exc:
                raise CheckpointError(
                    f"the block failed ({exc!r}) and restoring {checkpoint.id} failed too: "
                    f"{restore_exc}",
                    operation="restore checkpoint",
                    sprite=self._sprite.name,
                    checkpoint_id=checkpoint.id,
                ) from restore_exc
            raise


_ID_WINDOW = 256
"""How many of a create stream's last events are kept to find the new id in."""

_QUIET: frozenset[type] = frozenset({CheckpointInfo})
"""Progress lines: the tracker's ``on_event`` has nothing to do for them."""


class _Tracker:
    """Raises for ``error`` events and for streams that end without ``complete``."""

    def __init__(
        self,
        operation: str,
        sprite: str,
        checkpoint_id: str | None,
        seen: deque[CheckpointEvent] | None,
    ) -> None:
        self.operation = operation
        self.sprite = sprite
        self.checkpoint_id = checkpoint_id
        self.seen = seen
        self.complete = False

    def on_event(self, event: CheckpointEvent) -> None:
        """Every event but ``info`` (see :data:`QUIET`)."""
        if isinstance(event, CheckpointErrorEvent):
            raise CheckpointError(
                f"{self.operation} failed: {event.error or 'unknown error'}",
                operation=self.operation,
                sprite=self.sprite,
                checkpoint_id=self.checkpoint_id,
                server_message=event.error,
            )
        if isinstance(event, CheckpointComplete):
            self.complete = True

    def on_batch(self, batch: list[CheckpointEvent]) -> None:
        """Keep the stream's last events: the lines naming the new checkpoint.

        They come at its end (``ID: vN`` shortly before ``complete``, section
        6.2). A bounded window, filled at C speed, keeps a long progress
        stream from piling up in memory and from costing a check per line.
        """
        if self.seen is not None:
            self.seen.extend(batch)

    def on_end(self) -> None:
        self.check_complete()

    def check_complete(self) -> None:
        if not self.complete:
            raise CheckpointError(
                f"{self.operation}: the stream ended without a 'complete' event",
                operation=self.operation,
                sprite=self.sprite,
                checkpoint_id=self.checkpoint_id,
            )


def _not_found(exc: APIError) -> APIError:
    """Checkpoint-missing answers as :class:`CheckpointNotFoundError`; others unchanged."""
    if exc.status_code not in (404, 500) or exc.message.strip() == "sprite not found":
        return exc
    if exc.code == "route_not_found":  # an older server without the endpoint
        return exc
    if exc.status_code == 500 and "not found" not in exc.message.lower():
        return exc
    return CheckpointNotFoundError(
        exc.message,
        status_code=exc.status_code,
        code=exc.code,
        body=exc.body,
        headers=exc.headers,
        operation=exc.operation,
        sprite=exc.sprite,
    )
