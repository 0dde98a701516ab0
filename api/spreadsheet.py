"""CSV for spreadsheets: what the API and the console export is opened in Excel and its kind."""

import csv
from datetime import datetime


def cell(value) -> str:
    """A spreadsheet reads a cell starting with = + - @ (or a tab or CR) as a formula: such text is quoted with a '."""
    text = value.isoformat() if isinstance(value, datetime) else "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class writer:
    """`csv.writer` whose every cell goes through `cell`: every CSV the API and the console write is made
    with it (a product id is the caller's text: `=HYPERLINK(...)` would be a live link in ops' sheet)."""

    def __init__(self, out, **options):
        self._rows = csv.writer(out, **options)

    def writerow(self, values) -> None:
        self._rows.writerow([cell(value) for value in values])
