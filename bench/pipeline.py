"""End-to-end benchmark: the project against a fair hand-rolled baseline, interleaved, in one invocation.

The machine is shared and its load changes from minute to minute, so only ratios of runs made in
the same minutes count. One invocation therefore generates one input (N profiles, 1.5 N orders,
4 N order lines; seed 42; ``--encrypt``: gpg-encrypted with a throw-away key, gpg's default zlib
compression) and then runs ``--pairs`` rounds. Each round runs, in alternating order (A B … then
B A …) so a drifting load favours neither side, each in a fresh folder and its own process:

* **engine** — the stages of ``demo_local``'s main job through the engine functions the Dagster
  assets call (fetch, decrypt, tables, merge per delivery in goal order, then the export), plus what
  the assets do around them (finish, run-ledger row + published copy, store checks), each timed;
* **baseline** — ``bench/handrolled.py``: the same work as one plain script that does not import
  cdp_pipeline (copy from the drop, gpg, Polars parse/type/join, DuckDB ``MERGE`` with the same rules
  into an existing store, both exports);
* **dagster** — ``cdp-pipeline run demo_local`` (the whole job through Dagster, a fresh home);
  then the same command again with nothing new (unchanged re-run), then again after a re-delivery
  of the profiles file with 1 % of the profiles changed;
* **dlt** — ``bench/dlt_compare.py``: dlt loads the same profiles file into DuckDB, then merges
  the update batch (every profile again, 10 % changed);
* **after** (in the engine's home, once the stores were compared) — the export again between two
  DuckDB ``COPY``s of the same columns, and the merge of the update batch through the engine.

Before any ratio is printed, the engine's store and the Dagster run's store are compared with the
baseline's store (``bench/store_equality.py``: profiles, households, orders, order lines; DuckDB
SQL). A difference is printed and the bench exits 1 without ratios.

Memory: the RSS of each child's whole process tree (gpg and DuckDB threads included) is sampled
from /proc every 50 ms (``bench/rss.py``); the peak is reported per stage, with the 1-minute load
average when the stage started. The kernel's high-water mark is never reset.

    python bench/pipeline.py --profiles 100000 --pairs 3 --encrypt [--no-dagster] [--no-dlt]
                             [--json out.json] [--keep] [--tmp DIR] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # the sibling helpers: handrolled, rss, store_equality, dlt_compare

from rss import TreeSampler, run_sampled  # noqa: E402

REPO_ROOT = BENCH_DIR.parent
CONNECTION = "demo_local"
EXPORT_GOAL = "high_value_export"
DATE, UPDATE_DATE, REDELIVERY_DATE = "20260115", "20260116", "20260117"
SEED = 42
MB = 1_000_000
CORE_STAGES = ("fetch", "decrypt", "tables", "merge", "export")
KEY_ENV = "CDP_BENCH_PGP_KEY"


# ----------------------------------------------------------------------------- input


def _gpg(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", os.defpath), "GNUPGHOME": str(home), "LC_ALL": "C"}
    return subprocess.run(["gpg", "--batch", "--no-tty", "--quiet", *args], env=env, check=True, capture_output=True, **kwargs)


def make_throwaway_key(gnupg_home: Path) -> tuple[str, str]:
    """A passphrase-less key pair in a temporary GNUPGHOME; returns (fingerprint, armoured secret key)."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(gnupg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-generate-key", "cdp bench <bench@example.invalid>",
         "default", "default", "never")
    listing = _gpg(gnupg_home, "--with-colons", "--list-secret-keys", text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    secret = _gpg(gnupg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", fingerprint, text=True).stdout
    return fingerprint, secret


def encrypt_files(gnupg_home: Path, fingerprint: str, sources: list[Path], target_dir: Path, compress_algo: str) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        args = ["--yes", "--trust-model", "always", "--recipient", fingerprint]
        if compress_algo != "default":
            args += ["--compress-algo", compress_algo]
        _gpg(gnupg_home, *args, "--output", str(target_dir / source.name), "--encrypt", str(source))


def changed_copy(source: Path, target: Path, share: float) -> int:
    """The profiles file again with ``share`` of its rows changed (city and first name), the rest
    the same values; returns how many profiles end up with other values (a changed row counts only
    when it is its customer's last row in the file: repeated keys take the last row)."""
    import polars as pl

    frame = pl.read_csv(source, infer_schema=False)
    every = max(1, round(1 / share))
    changed = (pl.int_range(pl.len()) % every) == 0
    frame = frame.with_columns(
        pl.when(changed).then(pl.lit("Bench City")).otherwise(pl.col("city")).alias("city"),
        pl.when(changed).then(pl.col("first_name") + "-b").otherwise(pl.col("first_name")).alias("first_name"),
    )
    frame.write_csv(target, null_value="")
    frame = frame.with_row_index("_row")
    is_last = pl.col("_row") == pl.col("_row").max().over("customer_id")
    return int(frame.select((((pl.col("_row") % every) == 0) & is_last).sum()).item())


def _count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(16 << 20), b"")) - 1


