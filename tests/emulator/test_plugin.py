"""The pytest plugin, exercised on small user test files through ``pytester``."""

from __future__ import annotations

from pathlib import Path

import pytest

import sprites_async
from tests._pytester import FAST, INI

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


LOOP_SCOPE_ADVICE = "ignore:The configuration option:pytest.PytestDeprecationWarning"

STRICT_USER_TESTS = """
import time

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def web(sprites_client):
    await sprites_client.sprites.create("web")
    yield sprites_client.sprite("web")


async def test_direct(sprites_client):
    page = await sprites_client.sprites.list()
    assert page.items == []


async def test_through_a_user_fixture(web):
    info = await web.refresh()
    assert info.name == "web"


async def test_emulator_only(sprites_emulator):
    assert sprites_emulator.url.startswith("http://")


def test_sync_is_untouched(sprites_emulator):
    assert sprites_emulator.token


@pytest.mark.parametrize("prefix", ["a", "b"])
async def test_parametrized(sprites_client, prefix):
    assert (await sprites_client.sprites.list(prefix=prefix)).items == []


class TestInAClass:
    async def test_method(self, sprites_client):
        assert not sprites_client.closed


async def test_injected_faults_do_not_sleep(sprites_client, sprites_emulator):
    sprites_emulator.faults.update({"error_status": 503, "error_count": 2})
    started = time.monotonic()
    await sprites_client.sprites.list()
    print("RETRY_AFTER", sprites_emulator.faults.retry_after)
    print("BASE_DELAY", sprites_client.retry.base_delay)
    print("ELAPSED", round(time.monotonic() - started, 3))
"""


@pytest.mark.skipif(
    not hasattr(sprites_async, "SpritesClient"),
    reason="sprites_async.SpritesClient does not exist yet (the client SDK is in progress)",
)
def test_async_tests_run_in_strict_mode_without_any_ini(pytester: pytest.Pytester) -> None:
    # No ini file at all: pytest-asyncio is in its default strict mode, and the
    # user has not marked anything.
    pytester.makepyfile(test_strict=STRICT_USER_TESTS)
    # pytest-asyncio's own advice to set its loop scope is not ours to silence.
    result = pytester.runpytest("-s", "-W", "error", "-W", LOOP_SCOPE_ADVICE, *FAST)
    result.assert_outcomes(passed=8)
    out = result.stdout.str()
    assert "not natively supported" not in out
    result.stdout.fnmatch_lines(["*RETRY_AFTER 0*", "*BASE_DELAY 0.005*"])
    # Two 503s, retried: with Retry-After 1 this took more than 2 s.
    elapsed = float(out.split("ELAPSED ", 1)[1].split()[0])
    assert elapsed < 1.5


def test_retry_after_can_be_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def sprites_emulator_options():
    return {"exit_linger": 0.0, "retry_after": 3}
"""
    )
    pytester.makepyfile(
        test_wait="""
def test_wait(sprites_emulator):
    assert sprites_emulator.faults.retry_after == 3
"""
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)


def test_async_tests_without_the_fixtures_are_left_alone(pytester: pytest.Pytester) -> None:
    # Only tests that ask for the emulator are this plugin's business.
    pytester.makeini(INI.format(extra="").replace("auto", "strict"))
    pytester.makepyfile(
        test_other="""
async def test_other():
    pass
"""
    )
    result = pytester.runpytest(*FAST)
    assert result.parseoutcomes().get("passed", 0) == 0


def readme_plugin_sample() -> str:
    """The pytest file of the docs' pytest plugin paragraph (docs/guides/testing.md)."""
    page = Path(__file__).resolve().parents[2] / "docs" / "guides" / "testing.md"
    readme = page.read_text(encoding="utf-8")
    section = readme[readme.index("**pytest plugin**") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_setup_runs_with_no_ini(pytester: pytest.Pytester) -> None:
    sample = readme_plugin_sample()
    assert sample.startswith("# not run:")  # test_readme_samples.py leaves it to this test
    pytester.makepyfile(test_readme=sample)
    result = pytester.runpytest("-W", "error", "-W", LOOP_SCOPE_ADVICE, *FAST)
    result.assert_outcomes(passed=2)
