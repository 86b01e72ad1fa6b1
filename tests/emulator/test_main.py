"""The ``Emulator`` entry point and ``python -m sprites_async.emulator``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import sprites_async
from sprites_async.emulator import Emulator, default_token
from sprites_async.emulator.__main__ import build_parser


def http_get(url: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.load(resp)


# -- Emulator --------------------------------------------------------------------


def test_default_token_has_four_parts() -> None:
    parts = default_token().split("/")
    assert len(parts) == 4
    assert all(parts)
    assert default_token() != default_token()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        Emulator(host=host)
    Emulator(host=host, allow_non_loopback=True)  # allowed when asked for (not started)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.1.2.3"])
def test_accepts_loopback_hosts(host: str) -> None:
    Emulator(host=host)


def test_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="warm_afterr"):
        Emulator(warm_afterr=1)


def test_state_is_unavailable_before_start() -> None:
    emu = Emulator()
    with pytest.raises(RuntimeError):
        _ = emu.state
    with pytest.raises(RuntimeError):
        emu.seed(1)


async def test_async_context_manager() -> None:
    async with Emulator(warm_after=1.5, inline_exec=True) as emu:
        assert emu.url == f"http://127.0.0.1:{emu.port}"
        assert emu.port > 0
        assert emu.config.warm_after == 1.5
        assert emu.config.inline_exec is True
        assert emu.faults is emu.state.faults
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                emu.url + "/v1/sprites", headers={"Authorization": f"Bearer {emu.token}"}
            ) as resp,
        ):
            assert resp.status == 200
        url = emu.url
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url + "/_emulator/health")


async def test_explicit_port_and_ipv6_loopback() -> None:
    async with Emulator(host="::1") as emu:
        assert emu.url.startswith("http://[::1]:")
        async with aiohttp.ClientSession() as http, http.get(emu.url + "/_emulator/health") as r:
            assert r.status == 200


async def test_starting_twice_is_an_error() -> None:
    async with Emulator() as emu:
        with pytest.raises(RuntimeError):
            await emu.start()


async def test_seeding_ten_thousand() -> None:
    # How fast seeding is belongs to benchmarks/, not to a timed assertion here.
    async with Emulator() as emu:
        names = emu.seed(10_000)
        assert len(names) == 10_000
        assert len(emu.state.sprites) == 10_000
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                emu.url + "/v1/sprites?max_results=50&prefix=sprite-09",
                headers={"Authorization": f"Bearer {emu.token}"},
            ) as resp,
        ):
            page = await resp.json()
        assert page["sprites"][0]["name"] == "sprite-09000"
        assert page["cold"] == 10_000


def test_threaded_mode_serves_sync_code() -> None:
    with Emulator() as emu:
        assert emu.seed(2, prefix="t-") == ["t-00000", "t-00001"]
        status, page = http_get(emu.url + "/v1/sprites", emu.token)
        assert status == 200
        assert [s["name"] for s in page["sprites"]] == ["t-00000", "t-00001"]
        emu.faults.error_count = 1
        with pytest.raises(urllib.error.HTTPError) as info:
            http_get(emu.url + "/v1/sprites", emu.token)
        assert info.value.code == 503
        info.value.close()
        url = emu.url
    assert not any(t.name == "sprites-emulator" for t in threading.enumerate())
    with pytest.raises(OSError):
        http_get(url + "/v1/sprites", "x")


async def test_threaded_mode_from_an_event_loop() -> None:
    with Emulator() as emu:
        emu.seed(1)
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                emu.url + "/v1/sprites", headers={"Authorization": f"Bearer {emu.token}"}
            ) as resp,
        ):
            assert resp.status == 200
            assert len((await resp.json())["sprites"]) == 1


def test_threaded_start_failure_is_raised() -> None:
    with Emulator() as first:
        with pytest.raises(OSError), Emulator(port=first.port):
            pass
    assert not any(t.name == "sprites-emulator" for t in threading.enumerate())


@pytest.mark.skipif(
    not hasattr(sprites_async, "SpritesClient"),
    reason="sprites_async.SpritesClient does not exist yet (the client SDK is in progress)",
)
async def test_client_helper() -> None:
    async with Emulator() as emu:
        client = emu.client()
        try:
            assert isinstance(client, sprites_async.SpritesClient)
        finally:
            await client.aclose()


# -- python -m sprites_async.emulator ----------------------------------------------


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sprites_async.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_cli(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def test_cli_json_mode(tmp_path: Path) -> None:
    state_dir = tmp_path / "cli-state"
    proc = start_cli("--json", "--seed", "3", "--token", "a/1/b/c", "--state-dir", str(state_dir))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["token"] == "a/1/b/c"
        assert info["pid"] == proc.pid
        assert info["url"].startswith("http://127.0.0.1:")
        status, page = http_get(info["url"] + "/v1/sprites", info["token"])
        assert status == 200
        assert len(page["sprites"]) == 3
    finally:
        code, err = stop_cli(proc, signal.SIGTERM)
    assert code == 0, err
    assert (state_dir / "emulator.sqlite3").exists()


def test_cli_text_mode_and_sigint() -> None:
    proc = start_cli("--inline-exec", "--exit-linger", "0")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        url = lines[0].rsplit(" ", 1)[1].strip()
        token = lines[1].split(": ", 1)[1].strip()
        assert lines[2].strip() == f"export SPRITES_API_URL={url}"
        assert lines[3].strip() == f"export SPRITES_TOKEN={token}"
        assert http_get(url + "/v1/sprites", token)[0] == 200
    finally:
        code, err = stop_cli(proc, signal.SIGINT)
    assert code == 0, err


def test_cli_refuses_a_public_host() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sprites_async.emulator", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "non-loopback" in proc.stderr


def test_cli_parser_options() -> None:
    args = build_parser().parse_args(
        ["--port", "8080", "--warm-after", "1", "--cold-after", "2", "--sandbox", "none"]
    )
    assert (args.port, args.warm_after, args.cold_after, args.sandbox) == (8080, 1.0, 2.0, "none")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sandbox", "docker"])


async def test_cli_port_in_use_is_a_clean_error() -> None:
    async with Emulator() as emu:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sprites_async.emulator",
            "--port",
            str(emu.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"cannot serve" in err
    assert b"Traceback" not in err
