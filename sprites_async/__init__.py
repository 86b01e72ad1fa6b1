"""sprites-async: the asyncio-native SDK for Sprites (sprites.dev).

Quick start::

    from sprites_async import SpritesClient

    async with SpritesClient() as client:          # SPRITES_TOKEN from the environment
        info = await client.sprites.create("scratch")
        async for s in client.sprites.list(prefix="ci-"):
            print(s.name, s.status)
"""

from ._control import ControlOptions
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    CommandFailedError,
    CommandTimeoutError,
    ConfigurationError,
    ConflictError,
    ExecError,
    ExitStatusUnknownError,
    GoneError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
    StreamError,
)
from ._exec import (
    ExecResult,
    ExecSession,
    ExecSessionInfo,
    ExecSessions,
    ExecSettings,
    ExitEvent,
    KillEvent,
    OutputEvent,
    OutputStream,
    PortEvent,
    SessionInfoEvent,
)
from ._models import OrgCounters, SpriteConfig, SpriteInfo, SpritePage, URLSettings
from ._paging import AsyncPaginator
from ._retry import RetryPolicy
from ._session import DEFAULT_BASE_URL, SpritesClient, Timeouts
from ._sprites import DeleteReport, Sprite, SpritesResource
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "APIError",
    "AsyncPaginator",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "CommandFailedError",
    "CommandTimeoutError",
    "ConfigurationError",
    "ConflictError",
    "ControlOptions",
    "DeleteReport",
    "ExecError",
    "ExecResult",
    "ExecSession",
    "ExecSessionInfo",
    "ExecSessions",
    "ExecSettings",
    "ExitEvent",
    "ExitStatusUnknownError",
    "GoneError",
    "KillEvent",
    "NotFoundError",
    "OrgCounters",
    "OutputEvent",
    "OutputStream",
    "PermissionDeniedError",
    "PortEvent",
    "ProtocolError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "SessionInfoEvent",
    "Sprite",
    "SpriteConfig",
    "SpriteInfo",
    "SpritePage",
    "SpritesClient",
    "SpritesConnectionError",
    "SpritesError",
    "SpritesResource",
    "SpritesTimeoutError",
    "StreamError",
    "Timeouts",
    "URLSettings",
    "__version__",
]
