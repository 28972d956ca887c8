"""Result tables that are never cut: rich tables that fold long cells in a terminal, Markdown in a pipe."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    if not sys.stdout.isatty():
        # A pipe or a file: Markdown, whose width nothing limits.
        if title:
            print(f"{title}\n")
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" for _ in headers) + "|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")  # fold, never an ellipsis
    for row in cells:
        table.add_row(*row)
    Console().print(table)
