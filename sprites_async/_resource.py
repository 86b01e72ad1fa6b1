"""Two small bases: ``async with`` that opens and closes, and a per-sprite resource handle."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ._sprites import Sprite

__all__ = ["AsyncResource", "SpriteResource"]

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


class SpriteResource:
    """What one sprite offers under a name (``sprite.checkpoints``, ``sprite.services`` ...).

    A handle on the sprite and nothing else: making one does no I/O.
    """

    __slots__ = ("_sprite",)

    def __init__(self, sprite: Sprite) -> None:
        self._sprite = sprite

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sprite={self._sprite.name!r}>"
