"""Per connection a job ``<connection>_preview``: the ``cdp-pipeline preview`` of that connection,
launchable from the UI ("Scan now" plus a dry run of one delivery).

One op, no assets: the store is only read and the remote files are only listed and downloaded,
so launching it never changes what the import jobs will do. The op's output metadata shows the
files per goal and what a merge would do, as counts; the first rows only when the store opts in
to customer values in the event log (``store.ui_preview_rows``).
"""

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.errors import CdpError, InputProblem
from cdp_pipeline.preview import preview
from cdp_pipeline.preview_report import dry_run_markdown, files_markdown, reason_without_values, rejects_markdown, rows_markdown


def preview_job_name(connection: str) -> str:
    return f"{connection}_preview"


def _where(problem: InputProblem) -> str:
    return problem.file + (f" line {problem.line}" if problem.line is not None else "") + (f", column {problem.column!r}" if problem.column else "")


class PreviewConfig(dg.Config):
    """Both optional: by default every goal is listed and the first complete delivery is dry-run."""

    goal: str | None = None
    delivery: str | None = None  # goal:root file name, as the partitions show it


def build_preview_job(connection: Connection) -> dg.JobDefinition:
    name = connection.name

    @dg.op(
        name=f"{name}_preview_delivery",
        description=f"Preview connection {name}: the files per goal and what importing one delivery would do (nothing is written).",
        out=dg.Out(dg.Nothing),
        tags={"cdp/connection": name},
    )
    def preview_op(context: dg.OpExecutionContext, config: PreviewConfig) -> dg.Output:
        # The configuration as the run's process loads it, so a fixed YAML is previewed without a reload.
        project = project_config()
        rows = project.store.ui_preview_rows
        try:
            listing, result = preview(project, name, config.goal, config.delivery, rows=rows)
        except CdpError as error:
            # An unknown goal or delivery, a refused login, a wrong key: the message names the fix.
            raise dg.Failure(description=f"preview of {name}: {error}", allow_retries=False) from None
        metadata: dict[str, dg.MetadataValue] = {
            "files": dg.MetadataValue.md(files_markdown(listing)),
            "deliveries_complete": dg.MetadataValue.int(sum(len(g.complete) for g in listing)),
            "deliveries_waiting": dg.MetadataValue.int(sum(len(g.waiting) for g in listing)),
            "files_ignored": dg.MetadataValue.int(sum(len(g.ignored) for g in listing)),
        }
        if result is None:
            context.log.info(f"connection {name}: no complete delivery to preview")
            return dg.Output(None, metadata=metadata)
        problems = result.failed.problems if result.failed is not None else result.rejects
        names = {p.column for p in problems if p.column} | set(result.first_rows.columns)
        metadata["delivery"] = dg.MetadataValue.text(result.delivery)
        metadata["rejects"] = dg.MetadataValue.md(rejects_markdown(problems, show_values=rows > 0, names=names))
        if result.failed is not None:
            shown = "; ".join(str(p) if rows else _where(p) + ": " + reason_without_values(p, names) for p in problems[:5])
            raise dg.Failure(
                description=f"the import of {result.delivery} would fail: {len(problems)} problem(s): {shown}",
                metadata=metadata, allow_retries=False,
            )
        metadata.update({
            "dry_run": dg.MetadataValue.md(dry_run_markdown(result)),
            "rows_read": dg.MetadataValue.int(result.rows_read),
            "rows_rejected": dg.MetadataValue.int(result.rows_rejected),
            "values_not_imported": dg.MetadataValue.int(result.values_not_imported),
            "profiles_would_create": dg.MetadataValue.int(result.would_create),
            "profiles_would_match": dg.MetadataValue.int(result.would_match),
            "profiles_would_ignore": dg.MetadataValue.int(result.would_ignore),
            "events": dg.MetadataValue.json({t: {"rows": n, "already_stored": s} for t, (n, s) in result.events.items()}),
        })
        if rows:
            # Customer values in Dagster's event log, for as long as it keeps the run: opted in.
            metadata["first_rows"] = dg.MetadataValue.md(rows_markdown(result.first_rows))
        return dg.Output(None, metadata=metadata)

    @dg.job(
        name=preview_job_name(name),
        description=f"{connection.description or name}: see what the next import would do (nothing is written, no remote file is touched).",
        tags={"cdp/connection": name},
        executor_def=dg.in_process_executor,
    )
    def preview_job() -> None:
        preview_op()

    return preview_job


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_preview_job(c) for c in project_config().connections.values()])
