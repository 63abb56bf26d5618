"""``cdp-pipeline validate`` reports every mistake it can find without the network in one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STORE = """
store:
  histroy: true
catalog:
  profile_properties:
    email: {type: text, unique: true}
    spend: {type: decimal}
  segments:
    big: {condition: "spend >= 500"}
    broken: {condition: "spendd > 1"}
  lifecycles:
    journey:
      stages:
        - {name: counted, condition: "spend + 1"}
"""

# Schema mistakes: an unknown key, a rule that does not exist, a source without its folder.
ACME = """
name: acme
source: {type: local}
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profile: true
    mappings: [{column: spend, property: spend, rule: total}]
"""

# Valid schema, wrong references: an undeclared property, an undeclared segment, an undeclared
# objective, and a password variable that is not set.
BETA = """
name: beta
source: {type: sftp, host: 127.0.0.1, username: u, host_key_fingerprint: "SHA256:abc", auth: {method: password, password_env: CDP_TEST_UNSET_PASSWORD}}
objectives: [newsletter]
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
    mappings: [{column: city, property: city, rule: set}, {column: amount, property: spnd, rule: sum}]
  - name: out
    type: export_profiles
    segment: bigg
    target: {directory: outbox, file_name: "out_{date}.csv"}
    columns: [{header: email, property: email}]
"""

EXPECTED = [
    "store.yaml: store.histroy: unknown key",
    "segments.broken.condition 'spendd > 1'",
    "lifecycles.journey.stages.0.condition (stage counted) 'spend + 1'",
    "connections/acme.yaml (connection 'acme'): source.local.path: required key is missing",
    "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.allow_new_profile: unknown key",
    "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.mappings.0.rule: Input should be",
    "connections/beta.yaml (connection 'beta'): goals.0 (people).mappings: property 'city' is not declared",
    "connections/beta.yaml (connection 'beta'): goals.0 (people).mappings: property 'spnd' is not declared in store.yaml "
    "catalog.profile_properties (did you mean 'spend'?)",
    "connections/beta.yaml (connection 'beta'): goals.1 (out).segment: 'bigg' is not declared",
    "connections/beta.yaml (connection 'beta'): objectives: 'newsletter' is not declared",
    "connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD is not set",
]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(STORE)
    (config / "connections" / "acme.yaml").write_text(ACME)
    (config / "connections" / "beta.yaml").write_text(BETA)
    return config


def _validate(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG_DIR", "CDP_TEST_UNSET_PASSWORD")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "validate", "--home", str(tmp_path / "home"), *options],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_ten_mistakes_in_three_files_are_reported_in_one_run(tmp_path):
    config = _config(tmp_path)
    result = _validate(tmp_path, "--config-dir", str(config), "--strict")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    missing = [finding for finding in EXPECTED if finding not in result.stderr]
    assert not missing, f"not reported: {missing}\n{result.stderr}"
    # each finding is its own line naming its file
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) >= len(EXPECTED)
    assert all("store.yaml" in line or "connections/" in line for line in errors)
    assert "ok  " not in result.stdout  # no connection is clean


def test_an_unset_variable_is_a_warning_unless_strict(tmp_path):
    config = _config(tmp_path)
    (config / "store.yaml").write_text(STORE.replace("  histroy: true\n", "  history: true\n").replace(
        '    broken: {condition: "spendd > 1"}\n', "").replace('"spend + 1"', '"spend > 1"').replace("big:", "bigg:"))
    (config / "store.yaml").write_text((config / "store.yaml").read_text() + "  objectives:\n    newsletter: {}\n")
    (config / "connections" / "beta.yaml").write_text(BETA.replace("property: spnd", "property: spend"))
    (config / "store.yaml").write_text((config / "store.yaml").read_text().replace(
        "    spend: {type: decimal}\n", "    spend: {type: decimal}\n    city: {type: text}\n    consents: {type: list}\n"))
    (config / "connections" / "acme.yaml").unlink()
    relaxed = _validate(tmp_path, "--config-dir", str(config))
    assert relaxed.returncode == 0, relaxed.stderr
    assert "warning: connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD is not set" in relaxed.stderr
    assert "ok  beta" in relaxed.stdout
    strict = _validate(tmp_path, "--config-dir", str(config), "--strict")
    assert strict.returncode == 2
    assert "error: connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD" in strict.stderr


# ---------------------------------------------------------------- --sample

SAMPLE_STORE = """
catalog:
  profile_properties:
    email: {type: text, unique: true}
    spend: {type: decimal}
    order_count: {type: integer}
  event_types:
    order:
      properties: {total: {type: decimal}}
      nested:
        line: {properties: {sku: {type: text}}}
