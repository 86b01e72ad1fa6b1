"""sprites-async: the asyncio-native SDK for Sprites."""

from ._version import __version__

__all__ = ["__version__"]
