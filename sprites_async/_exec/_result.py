"""The outcome of a finished command, and the one-shot runs: ``exec()`` and ``run_http()``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sprites_async import _frames
from sprites_async._config import control_enabled
from sprites_async._errors import (
    APIError,
    CommandFailedError,
    ExitStatusUnknownError,
)
from sprites_async._options import RequestOptions
from sprites_async._validation import check_max_output, check_stdin, check_timeout

from ._buffers import DEFAULT_MAX_OUTPUT, _Collector
from ._connection import _RetryDirect
from ._events import PortCallback
from ._handshake import open_session
from ._request import ExecRequest, Stdin, _start_error_of, _stdin_bytes
from ._session import ExecSession

if TYPE_CHECKING:
    from sprites_async._client import SpritesClient
    from sprites_async._sprites import Sprite

__all__ = ["ExecResult", "run", "run_http"]

logger = logging.getLogger("sprites_async")


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a finished command.

    Attributes:
        exit_code: 0-255 (signal deaths are reported by the server, e.g. 143 or 255).
        stdout: Captured stdout (TTY: the terminal output).
        stderr: Captured stderr (empty for TTY runs).
        stdout_dropped: Bytes of stdout beyond ``max_output`` (counted, not
            kept). When not 0, ``stdout`` is the first ``max_output // 2``
            bytes followed by the last ``max_output - max_output // 2``: the
            dropped bytes were between them.
        stderr_dropped: The same for stderr.
        session_id: The server's session id, when it was reported.
        argv: The command.
    """

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    session_id: str | None = None
    argv: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the exit code is 0."""
        return self.exit_code == 0

    @property
    def truncated(self) -> bool:
        """True when some output was beyond ``max_output`` and was not kept."""
        return bool(self.stdout_dropped or self.stderr_dropped)

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stderr.decode("utf-8", "replace")

    def text(self, encoding: str = "utf-8", errors: str = "replace") -> str:
        """stdout decoded."""
        return self.stdout.decode(encoding, errors)

    def check(self) -> ExecResult:
        """Return self, or raise :class:`CommandFailedError` if the exit code is not 0."""
        if self.exit_code != 0:
            raise CommandFailedError(self, argv=self.argv)
        return self


async def run(
    sprite: Sprite,
    argv: Sequence[object],
    *,
    env: Mapping[str, str] | None = None,
    env_replace: bool = False,
    cwd: str | None = None,
    stdin: Stdin = None,
    timeout: float | None = None,
    check: bool = False,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    tty: bool = False,
    on_port: PortCallback | None = None,
    control: bool | None = None,
    options: RequestOptions | None = None,
) -> ExecResult:
    """Run a command to completion (``sprite.exec``); see :meth:`Sprite.exec`."""
    request = ExecRequest.build(
        argv, env=env, env_replace=env_replace, cwd=cwd, tty=tty, stdin=stdin is not None
    )
    check_stdin(stdin)
    limit = check_max_output(max_output)
    seconds = check_timeout(timeout)
    # Stdin and TTY use a direct socket: how stdin frames travel over a
    # control socket is not documented; everything else may borrow one.
    use_control = (
        stdin is None
        and not tty
        and options is None
        and (control if control is not None else control_enabled(sprite.client))
    )
    for attempt in range(3):
        collector = _Collector(limit)
        proc = ExecSession(sprite, request, on_port=on_port, sink=collector.add, options=options)
        try:
            # start() stops what it may have started if it is cancelled;
            # complete() terminates on timeout or cancellation, and closes.
            if sprite.client._telemetry is None:
                # start() without its frame: one coroutine less per command
                # in flight (start() is for the span's sake otherwise).
                await open_session(proc, use_control)
            else:
                await proc.start(prefer_control=use_control)
            exit_code = await proc.complete(stdin, timeout=seconds)
        except _RetryDirect as exc:
            # Refused by op.error: it never ran, so another try is safe.
            logger.debug("control exec refused (%s); retrying", exc)
            if exc.direct or attempt >= 1:
                use_control = False
            continue
        except ExitStatusUnknownError as exc:
            # The output that did arrive belongs to the caller.
            exc.stdout = bytes(collector.value(1))
            exc.stderr = bytes(collector.value(2))
            raise
        result = ExecResult(
            exit_code=exit_code,
            stdout=bytes(collector.value(1)),
            stderr=bytes(collector.value(2)),
            stdout_dropped=collector.dropped(1),
            stderr_dropped=collector.dropped(2),
            session_id=proc.session_id,
            argv=request.argv,
        )
        if check:
            result.check()
        return result
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------- HTTP exec


async def run_http(
    sprite: Sprite,
    argv: Sequence[object],
    *,
    stdin: Stdin = None,
    env: Mapping[str, str] | None = None,
    env_replace: bool = False,
    cwd: str | None = None,
    check: bool = False,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    options: RequestOptions | None = None,
) -> ExecResult:
    """Run a command with ``POST /exec``; see :meth:`Sprite.run_http`."""
    request = ExecRequest.build(
        argv, env=env, env_replace=env_replace, cwd=cwd, stdin=stdin is not None
    )
    check_stdin(stdin)
    limit = check_max_output(max_output)
    body: Any = None
    if stdin is not None:
        data = _stdin_bytes(stdin)
        body = data if data is not None else stdin
    client = sprite.client
    path = sprite.path + "/exec"
    parser = _frames.HttpExecParser()
    collector = _Collector(limit)
    try:
        return await _run_http_stream(
            client, path, request, body, parser, collector, check, options, sprite
        )
    except APIError as exc:
        started = _start_error_of(exc, request, sprite.name, "exec (http)")
        if started is None:
            raise
        raise started from exc


async def _run_http_stream(
    client: SpritesClient,
    path: str,
    request: ExecRequest,
    body: Any,
    parser: _frames.HttpExecParser,
    collector: _Collector,
    check: bool,
    options: RequestOptions | None,
    sprite: Sprite,
) -> ExecResult:
    async with client._stream(
        "POST",
        path,
        operation="exec (http)",
        sprite=sprite.name,
        params=request.query(http=True),
        data=body,
        content_type="application/octet-stream" if body is not None else None,
        idempotent=False,
        options=options,
    ) as resp:
        pending = bytearray()
        # A reset or stall while reading raises the seam's typed error.
        async for data, end_of_chunk in resp.iter_chunks():
            pending += data
            if end_of_chunk and pending:
                for stream, piece in parser.feed(bytes(pending)):
                    collector.add(stream, piece)
                pending.clear()
        if pending:
            for stream, piece in parser.feed(bytes(pending)):
                collector.add(stream, piece)
    code, rest = parser.finish()
    for stream, piece in rest:
        collector.add(stream, piece)
    if code is None:
        raise ExitStatusUnknownError(
            "the HTTP exec response ended without an exit frame", sprite=sprite.name
        )
    result = ExecResult(
        exit_code=code,
        stdout=bytes(collector.value(1)),
        stderr=bytes(collector.value(2)),
        stdout_dropped=collector.dropped(1),
        stderr_dropped=collector.dropped(2),
        argv=request.argv,
    )
    if check:
        result.check()
    return result
