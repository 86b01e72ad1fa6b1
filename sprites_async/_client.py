"""The client facade: :class:`SpritesClient`, the base client plus its resources.

The layering runs one way: this module imports the resources, the resources
import the base client (:mod:`._session`) and name this class in type hints
only. ``tests/test_import_graph.py`` keeps it so.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from ._session import BaseClient
from ._sprites import Sprite, SpritesResource

if TYPE_CHECKING:
    from ._models import SpriteInfo

__all__ = ["SpritesClient"]


class SpritesClient(BaseClient):
    """An asyncio client of the Sprites API.

    ``token`` comes from the argument, else ``SPRITES_TOKEN``, else
    ``SPRITE_TOKEN``; ``base_url`` from the argument, else ``SPRITES_API_URL``,
    else ``https://api.sprites.dev``. The aiohttp session is created inside the
    running loop on first use (or on ``async with``) and belongs to that loop.

    Args:
        token: The API token (an opaque string; never logged or shown).
        base_url: Where the API lives (the emulator's URL, for example).
        timeout: A :class:`Timeouts`, or a number of seconds for ``read``.
        retry: The :class:`RetryPolicy` for plain calls and handshakes.
        max_connections: The most HTTP requests in flight at once (0 = no
            limit). WebSockets are not counted here: a fleet keeps hundreds
            open for a long time, and they must not starve short calls.
        max_connections_per_host: The most open connections to one host,
            HTTP and WebSocket together (0 = no limit). Every API call goes to
            one host, so this caps everything the client holds open.
        keepalive_timeout: Seconds an idle pooled connection is kept.
        trace_configs: aiohttp ``TraceConfig`` objects to observe requests.
        user_agent: Replaces the default ``User-Agent``.
        control: Run short commands over pooled ``/control`` sockets when a
            sprite supports them (``True``, the default), never (``False``),
            or with explicit pool limits (:class:`ControlOptions`).
        exec_settings: Exec timing and buffering (:class:`ExecSettings`):
            exit grace period, ping interval and dead-peer timeout, kill grace.
        proxy: An ``http://[user:password@]host:port`` proxy for every call,
            HTTP and WebSocket alike (https:// APIs go through a CONNECT
            tunnel: the proxy never sees the token); ``False`` ignores the
            environment. ``None`` (the default) reads ``HTTPS_PROXY``
            (``HTTP_PROXY`` for an ``http://`` API, then ``ALL_PROXY``; lowercase
            names win), unless ``NO_PROXY`` names the API host or the API is
            on loopback (as in Go). Read once, when the client is created.
        ssl: How the server's certificate is verified: an ``ssl.SSLContext``,
            or the path of a CA bundle (PEM) that replaces the system's CAs.
            ``None`` uses the system's CAs, or ``SSL_CERT_FILE`` /
            ``SSL_CERT_DIR`` when set (``REQUESTS_CA_BUNDLE`` is not read).
            ``False`` **disables verification**: anyone on the path can then
            impersonate the API and read the token. Use it only against a
            local test server, never in production.
        tracer_provider: An OpenTelemetry ``TracerProvider``: spans for every
            call, handshake, stream and command go to it (needs the ``otel``
            extra). See the README's "Telemetry" section.
        meter_provider: An OpenTelemetry ``MeterProvider`` for the metrics.
        telemetry: ``True`` turns telemetry on with the global providers (for
            those not given), which record nothing until the application
            configures OpenTelemetry. Off by default: a client given neither
            this nor a provider creates no span at all.

    Use it as ``async with SpritesClient() as client:``, or call
    :meth:`aclose` when done. A closed client cannot be reopened.
    """

    @cached_property
    def sprites(self) -> SpritesResource:
        """Sprite management: ``list``, ``get``, ``create``, ``update``, ``delete`` ..."""
        return SpritesResource(self)

    def sprite(self, sprite: str | SpriteInfo) -> Sprite:
        """A handle on one sprite, by name or from a :class:`SpriteInfo`. No I/O."""
        return Sprite(self, sprite)
