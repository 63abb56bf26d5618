"""End-to-end benchmark of the main job on the demo connection (a script, not a test).

In a temporary CDP_HOME with the bundled demo configuration it

1. generates N profiles (default 1,000,000) with 1.5 N orders and 4 N order lines
   (``generate_delivery``, seed 42, date 20260115) — not timed as part of the pipeline;
2. optionally (``--encrypt``) gpg-encrypts the four files to a throw-away key made in a temporary
   GNUPGHOME, so the decrypt stage does real work (zlib compression by default, as gpg does and as
   the speed anchors' baseline did; ``--compress-algo none`` for uncompressed messages);
3. **engine** — runs the stages of ``demo_local``'s main job with the engine functions directly, for
   each delivery in goal order (households, customers, orders), timing each:
   fetch (LocalTransport download + sha256), decrypt (pass-through, or PgpKeyring with the throw-away
   key), tables (``stage_delivery``: Polars read / process / link / join + Parquet hand-over), merge
   (``merge_staged``: one DuckDB transaction + segment refresh), then what the assets do around them:
   finish (remote-file action + plaintext clean-up), publish (run-ledger row + the analysts' published
   copy of the store) and checks (the store's asset checks); then export (``run_export`` of
   high_value_export, ``full=True``) and its publish. Every DuckDB statement and the main Polars helpers
   of ``import_tables`` are timed as well (wrapped in this process only; no project file is changed),
   so a slow stage can be pinned to one statement / expression; ``--trace-lines`` adds per-line times
   of ``cdp_pipeline/tables/import_tables.py`` for the tables stage;
4. **dagster** — the whole main job through Dagster (``cdp_pipeline.cli.run_connection``: one
   in-process import run per delivery, then the export run with ``full_export=True``) in a fresh home
   on the same plain files (the demo connection has no PGP key), to show the orchestration overhead,
   with Dagster's own per-step durations;
5. **baseline** — a hand-rolled script in the spirit of the speed anchors' baseline (copy + sha256,
   gpg CLI, Polars read + join, one DuckDB transaction that inserts the profiles, applies the order
   aggregates set-based and inserts the events and lines, COPY for the segment), on the same files and
   the same machine, so the ratio does not depend on how busy the shared machine was that day.

Each phase runs in its own child process, so its peak RSS is its own and not the generator's. The
engine phase resets the kernel's high-water mark before each stage (``/proc/self/clear_refs``) to
report a peak per stage; since that also resets what ``ru_maxrss`` reports, its process peak is the
larger of ``ru_maxrss`` and the per-stage peaks. ``ru_maxrss`` of children counts a forked child's
inherited pages (Linux keeps the pre-exec high-water mark), so the "children" figure is an upper bound.

The checkout is shared and moves during a long run: ``--rev HEAD`` benchmarks a ``git archive`` snapshot
of a commit instead of the working tree.

    python bench/pipeline.py --profiles 1000000 [--encrypt] [--rev HEAD] [--no-dagster] [--no-baseline]
                             [--trace-lines] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTION = "demo_local"
EXPORT_GOAL = "high_value_export"
DATE = "20260115"
SEED = 42
MB = 1_000_000
CORE_STAGES = ("fetch", "decrypt", "tables", "merge", "export")


# ----------------------------------------------------------------------------- measuring helpers


def _kb_to_mb(kb: int) -> float:
    return kb * 1024 / MB  # ru_maxrss is in KiB on Linux


def peak_rss() -> dict[str, float]:
    """Peak RSS in MB of this process and of its waited-for children (gpg, ...)."""
    return {
        "self_mb": _kb_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "children_mb": _kb_to_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }


def _reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) so each stage's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


class Tracer:
    """Times wrapped calls (DuckDB statements, Polars helpers) and attributes them to the current stage."""

    def __init__(self) -> None:
        self.stage = "-"
        self.calls: list[dict] = []

    def record(self, kind: str, what: str, seconds: float) -> None:
        self.calls.append({"stage": self.stage, "kind": kind, "what": what, "seconds": seconds})

    def wrap(self, kind: str, name: str, function):
        tracer = self

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                tracer.record(kind, name, time.perf_counter() - started)

        timed.__wrapped__ = function
        return timed


class LineTimer:
    """Inclusive wall time per source line of the given files (a tiny line profiler on sys.settrace):
    pins a slow eager Polars call to its line without editing the module. Costs a little overhead."""

    def __init__(self, files: list[str]):
        self.files = {str(Path(f).resolve()) for f in files}
        self.totals: dict[tuple[str, int], float] = {}
        self.hits: dict[tuple[str, int], int] = {}
        self._last: dict[int, tuple[int, float]] = {}

    def _add(self, frame, now: float) -> None:
        previous = self._last.get(id(frame))
        if previous is not None:
            key = (frame.f_code.co_filename, previous[0])
            self.totals[key] = self.totals.get(key, 0.0) + now - previous[1]
            self.hits[key] = self.hits.get(key, 0) + 1

    def _local(self, frame, event, arg):
        now = time.perf_counter()
        if event == "line":
            self._add(frame, now)
            self._last[id(frame)] = (frame.f_lineno, now)
        elif event == "return":
            self._add(frame, now)
            self._last.pop(id(frame), None)
        return self._local

    def _global(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename in self.files:
            self._last[id(frame)] = (frame.f_lineno, time.perf_counter())
            return self._local
        return None

    def __enter__(self):
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)

    def top(self, limit: int = 25) -> list[dict]:
        sources: dict[str, list[str]] = {}
        rows = []
        for (filename, line), seconds in sorted(self.totals.items(), key=lambda kv: -kv[1])[:limit]:
            text = sources.setdefault(filename, Path(filename).read_text().splitlines())
            shown = filename[filename.rfind("cdp_pipeline/"):] if "cdp_pipeline/" in filename else filename
            rows.append({"file": shown, "line": line, "seconds": seconds,
                         "hits": self.hits[(filename, line)], "source": text[line - 1].strip()[:140]})
        return rows


def _condense_sql(sql: str, width: int = 150) -> str:
    return " ".join(sql.split())[:width]


class _TimedConnection:
    """A DuckDB connection whose ``execute`` calls are timed; everything else is passed through."""

    def __init__(self, conn, tracer: Tracer):
        self._conn = conn
        self._tracer = tracer

    def execute(self, sql, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._conn.execute(sql, *args, **kwargs)
        finally:
            self._tracer.record("sql", _condense_sql(str(sql)), time.perf_counter() - started)

    def close(self):
        started = time.perf_counter()
        try:
            return self._conn.close()
        finally:
            self._tracer.record("sql", "(close: checkpoint)", time.perf_counter() - started)

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._conn.__exit__(*exc)


def install_tracing(tracer: Tracer) -> None:
    """Wrap (in this process only) the store's connection factory and the main Polars helpers of
    ``import_tables`` so their time is recorded per stage. No project file is changed."""
    from cdp_pipeline.store import database
    from cdp_pipeline.tables import import_tables, staged

    connect = database._connect

    def traced_connect(*args, **kwargs):
        return _TimedConnection(connect(*args, **kwargs), tracer)

    database._connect = traced_connect
    for name in ("read_delimited", "parse_typed", "apply_processors", "_aggregate", "_reject_rows"):
        setattr(import_tables, name, tracer.wrap("polars", name, getattr(import_tables, name)))
    staged.StagedImport.save = tracer.wrap("parquet", "StagedImport.save", staged.StagedImport.save)
    load = staged.StagedImport.load.__func__
    staged.StagedImport.load = classmethod(tracer.wrap("parquet", "StagedImport.load", load))


def _count_rows(path: Path) -> int:
    """Data rows of a generated CSV (no embedded newlines in the demo data): lines minus header."""
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(16 * 1024 * 1024):
            lines += chunk.count(b"\n")
    return lines - 1


# ----------------------------------------------------------------------------- setup (parent)


def _gpg(home: Path, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", os.defpath), "GNUPGHOME": str(home), "LC_ALL": "C"}
    return subprocess.run(["gpg", "--batch", "--no-tty", "--quiet", *args], env=env, check=check, capture_output=True, **kwargs)


def make_throwaway_key(gnupg_home: Path) -> tuple[str, str]:
    """A passphrase-less key pair in a temporary GNUPGHOME; returns (fingerprint, armoured secret key)."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(gnupg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-generate-key",
         "cdp bench <bench@example.invalid>", "default", "default", "never")
    listing = _gpg(gnupg_home, "--with-colons", "--list-secret-keys", text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    secret = _gpg(gnupg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", fingerprint, text=True).stdout
    return fingerprint, secret


def encrypt_files(gnupg_home: Path, fingerprint: str, sources: list[Path], target_dir: Path, compress_algo: str) -> float:
    """Encrypt each file to ``target_dir/<same name>`` (binary OpenPGP), two at a time; returns seconds."""
    started = time.perf_counter()
    env = {"PATH": os.environ.get("PATH", os.defpath), "GNUPGHOME": str(gnupg_home), "LC_ALL": "C"}
    pending = list(sources)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < 2:
            source = pending.pop(0)
            args = ["gpg", "--batch", "--no-tty", "--quiet", "--yes", "--trust-model", "always", "--recipient", fingerprint]
            if compress_algo != "default":
                args += ["--compress-algo", compress_algo]
            args += ["--output", str(target_dir / source.name), "--encrypt", str(source)]
            running.append(subprocess.Popen(args, env=env))
        process = running.pop(0)
        if process.wait() != 0:
            raise RuntimeError(f"gpg --encrypt failed with exit code {process.returncode}")
    return time.perf_counter() - started


def _link_files(sources: list[Path], target_dir: Path) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        os.link(source, target_dir / source.name)


CODE_DIR: Path | None = None  # set by --rev: a snapshot of a commit that the children import instead of the working tree


def snapshot_code(rev: str, target: Path) -> str:
    """Extract ``rev``'s cdp_pipeline package (and dagster.yaml) into ``target``; returns the full commit id.
    The checkout is shared: during a long run colleagues' edits would otherwise change the code under test."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    target.mkdir(parents=True)
    # pyproject.toml: Dagster's load_from_defs_folder looks for the project file above the package.
    archive = subprocess.run(
        ["git", "archive", commit, "cdp_pipeline", "dagster.yaml", "pyproject.toml"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return commit


def _child(phase: str, home: Path, extra_env: dict[str, str], args: list[str]) -> dict:
    """Run one phase in a child process; it writes its result as JSON into a file. A failing phase
    is reported (with the end of its log) and the others still run."""
    result_file = home / f"{phase}-result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG_DIR", "DAGSTER_HOME")}
    env.update({"CDP_HOME": str(home), **extra_env})
    if CODE_DIR is not None:
        # Children run from their home (not the repository root), so PYTHONPATH wins over the editable install.
        env["PYTHONPATH"] = os.pathsep.join([str(CODE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--home", str(home), "--result", str(result_file), *args]
    log = home / f"{phase}.log"  # Dagster logs every event at DEBUG on the console: keep them out of the report
    started = time.perf_counter()
    with log.open("wb") as output:
        completed = subprocess.run(command, env=env, cwd=str(home), stdout=output, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        print(f"\nphase {phase} FAILED with exit code {completed.returncode} (log: {log}):\n{tail}")
        return {"failed": True, "exit_code": completed.returncode, "log_tail": tail, "process_wall_seconds": wall}
    result = json.loads(result_file.read_text())
    result["process_wall_seconds"] = wall
    return result


# ----------------------------------------------------------------------------- phase: engine


def phase_engine(home: Path, args: argparse.Namespace) -> dict:
    tracer = Tracer()
    install_tracing(tracer)

    from cdp_pipeline import exporting, importing
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.transports.local import LocalTransport

    project = load_project()
    connection = project.connections[CONNECTION]
    source_root = Path(connection.source.path)
    transport = LocalTransport(source_root if source_root.is_absolute() else project.home / source_root)
    keyring_factory = None
    if args.secret_key_file:
        from cdp_pipeline.crypto.keyring import PgpKeyring

        secret = Path(args.secret_key_file).read_text()

        def keyring_factory():
            return PgpKeyring(private_keys=[secret])

    rows_by_name: dict[str, int] = json.loads(args.rows_json)
    stages: list[dict] = []
    run_id = "bench" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "0" * 20
    hwm_ok = _reset_hwm()

    line_timers: dict[str, list[dict]] = {}

    def timed(stage: str, goal: str, function, rows: int, nbytes: int | None = None):
        tracer.stage = f"{goal}/{stage}"
        _reset_hwm()
        started = time.perf_counter()
        if args.trace_lines and stage == "tables":
            from cdp_pipeline.tables import import_tables

            with LineTimer([import_tables.__file__]) as timer:
                value = function()
            line_timers[goal] = timer.top()
        else:
            value = function()
        seconds = time.perf_counter() - started
        stages.append({"stage": stage, "goal": goal, "seconds": seconds, "rows": rows, "bytes": nbytes,
                       "stage_peak_rss_mb": _hwm_mb() if hwm_ok else None, "peak_rss_so_far_mb": peak_rss()["self_mb"]})
        tracer.stage = "-"
        return value

    # What the Dagster assets do beyond the engine calls above, so that the Dagster figure minus this
    # figure is orchestration only: the run-ledger row and the analysts' published copy of the store
    # after each merge (importing.record_import, as the profile_store asset) and export (the export
    # asset's record_run + publish_copy), and the store's asset checks after each import. Optional:
    # older checkouts have neither.
    from cdp_pipeline.store.database import open_writer
    from cdp_pipeline.store.runs import record_run

    try:
        from cdp_pipeline.store.publish import publish_copy
    except ImportError:
        publish_copy = None
    try:
        from cdp_pipeline.store import checks as store_checks
    except ImportError:
        store_checks = None

    def publish(kind: str, goal_name: str, partition_key: str | None, counts: dict, started: datetime) -> None:
        with open_writer(project.store_path, project.catalog) as conn:
            record_run(conn, run_id=run_id, connection=CONNECTION, kind=kind, goal=goal_name, partition_key=partition_key,
                       started_at=started, ended_at=datetime.now(UTC).replace(tzinfo=None), status="SUCCESS",
                       counts=counts, last_profiles=[], error=None)
            if publish_copy is not None and project.published_store_path is not None:
                publish_copy(conn, project.published_store_path)

    def run_checks() -> None:
        for check in (
            lambda conn: store_checks.unique_profile_ids(conn),
            lambda conn: store_checks.events_have_profiles(conn, project.catalog),
            lambda conn: store_checks.ledger_matches_store(conn),
            lambda conn: store_checks.rejects_within_bounds(conn, CONNECTION),
        ):
            with open_writer(project.store_path, project.catalog) as conn:  # one connection per check, as the asset checks do
                outcome = check(conn)
            if not outcome.passed:
                raise SystemExit(f"store check failed: {outcome.description}")

    merges = {}
    total_started = time.perf_counter()
    if hasattr(importing, "discover_deliveries"):  # current code: the sensor's discover(), everything listed is ready
        found = importing.discover_deliveries(project, connection, transport)
        scans = [(item.source.listing_goal, item.scan.deliveries, item.scan.waiting + item.scan.problems) for item in found.scans]
    elif hasattr(importing, "scan_connection"):  # older checkouts (--rev): one listing pass over every goal
        scans = [(goal, scan.deliveries, scan.waiting + scan.problems) for goal, scan in importing.scan_connection(project, connection, transport)]
    else:  # older still: list_ready_deliveries(transport, connection, goal)
        scans = [(goal, *importing.list_ready_deliveries(transport, connection, goal)) for goal in connection.import_goals]
    for goal, deliveries, waiting in scans:
        if waiting or len(deliveries) != 1:
            raise SystemExit(f"{goal.name}: expected one ready delivery, got {len(deliveries)} (waiting: {waiting})")
        delivery = deliveries[0]
        rows = sum(rows_by_name[name] for name in delivery.files)  # logical names = generated table names
        nbytes = sum(remote.size for remote in delivery.files.values())
        work_dir = importing.delivery_work_dir(project, CONNECTION, delivery.partition_key)
        now = datetime.now(UTC).replace(tzinfo=None)
        # Each step binds this delivery's values: timed() calls it at once, the binding keeps it so.
        timed("fetch", goal.name, lambda delivery=delivery, work_dir=work_dir: importing.fetch_delivery(transport, delivery, work_dir), rows, nbytes)
        _, encrypted = timed("decrypt", goal.name, lambda work_dir=work_dir: importing.decrypt_delivery(work_dir, keyring_factory), rows, nbytes)
        stages[-1]["encrypted_files"] = encrypted
        staged = timed(
            "tables", goal.name, lambda goal=goal, work_dir=work_dir, now=now: importing.stage_delivery(project, connection, goal, work_dir, now), rows
        )
        stages[-1]["detail"] = {"rows_read": staged.rows_read, "records": staged.records.height,
                                "events": sum(f.height for f in staged.events.values()), "items": sum(f.height for f in staged.items.values()),
                                "rejects": len(staged.rejects)}
        del staged
        outcome = timed(
            "merge", goal.name, lambda goal=goal, work_dir=work_dir, now=now: importing.merge_staged(project, connection, goal, work_dir, run_id, now), rows
        )
        if outcome.status != "merged":
            raise SystemExit(f"{goal.name}: merge status {outcome.status}")
        merges[goal.name] = {**outcome.counts.as_metadata(), "segment_sizes": outcome.segment_sizes}
        stages[-1]["detail"] = {k: v for k, v in merges[goal.name].items() if isinstance(v, int) and v}

        def finish(goal=goal, work_dir=work_dir):
            if hasattr(importing, "finish_delivery"):  # the step the profile_store asset runs
                importing.finish_delivery(transport, goal, work_dir)
            else:  # older checkouts (--rev)
                importing.finish_remote_files(transport, goal, work_dir)
                importing.clean_plaintext(work_dir)

        def publish_import(goal=goal, delivery=delivery, outcome=outcome, now=now):
            if hasattr(importing, "record_import"):  # the step the profile_store asset runs
                importing.record_import(
                    project, outcome, run_id=run_id, connection=CONNECTION, goal=goal.name, partition_key=delivery.partition_key, started_at=now
                )
            else:  # older checkouts (--rev)
                publish("import", goal.name, delivery.partition_key, outcome.counts.as_metadata(), now)

        timed("finish", goal.name, finish, rows)
        timed("publish", goal.name, publish_import, rows)
        if store_checks is not None:
            timed("checks", goal.name, run_checks, rows)

    export_goal = connection.goal(EXPORT_GOAL)
    now = datetime.now(UTC).replace(tzinfo=None)
    outcome = timed(
        "export", EXPORT_GOAL,
        lambda: exporting.run_export(project, connection, export_goal, transport, run_id, now, full=True, keyring_factory=None),
        0,
    )
    export_rows = outcome.profiles_exported + sum(f.rows for f in outcome.timeline_files)
    stages[-1]["rows"] = export_rows
    stages[-1]["bytes"] = outcome.bytes
    stages[-1]["detail"] = {"profiles_available": outcome.profiles_available, "profiles_exported": outcome.profiles_exported,
                            "timeline_rows": {Path(f.remote_path).name: f.rows for f in outcome.timeline_files}}
    export_counts = {"profiles_available": outcome.profiles_available, "profiles_exported": outcome.profiles_exported}
    timed("publish", EXPORT_GOAL, lambda: publish("export", EXPORT_GOAL, None, export_counts, now), export_rows)
    total = time.perf_counter() - total_started
    store_bytes = project.store_path.stat().st_size if project.store_path.exists() else None
    rss = peak_rss()
    stage_peaks = [s["stage_peak_rss_mb"] for s in stages if s.get("stage_peak_rss_mb")]
    # Resetting VmHWM per stage also resets what ru_maxrss reports for this process, so the
    # process peak is the larger of ru_maxrss and the per-stage high-water marks.
    rss["ru_maxrss_self_mb"] = rss["self_mb"]
    rss["self_mb"] = max([rss["self_mb"], *stage_peaks])
    return {"stages": stages, "total_seconds": total, "peak_rss": rss, "calls": tracer.calls,
            "merges": merges, "store_bytes": store_bytes, "line_timers": line_timers}


# ----------------------------------------------------------------------------- phase: dagster


def phase_dagster(home: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    import dagster as dg

    from cdp_pipeline.cli import _prepare_environment, run_connection

    _prepare_environment(home)  # CDP_HOME, DAGSTER_HOME (set by the parent to a fresh folder), dagster.yaml
    import_seconds = time.perf_counter() - started
    lines: list[str] = []
    run_started = time.perf_counter()
    summary = run_connection(CONNECTION, full_export=True, echo=lines.append)
    run_seconds = time.perf_counter() - run_started
    instance = dg.DagsterInstance.get()
    runs = []
    for run in reversed(instance.get_runs()):
        stats = instance.get_run_stats(run.run_id)
        steps = [
            {"step": s.step_key, "seconds": (s.end_time or 0) - (s.start_time or 0), "status": str(s.status)}
            for s in instance.get_run_step_stats(run.run_id)
        ]
        runs.append({"job": run.job_name, "partition": run.tags.get("dagster/partition"), "status": str(run.status),
                     "seconds": (stats.end_time or 0) - (stats.launch_time or stats.start_time or 0), "steps": steps})
    return {"success": summary["success"], "run_connection_seconds": run_seconds, "import_seconds": import_seconds,
            "runs": runs, "echo": lines, "peak_rss": peak_rss()}


# ----------------------------------------------------------------------------- phase: hand-rolled baseline


def phase_baseline(home: Path, args: argparse.Namespace) -> dict:
    """The shortest honest script doing the same work, no orchestration, no checks (cf. the speed
    anchors' "hand-rolled script"). It is a floor to compare with, not a second implementation."""
    import hashlib

    import duckdb
    import polars as pl

    inbox = Path(args.inbox)
    work = home / "baseline"
    work.mkdir(parents=True, exist_ok=True)
    names = ("households", "profiles", "orders", "order_lines")
    stages: list[dict] = []
    total_started = time.perf_counter()

    def stage(name: str):
        class _Timer:
            def __enter__(self_inner):
                self_inner.started = time.perf_counter()

            def __exit__(self_inner, *exc):
                stages.append({"stage": name, "seconds": time.perf_counter() - self_inner.started})

        return _Timer()

    fetched = {}
    with stage("fetch (copy + sha256)"):
        for name in names:
            source = inbox / f"{name}_{DATE}.csv"
            target = work / f"{name}.bin"
            shutil.copyfile(source, target)
            digest = hashlib.sha256()
            with target.open("rb") as handle:
                while chunk := handle.read(8 * 1024 * 1024):
                    digest.update(chunk)
            fetched[name] = target
    plain = {}
    with stage("decrypt (gpg CLI)"):
        for name, path in fetched.items():
            with path.open("rb") as handle:
                first = handle.read(1)
            if args.gnupg_home and first and first[0] & 0x80:  # a binary OpenPGP packet, not CSV text
                target = work / f"{name}.csv"
                _gpg(Path(args.gnupg_home), "--yes", "--output", str(target), "--decrypt", str(path))
                plain[name] = target
            else:
                plain[name] = path
    with stage("parse (Polars read_csv)"):
        text = {"household_id": pl.String, "customer_id": pl.String, "order_id": pl.String, "total": pl.String, "unit_price": pl.String}
        frames = {name: pl.read_csv(plain[name], schema_overrides={k: v for k, v in text.items()}, infer_schema_length=10000) for name in names}
    with stage("join (Polars)"):
        orders = frames["orders"].with_columns(
            pl.col("order_date").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S"),
            pl.col("total").cast(pl.Decimal(18, 2)),
        )
        lines = frames["order_lines"].with_columns(pl.col("unit_price").cast(pl.Decimal(18, 2)))
        profiles = frames["profiles"].with_columns(  # noqa: F841 - read by DuckDB's replacement scan
            pl.col("email").str.strip_chars().str.to_lowercase(), pl.col("interests").str.split("|")
        ).unique("customer_id", keep="last", maintain_order=True)
        per_customer = orders.group_by("customer_id").agg(  # noqa: F841 - read by DuckDB's replacement scan
            pl.col("total").sum().alias("lifetime_value"), pl.len().alias("order_count"),
            pl.col("order_date").max().alias("last_order_at"), pl.col("channel").unique().alias("channels"),
        )
        orders_keyed = orders.join(  # noqa: F841 - read by DuckDB's replacement scan
            lines.group_by("order_id").agg(pl.len().alias("n_lines")), on="order_id", how="left"
        )
    with stage("merge (DuckDB, one transaction)"):
        conn = duckdb.connect(str(work / "baseline.duckdb"))
        conn.execute("BEGIN")
        households = frames["households"]  # noqa: F841 - read by DuckDB's replacement scan
        conn.execute("CREATE TABLE groups_household AS SELECT * FROM households")
        conn.execute(
            "CREATE TABLE profiles AS SELECT md5('customer_number:' || customer_id) AS profile_id, * EXCLUDE (customer_id), customer_id AS customer_number, "
            "CAST(NULL AS DECIMAL(18,2)) AS lifetime_value, CAST(NULL AS BIGINT) AS order_count, CAST(NULL AS TIMESTAMP) AS last_order_at, "
            "CAST(NULL AS VARCHAR[]) AS channels FROM profiles"
        )
        conn.execute(
            "UPDATE profiles SET lifetime_value = coalesce(profiles.lifetime_value, 0) + c.lifetime_value, "
            "order_count = coalesce(profiles.order_count, 0) + c.order_count, last_order_at = c.last_order_at, channels = c.channels "
            "FROM per_customer c WHERE profiles.customer_number = c.customer_id"
        )
        conn.execute(
            "CREATE TABLE timeline_order AS SELECT o.order_id AS event_id, md5('customer_number:' || o.customer_id) AS profile_id, "
            "o.order_date AS event_time, o.total, o.currency, o.channel FROM orders_keyed o"
        )
        conn.execute(
            "CREATE TABLE timeline_order__order_line AS SELECT order_id AS event_id, line_number AS item_index, * EXCLUDE (order_id, line_number) FROM lines"
        )
        conn.execute("COMMIT")
        conn.execute("CHECKPOINT")
    with stage("export (DuckDB COPY)"):
        out = work / "high_value.csv"
        conn.execute(f"COPY (SELECT profile_id, customer_number, email, first_name, lifetime_value, order_count, loyalty_tier FROM profiles "
                     f"WHERE lifetime_value >= 500 ORDER BY profile_id) TO '{out}' (HEADER)")
        conn.execute(f"COPY (SELECT e.* FROM timeline_order e JOIN profiles p USING (profile_id) WHERE p.lifetime_value >= 500 "
                     f"ORDER BY event_time, event_id) TO '{work / 'order.csv'}' (HEADER)")
        conn.close()
    total = time.perf_counter() - total_started
    return {"stages": stages, "total_seconds": total, "peak_rss": peak_rss()}


# ----------------------------------------------------------------------------- reporting


def _fmt_rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if rows and seconds > 0 else "-"


def print_engine(result: dict) -> None:
    print()
    print("Engine stages (engine functions called directly, goal order):")
    print(f"{'goal':<18} {'stage':<8} {'seconds':>8} {'rows':>11} {'rows/s':>11} {'MB/s':>7} {'stage peak RSS':>15}")
    for s in result["stages"]:
        rate_mb = f"{s['bytes'] / MB / s['seconds']:.0f}" if s.get("bytes") and s["seconds"] > 0 else ""
        hwm = f"{s['stage_peak_rss_mb']:,.0f} MB" if s.get("stage_peak_rss_mb") else ""
        print(f"{s['goal']:<18} {s['stage']:<8} {s['seconds']:>8.2f} {s['rows']:>11,} {_fmt_rate(s['rows'], s['seconds']):>11} {rate_mb:>7} {hwm:>15}")
    print("By stage, all deliveries:")
    totals: dict[str, float] = {}
    for s in result["stages"]:
        totals[s["stage"]] = totals.get(s["stage"], 0.0) + s["seconds"]
    for name, seconds in totals.items():
        print(f"  {name:<8} {seconds:8.2f} s  {100 * seconds / result['total_seconds']:5.1f} %")
    core = sum(seconds for name, seconds in totals.items() if name in CORE_STAGES)
    print(f"  core stages ({', '.join(CORE_STAGES)}): {core:.2f} s; job bookkeeping (finish, publish, checks): {result['total_seconds'] - core:.2f} s")
    rss = result["peak_rss"]
    print(f"TOTAL {result['total_seconds']:.2f} s   peak RSS {rss['self_mb']:,.0f} MB (children {rss['children_mb']:,.0f} MB)   "
          f"load average before/after {result['loadavg_before_after'][0][0]:.1f}/{result['loadavg_before_after'][1][0]:.1f}")


def stage_breakdown(result: dict) -> list[dict]:
    """Per (goal, stage): traced time by helper / statement kind, and what no wrapper saw."""
    rows = []
    for s in result["stages"]:
        key = f"{s['goal']}/{s['stage']}"
        calls = [c for c in result["calls"] if c["stage"] == key]
        if not calls:
            continue
        by_name: dict[str, float] = {}
        for c in calls:
            name = c["what"] if c["kind"] != "sql" else "sql: " + c["what"].split(" ")[0] + " " + " ".join(c["what"].split(" ")[1:4])
            by_name[name] = by_name.get(name, 0.0) + c["seconds"]
        traced = sum(c["seconds"] for c in calls if not (c["kind"] == "parquet" and c["what"] == "StagedImport.load" and s["stage"] == "tables"))
        rows.append({"goal": s["goal"], "stage": s["stage"], "seconds": s["seconds"], "parts": sorted(by_name.items(), key=lambda kv: -kv[1]),
                     "untraced": s["seconds"] - traced})
    return rows


def print_breakdown(result: dict, minimum: float = 0.2) -> None:
    print()
    print(f"Where the time goes inside tables / merge / export (parts >= {minimum} s; 'untraced' = Polars joins, unique, sorts, Python):")
    for row in stage_breakdown(result):
        if row["stage"] not in ("tables", "merge", "export") or row["seconds"] < 2 * minimum:
            continue
        parts = "; ".join(f"{name} {seconds:.2f}" for name, seconds in row["parts"] if seconds >= minimum)
        print(f"  {row['goal']}/{row['stage']} {row['seconds']:.2f} s: {parts}; untraced {row['untraced']:.2f}")


def print_line_timers(result: dict) -> None:
    for goal, rows in result.get("line_timers", {}).items():
        print()
        print(f"Slowest lines of the tables stage for {goal} (inclusive wall time, --trace-lines):")
        for row in rows[:15]:
            print(f"  {row['seconds']:7.2f} s  {row['file']}:{row['line']:<4} x{row['hits']:<3} {row['source']}")


def print_hotspots(result: dict, limit: int = 15) -> None:
    calls = sorted(result["calls"], key=lambda c: -c["seconds"])[:limit]
    print()
    print(f"Slowest traced calls (DuckDB statements, Polars helpers), top {limit}:")
    for c in calls:
        print(f"  {c['seconds']:7.2f} s  {c['stage']:<22} {c['kind']:<7} {c['what'][:110]}")


def print_dagster(result: dict, engine_total: float | None, label: str = "engine stages") -> None:
    print()
    print("Whole main job through Dagster (cdp_pipeline.cli.run_connection, fresh home, plain files):")
    for run in result["runs"]:
        steps = ", ".join(f"{s['step'].split('__')[-1]} {s['seconds']:.1f}s" for s in run["steps"])
        print(f"  {run['job']:<20} {run['partition'] or '':<42} {run['seconds']:7.2f} s  [{steps}]")
    in_runs = sum(run["seconds"] for run in result["runs"])
    in_steps = sum(step["seconds"] for run in result["runs"] for step in run["steps"])
    print(f"  steps {in_steps:.2f} s, runs (launch → end) {in_runs:.2f} s, outside runs (definitions, listing, partitions) "
          f"{result['run_connection_seconds'] - in_runs:.2f} s")
    line = f"  run_connection {result['run_connection_seconds']:.2f} s (+ {result['import_seconds']:.2f} s importing dagster)"
    if engine_total:
        overhead = result["run_connection_seconds"] - engine_total
        line += f"; {label} {engine_total:.2f} s → overhead {overhead:+.2f} s ({result['run_connection_seconds'] / engine_total:.2f}×)"
    print(line)
    rss = result["peak_rss"]
    print(f"  success={result['success']}  peak RSS {rss['self_mb']:,.0f} MB (children {rss['children_mb']:,.0f} MB)")


def print_baseline(result: dict, engine_total: float | None) -> None:
    print()
    print("Hand-rolled baseline (same files, same machine):")
    for s in result["stages"]:
        print(f"  {s['stage']:<34} {s['seconds']:7.2f} s")
    rss = result["peak_rss"]
    line = f"  TOTAL {result['total_seconds']:.2f} s   peak RSS {rss['self_mb']:,.0f} MB (children {rss['children_mb']:,.0f} MB)"
    if engine_total:
        line += f"   engine core stages {engine_total:.2f} s / baseline = {engine_total / result['total_seconds']:.2f}×"
    print(line)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    import duckdb
    import polars

    versions = {"python": sys.version.split()[0], "polars": polars.__version__, "duckdb": duckdb.__version__}
    try:
        from importlib.metadata import version

        versions["dagster"] = version("dagster")
        versions["numpy"] = version("numpy")
    except Exception:  # noqa: BLE001, S110 - the versions of optional packages are extras in the report
        pass
    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    # The checkout is shared and moves: record what code was measured, including uncommitted engine edits.
    versions["git_head"] = git("rev-parse", "--short", "HEAD")
    versions["git_dirty_engine_files"] = git("status", "--short", "--", "cdp_pipeline").replace("\n", "; ")
    return {"nproc": os.cpu_count(), "mem_gib": round(mem / 1024 / 1024, 1), "cpu": cpu, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "loadavg": os.getloadavg(), "versions": versions}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000, help="distinct profiles N (orders 1.5 N, lines 4 N); default 1,000,000")
    parser.add_argument("--encrypt", action="store_true", help="gpg-encrypt the inputs (throw-away key) so decrypt does real work")
    parser.add_argument("--compress-algo", default="default", help="with --encrypt: gpg compression (default: gpg's zlib; 'none' for uncompressed)")
    parser.add_argument("--no-dagster", action="store_true", help="skip the whole-job-through-Dagster figure")
    parser.add_argument("--no-baseline", action="store_true", help="skip the hand-rolled baseline")
    parser.add_argument("--trace-lines", action="store_true",
                        help="time every line of cdp_pipeline/tables/import_tables.py during the tables stage (adds overhead)")
    parser.add_argument("--rev", help="benchmark this commit (e.g. HEAD), extracted with git archive, instead of the working tree")
    parser.add_argument("--json", type=Path, help="also write every figure (and all traced calls) as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument("--tmp", type=Path, default=None, help="parent folder of the temporary homes (default: the system temp dir)")
    # internal: one phase in a child process
    parser.add_argument("--phase", choices=("engine", "dagster", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows-json", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--secret-key-file", help=argparse.SUPPRESS)
    parser.add_argument("--gnupg-home", help=argparse.SUPPRESS)
    parser.add_argument("--inbox", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        phase = {"engine": phase_engine, "dagster": phase_dagster, "baseline": phase_baseline}[args.phase]
        load_before = os.getloadavg()
        result = phase(args.home, args)
        result["loadavg_before_after"] = [load_before, os.getloadavg()]  # the machine is shared: how busy was it?
        args.result.write_text(json.dumps(result, default=str))
        return 0

    global CODE_DIR
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-", dir=args.tmp))
    print(f"bench root {root}  (N={args.profiles:,} profiles, seed {SEED}, date {DATE})")
    code = "working tree"
    if args.rev:
        CODE_DIR = root / "code"
        commit = snapshot_code(args.rev, CODE_DIR)
        sys.path.insert(0, str(CODE_DIR))
        code = f"{args.rev} = {commit[:12]} (snapshot)"
        print(f"code under test: {code}")
    report: dict = {"code": code, "machine": machine(), "profiles": args.profiles, "encrypt": args.encrypt, "compress_algo": args.compress_algo,
                    "command": "python " + " ".join([os.path.relpath(__file__, REPO_ROOT), *(argv if argv is not None else sys.argv[1:])])}
    try:
        from cdp_pipeline.demo.generate import generate_delivery

        source_dir = root / "generated"
        started = time.perf_counter()
        paths = generate_delivery(source_dir, profiles=args.profiles, seed=SEED, date=DATE)
        report["generate_seconds"] = time.perf_counter() - started
        rows = {name: _count_rows(path) for name, path in paths.items()}
        sizes = {name: path.stat().st_size for name, path in paths.items()}
        report["files"] = {name: {"rows": rows[name], "bytes": sizes[name]} for name in paths}
        print(f"generated in {report['generate_seconds']:.1f} s: " + ", ".join(f"{n} {rows[n]:,} rows / {sizes[n] / MB:.0f} MB" for n in paths)
              + f"  (total {sum(sizes.values()) / MB:.0f} MB)")

        engine_home = root / "engine_home"
        engine_inbox = engine_home / "demo" / "inbox"
        engine_inbox.mkdir(parents=True)
        (engine_home / "demo" / "outbox").mkdir(parents=True)
        engine_args = ["--rows-json", json.dumps(rows)] + (["--trace-lines"] if args.trace_lines else [])
        baseline_args = ["--inbox", str(engine_inbox)]
        if args.encrypt:
            gnupg_home = root / "gnupg"
            fingerprint, secret = make_throwaway_key(gnupg_home)
            key_file = root / "secret-key.asc"
            key_file.write_text(secret)
            os.chmod(key_file, 0o600)
            seconds = encrypt_files(gnupg_home, fingerprint, list(paths.values()), engine_inbox, args.compress_algo)
            report["encrypt_seconds"] = seconds
            print(f"encrypted the inputs (compression: {args.compress_algo}) in {seconds:.1f} s, not timed in the pipeline: "
                  + ", ".join(f"{p.name} {(engine_inbox / p.name).stat().st_size / MB:.0f} MB" for p in paths.values()))
            engine_args += ["--secret-key-file", str(key_file)]
            baseline_args += ["--gnupg-home", str(gnupg_home)]
        else:
            _link_files(list(paths.values()), engine_inbox)

        m = report["machine"]
        print(f"machine: {m['nproc']} cores, {m['mem_gib']} GiB, {m['cpu']}; load average {m['loadavg'][0]:.1f}; "
              + (f"code {code}" if args.rev
                 else f"working tree at {m['versions'].get('git_head')} (dirty engine files: {m['versions'].get('git_dirty_engine_files') or 'none'})"))
        engine = _child("engine", engine_home, {}, engine_args)
        report["engine"] = engine
        if engine.get("failed"):
            raise SystemExit("the engine phase failed; nothing to compare")
        print_engine(engine)
        print_breakdown(engine)
        print_hotspots(engine)
        print_line_timers(engine)

        if not args.no_dagster:
            dagster_home = root / "dagster_run_home"
            _link_files(list(paths.values()), dagster_home / "demo" / "inbox")
            (dagster_home / "demo" / "outbox").mkdir(parents=True)
            (dagster_home / "dagster_home").mkdir(parents=True)
            report["dagster"] = _child("dagster", dagster_home, {"DAGSTER_HOME": str(dagster_home / "dagster_home")}, [])
            # The Dagster run reads the plain files (the demo connection has no PGP key configured):
            # compare it with the engine stages minus decryption, which are the same work.
            decrypt = sum(s["seconds"] for s in engine["stages"] if s["stage"] == "decrypt") if args.encrypt else 0.0
            report["dagster"]["engine_comparable_seconds"] = engine["total_seconds"] - decrypt
            if not report["dagster"].get("failed"):
                print_dagster(report["dagster"], engine["total_seconds"] - decrypt, "engine stages without decrypt" if args.encrypt else "engine stages")

        if not args.no_baseline:
            (root / "baseline_home").mkdir()
            report["baseline"] = _child("baseline", root / "baseline_home", {}, baseline_args)
            core = sum(st["seconds"] for st in engine["stages"] if st["stage"] in CORE_STAGES)
            report["baseline"]["engine_core_seconds"] = core
            if not report["baseline"].get("failed"):
                print_baseline(report["baseline"], core)

    finally:
        if args.json:  # also after a failed phase: what was measured is kept
            args.json.write_text(json.dumps(report, indent=1, default=str))
            print(f"\nJSON: {args.json}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
