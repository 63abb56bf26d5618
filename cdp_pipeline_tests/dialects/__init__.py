"""Tests of cdp_pipeline.dialects, plus the check that docs/dialects.md documents every key."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

DIALECTS_MD = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"


def _cells(line: str) -> list[str]:
    return [part.strip() for part in line.strip().split("|")[1:-1]]


def _spelt(value: object) -> str:
    """How a default is written in the default column of docs/dialects.md."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    return "`{}`"  # a nested block: documented as an empty object


def key_table_problems(model: type[BaseModel]) -> list[str]:
    """Differences between ``model`` and its ``<!-- keys: Model -->`` table: every key (as written
    in the file, i.e. its alias) has a row, required keys say **required**, defaults match."""
    text = DIALECTS_MD.read_text(encoding="utf-8")
    marker = f"<!-- keys: {model.__name__} -->"
    if marker not in text:
        return [f"docs/dialects.md has no {marker} table"]
    rows = []
    for line in text[text.index(marker) + len(marker):].strip("\n").split("\n")[2:]:  # after header and separator
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    documented = {re.fullmatch(r"`(\w+)`", row[0]).group(1): row for row in rows}
    problems = []
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    if set(documented) != set(fields):
        problems.append(f"{model.__name__}: missing {sorted(set(fields) - set(documented))}, extra {sorted(set(documented) - set(fields))}")
    for key, info in fields.items():
        if key not in documented:
            continue
        cell = documented[key][2]
        if info.is_required():
            if "**required**" not in cell:
                problems.append(f"{model.__name__}.{key}: required, documented default {cell!r}")
        elif _spelt(info.get_default(call_default_factory=True)) != cell:
            problems.append(f"{model.__name__}.{key}: default {_spelt(info.get_default(call_default_factory=True))}, documented {cell!r}")
    return problems


def broken_anchors() -> list[str]:
    """Links to headings of docs/dialects.md (``](#anchor)``) whose heading does not exist."""
    text = DIALECTS_MD.read_text(encoding="utf-8")
    anchors, in_code = set(), False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return [anchor for anchor in re.findall(r"\]\(#([\w-]+)\)", text) if anchor not in anchors]
