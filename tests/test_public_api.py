"""The public surface: ``__all__`` lists exactly the public names, sorted."""

from __future__ import annotations

import importlib
import pathlib
import types

import sprites_async


def test_all_is_sorted_and_complete() -> None:
    # "@py..." names are added by pytest rewriting the package of our plugin.
    public = {
        n
        for n in dir(sprites_async)
        if not n.startswith(("_", "@"))
        # Submodules (emulator, fleet, pytest_plugin) appear once imported; they
        # are reached as modules, not re-exported names.
        and not isinstance(getattr(sprites_async, n), types.ModuleType)
    }
    exported = set(sprites_async.__all__) - {"__version__"}
    assert exported == public
    names = [n for n in sprites_async.__all__ if n != "__version__"]
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))


def test_every_exported_name_has_a_docstring() -> None:
    for name in sprites_async.__all__:
        obj = getattr(sprites_async, name)
        if isinstance(obj, (str, int)):
            continue
        assert obj.__doc__, f"{name} has no docstring"


def test_py_typed_is_shipped() -> None:
    root = pathlib.Path(importlib.import_module("sprites_async").__file__).parent  # type: ignore[arg-type]
    assert (root / "py.typed").exists()
