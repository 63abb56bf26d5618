"""Command line: ``cdp-pipeline demo`` (the quick start), ``cdp-pipeline run CONNECTION`` (run now),
``cdp-pipeline validate``.

Runs go through the same Dagster jobs the sensors and schedules launch, recorded in the
persistent instance under DAGSTER_HOME, so ``dagster dev`` shows them afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The terminal shows this command's own summary; every step's events stay in the run's log in the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


#: a folder in DAGSTER_HOME per command process that executes runs, for as long as it does: one
#: left behind by a killed process says its pool claims may still be held (see _nothing_to_run).
EXECUTING_MARK_PREFIX = "cdp-executing-"


@contextlib.contextmanager
def _executing_runs():
    """Mark this process as executing runs in DAGSTER_HOME (removed when it ends, unless killed)."""
    from cdp_pipeline.orphans import mark_owner

    dagster_home = os.environ.get("DAGSTER_HOME")
    if not dagster_home:
        yield
        return
    folder = Path(dagster_home) / f"{EXECUTING_MARK_PREFIX}{os.getpid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    mark_owner(folder)
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _release_dead_claims(instance, echo) -> None:
    """Free the pool claims of runs whose process is gone, then forget those processes' marks."""
    from cdp_pipeline.defs.pool_claims import release_dead_claims
    from cdp_pipeline.orphans import remove_orphans

    for line in release_dead_claims(instance):
        echo(f"  {line}")
    if os.environ.get("DAGSTER_HOME"):
        remove_orphans(Path(os.environ["DAGSTER_HOME"]), EXECUTING_MARK_PREFIX)


class UnusableFolder(Exception):
    """CDP_HOME or DAGSTER_HOME cannot be written; the message names the folder and the fix."""


def _writable_folder(folder: Path, variable: str, holds: str) -> None:
    """Create the folder (0700 when new: it holds customer data or run history) and prove it can
    be written, so a read-only folder is one clear line instead of a traceback from SQLite."""
    try:
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UnusableFolder(
            f"{variable} {folder} cannot be written ({exc.strerror or exc}); it holds {holds}. Make it writable for this "
            f"user (chmod u+w {folder}) or point {variable} (or --home) at a folder that is."
        ) from None


def _prepare_environment(home: Path) -> Path:
    os.environ["CDP_HOME"] = str(home)
    _writable_folder(home, "CDP_HOME", "the store and the work folders")
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home")))
    _writable_folder(dagster_home, "DAGSTER_HOME", "Dagster's run history and the sensors' cursors")
    instance_yaml = dagster_home / "dagster.yaml"
    if not instance_yaml.exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", instance_yaml)
    return dagster_home


def run_now(connection_name: str, *, full_export: bool = False, echo=print) -> dict:
    """Import every complete delivery now, then run the export goals ("Run now").

    One run of ``<connection>_run_now``, the job the UI's Run now and the schedules launch: it
    calls the engine's ``connection_run.run_connection``, so the CLI imports in goal order with the
    same ledger and partition keys as the sensor. The run is recorded in the instance under
    DAGSTER_HOME (``dagster dev`` shows it) with the store checks it evaluated after its merges,
    and followed by the connection's e-mail notification (the daemon's notification sensors
    never see a run executed in this process)."""
    import dagster as dg

    from cdp_pipeline.defs.connections import one_connection_definitions
    from cdp_pipeline.defs.pool_claims import ends_on_sigterm, process_tags
    from cdp_pipeline.defs.project import project_config
    from cdp_pipeline.defs.run_now import run_now_job_name, run_now_op_name

    connection = project_config().connections[connection_name]
    definitions = one_connection_definitions(connection_name)
    instance = dg.DagsterInstance.get()
    _release_dead_claims(instance, echo)
    job = definitions.resolve_job_def(run_now_job_name(connection_name))
    run_config = {**QUIET, "ops": {run_now_op_name(connection_name): {"config": {"full_export": full_export}}}}
    with _executing_runs(), ends_on_sigterm(instance, echo):
        result = job.execute_in_process(instance=instance, run_config=run_config, tags=process_tags(), raise_on_error=False)
        summary = _summary_of_run(instance, result.run_id, connection_name, echo)
    _notify(instance, result.run_id, connection, echo)
    return summary


