"""The Dagster UI in a real browser (issue G, item 6).

The demo connection runs in-process on a small demo delivery, recorded in a temporary
DAGSTER_HOME; `dagster-webserver` then serves that instance on 127.0.0.1, and headless Debian
Chromium, driven by Playwright's Python client, opens what an engineer opens: the asset graph of
the `demo_local` group, a delivery's partitions, the Runs page and a successful run's page.
Screenshots are kept under `test-artifacts/` at the repository root (see docs/ui.md).

Chromium is a system program: `scripts/test.sh` installs Debian's `chromium`. Without it the test
fails (it does not skip), so CI cannot go green without having looked at the UI. Playwright never
downloads a browser here: it drives /usr/bin/chromium (or $CDP_CHROMIUM).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CONNECTION = "demo_local"
CODE_LOCATION = "cdp_pipeline"
ASSETS = (
    "fetched_files",
    "decrypted_files",
    "import_tables",
    "profile_store",
    "high_value_export_segment_export",
    "high_value_export_timeline_export",
)
DELIVERIES = (
    "households:households_20260115.csv",
    "customers:profiles_20260115.csv",
    "orders:orders_20260115.csv",
)
RUN_PARTITION = "customers:profiles_20260115.csv"  # the run whose page the test opens
# As the machine notes prescribe: no GPU, no QUIC, and none of Chromium's own background traffic
# (the network is closed beyond loopback). Playwright adds --headless and a fresh temporary
# --user-data-dir itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_SECONDS = 120
BROWSER_WAIT_MS = 60_000


def _chromium() -> str:
    """Debian's Chromium (or $CDP_CHROMIUM); a clear failure, never a skip, when it is not installed."""
    configured = os.environ.get("CDP_CHROMIUM")
    candidates = [configured] if configured else ["/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"Chromium is missing (looked for {configured or '/usr/bin/chromium and `chromium` on PATH'}). "
        "The UI browser test drives Debian's Chromium: `bash scripts/test.sh` installs it "
        "(apt-get install chromium); Playwright's own browser download does not work here.",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no webserver log)"


def _wait_for_code_location(server: subprocess.Popen, port: int, log: Path) -> None:
    """Until GraphQL lists the connection's assets: the webserver is up and the code location loaded."""
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
    deadline = time.monotonic() + SERVER_START_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.returncode}:\n{_log_tail(log)}", pytrace=False)
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                payload = json.loads(response.read())
            keys = {tuple(node["assetKey"]["path"]) for node in (payload.get("data") or {}).get("assetNodes") or []}
            if all((CONNECTION, asset) in keys for asset in ASSETS):
                return
            last = f"assets so far: {sorted(keys)}"
        except (OSError, ValueError) as error:
            last = repr(error)
        time.sleep(0.5)
    pytest.fail(
        f"dagster-webserver on port {port} did not serve the {CONNECTION} assets within {SERVER_START_SECONDS} s "
        f"({last}):\n{_log_tail(log)}",
        pytrace=False,
    )


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # dagster dev and the webserver, daemon, code servers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the webserver and its code server
            server.wait(timeout=30)


