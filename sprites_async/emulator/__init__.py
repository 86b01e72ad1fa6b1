"""A local, Sprites-compatible server that runs real processes.

Start one in the current event loop::

    async with Emulator() as emu:
        async with emu.client() as client:
            ...

or in a background thread (its own event loop), usable from synchronous code
and from any event loop::

    with Emulator() as emu:
        print(emu.url, emu.token)

From a shell: ``python -m sprites_async.emulator --help``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from ._app import create_app
from ._quirks import PROFILES, QUIRKS, QuirkSet, resolve_quirks
from ._sandbox import SandboxUnavailable, check_mode, jail_for, sandbox_status
from ._sprites import seed_sprites
from ._state import STATE_KEY, EmulatorConfig, EmulatorState, FaultConfig

if TYPE_CHECKING:
    from sprites_async import SpritesClient

__all__ = [
    "PROFILES",
    "QUIRKS",
    "Emulator",
    "EmulatorConfig",
    "FaultConfig",
    "QuirkSet",
    "SandboxUnavailable",
    "create_app",
    "default_token",
    "resolve_quirks",
]

_T = TypeVar("_T")
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(EmulatorConfig)) - {
    "token",
    "state_dir",
}


def default_token() -> str:
    """A fresh token in the real four-part shape ``org/org-id/token-id/secret``."""
    # The first segment is the organisation, as on the real service, where it
    # matches the sprites' ``organization``: keep it equal to EmulatorConfig.org.
    return f"local-org/0/emulator/{secrets.token_hex(16)}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only the local machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Emulator:
    """One running emulator: an aiohttp server on loopback plus its state.

    ``config_overrides`` are ``EmulatorConfig`` fields (``warm_after``,
    ``inline_exec``, ``exit_linger``, ``creation_limit`` ...). Without
    ``state_dir`` the state lives in a temporary directory removed on exit;
    with one, sprites and their files survive a restart on the same directory.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        state_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_non_loopback: bool = False,
        **config_overrides: Any,
    ) -> None:
        if not allow_non_loopback and not is_loopback(host):
            raise ValueError(
                f"refusing to listen on non-loopback host {host!r}: the emulator runs "
                "arbitrary commands for anyone holding the token; pass "
                "allow_non_loopback=True if you really mean it"
            )
        unknown = set(config_overrides) - _CONFIG_FIELDS
        if unknown:
            raise TypeError(f"unknown emulator option(s): {', '.join(sorted(unknown))}")
        # Refused here, before anything starts: a required sandbox that cannot
        # run must stop the emulator, never quietly run commands unsandboxed.
        check_mode(config_overrides.get("sandbox", "auto"))
        if "quirks" in config_overrides:
            # Refused here, before anything starts: a typo must not test nothing.
            config_overrides["quirks"] = tuple(sorted(resolve_quirks(config_overrides["quirks"])))
        self.token: str = token or default_token()
        """The bearer token clients must send."""
        self.host = host
        self.port = port
        """The requested port until started, then the bound one."""
        self.url: str = ""
        """Base URL once started, e.g. ``http://127.0.0.1:54321``."""
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._overrides = config_overrides
        self._tmpdir: str | None = None
        self._runner: web.AppRunner | None = None
        self._state: EmulatorState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> EmulatorState:
        """The live state (sprites, faults, config) of the running emulator."""
        if self._state is None:
            raise RuntimeError("the emulator is not running")
        return self._state

    @property
    def faults(self) -> FaultConfig:
        """Fault knobs; set attributes directly, e.g. ``emu.faults.latency = 0.1``."""
        return self.state.faults

    @property
    def quirks(self) -> QuirkSet:
        """Quirks in force; ``emu.quirks.add("null-arrays")``, ``.discard(...)``, ``.set(...)``."""
        return self.state.quirks

    @property
    def config(self) -> EmulatorConfig:
        """The configuration the emulator runs with."""
        return self.state.config

    @property
    def state_dir(self) -> Path:
        """Directory holding the database and every sprite's files."""
        return self.state.config.state_dir

    @property
    def sandboxed(self) -> bool:
        """Whether sprite commands run in the bubblewrap sandbox (else as this process's user)."""
        return sandbox_status(self.state.config.sandbox)[0]

    @property
    def sandbox_status(self) -> str:
        """One line saying how sprite commands run; starts with ``WARNING`` when unsandboxed."""
        return sandbox_status(self.state.config.sandbox, jail_for(self.state))[1]

    @property
    def checkpoint_status(self) -> tuple[str, str]:
        """``(method, one line)``: how checkpoints are made (``"hard-links"`` or ``"copy"``)."""
        from ._fsprobe import checkpoint_method

        return checkpoint_method(self.state.config.state_dir)

    # -- async use -------------------------------------------------------------

    async def start(self) -> Emulator:
        """Start serving in the running event loop; returns ``self``."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        if self._state_dir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="sprites-emulator-")
            state_dir = Path(self._tmpdir)
        else:
            state_dir = self._state_dir
        config = EmulatorConfig(token=self.token, state_dir=state_dir, **self._overrides)
        try:
            app = create_app(config)
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
            await runner.setup()
            self._runner = runner
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        self._state = app[STATE_KEY]
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self._loop = asyncio.get_running_loop()
        return self

    async def aclose(self) -> None:
        """Stop serving, end every session and remove a temporary state dir."""
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if self._tmpdir is not None:
                # Lots of sprite directories can take a while; keep the loop free.
                await asyncio.to_thread(shutil.rmtree, self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            self._state = None

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- threaded use ----------------------------------------------------------

    def __enter__(self) -> Emulator:
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the emulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.aclose()

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="sprites-emulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in the emulator's thread (its SQLite connection lives there)."""
        loop = self._loop
        if loop is None or self._state is None:
            raise RuntimeError("the emulator is not running")
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    # -- helpers ---------------------------------------------------------------

    def seed(self, count: int, *, prefix: str = "sprite-") -> list[str]:
        """Bulk-create ``count`` sprites named ``<prefix>00000``...; returns the new names.

        Fast (ten thousand in well under a second): one SQLite transaction, and
        the sprites' directories are made on first use.
        """
        return self._call(lambda: seed_sprites(self.state, count, prefix=prefix))

    def client(self, **kwargs: Any) -> SpritesClient:
        """A ``SpritesClient`` for this emulator (``kwargs`` go to its constructor)."""
        from sprites_async import SpritesClient

        return SpritesClient(self.token, base_url=self.url, **kwargs)

    def __repr__(self) -> str:
        where = self.url or "not running"
        return f"<Emulator {where}>"
