"""The deployment's dependencies are bounded and locked with hashes (docs/security.md, Supply chain)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PINNED = re.compile(r"^([A-Za-z0-9._-]+)==([^ \\]+) \\$")


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes) from requirements.lock."""
    locked: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := PINNED.match(line):
            current = canonicalize_name(match.group(1))
            locked[current] = (match.group(2), [])
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            locked[current][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return locked


def test_every_runtime_dependency_has_an_upper_bound():
    unbounded = [str(r) for r in _runtime_requirements() if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert unbounded == []


def test_the_lock_pins_every_dependency_within_its_range_with_hashes():
    locked = _lock()
    assert len(locked) > 20  # the whole tree, not only the direct dependencies
    for requirement in _runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements.lock; regenerate it (docs/security.md)"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), f"requirements.lock has {name}=={version}, outside {requirement}"
    for name, (version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{name}=={version} has no sha256 hash"
