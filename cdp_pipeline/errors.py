"""Error types shared by the engine.

Two families matter to the orchestration layer:

* ``TransientError``: the same call may succeed later (network reset, timeout, lock held).
  Dagster retries these with backoff; sensors skip the tick with the reason.
* everything else derived from ``CdpError`` is terminal: retrying cannot help
  (bad credentials, changed host key, wrong PGP key, a malformed file). These fail
  the run once, with a message that says what to do.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class CdpError(Exception):
    """Base class for errors the pipeline raises on purpose."""


class TransientError(CdpError):
    """A failure that may go away on its own; safe to retry with backoff."""


class ConfigError(CdpError):
    """A connection or store YAML that does not validate."""


class UnknownName(CdpError):
    """A connection, goal or delivery the configuration or the source does not have, named on the
    command line; the message lists the close matches (a typo is the usual cause)."""

    @classmethod
    def of(cls, kind: str, name: str, known: list[str]) -> UnknownName:
        close = difflib.get_close_matches(name, known, n=3)
        if close:
            hint = f"; did you mean {', '.join(close)}?"
        else:
            hint = f"; the known ones are {', '.join(sorted(known)[:10])}{' ...' if len(known) > 10 else ''}" if known else "; there is none yet"
        return cls(f"no {kind} named {name!r}{hint}")


class TransportError(CdpError):
    """A terminal transfer failure (authentication, host key, permission, missing path)."""


class TransientTransportError(TransportError, TransientError):
    """A transfer failure worth retrying (reset, timeout, throttling)."""


class FileVanishedError(TransportError):
    """A listed file disappeared (or changed) before it could be read."""


class ExportCollisionError(CdpError):
    """An export would have replaced a file already on the target; nothing was sent."""


class CryptoError(CdpError):
    """A PGP failure: wrong key, wrong passphrase, corrupt or unsigned message."""


@dataclass
class InputProblem:
    """One bad cell or line of an input file, as shown to the user and kept in the reject report."""

    file: str
    line: int | None
    column: str | None
    reason: str
    fix: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.column:
            where += f", column {self.column!r}"
        text = f"{where}: {self.reason}"
        if self.fix:
            text += f". {self.fix}"
        return text


class InputError(CdpError):
    """A delivery that cannot be imported as it is; names file, line, column and the fix."""

    def __init__(self, problems: list[InputProblem] | InputProblem, *, limit: int = 20):
        if isinstance(problems, InputProblem):
            problems = [problems]
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{len(problems)} problem(s) in the delivery:\n{shown}{more}")
