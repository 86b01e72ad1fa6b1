"""tools/check_wheel.py's content checks refuse the wheels and sdists they are meant to catch.

The whole check (build, twine, clean install, smoke test) runs in .ci/run; these
feed its inspection functions small archives made here, without building anything.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
VER = "9.8.7"
TRACKED = {
    "sprites_async/__init__.py",
    "sprites_async/py.typed",
    "sprites_async/emulator/__init__.py",
}
METADATA = f"""\
Metadata-Version: 2.4
Name: sprites-async
Version: {VER}
Requires-Python: >=3.10
Requires-Dist: aiohttp>=3.10
Requires-Dist: msgspec>=0.18.6
Requires-Dist: fastapi>=0.110; extra == 'fastapi'

# sprites-async
"""
ENTRY_POINTS = """\
[console_scripts]
sprites-async = sprites_async._cli:main

[pytest11]
sprites_async = sprites_async.pytest_plugin
"""


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / "tools" / "check_wheel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_wheel"] = module
    spec.loader.exec_module(module)
    return module


def make_wheel(
    tmp_path: Path,
    *,
    files: set[str] = TRACKED,
    metadata: str = METADATA,
    entry_points: str = ENTRY_POINTS,
) -> Path:
    path = tmp_path / f"sprites_async-{VER}-py3-none-any.whl"
    info = f"sprites_async-{VER}.dist-info/"
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(files):
            zf.writestr(name, "")
        zf.writestr(info + "METADATA", metadata)
        zf.writestr(info + "entry_points.txt", entry_points)
        zf.writestr(info + "RECORD", "")
    return path


@pytest.fixture
def tracked(check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "tracked_package_files", lambda: set(TRACKED))


@pytest.mark.usefixtures("tracked")
def test_a_wheel_of_exactly_the_package_passes(check: ModuleType, tmp_path: Path) -> None:
    check.check_wheel_contents(make_wheel(tmp_path), VER)


@pytest.mark.usefixtures("tracked")
@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"files": TRACKED | {"tests/test_x.py"}}, "files outside the package"),
        ({"files": TRACKED | {"benchmarks/__init__.py"}}, "files outside the package"),
        ({"files": TRACKED | {"sprites_async/__pycache__/x.cpython-311.pyc"}}, "compiled"),
        ({"files": TRACKED - {"sprites_async/py.typed"}}, "missing from the wheel"),
        ({"files": TRACKED | {"sprites_async/notes.txt"}}, "git does not track"),
        ({"metadata": METADATA.replace(VER, "0.0.1")}, "METADATA names"),
        ({"metadata": METADATA.replace(">=3.10", ">=3.8")}, "Requires-Python"),
        (
            {"metadata": METADATA.replace("; extra == 'fastapi'", "")},
            "base dependencies",
        ),
        ({"entry_points": ENTRY_POINTS.split("[pytest11]")[0]}, "[pytest11]"),
        (
            {"entry_points": ENTRY_POINTS.replace("_cli:main", "cli:main")},
            "[console_scripts]",
        ),
    ],
)
def test_a_wheel_with_a_flaw_is_refused(
    check: ModuleType, tmp_path: Path, kwargs: dict[str, object], complaint: str
) -> None:
    with pytest.raises(check.CheckFailed, match=re.escape(complaint)):
        check.check_wheel_contents(make_wheel(tmp_path, **kwargs), VER)


def make_sdist(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / f"sprites_async-{VER}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            info = tarfile.TarInfo(f"sprites_async-{VER}/{name}")
            info.size = 0
            tf.addfile(info, io.BytesIO(b""))
    return path


SDIST = ["pyproject.toml", "README.md", "PKG-INFO", "sprites_async/py.typed", "tests/conftest.py"]


def test_sdist_checks(check: ModuleType, tmp_path: Path) -> None:
    check.check_sdist_contents(make_sdist(tmp_path, SDIST), VER)
    for clutter in (".venv/bin/python", "sprites_async/__pycache__/a.pyc", "dist/x.whl"):
        with pytest.raises(check.CheckFailed, match="clutter"):
            check.check_sdist_contents(make_sdist(tmp_path, [*SDIST, clutter]), VER)
    with pytest.raises(check.CheckFailed, match=r"py\.typed"):
        check.check_sdist_contents(make_sdist(tmp_path, SDIST[:3]), VER)


def test_the_tracked_files_are_the_packages(check: ModuleType) -> None:
    tracked = check.tracked_package_files()
    assert "sprites_async/py.typed" in tracked
    assert "sprites_async/emulator/__init__.py" in tracked
    assert all(name.startswith("sprites_async/") for name in tracked)
    assert check.version() == __import__("sprites_async").__version__
