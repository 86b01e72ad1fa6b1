"""The token never leaks: not in logs, reprs, error messages, tracebacks or CLI output.

Every failure kind is provoked for real: HTTP errors (401, 404) from the
emulator, refused WebSocket handshakes (exec, control, direct process),
transport failures (a closed port) and timeouts (a server that never
answers). For each error the message, ``repr``, the formatted traceback with
its whole ``__cause__``/``__context__`` chain, and the locals of the SDK's own
frames are searched for the secret part of a distinctive token; so is every
log record (all loggers, aiohttp's included, at DEBUG).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sprites_async import (
    AuthenticationError,
    NotFoundError,
    RetryPolicy,
    SpritesClient,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
    Timeouts,
)
from sprites_async._cli import EXIT_API, EXIT_CONNECTION, main
from sprites_async.emulator import Emulator, EmulatorConfig
from tests._emulator import RunningEmulator, serve

SECRET = "Zq9xSECRETxYz4242"
TOKEN = f"secrecy-org/42/tokid/{SECRET}"
WRONG_SECRET = "Wr0ngSECRETvalue77"
WRONG = f"secrecy-org/42/tokid/{WRONG_SECRET}"
SECRETS = (SECRET, WRONG_SECRET)
NO_RETRY = RetryPolicy(max_attempts=1)


def assert_clean(text: str, what: str = "") -> None:
    for secret in SECRETS:
        assert secret not in text, f"the token leaked in {what}: {text[:2000]}"


def assert_error_clean(exc: BaseException) -> None:
    """Message, repr, traceback (whole chain) and the SDK frames' locals."""
    assert_clean(str(exc), "str()")
    assert_clean(repr(exc), "repr()")
    assert_clean("".join(traceback.format_exception(exc)), "the traceback")
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        assert_clean(str(chain), f"the chained {type(chain).__name__}")
        assert_clean(repr(chain.args), f"the args of {type(chain).__name__}")
        # With locals: only the SDK's own frames (aiohttp's hold the headers it sends).
        tb = chain.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if "sprites_async" in frame.f_code.co_filename:
                for name, value in frame.f_locals.items():
                    if name in ("self", "token") or isinstance(value, (dict, str, bytes)):
                        assert_clean(repr(value), f"local {name!r} of {frame.f_code.co_name}")
            tb = tb.tb_next
        chain = chain.__cause__ or chain.__context__


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("sprites_async", "aiohttp", "aiohttp.client", "aiohttp.access", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert records, "nothing was logged: the check would be vacuous"
    for record in records:
        assert_clean(record.getMessage(), f"a log record of {record.name}")
        assert_clean(repr(record.__dict__), f"the fields of a log record of {record.name}")
        if record.exc_info and record.exc_info[1] is not None:
            assert_error_clean(record.exc_info[1])


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(
        token=TOKEN, state_dir=tmp_path / "state", exit_linger=0.0, inline_exec=True
    )
    async with serve(config) as running:
        running.add_sprite("box")
        yield running


async def test_reprs_never_show_the_token(emu: RunningEmulator) -> None:
    async with SpritesClient(TOKEN, base_url=emu.url, retry=NO_RETRY) as client:
        sprite = client.sprite("box")
        objects: list[object] = [
            client,
            sprite,
            sprite.fs(),
            sprite.fs() / "x.txt",
            sprite.checkpoints,
            sprite.services,
            sprite.policy,
            sprite.sessions,
            client.sprites,
        ]
        async with sprite.process("cat") as proc:
            objects.append(proc)
            await proc.close_stdin()
            assert await proc.wait() == 0
        result = await sprite.exec("echo", "hi")
        objects.append(result)
        for obj in objects:
            assert_clean(repr(obj), f"repr({type(obj).__name__})")
            assert_clean(str(obj), f"str({type(obj).__name__})")
        assert client.org == "secrecy-org"  # the org may show; the secret may not


async def test_http_errors(emu: RunningEmulator, all_logs: pytest.LogCaptureFixture) -> None:
    async with SpritesClient(TOKEN, base_url=emu.url, retry=NO_RETRY) as client:
        with pytest.raises(NotFoundError) as not_found:
            await client.sprites.get("nope")
        assert_error_clean(not_found.value)
        with pytest.raises(NotFoundError) as no_file:
            await (client.sprite("box").fs() / "missing.txt").read_bytes()
        assert_error_clean(no_file.value)
    async with SpritesClient(WRONG, base_url=emu.url, retry=NO_RETRY) as client:
        with pytest.raises(AuthenticationError) as refused:
            await client.sprites.list()
        assert_error_clean(refused.value)
        assert_clean(repr(refused.value.headers) + repr(refused.value.body))
        with pytest.raises(AuthenticationError) as refused_fs:
            await (client.sprite("box").fs() / "x").write_bytes(b"data")
        assert_error_clean(refused_fs.value)


async def test_websocket_handshake_failures(
    emu: RunningEmulator, all_logs: pytest.LogCaptureFixture
) -> None:
    for control in (True, False):
        async with SpritesClient(WRONG, base_url=emu.url, retry=NO_RETRY, control=control) as c:
            sprite = c.sprite("box")
            with pytest.raises(AuthenticationError) as exec_refused:
                await sprite.exec("echo", "hi")
            assert_error_clean(exec_refused.value)
            with pytest.raises(AuthenticationError) as proc_refused:
                async with sprite.process("cat"):
                    pass
            assert_error_clean(proc_refused.value)
    async with SpritesClient(TOKEN, base_url=emu.url, retry=NO_RETRY) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.sprite("nope").exec("echo", "hi")
        assert_error_clean(missing.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_transport_failures(all_logs: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    async with SpritesClient(TOKEN, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(SpritesConnectionError) as http_failed:
            await client.sprites.get("box")
        assert_error_clean(http_failed.value)
        with pytest.raises(SpritesConnectionError) as ws_failed:
            await client.sprite("box").exec("echo", "hi")
        assert_error_clean(ws_failed.value)


async def test_timeouts(all_logs: pytest.LogCaptureFixture) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    quick = Timeouts(connect=1.0, read=0.2, wake=0.2, create=0.2, stream_idle=0.2)
    try:
        async with SpritesClient(
            TOKEN, base_url=f"http://127.0.0.1:{port}", retry=NO_RETRY, timeout=quick
        ) as client:
            with pytest.raises(SpritesTimeoutError) as http_timeout:
                await client.sprites.get("box")
            assert_error_clean(http_timeout.value)
            with pytest.raises(SpritesTimeoutError) as ws_timeout:
                await client.sprite("box").exec("echo", "hi")
            assert_error_clean(ws_timeout.value)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------- the CLI


@pytest.fixture
def threaded_emu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(TOKEN, exit_linger=0.0, inline_exec=True) as emulator:
        monkeypatch.setenv("SPRITES_API_URL", emulator.url)
        monkeypatch.delenv("SPRITE_TOKEN", raising=False)
        monkeypatch.chdir(tmp_path)
        yield emulator


def test_cli_output_on_errors(
    threaded_emu: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    all_logs: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SPRITES_TOKEN", WRONG)
    for argv, expected in (
        (["get", "box"], EXIT_API),
        (["exec", "box", "--", "echo", "hi"], EXIT_API),
        (["list"], EXIT_API),
    ):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == expected, (argv, out, err)
        assert_clean(out + err, f"the output of {argv}")
    main(["doctor", "box"])
    out, err = capsys.readouterr()
    assert "401" in out + err or "refused" in (out + err).lower()
    assert_clean(out + err, "doctor's output")
    monkeypatch.setenv("SPRITES_TOKEN", TOKEN)
    monkeypatch.setenv("SPRITES_API_URL", f"http://127.0.0.1:{_closed_port()}")
    assert main(["get", "box"]) == EXIT_CONNECTION
    out, err = capsys.readouterr()
    assert_clean(out + err, "the output on a connection failure")


def test_errors_are_sdk_errors() -> None:
    # Sanity: the helpers above really search what they claim to.
    exc = SpritesError(f"oops {SECRET}")
    with pytest.raises(AssertionError):
        assert_error_clean(exc)
    inner = ValueError(f"token={SECRET}")
    outer = SpritesError("clean")
    outer.__cause__ = inner
    with pytest.raises(AssertionError):
        assert_error_clean(outer)
