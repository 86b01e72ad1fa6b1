"""``sprites-async`` / ``python -m sprites_async``: the command-line tool.

Configuration comes from the environment: the token from ``SPRITES_TOKEN``
(or ``SPRITE_TOKEN``), the API from ``SPRITES_API_URL``. The sprite a command
acts on is its ``NAME`` argument, else ``--sprite``, else the ``.sprite``
file (``{"organization": ..., "sprite": ...}``) in the current folder or the
nearest parent. ``--emulator`` runs the command against a throw-away local
emulator; ``sprites-async emulator`` serves one that lives on.

Exit statuses: 0 success; ``exec`` and ``console`` exit with the command's
own status, or as a shell does when the sprite cannot start it (127 no
such command, 126 not executable or no such working directory); 1 the API
answered with an error; 2 usage or configuration error; 3 the API could
not be reached (connection, DNS, timeout); 130 interrupted. When the reader
of stdout goes away (``sprites-async list | head -1``), the tool stops
quietly as ``cat`` does: any running command is terminated, then it dies of
SIGPIPE (a shell reports 141); ``main(argv)`` called from Python returns 141
instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

from sprites_async._errors import (
    APIError,
    CommandStartError,
    ConfigurationError,
    ExitStatusUnknownError,
    SpritesConnectionError,
    SpritesError,
)
from sprites_async._transport import BASE_URL_ENV_VAR
from sprites_async._version import __version__

from ._context import EXIT_API as EXIT_API
from ._context import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    PROG,
    Context,
    Handler,
    UsageError,
    find_sprite_file,
    read_sprite_file,
    token_from_env,
)
from ._context import EXIT_CONNECTION as EXIT_CONNECTION
from ._context import EXIT_OK as EXIT_OK
from ._context import EXIT_USAGE as EXIT_USAGE
from ._layout import place_words
from ._output import Output

__all__ = ["EXIT_API", "EXIT_CONNECTION", "EXIT_OK", "EXIT_USAGE", "main"]


EPILOG = """\
environment:
  SPRITES_TOKEN (or SPRITE_TOKEN)  the API token (never printed)
  SPRITES_API_URL                  the API (default https://api.sprites.dev)

the sprite to act on: NAME, else --sprite, else a .sprite file
  ({"organization": "...", "sprite": "..."}) here or in a parent folder

exit status: 0 ok, 1 API error, 2 usage error, 3 cannot reach the API,
  130 interrupted; exec and console exit with the command's own status

options may come before or after the sprite's NAME; a command to run goes
  after -- (or after NAME: `exec demo ls -la`); see COMMAND --help

examples:
  $ sprites-async --emulator doctor  # against a throw-away emulator
  $ sprites-async emulator --port 0  # until Ctrl-C; keeps state, prints two
                                     # `export` lines: run them in another shell
  $ sprites-async create mybox
  $ sprites-async exec mybox -- uname -a
"""


# ---------------------------------------------------------------------- parser


def _add_sprite_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # On subcommands the default is SUPPRESS so that a value given before the
    # subcommand is not overwritten by the subcommand's own default.
    parser.add_argument(
        "-s",
        "--sprite",
        metavar="NAME",
        default=None if top else argparse.SUPPRESS,
        help="the sprite to act on (default: the .sprite file)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    from . import _commands, _doctor, _terminal

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage Sprites (sprites.dev) from the shell.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_sprite_option(parser, top=True)
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="run against a throw-away local emulator (nothing is kept)",
    )
    parser.add_argument(
        "--api-url", metavar="URL", help=f"API base URL (default: ${BASE_URL_ENV_VAR})"
    )
    parser.add_argument("--debug", action="store_true", help="log HTTP requests to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_sprite_option(p)
        p.set_defaults(handler=handler, parser=p)
        return p

    _commands.add_commands(command)
    _terminal.add_commands(command)
    _doctor.add_commands(command)
    emulator = sub.add_parser(
        "emulator",
        help="serve a local emulator (see `sprites-async emulator --help`)",
        add_help=False,
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    return parser


# ------------------------------------------------------------------------ main


COMMAND_TAKING: dict[tuple[str, ...], int] = {
    ("exec",): 1,
    ("services", "create"): 1,
    ("fleet", "exec"): 0,
}
"""Commands that end with a command line, and how many words of ours may precede it.

``exec [NAME] -- CMD``, ``services create SERVICE -- CMD``, ``fleet exec -- CMD``.
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` that take a value (``-w DIR``)."""
    return {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}


def _split_command(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[list[str], list[str] | None]:
    """Set aside the command line of ``exec``, ``services create`` and ``fleet exec``.

    argparse cannot tell our options and words from the command's, so the
    command is found first: everything after ``--``, or, without ``--``,
    everything from the first word beyond the ones these commands take
    (``exec NAME``, ``services create SERVICE``). Options of ours may come
    before or after those words (``exec demo -w /tmp -- pwd``).
    """
    current = parser
    path: tuple[str, ...] = ()
    words: int | None = None  # words still expected before the command line
    sprite_given = False
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" and words is None:
            return argv, None
        if token.startswith("-") and token != "-":
            if token in ("-s", "--sprite") or token.startswith("--sprite="):
                sprite_given = True
            i += 2 if token in _value_options(current) else 1
            continue
        if words is None:
            choices = _subcommands(current)
            if token not in choices:
                return argv, None  # not a command that takes a command line
            current = choices[token]
            path = (*path, token)
            words = COMMAND_TAKING.get(path)
            i += 1
            if words is not None:
                # An explicit `--` wins when only our words (and perhaps the
                # sprite's NAME) precede it; otherwise it belongs to the
                # command (`exec demo git log -- file`).
                named = path != ("fleet", "exec") and not sprite_given
                cut = _double_dash(argv, i, current, limit=words + named)
                if cut is not None:
                    return argv[:cut], argv[cut + 1 :]
            continue
        if words == 0 or (path == ("exec",) and sprite_given):
            # With --sprite, exec's first word is already the command.
            return argv[:i], argv[i:]
        words -= 1
        i += 1
    return argv, ([] if words is not None else None)


def _double_dash(
    argv: list[str], start: int, parser: argparse.ArgumentParser, *, limit: int
) -> int | None:
    """The index of the ``--`` after at most ``limit`` words from ``start``, or None."""
    values = _value_options(parser)
    seen = 0
    i = start
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return i
        if token.startswith("-") and token != "-":
            i += 2 if token in values else 1
            continue
        seen += 1
        if seen > limit:
            return None
        i += 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; return the exit status (``sys.exit(main())``)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # Everything after it belongs to the emulator's own parser.
        from sprites_async.emulator.__main__ import main as emulator_main

        return _exit_code(lambda: emulator_main(args_list[1:]))
    out = Output()
    parser = build_parser()
    head, tail = _split_command(parser, args_list)
    try:
        args, extra = parser.parse_known_args(head)
        problem = place_words(args, extra)
        if problem is not None:
            getattr(args, "parser", parser).error(problem)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "emulator":
        from sprites_async.emulator.__main__ import main as emulator_main

        return _exit_code(lambda: emulator_main(args.emulator_args))
    if args.command in ("exec", "fleet", "services"):
        args.argv = tail or []
    if args.command == "exec" and not args.argv:
        out.error("exec: no command given (usage: exec [NAME] -- CMD [ARG ...])")
        return EXIT_USAGE
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return asyncio.run(_run(args, out))
    except KeyboardInterrupt:
        out.note("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # By now everything has unwound (a running command was terminated).
        return _stdout_gone(real_process=argv is None)


def _stdout_gone(*, real_process: bool) -> int:
    """The reader of stdout left: no traceback, no message; die as ``cat`` would."""
    try:
        # Whatever is still buffered must not fail again at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a replaced sys.stdout without a descriptor
        pass
    if real_process:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    return EXIT_BROKEN_PIPE


def _exit_code(run: Callable[[], int]) -> int:
    try:
        return run()
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


async def _run(args: argparse.Namespace, out: Output) -> int:
    ctx = Context(out=out, args=args)
    try:
        sprite_file = find_sprite_file()
        if sprite_file is not None:
            ctx.sprite_file = sprite_file
            try:
                ctx.sprite_file_data = read_sprite_file(sprite_file)
            except UsageError as exc:
                # Only an error for commands that need the file's sprite.
                ctx.sprite_file_error = exc
        async with AsyncExitStack() as stack:
            await _connect(ctx, stack)
            handler: Handler = args.handler
            return await handler(ctx)
    except UsageError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except ConfigurationError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except CommandStartError as exc:
        # As a shell: 127 no such command, 126 cannot run it; one line.
        out.error(exc.message)
        return exc.exit_code
    except APIError as exc:
        out.error(_describe_api_error(exc))
        return EXIT_API
    except (SpritesConnectionError, ExitStatusUnknownError) as exc:
        out.error(f"cannot reach the Sprites API: {exc}")
        return EXIT_CONNECTION
    except SpritesError as exc:
        out.error(str(exc))
        return EXIT_API
    except ValueError as exc:  # the SDK refused an argument before sending anything
        out.error(str(exc))
        return EXIT_USAGE


async def _connect(ctx: Context, stack: AsyncExitStack) -> None:
    """Make the client (or start the embedded emulator) for commands that need one."""
    from sprites_async._client import SpritesClient

    args = ctx.args
    if args.emulator:
        from sprites_async.emulator import Emulator

        emulator = await stack.enter_async_context(Emulator())
        ctx.emulator = emulator
        ctx.out.note(
            f"note: using a throw-away local emulator at {emulator.url}; nothing is kept "
            "after this command (run `sprites-async emulator` for one that lives on)"
        )
        ctx.client = await stack.enter_async_context(emulator.client())
        return
    token, _ = token_from_env()
    if token is None:
        return  # doctor explains; every other command raises NO_TOKEN_HELP on use
    client = SpritesClient(token, base_url=args.api_url)
    ctx.client = await stack.enter_async_context(client)
    wanted = ctx.sprite_file_data.get("organization")
    if isinstance(wanted, str) and wanted and client.org and client.org != wanted:
        ctx.out.note(
            f"warning: {ctx.sprite_file} names organization {wanted!r} but the token is "
            f"for {client.org!r}"
        )


def _describe_api_error(exc: APIError) -> str:
    hint = {
        401: "the token was refused: check SPRITES_TOKEN (`sprites-async doctor` can help)",
        403: "the token may not do this",
        404: "not found",
        429: "rate limited",
    }.get(exc.status_code)
    if exc.status_code >= 500 and not exc.is_not_found:
        hint = "the service failed; retry later, and quote the request id if it persists"
    return f"{exc}" + (f"\n  hint: {hint}" if hint and exc.status_code != 404 else "")
