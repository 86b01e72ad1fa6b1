"""NDJSON streams: a pure line decoder, a response-owning stream, and typed event operations.

:class:`NDJSONDecoder` turns bytes, in whatever pieces they arrive, into
decoded objects: it buffers partial lines, strips ``\\r``, skips blank lines,
skips (and logs) lines it cannot decode, parses a last line without a
newline at the end, and has no line-length limit. A line that is not valid
JSON, or of a shape no decoder knows, is skipped alone: one bad line never
costs the events around it.

:class:`NDJSONStream` sends a request through ``client._stream`` and decodes
the body as it arrives into msgspec Structs (typically a tagged union on the
``type`` field, decoded by one reused ``msgspec.json.Decoder``). It is:

* an async iterator of events (``async for event in stream``);
* an async context manager that releases the response on exit, whatever
  happened;
* awaitable for its final result (``await stream``), when the endpoint has
  one.

:class:`EventOperation` is the public face of every such stream
(checkpoints, services, session kills): typed events when iterated, the
outcome when awaited. :func:`event_decoder` decodes a tagged union of
events, turning types this SDK does not know into :class:`OtherEvent`, and
:class:`EventTracker` reads an outcome from in-band ``error`` and
``complete`` events.
"""

from __future__ import annotations

import enum
import logging
import typing
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

from ._errors import APIError, StreamError
from ._models import DECODE_ERRORS, JSONDecoder, decode_any, salvage
from ._resource import AsyncResource

if TYPE_CHECKING:
    from ._body import Body
    from ._config import TimeoutKind
    from ._options import Params, RequestOptions
    from ._session import BaseClient

__all__ = [
    "NOT_FINAL",
    "EventOperation",
    "EventTracker",
    "NDJSONDecoder",
    "NDJSONStream",
    "NotFinal",
    "OtherEvent",
    "event_decoder",
]

logger = logging.getLogger("sprites_async")

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E")


PIECE_BYTES = 64 * 1024
"""At most this much of a read body is decoded at a time (whole lines; a longer line whole)."""


class NotFinal(enum.Enum):
    """Type of :data:`NOT_FINAL`."""

    NOT_FINAL = "not final"


NOT_FINAL = NotFinal.NOT_FINAL
"""What a stream's ``final`` hook returns for an event that does not end it."""


