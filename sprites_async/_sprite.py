"""The per-sprite handle (``client.sprite(name)``): commands, files, services, networking.

Each feature lives in its own module, loaded on first use; the handle only
delegates to it, so building a handle or reading a property makes no request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._exec import DEFAULT_MAX_OUTPUT
from ._models import SpriteInfo
from ._options import ExtraBody, ExtraHeaders, ExtraQuery, quote_segment, request_options
from ._sprite_lifecycle import _SpriteLifecycle
from ._validation import check_path_name

if TYPE_CHECKING:
    from ._checkpoints import CheckpointsResource
    from ._client import SpritesClient
    from ._exec import ExecResult, ExecSession, ExecSessions, PortCallback, Stdin
    from ._fs import SpriteFS
    from ._policy import PolicyResource
    from ._ports import PortsResource
    from ._proxy import PortForward
    from ._services import ServicesResource

__all__ = ["Sprite"]


def sprite_path(name: str) -> str:
    """The API path of the sprite ``name`` (``/v1/sprites/<name>``, the name quoted)."""
    return "/v1/sprites/" + quote_segment(name)


class Sprite(_SpriteLifecycle):
    """A handle on one sprite: cheap, no I/O until you call a method.

    Made by ``client.sprite(name)``. ``info`` holds the last
    :class:`SpriteInfo` this handle saw (None until a call returned one);
    reading it never makes a request — call :meth:`refresh` for fresh data.
    """

    __slots__ = ()

    def __init__(self, client: SpritesClient, sprite: str | SpriteInfo) -> None:
        if isinstance(sprite, SpriteInfo):
            self.name = sprite.name
            self.info: SpriteInfo | None = sprite
        else:
            self.name = check_path_name(sprite)
            self.info = None
        self._client = client

    def __repr__(self) -> str:
        status = self.info.status if self.info else None
        return f"<Sprite {self.name!r} status={status!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sprite):
            return NotImplemented
        return self.name == other.name and self._client is other._client

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def client(self) -> SpritesClient:
        """The client this handle talks through."""
        return self._client

    @property
    def path(self) -> str:
        """The API path of this sprite (``/v1/sprites/<name>``)."""
        return sprite_path(self.name)

    # ------------------------------------------------------------------ commands

    async def exec(
        self,
        *argv: str,
        env: Mapping[str, str] | None = None,
        env_replace: bool = False,
        cwd: str | None = None,
        stdin: Stdin = None,
        timeout: float | None = None,
        check: bool = False,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        tty: bool = False,
        on_port: PortCallback | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ExecResult:
        """Run a command to completion and return its :class:`ExecResult`.

        ``await sprite.exec("python3", "-c", "print(1)")``. argv is passed
        as is (no shell); use ``"sh", "-c", "..."`` for shell syntax.

        Environment: with ``env=None`` the command gets the sprite's default
        environment. The service *replaces* the whole environment as soon as
        any variable is sent, so by default ``env`` is merged over a sane
        base — ``PATH`` (the usual system directories), ``HOME=/home/sprite``,
        ``LANG=C.UTF-8`` and, with ``tty=True``, ``TERM=xterm-256color`` —
        and your values win. Pass ``env_replace=True`` to send exactly
        ``env`` and nothing else.

        Args:
            argv: The program and its arguments (str; no NUL bytes).
            env: Environment variables (see above).
            env_replace: Send ``env`` alone, without the base.
            cwd: Absolute working directory (default ``/home/sprite``).
            stdin: bytes, str (UTF-8) or an async iterable of bytes, sent then
                closed; None means the command sees end-of-file at once.
            timeout: Seconds the command may run, counted once it started (the
                handshake has its own ``Timeouts.wake`` limit); then it is sent
                TERM, then KILL, and :class:`CommandTimeoutError` is raised.
            check: Raise :class:`CommandFailedError` for a non-zero exit code.
            max_output: Bytes kept per stream (default 8 MiB): the first and
                the last half of it; what lies between is counted in
                ``stdout_dropped``/``stderr_dropped``. None keeps everything.
            tty: Run in a terminal (stdout and stderr merged).
            on_port: Called with each :class:`PortEvent`.

        Commands without stdin and TTY run over a pooled ``/control`` socket
        when the sprite supports it, else over their own ``/exec`` socket;
        both behave the same. Cancelling the calling task terminates the
        command (TERM, then KILL) before the cancellation propagates.

        Raises:
            ValueError, TypeError: Invalid arguments (nothing was sent).
            ExitStatusUnknownError: The connection ended before the exit status.
            CommandTimeoutError: ``timeout`` expired.
            CommandFailedError: ``check=True`` and the exit code was not 0.
        """
        from ._exec import run

        return await run(
            self,
            argv,
            env=env,
            env_replace=env_replace,
            cwd=cwd,
            stdin=stdin,
            timeout=timeout,
            check=check,
            max_output=max_output,
            tty=tty,
            on_port=on_port,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    def process(
        self,
        *argv: str,
        tty: bool = False,
        stdin: bool = True,
        env: Mapping[str, str] | None = None,
        env_replace: bool = False,
        cwd: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
        max_run_after_disconnect: float | str | None = None,
        on_port: PortCallback | None = None,
        kill_on_exit: bool = True,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ExecSession:
        """Start a live command: ``async with sprite.process("bash", tty=True) as proc:``.

        The :class:`ExecSession` streams output (``proc.stdout``,
        ``proc.stderr`` or ``async for event in proc``), takes stdin
        (``write``, ``close_stdin``), resizes, signals and waits. ``env``
        follows the same rules as :meth:`exec`. ``cols``/``rows`` set the
        initial terminal size (default 80x24). ``max_run_after_disconnect``
        (seconds or a Go duration such as ``"5m"``) is how long the command
        may outlive the connection (server defaults: TTY forever, else 10 s).
        Leaving the block terminates a still-running command unless
        ``kill_on_exit=False`` or ``proc.detach()`` was called.
        Arguments are validated here, before anything is sent.
        """
        from ._exec import ExecRequest, ExecSession

        request = ExecRequest.build(
            argv,
            env=env,
            env_replace=env_replace,
            cwd=cwd,
            tty=tty,
            stdin=stdin,
            cols=cols,
            rows=rows,
            max_run_after_disconnect=max_run_after_disconnect,
        )
        options = request_options(extra_headers, extra_query, extra_body)
        return ExecSession(
            self, request, on_port=on_port, kill_on_exit=kill_on_exit, options=options
        )

    async def run_http(
        self,
        *argv: str,
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        env_replace: bool = False,
        cwd: str | None = None,
        check: bool = False,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> ExecResult:
        """Run a command with plain HTTP (``POST .../exec``) and return its result.

        No TTY, no interaction. The exit code comes from the body's trailing
        ``03 xx``; the split between stdout and stderr is approximate (the
        body has no frame lengths, only HTTP chunk boundaries) — use :meth:`exec` when it
        matters. ``env`` follows the same rules as :meth:`exec`. Cancelling
        closes the request; the command then runs on for the server's
        ``max_run_after_disconnect``. A command silent for longer than the
        client's ``Timeouts.stream_idle`` fails (HTTP has no keepalive).

        Raises:
            ExitStatusUnknownError: The body did not end with an exit frame.
            CommandFailedError: ``check=True`` and the exit code was not 0.
        """
        from ._exec import run_http

        return await run_http(
            self,
            argv,
            stdin=stdin,
            env=env,
            env_replace=env_replace,
            cwd=cwd,
            check=check,
            max_output=max_output,
            options=request_options(extra_headers, extra_query, extra_body),
        )

    @property
    def sessions(self) -> ExecSessions:
        """Exec sessions: ``list()``, ``attach(id)``, ``kill(id)``. No I/O until called."""
        from ._exec import ExecSessions

        return ExecSessions(self)

    # ---------------------------------------------- checkpoints, files, services

    @property
    def checkpoints(self) -> CheckpointsResource:
        """Checkpoints: ``create``, ``list``, ``get``, ``restore``, ``delete`` and ``guard``."""
        from ._checkpoints import CheckpointsResource

        return CheckpointsResource(self)

    def fs(self, root: str = "/home/sprite") -> SpriteFS:
        """The sprite's filesystem, pathlib-style: ``sprite.fs() / "data" / "x.json"``."""
        from ._fs import SpriteFS

        return SpriteFS(self, root)

    @property
    def services(self) -> ServicesResource:
        """Services: ``list()``, ``create()``, ``start()``, ``stop()``, ``logs()`` ..."""
        from ._services import ServicesResource

        return ServicesResource(self)

    @property
    def policy(self) -> PolicyResource:
        """The network (egress) policy: ``get()`` and ``set(rules)``."""
        from ._policy import PolicyResource

        return PolicyResource(self)

    # ---------------------------------------------------------------- networking

    @property
    def ports(self) -> PortsResource:
        """Ports opened and closed inside the sprite: ``async for e in sprite.ports.watch()``."""
        from ._ports import PortsResource

        return PortsResource(self)

    def forward(
        self,
        remote_port: int,
        local_port: int = 0,
        host: str = "localhost",
        *,
        bind: str = "127.0.0.1",
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> PortForward:
        """Forward a local port into the sprite: ``async with sprite.forward(5432) as fwd:``.

        Listens on ``bind:local_port`` (0 picks a free port, see
        ``fwd.local_port``) and relays each connection through its own
        ``/proxy`` WebSocket to ``host:remote_port`` as seen from the sprite.
        """
        from ._proxy import forward

        options = request_options(extra_headers, extra_query, extra_body)
        return forward(self, remote_port, local_port, host, bind=bind, options=options)

    async def open_connection(
        self,
        port: int,
        *,
        host: str = "localhost",
        limit: int = 2**16,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """One TCP connection to ``host:port`` inside the sprite, as asyncio streams."""
        from ._proxy import open_connection

        options = request_options(extra_headers, extra_query, extra_body)
        return await open_connection(self, port, host=host, limit=limit, options=options)