def _summary_of_run(instance, run_id: str, connection_name: str, echo) -> dict:
    """What the run did, per delivery and export, read back from its events: the materialisations
    of the deliveries merged or skipped, the observations of the ones that failed (with their
    cause), the export materialisations, and the engine's "waiting:" lines."""
    import dagster as dg

    from cdp_pipeline.defs.run_now import ALREADY_MERGED_PREFIX, CHECKS_NOT_RUN_PREFIX, WAITING_PREFIX

    summary: dict = {"imports": [], "exports": [], "already_merged": [], "store_checks": {}}
    for entry in instance.all_logs(run_id):
        if entry.dagster_event is not None:
            continue
        if entry.user_message.startswith((WAITING_PREFIX, CHECKS_NOT_RUN_PREFIX)):
            echo(f"  {entry.user_message}")
        elif entry.user_message.startswith(ALREADY_MERGED_PREFIX):
            summary["already_merged"].append(entry.user_message.removeprefix(ALREADY_MERGED_PREFIX))
            echo(f"  {entry.user_message}")
    profile_store = dg.AssetKey([connection_name, "profile_store"])
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            observation = entry.asset_observation
            if observation is None:
                continue
            cause = str(observation.metadata["error"].value) if "error" in observation.metadata else "see the run in the Dagster UI"
            if observation.asset_key == profile_store:
                summary["imports"].append({"delivery": observation.partition, "success": False, "status": "failed", "error": cause})
                echo(f"  FAILED {observation.partition}: {cause}")
            else:
                summary["export_success"] = False
                echo(f"  FAILED {cause}")
            continue
        materialization = entry.asset_materialization
        if materialization is None:
            continue
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        if materialization.asset_key == profile_store:
            # The counters are under "<goal>/<counter>" (one plot per goal in the UI).
            goal = (materialization.partition or "").partition(":")[0]
            metadata = {key.removeprefix(f"{goal}/"): value for key, value in metadata.items()}
            summary["imports"].append({"delivery": materialization.partition, "success": True, **metadata})
            echo(f"  imported {materialization.partition}: {import_summary(metadata)}")
        else:
            summary["exports"].append({"asset": materialization.asset_key.to_user_string(), **metadata})
            echo(f"  exported {materialization.asset_key.to_user_string()}: {metadata.get('dagster/uri') or metadata.get('paths')} "
                 f"rows={metadata.get('dagster/row_count', metadata.get('rows'))}")
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.asset_check_evaluation_data if entry.dagster_event else None
        if evaluation is None:
            continue
        summary["store_checks"][evaluation.check_name] = evaluation.passed
        if not evaluation.passed:
            echo(f"  store check {evaluation.check_name} FAILED: {evaluation.description}")
    run = instance.get_run_by_id(run_id)
    success = run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    if not success and not any(not item["success"] for item in summary["imports"]) and "export_success" not in summary:
        # Failed before or outside the engine's steps (a resource, a stop signal): Dagster's cause.
        echo(f"  FAILED: {_failure_cause(instance, run_id)}")
    if summary["exports"]:
        summary.setdefault("export_success", True)
    summary["success"] = success
    return summary


def _notify(instance, run_id: str, connection, echo) -> None:
    """The connection's e-mail notification for this run, as the daemon's sensors send it for the
    runs they see. Mail that cannot go out is said on standard error; it does not change what the
    run did, so it does not change the exit code."""
    import dagster as dg

    from cdp_pipeline.defs.alerts import notify_run
    from cdp_pipeline.notifications import NotificationError

    run = instance.get_run_by_id(run_id)
    if run is None or connection.notifications is None:
        return
    try:
        sent = notify_run(instance, run, connection, "SUCCESS" if run.status == dg.DagsterRunStatus.SUCCESS else "FAILURE")
    except (NotificationError, ValueError) as error:
        print(f"cdp-pipeline: the e-mail notification of run {run_id} was not sent: {error}", file=sys.stderr)
        return
    if sent:
        echo(f"  {sent}")


