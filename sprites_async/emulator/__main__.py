"""``python -m sprites_async.emulator``: serve a local Sprites emulator until interrupted.

Prints the URL and token (and ``export`` lines for a shell) and how sprite
commands are sandboxed (a ``WARNING`` line when they are not), or with
``--json`` a single line ``{"url": ..., "token": ..., "pid": ...,
"sandboxed": ...}`` for scripts that start it as a subprocess (the warning
then goes to stderr). SIGINT and SIGTERM shut it down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import PROFILES, QUIRKS, Emulator


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m sprites_async.emulator",
        description="Run a local emulator of the Sprites API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--token", default=None, help="bearer token (default: generated)")
    parser.add_argument(
        "--state-dir", default=None, help="keep sprites here across runs (default: temporary)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="create N sprites")
    parser.add_argument(
        "--seed-prefix", default="sprite-", help="name prefix of seeded sprites (sprite-)"
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow binding a non-loopback address (anyone with the token runs commands)",
    )
    parser.add_argument(
        "--inline-exec",
        action="store_true",
        help="answer simple commands (echo, cat, exit K, sleep S) without real processes",
    )
    parser.add_argument(
        "--exit-linger",
        type=float,
        default=None,
        metavar="S",
        help="seconds exec sockets stay open after the exit frame (real service: 5)",
    )
    parser.add_argument("--warm-after", type=float, default=None, metavar="S")
    parser.add_argument("--cold-after", type=float, default=None, metavar="S")
    parser.add_argument(
        "--sandbox",
        choices=("auto", "required", "bwrap", "none"),
        default=None,
        help="auto (default): bubblewrap when it can run here, else unsandboxed with a "
        "warning; required: refuse to start without it; none: run sprite commands "
        "unsandboxed as the current user",
    )
    parser.add_argument(
        "--require-sandbox",
        action="store_true",
        help="same as --sandbox required: refuse to start without bubblewrap",
    )
    parser.add_argument(
        "--max-processes", type=int, default=None, metavar="N", help="per sprite (512)"
    )
    parser.add_argument(
        "--memory-limit", type=int, default=None, metavar="BYTES", help="per sprite (4 GiB)"
    )
    parser.add_argument(
        "--cpu-limit", type=float, default=None, metavar="CORES", help="per sprite (none)"
    )
    parser.add_argument(
        "--quirk",
        action="append",
        default=[],
        metavar="NAME",
        help="answer the way the real service has been seen to (repeatable; a quirk or a "
        "profile such as real-world; --list-quirks lists them)",
    )
    parser.add_argument(
        "--list-quirks", action="store_true", help="list the quirks and profiles, then exit"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.inline_exec:
        options["inline_exec"] = True
    if args.quirk:
        options["quirks"] = args.quirk
    if args.require_sandbox:
        if args.sandbox not in (None, "required", "bwrap"):
            raise ValueError(f"--require-sandbox contradicts --sandbox {args.sandbox}")
        options["sandbox"] = "required"
    for name in ("exit_linger", "warm_after", "cold_after", "sandbox"):
        if name == "sandbox" and args.require_sandbox:
            continue
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    for name in ("max_processes", "memory_limit", "cpu_limit"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value if value > 0 else None
    return options


async def serve(emulator: Emulator, args: argparse.Namespace) -> None:
    """Run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with emulator:
            if args.seed:
                emulator.seed(args.seed, prefix=args.seed_prefix)
            if args.json:
                if not emulator.sandboxed:
                    # stdout is one JSON line for a script; a person reads stderr.
                    print(emulator.sandbox_status, file=sys.stderr, flush=True)
                line = {
                    "url": emulator.url,
                    "token": emulator.token,
                    "pid": os.getpid(),
                    "sandboxed": emulator.sandboxed,
                }
                print(json.dumps(line), flush=True)
            else:
                status = emulator.sandbox_status
                print(f"Sprites emulator listening on {emulator.url}")
                print(f"Token: {emulator.token}")
                print(f"export SPRITES_API_URL={shlex.quote(emulator.url)}")
                print(f"export SPRITES_TOKEN={shlex.quote(emulator.token)}")
                print(status[0].upper() + status[1:], flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_quirks:
        for name, text in QUIRKS.items():
            print(f"{name}: {text}")
        for name, members in PROFILES.items():
            print(f"profile {name}: {', '.join(sorted(members))}")
        return 0
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        options = _options(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        emulator = Emulator(
            args.token,
            state_dir=args.state_dir,
            host=args.host,
            port=args.port,
            allow_non_loopback=args.allow_non_loopback,
            **options,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(emulator, args))
    except OSError as exc:
        # Typically the port is taken; a traceback would hide the one useful line.
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
