"""The user reference pages stay true to the code:

* docs/store.md: its table reference is what ``docs/generate_store_reference.py`` prints today,
  and every ```sql example runs on a store built from the demo data, returns rows, and returns
  the rows shown under it (``<!-- demo-result -->`` tables);
* docs/configuration.md: the complete examples (``<!-- full-example: PATH -->``) load and build
  Dagster definitions, and every key of every configuration model has a row in a key table
  (``<!-- keys: Model -->``) whose default matches the model's.
"""

from __future__ import annotations

import importlib.util
import re
import types
import typing
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from pydantic import BaseModel

from cdp_pipeline.cli import run_now
from cdp_pipeline.config import catalog as catalog_module
from cdp_pipeline.config import connection as connection_module
from cdp_pipeline.config import csv_options as csv_options_module
from cdp_pipeline.config import ducklake as ducklake_module
from cdp_pipeline.config import loading as loading_module
from cdp_pipeline.config import processors as processors_module
from cdp_pipeline.config import schedules as schedules_module
from cdp_pipeline.config import work_storage as work_storage_module
from cdp_pipeline.config.connection import Connection, MergeRule
from cdp_pipeline.config.csv_options import StrictModel
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, StoreFile, load_project
from cdp_pipeline.config.processors import Processor
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home

DOCS = Path(__file__).resolve().parent.parent / "docs"
STORE_MD = DOCS / "store.md"
CONFIGURATION_MD = DOCS / "configuration.md"


