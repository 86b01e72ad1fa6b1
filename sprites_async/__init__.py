"""sprites-async: the asyncio-native SDK for Sprites (sprites.dev).

Quick start::

    from sprites_async import SpritesClient

    async with SpritesClient() as client:          # SPRITES_TOKEN from the environment
        info = await client.sprites.create("scratch")
        async for s in client.sprites.list(prefix="ci-"):
            print(s.name, s.status)

The top level holds what code imports every day: the client,
:class:`Sprite`, :class:`ExecResult`, :class:`EventOperation`, the settings,
every error, and the types you build yourself. Models, event structs and
the handles calls return live in :mod:`sprites_async.types`.
"""

from ._checkpoints import CheckpointError, CheckpointNotFoundError
from ._client import SpritesClient
from ._config import ControlOptions, ExecSettings, RetryPolicy, Timeouts
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    CommandFailedError,
    CommandNotFoundError,
    CommandStartError,
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
from ._exec import ExecResult
from ._fs import (
    SpriteDirectoryNotEmptyError,
    SpriteFileExistsError,
    SpriteFileNotFoundError,
    SpriteFSError,
    SpriteIsADirectoryError,
    SpriteNotADirectoryError,
    SpritePermissionError,
)
from ._models import SpriteConfig
from ._policy import DomainRule, IncludeRule
from ._ports import PortsWatchNotSupportedError
from ._proxy import (
    ProxyError,
    ProxyRejectedError,
    ProxyTargetUnreachableError,
)
from ._services import ServiceError, ServiceNotFoundError
from ._sprites import Sprite
from ._streams import EventOperation
from ._transport import DEFAULT_BASE_URL
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ClientClosedError",
    "CommandFailedError",
    "CommandNotFoundError",
    "CommandStartError",
    "CommandTimeoutError",
    "ConfigurationError",
    "ConflictError",
    "ControlOptions",
    "DomainRule",
    "EventOperation",
    "ExecError",
    "ExecResult",
    "ExecSettings",
    "ExitStatusUnknownError",
    "GoneError",
    "IncludeRule",
    "NotFoundError",
    "PermissionDeniedError",
    "PortsWatchNotSupportedError",
    "ProtocolError",
    "ProxyError",
    "ProxyRejectedError",
    "ProxyTargetUnreachableError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "ServiceError",
    "ServiceNotFoundError",
    "Sprite",
    "SpriteConfig",
    "SpriteDirectoryNotEmptyError",
    "SpriteFSError",
    "SpriteFileExistsError",
    "SpriteFileNotFoundError",
    "SpriteIsADirectoryError",
    "SpriteNotADirectoryError",
    "SpritePermissionError",
    "SpritesClient",
    "SpritesConnectionError",
    "SpritesError",
    "SpritesTimeoutError",
    "StreamError",
    "Timeouts",
    "__version__",
]
