"""The SDK's data types: models, event structs, and the handles its calls return.

Import what you need for annotations, ``isinstance`` checks and ``match``
statements from here::

    from sprites_async.types import CheckpointInfo, OutputEvent, SpriteInfo

The top-level package keeps what code needs every day: the client,
:class:`~sprites_async.Sprite`, :class:`~sprites_async.ExecResult`,
:class:`~sprites_async.EventOperation`, the settings, the errors and the few
types you build yourself (:class:`~sprites_async.SpriteConfig`,
:class:`~sprites_async.DomainRule`, :class:`~sprites_async.IncludeRule`).
Each name lives in exactly one of the two places.
"""

from ._checkpoints import (
    Checkpoint,
    CheckpointComplete,
    CheckpointErrorEvent,
    CheckpointEvent,
    CheckpointInfo,
    CheckpointsResource,
)
from ._exec import (
    ExecSession,
    ExecSessionInfo,
    ExecSessions,
    ExitEvent,
    KillEvent,
    OutputEvent,
    OutputStream,
    PortEvent,
    SessionInfoEvent,
)
from ._fs import ByteStream, CopyResult, FileInfo, SpriteFS, SpritePath, WriteResult
from ._models import OrgCounters, SpriteInfo, SpritePage, URLSettings
from ._paging import AsyncPaginator, ListPage
from ._policy import NetworkPolicy, PolicyResource, Rule
from ._ports import (
    PortClosed,
    PortInfo,
    PortList,
    PortOpened,
    PortsResource,
    PortsWatchEvent,
    PortWatch,
)
from ._proxy import PortForward
from ._services import (
    Service,
    ServiceComplete,
    ServiceErrorEvent,
    ServiceEvent,
    ServiceExit,
    ServiceOutput,
    ServiceResult,
    ServicesResource,
    ServiceStarted,
    ServiceState,
    ServiceStderr,
    ServiceStdout,
    ServiceStopped,
    ServiceStopping,
)
from ._sprites import DeleteReport, SpritesResource
from ._streams import OtherEvent

__all__ = [
    "AsyncPaginator",
    "ByteStream",
    "Checkpoint",
    "CheckpointComplete",
    "CheckpointErrorEvent",
    "CheckpointEvent",
    "CheckpointInfo",
    "CheckpointsResource",
    "CopyResult",
    "DeleteReport",
    "ExecSession",
    "ExecSessionInfo",
    "ExecSessions",
    "ExitEvent",
    "FileInfo",
    "KillEvent",
    "ListPage",
    "NetworkPolicy",
    "OrgCounters",
    "OtherEvent",
    "OutputEvent",
    "OutputStream",
    "PolicyResource",
    "PortClosed",
    "PortEvent",
    "PortForward",
    "PortInfo",
    "PortList",
    "PortOpened",
    "PortWatch",
    "PortsResource",
    "PortsWatchEvent",
    "Rule",
    "Service",
    "ServiceComplete",
    "ServiceErrorEvent",
    "ServiceEvent",
    "ServiceExit",
    "ServiceOutput",
    "ServiceResult",
    "ServiceStarted",
    "ServiceState",
    "ServiceStderr",
    "ServiceStdout",
    "ServiceStopped",
    "ServiceStopping",
    "ServicesResource",
    "SessionInfoEvent",
    "SpriteFS",
    "SpriteInfo",
    "SpritePage",
    "SpritePath",
    "SpritesResource",
    "URLSettings",
    "WriteResult",
]