class NDJSONDecoder(Generic[T]):
    """Incremental NDJSON decoding: feed bytes, get objects.

    Args:
        decode: Decodes one line (without its newline), e.g. the ``decode``
            method of a reused ``msgspec.json.Decoder``.
        what: Names the stream in log lines about skipped lines.
        decode_lines: Optionally decodes many complete lines at once (the
            fast path for chunks that carry many events).

    Attributes:
        skipped: How many lines could not be decoded (and were skipped).
    """

    __slots__ = ("_decode", "_decode_lines", "_tail", "skipped", "what")

    def __init__(
        self,
        decode: Callable[[bytes], T],
        *,
        what: str = "NDJSON stream",
        decode_lines: Callable[[bytes | memoryview], list[T]] | None = None,
    ) -> None:
        self._decode = decode
        # Decodes every complete line of a chunk in one call (msgspec's
        # ``decode_lines``); a chunk it refuses is redone line by line, so a
        # bad or unknown line is skipped alone and never hides its neighbours.
        self._decode_lines = decode_lines
        # The start of a line whose newline has not come yet. Only it is
        # copied: the complete lines of a chunk are decoded in place.
        self._tail = bytearray()
        self.skipped = 0
        self.what = what

    def feed(self, data: bytes, start: int = 0, end: int | None = None) -> list[T]:
        """Add ``data[start:end]`` (read in place); return the objects of the lines it completed."""
        if end is None:
            end = len(data)
        tail = self._tail
        last = data.rfind(b"\n", start, end)
        if last < 0:
            tail += memoryview(data)[start:end]  # a long line in small pieces stays linear
            return []
        out: list[T] = []
        if tail:
            # The line begun in earlier pieces ends in this one: decode it
            # alone, so the rest of the chunk needs no copy.
            first = data.find(b"\n", start, end) + 1
            tail += memoryview(data)[start:first]
            head = bytes(tail)
            tail.clear()
            out = self._block(head)
            start = first
        stop = last + 1
        if start < stop:
            # Slicing would copy the chunk: tens of kilobytes when a stream
            # is busy, and at that size every copy is a fresh mmap whose
            # pages fault in. A view of it costs nothing.
            whole = start == 0 and stop == len(data)
            events = self._block(data if whole else memoryview(data)[start:stop])
            if out:
                out += events
            else:
                out = events
        if stop < end:
            tail += memoryview(data)[stop:end]
        return out

    def finish(self) -> list[T]:
        """End of input: decode a last line that had no newline."""
        out: list[T] = []
        if self._tail:
            line = bytes(self._tail)
            self._tail.clear()
            self._line(line, out)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return len(self._tail)

    def _block(self, block: bytes | memoryview) -> list[T]:
        """Decode complete lines (``block`` ends with a newline)."""
        if self._decode_lines is not None:
            try:
                return self._decode_lines(block)
            except DECODE_ERRORS:
                pass
        out: list[T] = []
        data = bytes(block)
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            self._line(data[pos:nl], out)
            pos = nl + 1
        return out

    def _line(self, line: bytes, out: list[T]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        try:
            out.append(self._decode(line))
        except msgspec.ValidationError as exc:
            # Valid JSON of a shape or type we do not know: newer servers add
            # event types, so this is expected and only worth a debug line.
            self.skipped += 1
            logger.debug("%s: skipping unrecognised line (%s): %.200r", self.what, exc, line)
        except DECODE_ERRORS as exc:
            self.skipped += 1
            logger.warning("%s: skipping malformed line (%s): %.200r", self.what, exc, line)


class NDJSONStream(AsyncResource, Generic[T, R]):
    """A streamed NDJSON response, decoded line by line as bytes arrive.

    Use it as ``async with stream: async for event in stream: ...``, or just
    ``await stream`` for the final result. Iterating without ``async with``
    works too: the response is released when the iteration ends or fails;
    call :meth:`aclose` if you stop early.

    Args:
        client: The client whose ``_stream`` seam sends the request.
        method, path: The request.
        decoder: Decodes one line into an event (one reused msgspec decoder).
        operation, sprite: For error messages.
        params, json, data, content_type, timeout, idempotent: Passed to
            ``client._stream``.
        final: Called on every event; returns the stream's result for the
            event that completes it, else :data:`NOT_FINAL`. It may raise
            (for example :class:`StreamError` for an in-band ``error`` event).
        require_final: If True, a body that ends without a final event raises
            :class:`StreamError`.
        on_api_error: Called when the request fails with an :class:`APIError`
            before the stream starts; returns a result to use instead (the
            stream then has no events), or re-raises.
    """

    def __init__(
        self,
        client: BaseClient,
        method: str,
        path: str,
        *,
        decoder: msgspec.json.Decoder[T] | JSONDecoder[T] | Callable[[bytes], T],
        operation: str,
        sprite: str | None = None,
        params: Params = None,
        json: bytes | None = None,
        data: Any = None,
        content_type: str | None = None,
        timeout: TimeoutKind = "stream",
        idempotent: bool | None = None,
        final: Callable[[T], R | NotFinal] | None = None,
        require_final: bool = False,
        on_api_error: Callable[[APIError], R] | None = None,
        options: RequestOptions | None = None,
    ) -> None:
        if isinstance(decoder, msgspec.json.Decoder):
            decoder = JSONDecoder(decoder)
        if isinstance(decoder, JSONDecoder):
            decode: Callable[[bytes], T] = decoder.decode
            decode_lines: Callable[[bytes | memoryview], list[T]] | None = decoder.decode_lines
        else:
            decode = decoder
            decode_lines = getattr(decoder, "decode_lines", None)
        self._client = client
        self._request: dict[str, Any] = {
            "operation": operation,
            "sprite": sprite,
            "params": params,
            "json": json,
            "data": data,
            "content_type": content_type,
            "timeout": timeout,
            "idempotent": idempotent,
            "options": options,
        }
        self._method = method
        self._path = path
        self._operation = operation
        self._sprite = sprite
        self._lines = NDJSONDecoder(decode, what=operation, decode_lines=decode_lines)
        self._final_hook = final
        self._require_final = require_final
        self._on_api_error = on_api_error
        self._cm: AbstractAsyncContextManager[Body] | None = None
        self._resp: Body | None = None
        self._pending: deque[T] = deque()
        # The body read last and how far it is decoded (see _next_piece).
        self._chunk = b""
        self._offset = 0
        self._started = False
        self._eof = False
        self._closed = False
        self._result: R | NotFinal = NOT_FINAL

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._started else "new"
        return f"<NDJSONStream {self._method} {self._path} {state}>"

    @property
    def done(self) -> bool:
        """True once a final event (or a substitute result) was seen."""
        return self._result is not NOT_FINAL

    @property
    def result(self) -> R:
        """The final result. Raises :class:`StreamError` if there is none (yet)."""
        if self._result is NOT_FINAL:
            raise StreamError(f"{self._operation}: the stream has no final result (yet)")
        return self._result

    @property
    def response(self) -> Body | None:
        """The HTTP response while the stream is open (status, headers)."""
        return self._resp

    async def _aopen(self) -> None:
        if self._started:
            return
        self._started = True
        cm = self._client._stream(self._method, self._path, **self._request)
        try:
            self._resp = await cm.__aenter__()
        except APIError as exc:
            if self._on_api_error is None:
                self._closed = True
                raise
            try:
                self._result = self._on_api_error(exc)
            finally:
                self._closed = True
            self._eof = True
            return
        except BaseException:
            self._closed = True
            raise
        self._cm = cm

    async def aclose(self) -> None:
        """Release the response. Idempotent; the server-side operation may go on."""
        await self._close(None)

    async def _close(self, error: BaseException | None) -> None:
        self._closed = True
        self._eof = True
        self._chunk = b""
        cm, self._cm = self._cm, None
        self._resp = None
        if cm is not None:
            if error is not None and self._client._telemetry is not None:
                # The stream's span ends with the error that ended the stream.
                await cm.__aexit__(type(error), error, error.__traceback__)
            else:
                await cm.__aexit__(None, None, None)

    def __aiter__(self) -> NDJSONStream[T, R]:
        return self

    async def next_batch(self) -> list[T]:
        """The events decoded from the next piece of the body; ``[]`` at its end.

        A chunk of many lines comes back as one list, so a wrapper can hand
        its events out without a coroutine per event. Errors and the end are
        handled as in ``async for``.
        """
        try:
            if self._pending:
                batch = list(self._pending)
                self._pending.clear()
            else:
                batch = []
                while not batch:
                    if self._eof:
                        await self._finish()
                        return batch
                    batch = await self._read_more()
            hook = self._final_hook
            if hook is not None:
                for event in batch:
                    outcome = hook(event)
                    if outcome is not NOT_FINAL:
                        self._result = outcome
            return batch
        except BaseException as exc:
            await self._close(exc)
            raise

    async def __anext__(self) -> T:
        try:
            while not self._pending:
                if self._eof:
                    await self._finish()
                    raise StopAsyncIteration
                self._pending.extend(await self._read_more())
            event = self._pending.popleft()
            if self._final_hook is not None:
                outcome = self._final_hook(event)
                if outcome is not NOT_FINAL:
                    self._result = outcome
            return event
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            await self._close(exc)
            raise

    async def _finish(self) -> None:
        await self.aclose()
        if self._require_final and self._result is NOT_FINAL:
            raise StreamError(f"{self._operation}: the stream ended without its final event")

    async def _read_more(self) -> list[T]:
        chunk = self._chunk
        if chunk:
            return self._next_piece(chunk)
        if not self._started:
            await self._aopen()
        resp = self._resp
        if resp is None:  # closed, or replaced by on_api_error
            self._eof = True
            return []
        chunk = await resp.readany()  # a reset or stall raises the seam's typed error
        if chunk:
            self._chunk = chunk
            self._offset = 0
            return self._next_piece(chunk)
        self._eof = True
        return self._lines.finish()

    def _next_piece(self, chunk: bytes) -> list[T]:
        """Decode the next lines of ``chunk``: up to :data:`PIECE_BYTES` of them.

        A reader that fell behind gets hundreds of kilobytes in one read;
        decoding them a piece at a time hands out the first events before
        the rest is decoded, and keeps one piece's events alive, not the
        chunk's. A line longer than a piece is decoded whole.
        """
        start = self._offset
        end = len(chunk)
        if end - start > PIECE_BYTES:
            limit = start + PIECE_BYTES
            cut = chunk.rfind(b"\n", start, limit) + 1 or chunk.find(b"\n", limit) + 1
            if cut:
                end = cut
        if end == len(chunk):
            self._chunk = b""
        self._offset = end
        return self._lines.feed(chunk, start, end)

    async def _run(self) -> R:
        async with self:
            async for _ in self:
                pass
        return self.result

    def __await__(self) -> Generator[Any, None, R]:
        return self._run().__await__()


# ---------------------------------------------------------------- typed events


class OtherEvent(msgspec.Struct, kw_only=True):
    """An event of a type this SDK does not know (newer servers add some).

    Attributes:
        type: The event's ``type``.
        fields: The whole decoded line.
    """

    type: str
    fields: dict[str, Any]


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
        self._decoder: JSONDecoder[Any] = JSONDecoder(msgspec.json.Decoder(union))
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


def event_decoder(union: Any, known: frozenset[str], what: str) -> Callable[[bytes], Any]:
    """One-line decoder (with a chunk fast path) for a tagged union of events."""
    return _EventDecoder(union, known, what)


class EventTracker(Generic[E]):
    """Reads an operation's outcome from its in-band events.

    A ``200`` stream can still fail: its failure event (class
    :attr:`failure`) raises at once, and a stream that ends without its
    completion event (class :attr:`completion`) raises when
    ``needs_complete`` is set. Subclasses name the two classes and build
    their error in :meth:`error`; :attr:`complete` keeps the completion event.
    """

    failure: ClassVar[type]
    completion: ClassVar[type]

    def __init__(self, operation: str, sprite: str, *, needs_complete: bool = True) -> None:
        self.operation = operation
        self.sprite = sprite
        self.needs_complete = needs_complete
        self.complete: E | None = None

    def error(self, message: str, *, server_message: str | None = None) -> Exception:
        """The exception for a failure, ``message`` saying what went wrong."""
        raise NotImplementedError

    def failure_text(self, event: E) -> str:
        """The server's message in a failure event."""
        raise NotImplementedError

    def on_event(self, event: E) -> None:
        """Raise for the failure event; keep the completion event."""
        if isinstance(event, self.failure):
            text = self.failure_text(event)
            raise self.error(text or "error", server_message=text)
        if isinstance(event, self.completion):
            self.complete = event

    def on_end(self) -> None:
        """Raise if the stream ended without its completion event (and needed one)."""
        if self.complete is None and self.needs_complete:
            raise self.error("the stream ended without a 'complete' event")


def _nothing(event: Any) -> None:
    pass


def _done() -> None:
    pass


class EventOperation(AsyncResource, Generic[E, R]):
    """A server operation that streams NDJSON events: iterate it, or await it.

    * ``async for event in op`` yields typed events as each line arrives;
      a failure event, or an end without the final event, raises.
    * ``await op`` consumes the stream and returns the outcome.
    * ``async with op as events:`` releases the response on exit (use it
      when you may stop iterating early); :meth:`aclose` does the same.

    Closing early only stops the client; the server may finish the operation.
    Checkpoint, service and session-kill calls all return one.
    """

    def __init__(
        self,
        stream: NDJSONStream[E, Any],
        *,
        on_event: Callable[[E], None] = _nothing,
        on_end: Callable[[], None] = _done,
        outcome: Callable[[], Awaitable[R]] | None = None,
        quiet: frozenset[type] = frozenset(),
        on_batch: Callable[[list[E]], None] | None = None,
    ) -> None:
        self._stream = stream
        self._on_event = on_event
        self._on_end = on_end
        # Without an outcome, awaiting returns the stream's final result.
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

    @property
    def result(self) -> Any:
        """What the stream's final event carried, once iteration has ended.

        For an operation without an outcome of its own (``sessions.kill``)
        this is what ``await`` returns. Raises :class:`StreamError` if the
        stream has not ended with its final event (yet).
        """
        return self._stream.result

    async def _aopen(self) -> None:
        await self._stream._aopen()

    async def aclose(self) -> None:
        """Release the response. Idempotent."""
        it = self._iter
        if it is not None and not getattr(it, "ag_running", False):
            await it.aclose()
        await self._stream.aclose()

    async def _wait(self) -> R:
        async with self:
            async for _ in self:
                pass
        if self._outcome is None:
            return typing.cast(R, self._stream.result)
        return await self._outcome()

    def __await__(self) -> Generator[Any, None, R]:
        return self._wait().__await__()
