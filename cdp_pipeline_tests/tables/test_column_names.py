"""normalise_column_name: the one rule that turns a header cell into a column name."""

from __future__ import annotations

import pytest

from cdp_pipeline.tables.column_names import normalise_column_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Customer ID", "customer_id"),
        ("  E-Mail ", "e_mail"),
        ("\ufeffcustomer_id", "customer_id"),
        ("__Last--Name__", "last_name"),
        ("2nd Email", "_2nd_email"),
        ("Imię", "imi"),
        ("A.B/C", "a_b_c"),
    ],
)
def test_normalise_column_name(raw: str, expected: str) -> None:
    assert normalise_column_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "---", "\ufeff"])
def test_normalise_column_name_rejects_empty(raw: str) -> None:
    with pytest.raises(ValueError, match="empty after normalisation"):
        normalise_column_name(raw)
