"""Checkpoints: create, list, get, restore, delete, and a restore-on-error guard.

``create`` and ``restore`` stream NDJSON progress events. They return an
:class:`EventOperation`, which is both an async iterator of typed events
(decoded line by line as the bytes arrive) and awaitable for the outcome::

    cp = await sprite.checkpoints.create(comment="before upgrade")
    async for event in sprite.checkpoints.restore(cp.id):
        print(event)

A ``200`` stream can still fail: an ``error`` event raises
:class:`CheckpointError` with the server's message, and so does a stream
that ends without its ``complete`` event: a checkpoint is made only if the
server said so.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from ._errors import APIError, NotFoundError, StreamError, missing_as
from ._models import (
    JSONDecoder,
    LiberalDecoder,
    RawSource,
    decode_any,
    raw_of,
    salvage_list,
    share_raw,
)
from ._options import (
    ExtraBody,
    ExtraHeaders,
    ExtraQuery,
    RequestOptions,
    quote_segment,
    request_options,
)
from ._paging import AsyncPaginator, ListPage
from ._resource import SpriteResource
from ._session import Response
from ._streams import EventOperation, EventTracker, NDJSONStream, OtherEvent, event_decoder
from ._validation import check_id

__all__ = [
    "Checkpoint",
    "CheckpointComplete",
    "CheckpointError",
    "CheckpointErrorEvent",
    "CheckpointEvent",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointsResource",
]

CURRENT = "Current"
"""The pseudo-id the list uses for the live state."""

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


CheckpointEvent = CheckpointInfo | CheckpointErrorEvent | CheckpointComplete | OtherEvent
"""What checkpoint and restore streams yield."""


_decode_event = event_decoder(
    CheckpointInfo | CheckpointErrorEvent | CheckpointComplete,
    frozenset({"info", "error", "complete"}),
    "checkpoint stream",
)


# ---------------------------------------------------------------------- model


class Checkpoint(msgspec.Struct, kw_only=True, dict=True):
    """A checkpoint of a sprite's filesystem; :attr:`raw` is the JSON object as received.

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
    """The new checkpoint's id as the create stream names it, or None.

    First the ``complete`` line (``Checkpoint v3 created ...``), then an
    ``info`` line ``ID: v3``; servers send one or both, near the stream's
    end. The caller falls back to listing.
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


class CheckpointsResource(SpriteResource):
    """Checkpoints of one sprite: ``sprite.checkpoints``."""

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
            tracker.on_end()
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
        checkpoint_id = check_id(checkpoint_id, "checkpoint id")
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
            tracker.on_end()

        return EventOperation(
            stream,
            on_event=tracker.on_event,
            on_end=tracker.on_end,
            outcome=outcome,
            quiet=_QUIET,
        )

    def list(
        self,
        *,
        include_auto: bool = False,
        include_current: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncPaginator[Checkpoint, ListPage[Checkpoint]]:
        """The sprite's checkpoints, newest first: ``await`` it, or ``async for`` it.

        The server answers in one piece, so awaiting gives the one page
        there is, a :class:`ListPage` (a ``list`` of :class:`Checkpoint`).

        Args:
            include_auto: Include the platform's automatic ``auto-...`` checkpoints.
            include_current: Keep the ``Current`` pseudo-entry (the live state).
        """
        sprite = self._sprite
        params = [("includeAuto", "true")] if include_auto else None
        options = request_options(extra_headers, extra_query, extra_body)

        async def fetch(token: str | None) -> ListPage[Checkpoint]:
            resp = await sprite.client._request(
                "GET",
                sprite.path + "/checkpoints",
                operation="list checkpoints",
                sprite=sprite.name,
                params=params,
                timeout="wake",
                options=options,
            )
            return ListPage(
                cp
                for cp in resp.parse(_decode_list)
                if (include_current or not cp.is_current) and (include_auto or not cp.is_auto)
            )

        return AsyncPaginator(fetch)

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
        options = request_options(extra_headers, extra_query, extra_body)
        resp = await self._one("GET", checkpoint_id, "get checkpoint", options)
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
        options = request_options(extra_headers, extra_query, extra_body)
        await self._one("DELETE", checkpoint_id, "delete checkpoint", options)

    async def _one(
        self, method: str, checkpoint_id: str, operation: str, options: RequestOptions | None
    ) -> Response:
        """A request about one checkpoint; a missing one raises :class:`CheckpointNotFoundError`."""
        checkpoint_id = check_id(checkpoint_id, "checkpoint id")
        sprite = self._sprite
        try:
            return await sprite.client._request(
                method,
                f"{sprite.path}/checkpoints/{quote_segment(checkpoint_id)}",
                operation=operation,
                sprite=sprite.name,
                timeout="wake",
                options=options,
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


class _Tracker(EventTracker[CheckpointEvent]):
    """Raises for ``error`` events and for streams that end without ``complete``."""

    failure: ClassVar[type] = CheckpointErrorEvent
    completion: ClassVar[type] = CheckpointComplete

    def __init__(
        self,
        operation: str,
        sprite: str,
        checkpoint_id: str | None,
        seen: deque[CheckpointEvent] | None,
    ) -> None:
        super().__init__(operation, sprite)
        self.checkpoint_id = checkpoint_id
        self.seen = seen

    def error(self, message: str, *, server_message: str | None = None) -> CheckpointError:
        return CheckpointError(
            f"{self.operation}: {message}",
            operation=self.operation,
            sprite=self.sprite,
            checkpoint_id=self.checkpoint_id,
            server_message=server_message,
        )

    def failure_text(self, event: CheckpointEvent) -> str:
        assert isinstance(event, CheckpointErrorEvent)
        return event.error

    def on_batch(self, batch: list[CheckpointEvent]) -> None:
        """Keep the stream's last events: the lines naming the new checkpoint.

        They come at its end (``ID: vN`` shortly before ``complete``). A
        bounded window, filled at C speed, keeps a long progress stream from
        piling up in memory and from costing a check per line.
        """
        if self.seen is not None:
            self.seen.extend(batch)


def _not_found(exc: APIError) -> APIError:
    """A missing checkpoint (a 404, or the service's 500) as :class:`CheckpointNotFoundError`."""
    return missing_as(exc, CheckpointNotFoundError, not_found_500=True)