def _link_all(sources: list[Path], target_dir: Path) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        os.link(source, target_dir / source.name)


def bench_config(code: Path, target: Path, encrypted: bool) -> Path:
    """The bundled demo configuration; with encrypted inputs the connection gets the throw-away
    key (from an environment variable), so the Dagster run decrypts like the other phases."""
    shutil.copytree(code / "cdp_pipeline" / "demo" / "config", target)
    if encrypted:
        connection_file = target / "connections" / f"{CONNECTION}.yaml"
        connection_file.write_text(connection_file.read_text() + f"pgp:\n  private_keys_env: [{KEY_ENV}]\n")
    return target


# ----------------------------------------------------------------------------- children


def _child_env(args: argparse.Namespace, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG_DIR", "DAGSTER_HOME", "CDP_HOME")}
    env.update({"CDP_HOME": str(home), "CDP_CONFIG_DIR": str(args.config_dir), "PYTHONPATH": os.pathsep.join([str(args.code), str(BENCH_DIR)]),
                "RUNTIME__DLTHUB_TELEMETRY": "false", **(extra or {})})
    if args.secret_key:
        env[KEY_ENV] = args.secret_key
    return env


def run_phase(phase: str, home: Path, args: argparse.Namespace, extra_args: list[str] | None = None) -> dict:
    """One phase of this script in a child process; its JSON result, or a failure with the log's end."""
    home.mkdir(parents=True, exist_ok=True)
    result_file = home / f"{phase}-result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--home", str(home), "--result", str(result_file), *(extra_args or [])]
    log = home / f"{phase}.log"
    with log.open("ab") as output:
        code, wall, peak = run_sampled(command, env=_child_env(args, home), cwd=str(home), stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise SystemExit(f"phase {phase} failed with exit code {code} (log {log}):\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(process_seconds=wall, tree_peak_mb=peak)
    return result


def run_cli(home: Path, args: argparse.Namespace, label: str) -> dict:
    """``cdp-pipeline run demo_local`` in ``home`` (the installed command of the code under test)."""
    command = [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "--config-dir", str(args.config_dir), "run", CONNECTION]
    log = home / f"cli-{label}.log"
    load = os.getloadavg()[0]
    env = _child_env(args, home, {"DAGSTER_HOME": str(home / "dagster_home")})
    with log.open("wb") as output:
        code, wall, peak = run_sampled(command, env=env, cwd=str(home), stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"cdp-pipeline run ({label}) failed with exit code {code}:\n{log.read_text(errors='replace')[-3000:]}")
    lines = [line for line in log.read_text().splitlines() if "imported" in line or "exported" in line]
    return {"seconds": wall, "tree_peak_mb": peak, "load": load, "summary": lines}


# ----------------------------------------------------------------------------- phase: engine (child)


class _Stages:
    """Times stages and labels the memory sampler with them."""

    def __init__(self, sampler: TreeSampler):
        self.sampler = sampler
        self.rows: list[dict] = []

    def run(self, stage: str, goal: str, function):
        label = f"{goal}/{stage}"
        self.sampler.set_label(label)
        started = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - started
        self.sampler.sample()
        self.rows.append({"goal": goal, "stage": stage, "seconds": seconds, "load": self.sampler.loadavg[label]})
        self.sampler.set_label("-")
        return value

    def finish(self) -> list[dict]:
        for row in self.rows:
            row["peak_mb"] = self.sampler.peaks.get(f"{row['goal']}/{row['stage']}", 0.0)
        return self.rows


def _engine_context():
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.crypto.keyring import PgpKeyring
    from cdp_pipeline.transports.local import LocalTransport

    project = load_project()
    connection = project.connections[CONNECTION]
    source_root = Path(connection.source.path)
    transport = LocalTransport(source_root if source_root.is_absolute() else project.home / source_root)
    secret = os.environ.get(KEY_ENV)
    keyring_factory = (lambda: PgpKeyring(private_keys=[secret])) if secret else None
    return project, connection, transport, keyring_factory


def _import_one(stages: _Stages, project, connection, transport, keyring_factory, goal, delivery, run_id: str, bookkeeping: bool) -> dict:
    from cdp_pipeline import importing
    from cdp_pipeline.store import checks

    work_dir = importing.delivery_work_dir(project, CONNECTION, delivery.partition_key)
    now = datetime.now(UTC).replace(tzinfo=None)
    stages.run("fetch", goal.name, lambda: importing.fetch_delivery(transport, delivery, work_dir))
    stages.run("decrypt", goal.name, lambda: importing.decrypt_delivery(work_dir, keyring_factory))
    stages.run("tables", goal.name, lambda: importing.stage_delivery(project, connection, goal, work_dir, now))
    outcome = stages.run("merge", goal.name, lambda: importing.merge_staged(project, connection, goal, work_dir, run_id, now))
    if outcome.status != "merged":
        raise SystemExit(f"{goal.name}: merge status {outcome.status}")
    if bookkeeping:  # what the profile_store asset and its checks do around the merge
        stages.run("finish", goal.name, lambda: importing.finish_delivery(transport, goal, work_dir))
        stages.run("publish", goal.name, lambda: importing.record_import(
            project, outcome, run_id=run_id, connection=CONNECTION, goal=goal.name, partition_key=delivery.partition_key, started_at=now))

        def run_checks() -> None:
            from cdp_pipeline.store.database import open_writer

            for check in (checks.unique_profile_ids, lambda c: checks.events_have_profiles(c, project.catalog), checks.ledger_matches_store,
                          lambda c: checks.rejects_within_bounds(c, CONNECTION)):
                with open_writer(project.store_path, project.catalog) as conn:  # one connection per check, as the asset checks do
                    verdict = check(conn)
                if not verdict.passed:
                    raise SystemExit(f"store check failed: {verdict.description}")

        stages.run("checks", goal.name, run_checks)
    return outcome.counts.as_metadata()


def _deliveries(project, connection, transport) -> list:
    from cdp_pipeline import importing

    found = importing.discover_deliveries(project, connection, transport)
    return [(item.source.listing_goal, item.scan.deliveries) for item in found.scans]


def phase_engine(home: Path, args: argparse.Namespace) -> dict:
    """The first import of the delivery and the full export, stage by stage."""
    with TreeSampler() as sampler:
        sampler.set_label("import")
        from cdp_pipeline import exporting
        from cdp_pipeline.connection_run import record_export

        sampler.set_label("-")
        project, connection, transport, keyring_factory = _engine_context()
        stages = _Stages(sampler)
        run_id = "bench" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "0" * 20
        counts = {}
        for goal, deliveries in _deliveries(project, connection, transport):
            if len(deliveries) != 1:
                raise SystemExit(f"{goal.name}: expected one ready delivery, got {len(deliveries)}")
            counts[goal.name] = _import_one(stages, project, connection, transport, keyring_factory, goal, deliveries[0], run_id, True)
        export_goal = connection.goal(EXPORT_GOAL)
        now = datetime.now(UTC).replace(tzinfo=None)
        outcome = stages.run("export", EXPORT_GOAL, lambda: exporting.run_export(project, connection, export_goal, transport, run_id, now, full=True))
        stages.run("publish", EXPORT_GOAL, lambda: record_export(project, outcome, run_id=run_id, connection=CONNECTION, goal=EXPORT_GOAL, started_at=now))
    return {"stages": stages.finish(), "counts": counts, "peak_mb": sampler.peak, "store": str(project.store_path),
            "export_rows": {"profiles": outcome.profiles_exported, **{Path(f.remote_path).name: f.rows for f in outcome.timeline_files}}}


def phase_after(home: Path, args: argparse.Namespace) -> dict:
    """In the engine's home after the comparison: export vs COPY, then the update batch's merge."""
    import duckdb
    import handrolled

    from cdp_pipeline import exporting

    project, connection, transport, keyring_factory = _engine_context()
    result: dict = {}
    with TreeSampler() as sampler:
        stages = _Stages(sampler)

        def copy(label: str) -> None:
            with duckdb.connect(str(project.store_path), read_only=True) as conn:
                stages.run(label, "copy", lambda: handrolled.export(conn, home / f"copy-{label}"))

        # COPY, export, COPY: the two COPYs bracket the export so a load change shows as their spread.
        copy("copy1")
        export_goal = connection.goal(EXPORT_GOAL)
        run_id = "benchafter" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "0" * 15
        now = datetime.now(UTC).replace(tzinfo=None)
        stages.run("export", EXPORT_GOAL, lambda: exporting.run_export(project, connection, export_goal, transport, run_id, now, full=True))
        copy("copy2")
        # The update batch (every profile again, some changed) through the customers goal.
        os.link(args.update_file, transport.root / "inbox" / Path(args.update_file).name)
        for goal, deliveries in _deliveries(project, connection, transport):
            for delivery in deliveries:
                if delivery.root.name == Path(args.update_file).name:
                    result["update_counts"] = _import_one(stages, project, connection, transport, keyring_factory, goal, delivery, run_id, False)
    result["stages"] = stages.finish()
    return result


def phase_baseline(home: Path, args: argparse.Namespace) -> dict:
    import handrolled

    with TreeSampler() as sampler:
        handrolled.create_store(home / "store.duckdb")  # the existing store: set-up, not timed
        gnupg_home = Path(args.gnupg_home) if args.gnupg_home else None
        result = handrolled.run(Path(args.drop), home, DATE, gnupg_home, on_stage=sampler.set_label)
    result["peaks_mb"] = dict(sampler.peaks)
    result["loads"] = dict(sampler.loadavg)
    result["peak_mb"] = sampler.peak
    result["store"] = str(home / "store.duckdb")
    return result


def phase_dlt(home: Path, args: argparse.Namespace) -> dict:
    import dlt_compare

    with TreeSampler() as sampler:
        result = dlt_compare.run(Path(args.first_file), Path(args.update_file), home, on_stage=sampler.set_label)
    result["peaks_mb"] = dict(sampler.peaks)
    result["loads"] = dict(sampler.loadavg)
    return result


# ----------------------------------------------------------------------------- one round


def _by_stage(rows: list[dict], stages=CORE_STAGES, goals: tuple[str, ...] | None = None) -> float:
    return sum(r["seconds"] for r in rows if r["stage"] in stages and (goals is None or r["goal"] in goals))


def check_equal(project_store: str, baseline_store: str, what: str) -> dict:
    from store_equality import compare_stores

    verdict = compare_stores(Path(project_store), Path(baseline_store))
    if not verdict["equal"]:
        print(f"\nSTORES DIFFER ({what} vs baseline), no ratio is reported:")
        print(json.dumps(verdict["tables"], indent=1, default=str))
        raise SystemExit(1)
    rows = ", ".join(f"{t} {v['rows_project']:,}" for t, v in verdict["tables"].items())
    print(f"  store check: {what} store equals the baseline's ({rows})")
    return verdict


def one_round(index: int, root: Path, args: argparse.Namespace, files: dict) -> dict:
    homes = {name: root / f"round{index}" / name for name in ("engine", "baseline", "dagster", "dlt")}
    for name in ("engine",) if args.no_dagster else ("engine", "dagster"):
        (homes[name] / "demo" / "outbox").mkdir(parents=True)
        _link_all(files["drop"], homes[name] / "demo" / "inbox")
    order = ["engine", "baseline", "dagster", "dlt"] if index % 2 == 0 else ["baseline", "engine", "dlt", "dagster"]
    result: dict = {"order": order}
    for name in order:
        if name == "engine":
            result["engine"] = run_phase("engine", homes["engine"], args)
        elif name == "baseline":
            extra = ["--drop", str(files["drop"][0].parent)] + (["--gnupg-home", str(args.gnupg_home)] if args.gnupg_home else [])
            result["baseline"] = run_phase("baseline", homes["baseline"], args, extra)
        elif name == "dagster" and not args.no_dagster:
            result["dagster"] = {"first": run_cli(homes["dagster"], args, "first")}
        elif name == "dlt" and not args.no_dlt:
            result["dlt"] = run_phase("dlt", homes["dlt"], args, ["--first-file", str(files["profiles_plain"]), "--update-file", str(files["update"])])
    result["equal"] = {"engine": check_equal(result["engine"]["store"], result["baseline"]["store"], "engine")["equal"]}
    if "dagster" in result:
        result["equal"]["dagster"] = check_equal(str(homes["dagster"] / "store.duckdb"), result["baseline"]["store"], "cdp-pipeline run")["equal"]
        result["dagster"]["rerun"] = run_cli(homes["dagster"], args, "rerun")
        os.link(files["redelivery"], homes["dagster"] / "demo" / "inbox" / files["redelivery"].name)
        result["dagster"]["redelivery"] = run_cli(homes["dagster"], args, "redelivery")
    result["after"] = run_phase("after", homes["engine"], args, ["--update-file", str(files["update"])])
    if not args.keep:
        shutil.rmtree(root / f"round{index}", ignore_errors=True)
    return result


def ratios(r: dict) -> dict[str, float]:
    engine, baseline = r["engine"]["stages"], r["baseline"]
    out = {"engine core ÷ baseline": _by_stage(engine) / baseline["total_seconds"]}
    if "dagster" in r:
        first = r["dagster"]["first"]["seconds"]
        out["cdp-pipeline run ÷ baseline"] = first / baseline["total_seconds"]
        out["unchanged re-run ÷ first run"] = r["dagster"]["rerun"]["seconds"] / first
        out["1 %-changed re-delivery ÷ first run"] = r["dagster"]["redelivery"]["seconds"] / first
    after = {row["stage"] if row["goal"] != "customers" else "update/" + row["stage"]: row["seconds"] for row in r["after"]["stages"]}
    out["segment export ÷ DuckDB COPY"] = after["export"] / statistics.mean([after["copy1"], after["copy2"]])
    if "dlt" in r:
        # dlt reads the plain file: the project's first load is compared without its gpg stage.
        first_load = _by_stage(engine, ("fetch", "tables", "merge"), ("customers",))
        out["first load ÷ dlt"] = first_load / r["dlt"]["first_load_seconds"]
        update = sum(after[f"update/{s}"] for s in ("fetch", "decrypt", "tables", "merge"))
        out["update-batch merge ÷ dlt merge"] = update / r["dlt"]["merge_seconds"]
    return out


# ----------------------------------------------------------------------------- report


def print_round(index: int, r: dict) -> None:
    engine = r["engine"]
    print(f"\nround {index + 1} (order {' '.join(r['order'])}):")
    totals: dict[str, float] = {}
    for row in engine["stages"]:
        totals[row["stage"]] = totals.get(row["stage"], 0.0) + row["seconds"]
    peaks: dict[str, float] = {}
    for row in engine["stages"]:
        peaks[row["stage"]] = max(peaks.get(row["stage"], 0.0), row["peak_mb"])
    print("  engine     " + "  ".join(f"{s} {totals[s]:.2f}s/{peaks[s]:,.0f}MB" for s in totals)
          + f"  | core {_by_stage(engine['stages']):.2f}s, tree peak {engine['peak_mb']:,.0f} MB, load {engine['stages'][0]['load']:.1f}")
    b = r["baseline"]
    print("  baseline   " + "  ".join(f"{s} {v:.2f}s/{b['peaks_mb'].get(s, 0):,.0f}MB" for s, v in b["stages"].items())
          + f"  | total {b['total_seconds']:.2f}s, tree peak {b['peak_mb']:,.0f} MB, load {b['loads'].get('fetch', 0):.1f}")
    if "dagster" in r:
        d = r["dagster"]
        print("  cdp-pipeline run  " + "  ".join(f"{k} {v['seconds']:.2f}s/{v['tree_peak_mb']:,.0f}MB (load {v['load']:.1f})" for k, v in d.items()))
    if "dlt" in r:
        dl = r["dlt"]
        print(f"  dlt        first load {dl['first_load_seconds']:.2f}s  merge {dl['merge_seconds']:.2f}s  peaks "
              + ", ".join(f"{k} {v:,.0f}MB" for k, v in dl["peaks_mb"].items() if k != "-"))
    print("  after      " + "  ".join(f"{row['goal']}/{row['stage']} {row['seconds']:.2f}s" for row in r["after"]["stages"]))
    print("  ratios     " + "  ".join(f"{k} {v:.2f}" for k, v in ratios(r).items()))


def summary(rounds: list[dict]) -> dict[str, dict]:
    all_ratios = [ratios(r) for r in rounds]
    table = {}
    for key in all_ratios[0]:
        values = [x[key] for x in all_ratios]
        table[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    return table


def machine() -> dict:
    import duckdb
    import polars

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    versions = {"python": sys.version.split()[0], "polars": polars.__version__, "duckdb": duckdb.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("dagster", "dlt"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return {"nproc": os.cpu_count(), "mem_gib": round(mem / 1024 / 1024, 1), "cpu": cpu, "versions": versions}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000, help="distinct profiles N (orders 1.5 N, lines 4 N); default 1,000,000")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds (engine, baseline, Dagster, dlt); default 3")
    parser.add_argument("--encrypt", action="store_true", help="gpg-encrypt the inputs (throw-away key) so decrypt does real work")
    parser.add_argument("--compress-algo", default="default", help="with --encrypt: gpg compression (default: gpg's zlib; 'none')")
    parser.add_argument("--no-dagster", action="store_true", help="skip cdp-pipeline run (and the re-run scenarios)")
    parser.add_argument("--no-dlt", action="store_true", help="skip the dlt peer")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the checkout whose cdp_pipeline is measured (default: this one)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--tmp", type=Path, help="parent of the temporary folder (default: the system's)")
    # internal: one phase in a child process
    parser.add_argument("--phase", choices=("engine", "after", "baseline", "dlt"), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--drop", help=argparse.SUPPRESS)
    parser.add_argument("--gnupg-home", help=argparse.SUPPRESS)
    parser.add_argument("--first-file", help=argparse.SUPPRESS)
    parser.add_argument("--update-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        phase = {"engine": phase_engine, "after": phase_after, "baseline": phase_baseline, "dlt": phase_dlt}[args.phase]
        args.result.write_text(json.dumps(phase(args.home, args), default=str))
        return 0

    args.code = args.code.resolve()
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-", dir=args.tmp))
    command = "python " + " ".join([os.path.relpath(__file__, REPO_ROOT), *(argv if argv is not None else sys.argv[1:])])
    report: dict = {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"), "profiles": args.profiles, "pairs": args.pairs,
                    "encrypt": args.encrypt, "machine": machine(), "loadavg_start": os.getloadavg()}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.code, capture_output=True, text=True, check=False).stdout.strip()
    report["code"] = f"{args.code} at {git or '?'}"
    print(f"{command}\nroot {root}; code {report['code']}; load average {report['loadavg_start'][0]:.1f}")
    exit_code = 0
    try:
        sys.path.insert(0, str(args.code))
        from cdp_pipeline.demo.generate import generate_delivery

        generated = root / "generated"
        paths = generate_delivery(generated, profiles=args.profiles, seed=SEED, date=DATE)
        report["files"] = {name: {"rows": _count_rows(p), "bytes": p.stat().st_size} for name, p in paths.items()}
        extra = root / "extra"
        extra.mkdir()
        update, redelivery = extra / f"profiles_{UPDATE_DATE}.csv", extra / f"profiles_{REDELIVERY_DATE}.csv"
        report["update_changed"] = changed_copy(paths["profiles"], update, 0.10)
        report["redelivery_changed"] = changed_copy(paths["profiles"], redelivery, 0.01)
        print("generated " + ", ".join(f"{n} {v['rows']:,} rows / {v['bytes'] / MB:.0f} MB" for n, v in report["files"].items())
              + f"; update batch {report['update_changed']:,} changed, re-delivery {report['redelivery_changed']:,} changed")
        args.secret_key = None
        args.gnupg_home = None
        drop = list(paths.values())
        if args.encrypt:
            # Short and outside --tmp: gpg-agent's socket path must stay under the 108-byte limit.
            args.gnupg_home = Path(tempfile.mkdtemp(prefix="cdpb-gpg-"))
            fingerprint, args.secret_key = make_throwaway_key(args.gnupg_home)
            encrypt_files(args.gnupg_home, fingerprint, drop, root / "encrypted", args.compress_algo)
            drop = [root / "encrypted" / p.name for p in drop]
            print("encrypted: " + ", ".join(f"{p.name} {p.stat().st_size / MB:.0f} MB" for p in drop))
        args.config_dir = bench_config(args.code, root / "config", args.encrypt)
        files = {"drop": drop, "profiles_plain": paths["profiles"], "update": update, "redelivery": redelivery}
        rounds = []
        for index in range(args.pairs):
            rounds.append(one_round(index, root, args, files))
            print_round(index, rounds[-1])
            report["rounds"] = rounds
        report["summary"] = summary(rounds)
        report["loadavg_end"] = os.getloadavg()
        load = f"{report['loadavg_start'][0]:.1f} → {report['loadavg_end'][0]:.1f}"
        print(f"\nmedian ratios over {len(rounds)} interleaved rounds (min–max), load average {load}:")
        for key, value in report["summary"].items():
            print(f"  {key:<38} {value['median']:6.2f}  ({value['min']:.2f}–{value['max']:.2f})")
        peaks = [r["engine"]["peak_mb"] for r in rounds]
        print(f"  engine peak RSS (process tree)         {statistics.median(peaks):,.0f} MB (max {max(peaks):,.0f} MB); "
              f"baseline {statistics.median(r['baseline']['peak_mb'] for r in rounds):,.0f} MB")
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else 1
        if not isinstance(stop.code, int) and stop.code:
            print(stop.code)
    finally:
        if getattr(args, "gnupg_home", None):  # key generation started an agent for the throw-away home
            subprocess.run(["gpgconf", "--homedir", str(args.gnupg_home), "--kill", "gpg-agent"], check=False, capture_output=True)
            shutil.rmtree(args.gnupg_home, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
            print(f"JSON: {args.json}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
