"""Test-only hook: kill this process with SIGKILL at a named point of a run.

The fault-injection suite (``cdp_pipeline_tests/scenarios/test_kill_anywhere.py``) sets
``CDP_PIPELINE_FAULT_AT`` on a real ``cdp-pipeline run`` to prove that a run killed at any point
leaves nothing behind that a rerun does not repair. A timer-based kill would land somewhere else on
every machine; a named point makes each case repeatable.

When the variable is unset (every production run) ``fault_point`` only reads the environment and
returns. Never set it outside tests: the process dies without cleaning up, on purpose.

Value: ``<point>`` (the first time the run reaches it) or ``<point>#<n>`` (the n-th time in this
process, e.g. ``merge_late#2`` for the second delivery's merge). Points: see ``FAULT_POINTS``.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "CDP_PIPELINE_FAULT_AT"

#: where a run can be killed, in the order a run passes them.
FAULT_POINTS = (
    "fetch",  # files downloaded, the manifest not yet written
    "decrypt",  # the keyring's GnuPG home exists and the first plaintext file is written
    "tables",  # the import tables built, not yet saved for the merge
    "merge_early",  # inside the merge transaction, before any row is written
    "merge_late",  # inside the merge transaction, every row written, before COMMIT
    "after_commit",  # the merge committed; remote files not finished, plaintext not removed
    "export",  # export files written in plaintext in the work folder, not yet encrypted
    "upload",  # export files encrypted, nothing uploaded yet
    # At the end of a connection run (Run now, a schedule), after every import and export; after
    # the merge in a sensor's import run.
    "publish",  # the analysts' copy half made: its temporary file written, not yet renamed
    # Passed by every import step with work_storage s3, so it has no place in the order above.
    "work_push",  # a step's folders uploaded to the work bucket, its manifests and markers not yet
)

_reached: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Die here with SIGKILL when ``CDP_PIPELINE_FAULT_AT`` names this point (and this pass)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("#")
    if name not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={wanted!r}: not a fault point; use one of {', '.join(FAULT_POINTS)} (optionally #n)")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != int(nth or 1):
        return
    # The whole process group when this process leads it (the suite starts the run in its own
    # session, so gpg children die with it, as they do when an operator kills a process tree);
    # never the group of a shell that merely started us.
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
