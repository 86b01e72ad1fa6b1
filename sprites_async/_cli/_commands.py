"""Sprite management commands: list, create, get, update, destroy, upgrade,
checkpoint, fs, services, forward."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import stat as _stat
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._context import EXIT_API, EXIT_OK, PROG, Context, Handler, UsageError
from ._layout import Layout, Slot, examples, positionals

if TYPE_CHECKING:
    from sprites_async._models import SpriteInfo

    from ._output import Output

__all__ = ["add_commands"]

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def _actions(parser: argparse.ArgumentParser) -> Callable[..., argparse.ArgumentParser]:
    """Sub-subcommands (``checkpoint create`` ...) that accept ``[NAME]`` or ``-s NAME``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    def action(
        name: str,
        help_text: str,
        *slots: Slot,
        prefer_name: Callable[[list[str]], bool] | None = None,
        name_first: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-s", "--sprite", metavar="NAME", default=argparse.SUPPRESS, help="the sprite"
        )
        p.set_defaults(parser=p)
        positionals(p, Layout(slots, name=name_first, prefer_name=prefer_name))
        return p

    return action


_SPRITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _ls_names_a_sprite(words: list[str]) -> bool:
    # `fs ls demo` lists demo's home; a path has a slash (`fs ls /tmp`, `fs ls ./data`).
    return len(words) == 1 and _SPRITE_NAME.fullmatch(words[0]) is not None


def _get_names_a_sprite(words: list[str]) -> bool:
    # `fs get demo /etc/hostname`, not `fs get /etc/hostname out.txt`.
    return (
        len(words) == 2
        and _SPRITE_NAME.fullmatch(words[0]) is not None
        and words[1].startswith("/")
    )


