"""What a client put on the wire, counted on the client side."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp


class Sent:
    """The requests a client sent (method, path), WebSocket upgrades included.

    Pass ``trace_configs=[sent.trace]`` to the client; retries count once each.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._on_start)

    async def _on_start(
        self, session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        self.calls.append((params.method, params.url.path))

    def count(self, method: str, suffix: str) -> int:
        """How many ``method`` requests went to a path ending in ``suffix``."""
        return sum(1 for m, p in self.calls if m == method and p.endswith(suffix))
