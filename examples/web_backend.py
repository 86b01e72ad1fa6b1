"""An aiohttp web service that runs user code in a sprite and streams the output back.

    python examples/web_backend.py                # serve on http://127.0.0.1:8080
    curl -N --data-binary 'for i in range(3): print(i)' http://127.0.0.1:8080/run
    python examples/web_backend.py --self-test    # start, send one request, print, exit

``POST /run`` takes Python source as the body and answers with a chunked
``text/plain`` stream: the program's stdout and stderr as they are produced,
then a last line ``[exit N]``. The code runs in one sandbox sprite made when
the server starts and deleted when it stops; at most ``--max-concurrent``
programs run at once (the rest wait), each for at most ``--timeout``
seconds. A client that hangs up stops its program at once, even a silent
one: the server runs with ``handler_cancellation=True``, so aiohttp
cancels the handler when its client goes away, and leaving the
``async with sprite.process(...)`` block terminates the program in the
sandbox. (Without that flag aiohttp lets a handler run on until it next
writes, and a program that prints nothing would run until its timeout.)

Without SPRITES_TOKEN it runs against a local emulator (see ``_common.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from _common import Session, connect, note, run
from aiohttp import web

from sprites_async import Sprite
from sprites_async.fleet import temporary_sprite

SESSION_KEY: web.AppKey[Session] = web.AppKey("session", Session)
SPRITE_KEY: web.AppKey[Sprite] = web.AppKey("sprite", Sprite)
SLOTS_KEY: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)
TIMEOUT_KEY: web.AppKey[float] = web.AppKey("timeout", float)

MAX_CODE = 64 * 1024


async def run_code(request: web.Request) -> web.StreamResponse:
    """``POST /run``: stream the output of the posted Python code."""
    code = await request.content.read(MAX_CODE + 1)
    if len(code) > MAX_CODE:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_CODE, actual_size=len(code))
    if not code.strip():
        raise web.HTTPBadRequest(text="POST some Python code\n")
    sprite = request.app[SPRITE_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    async with request.app[SLOTS_KEY]:
        await response.prepare(request)
        # stdin=True: the program arrives on stdin, so it needs no file and no quoting.
        # Leaving the block early terminates the program: a timeout, a failed
        # write, or the cancellation aiohttp delivers when the client hangs up.
        async with sprite.process("python3", "-u", "-", stdin=True) as proc:
            await proc.write(code)
            await proc.close_stdin()

            async def relay() -> int:
                async for event in proc:
                    data = getattr(event, "data", None)  # output events carry bytes
                    if data:
                        await response.write(data)
                return await proc.wait()

            limit = request.app[TIMEOUT_KEY]
            try:
                exit_line = f"\n[exit {await asyncio.wait_for(relay(), limit)}]\n"
            except asyncio.TimeoutError:
                exit_line = f"\n[killed after {limit:g} s]\n"
            except ConnectionResetError:
                return response  # the client left mid-write; the block stops the program
    await response.write(exit_line.encode())
    await response.write_eof()
    return response


async def sandbox(app: web.Application) -> AsyncIterator[None]:
    """Create the sandbox sprite at startup; delete it at shutdown (even on Ctrl-C)."""
    session = app[SESSION_KEY]
    async with temporary_sprite(
        session.client, "web-sandbox-", labels=["web-demo"], limiter=session.limiter, ready=True
    ) as sprite:
        app[SPRITE_KEY] = sprite
        note(f"sandbox sprite {sprite.name} is ready")
        yield
        note(f"deleting sandbox sprite {sprite.name}")


def make_app(session: Session, *, max_concurrent: int, timeout: float) -> web.Application:
    """The web application."""
    app = web.Application()
    app[SESSION_KEY] = session
    app[SLOTS_KEY] = asyncio.Semaphore(max_concurrent)
    app[TIMEOUT_KEY] = timeout
    app.cleanup_ctx.append(sandbox)
    app.router.add_post("/run", run_code)
    return app


SELF_TEST_CODE = b"""\
import sys, time
for i in range(3):
    print(f"line {i}")
    time.sleep(0.3)
print("and a warning", file=sys.stderr)
sys.exit(3)
"""


async def self_test(url: str) -> bool:
    """Send one request and show the chunks as they arrive, with their arrival times."""
    note(f"POST {url}/run")
    started = time.monotonic()
    received = b""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/run", data=SELF_TEST_CODE) as resp,
    ):
        print(f"HTTP {resp.status} {resp.headers.get('Transfer-Encoding', '')}", flush=True)
        async for chunk in resp.content.iter_any():
            received += chunk
            for line in chunk.decode().splitlines():
                if line:
                    print(f"  +{time.monotonic() - started:5.2f}s  {line}", flush=True)
    expected = [b"line 0", b"line 1", b"line 2", b"and a warning", b"[exit 3]"]
    ok = resp.status == 200 and all(part in received for part in expected)
    print("self-test passed" if ok else "self-test FAILED", flush=True)
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per program")
    parser.add_argument(
        "--self-test", action="store_true", help="serve on a free port, send one request, exit"
    )
    args = parser.parse_args()
    async with connect() as session:
        app = make_app(session, max_concurrent=args.max_concurrent, timeout=args.timeout)
        # handler_cancellation: a client that hangs up cancels its handler (see run_code).
        runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, args.host, 0 if args.self_test else args.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}"
            if args.self_test:
                return 0 if await self_test(url) else 1
            note(f"listening on {url}  (try: curl -N --data-binary 'print(42)' {url}/run)")
            await asyncio.Event().wait()  # until Ctrl-C
        finally:
            await runner.cleanup()
    return 0


if __name__ == "__main__":
    run(main)
