"""Issue 12: the SDK's end-to-end flows under the emulator's ``real-world`` profile.

``real-world`` turns on every quirk that can hold at once (null arrays, odd
``session_info`` types, kill events in ``data``/``error``, ``/control``
refused with 400, ``op.ack`` never sent, ``/control`` dropped after
``op.start``, ``pkg/wsexec``-like exec sockets, ``Range`` ignored, the
endpoints only newer servers have missing, and the first answer to each POST
route lost). Each flow below either works, with its results checked, or
raises the documented typed error, with its fields checked.

Two invariants run through every test:

* no listing loses an item: everything created is found in the listing
  (sprites page by page, services, checkpoints, exec sessions, directories);
* no command runs twice: every command appends a unique token to
  ``$HOME/ran`` inside the sprite, and the file, read back through the files
  API (the server's side), holds each token at most once, and exactly once
  for a command that reported an exit code.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from sprites_async import (
    APIError,
    ConflictError,
    DomainRule,
    ExecSettings,
    ExitStatusUnknownError,
    NotFoundError,
    PortsWatchNotSupportedError,
    RetryPolicy,
    Sprite,
    SpriteFileNotFoundError,
    SpritesClient,
    SpritesConnectionError,
    fleet,
)
from sprites_async._checkpoints import CheckpointNotFoundError
from sprites_async._services import ServiceNotFoundError
from sprites_async.emulator import Emulator
from tests._wire import Sent

# Retries on, with no waiting: a re-send would happen, and be counted, at once.
RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
# Under exec-wsexec no session_info ever comes; detach() waits this long for it.
SETTINGS = ExecSettings(session_info_timeout=0.5)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(quirks=["real-world"], exit_linger=0.0) as running:
        yield running


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
async def client(emu: Emulator, sent: Sent) -> AsyncIterator[SpritesClient]:
    async with emu.client(retry=RETRY, trace_configs=[sent.trace], exec_settings=SETTINGS) as c:
        yield c


def test_the_profile_is_what_the_issue_names() -> None:
    # If the profile shrinks, the tests below silently test less.
    from sprites_async.emulator import resolve_quirks

    assert resolve_quirks("real-world") == {
        "null-arrays",
        "session-info-odd-types",
        "kill-event-data-error",
        "control-400",
        "control-no-ack",
        "control-drop-after-start",
        "exec-wsexec",
        "fs-range-ignored",
        "no-ports-watch",
        "no-http-exec",
        "no-service-logs",
        "no-service-restart",
        "no-checkpoint-delete",
        "post-answer-lost",
    }


# ------------------------------------------------------------------ helpers


async def make(client: SpritesClient, name: str, labels: list[str] | None = None) -> Sprite:
    """Create a sprite; the emulator's first create loses its answer, as documented."""
    lost: SpritesConnectionError | None = None
    try:
        await client.sprites.create(name, labels=labels)
    except SpritesConnectionError as exc:
        lost = exc
    if lost is not None:
        assert type(lost) is SpritesConnectionError
        assert (lost.operation, lost.sprite) == ("create sprite", name)
        info, created = await client.sprites.get_or_create(name, labels=labels)
        assert (info.name, created) == (name, False)
    return client.sprite(name)


def token() -> str:
    return "tok-" + uuid.uuid4().hex[:12]


def logged(tok: str, rest: str = "") -> list[str]:
    """``sh -c`` argv that appends ``tok`` to the sprite's ``ran`` file, then runs ``rest``."""
    script = f'echo {tok} >> "$HOME/ran"'
    return ["sh", "-c", f"{script}; {rest}" if rest else script]


async def ran(sprite: Sprite) -> list[str]:
    """The tokens the sprite's commands wrote, read through the files API."""
    try:
        text = await (sprite.fs() / "ran").read_text()
    except SpriteFileNotFoundError:
        return []
    return text.split()


