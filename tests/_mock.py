"""Helpers for tests against the mocked API (aioresponses, the ``mock`` fixture)."""

from __future__ import annotations

import re
from typing import Any

from aioresponses import aioresponses

BASE = "https://api.test"
TOKEN = "my-org/1234/tokid/supersecretvalue"


def url(path: str) -> re.Pattern[str]:
    """Match ``BASE + path`` with any query string."""
    return re.compile(re.escape(BASE + path) + r"(\?.*)?$")


def sprite_json(name: str = "alpha", **extra: Any) -> dict[str, Any]:
    """A sprite object in the April-2026 shape."""
    data: dict[str, Any] = {
        "id": f"sprite-0000-{name}",
        "name": name,
        "organization": "my-org",
        "status": "cold",
        "version": None,
        "url": f"https://{name}-abcde.sprites.app",
        "url_settings": {"auth": "sprite"},
        "created_at": "2026-04-03T03:02:18.641609Z",
        "updated_at": "2026-04-03T03:02:18.641609Z",
        "last_running_at": None,
        "last_warming_at": None,
        "environment_version": None,
    }
    data.update(extra)
    return data


def requests_to(m: aioresponses, method: str, path: str) -> list[Any]:
    """The recorded calls of one method to one path (any query)."""
    out = []
    for (meth, u), calls in m.requests.items():
        if meth == method and str(u).split("?")[0] == BASE + path:
            out.extend(calls)
    return out
