"""pytest plugin: fixtures that run tests against the local Sprites emulator.

Registered through the ``pytest11`` entry point, so installing sprites-async is
enough. Fixtures:

``sprites_emulator``
    A running :class:`sprites_async.emulator.Emulator` (in a background thread
    with its own event loop, so it serves sync tests and async tests on any
    loop alike). Function scope by default; set the ini option
    ``sprites_emulator_scope = session`` (or ``module`` ...) to share one.
``sprites_emulator_options``
    Keyword arguments for the ``Emulator`` constructor; override it in a
    ``conftest.py`` to change them (same scope as ``sprites_emulator``).
``sprites_client``
    A ``SpritesClient`` for that emulator, closed after the test (needs
    pytest-asyncio or an ``async``-aware runner for the async fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sprites_async import SpritesClient
    from sprites_async.emulator import Emulator

SCOPE_INI = "sprites_emulator_scope"
_SCOPES = ("function", "class", "module", "package", "session")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini option choosing the emulator fixture's scope."""
    parser.addini(
        SCOPE_INI,
        "scope of the sprites_emulator fixture: function (default), class, module, "
        "package or session",
        default="function",
    )


def _configured_scope(config: pytest.Config) -> str:
    return str(config.getini(SCOPE_INI) or "function").strip()


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad scope up front, as a usage error rather than an internal one."""
    scope = _configured_scope(config)
    if scope not in _SCOPES:
        raise pytest.UsageError(f"{SCOPE_INI} must be one of {', '.join(_SCOPES)}, not {scope!r}")


def _emulator_scope(fixture_name: str, config: pytest.Config) -> Any:
    return _configured_scope(config)


@pytest.fixture(scope=_emulator_scope)
def sprites_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the ``Emulator`` of ``sprites_emulator``; override to change."""
    # Tests want exec sockets to close at once rather than after the real ~5 s.
    return {"exit_linger": 0.0}


@pytest.fixture(scope=_emulator_scope)
def sprites_emulator(sprites_emulator_options: dict[str, Any]) -> Iterator[Emulator]:
    """A running local Sprites emulator (``.url``, ``.token``, ``.faults``, ``.client()``)."""
    from sprites_async.emulator import Emulator

    with Emulator(**sprites_emulator_options) as emulator:
        yield emulator


def _make_client_fixture() -> Any:
    # pytest-asyncio is a test extra, and this plugin loads in every pytest
    # run of every project that installs sprites-async: never fail to import.
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the test extra always has it

        @pytest.fixture(name="sprites_client")
        def skipped(sprites_emulator: Emulator) -> Any:
            """Needs pytest-asyncio, which is not installed."""
            pytest.skip("the sprites_client fixture needs pytest-asyncio")

        return skipped

    @pytest_asyncio.fixture(name="sprites_client")
    async def client_fixture(sprites_emulator: Emulator) -> AsyncIterator[SpritesClient]:
        """A ``SpritesClient`` talking to ``sprites_emulator``, closed after the test."""
        client = sprites_emulator.client()
        try:
            yield client
        finally:
            await client.aclose()

    return client_fixture


sprites_client = _make_client_fixture()
