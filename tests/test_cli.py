"""The command-line tool, in-process through ``main(argv)`` against a threaded emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sprites_async._cli import EXIT_API, EXIT_CONNECTION, EXIT_OK, EXIT_USAGE, main
from sprites_async.emulator import Emulator


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_token_explains_and_offers_emulator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("SPRITES_TOKEN", raising=False)
    monkeypatch.delenv("SPRITE_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "list")
    assert code == EXIT_USAGE
    assert out == ""
    assert "SPRITES_TOKEN" in err and "--emulator" in err and "sprites-async emulator" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "frobnicate")[0] == EXIT_USAGE
    assert run(capsys, "update", "x", "--public", "--private")[0] == EXIT_USAGE
    code, _, err = run(capsys, "--emulator", "exec", "demo")
    assert code == EXIT_USAGE and "no command" in err
    assert run(capsys, "--help")[0] == EXIT_OK
    code, _, err = run(capsys, "--emulator", "get", "a/b")  # no server could hold it
    assert code == EXIT_USAGE and "invalid sprite name" in err
    code, _, err = run(capsys, "--emulator", "create", "Not_A_Name")  # the create rule
    assert code == EXIT_USAGE and "invalid sprite name" in err


def test_embedded_emulator_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--emulator", "create", "tmp-demo", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["name"] == "tmp-demo"
    assert "throw-away local emulator" in err


def test_manage_sprites(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create", "web-1", "--label", "web")[0] == EXIT_OK
    assert run(capsys, "create", "db-1")[0] == EXIT_OK
    code, _, err = run(capsys, "create", "db-1")
    assert code == EXIT_API and "409" in err

    code, out, _ = run(capsys, "list", "--json")
    assert code == EXIT_OK
    assert sorted(s["name"] for s in json.loads(out)) == ["db-1", "web-1"]
    code, out, _ = run(capsys, "list", "--prefix", "web")
    # Not a terminal: tab-separated rows, no header.
    assert [line.split("\t")[:3] for line in out.splitlines()] == [["web-1", "cold", "web"]]
    code, out, _ = run(capsys, "list", "--limit", "1", "--json")
    assert len(json.loads(out)) == 1

    code, out, _ = run(capsys, "update", "web-1", "--public", "--label", "a", "--label", "b")
    assert code == EXIT_OK
    code, out, _ = run(capsys, "get", "web-1", "--json")
    info = json.loads(out)
    assert info["url_settings"]["auth"] == "public" and info["labels"] == ["a", "b"]
    code, out, _ = run(capsys, "get", "web-1")
    assert "access        public" in out

    code, _, err = run(capsys, "get", "nope")
    assert code == EXIT_API and "404" in err

    code, _, err = run(capsys, "destroy", "web-1")  # stdin is not a terminal here
    assert code == EXIT_USAGE and "--yes" in err
    code, out, _ = run(capsys, "destroy", "web-1", "db-1", "--yes")
    assert code == EXIT_OK and out.split("\n")[:2] == ["destroyed web-1", "destroyed db-1"]
    assert run(capsys, "destroy", "web-1", "--yes")[0] == EXIT_API
    assert run(capsys, "destroy", "web-1", "--yes", "--missing-ok")[0] == EXIT_OK
    assert not cli_emu.state.sprites


def test_sprite_file_and_sprite_option(
    cli_emu: Emulator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run(capsys, "create", "from-file")[0] == EXIT_OK
    code, _, err = run(capsys, "get")
    assert code == EXIT_USAGE and ".sprite" in err
    (tmp_path / ".sprite").write_text('{"organization": "other-org", "sprite": "from-file"}')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    code, out, err = run(capsys, "get", "--json")
    assert code == EXIT_OK and json.loads(out)["name"] == "from-file"
    assert "other-org" in err  # the token is for another organisation: warned
    assert run(capsys, "-s", "nope", "get")[0] == EXIT_API
    assert run(capsys, "get", "--sprite", "nope")[0] == EXIT_API
    (tmp_path / ".sprite").write_text("not json")
    code, _, err = run(capsys, "get")
    assert code == EXIT_USAGE and "cannot read" in err
    assert run(capsys, "list")[0] == EXIT_OK  # a broken file only matters when it is used


def test_exec_streams_and_exits_with_command_status(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "box")[0] == EXIT_OK
    code, out, err = run(capsys, "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (code, out, err) == (7, "out\n", "err\n")
    code, out, _ = run(capsys, "exec", "box", "printf", "%s", "no-dashes")
    assert (code, out) == (0, "no-dashes")
    code, out, _ = run(
        capsys, "-s", "box", "exec", "-e", "GREETING=hi", "--", "sh", "-c", "echo $GREETING"
    )
    assert (code, out) == (0, "hi\n")
    code, _, err = run(capsys, "exec", "--timeout", "0.5", "box", "--", "sleep", "30")
    assert code == 124 and "0.5 s" in err
    code, _, err = run(capsys, "exec", "gone", "--", "true")
    assert code == EXIT_API


def test_checkpoint_and_fs(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "create", "cp")[0] == EXIT_OK
    local = tmp_path / "hello.txt"
    local.write_text("hello\n")
    assert run(capsys, "-s", "cp", "fs", "put", str(local), "/home/sprite/hello.txt")[0] == 0
    code, out, _ = run(capsys, "fs", "ls", "-s", "cp", "--json")
    assert [e["name"] for e in json.loads(out)] == ["hello.txt"]
    code, out, err = run(capsys, "-s", "cp", "checkpoint", "create", "-m", "first", "--json")
    assert code == EXIT_OK
    checkpoint = json.loads(out)["id"]
    assert "Creating checkpoint" in err  # progress, on stderr, one line per event
    assert run(capsys, "exec", "cp", "--", "rm", "/home/sprite/hello.txt")[0] == 0
    code, _, _ = run(capsys, "-s", "cp", "fs", "get", "/home/sprite/hello.txt", "-")
    assert code == EXIT_API
    code, out, _ = run(capsys, "-s", "cp", "checkpoint", "restore", checkpoint)
    assert code == EXIT_OK and f"from {checkpoint}" in out
    code, out, _ = run(capsys, "-s", "cp", "fs", "get", "/home/sprite/hello.txt", "-")
    assert (code, out) == (0, "hello\n")
    code, out, _ = run(capsys, "-s", "cp", "checkpoint", "list")
    assert [line.split("\t")[0] for line in out.splitlines()] == [checkpoint, "v0"]
    code, _, err = run(capsys, "-s", "cp", "checkpoint", "restore", "v99")
    assert code == EXIT_API and "v99" in err
    target = tmp_path / "out"
    target.mkdir()
    assert run(capsys, "-s", "cp", "fs", "get", "/home/sprite/hello.txt", str(target))[0] == 0
    assert (target / "hello.txt").read_text() == "hello\n"


# ----------------------------------------------------------------------- doctor


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code, out, _ = run(capsys, "doctor", "--json", *argv)
    report = json.loads(out)
    assert report["exit_code"] == code
    return code, report


def steps(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in report["steps"]}  # type: ignore[attr-defined,index]


def test_doctor_all_good(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create", "fine")[0] == EXIT_OK
    code, report = doctor(capsys, "fine")
    assert code == EXIT_OK and report["diagnosis"] == "ok"
    by_name = steps(report)
    assert by_name["exec round trip"]["status"] == "ok"
    assert by_name["token"]["data"] == {"variable": "SPRITES_TOKEN", "org": "local-org", "parts": 4}
    assert by_name["organisation"]["status"] == "ok"
    assert all(isinstance(s["ms"], float) for s in by_name.values() if s["status"] != "skip")
    # Never the token, only its organisation.
    assert cli_emu.token.rsplit("/", 1)[1] not in json.dumps(report)
    code, out, _ = run(capsys, "doctor", "fine")
    assert code == EXIT_OK and "Everything checked works" in out


def test_doctor_wrong_token(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPRITES_TOKEN", "local/0/emulator/not-the-right-secret")
    code, report = doctor(capsys)
    assert code == EXIT_API and report["diagnosis"] == "bad_token"
    auth = steps(report)["API + authentication"]
    assert auth["status"] == "fail" and auth["http_status"] == 401 and auth["request_id"]
    assert "not-the-right-secret" not in json.dumps(report)


def test_doctor_malformed_token_warns(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPRITES_TOKEN", "just-one-part")
    _, report = doctor(capsys)
    assert steps(report)["token"]["status"] == "warn"
    assert report["diagnosis"] == "bad_token"


def test_doctor_missing_sprite(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = doctor(capsys, "no-such-sprite")
    assert code == EXIT_API and report["diagnosis"] == "sprite_missing"
    assert steps(report)["sprite"]["http_status"] == 404
    assert steps(report)["exec round trip"]["status"] == "skip"
    assert "no-such-sprite" in str(report["message"])


def test_doctor_service_error(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    cli_emu.faults.error_status = 503
    cli_emu.faults.error_count = 1
    cli_emu.faults.error_path = r"^/v1/sprites$"
    code, report = doctor(capsys)
    assert code == EXIT_API and report["diagnosis"] == "service_error"
    auth = steps(report)["API + authentication"]
    assert auth["http_status"] == 503
    assert "service side" in str(report["message"])


def test_doctor_no_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SPRITES_TOKEN", raising=False)
    monkeypatch.delenv("SPRITE_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    code, report = doctor(capsys)
    assert code == EXIT_USAGE and report["diagnosis"] == "no_token"


def test_doctor_unreachable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SPRITES_TOKEN", "org/1/tok/secret")
    monkeypatch.setenv("SPRITES_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    code, report = doctor(capsys)
    assert code == EXIT_CONNECTION and report["diagnosis"] == "network"
    assert steps(report)["TCP connect"]["status"] == "fail"
    monkeypatch.setenv("SPRITES_API_URL", "http://no-such-host.invalid")
    code, report = doctor(capsys)
    assert code == EXIT_CONNECTION and report["diagnosis"] == "dns"


def test_services(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create", "svc")[0] == EXIT_OK
    code, out, err = run(capsys, "-s", "svc", "services", "list", "--json")
    if code == EXIT_API and "404" in err:
        pytest.skip("this emulator build has no services endpoints yet")
    assert (code, json.loads(out)) == (EXIT_OK, [])
    script = "echo started; while :; do sleep 0.2; done"
    code, out, err = run(capsys, "-s", "svc", "services", "create", "ticker", "sh", "-c", script)
    assert code == EXIT_OK, err
    assert "create ticker: done" in out
    code, out, _ = run(capsys, "-s", "svc", "services", "list", "--json")
    [svc] = json.loads(out)
    assert svc["name"] == "ticker" and svc["state"]["status"] == "running"
    code, out, _ = run(capsys, "-s", "svc", "services", "logs", "ticker")
    assert code == EXIT_OK and "started" in out
    assert run(capsys, "-s", "svc", "services", "stop", "ticker")[0] == EXIT_OK
    code, _, err = run(capsys, "-s", "svc", "services", "stop", "ticker")
    assert code == EXIT_API and "409" in err  # already stopped
    assert run(capsys, "-s", "svc", "services", "delete", "ticker")[0] == EXIT_OK
    code, _, err = run(capsys, "-s", "svc", "services", "logs", "nope")
    assert code == EXIT_API


def test_fleet_exec_and_destroy(cli_emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("job-a", "job-b", "job-c", "other"):
        assert run(capsys, "create", name, "--label", "ci" if name != "job-c" else "x")[0] == 0
    code, out, err = run(capsys, "fleet", "exec", "--prefix", "job-", "--", "echo", "hello")
    assert code == EXIT_OK, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert sorted((r[0], r[1], r[2], r[4]) for r in rows) == [
        ("job-a", "ok", "0", "hello"),
        ("job-b", "ok", "0", "hello"),
        ("job-c", "ok", "0", "hello"),
    ]
    assert "3 ok" in err
    filters = ["--prefix", "job-", "--label", "ci"]
    code, out, _ = run(capsys, "fleet", "exec", *filters, "--json", "--", "sh", "-c", "exit 3")
    assert code == EXIT_API  # a command failed
    assert sorted((r["sprite"], r["exit_code"]) for r in json.loads(out)) == [
        ("job-a", 3),
        ("job-b", 3),
    ]
    assert run(capsys, "fleet", "exec", "--", "true")[0] == EXIT_USAGE  # no filter
    assert run(capsys, "fleet", "destroy", "--prefix", "job-")[0] == EXIT_USAGE  # no --yes
    code, out, _ = run(capsys, "fleet", "destroy", "--label", "ci", "--yes")
    assert code == EXIT_OK and sorted(out.split()) == sorted(
        ["destroyed", "job-a", "destroyed", "job-b", "destroyed", "other"]
    )
    assert sorted(cli_emu.state.sprites) == ["job-c"]


def test_doctor_and_get_agree_on_the_organisation(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "org-check")[0] == EXIT_OK
    _, out, _ = run(capsys, "get", "org-check", "--json")
    organization = json.loads(out)["organization"]
    _, report = doctor(capsys, "org-check")
    by_name = steps(report)
    assert by_name["token"]["data"]["org"] == organization  # type: ignore[index]
    assert organization in str(by_name["organisation"]["detail"])


def test_doctor_warns_when_the_token_names_another_organisation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with Emulator(token="someone-else/1/tok/secret", exit_linger=0.0) as emulator:
        monkeypatch.setenv("SPRITES_API_URL", emulator.url)
        monkeypatch.setenv("SPRITES_TOKEN", emulator.token)
        monkeypatch.chdir(tmp_path)
        _, report = doctor(capsys)
    org = steps(report)["organisation"]
    assert org["status"] == "warn"
    assert "'someone-else'" in str(org["detail"]) and "local-org" in str(org["detail"])


def test_fleet_exec_shows_non_zero_exits(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("nz-a", "nz-b"):
        assert run(capsys, "create", name)[0] == EXIT_OK
    script = "[ -e /home/sprite/.a ] && exit 0; exit 3"
    assert run(capsys, "exec", "nz-a", "--", "touch", "/home/sprite/.a")[0] == EXIT_OK
    code, out, err = run(capsys, "fleet", "exec", "--prefix", "nz-", "--", "sh", "-c", script)
    assert code == EXIT_API
    rows = sorted(line.split("\t")[:3] for line in out.splitlines())
    assert rows == [["nz-a", "ok", "0"], ["nz-b", "exit 3", "3"]]
    assert "1 ok, 1 exit non-zero" in err or "1 exit non-zero, 1 ok" in err
    code, out, err = run(
        capsys, "fleet", "exec", "--prefix", "nz-", "--json", "--", "sh", "-c", script
    )
    assert code == EXIT_API
    rows = sorted((r["sprite"], r["status"], r["exit_code"]) for r in json.loads(out))
    assert rows == [("nz-a", "ok", 0), ("nz-b", "exit", 3)]


def test_checkpoint_create_prints_our_own_advice(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "cp-advice")[0] == EXIT_OK
    code, out, err = run(capsys, "checkpoint", "create", "-s", "cp-advice")
    assert code == EXIT_OK
    assert out == "created checkpoint v1 of cp-advice\n"
    assert "sprite checkpoint restore" not in err and "curl" not in err
    assert "To restore" not in err
    assert "sprites-async checkpoint restore cp-advice v1" in err


# ----------------------------------------------------------- argument order


def test_options_may_follow_the_sprite_name(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "create", "order")[0] == EXIT_OK
    for argv in (
        ("exec", "order", "-w", "/tmp", "--", "pwd"),
        ("exec", "-w", "/tmp", "order", "--", "pwd"),
        ("exec", "order", "-w", "/tmp", "pwd"),
        ("exec", "-s", "order", "-w", "/tmp", "pwd"),
        ("exec", "-w", "/tmp", "-s", "order", "--", "pwd"),
    ):
        assert run(capsys, *argv)[:2] == (EXIT_OK, "/tmp\n"), argv
    # A `--` after the command's own words belongs to the command.
    code, out, _ = run(capsys, "exec", "order", "sh", "-c", 'echo "$@"', "sh", "--", "x")
    assert (code, out) == (EXIT_OK, "-- x\n")
    code, _, err = run(capsys, "exec", "order", "other", "--", "true")
    assert code == EXIT_USAGE and "at most one sprite NAME" in err


def test_subcommands_take_the_sprite_name_first(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "create", "named")[0] == EXIT_OK
    (tmp_path / "n.txt").write_text("n\n")
    assert run(capsys, "checkpoint", "create", "named", "-m", "one")[0] == EXIT_OK
    assert run(capsys, "checkpoint", "create", "-m", "two", "named")[0] == EXIT_OK
    code, out, _ = run(capsys, "checkpoint", "list", "named")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["v2", "v1", "v0"]
    assert run(capsys, "checkpoint", "restore", "named", "v1")[0] == EXIT_OK
    assert run(capsys, "checkpoint", "delete", "named", "v2")[0] == EXIT_OK
    assert run(capsys, "fs", "put", "named", "n.txt", "/home/sprite/n.txt")[0] == EXIT_OK
    code, out, _ = run(capsys, "fs", "ls", "named", "--json")
    assert [e["name"] for e in json.loads(out)] == ["n.txt"]
    assert run(capsys, "fs", "get", "named", "/home/sprite/n.txt", "-")[:2] == (EXIT_OK, "n\n")
    code, out, _ = run(capsys, "fs", "get", "/home/sprite/n.txt", "copy.txt", "-s", "named")
    assert code == EXIT_OK and (tmp_path / "copy.txt").read_text() == "n\n"
    assert run(capsys, "services", "list", "named")[0] == EXIT_OK
    code, _, err = run(capsys, "checkpoint", "create", "named", "-s", "other")
    assert code == EXIT_USAGE and "two sprites" in err
    code, _, err = run(capsys, "checkpoint", "restore", "named", "v1", "v0")
    assert code == EXIT_USAGE and "too many arguments: v0" in err


def test_services_create_in_the_shape_of_its_help(
    cli_emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "svc")[0] == EXIT_OK
    argv = ("services", "create", "-s", "svc", "web", "--http-port", "8768", "sleep", "600")
    code, _, err = run(capsys, *argv)
    assert code == EXIT_OK, err
    code, _, err = run(capsys, "services", "create", "svc", "job", "--", "sleep", "601")
    assert code == EXIT_OK, err
    code, out, _ = run(capsys, "services", "list", "svc", "--json")
    found = {s["name"]: (s["cmd"], s["args"], s["http_port"]) for s in json.loads(out)}
    assert found == {"web": ("sleep", ["600"], 8768), "job": ("sleep", ["601"], None)}
