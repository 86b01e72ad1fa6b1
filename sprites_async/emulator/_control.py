"""Emulator placeholder module, replaced by its owner."""

from __future__ import annotations

from aiohttp import web

from ._state import EmulatorState


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register this module's routes."""
