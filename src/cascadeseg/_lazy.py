"""Package names imported on first use (PEP 562), one way for every package that has them.

``cascadeseg.models``, ``.losses``, ``.training`` and ``.inference`` keep what needs torch out of
their ``import``: the napari docks import their light parts (catalogues, names, configs, cards) on
the GUI thread as they open, where importing torch froze the window for about a second.
``cascadeseg.preprocessing`` does the same for SimpleITK and scipy.ndimage (reading a card checks
its preprocessing against ``preprocessing.presets``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(namespace: dict[str, Any], exports: Mapping[str, str], name: str) -> Any:
    """For a package's ``__getattr__``: ``name`` from the submodule ``exports`` maps it to (``".base"``),
    imported now and kept in the package's ``namespace`` (its ``globals()``) so that the next access
    is a plain attribute. An unknown name raises ``AttributeError`` as Python expects."""
    module = exports.get(name)
    package = namespace["__name__"]
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, package), name)
    namespace[name] = value
    return value
