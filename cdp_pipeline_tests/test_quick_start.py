"""The README's Quick start, run the way a new user runs it: a fresh clone, its first command.

The command creates the clone's own ``.venv`` and pip-installs the project into it (pip's cache
and the machine's configured package index make this as fast as the machine allows; it is the
slowest test of the suite, minutes on a loaded machine). The store it leaves is checked with
plain DuckDB SQL against the generated delivery's file, not through the project's code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    """The command lines of the README's Quick start block, as a person copies them."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the Quick start has no ```bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def _fresh_clone(destination: Path) -> Path:
    """A clone of the commit under test (HEAD): what CI checks out, without this checkout's
    .venv, .cdp_home or uncommitted files."""
    assert shutil.which("git"), "git is needed to clone the checkout"
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(destination)], check=True, timeout=300)
    subprocess.run(["git", "-C", str(destination), "checkout", "--quiet", head], check=True, timeout=300)
    return destination


def _user_environment() -> dict[str, str]:
    """The environment of a person's shell: none of this test run's project settings, and no
    virtual environment active (the command must make its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_HOME", "DAGSTER_HOME", "CDP_CONFIG_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv))
    return env


@pytest.mark.timeout(1800)
def test_the_readme_quick_start_works_in_a_fresh_clone(tmp_path):
    commands = _quick_start_commands()
    assert commands[0] == "bash scripts/demo.sh", commands
    clone = _fresh_clone(tmp_path / "cdp_pipeline")
    assert not (clone / ".venv").exists() and not (clone / ".cdp_home").exists()

    started = time.monotonic()
    result = subprocess.run(["bash", "-c", commands[0]], cwd=clone, env=_user_environment(), capture_output=True, text=True, timeout=1700)
    seconds = time.monotonic() - started

    assert result.returncode == 0, f"exit {result.returncode} after {seconds:.0f} s\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr
    # Its own environment, with the project and without the test tooling.
    venv_python = clone / ".venv" / "bin" / "python"
    assert (clone / ".venv" / "bin" / "cdp-pipeline").exists()
    assert subprocess.run([str(venv_python), "-c", "import pytest"], capture_output=True).returncode != 0

    # The store holds one profile per distinct customer id of the generated profiles file.
    inbox = clone / ".cdp_home" / "demo" / "inbox"
    (profiles_file,) = inbox.glob("profiles_*.csv")
    with duckdb.connect() as conn:
        [(expected,)] = conn.execute(
            "SELECT count(DISTINCT trim(customer_id)) FROM read_csv(?, all_varchar = true, header = true) WHERE trim(customer_id) <> ''",
            [str(profiles_file)],
        ).fetchall()
    # Counted with the DuckDB of the Quick start's own environment: without the test extras it may
    # be a newer release than this test run's, whose store files an older DuckDB cannot open.
    counted = subprocess.run(
        [str(venv_python), "-c",
         "import duckdb, sys\n"
         "with duckdb.connect(sys.argv[1], read_only=True) as store:\n"
         "    print(*[store.execute(f'SELECT count(*) FROM {table}').fetchall()[0][0] for table in ('profiles', 'timeline_order')])",
         str(clone / ".cdp_home" / "store.duckdb")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    profiles, orders = (int(number) for number in counted.stdout.split())
    assert expected > 0 and profiles == expected
    assert orders > 0
    print(f"Quick start in a fresh clone: {seconds:.0f} s")
