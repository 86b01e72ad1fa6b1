"""Sprite management (``client.sprites``) and the per-sprite handle (``client.sprite(name)``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import APIError, ConflictError, SpritesError
from ._exec import DEFAULT_MAX_OUTPUT
from ._models import SpriteConfig, SpriteInfo, SpritePage, decode_page, decode_sprite
from ._options import ExtraBody, ExtraHeaders, ExtraQuery, quote_segment, request_options
from ._paging import AsyncPaginator
from ._validation import (
    check_labels,
    check_list_prefix,
    check_max_results,
    check_name,
    check_path_name,
    check_url_auth,
)

if TYPE_CHECKING:
    from ._client import SpritesClient
    from .fleet import CreationLimiter

__all__ = ["DeleteReport", "Sprite", "SpritesResource"]

logger = logging.getLogger("sprites_async")

_encode = msgspec.json.encode


def _sprite_path(name: str) -> str:
    return "/v1/sprites/" + quote_segment(name)


@dataclass
class DeleteReport:
    """What :meth:`SpritesResource.delete_many` did.

    Attributes:
        deleted: Names deleted by this call.
        missing: Names that were already gone.
        failed: Names that could not be deleted, with the error.
    """

    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed


class SpritesResource:
    """Sprite management calls: ``client.sprites``."""

    def __init__(self, client: SpritesClient) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        *,
        labels: Iterable[str] | None = None,
        url_auth: str | None = None,
        wait_for_capacity: bool = False,
        config: SpriteConfig | None = None,
        environment: Mapping[str, str] | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """Create a sprite (it starts ``cold``).

        Args:
            name: 1-63 lowercase letters, digits and hyphens.
            labels: Labels to attach.
            url_auth: ``"sprite"`` (org members only, the default) or ``"public"``.
            wait_for_capacity: Block until capacity exists instead of failing.
            config: Resource hints (the service may ignore them).
            environment: Environment hints (the service may ignore them).

        Raises:
            ValueError: Invalid name, labels or url_auth (nothing was sent).
            ConflictError: A sprite with this name exists.
            RateLimitError: The creation rate limit or sprite quota was hit.
        """
        check_name(name)
        body: dict[str, Any] = {"name": name}
        if url_auth is not None:
            body["url_settings"] = {"auth": check_url_auth(url_auth)}
        if labels is not None:
            body["labels"] = check_labels(labels)
        if wait_for_capacity:
            body["wait_for_capacity"] = True
        if config is not None:
            body["config"] = config
        if environment is not None:
            body["environment"] = dict(environment)
        resp = await self._client._request(
            "POST",
            "/v1/sprites",
            json=_encode(body),
            operation="create sprite",
            sprite=name,
            timeout="create",
            options=request_options(extra_headers, extra_query, extra_body),
        )
        return resp.parse(decode_sprite)

    async def get(
        self,
        name: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """Fetch one sprite. Does not wake it.

        Raises:
            NotFoundError: No such sprite.
            ServerError: Including the 500 the service sends for missing
                sprites (``possibly_not_found`` / ``is_not_found`` is True).
        """
        check_path_name(name)
        resp = await self._client._request(
            "GET",
            _sprite_path(name),
            operation="get sprite",
            sprite=name,
            options=request_options(extra_headers, extra_query, extra_body),
        )
        return resp.parse(decode_sprite)

    async def update(
        self,
        name: str,
        *,
        url_auth: str | None = None,
        labels: Iterable[str] | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """Change URL access and/or replace the labels; omitted fields stay as they are.

        An empty ``labels`` removes every label: it is sent as
        ``{"clear_labels": true}``, the only form the official SDKs use
        (whether the server clears them for ``"labels": []`` is unconfirmed).
        """
        check_path_name(name)
        body: dict[str, Any] = {}
        if url_auth is not None:
            body["url_settings"] = {"auth": check_url_auth(url_auth)}
        if labels is not None:
            wanted = check_labels(labels)
            if wanted:
                body["labels"] = wanted
            else:
                body["clear_labels"] = True
        if not body:
            raise ValueError("update() needs url_auth and/or labels")
        resp = await self._client._request(
            "PUT",
            _sprite_path(name),
            json=_encode(body),
            operation="update sprite",
            sprite=name,
            options=request_options(extra_headers, extra_query, extra_body),
        )
        return resp.parse(decode_sprite)

    async def delete(
        self,
        name: str,
        *,
        missing_ok: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """Delete a sprite and all its checkpoints (permanent).

        Returns True if it was deleted, False if it did not exist and
        ``missing_ok`` is set (also for the 500 the service sends for missing
        sprites).
        """
        check_path_name(name)
        try:
            await self._client._request(
                "DELETE",
                _sprite_path(name),
                operation="delete sprite",
                sprite=name,
                options=request_options(extra_headers, extra_query, extra_body),
            )
        except APIError as exc:
            if missing_ok and exc.is_not_found:
                return False
            raise
        return True

    async def upgrade(
        self,
        name: str,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """Upgrade the sprite's in-VM software to the latest release."""
        check_path_name(name)
        await self._client._request(
            "POST",
            _sprite_path(name) + "/upgrade",
            operation="upgrade sprite",
            sprite=name,
            timeout="wake",
            idempotent=False,  # what an upgrade restarts is unconfirmed: never sent twice
            options=request_options(extra_headers, extra_query, extra_body),
        )
        from ._control import forget_sprite

        # A new sprite-layer version may speak /control differently (or at all).
        forget_sprite(self._client, name)

    def list(
        self,
        *,
        prefix: str | None = None,
        max_results: int = 50,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> AsyncPaginator[SpriteInfo, SpritePage]:
        """List sprites: ``await`` it for one :class:`SpritePage`, ``async for`` it for all.

        Args:
            prefix: Only names starting with this.
            max_results: Page size, 1 to 50.
        """
        check_max_results(max_results)
        base: list[tuple[str, str]] = [("max_results", str(max_results))]
        if prefix:
            base.append(("prefix", check_list_prefix(prefix)))
        client = self._client
        options = request_options(extra_headers, extra_query, extra_body)

        async def fetch(token: str | None) -> SpritePage:
            params = base if token is None else [*base, ("continuation_token", token)]
            resp = await client._request(
                "GET", "/v1/sprites", params=params, operation="list sprites", options=options
            )
            return resp.parse(decode_page)

        return AsyncPaginator(fetch)

    async def get_or_create(
        self,
        name: str,
        *,
        labels: Iterable[str] | None = None,
        url_auth: str | None = None,
        wait_for_capacity: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> tuple[SpriteInfo, bool]:
        """Return ``(sprite, created)``: the existing sprite, or a new one.

        Safe against races: if another caller creates the sprite between our
        lookup and our create, the 409 is absorbed and the sprite returned.
        """
        check_name(name)
        try:
            return await self.get(name, extra_headers=extra_headers, extra_query=extra_query), False
        except APIError as exc:
            if not exc.is_not_found:
                raise
        try:
            info = await self.create(
                name,
                labels=labels,
                url_auth=url_auth,
                wait_for_capacity=wait_for_capacity,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=extra_body,
            )
        except ConflictError:
            return await self.get(name, extra_headers=extra_headers, extra_query=extra_query), False
        return info, True

    async def delete_many(
        self,
        *,
        prefix: str | None = None,
        labels: Collection[str] | None = None,
        concurrency: int = 8,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> DeleteReport:
        """Delete every sprite matching ``prefix`` and carrying all ``labels``.

        At least one of ``prefix`` and ``labels`` is required (deleting a
        whole organisation by accident is not a one-liner). Deletions run
        with at most ``concurrency`` at once; one failure does not stop the
        others: see :class:`DeleteReport`.
        """
        if not prefix and not labels:
            raise ValueError("delete_many() needs a prefix and/or labels")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        wanted = set(check_labels(labels)) if labels else set()
        request_options(extra_headers, extra_query, extra_body)  # refuse bad ones up front
        found = self.list(
            prefix=prefix or None,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
        names = [s.name async for s in found if wanted.issubset(s.labels)]
        report = DeleteReport()
        slots = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with slots:
                try:
                    deleted = await self.delete(
                        name,
                        missing_ok=True,
                        extra_headers=extra_headers,
                        extra_query=extra_query,
                        extra_body=extra_body,
                    )
                except SpritesError as exc:
                    report.failed[name] = exc
                    return
            (report.deleted if deleted else report.missing).append(name)

        # Not an anyio task group (its errors come wrapped in an ExceptionGroup), but
        # gather does not stop the others when one raises: cancel and await them.
        tasks = [asyncio.ensure_future(one(n)) for n in names]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return report

    def temporary(
        self,
        prefix: str = "tmp-",
        *,
        labels: Iterable[str] | None = None,
        url_auth: str | None = None,
        limiter: CreationLimiter | None = None,
        ready: bool = False,
    ) -> AbstractAsyncContextManager[Sprite]:
        """A sprite that exists only for the ``async with`` block.

        ``async with client.sprites.temporary(prefix="ci-") as sprite:`` creates
        a uniquely named sprite and deletes it however the block ends, even
        when the task is cancelled. ``limiter`` paces creation (see
        :class:`sprites_async.fleet.CreationLimiter`); ``ready=True`` waits until
        the sprite is awake before entering the block. See
        :func:`sprites_async.fleet.temporary_sprite`.
        """
        from . import fleet  # loaded on first use: most programs never need it

        return fleet.temporary_sprite(
            self._client, prefix, labels=labels, url_auth=url_auth, limiter=limiter, ready=ready
        )


class Sprite:
    """A handle on one sprite: cheap, no I/O until you call a method.

    Made by ``client.sprite(name)``. ``info`` holds the last
    :class:`SpriteInfo` this handle saw (None until a call returned one);
    reading it never makes a request — call :meth:`refresh` for fresh data.
    """

    __slots__ = ("_client", "info", "name")

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
        return _sprite_path(self.name)

    async def refresh(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """Fetch the sprite's current state (and remember it in :attr:`info`)."""
        self.info = await self._client.sprites.get(
            self.name, extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
        )
        return self.info

    async def update(
        self,
        *,
        url_auth: str | None = None,
        labels: Iterable[str] | None = None,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """See :meth:`SpritesResource.update`."""
        self.info = await self._client.sprites.update(
            self.name,
            url_auth=url_auth,
            labels=labels,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
        return self.info

    async def delete(
        self,
        *,
        missing_ok: bool = False,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> bool:
        """See :meth:`SpritesResource.delete`."""
        return await self._client.sprites.delete(
            self.name,
            missing_ok=missing_ok,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )

    async def upgrade(
        self,
        *,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> None:
        """See :meth:`SpritesResource.upgrade`."""
        await self._client.sprites.upgrade(
            self.name, extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
        )

    async def wait_until(
        self,
        status: str | Collection[str] = ("warm", "running"),
        *,
        timeout: float | None = 60.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 2.0,
        extra_headers: ExtraHeaders = None,
        extra_query: ExtraQuery = None,
        extra_body: ExtraBody = None,
    ) -> SpriteInfo:
        """Poll until the sprite's status is one of ``status``; return its info.

        Polling backs off from ``poll_interval`` to ``max_poll_interval``.
        Transient errors (connection problems, 5xx) are tolerated while the
        deadline allows; a missing sprite raises at once.

        Raises:
            TimeoutError: The status was not reached in time (the message
                names the last status seen).
        """
        wanted = {status} if isinstance(status, str) else set(status)
        if not wanted:
            raise ValueError("status must name at least one status")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        last: str | None = None
        while True:
            try:
                info = await self.refresh(
                    extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body
                )
                last = info.status
                if info.status in wanted:
                    return info
            except APIError as exc:
                if exc.is_not_found or exc.status_code < 500:
                    raise
                logger.info("wait_until(%s): %s; retrying", self.name, exc)
            except (ConnectionError, TimeoutError) as exc:
                logger.info("wait_until(%s): %s; retrying", self.name, exc)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"sprite {self.name!r} did not reach {sorted(wanted)} within "
                        f"{timeout} s (last status: {last!r})"
                    )
                delay = min(delay, remaining)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_poll_interval)

    # ------------------------------------------------------------------ commands

    if TYPE_CHECKING:
        from ._checkpoints import CheckpointsResource
        from ._exec import ExecResult, ExecSession, ExecSessions, PortCallback, Stdin
        from ._fs import SpriteFS
        from ._policy import PolicyResource
        from ._ports import PortsResource
        from ._proxy import PortForward
        from ._services import ServicesResource

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
