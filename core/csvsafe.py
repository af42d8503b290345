"""CSV files that are safe to open in a spreadsheet: no cell is read as a formula.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK("http://evil.example","click")``
in a logged query would become a link). As spreadsheet-facing exporters do (OWASP "CSV
injection"), such text cells get a leading apostrophe, which spreadsheets show as plain text.
Numbers (a negative score, ``-0.24``) stay numbers. Every CSV the project writes goes through
``write_csv``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def safe_cell(value):
    """The value as a CSV cell a spreadsheet will not run: text starting like a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text cell (and column name) passed through ``safe_cell``."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(safe_cell)
    safe.columns = [safe_cell(column) for column in safe.columns]
    return safe


def write_csv(frame: pd.DataFrame, path: str | Path, **options) -> Path:
    """``frame.to_csv(path, index=False)`` with formula-like text neutralised."""
    safe_frame(frame).to_csv(path, index=False, **options)
    return Path(path)
