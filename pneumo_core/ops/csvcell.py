"""CSV cells a spreadsheet will not run: text that starts like a formula is prefixed with a single quote.

A worklist or audit export is opened in Excel, LibreOffice or Google Sheets, which treat a cell starting with
``=``, ``+``, ``-`` or ``@`` (and, in some, a leading tab or carriage return) as a formula: a file named
``=HYPERLINK(...)`` or ``+cmd|' /C calc'!A0.png`` would run. Every CSV the project writes passes its cells
through ``safe_cell``. Only text is changed; numbers (negative ones included) are written as numbers.

Rows end in CR LF (``LINE_END``, as RFC 4180 says): Python's csv writer quotes a cell holding a character of
its line ending, so with a bare LF a carriage return inside a file name went out unquoted, and a spreadsheet
started a new row there, whose first cell could be a formula.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINE_END = "\r\n"


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text that starts like a formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
