"""A preview as Markdown tables for the Dagster UI: the files per goal and the dry run's counts.

Dagster's event log keeps what a run shows for as long as it keeps the run, so the report holds
counts, file names and reasons only. Cell values appear only when the store opts in with
``ui_preview_rows``: the first rows, and the quoted values some reject reasons carry (a number
that does not parse). Without the opt-in those values are replaced by a placeholder.
"""

from __future__ import annotations

import re

import polars as pl

from cdp_pipeline.errors import InputProblem
from cdp_pipeline.preview import DryRun, GoalFiles

HIDDEN = "(value hidden)"
# A value a reason quotes: 'abc' as repr() writes it (the reasons quote values and names this way).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reason_without_values(problem: InputProblem, names: set[str]) -> str:
    """The reason with every quoted literal that is not a known name (a column, a file) hidden:
    names are configuration, a literal that is none of them may be a customer's value."""
    known = names | {problem.column or "", problem.file}

    def hide(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0)[1:-1] in known else HIDDEN

    text = _QUOTED.sub(hide, problem.reason)
    fix = _QUOTED.sub(hide, problem.fix) if problem.fix else ""
    return f"{text}. {fix}" if fix else text


def files_markdown(listing: list[GoalFiles]) -> str:
    """One row per file a goal's folder holds: complete, already merged, waiting or ignored, and why."""
    rows = ["| goal | folder | state | file and why |", "|---|---|---|---|"]
    for goal in listing:
        states = [("complete", goal.complete), ("complete, already merged", goal.merged), ("waiting", goal.waiting), ("ignored", goal.ignored)]
        entries = [(state, line) for state, lines in states for line in lines] or [("(no files)", "")]
        rows += [f"| {_cell(goal.goal)} | {_cell(goal.directory or '.')} | {state} | {_cell(line)} |" for state, line in entries]
    return "\n".join(rows)


def rejects_markdown(problems: list[InputProblem], *, show_values: bool, names: set[str], limit: int = 50) -> str:
    rows = ["| file | line | column | reason |", "|---|---|---|---|"]
    for problem in problems[:limit]:
        reason = (f"{problem.reason}. {problem.fix}" if problem.fix else problem.reason) if show_values else reason_without_values(problem, names)
        line = "" if problem.line is None else problem.line
        rows.append(f"| {_cell(problem.file)} | {line} | {_cell(problem.column or '')} | {_cell(reason)} |")
    if len(problems) > limit:
        rows.append(f"| … | | | and {len(problems) - limit} more |")
    return "\n".join(rows)


def dry_run_markdown(result: DryRun) -> str:
    """What a merge would do, in words: counts only."""
    lines = [
        f"Dry run of **{result.delivery}** ({', '.join(result.files)}): nothing was written, no remote file was touched.",
        "",
        f"- rows read: {result.rows_read}",
        f"- rows rejected: {result.rows_rejected}, values not imported: {result.values_not_imported}",
        f"- compared with: {result.compared_with}",
        f"- records: would create {result.would_create}, would match existing {result.would_match}, "
        f"would ignore {result.would_ignore} (no match, new profiles not allowed)",
    ]
    lines += [f"- events {event_type}: {count} ({count - stored} new, {stored} already stored)" for event_type, (count, stored) in result.events.items()]
    lines += [f"- warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def rows_markdown(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return "(no rows)"
    rows = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + "---|" * frame.width]
    rows += ["| " + " | ".join("" if v is None else _cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(rows)
