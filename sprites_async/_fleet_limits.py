"""Creation throttling for :mod:`sprites_async.fleet`: the clock and the two limiters.

Kept apart from the fan-out: a limiter is per client and long-lived (a
client's own ``sprites.create`` goes through it too), a fan-out is one call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._errors import RateLimitError
from ._models import SpriteInfo
from ._transport import is_loopback_url

# Types only, as in sprites_async.fleet: _sprites imports the fleet, and
# handles are reached through ``client.sprite()``.
if TYPE_CHECKING:
    from ._client import SpritesClient


logger = logging.getLogger("sprites_async.fleet")


T = TypeVar("T")

DEFAULT_CREATION_LIMIT = 10
"""Sprite creations the service allows per window and organisation; beyond, it answers 429."""
DEFAULT_CREATION_WINDOW = 60.0
"""Length in seconds of that window."""
CREATION_MARGIN = 0.05
"""Fraction of the window added as a safety margin by :class:`CreationLimiter`."""


# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    """Where the limiters read the time and wait; replace it in tests."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        await asyncio.sleep(seconds)


# ------------------------------------------------------------------ rate limiting


class RateLimiter:
    """A token bucket of ``limit`` tokens, each coming back ``window`` seconds after use.

    That is: at most ``limit`` acquisitions in any ``window``-second span.
    The classic bucket (burst ``limit``, then a steady refill of
    ``limit/window`` per second) would allow ``limit`` at once and one more a
    few seconds later, which a service that counts creations in a sliding
    window answers with 429; returning each token one full window after it
    was spent never exceeds the window count.

    Waiters are served in arrival order. :meth:`block_for` makes every waiter
    hold off (after a 429 told us the service's own count is ahead of ours).
    ``margin`` seconds are added to the window: the service counts when a
    request arrives, not when we sent it, and network jitter between two
    bursts would otherwise let the second land a little inside the window.
    """

    def __init__(
        self,
        limit: int = DEFAULT_CREATION_LIMIT,
        window: float = DEFAULT_CREATION_WINDOW,
        *,
        margin: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.limit = limit
        self.window = float(window) + margin
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._spent: deque[float] = deque()
        self._not_before = float("-inf")
        # Only the head of the queue waits on the clock, so a fake clock that
        # simply advances on sleep() sees one sleeper at a time.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<RateLimiter {self.limit} per {self.window:g} s, available={self.available}>"

    @property
    def available(self) -> int:
        """Tokens that could be taken right now without waiting."""
        now = self.clock.monotonic()
        if now < self._not_before:
            return 0
        return self.limit - sum(1 for t in self._spent if t + self.window > now)

    def delay(self) -> float:
        """Seconds until a token would be available (0 when one is)."""
        now = self.clock.monotonic()
        self._expire(now)
        wait = max(0.0, self._not_before - now)
        if len(self._spent) >= self.limit:
            wait = max(wait, self._spent[0] + self.window - now)
        return wait

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] + self.window <= now:
            self._spent.popleft()

    async def acquire(self) -> None:
        """Take a token, waiting as long as needed. Cancellation takes nothing."""
        async with self._lock:
            while True:
                wait = self.delay()
                if wait <= 0:
                    self._spent.append(self.clock.monotonic())
                    return
                await self.clock.sleep(wait)

    def block_for(self, seconds: float) -> None:
        """Make every acquisition wait at least ``seconds`` from now."""
        self._not_before = max(self._not_before, self.clock.monotonic() + max(0.0, seconds))