def import_summary(metadata: dict) -> str:
    """What a delivery did, in words that cannot hide a loss: events created / updated /
    unchanged (a re-delivery that replaced 1,042 events is not "events=0"), rows rejected and
    values not imported (see the store's rejects table)."""
    def n(key: str) -> int:
        return int(metadata.get(key) or 0)

    parts = [
        f"{metadata.get('status')}",
        f"rows={n('rows_read')}",
        f"rejected={n('rows_rejected')}",
        f"values_not_imported={n('values_not_imported')}",
        f"profiles created={n('profiles_created')} updated={n('profiles_updated')} unchanged={n('profiles_unchanged')}",
    ]
    if n("profiles_ignored") or n("consent_skipped"):
        parts.append(f"ignored={n('profiles_ignored')} consent_skipped={n('consent_skipped')}")
    if n("groups_created") or n("groups_updated"):
        parts.append(f"groups created={n('groups_created')} updated={n('groups_updated')}")
    parts.append(f"events created={n('events_created')} updated={n('events_updated')} unchanged={n('events_unchanged')}")
    if n("events_ignored"):
        parts.append(f"events ignored={n('events_ignored')}")
    return " ".join(parts)


def _failure_cause(instance, run_id: str) -> str:
    """The failed steps' own causes: the message the step raised (a delivery the pipeline could
    not take names its file, line and fix), not Dagster's wrapper around it."""
    import dagster as dg

    causes = []
    for record in instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        if data is None:
            continue
        if data.user_failure_data and data.user_failure_data.description:
            causes.append(f"{event.step_key}: {data.user_failure_data.description.strip()}")
            continue
        error = data.error
        while error is not None and error.cls_name and error.cls_name.startswith("Dagster") and error.cause is not None:
            error = error.cause
        causes.append(f"{event.step_key}: {error.message.strip() if error else 'no error recorded'}")
    return "\n".join(causes) or "see the run in the Dagster UI"


def reprocess_delivery(connection_name: str, partition_key: str, echo=print) -> bool:
    """Run one delivery again even though the ledger has it. Set rules and add apply again; sum
    skips the rows it already counted, so the delivery's earlier contribution is never added twice."""
    import dagster as dg

    from cdp_pipeline.defs.connections import import_job_name, one_connection_definitions
    from cdp_pipeline.defs.pool_claims import ends_on_sigterm, process_tags
    from cdp_pipeline.deliveries import partition_set_name

    instance = dg.DagsterInstance.get()
    _release_dead_claims(instance, echo)
    instance.add_dynamic_partitions(partition_set_name(connection_name), [partition_key])
    job = one_connection_definitions(connection_name).resolve_job_def(import_job_name(connection_name))
    with _executing_runs(), ends_on_sigterm(instance, echo):
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key, tags={**process_tags(), "cdp/reprocess": "true"}, raise_on_error=False,
            run_config=QUIET,
        )
    echo(f"  reprocessed {partition_key}: {'SUCCESS' if result.success else 'FAILED'} (run {result.run_id})")
    from cdp_pipeline.defs.project import project_config

    _notify(instance, result.run_id, project_config().connections[connection_name], echo)
    return result.success


def _reprocess(args: argparse.Namespace) -> int:
    home = Path(args.home).expanduser().resolve()
    _prepare_environment(home)
    _known_partition(home, args.connection, args.partition_key)
    return 0 if reprocess_delivery(args.connection, args.partition_key) else 1


def _demo(args: argparse.Namespace) -> int:
    home = Path(args.home).expanduser().resolve()
    dagster_home = _prepare_environment(home)
    from cdp_pipeline.demo.generate import generate_delivery

    inbox = home / "demo" / "inbox"
    if args.fresh or not any(inbox.glob("*.csv")):
        inbox.mkdir(parents=True, exist_ok=True)
        files = generate_delivery(inbox, profiles=args.profiles, seed=42, date=args.date)
        print(f"Generated the demo delivery in {inbox}: " + ", ".join(p.name for p in files.values()))
    (home / "demo" / "outbox").mkdir(parents=True, exist_ok=True)
    _known_connection(home, "demo_local")  # a --config-dir without the demo connection is one clear line
    print("Running connection demo_local (imports, then exports):")
    summary = run_now("demo_local", echo=print)
    store = home / "store.duckdb"
    print()
    published = home / "store_published.duckdb"
    print(f"Store:   {store}")
    # The programs of this environment by their full path: the Quick start installs into .venv,
    # whose bin folder is not on PATH unless the user activated it.
    bin_dir = Path(sys.executable).parent
    query = f"import duckdb; print(duckdb.connect('{published}', read_only=True).sql('SELECT count(*) FROM profiles'))"
    print(f"Query the analysts' copy: {sys.executable} -c \"{query}\"")
    print(f"Outbox:  {home / 'demo' / 'outbox'}")
    print("Open the Dagster UI on the same data (runs, partitions, sensor cursors are kept in DAGSTER_HOME):")
    print(f"  CDP_HOME={home} DAGSTER_HOME={dagster_home} {bin_dir / 'dagster'} dev -w workspace.yaml")
    return 0 if summary["success"] else 1