# ---------------------------------------------------------------- markdown helpers


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` is a pipe inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [part.strip().replace("\\|", "|") for part in parts[1:-1]]


def _table_after(text: str, position: int) -> list[list[str]]:
    """The rows (header and separator dropped) of the table that starts after ``position``,
    blank lines allowed in between."""
    lines = text[position:].split("\n")[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(_cells(line))
    assert len(table) >= 2, f"no table after {text[position:position + 80]!r}"
    return table


def _sql_examples(text: str) -> list[tuple[str, list[list[str]] | None]]:
    """Every ```sql block, with the demo-result table that follows it (if any)."""
    examples = []
    for match in re.finditer(r"```sql\n(.*?)```", text, re.S):
        after = text[match.end():].lstrip("\n")
        expected = None
        if after.startswith("<!-- demo-result -->"):
            expected = _table_after(text, match.end() + text[match.end():].index("<!-- demo-result -->"))
        examples.append((match.group(1), expected))
    return examples


def _shown(value: object) -> str:
    return "NULL" if value is None else str(value)


# ---------------------------------------------------------------- docs/store.md


def _reference_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("generate_store_reference", DOCS / "generate_store_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> dict[str, Path]:
    """The demo delivery imported and exported once, through the real Dagster jobs."""
    home = tmp_path_factory.mktemp("docs") / "home"
    with pytest.MonkeyPatch.context() as monkeypatch:
        prepare_demo_home(home, monkeypatch)
        try:
            summary = run_now("demo_local", echo=lambda *_: None)
        finally:
            project_config.cache_clear()
    assert summary["success"], summary
    return {"live": home / "store.duckdb", "published": home / "store_published.duckdb"}


STORE_TEXT = STORE_MD.read_text(encoding="utf-8")
STORE_EXAMPLES = _sql_examples(STORE_TEXT)


def test_store_reference_is_the_generated_one():
    generated = STORE_TEXT.split("<!-- generated:start -->\n", 1)[1].split("<!-- generated:end -->", 1)[0]
    catalog = load_project(BUNDLED_CONFIG_DIR, Path.cwd()).catalog
    assert generated.strip() == _reference_script().store_reference(catalog).strip(), (
        "docs/store.md is out of date: paste the output of `python docs/generate_store_reference.py` between the generated markers"
    )


def test_store_page_has_the_promised_examples():
    queries = "\n".join(sql for sql, _ in STORE_EXAMPLES)
    for needle in ("FROM profiles", "segment_sizes", "last_delivery_id", "p.created_at = d.merged_at", "timeline_events", "product_store", "data_exchange"):
        assert needle in queries
    assert len(STORE_EXAMPLES) >= 10


@pytest.mark.parametrize("index", range(len(STORE_EXAMPLES)), ids=lambda i: STORE_EXAMPLES[i][0].split("\n")[0][:40])
def test_store_example_runs_on_the_demo_store(demo_store, index):
    sql, expected = STORE_EXAMPLES[index]
    with duckdb.connect(str(demo_store["published"]), read_only=True) as conn:
        cursor = conn.execute(sql)
        rows = cursor.fetchall()
        header = [column[0] for column in cursor.description]
    assert rows, f"no rows from:\n{sql}"
    if expected is not None:
        assert expected[0] == header
        shown = [[_shown(value) for value in row] for row in rows[: len(expected) - 2]]
        assert shown == expected[2:], f"docs/store.md shows other rows for:\n{sql}"


def test_top_customer_is_the_documented_one(demo_store):
    sql, _ = STORE_EXAMPLES[0]
    assert "lifetime_value DESC" in sql
    with duckdb.connect(str(demo_store["published"]), read_only=True) as conn:
        first = conn.execute(sql).fetchall()[0]
    assert (first[0], first[3], first[4]) == ("C0000259", Decimal("5835.00"), 21)
    assert "**C0000259** (Noah García), with **5835.00** EUR over **21** orders" in STORE_TEXT


def test_published_copy_matches_the_live_store(demo_store):
    """The page tells analysts to query the published copy: after a run it holds the same data."""
    with duckdb.connect(str(demo_store["published"]), read_only=True) as published, duckdb.connect(str(demo_store["live"]), read_only=True) as live:
        for sql, _ in STORE_EXAMPLES:
            assert published.execute(sql).fetchall() == live.execute(sql).fetchall(), sql


# ---------------------------------------------------------------- docs/configuration.md


CONFIG_TEXT = CONFIGURATION_MD.read_text(encoding="utf-8")


def _full_examples() -> dict[str, str]:
    examples = {}
    for match in re.finditer(r"<!-- full-example: (\S+) -->\n```yaml\n(.*?)```", CONFIG_TEXT, re.S):
        examples[match.group(1)] = match.group(2)
    return examples


def test_every_yaml_block_is_yaml():
    blocks = re.findall(r"```yaml\n(.*?)```", CONFIG_TEXT, re.S)
    assert blocks
    for block in blocks:
        yaml.safe_load(block)


def test_full_examples_load_and_build_definitions(tmp_path):
    examples = _full_examples()
    assert "store.yaml" in examples and len(examples) >= 3
    for relative, text in examples.items():
        path = tmp_path / "config" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    project = load_project(tmp_path / "config", tmp_path / "home")
    assert len(project.connections) == len(examples) - 1

    kinds = {connection.source.type for connection in project.connections.values()}
    assert {"sftp", "s3"} <= kinds
    sftp = next(c for c in project.connections.values() if c.source.type == "sftp")
    assert sftp.pgp is not None and sftp.pgp.private_keys_env
    orders = [g for g in sftp.import_goals if g.files.linked and getattr(g, "timeline", None)]
    assert orders and orders[0].timeline[0].nested, "the SFTP example imports orders with nested order lines"

    # What `cdp-pipeline validate` does not check but the code location needs (owners, tags ...).
    from cdp_pipeline.defs.connections import connection_definitions
    from cdp_pipeline.defs.resources import connection_resources

    definitions = dg.Definitions.merge(
        *(connection_definitions(project, c) for c in project.connections.values()),
        dg.Definitions(resources=connection_resources(project)),
    )
    dg.Definitions.validate_loadable(definitions)


def _annotation_models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for argument in typing.get_args(annotation):
        found += _annotation_models(argument)
    return found


def _reachable_models() -> list[type[BaseModel]]:
    """Every model a user writes keys of: store.yaml and a connection, through unions (locations,
    goals, processors), lists and dicts."""
    seen: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for nested in _annotation_models(field.annotation):
                walk(nested)

    for root in (StoreFile, Connection, *_annotation_models(Processor)):
        walk(root)
    return seen


def _model_named(name: str) -> type[BaseModel]:
    for module in (
        loading_module, ducklake_module, catalog_module, connection_module, csv_options_module, processors_module, schedules_module, work_storage_module,
    ):
        model = getattr(module, name, None)
        if isinstance(model, type) and issubclass(model, StrictModel):
            return model
    raise AssertionError(f"docs/configuration.md names unknown model {name}")


def _key_tables() -> dict[str, tuple[type[BaseModel] | None, list[list[str]]]]:
    tables = {}
    for match in re.finditer(r"<!-- keys: (\w+)(?: inherits (\w+))? -->", CONFIG_TEXT):
        name, base = match.group(1), match.group(2)
        assert name not in tables, f"two key tables for {name}"
        tables[name] = (_model_named(base) if base else None, _table_after(CONFIG_TEXT, match.end()))
    return tables


def _documented_default(value: object) -> str | None:
    """How a default is spelt in the default column; None when it is not checked (nested models)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (int, float)):
        return f"`{value:g}`"
    if isinstance(value, (list, dict)) and not value:
        return "`[]`" if isinstance(value, list) else "`{}`"
    return None


