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
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
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
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeAlias, TypeVar

from ._errors import APIError, RateLimitError, SpritesError
from ._models import SpriteInfo
from ._transport import is_loopback_url
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


# ------------------------------------------------------------------- the fan-out

OutcomeStatus = Literal["pending", "ok", "failed", "timeout", "cancelled", "skipped"]
"""``ok``: returned; ``failed``: raised; ``timeout``: the per-sprite timeout
expired; ``cancelled``: stopped by fail-fast while running; ``skipped``: never
started (fail-fast stopped the run first)."""


@dataclass
class Outcome(Generic[T]):
    """What happened on one sprite.

    Attributes:
        sprite: The sprite's name.
        status: See :data:`OutcomeStatus`.
        value: What the function returned (when ``status == "ok"``).
        error: What it raised (``failed``), or a ``TimeoutError`` (``timeout``).
        started: ``time.monotonic()`` when it started (None if never).
        duration: Seconds it ran (None if never started).
    """

    sprite: str
    status: OutcomeStatus = "pending"
    value: T | None = None
    error: BaseException | None = None
    started: float | None = None
    duration: float | None = None

    @property
    def ok(self) -> bool:
        """True when the function returned normally."""
        return self.status == "ok"

    def describe(self) -> str:
        """A short human description: ``ok``, ``failed: <error>`` ..."""
        if self.error is None or self.status in ("ok", "skipped"):
            return self.status
        text = str(self.error) or type(self.error).__name__
        return f"{self.status}: {text}"


@dataclass
class FleetResult(Generic[T]):
    """One :class:`Outcome` per sprite, in the order the sprites were given.

    Iterate it, index it by sprite name, or use the views: :attr:`succeeded`,
    :attr:`failed` (``failed`` and ``timeout``), :attr:`values`,
    :attr:`errors`. :meth:`raise_for_failures` turns failures into a
    :class:`FleetError`.
    """

    outcomes: list[Outcome[T]] = field(default_factory=list)
    duration: float = 0.0

    def __iter__(self) -> Iterator[Outcome[T]]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, sprite: str) -> Outcome[T]:
        for outcome in self.outcomes:
            if outcome.sprite == sprite:
                return outcome
        raise KeyError(sprite)

    @property
    def ok(self) -> bool:
        """True when every sprite succeeded."""
        return all(o.ok for o in self.outcomes)

    @property
    def succeeded(self) -> list[Outcome[T]]:
        """Outcomes whose function returned."""
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome[T]]:
        """Outcomes that raised or timed out."""
        return [o for o in self.outcomes if o.status in ("failed", "timeout")]

    @property
    def not_run(self) -> list[Outcome[T]]:
        """Outcomes stopped by fail-fast (``cancelled`` or ``skipped``)."""
        return [o for o in self.outcomes if o.status in ("cancelled", "skipped")]

    @property
    def values(self) -> dict[str, T]:
        """Return values by sprite name, for the sprites that succeeded."""
        return {o.sprite: o.value for o in self.outcomes if o.ok}  # type: ignore[misc]

    @property
    def errors(self) -> dict[str, BaseException]:
        """Exceptions by sprite name, for the sprites that failed or timed out."""
        return {o.sprite: o.error for o in self.outcomes if o.error is not None}

    def counts(self) -> dict[str, int]:
        """How many outcomes have each status (only statuses that occur)."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def summary(self) -> str:
        """One line, e.g. ``18 ok, 1 failed, 1 timeout in 3.2 s``."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        return f"{counts or 'nothing'} in {self.duration:.1f} s"

    def raise_for_failures(self) -> FleetResult[T]:
        """Return self when every sprite succeeded, else raise :class:`FleetError`."""
        if not self.ok:
            raise FleetError(self)
        return self


class FleetError(SpritesError):
    """Some sprites of a fan-out did not succeed; ``result`` has every outcome."""

    def __init__(self, result: FleetResult[Any]) -> None:
        self.result = result
        first = next((o for o in result.outcomes if not o.ok), None)
        detail = f"; first: {first.sprite}: {first.describe()}" if first else ""
        super().__init__(f"fleet operation not fully successful: {result.summary()}{detail}")


