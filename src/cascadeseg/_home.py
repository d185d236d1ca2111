"""The one home folder of napari-cascade: user models, the local training set, recovery files and
the GUI's training runs all live under :func:`home_dir`.

``$CASCADESEG_HOME`` wins (``~`` and ``$VARS`` expanded, made absolute, so ``CASCADESEG_HOME='~/x'``
means the same folder to every part of the program, whatever the working directory). Otherwise the
platform's per-user data folder from ``platformdirs``, as napari itself uses
(``~/.local/share/cascadeseg`` on Linux, ``~/Library/Application Support/cascadeseg`` on macOS,
``%LOCALAPPDATA%\\cascadeseg`` on Windows). A ``~/.cascadeseg`` made by an earlier version keeps
being used, so models and annotations saved there do not disappear after an upgrade.

Nothing here creates a folder: listing models must not write into the user's home.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "home_dir"]

HOME_ENV = "CASCADESEG_HOME"
_APP = "cascadeseg"


def home_dir() -> Path:
    """The home folder (see the module docstring); an absolute path, not created here."""
    configured = os.environ.get(HOME_ENV, "").strip()
    if configured:
        return Path(os.path.expandvars(configured)).expanduser().absolute()
    legacy = Path.home() / f".{_APP}"
    if legacy.is_dir():
        return legacy
    import platformdirs

    return Path(platformdirs.user_data_dir(_APP, appauthor=False))