def test_every_key_of_every_model_is_documented():
    tables = _key_tables()
    problems = []
    for model in _reachable_models():
        if any(issubclass(model, processor) for processor in _annotation_models(Processor)):
            continue  # the processor table below
        if model.__name__ not in tables:
            problems.append(f"{model.__name__}: no `<!-- keys: {model.__name__} -->` table")
    for name, (base, rows) in tables.items():
        model = _model_named(name)
        expected = dict(model.model_fields)
        if base is not None:
            assert issubclass(model, base) and base.__name__ in tables, f"{name} inherits {base.__name__}, which needs its own table"
            expected = {key: field for key, field in expected.items() if key not in base.model_fields}
        documented = {}
        for row in rows[2:]:
            key = re.fullmatch(r"`(\w+)`", row[0])
            assert key, f"{name}: first cell {row[0]!r} is not a `key`"
            documented[key.group(1)] = row
        if set(documented) != set(expected):
            problems.append(f"{name}: missing {sorted(set(expected) - set(documented))}, not in the model {sorted(set(documented) - set(expected))}")
            continue
        for key, field in expected.items():
            default_cell = documented[key][2]
            if field.is_required():
                if "**required**" not in default_cell:
                    problems.append(f"{name}.{key}: required, the default column says {default_cell!r}")
                continue
            if "**required**" in default_cell:
                problems.append(f"{name}.{key}: documented as required but has a default")
            default = field.get_default(call_default_factory=True)
            spelt = _documented_default(default)
            cell = default_cell.lower() if spelt == "none" else default_cell
            if spelt is not None and spelt not in cell:
                problems.append(f"{name}.{key}: default is {default!r}, the default column says {default_cell!r}")
    assert not problems, "\n".join(problems)


def test_every_processor_type_and_key_is_documented():
    """One row per processor type listing its own keys; keys every processor shares (a common base
    model) are documented once, in that base's key table."""
    rows = _table_after(CONFIG_TEXT, CONFIG_TEXT.index("<!-- processors -->"))[2:]
    documented = {re.fullmatch(r"`(\w+)`", row[0]).group(1): set(re.findall(r"`(\w+)`", row[1])) for row in rows}
    tables = _key_tables()
    expected = {}
    for model in _annotation_models(Processor):
        (kind,) = typing.get_args(model.model_fields["type"].annotation)
        shared: set[str] = set()
        for base in model.__mro__[1:]:
            if isinstance(base, type) and issubclass(base, StrictModel) and base is not StrictModel and base.model_fields:
                assert base.__name__ in tables, f"{model.__name__} inherits keys of {base.__name__}, which needs a key table"
                shared |= set(base.model_fields)
        expected[kind] = set(model.model_fields) - {"type"} - shared
    assert documented == expected


def test_merge_rules_and_export_column_kinds_are_all_explained():
    header = CONFIG_TEXT.index("| rule | what it does |")
    truth_rows = {row[0] for row in _table_after(CONFIG_TEXT, header - 1)[2:]}
    assert truth_rows == {f"`{rule}`" for rule in typing.get_args(MergeRule)}
    # Every key is acted on: a key marked as not implemented would need its own list again.
    assert "not yet implemented" not in CONFIG_TEXT.lower()
    for kind in ("property", "profile_id", "segments", "lifecycles", "viewed_interactions", "permission_level", "text"):
        assert f"| `{kind}` |" in CONFIG_TEXT, kind


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -."""
    anchors = set()
    in_code = False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            heading = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", [CONFIGURATION_MD, STORE_MD], ids=lambda p: p.name)
def test_links_to_headings_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target, anchor in re.findall(r"\]\(([\w./-]*)#([\w-]+)\)", text):
        other = DOCS / target if target else page
        if other.exists() and anchor not in _anchors(other.read_text(encoding="utf-8")):
            broken.append(f"{target}#{anchor}")
    assert not broken, broken
