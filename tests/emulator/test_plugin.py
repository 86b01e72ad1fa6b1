"""The pytest plugin, exercised on small user test files through ``pytester``."""

from __future__ import annotations

import pytest

import sprites_async

pytest_plugins = ["pytester"]

USER_TESTS = """
import json
import urllib.error
import urllib.request

import pytest

SEEN = []


def get(emu, path):
    req = urllib.request.Request(
        emu.url + path, headers={"Authorization": "Bearer " + emu.token}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.load(resp)


def test_first(sprites_emulator):
    status, page = get(sprites_emulator, "/v1/sprites")
    assert status == 200
    assert page["sprites"] == []
    sprites_emulator.seed(2)
    SEEN.append(sprites_emulator)


def test_second(sprites_emulator):
    SEEN.append(sprites_emulator)
    status, page = get(sprites_emulator, "/v1/sprites")
    print("SPRITES", len(page["sprites"]))
    if SEEN[0] is not sprites_emulator:
        # The previous test's emulator must be gone.
        with pytest.raises(urllib.error.URLError):
            get(SEEN[0], "/v1/sprites")


def test_report():
    print("DISTINCT", len({id(e) for e in SEEN}))
"""

FAST = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
"""Inner runs skip plugins they do not need (hypothesis alone costs a second)."""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
{extra}
"""


def run(pytester: pytest.Pytester, extra: str = "") -> pytest.RunResult:
    pytester.makeini(INI.format(extra=extra))
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester.runpytest("-s", *FAST)


def test_function_scope_by_default(pytester: pytest.Pytester) -> None:
    result = run(pytester)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*SPRITES 0*", "*DISTINCT 2*"])


def test_session_scope_from_the_ini_option(pytester: pytest.Pytester) -> None:
    result = run(pytester, "sprites_emulator_scope = session")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*SPRITES 2*", "*DISTINCT 1*"])


def test_a_bad_scope_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "sprites_emulator_scope = forever")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sprites_emulator_scope must be one of*'forever'*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_options_can_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def sprites_emulator_options():
    return {"token": "org/1/custom/token", "warm_after": 0.25}
"""
    )
    pytester.makepyfile(
        test_opts="""
def test_opts(sprites_emulator):
    assert sprites_emulator.token == "org/1/custom/token"
    assert sprites_emulator.config.warm_after == 0.25
"""
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(
    not hasattr(sprites_async, "SpritesClient"),
    reason="sprites_async.SpritesClient does not exist yet (the client SDK is in progress)",
)
def test_sprites_client_is_built_and_closed(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_client="""
import sprites_async

CLIENTS = []


async def test_uses_client(sprites_client, sprites_emulator):
    assert isinstance(sprites_client, sprites_async.SpritesClient)
    assert not sprites_client.closed
    CLIENTS.append(sprites_client)


def test_client_was_closed():
    assert len(CLIENTS) == 1
    assert CLIENTS[0].closed
"""
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=2)
