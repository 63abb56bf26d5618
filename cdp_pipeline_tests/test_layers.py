"""The layers keep their shape: the engine is plain Python and never imports Dagster (the wiring in
cdp_pipeline/defs does), so it can be tested, benchmarked and reused alone; transports move bytes
and never touch the store; the store never talks to the network; and the Dagster wiring uses only
the engine's public names, so an engine change behind a ``_private`` name cannot break it.

The import rules are read from the source with ``ast`` (function-level imports included), so they
hold for code paths no test happens to import."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import cdp_pipeline

ENGINE_MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(cdp_pipeline.__path__, "cdp_pipeline.")
    if not info.name.startswith(("cdp_pipeline.defs", "cdp_pipeline.definitions", "cdp_pipeline.cli"))
)


def test_engine_modules_never_import_dagster():
    assert "cdp_pipeline.store.merge" in ENGINE_MODULES and "cdp_pipeline.importing" in ENGINE_MODULES
    code = (
        "import importlib, sys\n"
        f"for name in {ENGINE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.') or m.startswith('dagster_')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


PACKAGE = Path(cdp_pipeline.__file__).resolve().parent

# Modules through which Python code opens network connections.
NETWORK_MODULES = ("socket", "ssl", "paramiko", "boto3", "botocore", "ftplib", "smtplib", "http.client", "urllib.request", "requests", "httpx")


def _module_name(path: Path) -> str:
    """The dotted name of a source file; a package's ``__init__`` keeps the ``.__init__`` so that
    relative imports in it resolve against the package itself."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports(source: str, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import in ``source``, relative ones
    resolved against ``module``; ``names`` is empty for a plain ``import``."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                target = ".".join([*package, *([target] if target else [])])
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def _files(folder: str) -> list[Path]:
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, folder
    return files


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _touches(source: str, module: str, packages: tuple[str, ...]) -> list[str]:
    """Imports of ``source`` that reach any of ``packages`` (``from a import b`` counts as ``a.b`` too)."""
    hits = []
    for line, target, names in _imports(source, module):
        if _within(target, packages) or any(_within(f"{target}.{name}", packages) for name in names):
            hits.append(f"{module}:{line}: {target}")
    return hits


def _private_uses(source: str, module: str) -> list[str]:
    """Names starting with ``_`` that ``source`` takes from cdp_pipeline outside defs/: imported
    (``from cdp_pipeline.x import _y``, ``cdp_pipeline._x``) or reached as ``module._y``."""
    hits = []
    engine_aliases: set[str] = set()
    for line, target, names in _imports(source, module):
        if not _within(target, ("cdp_pipeline",)) or _within(target, ("cdp_pipeline.defs",)):
            continue
        if any(part.startswith("_") for part in target.split(".")):
            hits.append(f"{module}:{line}: {target}")
        hits.extend(f"{module}:{line}: {target}.{name}" for name in names if name.startswith("_"))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and _within(node.module, ("cdp_pipeline",)):
            engine_aliases.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            engine_aliases.update((alias.asname or alias.name.split(".")[0]) for alias in node.names if _within(alias.name, ("cdp_pipeline",)))
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in engine_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            hits.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr}")
    return hits


def test_the_import_rules_see_violations():
    """The checks below would report a violation (they are not vacuous)."""
    assert _touches("from cdp_pipeline.store.database import open_writer", "cdp_pipeline.transports.x", ("cdp_pipeline.store",))
    assert _touches("from .. import store", "cdp_pipeline.transports.x", ("cdp_pipeline.store",))
    assert _touches("from . import database", "cdp_pipeline.store.__init__", ("cdp_pipeline.store.database",))
    assert _touches("def f():\n    import socket", "cdp_pipeline.store.x", NETWORK_MODULES)
    assert _touches("from urllib import request", "cdp_pipeline.store.x", NETWORK_MODULES)
    assert _private_uses("from cdp_pipeline.importing import _stage", "cdp_pipeline.defs.x")
    assert _private_uses("from cdp_pipeline import importing\nimporting._stage()", "cdp_pipeline.defs.x")
    assert not _private_uses("from cdp_pipeline import importing\nimporting.stage()", "cdp_pipeline.defs.x")


def test_transports_never_import_the_store():
    """Transports move bytes; what a file means is decided after the transfer, never during it."""
    hits = [hit for path in _files("transports") for hit in _touches(path.read_text(encoding="utf-8"), _module_name(path), ("cdp_pipeline.store",))]
    assert hits == []


def test_the_store_never_opens_a_socket():
    """The store reads and writes local DuckDB files only: network trouble can never leave it half-written."""
    hits = [hit for path in _files("store") for hit in _touches(path.read_text(encoding="utf-8"), _module_name(path), NETWORK_MODULES)]
    assert hits == []


def test_defs_use_only_public_engine_names():
    """The Dagster wiring calls the engine through its public names only."""
    hits = [hit for path in _files("defs") for hit in _private_uses(path.read_text(encoding="utf-8"), _module_name(path))]
    assert hits == []
