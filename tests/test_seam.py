"""Transport errors are named at one boundary: the seam modules (:data:`SEAM`).

The seam is the base client (``_session.py``), the aiohttp session it sends
through (``_transport.py``), the one translation of aiohttp's errors
(``_translate.py``) and the two wrappers it hands out (``_body.py``,
``_websocket.py``). A module that catches an aiohttp exception class itself
is a place where a raw aiohttp error can slip past the translation to the
SDK's own errors; a module that uses aiohttp at all holds aiohttp objects
whose failures the seam does not see. Outside the seam, modules read bodies
through ``_body.Body``, talk through ``_websocket.WebSocket`` (messages typed
by ``_websocket.WSMsgType``) and catch ``SOCKET_LOST``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import sprites_async

PACKAGE = Path(sprites_async.__file__).parent
AIOHTTP_ERROR = re.compile(r"\baiohttp\.(?:client_exceptions\.)?\w*(?:Error|Exception)\b")
SEAM = frozenset({"_session.py", "_transport.py", "_translate.py", "_body.py", "_websocket.py"})


def sdk_modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.as_posix() in SEAM or "emulator" in relative.parts:
            continue  # the emulator is a server and shares no code with the SDK
        yield path


def aiohttp_uses(source: str) -> list[int]:
    """Lines that import aiohttp or use the name ``aiohttp`` (docstrings and comments aside)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "aiohttp" for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "aiohttp":
                lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "aiohttp":
            lines.append(node.lineno)
    return sorted(set(lines))


def test_only_the_seam_names_aiohttp_exceptions() -> None:
    offenders = []
    for path in sdk_modules():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if AIOHTTP_ERROR.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_only_the_seam_uses_aiohttp() -> None:
    offenders = []
    for path in sdk_modules():
        relative = path.relative_to(PACKAGE)
        source = path.read_text()
        lines = source.splitlines()
        for number in aiohttp_uses(source):
            offenders.append(f"{relative}:{number}: {lines[number - 1].strip()}")
    assert offenders == []


def test_the_check_sees_every_way_of_using_aiohttp() -> None:
    source = '''"""Docstrings may say aiohttp.ClientSession."""
import aiohttp.web
from aiohttp import WSMsgType
x: aiohttp.ClientResponse  # a comment about aiohttp.ClientError
'''
    assert aiohttp_uses(source) == [2, 3, 4]


def test_the_seam_is_named_by_path_and_exists() -> None:
    checked = set(sdk_modules())
    for name in SEAM:  # a renamed seam module must not leave a dead exemption
        assert (PACKAGE / name).is_file(), name
        assert PACKAGE / name not in checked
    # exec's own _session.py is not the seam: a file name alone does not exempt it
    assert PACKAGE / "_exec" / "_session.py" in checked
