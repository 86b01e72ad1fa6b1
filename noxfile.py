"""Developer tasks: ``nox -s lint``, ``typecheck``, ``tests``, ``docs``, ``wheel``, ``bench``,
``soak``, ``soak-quirks``.

Each session installs the project with its extras into its own virtualenv.
Interpreters that are not installed are skipped, not failed.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test]")
    session.run("mypy", "--strict", "sprites_async")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite (extra pytest arguments pass through: nox -s tests -- -k exec)."""
    session.install("-e", ".[test,fastapi]")
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml, docs/) in strict mode into ``site/``; pass
    ``-- serve`` to preview it instead."""
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel, check their metadata and contents, install the wheel into a
    clean virtualenv and smoke-test its CLI and emulator (``tools/check_wheel.py``; pass
    ``-- --deps-from-env`` to work offline)."""
    session.install("build", "hatchling", "twine")
    session.run("python", "tools/check_wheel.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the official SDK and the raw transport (see benchmarks/)."""
    session.install("-e", ".[test,conformance]")
    session.run("python", "-m", "benchmarks", *session.posargs)


def _soak(session: nox.Session, quirks: str, report: str) -> None:
    session.install("-e", ".[test]")
    env = {
        "SPRITES_SOAK_SCALE": os.environ.get("SPRITES_SOAK_SCALE", "full"),
        "SPRITES_SOAK_QUIRKS": os.environ.get("SPRITES_SOAK_QUIRKS", quirks),
        "SPRITES_SOAK_REPORT": os.environ.get("SPRITES_SOAK_REPORT", report),
    }
    session.run(
        "pytest", "tests/reliability/test_soak.py", "-m", "soak", "-s", *session.posargs, env=env
    )


@nox.session
def soak(session: nox.Session) -> None:
    """The load/soak tests at full size: 10,000 commands under injected drops, 1,000
    cancellations, 1 GiB through a slow reader (minutes; the default run is small).

    Figures go to stdout and, as JSON, to ``soak-report.json`` (override with
    ``SPRITES_SOAK_REPORT``); ``SPRITES_SOAK_SCALE`` may be set to another size,
    ``SPRITES_SOAK_QUIRKS`` to emulator quirk profiles (default ``none``).
    """
    _soak(session, "none", "soak-report.json")


@nox.session(name="soak-quirks")
def soak_quirks(session: nox.Session) -> None:
    """The same soak against the emulator's ``real-world`` quirk profile (answers the
    real service has been seen to give); figures in ``soak-report-quirks.json``."""
    _soak(session, "real-world", "soak-report-quirks.json")
