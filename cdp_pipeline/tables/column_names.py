"""Column names: how a header cell becomes the name the configuration uses for that column.

One rule for every place that names a column (files, ``csv.column_names``, processors, dialects),
so that a name written in the YAML matches the header however the sender capitalised or punctuated it.
"""

from __future__ import annotations

import re

from cdp_pipeline.errors import InputError, InputProblem

_NAME_RUN = re.compile(r"[^a-z0-9]+")


# --------------------------------------------------------------------------- column names


def normalise_column_name(name: str) -> str:
    """Turn a header cell into the column name used everywhere in the configuration.

    The rule, applied in this order:

    1. strip a byte-order mark (U+FEFF) and surrounding whitespace;
    2. lower-case;
    3. replace every run of characters outside ``[a-z0-9]`` with a single ``_``
       (so accented letters become ``_`` too: ``Imię`` → ``imi``);
    4. strip leading and trailing ``_``;
    5. prefix a name that starts with a digit with ``_`` (``2nd Email`` → ``_2nd_email``).

    Examples: ``"Customer ID"`` → ``customer_id``, ``"E-Mail "`` → ``e_mail``,
    ``"\\ufeffcustomer_id"`` → ``customer_id``.

    Raises ``ValueError`` when nothing is left (a blank header cell or one made only of
    punctuation); ``read_delimited`` turns that into an ``InputError`` naming the file and line.
    """
    cleaned = name.replace("\ufeff", "").strip().lower()
    cleaned = _NAME_RUN.sub("_", cleaned).strip("_")
    if not cleaned:
        raise ValueError(f"column name {name!r} is empty after normalisation (it has no letters or digits)")
    if cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def normalised_names(raw_names: list[str | None], display_name: str, header_line: int | None) -> list[str]:
    """Normalise every header name; blanks and collisions become one InputError listing them all."""
    problems: list[InputProblem] = []
    names: list[str] = []
    raw_names_by_name: dict[str, list[str]] = {}
    for position, raw in enumerate(raw_names, start=1):
        try:
            normalised = normalise_column_name(raw or "")
        except ValueError:
            problems.append(
                InputProblem(
                    file=display_name,
                    line=header_line,
                    column=raw or None,
                    reason=f"header column {position} has no usable name ({raw!r})",
                    fix="Give every column a name with at least one letter or digit, or set csv.column_names",
                )
            )
            normalised = f"__blank_{position}"
        names.append(normalised)
        raw_names_by_name.setdefault(normalised, []).append(raw or "")
    for normalised, raws in raw_names_by_name.items():
        if len(raws) > 1 and not normalised.startswith("__blank_"):
            listed = ", ".join(repr(raw) for raw in raws)
            problems.append(
                InputProblem(
                    file=display_name,
                    line=header_line,
                    column=raws[0],
                    reason=f"header columns {listed} all become {normalised!r} after normalisation",
                    fix="Rename the duplicates in the file (names are compared after lower-casing and turning "
                    "non-alphanumerics into '_'), or set csv.column_names",
                )
            )
    if problems:
        raise InputError(problems)
    return names

