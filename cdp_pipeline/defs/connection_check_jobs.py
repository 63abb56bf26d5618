"""Per connection a job ``<connection>_check``: the ``cdp-pipeline check`` of that connection,
launchable from the UI before any data moves.

One op, no assets and no store: the job proves the connection works (secrets set, login and host
key, folders listed and read, write permissions probed, PGP keys imported) and shows every check
as a Markdown table in the op's metadata. It fails when any check fails, so a red run in the UI
means the same as exit code 1 on the command line.
"""

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.connection_check import CheckResult, all_passed, check_connection, markdown_table
from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.defs.project import project_config


def check_job_name(connection: str) -> str:
    return f"{connection}_check"


def _metadata(results: list[CheckResult]) -> dict[str, dg.MetadataValue]:
    failed = [r for r in results if not r.passed]
    return {
        "checks": dg.MetadataValue.md(markdown_table(results)),
        "checks_passed": dg.MetadataValue.int(len(results) - len(failed)),
        "checks_failed": dg.MetadataValue.int(len(failed)),
    }


def build_check_job(connection: Connection) -> dg.JobDefinition:
    name = connection.name

    @dg.op(
        name=f"{name}_check_connection",
        description=f"Check connection {name}: secrets, login, host key, folders, permissions, PGP keys.",
        out=dg.Out(dg.Nothing),
        tags={"cdp/connection": name},
    )
    def check_connection_op(context: dg.OpExecutionContext) -> dg.Output:
        # The configuration as the run's process loads it, so a fixed YAML is checked without a reload.
        project = project_config()
        results = check_connection(project, project.connections[name])
        metadata = _metadata(results)
        if not all_passed(results):
            failed = [r for r in results if not r.passed]
            raise dg.Failure(
                description=f"{len(failed)} of {len(results)} checks of connection {name} failed: "
                + "; ".join(f"{r.name}: {r.detail}" for r in failed),
                metadata=metadata,
            )
        context.log.info(f"all {len(results)} checks of connection {name} passed")
        return dg.Output(None, metadata=metadata)

    @dg.job(
        name=check_job_name(name),
        description=f"{connection.description or name}: test the connection before any data moves (nothing is imported).",
        tags={"cdp/connection": name},
        executor_def=job_executor(),
    )
    def check_job() -> None:
        check_connection_op()

    return check_job


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_check_job(c) for c in project_config().connections.values()])