@dataclass(frozen=True)
class FleetProgress:
    """Passed to ``on_progress`` each time a sprite starts or finishes.

    Attributes:
        event: ``"started"`` or ``"finished"``.
        sprite: The sprite concerned.
        outcome: Its outcome so far (final when ``event == "finished"``).
        total: Sprites in the run.
        started: Sprites started so far.
        finished: Sprites finished so far (any status but ``skipped``: a
            skipped sprite never starts, so it is never reported).
        succeeded: Sprites finished with ``ok``.
        failed: Sprites finished with ``failed`` or ``timeout``.
    """

    event: Literal["started", "finished"]
    sprite: str
    outcome: Outcome[Any]
    total: int
    started: int
    finished: int
    succeeded: int
    failed: int

    @property
    def running(self) -> int:
        """Sprites running right now."""
        return self.started - self.finished


ProgressCallback = Callable[[FleetProgress], None]
"""What ``on_progress`` takes: a plain function of a :class:`FleetProgress`."""
SpriteLike: TypeAlias = "Sprite | SpriteInfo | str"
"""A sprite handle, or (with ``client=``) a name or a :class:`SpriteInfo`."""


def _handles(sprites: Iterable[SpriteLike], client: SpritesClient | None) -> list[Sprite]:
    out: list[Sprite] = []
    seen: set[str] = set()
    for item in sprites:
        if isinstance(item, (str, SpriteInfo)):
            if client is None:
                raise TypeError("pass client=... to refer to sprites by name or SpriteInfo")
            handle = client.sprite(item)
        elif isinstance(getattr(item, "name", None), str) and hasattr(item, "exec"):
            # Duck-typed: importing Sprite here would close an import cycle.
            handle = item
        else:
            raise TypeError(
                f"expected a Sprite, a sprite name or a SpriteInfo, not {type(item).__name__}"
            )
        if handle.name in seen:
            raise ValueError(f"sprite {handle.name!r} appears twice")
        seen.add(handle.name)
        out.append(handle)
    return out


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    # 3.11+: a cancellation we absorbed on purpose must not count against
    # enclosing asyncio.timeout()/TaskGroup scopes.
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