class CreationLimiter:
    """Creates sprites without tripping the service's limits: bursts wait instead.

    * at most ``limit`` creations per ``window`` seconds (:class:`RateLimiter`),
      plus ``margin`` seconds (default: 5 % of the window) against jitter;
    * at most ``max_sprites`` sprites created through this limiter alive at
      once, when set: a creation waits for a slot, and :meth:`delete` (or
      :meth:`release`) frees one;
    * a 429 (``RateLimitError``) is retried after its ``retry_after`` (up to
      ``max_retries`` times), and holds back every other creation meanwhile.

    Share one limiter per organisation: :meth:`for_client` returns the
    client's default one.
    """

    def __init__(
        self,
        limit: int = DEFAULT_CREATION_LIMIT,
        window: float = DEFAULT_CREATION_WINDOW,
        *,
        max_sprites: int | None = None,
        max_retries: int = 5,
        margin: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_sprites is not None and max_sprites < 1:
            raise ValueError("max_sprites must be at least 1 (or None for no cap)")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if margin is None:
            margin = window * CREATION_MARGIN
        self.rate = RateLimiter(limit, window, margin=margin, clock=clock)
        self.max_sprites = max_sprites
        self.max_retries = max_retries
        # Not anyio's CapacityLimiter: a slot belongs to a sprite and is freed by
        # whichever task deletes it, where CapacityLimiter ties it to the borrowing task.
        self._slots = asyncio.Semaphore(max_sprites) if max_sprites is not None else None
        self._live: set[str] = set()

    def __repr__(self) -> str:
        cap = "" if self.max_sprites is None else f", {len(self._live)}/{self.max_sprites} live"
        return f"<CreationLimiter {self.rate.limit} per {self.rate.window:g} s{cap}>"

    @property
    def clock(self) -> Clock:
        """The clock the limiter waits on."""
        return self.rate.clock

    @property
    def live(self) -> frozenset[str]:
        """Names created through this limiter and not yet released."""
        return frozenset(self._live)

    @classmethod
    def for_client(cls, client: SpritesClient) -> CreationLimiter:
        """The client's own default limiter, made on first use (``client._fleet_limiter``).

        The service counts creations per organisation: pass this limiter as
        ``limiter=`` to other clients of the same organisation so that they
        draw from one budget. For a loopback URL (the emulator) it hardly
        paces at all.
        """
        limiter = client._fleet_limiter
        if limiter is None:
            if is_loopback_url(client.base_url):
                # A local emulator has no limit unless a test sets one, and
                # then its 429s are retried: pacing would only slow tests.
                limiter = cls(LOCAL_CREATION_LIMIT, 1.0, margin=0.0)
            else:
                limiter = cls()
            client._fleet_limiter = limiter
        return limiter

    async def create(self, client: SpritesClient, name: str, **kwargs: Any) -> SpriteInfo:
        """``client.sprites.create(name, **kwargs)``, waiting for the limits first.

        Waiting is freely cancellable. Once the request is sent, a
        cancellation waits for its answer before it takes effect, so the
        caller knows the sprite ``name`` may exist and can delete it.
        """
        if self._slots is not None:
            await self._slots.acquire()
        try:
            info = await self._create(client, name, kwargs)
        except BaseException:
            # A sprite created by a request whose caller was cancelled keeps
            # its slot until it is deleted.
            if self._slots is not None and name not in self._live:
                self._slots.release()
            raise
        self._live.add(info.name)
        return info

    async def _create(self, client: SpritesClient, name: str, kwargs: dict[str, Any]) -> SpriteInfo:
        retries = 0
        while True:
            await self.rate.acquire()
            post = asyncio.ensure_future(client.sprites.create(name, **kwargs))
            try:
                return await _finish_shielded(post)
            except asyncio.CancelledError:
                if post.done() and not post.cancelled() and post.exception() is None:
                    self._live.add(name)
                raise
            except RateLimitError as exc:
                retries += 1
                if retries > self.max_retries:
                    raise
                # A 429 means nothing was created, so the POST may be sent again.
                delay = exc.retry_after
                if delay is None:
                    delay = self.rate.window / self.rate.limit
                logger.info(
                    "creating %s: rate limited (%s); retrying in %.1f s", name, exc.code, delay
                )
                self.rate.block_for(delay)

    def release(self, name: str) -> None:
        """Free the slot of a sprite deleted without going through :meth:`delete`."""
        if name in self._live:
            self._live.discard(name)
            if self._slots is not None:
                self._slots.release()

    async def delete(self, client: SpritesClient, name: str, *, missing_ok: bool = True) -> bool:
        """Delete a sprite and free its slot; True if it was deleted, False if missing."""
        deleted = await client.sprites.delete(name, missing_ok=missing_ok)
        self.release(name)
        return deleted


LOCAL_CREATION_LIMIT = 1000
"""Creations per second the default limiter allows against a loopback URL (the emulator)."""


async def _finish_shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to completion even if we are cancelled meanwhile, then re-raise.

    For work that must not be abandoned halfway (a sprite left behind costs
    money; a create request in flight leaves its outcome unknown): it runs in
    its own task, and a cancellation takes effect only once that task is done.
    anyio's ``CancelScope(shield=True)`` would not do: it does not hold off
    asyncio's own cancellations (``task.cancel()``, ``asyncio.timeout``).
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
        except BaseException:
            break  # the task's own error, raised by task.result() below
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("while cancelled: %s", task.exception())
        raise asyncio.CancelledError
    return task.result()
