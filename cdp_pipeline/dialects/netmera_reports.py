"""Netmera's report exports besides the push-recipient file (seed ``003_*.txt``: "exporting
campaign or transactional reports", "Sample Campaign Report", "… with External IDs", "Sample
Transactional Campaign Report"), written from the push requests the store holds.

An FTP push file is one campaign: its rows are the campaign's messages, each a push request
event (``dialect.push_event_type``) with ``text``, ``deeplink``, ``source_file`` and
``source_line``. The reports cover the push requests of the export's profiles in the goal's
timeline period (the last day without one), so consent and the segment apply as to every file of
the goal. The store knows what was requested, not what a device received, so the reports carry no
delivery, open or click figures.

* ``campaign`` → ``<appkey>_CAMPAIGN_REPORTS_<date>.csv``: one row per campaign (push file).
* ``campaign_external_ids`` → ``<appkey>_<msgID>_PUSH_REPORTS_<date>.csv`` per campaign, Netmera's
  name for the report "with external ID": one row per recipient message; msgID is the push file's
  name without its extension (characters other than letters, digits, ``-`` and ``_`` become ``_``).
* ``transactional`` → ``<appkey>_TRANSACTIONAL_REPORTS_<date>.csv``: one row per push request.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.dialects.netmera import NetmeraSettings, report_file_names
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.exports.columns import formula_guarded
from cdp_pipeline.store.exports.files import write_query_csv
from cdp_pipeline.store.schema import event_table, literal, quote

NetmeraReport = Literal["campaign", "campaign_external_ids", "transactional"]
#: the columns of each report, in file order.
CAMPAIGN_COLUMNS = ("Campaign", "First Request", "Last Request", "Push Requests", "Recipients", "Distinct Texts", "Deeplinks")
RECIPIENT_COLUMNS = ("ExternalID", "Text", "Deeplink", "Requested At", "Line")
TRANSACTIONAL_COLUMNS = ("ExternalID", "Text", "Deeplink", "Requested At", "Campaign", "Line")
_TIME = "'%Y-%m-%d %H:%M:%S'"


def campaign_message_id(source_file: str) -> str:
    """The msgID of a campaign in Netmera's report name: the push file's name without extension."""
    stem = source_file.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "campaign"


def report_period(since: datetime | None, until: datetime | None, now: datetime) -> tuple[datetime, datetime | None]:
    """The goal's timeline period, or the last day up to ``now`` ("reports are sent nightly")."""
    if since is None and until is None:
        return now - timedelta(days=1), None
    return since or datetime.min, until


