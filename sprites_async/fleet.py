"""Driving many sprites at once: bounded fan-out, creation throttling, readiness, cleanup.

Fan out any coroutine function, or a command, across many sprites::

    from sprites_async import SpritesClient
    from sprites_async.fleet import Fleet

    async with SpritesClient() as client, Fleet(client, prefix="job-") as fleet:
        await fleet.create(20)                  # throttled to the org's creation limit
        await fleet.wait_ready()
        result = await fleet.exec("make", "test", concurrency=8, timeout=300)
        for outcome in result:
            print(outcome.sprite, outcome.status, outcome.duration)
    # leaving the block deleted every sprite the fleet created, even on Ctrl-C

The pieces are usable on their own:

* :func:`run_many` / :func:`exec_many` - at most ``concurrency`` sprites busy
  at once, a per-sprite timeout, one :class:`Outcome` per sprite (a failure
  never loses the others), optional fail-fast, progress callbacks;
* :class:`CreationLimiter` - creations wait instead of failing with 429: a
  rate limit (default 10 per 60 s per organisation, the service's own), a
  cap on live sprites, and a retry of any 429 after its ``retry_after``;
* :func:`wait_ready` / :func:`wake` - wake sprites and wait until they are
  warm/running;
* :func:`delete_all` / :func:`cleanup` - bounded-concurrency deletion;
* :func:`temporary_sprite` - a uniquely named sprite that is always deleted.

Time is read through a :class:`Clock`, so tests can drive the limiter with a
fake clock instead of sleeping.

The limiters live in ``_fleet_limits`` and the fan-out engine in
``_fleet_run``; this module is the facade (:class:`Fleet` and the
create/ready/delete helpers) and the one place to import them from.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import APIError
from ._fleet_limits import (
    CREATION_MARGIN,
    DEFAULT_CREATION_LIMIT,
    DEFAULT_CREATION_WINDOW,
    LOCAL_CREATION_LIMIT,
    Clock,
    CreationLimiter,
    RateLimiter,
    SystemClock,
    _finish_shielded,
)
from ._fleet_run import (
    FleetError,
    FleetProgress,
    FleetResult,
    Outcome,
    OutcomeStatus,
    ProgressCallback,
    SpriteLike,
    _handles,
    exec_many,
    run_many,
)
from ._models import SpriteInfo
from ._validation import check_labels, check_prefix

# Types only: _sprites imports this module (for ``client.sprites.temporary``),
# and this one reaches handles through ``client.sprite()``.
if TYPE_CHECKING:
    from ._client import SpritesClient
    from ._exec import ExecResult
    from ._sprites import DeleteReport, Sprite

__all__ = [
    "CREATION_MARGIN",
    "DEFAULT_CREATION_LIMIT",
    "DEFAULT_CREATION_WINDOW",
    "LOCAL_CREATION_LIMIT",
    "Clock",
    "CreationLimiter",
    "Fleet",
    "FleetError",
    "FleetProgress",
    "FleetResult",
    "Outcome",
    "OutcomeStatus",
    "ProgressCallback",
    "RateLimiter",
    "SpriteLike",
    "SystemClock",
    "cleanup",
    "create_many",
    "delete_all",
    "exec_many",
    "run_many",
    "temporary_sprite",
    "unique_name",
    "wait_ready",
    "wake",
]

logger = logging.getLogger("sprites_async.fleet")


T = TypeVar("T")


# ------------------------------------------------------------ create / ready / delete


def unique_name(prefix: str = "tmp-") -> str:
    """A fresh sprite name: ``prefix`` plus 10 random hex digits."""
    check_prefix(prefix)
    if not prefix:
        prefix = "s-"
    if len(prefix) > 53:
        raise ValueError("prefix too long: names are at most 63 characters")
    return prefix + secrets.token_hex(5)


async def create_many(
    client: SpritesClient,
    names: Iterable[str],
    *,
    labels: Iterable[str] | None = None,
    url_auth: str | None = None,
    limiter: CreationLimiter | None = None,
    concurrency: int = 10,
    on_progress: ProgressCallback | None = None,
) -> FleetResult[SpriteInfo]:
    """Create many sprites through a :class:`CreationLimiter`; one outcome per name.

    Without ``limiter`` the client's default one is used
    (:meth:`CreationLimiter.for_client`), so a burst larger than the
    service's creation limit waits rather than failing with 429.
    """
    lim = limiter if limiter is not None else CreationLimiter.for_client(client)
    label_list = check_labels(labels) if labels is not None else None

    async def create(sprite: Sprite) -> SpriteInfo:
        info = await lim.create(client, sprite.name, labels=label_list, url_auth=url_auth)
        sprite.info = info
        return info

    return await run_many(
        [client.sprite(n) for n in names],
        create,
        concurrency=concurrency,
        on_progress=on_progress,
    )


async def wake(sprite: Sprite) -> None:
    """Wake a sprite with the cheapest request that reaches its own server.

    A ``GET /v1/sprites/{name}`` never wakes a sprite; any request to the
    sprite layer does. ``HEAD .../exec`` costs nothing, but a HEAD answer
    has no body to tell "no such sprite" from "no such route" (older
    sprite versions), so a 404/405 is retried with the checkpoint list,
    whose 404 does mean the sprite is missing.
    """
    try:
        await sprite.client._request(
            "HEAD",
            sprite.path + "/exec",
            operation="wake sprite",
            sprite=sprite.name,
            timeout="wake",
        )
    except APIError as exc:
        if exc.status_code not in (404, 405):
            raise
        await sprite.client._request(
            "GET",
            sprite.path + "/checkpoints",
            operation="wake sprite",
            sprite=sprite.name,
            timeout="wake",
        )


async def wait_ready(
    sprites: Iterable[SpriteLike],
    *,
    client: SpritesClient | None = None,
    status: str | Collection[str] = ("warm", "running"),
    wake_up: bool = True,
    timeout: float | None = None,
    cold_timeout: float | None = None,
    concurrency: int = 20,
    on_progress: ProgressCallback | None = None,
) -> FleetResult[SpriteInfo]:
    """Wait until every sprite's status is in ``status``; one outcome per sprite.

    A new or long-idle sprite is ``cold`` and stays so until something wakes
    it, so with ``wake_up`` (the default) a sprite not yet in ``status`` is
    woken first. Waking from cold takes 1-2 s normally and much longer on a
    bad day, so the per-sprite budget depends on what the sprite was:
    ``timeout`` (default 30 s) if it was already warm/running, ``cold_timeout``
    (default: the client's ``wake`` timeout, 120 s) if it was cold.
    """
    wanted = (status,) if isinstance(status, str) else tuple(status)

    async def ready(sprite: Sprite) -> SpriteInfo:
        info = await sprite.refresh()
        if info.status in wanted:
            return info
        was_cold = info.status not in ("warm", "running")
        if was_cold:
            budget = cold_timeout if cold_timeout is not None else sprite.client.timeouts.wake
        else:
            budget = timeout if timeout is not None else 30.0
        began = time.monotonic()
        if wake_up:
            await wake(sprite)
        remaining = None if budget is None else max(0.1, budget - (time.monotonic() - began))
        return await sprite.wait_until(wanted, timeout=remaining)

    return await run_many(
        sprites,
        ready,
        client=client,
        concurrency=concurrency,
        on_progress=on_progress,
    )


async def delete_all(
    client: SpritesClient,
    sprites: Iterable[SpriteLike],
    *,
    concurrency: int = 10,
    limiter: CreationLimiter | None = None,
    on_progress: ProgressCallback | None = None,
) -> FleetResult[bool]:
    """Delete the given sprites, at most ``concurrency`` at once.

    Values are True (deleted) or False (already gone). Slots of the
    ``limiter`` (default: the client's default one) are freed.
    """
    lim = limiter if limiter is not None else CreationLimiter.for_client(client)

    async def delete(sprite: Sprite) -> bool:
        return await lim.delete(client, sprite.name, missing_ok=True)

    return await run_many(
        sprites, delete, client=client, concurrency=concurrency, on_progress=on_progress
    )


async def cleanup(
    client: SpritesClient,
    *,
    prefix: str | None = None,
    labels: Collection[str] | None = None,
    concurrency: int = 8,
    limiter: CreationLimiter | None = None,
) -> DeleteReport:
    """Delete every sprite whose name starts with ``prefix`` and carries all ``labels``.

    A wrapper of ``client.sprites.delete_many`` (at least one filter is
    required) that also frees the deleted sprites' slots in ``limiter``
    (default: the client's default :class:`CreationLimiter`).
    """
    report = await client.sprites.delete_many(prefix=prefix, labels=labels, concurrency=concurrency)
    lim = limiter if limiter is not None else CreationLimiter.for_client(client)
    for name in (*report.deleted, *report.missing):
        lim.release(name)
    return report


@asynccontextmanager
async def temporary_sprite(
    client: SpritesClient,
    prefix: str = "tmp-",
    *,
    labels: Iterable[str] | None = None,
    url_auth: str | None = None,
    limiter: CreationLimiter | None = None,
    ready: bool = False,
) -> AsyncIterator[Sprite]:
    """A uniquely named sprite that is deleted when the block exits, however it exits.

    ::

        async with temporary_sprite(client, "ci-") as sprite:
            await sprite.exec("make", "test")

    Creation goes through ``limiter`` (default: the client's default
    :class:`CreationLimiter`). With ``ready`` the sprite is woken and waited
    for before the block starts. The deletion runs to completion even when
    the task is cancelled (the cancellation is re-raised afterwards); if it
    fails, its error is raised unless the block itself raised.
    """
    lim = limiter if limiter is not None else CreationLimiter.for_client(client)
    name = unique_name(prefix)
    try:
        info = await lim.create(
            client,
            name,
            labels=check_labels(labels) if labels is not None else None,
            url_auth=url_auth,
        )
    except asyncio.CancelledError:
        # The request may have been answered "created" as we were cancelled.
        await _finish_shielded(lim.delete(client, name, missing_ok=True))
        raise
    sprite = client.sprite(info)
    body_failed = False
    try:
        if ready:
            await wake(sprite)
            await sprite.wait_until(("warm", "running"), timeout=client.timeouts.wake)
        yield sprite
    except BaseException:
        body_failed = True
        raise
    finally:
        try:
            await _finish_shielded(lim.delete(client, name, missing_ok=True))
        except asyncio.CancelledError:
            raise
        except Exception:
            if not body_failed:
                raise
            logger.exception("could not delete temporary sprite %s", name)


# ------------------------------------------------------------------------ Fleet


class Fleet:
    """A group of sprites driven together; deletes the ones it created on exit.

    ::

        async with Fleet(client, prefix="demo-", labels=["demo"]) as fleet:
            await fleet.create(20)
            result = await fleet.exec("uname", "-a")

    Args:
        client: The client to use.
        prefix: Name prefix of the sprites :meth:`create` makes.
        labels: Labels given to the sprites :meth:`create` makes.
        sprites: Existing sprites to include (they are not deleted on exit).
        concurrency: Default concurrency of the fan-out methods.
        limiter: The :class:`CreationLimiter` (default: the client's default one).
        keep: Do not delete the created sprites on exit.
    """

    def __init__(
        self,
        client: SpritesClient,
        *,
        prefix: str = "fleet-",
        labels: Iterable[str] | None = None,
        sprites: Iterable[SpriteLike] = (),
        concurrency: int = 10,
        limiter: CreationLimiter | None = None,
        keep: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.prefix = check_prefix(prefix)
        self.labels = check_labels(labels) if labels is not None else None
        self.concurrency = concurrency
        self.keep = keep
        self._limiter = limiter
        self.sprites: list[Sprite] = _handles(sprites, client)
        self.created: list[str] = []
        """Names of the sprites this fleet created (and deletes on exit)."""

    def __repr__(self) -> str:
        return f"<Fleet {len(self.sprites)} sprites, prefix={self.prefix!r}>"

    def __len__(self) -> int:
        return len(self.sprites)

    def __iter__(self) -> Iterator[Sprite]:
        return iter(self.sprites)

    @property
    def names(self) -> list[str]:
        """The names of the fleet's sprites."""
        return [s.name for s in self.sprites]

    @property
    def limiter(self) -> CreationLimiter:
        """The creation limiter in use."""
        if self._limiter is None:
            self._limiter = CreationLimiter.for_client(self.client)
        return self._limiter

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep or not self.created:
            return
        result = await _finish_shielded(self.destroy())
        if not result.ok:
            logger.error("fleet cleanup left sprites behind: %s", result.errors)

    async def create(
        self,
        count: int,
        *,
        names: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> FleetResult[SpriteInfo]:
        """Create ``count`` sprites (uniquely named from the prefix), or exactly ``names``.

        The new sprites join the fleet and are deleted when it exits.
        Sprites that could not be created are reported in the result and
        not added; one whose create had an unknown outcome (its answer lost)
        is still deleted when the fleet exits, in case it exists.
        """
        if names is None:
            names = [unique_name(self.prefix) for _ in range(count)]
        # Until the answers are in, any of these may exist: if we are
        # cancelled, exit deletes them all (missing ones are fine).
        self.created.extend(names)
        try:
            result = await create_many(
                self.client,
                names,
                labels=self.labels,
                limiter=self.limiter,
                concurrency=self.concurrency,
                on_progress=on_progress,
            )
        except BaseException:
            self.sprites.extend(self.client.sprite(n) for n in names)
            raise
        # Only a refusal proves a sprite was not made: one whose create was
        # lost on the way back (a connection error, a timeout) may exist, so
        # it stays in ``created`` and exit deletes it (missing is fine).
        refused = {o.sprite for o in result if not o.ok and isinstance(o.error, APIError)}
        self.created = [n for n in self.created if n not in refused]
        for outcome in result:
            if outcome.ok and outcome.value is not None:
                self.sprites.append(self.client.sprite(outcome.value))
        return result

    async def run(
        self,
        fn: Callable[[Sprite], Awaitable[T]],
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> FleetResult[T]:
        """:func:`run_many` over the fleet."""
        return await run_many(
            self.sprites,
            fn,
            concurrency=concurrency or self.concurrency,
            timeout=timeout,
            fail_fast=fail_fast,
            on_progress=on_progress,
        )

    async def exec(
        self,
        *argv: str,
        concurrency: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = False,
        check: bool = False,
        on_progress: ProgressCallback | None = None,
        **exec_options: Any,
    ) -> FleetResult[ExecResult]:
        """:func:`exec_many` over the fleet."""
        return await exec_many(
            self.sprites,
            *argv,
            concurrency=concurrency or self.concurrency,
            timeout=timeout,
            fail_fast=fail_fast,
            check=check,
            on_progress=on_progress,
            **exec_options,
        )

    async def wait_ready(
        self,
        *,
        timeout: float | None = None,
        cold_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> FleetResult[SpriteInfo]:
        """:func:`wait_ready` over the fleet."""
        return await wait_ready(
            self.sprites,
            timeout=timeout,
            cold_timeout=cold_timeout,
            concurrency=max(self.concurrency, 20),
            on_progress=on_progress,
        )

    async def destroy(self, *, on_progress: ProgressCallback | None = None) -> FleetResult[bool]:
        """Delete the sprites this fleet created (not the adopted ones)."""
        created = set(self.created)
        mine = [s for s in self.sprites if s.name in created]
        # Names whose create had an unknown outcome have no handle yet.
        held = {s.name for s in mine}
        mine += [self.client.sprite(n) for n in self.created if n not in held]
        result = await delete_all(
            self.client,
            mine,
            concurrency=max(self.concurrency, 10),
            limiter=self.limiter,
            on_progress=on_progress,
        )
        gone = {o.sprite for o in result if o.ok}
        self.sprites = [s for s in self.sprites if s.name not in gone]
        self.created = [n for n in self.created if n not in gone]
        return result
