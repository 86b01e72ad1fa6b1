"""A local, Sprites-compatible server that runs real processes (placeholder)."""

from ._app import create_app
from ._state import EmulatorConfig, FaultConfig

__all__ = ["EmulatorConfig", "FaultConfig", "create_app"]
