"""Transport errors are named at one boundary: ``_session.py``.

A module that catches an aiohttp exception class itself is a place where a
raw aiohttp error can slip past the translation to the SDK's own errors;
such modules name ``SOCKET_ERRORS`` (or go through the seam) instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import sprites_async

PACKAGE = Path(sprites_async.__file__).parent
AIOHTTP_ERROR = re.compile(r"\baiohttp\.(?:client_exceptions\.)?\w*(?:Error|Exception)\b")


def test_only_the_seam_names_aiohttp_exceptions() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_session.py" or "emulator" in path.parts:
            continue  # the emulator is a server and shares no code with the SDK
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if AIOHTTP_ERROR.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []
