"""Claims on the ``duckdb_write`` concurrency pool that nobody will ever give back.

A step claims the pool's one slot before it writes the store and Dagster frees it when the step
ends. A process killed with ``kill -9`` never ends its steps: its claim stays, and every later
writer (sensor runs, ``cdp-pipeline run``, exports) waits for it forever. Daemon runs are covered
by Dagster's run monitoring (the code server marks a run whose worker died as failed, and
``run_monitoring.free_slots_after_run_end_seconds`` in dagster.yaml frees the slots of ended runs).
Runs of ``cdp-pipeline run`` execute in the command's own process, which nothing watches, so the
command tags its runs with its process identity and, at every start, frees the claims of runs
whose process is gone.

A waiting ``cdp-pipeline run`` must also stop on SIGTERM: while Dagster waits for a slot it only
notes the signal (it acts on it inside a step), so a watcher ends the wait itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

PID_TAG = "cdp/pid"
HOST_TAG = "cdp/host"
PROCESS_START_TAG = "cdp/process_start"
POOL = "duckdb_write"
#: Seconds a run may take to end on its own after SIGTERM (a step in progress raises and fails
#: cleanly) before a run still waiting for the pool is ended by the watcher.
SIGTERM_GRACE_SECONDS = 10.0


def _process_start(pid: int) -> str | None:
    """Boot id and start time of a process: a pid reused after a restart or wrap-around differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # Field 22 (start time in clock ticks since boot); fields are counted after the ")" closing
    # the command name, which may itself hold spaces and parentheses.
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def process_tags() -> dict[str, str]:
    """Tags that let a later process tell whether this one still runs."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    start = _process_start(os.getpid())
    if start is not None:
        tags[PROCESS_START_TAG] = start
    return tags


def process_is_gone(tags: dict[str, str]) -> bool:
    """True only when the run's process is certainly gone; a run from another host, or one
    without the tags, is never judged (its claim is left to Dagster's run monitoring)."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    recorded = tags.get(PROCESS_START_TAG)
    current = _process_start(pid)
    return recorded is not None and current is not None and recorded != current


def release_dead_claims(instance: dg.DagsterInstance) -> list[str]:
    """Free the pool claims of runs that ended or whose process is gone; returns what was done."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    released = []
    for run_id in sorted(storage.get_concurrency_run_ids()):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            if not process_is_gone(dict(run.tags)):
                continue
            instance.report_run_failed(
                run, f"The process of this run (pid {run.tags[PID_TAG]}) is gone (killed or crashed); its claim on the {POOL} pool was released."
            )
            why = f"its process {run.tags[PID_TAG]} is gone"
        else:
            why = "it has ended" if run is not None else "it no longer exists"
        storage.free_concurrency_slots_for_run(run_id)
        released.append(f"released the {POOL} claim of run {run_id}: {why}")
    return released


def _runs_of_this_process(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    return [run for run in instance.get_runs(filters=filters) if not run.is_finished]


@contextlib.contextmanager
def ends_on_sigterm(instance: dg.DagsterInstance, echo: Callable[[str], None] = print) -> Iterator[threading.Event]:
    """While the body runs Dagster jobs in this process, SIGTERM (or SIGINT) ends the process even
    when a run is only waiting for the pool: after a grace period the runs of this process that
    have not ended are marked failed, their claims freed, and the process exits with 143.

    ``signal.set_wakeup_fd`` sees every signal whatever handler Dagster installs meanwhile; the
    handlers themselves are left to Dagster, so a step in progress still fails the way it would.
    Yields an event that is set once a signal came: start no further run then."""
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term in (signal.SIG_DFL, None):
        # Without a handler SIGTERM kills at once and the wakeup byte is never read; a handler
        # that raises ends the command the usual way (outside a run) and lets the watcher act.
        def _raise_interrupt(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _raise_interrupt)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                reader.settimeout(0.5)
                data = reader.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            if not {signal.SIGTERM.value, signal.SIGINT.value} & set(data):
                continue
            stopping.set()
            if done.wait(SIGTERM_GRACE_SECONDS):
                return
            for run in _runs_of_this_process(instance):
                instance.report_run_failed(run, "Stopped by SIGTERM while waiting; the run did not start writing the store.")
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
                echo(f"  stopped by a signal: run {run.run_id} marked failed, its {POOL} claim released")
            os._exit(143)

    watcher = threading.Thread(target=watch, name="sigterm-watch", daemon=True)
    watcher.start()
    try:
        yield stopping
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        # A byte that is no signal wakes the watcher from its receive now, not at its next
        # timeout: joining it cost every `cdp-pipeline run` up to half a second of wall.
        with contextlib.suppress(OSError):
            writer.send(b"\0")
        watcher.join(timeout=2)
        reader.close()
        writer.close()
