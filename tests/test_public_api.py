"""The public surface: ``__all__`` lists exactly the public names, sorted."""

from __future__ import annotations

import ast
import importlib
import itertools
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


def test_types_names_are_importable_and_documented() -> None:
    """Every name of ``sprites_async.types`` imports, and has a docstring the docs can show.

    A class must carry its own docstring (not its base's); a type alias must
    be followed by a string literal where it is defined (what mkdocstrings
    renders for it).
    """
    from sprites_async import types as public_types

    alias_docs = _alias_docstrings()
    assert public_types.__all__ == sorted(public_types.__all__)
    for name in public_types.__all__:
        obj = getattr(public_types, name)
        if isinstance(obj, type):
            assert obj.__dict__.get("__doc__"), f"{name} has no docstring of its own"
        else:
            assert alias_docs.get(name), f"{name} has no docstring where it is defined"


def test_types_and_top_level_do_not_overlap() -> None:
    """One spelling per name: a type is either at the top level or in ``types``."""
    from sprites_async import types as public_types

    assert not set(public_types.__all__) & set(sprites_async.__all__)
    assert not hasattr(sprites_async, "forward")  # sprite.forward() is the one spelling
    assert not hasattr(sprites_async, "open_connection")


def _alias_docstrings() -> dict[str, str]:
    """``Name = ...`` followed by a string literal, in every module of the package."""
    found: dict[str, str] = {}
    root = pathlib.Path(sprites_async.__file__).parent
    for path in root.glob("*.py"):
        body = ast.parse(path.read_text()).body
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                found[stmt.targets[0].id] = after.value.value
    return found
