"""The kill -9 suite at production size (a script, not a test).

The same cases as ``cdp_pipeline_tests/scenarios/test_kill_anywhere.py`` (a real ``cdp-pipeline
run`` of an encrypted delivery killed with SIGKILL at each point, then run again and held against a
run that was never killed), at N profiles (default 1,000,000: 1.5 N orders, 4 N order lines). Needs
the gpg binary; makes throw-away keys in a temporary GnuPG home.

    python bench/kill_anywhere.py [--profiles 1000000] [--points fetch,merge_late,...] [--json out.json] [--keep]

Prints, per point, the seconds until the kill and of the rerun, and every check that failed; exits
1 when any check failed. At 1M profiles a point takes a few minutes (a killed run, a full rerun, the
comparison); the delivery is generated and encrypted once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE, GpgCli, GpgKey  # noqa: E402
from cdp_pipeline_tests.scenarios import kill_suite  # noqa: E402


@dataclass(frozen=True)
class _Keys:
    recipient: GpgKey
    partner: GpgKey


def _keys(gpg: GpgCli) -> _Keys:
    recipient = gpg.describe("recipient", gpg.generate("recipient", passphrase=PASSPHRASE), PASSPHRASE)
    partner = gpg.describe("partner", gpg.generate("partner", passphrase=None), None)
    return _Keys(recipient=recipient, partner=partner)


def _problems(case: kill_suite.KillCase, clean_exports: dict[str, bytes]) -> list[str]:
    problems = []
    if case.killed.returncode != -9:
        problems.append(f"not killed (exit {case.killed.returncode})")
    if case.rerun.returncode != 0:
        problems.append(f"rerun failed (exit {case.rerun.returncode}): {case.rerun.output[-600:]}")
    if case.claims != (set(), set()):
        problems.append(f"pool claims left: {case.claims}")
    problems += [f"table {table}: {what}" for table, what in case.differences.items()]
    if case.rerun.returncode == 0 and case.exports != clean_exports:
        problems.append(f"exports differ: {sorted(case.exports)} vs {sorted(clean_exports)}")
    problems += [f"left behind: {item}" for item in case.leftovers]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--points", default=",".join(kill_suite.KILL_POINTS), help="comma-separated kill points")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    points = [p for p in args.points.split(",") if p]
    unknown = [p for p in points if p not in kill_suite.KILL_POINTS]
    if unknown:
        parser.error(f"unknown points {unknown}; known: {', '.join(kill_suite.KILL_POINTS)}")

    root = Path(tempfile.mkdtemp(prefix="kill-bench-"))
    gpg_home = Path(tempfile.mkdtemp(prefix="kbg-", dir="/tmp"))  # short: gpg-agent socket paths
    gpg = GpgCli(gpg_home)
    (gpg_home / "gpg-agent.conf").write_text("s2k-count 65536\n")
    figures: dict[str, dict] = {}
    failed = False
    try:
        started = time.monotonic()
        setup = kill_suite.write_setup(root / "setup", profiles=args.profiles, gpg_cli=gpg, keys=_keys(gpg))
        print(f"delivery of {args.profiles:,} profiles generated and encrypted in {time.monotonic() - started:.0f} s", flush=True)
        clean_home = kill_suite.new_home(setup, root / "clean")
        clean = kill_suite.cli_run(setup, clean_home, timeout=6 * 3600)
        if clean.returncode != 0:
            print(f"the clean run failed:\n{clean.output[-4000:]}")
            return 1
        clean_exports = kill_suite.decrypted_exports(clean_home, gpg, root / "clean_exports")
        print(f"clean run {clean.seconds:.0f} s", flush=True)
        figures["clean"] = {"seconds": round(clean.seconds, 1)}
        for point in points:
            case = kill_suite.run_case(setup, root, point, clean_home, gpg, rerun_timeout=6 * 3600)
            problems = _problems(case, clean_exports)
            failed |= bool(problems)
            figures[point] = {"killed_after_seconds": round(case.killed.seconds, 1), "rerun_seconds": round(case.rerun.seconds, 1), "problems": problems}
            verdict = "; ".join(problems) or "OK"
            print(f"{point:13} killed after {case.killed.seconds:7.0f} s, rerun {case.rerun.seconds:7.0f} s: {verdict}", flush=True)
            shutil.rmtree(root / point, ignore_errors=True)  # a 1M home is gigabytes
            shutil.rmtree(root / f"{point}_exports", ignore_errors=True)
    finally:
        gpg.stop_agent()
        shutil.rmtree(gpg_home, ignore_errors=True)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"profiles": args.profiles, "points": figures}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
