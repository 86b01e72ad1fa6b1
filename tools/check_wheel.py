"""Build the sdist and wheel, check them, install the wheel in a clean virtualenv, smoke-test it.

    python tools/check_wheel.py                  # what .ci/run does before pytest
    python tools/check_wheel.py --keep out/      # keep the built files (else a temp dir)
    python tools/check_wheel.py --deps-from-env  # offline: reuse this environment's packages

Steps, each timed, stopping at the first failure (exit status 1):

1. ``python -m build --no-isolation``: the sdist, then the wheel built *from the sdist*
   (so a file the sdist forgets is missing from the wheel too). Needs ``build`` and
   ``hatchling`` here (both in the ``test`` extra).
2. ``twine check --strict`` on both (metadata and README rendering).
3. The wheel's file list: only the package and its ``.dist-info``; every file git
   tracks under ``sprites_async/`` is in it (``py.typed`` included) and nothing else
   (no tests, benchmarks, examples, caches); the version, dependencies and entry
   points (the ``sprites-async`` script, the ``pytest11`` plugin) are as declared.
   The sdist holds the sources and no virtualenv, cache or build output.
4. A fresh virtualenv in a temp dir gets the wheel (not editable) and its dependencies
   from the package index; with ``--deps-from-env`` the wheel alone, and this
   environment's site-packages are appended to its path instead (no network).
5. From a directory outside the source tree: ``sprites-async --help``,
   ``python -m sprites_async.emulator --list-quirks``, ``sprites-async --emulator doctor``,
   and against a served emulator (``sprites-async emulator --json``) ``create``, one
   ``exec`` (its output and exit code) and ``destroy``.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sprites_async"
DIST_NAME = "sprites-async"
DEPENDENCIES = ("aiohttp", "msgspec")
ENTRY_POINTS = {
    "console_scripts": {"sprites-async": "sprites_async._cli:main"},
    "pytest11": {"sprites_async": "sprites_async.pytest_plugin"},
}
# What an sdist must never carry (a developer's virtualenv or caches would bloat
# it and could leak local files).
SDIST_FORBIDDEN = re.compile(
    r"(^|/)(\.venv|\.nox|\.git|__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache|"
    r"\.hypothesis|dist|build|\.emulator-state)(/|$)|\.pyc$"
)
STEP_TIMEOUT = 180.0


class CheckFailed(Exception):
    """A check did not hold; the message says which and why."""


def version() -> str:
    """The version declared in ``sprites_async/_version.py`` (read, not imported)."""
    text = (ROOT / PACKAGE / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise CheckFailed("no __version__ in sprites_async/_version.py")
    return match[1]


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print one step's outcome and duration."""
    started = time.monotonic()
    try:
        yield
    except CheckFailed as exc:
        print(f"FAIL  {name} ({time.monotonic() - started:.1f} s): {exc}", flush=True)
        raise
    print(f"ok    {name} ({time.monotonic() - started:.1f} s)", flush=True)


def run(
    args: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    expect: int = 0,
) -> subprocess.CompletedProcess[str]:
    """Run a command; a different exit status fails the check with its output."""
    try:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(map(str, args))}: no answer in {STEP_TIMEOUT:g} s") from exc
    if done.returncode != expect:
        raise CheckFailed(
            f"{' '.join(map(str, args))} exited {done.returncode} (expected {expect})\n"
            f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
        )
    return done


def expect_in(text: str, needle: str, what: str) -> None:
    """Fail unless ``needle`` is in ``text``."""
    if needle not in text:
        raise CheckFailed(f"{what}: {needle!r} not found in:\n{text}")


# ----------------------------------------------------------------- build + metadata