def add_commands(command: AddCommand) -> None:
    """Register this module's commands."""
    p = command("list", cmd_list, "list sprites")
    p.add_argument("--prefix", help="only names starting with this")
    p.add_argument("--limit", type=int, metavar="N", help="at most N sprites")
    p.add_argument("--json", action="store_true", help="a JSON array of sprite objects")
    examples(p, "list", "list --prefix de --json")

    p = command("create", cmd_create, "create a sprite")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--label", action="append", dest="labels", metavar="LABEL")
    p.add_argument("--public", action="store_true", help="anyone may open its URL")
    p.add_argument("--wait-for-capacity", action="store_true")
    p.add_argument("--json", action="store_true")
    examples(p, "create box", "create --label ci --public box-2")

    p = command("get", cmd_get, "show one sprite")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--json", action="store_true")
    examples(p, "get demo", "get demo --json")

    p = command("update", cmd_update, "change a sprite's URL access or labels")
    p.add_argument("name", metavar="NAME", nargs="?")
    access = p.add_mutually_exclusive_group()
    access.add_argument("--public", dest="url_auth", action="store_const", const="public")
    access.add_argument("--private", dest="url_auth", action="store_const", const="sprite")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--label", action="append", dest="labels", metavar="LABEL", help="repeat; replaces all"
    )
    labels.add_argument("--clear-labels", action="store_true")
    p.add_argument("--json", action="store_true")
    examples(p, "update demo --public --label web", "update demo --private --clear-labels")

    p = command("destroy", cmd_destroy, "delete sprites and all their checkpoints")
    p.add_argument("names", metavar="NAME", nargs="*")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p.add_argument("--missing-ok", action="store_true", help="a missing sprite is not an error")
    examples(p, "destroy demo --yes", "destroy demo gone --yes --missing-ok")

    p = command("upgrade", cmd_upgrade, "upgrade a sprite's in-VM software")
    p.add_argument("name", metavar="NAME", nargs="?")
    examples(p, "upgrade demo")

    p = command("checkpoint", cmd_checkpoint, "create, list, restore or delete checkpoints")
    examples(
        p,
        'checkpoint create demo -m "before upgrade"',
        "checkpoint list demo",
        "checkpoint restore demo v1",
        "checkpoint delete -s demo v2",
    )
    action = _actions(p)
    c = action("create", "checkpoint the sprite's filesystem")
    c.add_argument("-m", "--comment")
    c.add_argument("--json", action="store_true")
    examples(c, 'checkpoint create demo -m "before upgrade"', "checkpoint create -s demo --json")
    c = action("list", "list checkpoints, newest first")
    c.add_argument("--all", action="store_true", help="include automatic checkpoints")
    c.add_argument("--json", action="store_true")
    examples(c, "checkpoint list demo", "checkpoint list demo --all --json")
    c = action("restore", "restore the filesystem from a checkpoint", Slot("checkpoint", "ID"))
    examples(c, "checkpoint restore demo v1", "checkpoint restore -s demo v1")
    c = action("delete", "delete a checkpoint", Slot("checkpoint", "ID"))
    examples(c, "checkpoint delete demo v1")

    p = command("fs", cmd_fs, "list, download or upload files")
    examples(
        p,
        "fs ls demo",
        "fs put demo notes.txt /home/sprite/notes.txt",
        "fs get demo /home/sprite/notes.txt -",
    )
    action = _actions(p)
    c = action(
        "ls",
        "list a directory (one word: a PATH if it has a '/', else the sprite's NAME)",
        Slot("path", "PATH", required=False, default="/home/sprite"),
        prefer_name=_ls_names_a_sprite,
    )
    c.add_argument("--json", action="store_true")
    examples(c, "fs ls demo", "fs ls demo /home --json", "fs ls -s demo /tmp")
    c = action(
        "get",
        "download a file (LOCAL '-' writes to stdout)",
        Slot("remote", "REMOTE"),
        Slot("local", "LOCAL", required=False),
        prefer_name=_get_names_a_sprite,
    )
    examples(
        c,
        "fs get demo /home/sprite/notes.txt",
        "fs get demo /home/sprite/notes.txt copy.txt",
        "fs get -s demo /home/sprite/notes.txt -",
    )
    c = action(
        "put",
        "upload a file (LOCAL '-' reads stdin)",
        Slot("local", "LOCAL"),
        Slot("remote", "REMOTE"),
    )
    examples(c, "fs put demo notes.txt /home/sprite/notes.txt", "fs put -s demo notes.txt /tmp/n")

    p = command("services", cmd_services, "list and control services")
    examples(
        p,
        "services create demo site --http-port 8765 -- python3 -m http.server 8765",
        "services list demo",
        "services restart demo site",
    )
    action = _actions(p)
    c = action("list", "list services")
    c.add_argument("--json", action="store_true")
    examples(c, "services list demo", "services list -s demo --json")
    for verb in ("start", "stop", "restart", "delete"):
        c = action(verb, f"{verb} a service", Slot("service", "SERVICE"))
        examples(c, f"services {verb} demo web")
    c = action(
        "create",
        "define a service and start it: create [NAME] SERVICE [--http-port N] [--] CMD ...",
        Slot("service", "SERVICE"),
    )
    c.add_argument("--http-port", type=int, metavar="N", help="route the sprite's URL here")
    c.usage = "%(prog)s [options] [NAME] SERVICE [--] CMD [ARG ...]"
    examples(
        c,
        "services create -s demo api --http-port 8766 python3 -m http.server 8766",
        "services create demo worker -- sh -c 'while sleep 60; do :; done'",
    )
    c = action("logs", "show a service's log", Slot("service", "SERVICE"))
    c.add_argument("--lines", type=int, default=100)
    c.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")
    examples(c, "services logs demo web", "services logs demo web --lines 10")

    p = command("fleet", cmd_fleet, "run a command on many sprites, or delete many sprites")
    examples(
        p,
        "fleet exec --prefix ci- -- uname -r",
        "fleet exec --label ci --timeout 60 sh -c 'echo $HOME'",
        "fleet destroy --label ci --yes",
    )
    action = _actions(p)
    c = action(
        "exec",
        "run CMD on every matching sprite: fleet exec --prefix P -- CMD ...",
        name_first=False,
    )
    c.add_argument("--prefix", help="sprites whose name starts with this")
    c.add_argument("--label", action="append", dest="labels", metavar="LABEL")
    c.add_argument("-c", "--concurrency", type=int, default=10, metavar="N")
    c.add_argument("--timeout", type=float, metavar="S", help="per-sprite limit in seconds")
    c.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    c.add_argument("--json", action="store_true")
    c.usage = "%(prog)s [options] [--] CMD [ARG ...]"
    examples(c, "fleet exec --prefix ci- -- uname -r", "fleet exec --label ci --json -- true")
    c = action("destroy", "delete every sprite matching --prefix and/or --label", name_first=False)
    c.add_argument("--prefix")
    c.add_argument("--label", action="append", dest="labels", metavar="LABEL")
    c.add_argument("-c", "--concurrency", type=int, default=8, metavar="N")
    c.add_argument("-y", "--yes", action="store_true", help="do not ask")
    examples(c, "fleet destroy --prefix ci- --yes")

    p = command("forward", cmd_forward, "forward a local port to a port in the sprite")
    positionals(p, Layout((Slot("port", "PORT[:REMOTE]"),)))
    p.add_argument("--host", default="127.0.0.1", help="local address to listen on")
    examples(p, "forward demo 8765  # until Ctrl-C", "forward -s demo 0:8765  # until Ctrl-C")


