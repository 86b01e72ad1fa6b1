"""A FastAPI service that runs commands in a sprite, with streamed output and per-request timeouts.

    pip install -e '.[fastapi]'
    python examples/fastapi_backend.py            # uvicorn on http://127.0.0.1:8000
    curl -X POST localhost:8000/run -H 'content-type: application/json' \\
         -d '{"cmd": ["sh", "-c", "echo hi; exit 3"], "timeout": 5}'
    curl -N -X POST localhost:8000/stream -H 'content-type: application/json' \\
         -d '{"cmd": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"]}'

``POST /run`` waits for the command and answers JSON: ``exit_code``, ``stdout``,
``stderr`` (at most ``MAX_OUTPUT`` bytes each, ``truncated`` when more was
produced). A command still running after its ``timeout`` is killed in the
sprite and the answer is a 504 with a JSON ``error``; a failure of the
Sprites API is a 502 saying what failed, with its request id.

``POST /stream`` answers a chunked ``text/plain`` stream: stdout and stderr as
they are produced, then a last line ``[exit N]``, or ``[timed out after S s]``
once the command has been killed, or ``[error: ...]`` (the 200 status is sent
before the output, so the end of the stream is where a timeout or an API
failure can be told). When the HTTP
client goes away the command is ended in the sprite: Starlette cancels the
response's iterator (uvicorn; with a server of ASGI spec 2.4 at the next
write) and leaving ``sprite.process()`` sends TERM, then KILL.

The client is made in the app's lifespan, with one sandbox sprite that is
deleted when the server stops. Every request names its own ``timeout``
(seconds, at most ``MAX_TIMEOUT``). Without SPRITES_TOKEN it runs against a
local emulator (see ``_common.py``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from _common import connect, note
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from sprites_async import (
    APIError,
    CommandTimeoutError,
    Sprite,
    SpritesError,
)
from sprites_async.fleet import temporary_sprite
from sprites_async.types import OutputEvent

MAX_OUTPUT = 1 << 20
MAX_TIMEOUT = 300.0
# Output chunks waiting for a slow HTTP client; beyond that the command's
# output is not read, so the sprite slows down instead of this server's memory growing.
QUEUED_CHUNKS = 16


class RunRequest(BaseModel):
    """A command to run in the sandbox sprite."""

    cmd: list[str] = Field(min_length=1, description="argv; no shell unless you name one")
    stdin: str | None = Field(default=None, description="text sent to the command's stdin")
    timeout: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT, description="seconds")


class RunResult(BaseModel):
    """The outcome of ``POST /run``."""

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client and one sandbox sprite for the app's lifetime; both gone at shutdown."""
    async with (
        connect() as session,
        temporary_sprite(
            session.client,
            "api-sandbox-",
            labels=["fastapi-demo"],
            limiter=session.limiter,
            ready=True,
        ) as sprite,
    ):
        app.state.sprite = sprite
        note(f"sandbox sprite {sprite.name} is ready")
        yield
        note(f"deleting sandbox sprite {sprite.name}")


def sandbox(request: Request) -> Sprite:
    """The app's sandbox sprite."""
    sprite: Sprite = request.app.state.sprite
    return sprite


async def api_failed(request: Request, exc: Exception) -> JSONResponse:
    """Any SDK error: 502 (the fault is upstream), with what the SDK knows about it."""
    assert isinstance(exc, SpritesError)
    body: dict[str, object] = {"error": type(exc).__name__, "detail": str(exc)}
    if isinstance(exc, APIError):
        body["upstream_status"] = exc.status_code
        body["request_id"] = exc.request_id
    return JSONResponse(body, status_code=502)


async def timed_out(request: Request, exc: Exception) -> JSONResponse:
    """A command past its request's timeout (already killed by the SDK): 504."""
    assert isinstance(exc, CommandTimeoutError)
    detail = f"the command ran longer than {exc.timeout:g} s and was killed"
    return JSONResponse({"error": "timeout", "detail": detail}, status_code=504)


async def run_command(body: RunRequest, request: Request) -> RunResult:
    """``POST /run``: run to completion (or timeout), answer the captured output."""
    result = await sandbox(request).exec(
        *body.cmd, stdin=body.stdin, timeout=body.timeout, max_output=MAX_OUTPUT
    )
    return RunResult(
        exit_code=result.exit_code,
        stdout=result.stdout.decode(errors="replace"),
        stderr=result.stderr.decode(errors="replace"),
        truncated=result.truncated,
    )


async def stream_output(sprite: Sprite, body: RunRequest) -> AsyncIterator[bytes]:
    """The command's output as it comes, then its exit (or timeout) line.

    A task moves output events into a small queue and this generator waits on
    the queue with the time left, so the timeout holds whether or not the HTTP
    client reads. However the generator leaves the ``sprite.process()`` block
    (timed out, or cancelled because the client went away), a command that
    still runs is stopped there (TERM, then KILL) before anything else happens.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.timeout
    end = f"\n[timed out after {body.timeout:g} s]\n"
    try:
        async with sprite.process(*body.cmd, stdin=body.stdin is not None) as proc:
            if body.stdin is not None:
                await proc.write(body.stdin.encode())
                await proc.close_stdin()
            chunks: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_CHUNKS)

            async def pump() -> None:
                try:
                    async for event in proc:
                        if isinstance(event, OutputEvent) and event.data:
                            await chunks.put(event.data)
                except Exception:
                    await chunks.put(None)  # the error is read from the task
                    raise
                await chunks.put(None)

            pumping = asyncio.create_task(pump())
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(chunks.get(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break  # leaving the block kills the command
                    if chunk is None:
                        await pumping  # raises what ended the output early, if anything
                        end = f"\n[exit {await proc.wait()}]\n"
                        break
                    yield chunk
            finally:
                pumping.cancel()
                await asyncio.gather(pumping, return_exceptions=True)
    except SpritesError as exc:
        # The 200 went out before the command started, so an API failure (the
        # sprite is gone) or a lost connection (exit unknown: never made up)
        # can only be told here.
        end = f"\n[error: {exc}]\n"
    yield end.encode()


async def stream_command(body: RunRequest, request: Request) -> StreamingResponse:
    """``POST /stream``: stream the output of a command."""
    return StreamingResponse(
        stream_output(sandbox(request), body), media_type="text/plain; charset=utf-8"
    )


def create_app() -> FastAPI:
    """The application (the sprite is made when it starts serving)."""
    app = FastAPI(title="sprites-async FastAPI example", lifespan=lifespan)
    app.add_exception_handler(CommandTimeoutError, timed_out)
    app.add_exception_handler(SpritesError, api_failed)
    app.post("/run", response_model=RunResult)(run_command)
    app.post("/stream", response_class=StreamingResponse)(stream_command)
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # uvicorn handles Ctrl-C itself and runs the lifespan's cleanup (the sprite is deleted).
    uvicorn.run(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