@contextlib.contextmanager
def _served_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The demo connection run once, then `dagster dev` on that DAGSTER_HOME until the block ends."""
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=100)
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    # What the UI itself records once someone closes the "Join the Dagster community" dialog;
    # without it, that dialog covers the first page (and every screenshot).
    (dagster_home / ".nux").mkdir()
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")

    try:
        _run_as_the_sensor_does()
    finally:
        project_config.cache_clear()  # the webserver's code location loads this home's config anew
    with dg.DagsterInstance.get() as instance:
        runs = {
            run.tags.get("dagster/partition", run.job_name): run.run_id
            for run in instance.get_runs()
            if run.status == dg.DagsterRunStatus.SUCCESS
        }
        assert set(DELIVERIES) <= set(runs), runs
        assert f"{CONNECTION}_export" in runs, runs
        # The run page counts the steps it shows: the four assets plus the store's asset checks.
        steps = instance.get_run_step_stats(runs[RUN_PARTITION])
        assert steps and all(step.status is not None and step.status.value == "SUCCESS" for step in steps), steps

    port = _free_port()
    log = tmp_path / "webserver.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            # `dagster dev`: the webserver and the daemon, as a data engineer starts them. The daemon's
            # sensor finds the demo files in the ledger and requests nothing, so the runs shown are ours.
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env={**os.environ}, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for_code_location(server, port, log)
        yield {"base": f"http://127.0.0.1:{port}", "runs": runs, "steps": len(steps), "home": home, "log": log}
    finally:
        _stop(server)


def _run_as_the_sensor_does() -> None:
    """The runs the daemon launches for the demo: one import run per delivery (the sensor's
    requests, in goal order), the store checks after the merges, then the export."""
    from cdp_pipeline.definitions import defs

    definitions = defs()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(f"{CONNECTION}__deliveries", list(DELIVERIES))
        imports = definitions.resolve_job_def(f"{CONNECTION}_import")
        for delivery in DELIVERIES:
            assert imports.execute_in_process(instance=instance, partition_key=delivery, raise_on_error=False).success, delivery
        assert definitions.resolve_job_def(f"{CONNECTION}_store_checks").execute_in_process(instance=instance, raise_on_error=False).success
        assert definitions.resolve_job_def(f"{CONNECTION}_export").execute_in_process(instance=instance, raise_on_error=False).success


@pytest.mark.timeout(600)
def test_ui_shows_the_connection_graph_partitions_and_successful_runs(tmp_path, monkeypatch):
    # Before any work: a missing browser or client fails at once (FAILED, not skipped), with the fix.
    chromium = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright (the Python client) is missing: `bash scripts/test.sh` installs it with the [dev] extras", pytrace=False)

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ui-failure.png").unlink(missing_ok=True)  # only ever this run's failure
    with _served_demo(tmp_path, monkeypatch) as demo_ui, sync_playwright() as playwright:
        base, runs = demo_ui["base"], demo_ui["runs"]
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=BROWSER_WAIT_MS)
        page = None
        try:
            # Wide enough that the six nodes render in full (status, partitions, kinds), not as bare labels.
            page = browser.new_page(viewport={"width": 2400, "height": 1000})
            page.set_default_timeout(BROWSER_WAIT_MS)
            page.set_default_navigation_timeout(BROWSER_WAIT_MS)
            expect.set_options(timeout=BROWSER_WAIT_MS)

            # 1. The connection's asset group: the chain and the exports, all materialized.
            page.goto(f"{base}/locations/{CODE_LOCATION}/asset-groups/{CONNECTION}")
            expect(page.get_by_text("Asset Group in")).to_be_visible()
            for asset in ASSETS:
                # A node's title carries the full name (the visible label may be shortened with "…").
                expect(page.locator(f'[data-tooltip="{asset}"]'), f"asset node {asset}").to_be_visible()
            # The four import assets are partitioned by delivery: three deliveries, all merged.
            expect(page.get_by_text(f"{len(DELIVERIES)} partitions", exact=True)).to_have_count(4)
            expect(page.get_by_text("100% filled", exact=True)).to_have_count(4)
            # The store's asset checks ran with the import and all passed ("4 / 4 Passed").
            expect(page.get_by_text(re.compile(r"^(\d+) / \1 Passed$"))).to_have_count(1)
            for kind in ("pgp", "Polars", "DuckDB"):
                expect(page.get_by_text(kind, exact=True).first, f"kind tag {kind}").to_be_visible()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=ARTIFACTS / "ui-asset-graph.png")

            # 2. One partition per delivery on the store asset.
            page.set_viewport_size({"width": 1600, "height": 1000})
            page.goto(f"{base}/assets/{CONNECTION}/profile_store?view=partitions")
            expect(page.get_by_text(f"Materialized ({len(DELIVERIES)})")).to_be_visible()
            expect(page.get_by_text("Failed (0)")).to_be_visible()
            for delivery in DELIVERIES:
                expect(page.get_by_text(delivery, exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "ui-partitions.png")

            # 3. The Runs page lists the four runs as successful; open the customers import from there.
            page.goto(f"{base}/runs")
            for key, run_id in runs.items():
                # A row of Dagster 1.13's virtualized runs feed (CSS-module class RunsFeedRow_rowGrid__<hash>).
                row = page.locator('[class*="RunsFeedRow_rowGrid"]').filter(has=page.locator(f'a[href="/runs/{run_id}"]'))
                expect(row, f"run {run_id[:8]} ({key}) on the Runs page").to_contain_text("Success")
            page.screenshot(path=ARTIFACTS / "ui-runs.png")
            run_id = runs[RUN_PARTITION]
            page.locator(f'a[href="/runs/{run_id}"]').first.click()
            page.wait_for_url(f"**/runs/{run_id}**")

            # 4. The run's page: status tag, partition, every step succeeded, RUN_SUCCESS in the log.
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text(f"partition: {RUN_PARTITION}")).to_be_visible()
            expect(page.get_by_text(f"Succeeded ({demo_ui['steps']})")).to_be_visible()
            expect(page.get_by_text("Errored (0)")).to_be_visible()
            expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
            page.screenshot(path=ARTIFACTS / "ui-run.png")

            # 5. Run now from the Launchpad: a customers file that just arrived (no sensor tick has
            # requested it) is imported by one run of demo_local_run_now, launched through the
            # daemon's queue like any UI launch.
            inbox = demo_ui["home"] / "demo" / "inbox"
            header = (inbox / "profiles_20260115.csv").read_text().splitlines()[0]
            assert header.startswith("customer_id,email,")
            late = {"customer_id": "C9999999", "email": "late.arrival@example.com"}
            row = [late.get(column, "") for column in header.split(",")]
            (inbox / "profiles_20260116.csv").write_text(f"{header}\n{','.join(row)}\n")
            page.goto(f"{base}/locations/{CODE_LOCATION}/jobs/{CONNECTION}_run_now/playground")
            launch = page.get_by_role("button", name=re.compile(r"Launch run$", re.I)).last
            expect(launch).to_be_enabled()
            page.screenshot(path=ARTIFACTS / "ui-run-now-launchpad.png")
            launch.click()
            page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"))
            launched = re.search(r"/runs/([0-9a-f-]{36})", page.url)
            assert launched is not None, page.url
            expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible(timeout=240_000)
            page.screenshot(path=ARTIFACTS / "ui-run-now-run.png")
            with dg.DagsterInstance.get() as instance:
                run = instance.get_run_by_id(launched.group(1))
                assert run is not None and run.job_name == f"{CONNECTION}_run_now" and run.status == dg.DagsterRunStatus.SUCCESS
                merged = [
                    record.event_log_entry.asset_materialization.partition
                    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
                    if record.event_log_entry.asset_materialization is not None
                    and record.event_log_entry.asset_materialization.asset_key == dg.AssetKey([CONNECTION, "profile_store"])
                ]
            assert merged == ["customers:profiles_20260116.csv"], merged
            with duckdb.connect(str(demo_ui["home"] / "store.duckdb"), read_only=True) as conn:
                assert conn.execute("SELECT email FROM profiles WHERE customer_number = 'C9999999'").fetchall() == [(late["email"],)]
        except BaseException:
            if page is not None:
                # The page may be gone; the original failure is the one to report.
                with contextlib.suppress(Exception):
                    page.screenshot(path=ARTIFACTS / "ui-failure.png")
            raise
        finally:
            browser.close()
