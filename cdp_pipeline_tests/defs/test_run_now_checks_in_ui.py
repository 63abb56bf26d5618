"""What the UI shows after `cdp-pipeline run`: the store checks the Run now evaluated itself, on
profile_store's asset checks, as the latest materialisation's checks, and no second run for them.
Read over the webserver's GraphQL API, the one the UI's pages query."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cdp_pipeline.demo.generate import generate_delivery

REPO = Path(__file__).resolve().parents[2]
CHECKS = {"unique_profile_ids", "events_have_profiles", "ledger_matches_store", "rejects_within_bounds"}
QUERY = """
{
  assetNodeOrError(assetKey: {path: ["demo_local", "profile_store"]}) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { runId status } } } } }
  }
  runsOrError { ... on Runs { results { runId jobName status } } }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def test_the_ui_shows_the_checks_a_run_now_evaluated_on_the_latest_materialisation(tmp_path):
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    inbox = home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    (home / "demo" / "outbox").mkdir()
    dagster_home.mkdir()
    generate_delivery(inbox, profiles=20, seed=3, date="20260115")
    env = {k: v for k, v in os.environ.items() if k != "CDP_CONFIG_DIR"}
    env.update({"CDP_HOME": str(home), "DAGSTER_HOME": str(dagster_home)})
    run = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", "demo_local"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("imported ") == 3

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        payload: dict = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                payload = _graphql(port)
                if (payload.get("data") or {}).get("assetNodeOrError", {}).get("assetChecksOrError"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert payload.get("data"), f"the webserver did not answer: {payload}"
        runs = payload["data"]["runsOrError"]["results"]
        # One run: the Run now itself; the checks had no run of their own.
        assert [(r["jobName"], r["status"]) for r in runs] == [("demo_local_run_now", "SUCCESS")]
        checks = payload["data"]["assetNodeOrError"]["assetChecksOrError"]["checks"]
        shown = {c["name"]: c["executionForLatestMaterialization"] for c in checks}
        assert set(shown) == CHECKS
        assert all(execution == {"runId": runs[0]["runId"], "status": "SUCCEEDED"} for execution in shown.values()), shown
    finally:
        server.terminate()
        server.wait(timeout=30)
