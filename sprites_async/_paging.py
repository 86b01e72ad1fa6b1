"""Pagination: one object you can ``await`` for a page or ``async for`` over all items.

Every ``list`` call of the SDK returns an :class:`AsyncPaginator`, whether the
endpoint pages (sprites) or answers everything at once (checkpoints,
services): the first is a :class:`~sprites_async.types.SpritePage`, the
second a :class:`ListPage`, which is also a plain ``list``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["AsyncPaginator", "ListPage"]

logger = logging.getLogger("sprites_async")

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


class Page(Protocol[T_co]):
    """What the paginator needs of a page."""

    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_token(self) -> str | None: ...


P = TypeVar("P", bound=Page[Any])


class ListPage(list[T]):
    """A listing the server answers in one piece: a ``list``, and the only page there is.

    ``items`` is the list itself and ``next_token`` is always None, so it
    pages like a :class:`~sprites_async.types.SpritePage`; everything a list
    does (``len``, indexing, ``==``) works as before.
    """

    __slots__ = ()

    @property
    def items(self) -> list[T]:
        """The entries (this list)."""
        return self

    @property
    def next_token(self) -> None:
        """Always None: there is no next page."""
        return None


class AsyncPaginator(Generic[T, P]):
    """A lazily fetched, token-paginated listing.

    * ``await paginator`` returns the first page.
    * ``async for item in paginator`` yields every item of every page.
    * ``async for page in paginator.pages()`` yields whole pages.

    Paging stops when a page has no next token (even if it claims
    ``has_more``), and never asks for the same token twice: a server that
    hands the same token back would otherwise make the client loop forever.
    Nothing is requested until the paginator is awaited or iterated.
    """

    def __init__(self, fetch: Callable[[str | None], Awaitable[P]]) -> None:
        self._fetch = fetch

    def __await__(self) -> Generator[Any, None, P]:
        return self._fetch(None).__await__()

    async def pages(self) -> AsyncIterator[P]:
        """Yield each page in turn."""
        seen: set[str] = set()
        token: str | None = None
        while True:
            page = await self._fetch(token)
            yield page
            token = page.next_token
            if token is None:
                return
            if token in seen:
                logger.warning("the server repeated continuation token %r; stopping", token)
                return
            seen.add(token)

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item
