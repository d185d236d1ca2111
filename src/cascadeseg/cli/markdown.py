"""Markdown tables for the command line's reports (evaluate, models, bench)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
    lines = [tuple(header), tuple("---" for _ in header), *(tuple(str(c) for c in r) for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