def _known_connection(home: Path, name: str):
    """The project and the connection, refusing an unknown name with its close matches before
    anything is loaded into Dagster (an invalid configuration is one clean ConfigError here, not a
    component traceback from the definitions)."""
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.errors import UnknownName

    project = load_project(home=home)
    if name not in project.connections:
        raise UnknownName.of("connection", name, list(project.connections))
    return project, project.connections[name]


def _known_partition(home: Path, connection_name: str, key: str) -> None:
    """A reprocess names a delivery Dagster has run before: an unknown connection, goal or file is
    refused with close matches before the instance is written (adding the partition would leave a
    permanent bogus one in the UI)."""
    import dagster as dg

    from cdp_pipeline import importing
    from cdp_pipeline.deliveries import partition_set_name, split_partition_key
    from cdp_pipeline.errors import UnknownName

    project, connection = _known_connection(home, connection_name)
    goals = [source.goal_name for source in importing.connection_sources(project, connection)]
    goal, _ = split_partition_key(key)
    if goal not in goals:
        raise UnknownName.of("import goal", goal, goals)
    known = list(dg.DagsterInstance.get().get_dynamic_partitions(partition_set_name(connection_name)))
    if key not in known:
        error = UnknownName.of(f"delivery of {connection_name} that Dagster has run", key, known)
        raise type(error)(f"{error}; `cdp-pipeline preview {connection_name}` lists the source's deliveries, `run` imports new ones")


def _run(args: argparse.Namespace) -> int:
    home = Path(args.home).expanduser().resolve()
    _prepare_environment(home)
    project, connection = _known_connection(home, args.connection)
    if not args.always_run and _nothing_to_run(project, connection, full_export=args.full_export):
        return 0
    summary = run_now(args.connection, full_export=args.full_export)
    return 0 if summary["success"] else 1


def _nothing_to_run(project, connection, echo=print, *, full_export: bool = False) -> bool:
    """True when a Run now would import nothing and send nothing (nothing new in the source, every
    export goal provably sending nothing, no mail after every run; see
    ``connection_run.nothing_to_run``): what it would have said is printed, one line per export
    goal saying why nothing was sent, and no run is started, so Dagster is not even imported. Starting Python, Dagster and its
    instance is seconds; listing a folder and reading the ledger is a fraction of one. Anything
    unexpected while looking (a source that cannot be listed) leaves the decision to the run,
    which records and reports the failure the usual way. So does an earlier command of this
    DAGSTER_HOME killed while executing runs: its claims on the store's write pool would hold
    every later writer until a run of this command frees them."""
    from cdp_pipeline.connection_check import open_transport
    from cdp_pipeline.connection_run import ALREADY_MERGED_PREFIX, WAITING_PREFIX, nothing_to_run
    from cdp_pipeline.orphans import owner_gone

    dagster_home = os.environ.get("DAGSTER_HOME")
    if dagster_home and any(owner_gone(mark) for mark in Path(dagster_home).glob(f"{EXECUTING_MARK_PREFIX}*")):
        return False
    try:
        idle = nothing_to_run(project, connection, lambda: open_transport(project, connection.source), full_export=full_export)
    except Exception:  # the run meets the same problem and records it; this look only saves time
        return False
    if idle is None:
        return False
    for reason in idle.waiting:
        echo(f"  {WAITING_PREFIX}{reason}")
    for key in idle.already_merged:
        echo(f"  {ALREADY_MERGED_PREFIX}{key}")
    for export in idle.idle_exports:
        echo(f"  export {export.goal}: nothing sent, no run started ({export.reason})")
    if idle.idle_exports:
        echo(f"  nothing to import and nothing to send: no run started ({connection.name} has nothing new in its source)")
    else:
        echo(f"  nothing to import and no export goal: no run started ({connection.name} has nothing new in its source)")
    return True


