"""The quirk switchboard: names, profiles, the admin route, the CLI and the plugin."""

from __future__ import annotations

import pytest

from sprites_async.emulator import PROFILES, QUIRKS, Emulator, QuirkSet, resolve_quirks
from sprites_async.emulator.__main__ import main as emulator_main
from tests._emulator import RunningEmulator
from tests._pytester import FAST, INI

pytest_plugins = ["pytester"]


def test_profiles_name_only_known_quirks() -> None:
    for members in PROFILES.values():
        assert members <= set(QUIRKS)
    real = resolve_quirks("real-world")
    # Every quirk that can hold at once, and exactly one way of refusing /control.
    assert real.issuperset({"null-arrays", "session-info-odd-types", "post-answer-lost"})
    assert sum(1 for q in real if QuirkSet(real).control_refusal() == q) == 1


def test_unknown_names_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="nul-arrays"):
        resolve_quirks(["nul-arrays"])
    with pytest.raises(ValueError, match="unknown emulator quirk"):
        Emulator(quirks=["real-world", "no-such-thing"])
    with pytest.raises(TypeError):
        resolve_quirks([3])  # type: ignore[list-item]
    assert resolve_quirks("null-arrays, control-403") == {"null-arrays", "control-403"}
    assert resolve_quirks(None) == frozenset()


def test_quirk_set_is_mutable_and_checked() -> None:
    quirks = QuirkSet()
    assert not quirks.on("null-arrays")
    quirks.add("old-server")
    assert quirks.on("null-arrays")
    assert quirks.on("no-ports-watch")
    quirks.discard("null-arrays")
    assert not quirks.on("null-arrays")
    with pytest.raises(KeyError):
        quirks.on("not-a-quirk")
    quirks.set(["control-hang"])
    assert quirks.control_refusal() == "control-hang"
    quirks.clear()
    assert len(quirks) == 0
    assert quirks.control_refusal() is None


async def test_null_arrays_quirk_nulls_empty_arrays(emu: RunningEmulator) -> None:
    status, _ = await emu.api("POST", "/v1/sprites", json={"name": "nully"})
    assert status == 201
    status, page = await emu.api("GET", "/v1/sprites?prefix=zzz")
    assert page["sprites"] == []
    emu.state.quirks.add("null-arrays")
    status, page = await emu.api("GET", "/v1/sprites?prefix=zzz")
    assert status == 200
    assert page["sprites"] is None
    status, page = await emu.api("GET", "/v1/sprites?prefix=null")
    assert [s["name"] for s in page["sprites"]] == ["nully"]


async def test_admin_route_reads_and_edits_quirks(emu: RunningEmulator) -> None:
    status, body = await emu.api("GET", "/_emulator/quirks")
    assert status == 200
    assert body["quirks"] == []
    assert set(body["known"]) == set(QUIRKS)
    status, body = await emu.api("POST", "/_emulator/quirks", json={"add": ["old-server"]})
    assert status == 200
    assert "no-http-exec" in body["quirks"]
    status, body = await emu.api("POST", "/_emulator/quirks", json={"remove": ["no-http-exec"]})
    assert "no-http-exec" not in body["quirks"]
    status, body = await emu.api("POST", "/_emulator/quirks", json={"quirks": ["bogus"]})
    assert status == 400
    assert "bogus" in body["errors"][0]
    status, body = await emu.api("POST", "/_emulator/quirks", json={"quirks": []})
    assert body["quirks"] == []


def test_cli_lists_quirks_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert emulator_main(["--list-quirks"]) == 0
    out = capsys.readouterr().out
    for name in QUIRKS:
        assert f"{name}: " in out
    assert "profile real-world:" in out
    with pytest.raises(SystemExit):
        emulator_main(["--quirk", "bogus", "--port", "0"])
    assert "bogus" in capsys.readouterr().err


PLUGIN_TESTS = """
import pytest


@pytest.mark.sprites_quirks("no-ports-watch")
def test_marker_adds(sprites_emulator):
    assert sprites_emulator.quirks.on("no-ports-watch")
    assert sprites_emulator.quirks.on("null-arrays")


def test_ini_only(sprites_emulator):
    assert not sprites_emulator.quirks.on("no-ports-watch")
    assert sprites_emulator.quirks.on("null-arrays")
"""


def test_plugin_ini_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra="sprites_emulator_quirks = null-arrays"))
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess(*FAST)
    result.assert_outcomes(passed=2)


def test_plugin_refuses_unknown_ini_quirk(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra="sprites_emulator_quirks = nul-arrays"))
    pytester.makepyfile(test_user="def test_x(): pass\n")
    result = pytester.runpytest_subprocess(*FAST)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*sprites_emulator_quirks*nul-arrays*"])
