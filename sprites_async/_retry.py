"""The retry policy: which failures are retried, and how long to wait."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    Idempotent requests (GET, HEAD, PUT, DELETE) are retried on connection
    errors, timeouts and the statuses in ``retry_statuses``. A non-idempotent
    request (POST) is retried only when it certainly never reached the server
    (the connection could not be established): creating a sprite or starting
    a command twice is worse than an error.

    Attributes:
        max_attempts: Total attempts including the first (1 disables retries).
        base_delay: The backoff before attempt ``n`` is drawn uniformly from
            ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``.
        max_delay: Cap of the backoff.
        retry_statuses: Statuses worth another attempt.
        max_retry_after: A ``Retry-After`` longer than this is not waited
            for; the error is raised instead so the caller can decide.
    """

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({429, 500, 502, 503, 504})
    )
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts the attempts already made (1 after the first).
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)
