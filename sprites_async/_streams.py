"""NDJSON streams (Section 6.7): a pure line decoder and a response-owning stream.

:class:`NDJSONDecoder` turns bytes, in whatever pieces they arrive, into
decoded objects: it buffers partial lines, strips ``\\r``, skips blank lines,
skips (and logs) lines it cannot decode, parses a last line without a
newline at the end, and has no line-length limit.

:class:`NDJSONStream` sends a request through ``client._stream`` and decodes
the body as it arrives into msgspec Structs (typically a tagged union on the
``type`` field, decoded by one reused ``msgspec.json.Decoder``). It is:

* an async iterator of events (``async for event in stream``);
* an async context manager that releases the response on exit, whatever
  happened;
* awaitable for its final result (``await stream``), when the endpoint has
  one — for example the exit code a kill stream ends with.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Generator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from ._errors import APIError, StreamError

if TYPE_CHECKING:
    from ._config import TimeoutKind
    from ._session import BaseClient, Body, Params, RequestOptions

__all__ = ["NOT_FINAL", "NDJSONDecoder", "NDJSONStream", "NotFinal"]

logger = logging.getLogger("sprites_async")

T = TypeVar("T")
R = TypeVar("R")


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

    __slots__ = ("_buf", "_decode", "_decode_lines", "_scan", "skipped", "what")

    def __init__(
        self,
        decode: Callable[[bytes], T],
        *,
        what: str = "NDJSON stream",
        decode_lines: Callable[[bytes], list[T]] | None = None,
    ) -> None:
        self._decode = decode
        # Decodes every complete line of a chunk in one call (msgspec's
        # ``decode_lines``); a chunk it refuses is redone line by line, so a
        # bad or unknown line is skipped alone and never hides its neighbours.
        self._decode_lines = decode_lines
        self._buf = bytearray()
        # Where the newline search resumes: a long line arriving in many
        # small pieces must not be rescanned from its start each time.
        self._scan = 0
        self.skipped = 0
        self.what = what

    def feed(self, data: bytes) -> list[T]:
        """Add bytes; return the objects of every line they completed."""
        out: list[T] = []
        if not data:
            return out
        buf = self._buf
        buf += data
        if self._decode_lines is not None:
            last = buf.rfind(b"\n", self._scan)
            if last < 0:
                self._scan = len(buf)
                return out
            block = bytes(buf[: last + 1])
            del buf[: last + 1]
            self._scan = len(buf)
            try:
                return self._decode_lines(block)
            except (msgspec.DecodeError, ValueError, RecursionError):
                pass
            for line in block.split(b"\n")[:-1]:
                self._line(line, out)
            return out
        pos = 0
        scan = self._scan
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                break
            self._line(bytes(buf[pos:nl]), out)
            pos = scan = nl + 1
        if pos:
            del buf[:pos]
        self._scan = len(buf)
        return out

    def finish(self) -> list[T]:
        """End of input: decode a last line that had no newline."""
        out: list[T] = []
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._scan = 0
            self._line(line, out)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return len(self._buf)

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
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            # RecursionError: msgspec's answer to JSON nested too deeply.
            self.skipped += 1
            logger.warning("%s: skipping malformed line (%s): %.200r", self.what, exc, line)


class NDJSONStream(Generic[T, R]):
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
        decoder: msgspec.json.Decoder[T] | Callable[[bytes], T],
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
            decode: Callable[[bytes], T] = decoder.decode
            decode_lines: Callable[[bytes], list[T]] | None = decoder.decode_lines
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

    async def _open(self) -> None:
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
        cm, self._cm = self._cm, None
        self._resp = None
        if cm is not None:
            if error is not None and self._client._telemetry is not None:
                # The stream's span ends with the error that ended the stream.
                await cm.__aexit__(type(error), error, error.__traceback__)
            else:
                await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> NDJSONStream[T, R]:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
        await self._open()
        resp = self._resp
        if resp is None:  # closed, or replaced by on_api_error
            self._eof = True
            return []
        chunk = await resp.readany()  # a reset or stall raises the seam's typed error
        if chunk:
            return self._lines.feed(chunk)
        self._eof = True
        return self._lines.finish()

    async def _run(self) -> R:
        async with self:
            async for _ in self:
                pass
        return self.result

    def __await__(self) -> Generator[Any, None, R]:
        return self._run().__await__()
