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
    ``conftest.py`` to change them (same scope as ``sprites_emulator``). One
    more key, ``retry_after``, sets ``faults.retry_after`` (default 0).
``sprites_emulator`` quirks
    The ini option ``sprites_emulator_quirks`` (quirk or profile names,
    whitespace- or comma-separated, e.g. ``real-world``) turns quirks on for
    every emulator; a ``@pytest.mark.sprites_quirks("null-arrays", ...)``
    marker adds some for one test (function-scoped emulators only).
``sprites_client``
    A ``SpritesClient`` for that emulator, closed after the test. It is a
    pytest-asyncio fixture, so it needs pytest-asyncio installed, but no ini
    setting: ``async def`` tests that request ``sprites_client`` or
    ``sprites_emulator`` are marked ``asyncio`` by this plugin, so they run in
    pytest-asyncio's default strict mode too (instead of failing with "async
    def functions are not natively supported", or being skipped).

Injected faults do not make a user's tests sleep: the emulator sends
``Retry-After: 0`` with injected 429s and 503s (set ``emu.faults.retry_after``,
or the ``retry_after`` option, to test a real wait), and ``sprites_client``
retries after a few milliseconds instead of the default backoff.

When an emulator of the run had no sandbox (bubblewrap missing, or
``sandbox="none"``), the terminal summary says so in one line: the code
under test then ran as the user running pytest. A summary line rather than
a warning, so that suites run with ``-W error`` are not failed by it; pass
``{"sandbox": "required"}`` in ``sprites_emulator_options`` to refuse
instead.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sprites_async import SpritesClient
    from sprites_async.emulator import Emulator

SCOPE_INI = "sprites_emulator_scope"
QUIRKS_INI = "sprites_emulator_quirks"
QUIRKS_MARKER = "sprites_quirks"
_SCOPES = ("function", "class", "module", "package", "session")
_UNSANDBOXED = pytest.StashKey[str]()
FIXTURES = frozenset({"sprites_emulator", "sprites_client"})
"""Requesting one of these makes an ``async def`` test an asyncio test."""
FAULT_RETRY_AFTER = 0
"""``Retry-After`` of injected faults, unless the options say otherwise."""
CLIENT_RETRY_DELAYS = (0.005, 0.05)
"""``base_delay``/``max_delay`` of ``sprites_client``'s retries: the default attempts, no wait."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini option choosing the emulator fixture's scope."""
    parser.addini(
        SCOPE_INI,
        "scope of the sprites_emulator fixture: function (default), class, module, "
        "package or session",
        default="function",
    )
    parser.addini(
        QUIRKS_INI,
        "emulator quirks (or profiles such as real-world) every sprites_emulator runs with",
        type="args",
        default=[],
    )


def _configured_scope(config: pytest.Config) -> str:
    return str(config.getini(SCOPE_INI) or "function").strip()


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad scope up front, as a usage error rather than an internal one."""
    scope = _configured_scope(config)
    if scope not in _SCOPES:
        raise pytest.UsageError(f"{SCOPE_INI} must be one of {', '.join(_SCOPES)}, not {scope!r}")
    config.addinivalue_line(
        "markers",
        f"{QUIRKS_MARKER}(*names): run this test's sprites_emulator with these quirks on",
    )
    from sprites_async.emulator import resolve_quirks

    try:
        resolve_quirks(_ini_quirks(config))
    except ValueError as exc:
        raise pytest.UsageError(f"{QUIRKS_INI}: {exc}") from None


def _ini_quirks(config: pytest.Config) -> list[str]:
    return [str(q) for q in config.getini(QUIRKS_INI) or []]


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, None]:
    """Mark ``async def`` tests that request this plugin's fixtures for pytest-asyncio.

    pytest-asyncio turns a collected function into an asyncio test in its own
    wrapper of this hook, after this (``trylast``, so inner) one returns, and
    only if it is marked by then (strict mode, its default). Later hooks such
    as ``pytest_collection_modifyitems`` are too late. An old-style wrapper,
    so that the plugin loads with any pytest a user may have.
    """
    outcome = yield
    if not collector.config.pluginmanager.hasplugin("asyncio"):
        return
    try:
        result = outcome.get_result()
    except BaseException:  # collection failed: pytest reports it, nothing to mark
        return
    items = result if isinstance(result, list) else [result]
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and (inspect.iscoroutinefunction(item.obj) or inspect.isasyncgenfunction(item.obj))
            and FIXTURES.intersection(item.fixturenames)
            and item.get_closest_marker("asyncio") is None
            and item.get_closest_marker("anyio") is None
        ):
            item.add_marker(pytest.mark.asyncio)


def _emulator_scope(fixture_name: str, config: pytest.Config) -> Any:
    return _configured_scope(config)


@pytest.fixture(scope=_emulator_scope)
def sprites_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the ``Emulator`` of ``sprites_emulator``; override to change."""
    # Tests want exec sockets to close at once rather than after the real ~5 s.
    return {"exit_linger": 0.0}


@pytest.fixture(scope=_emulator_scope)
def sprites_emulator(
    request: pytest.FixtureRequest, sprites_emulator_options: dict[str, Any]
) -> Iterator[Emulator]:
    """A running local Sprites emulator (``.url``, ``.token``, ``.faults``, ``.quirks``...)."""
    from sprites_async.emulator import Emulator

    options = dict(sprites_emulator_options)
    quirks = [*_ini_quirks(request.config), *options.pop("quirks", ())]
    if request.scope == "function":
        for marker in request.node.iter_markers(QUIRKS_MARKER):
            quirks.extend(str(name) for name in marker.args)
    if quirks:
        options["quirks"] = quirks
    retry_after = options.pop("retry_after", FAULT_RETRY_AFTER)
    with Emulator(**options) as emulator:
        if not emulator.sandboxed:
            request.config.stash[_UNSANDBOXED] = emulator.sandbox_status
        emulator.faults.retry_after = retry_after
        yield emulator


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say plainly when sprite commands ran without a sandbox."""
    line = config.stash.get(_UNSANDBOXED, None)
    if line is not None:
        terminalreporter.write_line(f"sprites_emulator: {line}", yellow=True, bold=True)


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
        from sprites_async import RetryPolicy

        base_delay, max_delay = CLIENT_RETRY_DELAYS
        client = sprites_emulator.client(
            retry=RetryPolicy(base_delay=base_delay, max_delay=max_delay)
        )
        try:
            yield client
        finally:
            await client.aclose()

    return client_fixture


sprites_client = _make_client_fixture()