async def wait_for_token(sprite: Sprite, tok: str, timeout: float = 15.0) -> list[str]:
    """The ``ran`` file once ``tok`` is in it (a detached command writes it later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        tokens = await ran(sprite)
        if tok in tokens or loop.time() > deadline:
            return tokens
        await asyncio.sleep(0.05)


def once_each(tokens: list[str], expected: list[str]) -> None:
    """Every expected token exactly once, and nothing else."""
    assert sorted(tokens) == sorted(expected)
    assert len(set(tokens)) == len(tokens)


def ids_of(exc: APIError, *, api_layer: bool) -> None:
    """The request ids an error carries: both from the API, only Fly's from a sprite's server."""
    assert exc.fly_request_id
    if api_layer:
        assert exc.request_id
    else:
        assert exc.request_id is None


async def sessions_running(sprite: Sprite, marker: str) -> list[str]:
    return [s.id for s in await sprite.sessions.list() if marker in s.command]


# -------------------------------------------------------- sprite management


async def test_create_whose_answer_is_lost_then_get_or_create(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    with pytest.raises(SpritesConnectionError) as info:
        await client.sprites.create("rw-lost", labels=["a"])
    assert type(info.value) is SpritesConnectionError
    assert (info.value.operation, info.value.sprite) == ("create sprite", "rw-lost")
    assert sent.count("POST", "/v1/sprites") == 1  # never re-sent
    # The creation happened, exactly once.
    assert [s.name async for s in client.sprites.list(prefix="rw-")] == ["rw-lost"]
    found, created = await client.sprites.get_or_create("rw-lost")
    assert (found.name, found.labels, created) == ("rw-lost", ["a"], False)
    assert sent.count("POST", "/v1/sprites") == 1
    # A second create of the same name is a typed 409, not a second sprite.
    with pytest.raises(ConflictError) as conflict:
        await client.sprites.create("rw-lost")
    exc = conflict.value
    assert (exc.status_code, exc.operation, exc.sprite) == (409, "create sprite", "rw-lost")
    ids_of(exc, api_layer=True)
    # Later creates are answered.
    made = await client.sprites.create("rw-next")
    assert (made.name, made.labels) == ("rw-next", [])  # labels: null on the wire
    assert [s.name async for s in client.sprites.list(prefix="rw-")] == ["rw-lost", "rw-next"]


async def test_list_get_update_lose_nothing(emu: Emulator, client: SpritesClient) -> None:
    wanted: dict[str, list[str]] = {}
    for i in range(9):
        labels = [f"l{i}", "even"] if i % 2 == 0 else None
        await make(client, f"ls-{i:02d}", labels)
        wanted[f"ls-{i:02d}"] = labels or []
    await make(client, "other")
    pages = [page async for page in client.sprites.list(prefix="ls-", max_results=2).pages()]
    assert len(pages) == 5
    seen = [s.name for page in pages for s in page.sprites]
    assert seen == sorted(wanted)  # all, each once, in order
    assert {s.name: s.labels async for s in client.sprites.list(max_results=3)} == {
        **wanted,
        "other": [],
    }
    for name, labels in wanted.items():
        got = await client.sprites.get(name)
        assert (got.name, got.labels) == (name, labels)
    updated = await client.sprites.update("ls-01", labels=["new"], url_auth="public")
    assert updated.labels == ["new"]
    assert (await client.sprites.get("ls-01")).labels == ["new"]
    cleared = await client.sprites.update("ls-00", labels=[])  # clear_labels -> null
    assert cleared.labels == []
    assert (await client.sprites.get("ls-00")).labels == []
    with pytest.raises(NotFoundError) as missing:
        await client.sprites.get("ls-ghost")
    exc = missing.value
    assert (exc.status_code, exc.operation, exc.sprite) == (404, "get sprite", "ls-ghost")
    ids_of(exc, api_layer=True)
    # Labels filter a listing the same way with nulls in it.
    report = await client.sprites.delete_many(prefix="ls-", labels=["even"])
    assert sorted(report.deleted) == ["ls-02", "ls-04", "ls-06", "ls-08"]
    left = [s.name async for s in client.sprites.list(prefix="ls-", max_results=2)]
    assert left == ["ls-00", "ls-01", "ls-03", "ls-05", "ls-07"]


# ------------------------------------------------------------------- exec


async def test_exec_over_the_pool_falls_back_to_direct(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    sprite = await make(client, "ex-pool")
    toks = [token() for _ in range(3)]
    for i, tok in enumerate(toks):
        result = await sprite.exec(*logged(tok, f"echo out{i}; echo err >&2; exit {i + 3}"))
        assert (result.exit_code, result.stdout, result.stderr) == (
            i + 3,
            f"out{i}\n".encode(),
            b"err\n",
        )
    # /control was refused once (400) and that was remembered; each command
    # went to one direct socket.
    assert sent.count("GET", "/control") == 1
    assert sent.count("GET", "/ex-pool/exec") == 3
    once_each(await ran(sprite), toks)


async def test_exec_direct_with_stdin_and_without_the_pool(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    sprite = await make(client, "ex-direct")
    toks = [token() for _ in range(4)]
    # stdin: always direct; under exec-wsexec the server stops reading after
    # stdin EOF and never answers a close frame.
    got = await sprite.exec(*logged(toks[0], "cat; exit 5"), stdin=b"hello\n")
    assert (got.exit_code, got.stdout) == (5, b"hello\n")
    got = await sprite.exec(*logged(toks[1], "wc -c"), stdin=b"x" * 100_000)
    assert (got.exit_code, got.stdout.strip()) == (0, b"100000")
    async with emu.client(retry=RETRY, control=False, exec_settings=SETTINGS) as direct:
        plain = direct.sprite("ex-direct")
        got = await plain.exec(*logged(toks[2], "echo direct"))
        assert (got.exit_code, got.stdout) == (0, b"direct\n")
        got = await plain.exec(*logged(toks[3], "exit 0"), stdin=b"")
        assert got.exit_code == 0
    once_each(await ran(sprite), toks)


async def test_process_with_stdin(emu: Emulator, client: SpritesClient) -> None:
    sprite = await make(client, "ex-proc")
    toks = [token(), token()]
    async with sprite.process(*logged(toks[0], "tr a-z A-Z; exit 7")) as proc:
        await proc.write(b"first line\n")
        await proc.write("second\n")
        await proc.close_stdin()
        out = await proc.stdout.read()
        assert await asyncio.wait_for(proc.wait(), 15) == 7
    assert out == b"FIRST LINE\nSECOND\n"
    # TTY: the text exit message is its only exit indication, kept by wsexec.
    async with sprite.process(*logged(toks[1], "read x; echo got $x; exit 2"), tty=True) as term:
        await term.write(b"abc\r")
        assert await asyncio.wait_for(term.wait(), 15) == 2
        assert b"got abc" in await term.stdout.read()
    once_each(await ran(sprite), toks)


async def test_exec_dropped_after_start_is_never_run_twice(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    # Without the refusal the pool is used, and the socket dies right after op.start.
    emu.quirks.discard("control-400")
    sprite = await make(client, "ex-drop")
    tok = token()
    with pytest.raises(ExitStatusUnknownError) as info:
        await sprite.exec(*logged(tok, "sleep 0.2; echo done"))
    assert type(info.value) is ExitStatusUnknownError
    # Neither an ack nor session_info came: the server never said the id.
    assert (info.value.sprite, info.value.session_id) == ("ex-drop", None)
    assert sent.count("GET", "/control") == 1
    assert sent.count("GET", "/ex-drop/exec") == 0  # no second run over a direct socket
    assert await wait_for_token(sprite, tok) == [tok]  # it ran, once
    # The next command dials again; it is dropped the same way, never re-sent.
    tok2 = token()
    with pytest.raises(ExitStatusUnknownError):
        await sprite.exec(*logged(tok2))
    once_each(await wait_for_token(sprite, tok2), [tok, tok2])
    assert sent.count("GET", "/ex-drop/exec") == 0


async def test_exec_over_a_control_channel_without_acks(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    emu.quirks.discard("control-400", "control-drop-after-start")
    assert emu.quirks.on("control-no-ack")
    sprite = await make(client, "ex-noack")
    toks = [token() for _ in range(3)]
    for i, tok in enumerate(toks):
        result = await sprite.exec(*logged(tok, f"echo {i}; exit {i}"))
        assert (result.exit_code, result.stdout) == (i, f"{i}\n".encode())
    # Pooled (a socket whose op.complete is late is not reused, hence no == 1).
    assert sent.count("GET", "/control") >= 1
    assert sent.count("GET", "/ex-noack/exec") == 0
    once_each(await ran(sprite), toks)


async def test_http_exec_is_a_missing_route_and_runs_nothing(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    sprite = await make(client, "ex-http")
    # The route's first answer (the 404) is lost like any POST's: a typed
    # connection error, not re-sent (an HTTP exec may have started).
    with pytest.raises(SpritesConnectionError) as lost:
        await sprite.run_http(*logged(token()))
    assert type(lost.value) is SpritesConnectionError
    assert (lost.value.operation, lost.value.sprite) == ("exec (http)", "ex-http")
    assert sent.count("POST", "/ex-http/exec") == 1
    with pytest.raises(NotFoundError) as info:
        await sprite.run_http(*logged(token()))
    exc = info.value
    assert (exc.status_code, exc.code, exc.operation, exc.sprite) == (
        404,
        "route_not_found",
        "exec (http)",
        "ex-http",
    )
    ids_of(exc, api_layer=False)
    assert "older version" in str(exc)
    assert await ran(sprite) == []


async def test_ports_watch_is_a_missing_route(emu: Emulator, client: SpritesClient) -> None:
    sprite = await make(client, "ports")

    async def watch() -> None:
        async for _ in sprite.ports.watch():
            pass

    with pytest.raises(PortsWatchNotSupportedError) as info:
        await asyncio.wait_for(watch(), 30)
    assert (info.value.status_code, info.value.sprite) == (404, "ports")
    ids_of(info.value, api_layer=False)


# -------------------------------------------------- sessions, attach, kill


async def test_detach_list_and_attach(emu: Emulator, client: SpritesClient) -> None:
    sprite = await make(client, "att")
    tok, fifo, go = token(), token(), token()
    argv = logged(tok, 'echo first; read go < "$HOME/fifo"; echo second; exit 4')
    assert (await sprite.exec(*logged(fifo, 'mkfifo "$HOME/fifo"'))).exit_code == 0
    async with sprite.process(*argv, stdin=False, max_run_after_disconnect=60) as proc:
        seen = b""
        async for chunk in proc.stdout:
            seen += chunk
            if seen == b"first\n":
                break
        assert seen == b"first\n"
        # exec-wsexec sends no session_info: the id is learnt from the list.
        sid = await proc.detach()
    assert sid is None
    [found] = await sessions_running(sprite, tok)
    # session-info-odd-types: attach reads session_info's odd types liberally.
    async with sprite.sessions.attach(found) as again:
        assert again.session_id == found
        assert (await sprite.exec(*logged(go, 'echo go > "$HOME/fifo"'))).exit_code == 0
        assert await asyncio.wait_for(again.wait(), 15) == 4
        output = await again.stdout.read()
    assert output == b"first\nsecond\n"  # the scrollback, then the rest
    once_each(await ran(sprite), [tok, fifo, go])


async def test_sessions_listing_and_kill(emu: Emulator, client: SpritesClient) -> None:
    sprite = await make(client, "kil")
    toks = [token() for _ in range(5)]
    for tok in toks:
        # Ignores TERM (so only a KILL ends it) before it logs its token.
        script = f"trap '' TERM; echo {tok} >> \"$HOME/ran\"; sleep 60"
        async with sprite.process(
            "sh", "-c", script, stdin=False, max_run_after_disconnect=120
        ) as proc:
            await proc.detach()
    for tok in toks:
        assert tok in await wait_for_token(sprite, tok)
    ids = {tok: await sessions_running(sprite, tok) for tok in toks}
    assert all(len(found) == 1 for found in ids.values()), ids  # none lost, none doubled
    listed = {s.id for s in await sprite.sessions.list()}
    assert {found[0] for found in ids.values()} <= listed

    # TERM: the first POST to a session's kill route loses its answer; TERM
    # is not repeated (a second one often means "force it").
    first = ids[toks[0]][0]
    with pytest.raises(SpritesConnectionError) as info:
        await sprite.sessions.kill(first, signal="TERM", timeout=0)
    assert type(info.value) is SpritesConnectionError
    assert (info.value.operation, info.value.sprite) == ("kill session", "kil")
    assert await sessions_running(sprite, toks[0]) == [first]  # TERM was ignored
    # The route has answered once: KILL now streams its events, their text
    # taken from `data` (kill-event-data-error).
    events = [event async for event in sprite.sessions.kill(first, signal="KILL")]
    assert events[-1].type == "complete"
    assert any(e.message for e in events if e.type != "complete")
    assert await sessions_running(sprite, toks[0]) == []

    # KILL on a fresh route: its lost answer is recovered by sending it again.
    for tok in toks[1:]:
        await sprite.sessions.kill(ids[tok][0], signal="KILL")
    assert await sessions_running(sprite, "tok-") == []
    once_each(await ran(sprite), toks)


# ------------------------------------------------------------- checkpoints


async def test_checkpoints(emu: Emulator, client: SpritesClient, sent: Sent) -> None:
    sprite = await make(client, "cp")
    before = {c.id for c in await sprite.checkpoints.list()}
    await (sprite.fs() / "state").write_text("one")
    with pytest.raises(SpritesConnectionError) as info:
        await sprite.checkpoints.create(comment="one")
    assert type(info.value) is SpritesConnectionError
    assert (info.value.operation, info.value.sprite) == ("create checkpoint", "cp")
    assert sent.count("POST", "/cp/checkpoint") == 1
    made = [c for c in await sprite.checkpoints.list() if c.id not in before]
    assert [c.comment for c in made] == ["one"]  # it exists, once
    first = made[0].id
    ids = [first]
    for comment in ("two", "three", "four"):
        await (sprite.fs() / "state").write_text(comment)
        ids.append((await sprite.checkpoints.create(comment=comment)).id)
    listed = [c for c in await sprite.checkpoints.list() if c.id not in before]
    assert sorted(c.id for c in listed) == sorted(ids)
    assert {c.id: c.comment for c in listed} == dict(zip(ids, ["one", "two", "three", "four"]))
    got = await sprite.checkpoints.get(ids[1])
    assert (got.id, got.comment) == (ids[1], "two")

    # Restore: its first answer is lost; a restore is not sent twice (it
    # would restart the sprite again), and it did happen.
    with pytest.raises(SpritesConnectionError) as info:
        await sprite.checkpoints.restore(first)
    assert (info.value.operation, info.value.sprite) == ("restore checkpoint", "cp")
    assert sent.count("POST", f"/checkpoints/{first}/restore") == 1
    assert await (sprite.fs() / "state").read_text() == "one"
    # The route has answered once: the same restore now streams to its end.
    await (sprite.fs() / "state").write_text("changed")
    await sprite.checkpoints.restore(first)
    assert await (sprite.fs() / "state").read_text() == "one"
    assert sent.count("POST", f"/checkpoints/{first}/restore") == 2

    with pytest.raises(NotFoundError) as gone:
        await sprite.checkpoints.delete(ids[3])
    exc = gone.value
    assert not isinstance(exc, CheckpointNotFoundError)
    assert (exc.status_code, exc.code, exc.operation, exc.sprite) == (
        404,
        "route_not_found",
        "delete checkpoint",
        "cp",
    )
    ids_of(exc, api_layer=False)
    assert ids[3] in {c.id for c in await sprite.checkpoints.list()}


# -------------------------------------------------------------------- files


async def test_files(emu: Emulator, client: SpritesClient, sent: Sent) -> None:
    sprite = await make(client, "fs")
    fs = sprite.fs("/home/sprite")
    names = [f"f{i:02d}.txt" for i in range(12)]
    for name in names:
        await (fs / "dir" / name).write_text(name)
    await (fs / "dir" / "sub").mkdir()
    await (fs / "empty").mkdir()
    listed = sorted([p.name async for p in (fs / "dir").iterdir()])
    assert listed == sorted([*names, "sub"])
    assert await (fs / "empty").scandir() == []  # entries: null
    # fs-range-ignored: a 200 with the whole file, trimmed client-side.
    await (fs / "digits").write_bytes(b"0123456789" * 1000)
    part = b"".join([c async for c in (fs / "digits").open_read(offset=12_345 % 10_000, length=7)])
    assert part == b"5678901"

    # rename: the first answer is lost, the rename happened, and is not re-sent.
    with pytest.raises(SpritesConnectionError) as info:
        await (fs / "dir" / "f00.txt").rename(fs / "dir" / "moved.txt")
    assert (info.value.operation, info.value.sprite) == ("fs rename", "fs")
    assert sent.count("POST", "/fs/rename") == 1
    assert await (fs / "dir" / "moved.txt").read_text() == "f00.txt"
    assert not await (fs / "dir" / "f00.txt").exists()
    # copy: the same (a repeat would land inside the destination).
    with pytest.raises(SpritesConnectionError) as info:
        await (fs / "dir").copy(fs / "copy")
    assert (info.value.operation, info.value.sprite) == ("fs copy", "fs")
    assert sent.count("POST", "/fs/copy") == 1
    copied = sorted([p.name async for p in (fs / "copy").iterdir()])
    assert copied == sorted([*names[1:], "moved.txt", "sub"])  # not nested
    # chmod sets an absolute mode: its lost answer is recovered by a re-send.
    await (fs / "digits").chmod(0o600)
    assert sent.count("POST", "/fs/chmod") == 2
    assert (await (fs / "digits").stat()).mode & 0o777 == 0o600


# ----------------------------------------------------------------- services


async def test_services(emu: Emulator, client: SpritesClient, sent: Sent) -> None:
    sprite = await make(client, "svc")
    forever = sprite.fs() / "forever"
    await forever.write_text("#!/bin/sh\nexec sleep 60\n")
    await forever.chmod(0o755)
    services = sprite.services
    await services.create("with-args", cmd="sleep", args=["60"], duration=0.2)
    await services.create("no-args", cmd="/home/sprite/forever", duration=0.2)
    await services.create("needs", cmd="sleep", args=["60"], needs=["no-args"], duration=0.2)
    listed = {s.name: s for s in await services.list()}
    assert sorted(listed) == ["needs", "no-args", "with-args"]
    assert (listed["no-args"].args, listed["no-args"].needs) == ([], [])  # null on the wire
    assert listed["needs"].needs == ["no-args"]
    got = await services.get("no-args")
    assert (got.cmd, got.args, got.status) == ("/home/sprite/forever", [], "running")

    with pytest.raises(NotFoundError) as info:
        await services.logs("with-args")
    assert not isinstance(info.value, ServiceNotFoundError)
    assert (info.value.status_code, info.value.code, info.value.operation) == (
        404,
        "route_not_found",
        "service logs",
    )
    ids_of(info.value, api_layer=False)
    # restart is a POST: the 404's answer is lost first, and not re-sent.
    with pytest.raises(SpritesConnectionError) as lost:
        await services.restart("with-args")
    assert (lost.value.operation, lost.value.sprite) == ("restart service", "svc")
    assert sent.count("POST", "/services/with-args/restart") == 1
    with pytest.raises(NotFoundError) as info:
        await services.restart("with-args")
    assert not isinstance(info.value, ServiceNotFoundError)
    assert (info.value.status_code, info.value.code, info.value.operation, info.value.sprite) == (
        404,
        "route_not_found",
        "restart service",
        "svc",
    )
    ids_of(info.value, api_layer=False)

    # stop and start: the first answer of each route is lost; neither is sent twice.
    with pytest.raises(SpritesConnectionError) as lost:
        await services.stop("with-args", timeout=1)
    assert (lost.value.operation, lost.value.sprite) == ("stop service", "svc")
    assert sent.count("POST", "/services/with-args/stop") == 1
    assert (await services.get("with-args")).status == "stopped"
    with pytest.raises(SpritesConnectionError) as lost:
        await services.start("with-args", duration=0.2)
    assert (lost.value.operation, lost.value.sprite) == ("start service", "svc")
    assert sent.count("POST", "/services/with-args/start") == 1
    assert (await services.get("with-args")).status == "running"

    for name in ("needs", "with-args", "no-args"):
        await services.delete(name)
    assert await services.list() == []


# ------------------------------------------------------------------- policy


async def test_policy(emu: Emulator, client: SpritesClient, sent: Sent) -> None:
    sprite = await make(client, "pol")
    assert (await sprite.policy.get()).rules == []
    rules = [
        DomainRule(domain="example.com", action="allow"),
        DomainRule(domain="*", action="deny"),
    ]
    # A full replacement: its lost answer is recovered by sending it again.
    await sprite.policy.set(rules)
    assert sent.count("POST", "/policy/network") == 2
    assert (await sprite.policy.get()).rules == rules
    await sprite.policy.clear()
    assert (await sprite.policy.get()).rules == []


# -------------------------------------------------------------------- fleet


async def test_fleet_cleanup_deletes_every_sprite_of_the_prefix(
    emu: Emulator, client: SpritesClient
) -> None:
    names = [f"fl-{i}" for i in range(7)]
    for i, name in enumerate(names):
        await make(client, name, ["ci"] if i % 3 == 0 else None)
    await make(client, "keep-me")
    toks = {name: token() for name in names}
    outcome = await fleet.run_many(
        [client.sprite(n) for n in names],
        lambda s: s.exec(*logged(toks[s.name], f"echo {s.name}")),
        client=client,
        concurrency=4,
    )
    assert outcome.ok
    assert {n: r.stdout for n, r in outcome.values.items()} == {n: f"{n}\n".encode() for n in names}
    for name in names:
        assert await ran(client.sprite(name)) == [toks[name]]

    report = await fleet.cleanup(client, prefix="fl-")
    assert sorted(report.deleted) == names
    assert not report.failed
    assert [s.name async for s in client.sprites.list(prefix="fl-", max_results=2)] == []
    assert [s.name async for s in client.sprites.list()] == ["keep-me"]


async def test_fleet_exit_deletes_a_sprite_whose_create_answer_was_lost(
    emu: Emulator, client: SpritesClient
) -> None:
    async with fleet.Fleet(client, prefix="fx-", concurrency=1) as group:
        result = await group.create(3)
        assert len(result.failed) == 1
        assert isinstance(result.failed[0].error, SpritesConnectionError)
    left = [s.name async for s in client.sprites.list(prefix="fx-")]
    assert left == []