# ------------------------------------------------------------------ formatting


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _sprite_rows(out: Output, sprites: list[SpriteInfo]) -> list[list[str]]:
    return [
        [
            s.name,
            out.status(s.status),
            ",".join(s.labels) or "-",
            s.url or "-",
            _when(s.updated_at or s.created_at),
        ]
        for s in sprites
    ]


def _show_sprite(ctx: Context, info: SpriteInfo) -> None:
    out = ctx.out
    if getattr(ctx.args, "json", False):
        out.json(info)
        return
    auth = info.url_settings.auth if info.url_settings else None
    fields = [
        ("name", info.name),
        ("status", out.status(info.status)),
        ("organization", info.organization or "-"),
        ("url", info.url or "-"),
        ("access", {"public": "public", "sprite": "private"}.get(auth or "", auth or "-")),
        ("labels", ", ".join(info.labels) or "-"),
        ("id", info.id or "-"),
        ("version", info.version or "-"),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("last running", _when(info.last_running_at)),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        out.line(f"{key.ljust(width)}  {value}")


# ---------------------------------------------------------------- management


async def cmd_list(ctx: Context) -> int:
    """``list``."""
    client = ctx.need_client()
    args = ctx.args
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    sprites: list[SpriteInfo] = []
    counters = None
    async for page in client.sprites.list(prefix=args.prefix or None).pages():
        if counters is None:
            counters = page.counters
        sprites.extend(page.items)
        if args.limit is not None and len(sprites) >= args.limit:
            sprites = sprites[: args.limit]
            break
    if args.json:
        ctx.out.json(sprites)
        return EXIT_OK
    ctx.out.table(["NAME", "STATUS", "LABELS", "URL", "UPDATED"], _sprite_rows(ctx.out, sprites))
    if ctx.out.tty and counters is not None and counters.running is not None:
        ctx.out.note(
            f"{len(sprites)} shown; organization {counters.name or client.org or '?'}: "
            f"{counters.running} running (limit {counters.running_limit or '?'}), "
            f"{counters.warm} warm, {counters.cold} cold"
        )
    return EXIT_OK


async def cmd_create(ctx: Context) -> int:
    """``create``."""
    client = ctx.need_client()
    args = ctx.args
    info = await client.sprites.create(
        ctx.sprite_name(args.name),
        labels=args.labels,
        url_auth="public" if args.public else None,
        wait_for_capacity=args.wait_for_capacity,
    )
    if args.json:
        ctx.out.json(info)
    else:
        ctx.out.line(f"created {info.name}" + (f"  {info.url}" if info.url else ""))
    return EXIT_OK


async def cmd_get(ctx: Context) -> int:
    """``get``."""
    info = await ctx.need_client().sprites.get(ctx.sprite_name(ctx.args.name))
    _show_sprite(ctx, info)
    return EXIT_OK


async def cmd_update(ctx: Context) -> int:
    """``update``."""
    args = ctx.args
    labels: list[str] | None = [] if args.clear_labels else args.labels
    if args.url_auth is None and labels is None:
        raise UsageError(
            "update: nothing to change (use --public/--private, --label or --clear-labels)"
        )
    info = await ctx.need_client().sprites.update(
        ctx.sprite_name(args.name), url_auth=args.url_auth, labels=labels
    )
    _show_sprite(ctx, info)
    return EXIT_OK


async def cmd_destroy(ctx: Context) -> int:
    """``destroy``."""
    client = ctx.need_client()
    args = ctx.args
    names = list(args.names) or [ctx.sprite_name()]
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("destroy: refusing to delete without --yes (not on a terminal)")
        listed = ", ".join(names)
        answer = await asyncio.to_thread(
            input, f"Destroy {listed} and all its checkpoints? This cannot be undone. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            ctx.out.note("nothing destroyed")
            return EXIT_USAGE_DECLINED
    status = EXIT_OK
    for name in names:
        deleted = await client.sprites.delete(name, missing_ok=True)
        if deleted:
            ctx.out.line(f"destroyed {name}")
        elif args.missing_ok:
            ctx.out.line(f"{name} did not exist")
        else:
            ctx.out.error(f"no sprite named {name!r}")
            status = EXIT_API
    return status


# Declining the prompt is the user's choice, not a failure of the tool, but a
# script must still see that nothing happened.
EXIT_USAGE_DECLINED = 1


async def cmd_upgrade(ctx: Context) -> int:
    """``upgrade``."""
    name = ctx.sprite_name(ctx.args.name)
    await ctx.need_client().sprites.upgrade(name)
    ctx.out.line(f"upgraded {name}")
    return EXIT_OK


# ------------------------------------------------------------------ checkpoints


async def cmd_checkpoint(ctx: Context) -> int:
    """``checkpoint create|list|restore|delete``."""
    from sprites_async._checkpoints import CheckpointComplete, CheckpointInfo

    client = ctx.need_client()
    name = ctx.sprite_name()
    checkpoints = client.sprite(name).checkpoints
    args = ctx.args
    out = ctx.out
    if args.action == "list":
        found = await checkpoints.list(include_auto=args.all)
        if args.json:
            out.json(found)
        else:
            out.table(
                ["ID", "CREATED", "COMMENT"],
                [[cp.id, _when(cp.create_time), cp.comment or ""] for cp in found],
            )
        return EXIT_OK
    if args.action == "delete":
        await checkpoints.delete(args.checkpoint)
        out.line(f"deleted checkpoint {args.checkpoint} of {name}")
        return EXIT_OK
    if args.action == "create":
        op: Any = checkpoints.create(args.comment)
        label = f"checkpoint {name}"
    else:
        op = checkpoints.restore(args.checkpoint)
        label = f"restore {name} from {args.checkpoint}"
    progress = out.progress(label)
    try:
        async with op:
            async for event in op:
                if isinstance(event, (CheckpointInfo, CheckpointComplete)):
                    text = event.data.strip()
                    if text and not _server_advice(text):
                        progress.message(text.splitlines()[0])
        result = await op
    finally:
        progress.done()
    if args.action == "create":
        if args.json:
            out.json(result)
        else:
            out.line(f"created checkpoint {result.id} of {name}")
            out.note(f"restore it with: {PROG} checkpoint restore {name} {result.id}")
    else:
        out.line(f"restored {name} from {args.checkpoint}")
    return EXIT_OK


_ADVICE = re.compile(r"(?i)^(sprite|sprites|curl)\s|^to restore\b")


def _server_advice(line: str) -> bool:
    """A line of the server's stream that tells how to use another tool.

    The service ends a checkpoint with ``To restore this checkpoint:``, the
    official CLI's command line and a ``curl`` one: this tool prints its own.
    """
    return bool(_ADVICE.match(line))


# ------------------------------------------------------------------ filesystem


def _mode_string(mode: int | None, kind: str) -> str:
    if mode is None:
        return "?"
    prefix = {"directory": "d", "symlink": "l", "file": "-"}.get(kind, "?")
    return prefix + _stat.filemode(mode)[1:]


async def cmd_fs(ctx: Context) -> int:
    """``fs ls|get|put``."""

    client = ctx.need_client()
    fs = client.sprite(ctx.sprite_name()).fs()
    args = ctx.args
    out = ctx.out
    if args.action == "ls":
        entries = sorted(await fs.path(args.path).scandir(), key=lambda e: e.name)
        if args.json:
            out.json(entries)
            return EXIT_OK
        out.table(
            ["MODE", "SIZE", "MODIFIED", "NAME"],
            [
                [
                    _mode_string(e.mode, e.type),
                    str(e.size if e.size is not None else "-"),
                    _when(e.mod_time),
                    e.name + ("/" if e.is_dir else ""),
                ]
                for e in entries
            ],
        )
        return EXIT_OK
    if args.action == "get":
        remote = fs.path(args.remote)
        if args.local == "-":
            async with remote.open_read() as stream:
                async for chunk in stream:
                    sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return EXIT_OK
        local = args.local or remote.name
        if os.path.isdir(local):  # noqa: ASYNC240 - one stat of a local path
            local = os.path.join(local, remote.name)
        size = await fs.download(remote, local)
        out.note(f"{remote} -> {local} ({size} bytes)")
        return EXIT_OK
    # put
    target = fs.path(args.remote)
    if args.local == "-":
        data = await asyncio.to_thread(sys.stdin.buffer.read)
        result = await target.write_bytes(data)
    else:
        if not os.path.isfile(args.local):  # noqa: ASYNC240 - one stat of a local path
            raise UsageError(f"fs put: {args.local}: no such file")
        result = await fs.upload(args.local, target)
    out.note(f"{args.local} -> {result.path} ({result.size} bytes)")
    return EXIT_OK


# --------------------------------------------------------------------- services


async def cmd_services(ctx: Context) -> int:
    """``services list|create|start|stop|restart|logs|delete``."""
    from sprites_async._services import (
        ServiceComplete,
        ServiceOutput,
        ServiceStderr,
    )

    client = ctx.need_client()
    services = client.sprite(ctx.sprite_name()).services
    args = ctx.args
    out = ctx.out
    if args.action == "list":
        found = await services.list()
        if args.json:
            out.json(found)
            return EXIT_OK
        out.table(
            ["NAME", "STATUS", "PID", "HTTP PORT", "COMMAND"],
            [
                [
                    svc.name,
                    out.status(svc.status),
                    str(svc.state.pid if svc.state and svc.state.pid else "-"),
                    str(svc.http_port or "-"),
                    " ".join([svc.cmd, *svc.args]).strip() or "-",
                ]
                for svc in found
            ],
        )
        return EXIT_OK
    if args.action == "delete":
        await services.delete(args.service)
        out.line(f"deleted service {args.service}")
        return EXIT_OK
    if args.action == "logs":
        logs = services.logs(args.service, lines=args.lines, follow=args.follow)
        async with logs:
            async for event in logs:
                if isinstance(event, ServiceOutput):
                    stream = sys.stderr if isinstance(event, ServiceStderr) else sys.stdout
                    stream.write(event.data.rstrip("\n") + "\n")
                    stream.flush()
        return EXIT_OK
    if args.action == "create":
        if not args.argv:
            raise UsageError("services create: give the command after the name")
        op: Any = services.create(
            args.service, cmd=args.argv[0], args=args.argv[1:], http_port=args.http_port
        )
    else:
        op = getattr(services, args.action)(args.service)
    progress = out.progress(f"{args.action} {args.service}")
    try:
        async with op:
            async for event in op:
                if isinstance(event, ServiceOutput):
                    progress.message(f"{event.type}: {event.data.rstrip()}")
                elif not isinstance(event, ServiceComplete):
                    progress.message(getattr(event, "type", "event"))
        await op
    finally:
        progress.done()
    out.line(f"{args.action} {args.service}: done")
    return EXIT_OK


# ------------------------------------------------------------------------ fleet


async def _matching(ctx: Context) -> list[SpriteInfo]:
    args = ctx.args
    if not args.prefix and not args.labels:
        raise UsageError(f"fleet {args.action}: give --prefix and/or --label")
    wanted = set(args.labels or ())
    client = ctx.need_client()
    return [
        s
        async for s in client.sprites.list(prefix=args.prefix or None)
        if wanted.issubset(s.labels)
    ]


async def cmd_fleet(ctx: Context) -> int:
    """``fleet exec|destroy``: bounded fan-out over the sprites matching a filter."""
    from sprites_async.fleet import FleetProgress, exec_many

    client = ctx.need_client()
    args = ctx.args
    out = ctx.out
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    sprites = await _matching(ctx)
    if args.action == "destroy":
        if not sprites:
            out.note("no sprite matches")
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError("fleet destroy: refusing to delete without --yes (no terminal)")
            answer = await asyncio.to_thread(
                input, f"Destroy {len(sprites)} sprites and their checkpoints? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                out.note("nothing destroyed")
                return EXIT_USAGE_DECLINED
        report = await client.sprites.delete_many(
            prefix=args.prefix, labels=args.labels, concurrency=args.concurrency
        )
        for name in report.deleted:
            out.line(f"destroyed {name}")
        for name, error in report.failed.items():
            out.error(f"{name}: {error}")
        return EXIT_OK if report.ok else EXIT_API
    if not args.argv:
        raise UsageError("fleet exec: no command given (fleet exec --prefix P -- CMD ...)")
    if not sprites:
        out.note("no sprite matches")
        return EXIT_OK
    progress = out.progress("exec", total=len(sprites))

    def on_progress(event: FleetProgress) -> None:
        if event.event == "finished":
            progress.advance(1, f"{event.failed} failed" if event.failed else None)

    try:
        result = await exec_many(
            [client.sprite(s) for s in sprites],
            *args.argv,
            concurrency=args.concurrency,
            timeout=args.timeout,
            fail_fast=args.fail_fast,
            on_progress=on_progress,
        )
    finally:
        progress.done()
    if args.json:
        out.json(
            [
                {
                    "sprite": o.sprite,
                    # "exit" when the command ran and exited non-zero: never "ok" then.
                    "status": "exit" if _exec_status(o).startswith("exit ") else o.status,
                    "exit_code": o.value.exit_code if o.value is not None else None,
                    "stdout": o.value.stdout_text if o.value is not None else None,
                    "stderr": o.value.stderr_text if o.value is not None else None,
                    "error": str(o.error) if o.error is not None else None,
                    "duration": o.duration,
                }
                for o in result
            ]
        )
    else:
        rows = []
        for o in result:
            res = o.value
            tail = ((res.stdout_text or res.stderr_text) if res else o.describe()).strip()
            rows.append(
                [
                    o.sprite,
                    out.status(_exec_status(o)),
                    str(res.exit_code) if res is not None else "-",
                    f"{o.duration:.2f}s" if o.duration is not None else "-",
                    tail.splitlines()[-1] if tail else "",
                ]
            )
        out.table(["SPRITE", "STATUS", "EXIT", "TIME", "LAST LINE"], rows)
        counts: dict[str, int] = {}
        for o in result:
            status = "exit non-zero" if _exec_status(o).startswith("exit ") else o.status
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        out.note(f"{summary or 'nothing'} in {result.duration:.1f} s")
    clean = all(_exec_status(o) == "ok" for o in result)
    return EXIT_OK if clean else EXIT_API


def _exec_status(outcome: Any) -> str:
    """``ok`` only for a command that ran and exited 0; ``exit N`` when it exited N."""
    res = outcome.value
    if outcome.status == "ok" and res is not None and res.exit_code != 0:
        return f"exit {res.exit_code}"
    return str(outcome.status)


# ---------------------------------------------------------------------- forward


async def cmd_forward(ctx: Context) -> int:
    """``forward PORT[:REMOTE]``: listen locally, relay each connection into the sprite."""
    from sprites_async._proxy import forward

    client = ctx.need_client()
    sprite = client.sprite(ctx.sprite_name())
    local_text, _, remote_text = ctx.args.port.partition(":")
    try:
        local_port = int(local_text)
        remote_port = int(remote_text) if remote_text else local_port
        tunnel = forward(sprite, remote_port, local_port=local_port, bind=ctx.args.host)
    except ValueError as exc:
        raise UsageError(f"forward: {exc} (use PORT, or LOCAL:REMOTE; LOCAL 0 picks one)") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with tunnel:
            ctx.out.line(
                f"forwarding {tunnel.bind}:{tunnel.local_port} -> {sprite.name}:{remote_port}"
            )
            ctx.out.note("press Ctrl-C to stop")
            await stop.wait()
            ctx.out.note(f"stopped after {tunnel.accepted} connection(s)")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return EXIT_OK