def _validate(args: argparse.Namespace) -> int:
    """Every finding that needs no network, in one run: each file's schema errors, the cross-checks
    against the catalog, the segment and lifecycle conditions compiled against the tables the
    catalog defines, and unset ``*_env`` variables. An unset variable is a warning (exit 0) unless
    ``--strict``: the secrets are often set only where the code location runs, not on the machine
    where a person edits the YAML."""
    os.environ.setdefault("CDP_HOME", str(Path(args.home).expanduser().resolve()))
    from cdp_pipeline.config.loading import inspect_project
    from cdp_pipeline.connection_check import unset_variables
    from cdp_pipeline.sample_check import check_sample
    from cdp_pipeline.store_access_check import store_variables

    project, problems = inspect_project(home=Path(args.home).expanduser().resolve())
    warnings = [
        f"{project.connection_files[name].relative_to(project.config_dir)} (connection {name!r}): environment variable {variable} "
        f"is not set or empty ({purpose}); set it where the code location and the CLI run"
        for name, connection in project.connections.items()
        for variable, purpose in unset_variables(connection, os.environ)
    ]
    warnings += [
        f"store.yaml: environment variable {variable} is not set or empty ({purpose}); set it where the code location and the CLI run"
        for variable, purpose in store_variables(project)
        if not os.environ.get(variable)
    ]
    for sample in args.sample or []:
        # In the same pass as the configuration's own problems: a person fixes all of them at once.
        path = project.connection_files.get(sample.connection)
        where = f"{path.relative_to(project.config_dir)} (connection {sample.connection!r}): " if path is not None else ""
        problems += [where + line for line in check_sample(project.connections, sample)]
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    for line in warnings:
        print(f"{'error' if args.strict else 'warning'}: {line}", file=sys.stderr)
    for name, path in project.connection_files.items():
        where = f"{path.relative_to(project.config_dir)} (connection {name!r})"
        if not any(line.startswith(where) for line in problems):
            print(f"ok  {name}  ({path})")
    failed = len(problems) + (len(warnings) if args.strict else 0)
    if failed:
        print(f"cdp-pipeline validate: {failed} problem(s) in {project.config_dir}", file=sys.stderr)
        return 2
    if warnings:
        print(f"{len(warnings)} warning(s); --strict makes them errors", file=sys.stderr)
    return 0


