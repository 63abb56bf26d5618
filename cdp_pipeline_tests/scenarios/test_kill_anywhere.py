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

#: small enough that the nine cases and the clean run fit CI; big enough that the segment export and
#: both timeline files have rows (a kill cannot hide behind an empty export).
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
    case = kill_suite.run_case(setup, root, point, clean_home, gpg_cli)

    # -9: the hook fired (a run that finished or failed on its own proves nothing here).
    assert case.killed.returncode == -9, f"the run was not killed at {point}:\n{case.killed.output[-4000:]}"
    if point == "decrypt":
        assert case.killed_homes, "the run died while decrypting, so its GnuPG home was still there before the rerun"
    assert case.rerun.returncode == 0, case.rerun.output[-4000:]
    assert case.claims == (set(), set())
    assert case.differences == {}
    assert case.exports.keys() == clean_exports.keys()
    assert case.exports == clean_exports
    assert case.leftovers == []
