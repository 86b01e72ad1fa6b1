"""The calls a sprite handle hands to ``client.sprites``: refresh, update, delete, upgrade, wait.

:class:`~sprites_async.Sprite` (in ``_sprite``) inherits them; it holds the
handle's identity and the features (commands, files, services, networking).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from ._errors import APIError
from ._models import SpriteInfo
from ._options import ExtraBody, ExtraHeaders, ExtraQuery

if TYPE_CHECKING:
    from ._client import SpritesClient

logger = logging.getLogger("sprites_async")


class _SpriteLifecycle:
    """The management calls of a sprite handle, each delegated to :class:`SpritesResource`.

    A call that returns a :class:`SpriteInfo` also remembers it in ``info``.
    """

    __slots__ = ("_client", "info", "name")

    # Set by Sprite.__init__; the slots are here so that the calls below may set info.
    name: str
    info: SpriteInfo | None
    _client: SpritesClient

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
