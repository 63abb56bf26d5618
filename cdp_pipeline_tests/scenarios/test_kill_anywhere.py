"""Kill -9 at any point of a run, then run again: the store equals a run that was never killed,
table by table; the export's content is byte for byte the same; nothing waits for a dead run's
pool claim; and no plaintext, GnuPG home, temporary store copy or export file is left behind.

Each case is a real ``cdp-pipeline run`` of an encrypted delivery (profiles, orders, order lines)
from a drop folder to an encrypted export in a folder, killed at one named point through the
test-only hook ``CDP_PIPELINE_FAULT_AT``. ``bench/kill_anywhere.py`` runs the same at 1M rows.
"""

from __future__ import annotations

import pytest

from cdp_pipeline_tests.scenarios import kill_suite

#: small enough that the nine cases and the clean run fit CI; big enough for several DuckDB row groups.
PROFILES = 400


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, gpg_cli, pgp_keys):
    root = tmp_path_factory.mktemp("kill")
    setup = kill_suite.write_setup(root / "setup", profiles=PROFILES, gpg_cli=gpg_cli, keys=pgp_keys)
    home = kill_suite.new_home(setup, root / "clean")
    result = kill_suite.cli_run(setup, home)
    assert result.returncode == 0, result.output[-4000:]
    exports = kill_suite.decrypted_exports(home, gpg_cli, root / "clean_exports")
    assert any(name.startswith("segments/high_value_") for name in exports), sorted(exports)
    assert any(name.startswith("timeline/") for name in exports), sorted(exports)
    return root, setup, home, exports


@pytest.mark.parametrize("point", list(kill_suite.KILL_POINTS))
def test_a_run_killed_at_any_point_reruns_to_the_clean_result(clean_run, point, gpg_cli):
    root, setup, clean_home, clean_exports = clean_run
    home = kill_suite.new_home(setup, root / point)

    killed = kill_suite.cli_run(setup, home, fault_at=kill_suite.KILL_POINTS[point])
    # -9: the hook fired (a run that finished or failed on its own proves nothing here).
    assert killed.returncode == -9, f"the run was not killed at {point}:\n{killed.output[-4000:]}"
    killed_homes = kill_suite.gnupg_homes_of(killed.pid)
    if point == "decrypt":
        assert killed_homes, "the run died while decrypting, so its GnuPG home must still be there before the rerun"

    rerun = kill_suite.cli_run(setup, home, timeout=400)
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert kill_suite.pool_claims(home / "dagster_home") == (set(), set())

    assert kill_suite.table_differences(clean_home / "store.duckdb", home / "store.duckdb") == {}
    exports = kill_suite.decrypted_exports(home, gpg_cli, root / f"{point}_exports")
    assert exports.keys() == clean_exports.keys()
    assert exports == clean_exports
    assert kill_suite.leftovers(home, killed_homes) == []