def build(out: Path) -> tuple[Path, Path]:
    """Build the sdist and (from it) the wheel into ``out``; return their paths."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT)
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise CheckFailed(f"expected one sdist and one wheel in {out}, found {sdists + wheels}")
    return sdists[0], wheels[0]


def tracked_package_files() -> set[str]:
    """The files of the package as git tracks them (the tree when git cannot say)."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", PACKAGE],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        names = {n for n in done.stdout.decode().split("\0") if n}
    except (OSError, subprocess.CalledProcessError):
        names = set()
    if names:
        return names
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / PACKAGE).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check_wheel_contents(wheel: Path, ver: str) -> None:
    """The wheel holds the package, its metadata, and nothing else."""
    info_dir = f"{PACKAGE}-{ver}.dist-info/"
    expected_name = f"{PACKAGE}-{ver}-py3-none-any.whl"
    if wheel.name != expected_name:
        raise CheckFailed(f"wheel is named {wheel.name}, expected {expected_name}")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(info_dir + "METADATA").decode()
        entry_points = zf.read(info_dir + "entry_points.txt").decode()
    stray = sorted(n for n in names if not n.startswith((f"{PACKAGE}/", info_dir)))
    if stray:
        raise CheckFailed(f"files outside the package in the wheel: {stray}")
    caches = sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo")))
    if caches:
        raise CheckFailed(f"compiled files in the wheel: {caches}")
    package_files = {n for n in names if n.startswith(f"{PACKAGE}/")}
    tracked = tracked_package_files()
    missing = sorted(tracked - package_files)
    if missing:
        raise CheckFailed(f"tracked package files missing from the wheel: {missing}")
    extra = sorted(package_files - tracked)
    if extra:
        raise CheckFailed(f"files in the wheel that git does not track: {extra}")
    for required in (f"{PACKAGE}/py.typed", f"{PACKAGE}/emulator/__init__.py"):
        if required not in names:
            raise CheckFailed(f"{required} is not in the wheel")

    fields: dict[str, list[str]] = {}
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("Name") != [DIST_NAME] or fields.get("Version") != [ver]:
        raise CheckFailed(f"METADATA names {fields.get('Name')} {fields.get('Version')}")
    if fields.get("Requires-Python") != [">=3.10"]:
        raise CheckFailed(f"Requires-Python is {fields.get('Requires-Python')}")
    # Base dependencies carry no "extra ==" marker; extras must not leak into them.
    base = {
        re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower()
        for req in fields.get("Requires-Dist", [])
        if "extra ==" not in req
    }
    if base != set(DEPENDENCIES):
        raise CheckFailed(f"base dependencies are {sorted(base)}, expected {list(DEPENDENCIES)}")

    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    parser.read_string(entry_points)
    for group, wanted in ENTRY_POINTS.items():
        found = dict(parser[group]) if parser.has_section(group) else {}
        if found != wanted:
            raise CheckFailed(f"entry points [{group}] are {found}, expected {wanted}")


def check_sdist_contents(sdist: Path, ver: str) -> None:
    """The sdist holds the sources and no local clutter."""
    top = f"{PACKAGE}-{ver}/"
    with tarfile.open(sdist) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    outside = sorted(n for n in names if not n.startswith(top))
    if outside:
        raise CheckFailed(f"sdist files outside {top}: {outside[:10]}")
    relative = {n[len(top) :] for n in names}
    clutter = sorted(n for n in relative if SDIST_FORBIDDEN.search(n))
    if clutter:
        raise CheckFailed(f"sdist carries local clutter: {clutter[:10]}")
    for required in ("pyproject.toml", "README.md", "PKG-INFO", f"{PACKAGE}/py.typed"):
        if required not in relative:
            raise CheckFailed(f"{required} is not in the sdist")


# ---------------------------------------------------------------- clean install


