"""The outcome of one pre-flight check (``cdp-pipeline check``, the per-connection check job)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """One check: what was checked, whether it passed, what was seen, and what to change if not."""

    name: str
    passed: bool
    detail: str
    fix: str = ""


def variable_checks(named: list[tuple[str, str]], env: Mapping[str, str]) -> list[CheckResult]:
    """One check per (variable, what it holds): set and not empty."""
    results = []
    for name, purpose in named:
        if env.get(name):
            # Only whether it is set: the value, its length or a hash would all tell something about a secret.
            results.append(CheckResult(f"env {name}", True, f"set ({purpose})"))
        else:
            results.append(CheckResult(
                f"env {name}", False, f"not set or empty ({purpose})",
                f"set {name} in the environment of the Dagster code location and of the CLI",
            ))
    return results