"""

# Valid schema; against the samples: the link names 'order_no' where the files say 'order_id'
# (both sides), a mapping column 'spnd', an event time column 'ordered' that is not there, and a
# nested column 'product'. 'order_count' comes from a processor, 'E-Mail' normalises to 'e_mail'.
SHOP = """
name: shop
source: {type: local, path: drop}
goals:
  - name: orders
    type: import_profiles
    files:
      root: {name: orders, pattern: "orders_*.csv"}
      linked:
        - {name: lines, pattern: "lines_*.csv", parent: orders, link: {order_no: order_no}}
    processors:
      - {type: fixed_value, column: order_count, value: "1"}
    identifiers: [{column: E-Mail, property: email}]
    mappings:
      - {column: spnd, property: spend, rule: sum}
      - {column: order_count, property: order_count, rule: sum}
    timeline:
      - event_type: order
        file: orders
        event_id: order_id
        event_time: ordered
        properties: {total: total}
        nested: [{type: line, file: lines, properties: {sku: product}}]
"""

# A schema mistake in another file, reported in the same run as the samples' findings.
BROKEN = """
name: broken
source: {type: local, path: x}
goals:
  - {name: people, type: import_profiles, files: {root: {name: p, pattern: "p_*.csv"}}, identifiers: [{column: e, property: email}], mapings: []}
"""


def test_sample_files_name_the_missing_link_and_mapped_columns_with_every_other_error(tmp_path):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(SAMPLE_STORE)
    (config / "connections" / "shop.yaml").write_text(SHOP)
    (config / "connections" / "broken.yaml").write_text(BROKEN)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "orders.csv").write_text("E-Mail,order_id,spend,total,order_date\nann@example.com,o1,10,10,2026-01-01\n")
    (samples / "lines.csv").write_text("order_id,sku,qty\no1,A-1,2\n")

    result = _validate(
        tmp_path, "--config-dir", str(config),
        "--sample", f"shop.orders={samples / 'orders.csv'}",
        "--sample", f"shop.orders.lines={samples / 'lines.csv'}",
        "--sample", f"shop.order.lines={samples / 'lines.csv'}",
        "--sample", f"shop.orders={samples / 'missing.csv'}",
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    shop = "error: connections/shop.yaml (connection 'shop'): "
    orders = f"{shop}sample {samples / 'orders.csv'} (shop.orders): goal orders, file orders: "
    lines = f"{shop}sample {samples / 'lines.csv'} (shop.orders.lines): goal orders, file lines: "
    expected = [
        f"{orders}column 'order_no' (files.linked.0 (lines).link, the parent's side) is not in the sample's header; did you mean 'order_id', "
        "'order_count', 'order_date'?",  # order_count: made by the processor, so part of what the goal sees
        f"{orders}column 'spnd' (mappings.0.column) is not in the sample's header; did you mean 'spend'?",
        f"{orders}column 'ordered' (timeline.0 (order).event_time) is not in the sample's header; did you mean 'order_id', 'order_date'",
        f"{lines}column 'order_no' (files.linked.0 (lines).link) is not in the sample's header; did you mean 'order_id'?",
        f"{lines}column 'product' (timeline.0 (order).nested.0.properties.sku) is not in the sample's header",
        f"{shop}sample {samples / 'lines.csv'} (shop.order.lines): no import goal of shop named 'order'; did you mean orders?",
        f"{shop}sample {samples / 'missing.csv'} (shop.orders): no such file",
        "error: connections/broken.yaml (connection 'broken'): goals.0.import_profiles.mapings: unknown key",
    ]
    missing = [line for line in expected if not any(error.startswith(line) for error in errors)]
    assert not missing, f"not reported: {missing}\n{result.stderr}"
    # Columns that are there (after normalisation, or made by a processor) are not reported.
    for present in ("'e_mail'", "'order_count'", "'order_id' (", "'total'", "'sku'"):
        assert not any(f"column {present}" in error for error in errors), present
    assert len(errors) == len(expected), result.stderr
    # The sample's values are never printed.
    assert "ann@example.com" not in result.stderr + result.stdout and "A-1" not in result.stderr + result.stdout
    assert "ok  shop" not in result.stdout


def test_a_sample_that_matches_leaves_validate_ok_and_a_bad_sample_option_is_a_usage_error(tmp_path):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(SAMPLE_STORE)
    fixed = SHOP.replace("{order_no: order_no}", "{order_id: order_id}").replace("spnd", "spend").replace("ordered", "order_date")
    (config / "connections" / "shop.yaml").write_text(fixed.replace("product", "sku"))
    sample = tmp_path / "orders.csv"
    sample.write_text("E-Mail,order_id,spend,total,order_date\n")
    good = _validate(tmp_path, "--config-dir", str(config), "--sample", f"shop.orders={sample}")
    assert good.returncode == 0, good.stderr
    assert "ok  shop" in good.stdout
    bad = _validate(tmp_path, "--config-dir", str(config), "--sample", str(sample))
    assert bad.returncode == 2
    assert "expected CONNECTION.GOAL=PATH" in bad.stderr and "Traceback" not in bad.stderr
