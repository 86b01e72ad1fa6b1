"""A command the sprite cannot start is a typed error, not an outage (issue 13 item 5)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import (
    CommandNotFoundError,
    CommandStartError,
    ExecError,
    ServerError,
    SpritesClient,
)
from sprites_async._cli import main
from sprites_async._config import ExecSettings
from sprites_async._errors import api_error_from_response, command_start_error
from sprites_async._exec import ExecRequest, _start_error_of
from sprites_async.emulator import Emulator
from tests._emulator import no_leftovers

NOEXEC = "./noexec.sh"  # relative to the home: also right without a sandbox


@pytest.fixture(params=["control", "direct", "http"])
async def runner(request: pytest.FixtureRequest, exec_emu: Any) -> AsyncIterator[Any]:
    """``run(*argv, cwd=...)`` over one of the three exec paths."""
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
    client.control = request.param == "control"
    sprite = client.sprite("box")
    await sprite.exec("sh", "-c", f"printf 'echo hi\\n' > {NOEXEC}; chmod 644 {NOEXEC}")

    async def run(*argv: str, cwd: str | None = None) -> Any:
        if request.param == "http":
            return await sprite.run_http(*argv, cwd=cwd)
        return await sprite.exec(*argv, cwd=cwd)

    yield run
    await no_leftovers(exec_emu, client)


async def test_missing_executable_is_command_not_found(runner: Any, exec_emu: Any) -> None:
    with pytest.raises(CommandNotFoundError) as info:
        await runner("no-such-program-xyz", "arg")
    err = info.value
    assert err.exit_code == 127 and err.reason == "not_found"
    assert err.argv == ("no-such-program-xyz", "arg")
    assert err.sprite == "box"
    assert "no-such-program-xyz: command not found" in str(err)
    assert "no-such-program-xyz" in err.server_message
    assert not isinstance(err, ServerError)
    assert exec_emu.state.sessions.list("box") == []  # nothing ran, nothing was re-sent


async def test_missing_absolute_path_is_command_not_found(runner: Any) -> None:
    with pytest.raises(CommandNotFoundError) as info:
        await runner("/no/such/tool")
    assert "no such file or directory" in info.value.server_message


async def test_file_without_exec_bit_cannot_execute(runner: Any) -> None:
    with pytest.raises(CommandStartError) as info:
        await runner(NOEXEC)
    err = info.value
    assert not isinstance(err, CommandNotFoundError)
    assert (err.exit_code, err.reason) == (126, "not_executable")
    assert "permission denied" in err.server_message


async def test_missing_working_directory(runner: Any) -> None:
    with pytest.raises(CommandStartError) as info:
        await runner("true", cwd="/home/sprite/nope")
    err = info.value
    assert not isinstance(err, CommandNotFoundError)
    assert (err.reason, err.cwd, err.exit_code) == ("cwd", "/home/sprite/nope", 126)
    assert "/home/sprite/nope" in str(err)


async def test_a_shell_still_reports_its_own_127(runner: Any) -> None:
    assert (await runner("sh", "-c", "no-such-program-xyz")).exit_code == 127


async def test_process_raises_it_on_enter(exec_emu: Any) -> None:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    with pytest.raises(CommandNotFoundError):
        async with client.sprite("box").process("no-such-program-xyz"):
            pass
    await no_leftovers(exec_emu, client)


REQ = ExecRequest.build(["tool", "x"], cwd="/w")


def test_only_start_failures_are_start_errors() -> None:
    def of(status: int, body: bytes) -> Any:
        return _start_error_of(api_error_from_response(status, {}, body), REQ, "box")

    # The real POST /exec wording, with no detail: a start error of no known kind.
    bare = of(500, b"failed to start process\n")
    assert type(bare) is CommandStartError and (bare.reason, bare.exit_code) == ("other", 126)
    assert bare.status_code == 500 and bare.argv == ("tool", "x") and bare.cwd == "/w"
    found = of(500, b'failed to start process: exec: "tool": executable file not found in $PATH')
    assert isinstance(found, CommandNotFoundError)
    # Outages stay outages.
    assert of(500, b"failed to create runner\n") is None
    assert of(500, b'{"error":"failed to retrieve sprite"}') is None
    assert of(500, b"failed to start process: fork: resource temporarily unavailable") is None
    assert of(500, b"failed to start process: netns: no such file or directory") is None
    assert of(502, b"failed to start process") is None
    assert of(503, b"Process not ready after 30s") is None


def test_control_texts() -> None:
    def of(text: str) -> Any:
        return command_start_error(text, prefixed=False, argv=("tool",), cwd=None)

    assert isinstance(of('exec: "tool": executable file not found in $PATH'), CommandNotFoundError)
    assert of("fork/exec /x/tool: permission denied").reason == "not_executable"
    assert of("chdir /w: no such file or directory").reason == "cwd"
    assert of("failed to start process: exec format error").reason == "not_executable"
    assert of("failed to start process: tool: Permission denied").reason == "not_executable"
    for other in (
        "session not found: 12",
        "No command specified",
        "operation already running",
        # Generic words about something else than the command: not a start error.
        "the sprite's network is unavailable: [Errno 2] No such file or directory",
        "open /dev/pts/ptmx: permission denied",
    ):
        assert of(other) is None


def test_start_errors_pickle_and_print_one_line() -> None:
    err = command_start_error(
        "fork/exec /x: permission denied",
        prefixed=False,
        argv=("/x",),
        cwd=None,
        sprite="box",
        headers={"x-request-id": "r1"},
        status_code=500,
    )
    assert err is not None and isinstance(err, ExecError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CommandStartError and str(back) == str(err)
    assert "\n" not in str(err) and "request_id=r1" in str(err)


def test_cli_exits_like_a_shell(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "box"]) == 0
    capsys.readouterr()
    assert main(["exec", "box", "--", "no-such-program-xyz"]) == 127
    err = capsys.readouterr().err
    assert "no-such-program-xyz: command not found" in err
    assert "retry later" not in err and len(err.strip().splitlines()) == 1
    assert main(["exec", "box", "--", "sh", "-c", f"echo x > {NOEXEC}; chmod 644 {NOEXEC}"]) == 0
    capsys.readouterr()
    assert main(["exec", "box", "--", NOEXEC]) == 126
    assert "cannot execute" in capsys.readouterr().err
