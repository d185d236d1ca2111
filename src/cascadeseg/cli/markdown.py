"""Markdown tables for the command line's reports (evaluate, models, bench)."""

from ..benchmarking.report import markdown_table

__all__ = ["markdown_table"]