def write_netmera_reports(
    conn: duckdb.DuckDBPyConnection,
    settings: NetmeraSettings | None,
    catalog: Catalog,
    goal: ExportGoal,
    directory: Path,
    *,
    since: datetime,
    until: datetime | None,
    now: datetime,
) -> list[tuple[Path, int]]:
    """Write the goal's ``netmera_reports`` for the exported profiles (``export_rows``) into
    ``directory``; returns each file with its rows, in the order they should be sent."""
    if settings is None or settings.appkey is None:
        raise ConfigError(
            f"export goal {goal.name!r}: netmera_reports needs the connection's dialect: {{type: netmera, appkey: …}} "
            "(the appkey names the reports)"
        )
    event_type = catalog.event_types.get(settings.push_event_type)
    if event_type is None or "text" not in event_type.properties:
        raise ConfigError(
            f"export goal {goal.name!r}: netmera_reports reads the push requests of event type {settings.push_event_type!r}, "
            "which store.yaml must declare with the properties text, deeplink, source_file, source_line"
        )
    external_id = settings.external_id_property
    if external_id not in catalog.profile_properties:
        raise ConfigError(f"export goal {goal.name!r}: netmera_reports: dialect.external_id_property {external_id!r} is not a profile property")

    def column(name: str) -> str:
        return f"CAST(e.{quote(name)} AS VARCHAR)" if name in event_type.properties else "CAST(NULL AS VARCHAR)"

    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE netmera_pushes AS
        SELECT CAST(p.{quote(external_id)} AS VARCHAR) AS external_id, e.event_time, e.event_id,
               {column('text')} AS text, {column('deeplink')} AS deeplink,
               coalesce({column('source_file')}, '') AS source_file, {column('source_line')} AS source_line
        FROM {quote(event_table(settings.push_event_type))} e JOIN profiles p ON p.profile_id = e.profile_id
        WHERE e.profile_id IN (SELECT _profile_id FROM export_rows WHERE _changed)
          AND e.event_time >= $since AND ($until IS NULL OR e.event_time < $until)
        """,
        {"since": since, "until": until},
    )
    suffix = ".csv.gz" if goal.target.gzip else ".csv"
    appkey = settings.appkey
    stamp = now.strftime("%Y%m%d")

    def text(expression: str, header: str) -> str:
        # Values from the customer's files: guarded like every text cell of the goal.
        return f"{formula_guarded(expression, typed=False) if goal.formula_guard else expression} AS {quote(header)}"

    written: list[tuple[Path, int]] = []
    try:
        if "campaign" in goal.netmera_reports:
            query = f"""
                SELECT {text('source_file', 'Campaign')}, strftime(min(event_time), {_TIME}) AS "First Request",
                       strftime(max(event_time), {_TIME}) AS "Last Request", count(*) AS "Push Requests",
                       count(DISTINCT external_id) AS "Recipients", count(DISTINCT text) AS "Distinct Texts",
                       {text("array_to_string(list_sort(list_distinct(list(deeplink))), '|')", 'Deeplinks')}
                FROM netmera_pushes GROUP BY source_file ORDER BY min(event_time), source_file
            """
            path = directory / f"{appkey}_CAMPAIGN_REPORTS_{stamp}{suffix}"
            written.append((path, write_query_csv(conn, goal, query, path, list(CAMPAIGN_COLUMNS), f"export goal {goal.name!r}, campaign report")))
        if "campaign_external_ids" in goal.netmera_reports:
            campaigns = [row[0] for row in conn.execute("SELECT DISTINCT source_file FROM netmera_pushes ORDER BY 1").fetchall()]
            taken: set[str] = set()
            for source_file in campaigns:
                message_id = campaign_message_id(source_file)
                number = 1
                while (candidate := message_id if number == 1 else f"{message_id}_{number}") in taken:
                    number += 1
                taken.add(candidate)
                query = f"""
                    SELECT {text('external_id', 'ExternalID')}, {text('text', 'Text')}, {text('deeplink', 'Deeplink')},
                           strftime(event_time, {_TIME}) AS "Requested At", source_line AS "Line"
                    FROM netmera_pushes WHERE source_file = {literal(source_file)} ORDER BY source_line, event_id
                """
                path = directory / f"{report_file_names(appkey, stamp, candidate)}{suffix}"
                written.append((path, write_query_csv(conn, goal, query, path, list(RECIPIENT_COLUMNS), f"export goal {goal.name!r}, report of {candidate}")))
        if "transactional" in goal.netmera_reports:
            query = f"""
                SELECT {text('external_id', 'ExternalID')}, {text('text', 'Text')}, {text('deeplink', 'Deeplink')},
                       strftime(event_time, {_TIME}) AS "Requested At", {text('source_file', 'Campaign')}, source_line AS "Line"
                FROM netmera_pushes ORDER BY event_time, source_file, source_line, event_id
            """
            path = directory / f"{appkey}_TRANSACTIONAL_REPORTS_{stamp}{suffix}"
            written.append((path, write_query_csv(conn, goal, query, path, list(TRANSACTIONAL_COLUMNS), f"export goal {goal.name!r}, transactional report")))
    finally:
        conn.execute("DROP TABLE IF EXISTS netmera_pushes")
    return written
