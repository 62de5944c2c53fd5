"""The boundary between connman's core and kgents' domain (``connman.kgents``).

The core (URLs, config, resolution, drivers, pools, the manager, stats, logging,
metrics, migration) does not import the domain, except in the few modules listed in
``BRIDGES``, each with the reason. Old module paths and ``from connman import X``
still give the moved objects themselves.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import connman

PACKAGE = Path(connman.__file__).parent
DOMAIN = "connman.kgents"

BRIDGES = {
    "connman.cli": "registers the demo and coherence subcommands",
    "connman.status": "reports the database of each storage track (schema.TRACKS)",
    "connman.migrate.plan": "column kinds and DDL of kgents' tables come from their specs",
}
"""Core modules that import ``connman.kgents`` on purpose."""

LAZY_EXPORTS = {
    "connman": "DatumConflict, CausalParentMissing (PEP 562, on first use)",
    "connman.errors": "DatumConflict, CausalParentMissing (PEP 562, on first use)",
}
"""Core modules that name domain objects but load them only when asked for one."""

THROUGH_BRIDGE = {
    "connman.migrate.compare": "connman.migrate.plan",
    "connman.migrate.copy": "connman.migrate.plan",
}
"""Core modules that load the domain only because they import a bridge."""

ALIASES = {
    "connman.adapters.dgent": "connman.kgents.dgent",
    "connman.adapters.brain": "connman.kgents.brain",
    "connman.adapters.kgents": "connman.kgents.compat",
    "connman.adapters._ddl": "connman.kgents._ddl",
    "connman.coherence": "connman.kgents.coherence",
    "connman.demo": "connman.kgents.demo",
    "connman.schema.brain": "connman.kgents.schema.brain",
    "connman.schema.dgent": "connman.kgents.schema.dgent",
    "connman.schema.dialect": "connman.kgents.schema.dialect",
    "connman.schema.models": "connman.kgents.schema.models",
    "connman.schema.spec": "connman.kgents.schema.spec",
    "connman.schema.types": "connman.kgents.schema.types",
}
"""Old module path -> the module it is now (the same object)."""

OLD_PACKAGE = "connman.schema"  # forwards its names to connman.kgents.schema


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _core() -> dict[str, Path]:
    return {
        name: path
        for name, path in _modules().items()
        if not (name == DOMAIN or name.startswith(DOMAIN + "."))
        and name not in ALIASES
        and name != OLD_PACKAGE
    }


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _reaches_domain(imported: str) -> bool:
    old = (*ALIASES, OLD_PACKAGE)
    return any(imported == m or imported.startswith(m + ".") for m in (DOMAIN, *old))


def test_only_the_listed_bridges_import_the_domain() -> None:
    importing = {
        name
        for name, path in _core().items()
        if any(_reaches_domain(imported) for imported in _imports(name, path))
    }
    assert importing == set(BRIDGES) | set(LAZY_EXPORTS)


def test_importing_the_core_loads_no_domain_module() -> None:
    core = sorted(set(_core()) - set(BRIDGES) - set(THROUGH_BRIDGE))
    assert {"connman", "connman.manager", "connman.pool", "connman.urls"} <= set(core)
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({DOMAIN!r})))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize(("old", "new"), sorted(ALIASES.items()))
def test_an_old_module_path_is_the_moved_module(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_old_schema_package_gives_the_moved_objects() -> None:
    from connman import schema
    from connman.kgents import schema as moved

    assert schema.TRACKS is moved.TRACKS
    assert schema.table_specs is moved.table_specs
    assert set(moved.__all__) <= set(dir(schema))


def test_domain_errors_are_one_class_under_every_name() -> None:
    from connman import errors
    from connman.kgents import errors as domain

    for name in domain.__all__:
        assert getattr(connman, name) is getattr(errors, name) is getattr(domain, name)
        assert name in connman.__all__
        assert issubclass(getattr(domain, name), connman.AdapterError)


def test_every_public_name_is_importable_from_connman() -> None:
    for name in connman.__all__:
        assert getattr(connman, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = connman.no_such_name  # type: ignore[attr-defined]