def _sample(text: str):
    from cdp_pipeline.sample_check import Sample

    try:
        return Sample.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when every check passed, 1 when one failed, 2 when there is nothing to check."""
    os.environ.setdefault("CDP_HOME", str(Path(args.home).expanduser().resolve()))
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.connection_check import all_passed, check_connection, result_lines
    from cdp_pipeline.errors import ConfigError, UnknownName

    try:
        project = load_project()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    connection = project.connections.get(args.connection)
    if connection is None:
        print(f"cdp-pipeline check: {UnknownName.of('connection', args.connection, list(project.connections))}", file=sys.stderr)
        return 2
    results = check_connection(project, connection)
    for line in result_lines(results):
        print(line)
    return 0 if all_passed(results) else 1


def _preview(args: argparse.Namespace) -> int:
    """Exit 0 when the delivery would import, 1 when it would fail, 2 for an unknown name."""
    home = Path(args.home).expanduser().resolve()
    os.environ.setdefault("CDP_HOME", str(home))
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.preview import preview

    project = load_project(home=home)
    listing, result = preview(project, args.connection, args.goal, args.delivery, rows=args.rows)
    for goal in listing:
        print(f"goal {goal.goal}  (folder {goal.directory or '.'})")
        for line in goal.complete:
            print(f"  complete: {line}")
        for line in goal.merged:
            print(f"  complete, already merged: {line}")
        for line in goal.waiting:
            print(f"  waiting: {line}")
        for line in goal.ignored:
            print(f"  ignored: {line}")
        if not (goal.complete or goal.merged or goal.waiting or goal.ignored):
            print("  (no files)")
    if result is None:
        print("no complete delivery to preview")
        return 0
    print(f"\ndry run of {result.delivery} ({', '.join(result.files)}); nothing was written, no remote file was touched")
    if result.failed is not None:
        print(f"  the import would FAIL: {result.failed}")
        return 1
    print(f"  rows read: {result.rows_read}")
    print(f"  rows rejected: {result.rows_rejected}  values not imported: {result.values_not_imported}")
    for problem in result.rejects:
        print(f"    - {problem}")
    print(f"  compared with: {result.compared_with}")
    print(f"  records: would create {result.would_create}, would match existing {result.would_match}, "
          f"would ignore {result.would_ignore} (no match, new profiles not allowed)")
    for event_type, (count, stored) in result.events.items():
        print(f"  events {event_type}: {count} ({count - stored} new, {stored} already stored)")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    if result.first_rows.width and result.first_rows.height:
        print(f"  first {result.first_rows.height} row(s) as they would be stored:")
        print("    " + "\t".join(result.first_rows.columns))
        for row in result.first_rows.iter_rows():
            print("    " + "\t".join("" if value is None else str(value) for value in row))
    return 0


PROGRESS_HELP = (
    "print a progress line for a stage (download, decrypt, read, merge, export, upload) at most every SECONDS while it runs, "
    "and its total with the rate when it took at least that long (default 5; 0: every stage)"
)


def _progress_lines(every_seconds: float):
    """The engine's stage progress as lines on standard error (standard output keeps the
    command's own summary): at most one line every ``every_seconds`` while stages run, and a
    stage's total with its rate when the stage took that long. Counts only, never a value."""
    import threading
    import time

    from cdp_pipeline import progress

    every = max(every_seconds, 0.0)
    last = [float("-inf")]
    lock = threading.Lock()

    def show(item: progress.Progress) -> None:
        with lock:
            now = time.monotonic()
            if item.finished:
                if item.seconds < every:
                    return
            elif now - last[0] < every:
                return
            last[0] = now
            print(f"  {progress.describe(item)}", file=sys.stderr, flush=True)

    return progress.reporting(show, tick_seconds=every or 0.5)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdp_pipeline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _shared_options_on_every_subcommand(commands: argparse._SubParsersAction) -> None:
    """``--home`` and ``--config-dir`` work after the subcommand too (``cdp-pipeline validate
    --config-dir conf``), the order people type them in. SUPPRESS keeps the value given before
    the subcommand when the option is not repeated after it. Added after every subcommand exists,
    so a new subcommand gets them without remembering to."""
    for subparser in commands.choices.values():
        subparser.add_argument("--home", default=argparse.SUPPRESS, help="CDP_HOME: store, work dir, demo folders")
        subparser.add_argument("--config-dir", default=argparse.SUPPRESS, help="configuration directory (store.yaml, connections/)")
        subparser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show Dagster's events of each run")
        subparser.add_argument("--progress-seconds", type=float, default=argparse.SUPPRESS, metavar="SECONDS", help=PROGRESS_HELP)