async def run_many(
    sprites: Iterable[SpriteLike],
    fn: Callable[[Sprite], Awaitable[T]],
    *,
    client: SpritesClient | None = None,
    concurrency: int = 10,
    timeout: float | None = None,
    fail_fast: bool = False,
    on_progress: ProgressCallback | None = None,
) -> FleetResult[T]:
    """Run ``await fn(sprite)`` for every sprite, at most ``concurrency`` at once.

    Never raises because of ``fn``: every sprite gets an :class:`Outcome`
    (``ok`` with its value, ``failed`` with the exception, ``timeout`` when
    ``timeout`` seconds passed). Call :meth:`FleetResult.raise_for_failures`
    to turn failures into an exception.

    Args:
        sprites: :class:`Sprite` handles, or names/``SpriteInfo`` with ``client``.
        fn: The coroutine function to run on each.
        client: Needed only when ``sprites`` are not handles.
        concurrency: The most sprites worked on at once.
        timeout: Seconds allowed per sprite (from when it starts, not queued time).
        fail_fast: On the first failure or timeout, cancel the running ones
            (``cancelled``) and do not start the rest (``skipped``).
        on_progress: Called (synchronously) when a sprite starts and finishes.

    Cancelling the call cancels every running ``fn`` and waits for them to
    unwind before re-raising, so nothing is left running.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive (or None)")
    handles = _handles(sprites, client)
    result: FleetResult[T] = FleetResult([Outcome(h.name) for h in handles])
    if not handles:
        return result
    loop = asyncio.get_running_loop()
    # Not anyio.CapacityLimiter: it yields to the loop on every acquire (10x slower).
    slots = asyncio.Semaphore(concurrency)
    # An Event, not a bool: it is read after awaits, where a type checker
    # would keep a narrowed bool.
    stop = asyncio.Event()
    counts = {"started": 0, "finished": 0, "succeeded": 0, "failed": 0}
    total = len(handles)

    def report(event: Literal["started", "finished"], outcome: Outcome[T]) -> None:
        counts[event] += 1
        if event == "finished":
            if outcome.ok:
                counts["succeeded"] += 1
            elif outcome.status in ("failed", "timeout"):
                counts["failed"] += 1
        if on_progress is None:
            return
        try:
            on_progress(FleetProgress(event, outcome.sprite, outcome, total, **counts))
        except Exception:  # a broken progress display must not break the fleet
            logger.exception("on_progress callback failed")

    async def one(sprite: Sprite, outcome: Outcome[T]) -> None:
        task = asyncio.current_task()
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            if task is not None:
                task.cancel()

        try:
            async with slots:
                if stop.is_set():
                    outcome.status = "skipped"
                    return
                outcome.started = time.monotonic()
                report("started", outcome)
                # Not anyio.fail_after: it would re-cancel fn's own cleanup at every await.
                deadline = loop.call_later(timeout, expire) if timeout is not None else None
                try:
                    outcome.value = await fn(sprite)
                    outcome.status = "ok"
                    if timed_out:
                        # fn swallowed our cancellation and finished anyway.
                        _uncancel(task)
                except asyncio.CancelledError:
                    if timed_out:
                        _uncancel(task)
                        outcome.status = "timeout"
                        outcome.error = TimeoutError(
                            f"sprite {sprite.name!r}: no result within {timeout} s"
                        )
                    elif stop.is_set():
                        _uncancel(task)
                        outcome.status = "cancelled"
                    else:
                        outcome.status = "cancelled"
                        raise
                except Exception as exc:
                    outcome.status = "failed"
                    outcome.error = exc
                except BaseException:
                    stop.set()  # not ours to record (KeyboardInterrupt ...): stop everything
                    raise
                finally:
                    if deadline is not None:
                        deadline.cancel()
                    outcome.duration = time.monotonic() - outcome.started
                    if fail_fast and outcome.status in ("failed", "timeout"):
                        # Before our slot is released, so no queued sprite starts.
                        stop.set()
        except asyncio.CancelledError:
            if not stop.is_set() or outcome.status != "pending":
                raise
            # Fail-fast cancelled us while we queued for a slot.
            _uncancel(task)
            outcome.status = "skipped"
        if outcome.status != "skipped":
            report("finished", outcome)

    started = time.monotonic()
    tasks = [loop.create_task(one(h, o)) for h, o in zip(handles, result.outcomes)]

    halted = False

    def finished(_: asyncio.Task[None]) -> None:
        # Done callbacks run after every task's first step (all were scheduled
        # first), so each cancelled task is inside one() and records its status.
        nonlocal halted
        if stop.is_set() and not halted:
            halted = True
            for t in tasks:
                t.cancel()  # a no-op on finished tasks; running ones see ``stop`` and keep quiet

    for t in tasks:
        t.add_done_callback(finished)
    try:
        # gather, not an anyio task group: ~3x faster, and anyio re-cancels at every
        # await until fn returns, which spins the SDK's own shielded cleanup.
        # Cancelling the call cancels every task and returns once all have unwound.
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        result.duration = time.monotonic() - started
    for t in tasks:
        # one() only lets out what fn raised that is not an Exception
        # (KeyboardInterrupt, SystemExit, pytest's outcomes ...): surface it.
        error = None if t.cancelled() else t.exception()
        if error is not None:
            raise error
    return result


async def exec_many(
    sprites: Iterable[SpriteLike],
    *argv: str,
    client: SpritesClient | None = None,
    concurrency: int = 10,
    timeout: float | None = None,
    fail_fast: bool = False,
    check: bool = False,
    on_progress: ProgressCallback | None = None,
    **exec_options: Any,
) -> FleetResult[ExecResult]:
    """Run one command on every sprite (``sprite.exec(*argv, **exec_options)``).

    Values are the commands' ``ExecResult`` (``exit_code``, ``stdout``,
    ``stderr``). A non-zero exit is an ``ok`` outcome unless ``check`` is
    set, in which case it is a failure (a ``CommandFailedError``) and counts
    for ``fail_fast``. Other arguments as :func:`run_many`.
    """
    if not argv:
        raise ValueError("exec_many() needs a command")

    async def run(sprite: Sprite) -> ExecResult:
        return await sprite.exec(*argv, check=check, **exec_options)

    return await run_many(
        sprites,
        run,
        client=client,
        concurrency=concurrency,
        timeout=timeout,
        fail_fast=fail_fast,
        on_progress=on_progress,
    )


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
