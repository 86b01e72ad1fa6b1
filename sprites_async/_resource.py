"""The async-resource mixin: ``async with`` opens, leaving closes."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["AsyncResource"]

_R = TypeVar("_R", bound="AsyncResource")


class AsyncResource:
    """``async with obj as obj:`` awaits :meth:`_aopen` on entry and :meth:`aclose` on exit.

    A subclass defines ``aclose`` (idempotent, as every ``aclose`` of the SDK)
    and, when entering must do something (connect, send the request), ``_aopen``.
    ``__aexit__`` closes whatever happened in the block and never swallows
    its exception.
    """

    __slots__ = ()

    async def _aopen(self) -> None:
        """Called by ``__aenter__``; nothing to do by default."""

    async def aclose(self) -> None:
        """Release what the object holds. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self: _R) -> _R:
        await self._aopen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