def _history(args: argparse.Namespace) -> int:
    os.environ.setdefault("CDP_HOME", str(Path(args.home).expanduser().resolve()))
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.errors import CdpError
    from cdp_pipeline.run_history import history_table, read_history

    project = load_project()
    if args.connection not in project.connections:
        print(f"cdp-pipeline history: no connection named {args.connection!r}; connections: {', '.join(sorted(project.connections))}", file=sys.stderr)
        return 2
    try:
        rows = read_history(project.read_location, args.connection, args.limit)
    except CdpError as error:
        print(error, file=sys.stderr)
        return 2
    print(history_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cdp-pipeline", description=__doc__, epilog="Exit codes: 0 ok, 1 a run, delivery or check failed, "
        "2 a usage or configuration error, 130/143 interrupted (Ctrl-C / SIGTERM). See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--verbose", action="store_true", help="show Dagster's events of each run (quiet by default)")
    parser.add_argument("--home", default=os.environ.get("CDP_HOME", ".cdp_home"), help="CDP_HOME: store, work dir, demo folders")
    parser.add_argument("--progress-seconds", type=float, default=5.0, metavar="SECONDS", help=PROGRESS_HELP)
    parser.add_argument("--config-dir", help="configuration directory (store.yaml, connections/); default CDP_CONFIG_DIR, else the demo's")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="generate the demo delivery and run the demo connection end to end")
    demo.add_argument("--profiles", type=int, default=3000)
    demo.add_argument("--date", default="20260115")
    demo.add_argument("--fresh", action="store_true", help="generate the demo files again")
    demo.set_defaults(handler=_demo)
    run = commands.add_parser("run", help="run a connection now: import complete deliveries, then export")
    run.add_argument("connection", help="connection name (name: in connections/*.yaml)")
    run.add_argument("--full-export", action="store_true", help="export all segment members, not only changed ones")
    run.add_argument(
        "--always-run", action="store_true",
        help="start the run even when nothing is new to import and no export would send anything (records the exports' history rows)",
    )
    run.set_defaults(handler=_run)
    reprocess = commands.add_parser("reprocess", help="import one delivery again although the ledger has it")
    reprocess.add_argument("connection", help="connection name (name: in connections/*.yaml)")
    reprocess.add_argument("partition_key", help="goal:root file name, as shown in the UI's partitions")
    reprocess.set_defaults(handler=_reprocess)
    validate = commands.add_parser("validate", help="check the YAML configuration without the network, reporting every problem at once")
    validate.add_argument("--strict", action="store_true", help="treat unset *_env environment variables as errors")
    validate.add_argument(
        "--sample", action="append", type=_sample, metavar="CONNECTION.GOAL[.FILE]=PATH",
        help="a file like the ones the goal reads: the columns the goal names must be in its header (repeatable; FILE: a linked file's name)",
    )
    validate.set_defaults(handler=_validate)
    check = commands.add_parser("check", help="test a connection before any data moves: secrets, login, folders, permissions, PGP keys")
    check.add_argument("connection", help="connection name (name: in connections/*.yaml)")
    check.set_defaults(handler=_check)
    preview = commands.add_parser(
        "preview", help="list the files a connection's source holds per goal and dry-run one delivery (nothing is written or moved)"
    )
    preview.add_argument("connection", help="connection name (name: in connections/*.yaml)")
    preview.add_argument("goal", nargs="?", help="only this import goal")
    preview.add_argument("--delivery", help="goal:root file name to dry-run (default: the first complete delivery)")
    preview.add_argument("--rows", type=int, default=5, help="rows to show as they would be stored (default 5)")
    preview.set_defaults(handler=_preview)
    history = commands.add_parser("history", help="the connection's runs, newest first: status and cause, files, rows, profiles, events, exports")
    history.add_argument("connection")
    history.add_argument("--limit", type=int, default=50, help="how many runs (default 50)")
    history.set_defaults(handler=_history)
    _shared_options_on_every_subcommand(commands)
    args = parser.parse_args(argv)
    if args.verbose:
        # Runs read this module's QUIET when they start; the whole process is one command line.
        global QUIET
        QUIET = {}
    if args.config_dir:
        # Through the environment, so the Dagster definitions this process loads read the same directory.
        os.environ["CDP_CONFIG_DIR"] = str(Path(args.config_dir).expanduser().resolve())
    from cdp_pipeline.errors import CdpError, ConfigError, UnknownName

    try:
        with _progress_lines(args.progress_seconds):
            return args.handler(args)
    except UnknownName as error:
        print(f"cdp-pipeline {args.command}: {error}", file=sys.stderr)
        return 2
    except (ConfigError, UnusableFolder) as error:
        # The message names the file and key, or the folder, and the fix: that line is the
        # answer, a traceback around it only hides it.
        print(error, file=sys.stderr)
        return 2
    except CdpError as error:
        # A failure the pipeline names on purpose (a folder that does not exist, a refused login,
        # a wrong key): its message says what to fix; exit 1 like any failed run or check.
        print(f"cdp-pipeline {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        # Ctrl-C, or SIGTERM outside a run (inside one, the runs end first and are recorded).
        print(f"stopped before finishing ({stop or 'interrupted'})", file=sys.stderr)
        return 143 if str(stop) == f"signal {signal.SIGTERM.value}" else 130


if __name__ == "__main__":
    sys.exit(main())