def clean_env(venv: Path) -> dict[str, str]:
    """The environment for the installed package: no token, no source tree, no proxy to us."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        and k not in ("SPRITES_TOKEN", "SPRITE_TOKEN", "SPRITES_API_URL")
    }
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def make_venv(venv: Path, wheel: Path, *, deps_from_env: bool, cwd: Path) -> None:
    """A new virtualenv with the wheel installed (not editable)."""
    run([sys.executable, "-m", "venv", venv], cwd=cwd)
    python = venv / "bin" / "python"
    env = clean_env(venv)
    if deps_from_env:
        run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=cwd, env=env)
        # Appended after the venv's own site-packages, so the wheel's copy of the
        # package wins over an editable one here (whose .pth is not processed there).
        paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        purelib = run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=cwd,
            env=env,
        ).stdout.strip()
        Path(purelib, "_check_wheel_deps.pth").write_text("\n".join(paths) + "\n")
    else:
        run([python, "-m", "pip", "install", "-q", wheel], cwd=cwd, env=env)
        run([python, "-m", "pip", "check"], cwd=cwd, env=env)


WHERE = """\
import importlib.metadata as md, pathlib, sys
import sprites_async
path = pathlib.Path(sprites_async.__file__).resolve()
assert path.is_relative_to(pathlib.Path(sys.prefix).resolve()), path
dist = md.distribution("sprites-async")
assert dist.version == sprites_async.__version__ == sys.argv[1], dist.version
assert '"editable"' not in (dist.read_text("direct_url.json") or ""), "an editable install"
print(path)
"""


def smoke(venv: Path, ver: str, cwd: Path) -> None:
    """The installed CLI and emulator work from outside the source tree."""
    env = clean_env(venv)
    python, cli = venv / "bin" / "python", venv / "bin" / "sprites-async"
    where = run([python, "-c", WHERE, ver], cwd=cwd, env=env).stdout
    expect_in(where, str(venv.resolve()), "package location")

    expect_in(run([cli, "--help"], cwd=cwd, env=env).stdout, "doctor", "sprites-async --help")
    quirks = run([python, "-m", f"{PACKAGE}.emulator", "--list-quirks"], cwd=cwd, env=env).stdout
    expect_in(quirks, "profile real-world", "--list-quirks")
    doctor = run([cli, "--emulator", "doctor"], cwd=cwd, env=env).stdout
    expect_in(doctor, "token accepted", "sprites-async --emulator doctor")
    expect_in(doctor, "Everything checked works", "sprites-async --emulator doctor")

    server = subprocess.Popen(
        [str(cli), "emulator", "--json", "--exit-linger", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        try:
            served = json.loads(first)
        except ValueError as exc:
            server.kill()
            _, err = server.communicate()
            raise CheckFailed(f"sprites-async emulator --json said {first!r}\n{err}") from exc
        api = dict(env, SPRITES_API_URL=served["url"], SPRITES_TOKEN=served["token"])
        run([cli, "create", "wheel-smoke"], cwd=cwd, env=api)
        shell = "printf 'hello from the wheel\\n'; echo oops >&2; exit 3"
        exec_args: list[str | Path] = [cli, "exec", "wheel-smoke", "--", "sh", "-c", shell]
        done = run(exec_args, cwd=cwd, env=api, expect=3)
        expect_in(done.stdout, "hello from the wheel", "exec stdout")
        expect_in(done.stderr, "oops", "exec stderr")
        run([cli, "destroy", "--yes", "wheel-smoke"], cwd=cwd, env=api)
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()
    if server.returncode != 0:
        raise CheckFailed(f"the served emulator exited {server.returncode} on SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="build into this folder and keep it")
    parser.add_argument(
        "--deps-from-env",
        action="store_true",
        help="install the wheel alone; reuse this environment's packages (no network)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sprites-wheel-check-") as tmp_name:
        tmp = Path(tmp_name)
        out = args.keep.resolve() if args.keep else tmp / "dist"
        if args.keep and out.exists():
            shutil.rmtree(out)
        try:
            ver = version()
            with step("build sdist and wheel (python -m build)"):
                sdist, wheel = build(out)
            with step(f"twine check --strict {sdist.name} {wheel.name}"):
                run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=ROOT)
            with step("wheel and sdist contents"):
                check_wheel_contents(wheel, ver)
                check_sdist_contents(sdist, ver)
            with step("install the wheel into a clean virtualenv"):
                make_venv(tmp / "venv", wheel, deps_from_env=args.deps_from_env, cwd=tmp)
            with step("smoke test: --help, --list-quirks, --emulator doctor, create/exec/destroy"):
                smoke(tmp / "venv", ver, cwd=tmp)
        except CheckFailed:
            return 1
    print(f"wheel check passed in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
