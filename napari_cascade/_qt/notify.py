"""Notifications the user can read in the toast.

napari's toast shows one elided line until it is expanded, so a message must say what happened in
its first words: no "napari-cascade:" prefix (it used to be all a toast showed), the outcome
first, details after. Every dock notifies through these three functions.
"""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning


def info(message: str) -> None:
    show_info(message)


def warn(message: str) -> None:
    show_warning(message)


def error(message: str) -> None:
    show_error(message)
