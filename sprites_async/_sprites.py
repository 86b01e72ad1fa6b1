"""Sprite management (``client.sprites``); the per-sprite handle is in ``_sprite``.

:class:`Sprite` is re-exported here: the rest of the package names it as
``sprites_async._sprites.Sprite``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import APIError, ConflictError, SpritesError
from ._models import SpriteConfig, SpriteInfo, SpritePage, decode_page, decode_sprite
from ._options import ExtraBody, ExtraHeaders, ExtraQuery, request_options
from ._paging import AsyncPaginator
from ._sprite import Sprite, sprite_path
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

_encode = msgspec.json.encode


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
            sprite_path(name),
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
            sprite_path(name),
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
                sprite_path(name),
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
            sprite_path(name) + "/upgrade",
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
