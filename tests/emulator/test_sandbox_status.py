"""Running without a sandbox is never silent; a required sandbox is never skipped.

These run whether or not bubblewrap is installed: its absence is simulated.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sprites_async._cli import EXIT_OK
from sprites_async._cli import main as cli_main
from sprites_async.emulator import (
    Emulator,
    EmulatorConfig,
    SandboxUnavailable,
    _sandbox,
    create_app,
)
from sprites_async.emulator.__main__ import main as emulator_main
from sprites_async.emulator._sandbox import host_user, sandbox_status

pytest_plugins = ["pytester"]


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if bubblewrap were not installed."""
    monkeypatch.setattr(_sandbox, "_probe", (False, "bubblewrap (bwrap) is not installed"))


def test_status_line_without_a_sandbox() -> None:
    sandboxed, line = sandbox_status("none")
    assert sandboxed is False
    assert line.startswith("WARNING: no sandbox")
    assert f"unsandboxed as {host_user()}" in line


def test_auto_without_bwrap_warns(no_bwrap: None) -> None:
    sandboxed, line = sandbox_status("auto")
    assert sandboxed is False
    assert "bubblewrap (bwrap) is not installed" in line and "unsandboxed" in line


@pytest.mark.parametrize("mode", ["required", "bwrap"])
def test_required_sandbox_refuses_to_start(no_bwrap: None, mode: str, tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="not installed"):
        Emulator(sandbox=mode)
    config = EmulatorConfig(token="a/1/b/c", state_dir=tmp_path, sandbox=mode)  # type: ignore[arg-type]
    with pytest.raises(SandboxUnavailable):
        create_app(config)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sandbox must be"):
        Emulator(sandbox="bubblewrap")


def test_cli_require_sandbox_refuses(no_bwrap: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        emulator_main(["--require-sandbox"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sandbox='required' but bubblewrap (bwrap) is not installed" in err


def test_emulator_reports_its_sandbox() -> None:
    with Emulator(sandbox="none") as emu:
        assert emu.sandboxed is False
        assert emu.sandbox_status.startswith("WARNING: no sandbox (sandbox='none')")


def test_startup_line_warns(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async.emulator", "--json", "--sandbox", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        info = json.loads(proc.stdout.readline())
        assert info["sandboxed"] is False
        warning = proc.stderr.readline()
        assert warning.startswith("WARNING: no sandbox (sandbox='none'): sprite commands run")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_doctor_warns_about_an_unsandboxed_emulator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Emulator(sandbox="none", exit_linger=0.0) as emu:
        monkeypatch.setenv("SPRITES_API_URL", emu.url)
        monkeypatch.setenv("SPRITES_TOKEN", emu.token)
        code = cli_main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    step = {s["name"]: s for s in report["steps"]}["emulator sandbox"]
    assert step["status"] == "warn"
    assert step["data"] == {"sandboxed": False}
    assert "unsandboxed" in step["detail"]


PLUGIN_TESTS = """
import pytest

@pytest.fixture
def sprites_emulator_options():
    return {"sandbox": "none", "exit_linger": 0.0}

def test_uses_it(sprites_emulator):
    assert sprites_emulator.url
"""


def test_plugin_says_so_in_the_summary(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sprites_emulator: WARNING: no sandbox (sandbox='none')*"])


def test_text_startup_lines_end_with_the_sandbox_status() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprites_async.emulator", "--sandbox", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        assert lines[4].startswith("WARNING: no sandbox (sandbox='none'): sprite commands run")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


@pytest.mark.parametrize(
    ("freezer", "words"),
    [
        (True, "frozen by the cgroup freezer"),
        (False, "exec sessions and services stopped with SIGSTOP"),
    ],
)
def test_status_line_says_how_warm_sprites_are_frozen(
    monkeypatch: pytest.MonkeyPatch, freezer: bool, words: str
) -> None:
    # doctor and the startup line show this line: what going warm does here.
    if not _sandbox.probe_bwrap()[0]:
        pytest.skip("bubblewrap is not usable here")
    monkeypatch.setattr(_sandbox.Cgroups, "can_freeze", property(lambda self: freezer))
    sandboxed, line = sandbox_status("auto")
    assert sandboxed is True
    assert f"warm sprites: {words}" in line


def _doctor_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> dict[str, Any]:
    with Emulator(sandbox="none", exit_linger=0.0) as emu:
        monkeypatch.setenv("SPRITES_API_URL", emu.url)
        monkeypatch.setenv("SPRITES_TOKEN", emu.token)
        code = cli_main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    step: dict[str, Any] = {s["name"]: s for s in report["steps"]}[name]
    return step


def test_doctor_says_checkpoints_are_hard_link_snapshots(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    step = _doctor_step(monkeypatch, capsys, "emulator checkpoints")
    assert step["status"] == "ok"
    assert step["data"] == {"method": "hard-links"}
    assert "hard-link snapshots" in step["detail"]
    assert "no overlays" in step["detail"]
    assert "reflinks" in step["detail"]


def test_doctor_warns_when_checkpoints_fall_back_to_full_copies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)  # a filesystem without hard links
    step = _doctor_step(monkeypatch, capsys, "emulator checkpoints")
    assert step["status"] == "warn"
    assert step["data"] == {"method": "copy"}
    assert "full copies" in step["detail"]
    assert "Operation not permitted" in step["detail"]


def test_the_embedded_emulator_reports_its_checkpoint_method(tmp_path: Path) -> None:
    with Emulator(sandbox="none", exit_linger=0.0, state_dir=tmp_path / "state") as emu:
        method, line = emu.checkpoint_status
    assert method == "hard-links"
    assert line.startswith("hard-link snapshots")
    # The probe leaves nothing behind in the state directory.
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".checkpoint")]
