"""Terminal tables (rich): how every verb shows rows of results."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table


def print_table(title: str, rows: Sequence[Mapping[str, object]], console: Console | None = None) -> None:
    """Rows of dicts with the same keys → one table; floats shown with 2 decimals."""
    if not rows:
        return
    table = Table(title=title, title_justify="left", min_width=60)
    columns = list(rows[0].keys())
    for column in columns:
        numeric = isinstance(rows[0][column], (int, float))
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    (console or Console()).print(table)
