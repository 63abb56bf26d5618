"""Owner marks on private folders (removed once their process is gone) and the test-only kill hook."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cdp_pipeline import fault_injection
from cdp_pipeline.orphans import OWNER_FILE, mark_owner, owner_gone, remove_orphans

MARK_AND_EXIT = "import sys; from pathlib import Path; from cdp_pipeline.orphans import mark_owner; mark_owner(Path(sys.argv[1]))"


def test_folders_of_ended_processes_are_removed_and_the_others_kept(tmp_path):
    live, dead, reused, unmarked, other = (tmp_path / name for name in ("x-live", "x-dead", "x-reused", "x-unmarked", "y-dead"))
    for folder in (live, dead, reused, unmarked, other):
        folder.mkdir()
        (folder / "plaintext.csv").write_text("customer data\n")
    mark_owner(live)
    for folder in (dead, other):
        subprocess.run([sys.executable, "-c", MARK_AND_EXIT, str(folder)], check=True, env={**os.environ})
    # this process's id with another start time: the id was reused, the owner is gone
    (reused / OWNER_FILE).write_text(f"{os.getpid()} 1\n")

    assert not owner_gone(live) and owner_gone(dead) and owner_gone(reused) and not owner_gone(unmarked)
    removed = remove_orphans(tmp_path, "x-")
    assert sorted(path.name for path in removed) == ["x-dead", "x-reused"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x-live", "x-unmarked", "y-dead"]


def _point(value: str | None, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop(fault_injection.FAULT_ENV, None)
    if value is not None:
        env[fault_injection.FAULT_ENV] = value
    code = f"from cdp_pipeline.fault_injection import fault_point; fault_point({point!r}); fault_point({point!r}); print('alive')"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), ("decrypt", 0), ("fetch", -9), ("fetch#2", -9), ("fetch#3", 0)],
)
def test_the_kill_hook_fires_only_where_and_when_it_is_told(value, expected):
    result = _point(value, "fetch")
    assert result.returncode == expected, result.stderr
    assert ("alive" in result.stdout) == (expected == 0)


def test_an_unknown_kill_point_is_refused_naming_the_known_ones():
    result = _point("merge", "fetch")
    assert result.returncode == 1
    assert "CDP_PIPELINE_FAULT_AT='merge': not a fault point; use one of fetch, decrypt, tables, merge_early" in result.stderr
