"""Create models by name and list what each supports.

Architectures register themselves with :func:`register` when their module is imported. The module
list below is imported lazily on first use, so importing :mod:`cascadeseg.models` stays cheap and
one broken architecture file reports itself by name instead of hiding the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelConfigError
from .catalogue import ModelInfo, catalogue_modules, model_info

if TYPE_CHECKING:  # the architectures (and torch) are imported on first use, not with the listing
    from .base import SegmentationModel

# One file per architecture (registry name -> module), from the catalogue.
ARCHITECTURE_MODULES: dict[str, str] = catalogue_modules()

_REGISTRY: dict[str, type[SegmentationModel]] = {}
M = TypeVar("M", bound="type[SegmentationModel]")


def register(cls: M) -> M:
    """Class decorator: make ``cls`` creatable by ``cls.info.name``."""
    _REGISTRY[cls.info.name] = cls
    return cls


def _load(name: str) -> type[SegmentationModel]:
    if name not in ARCHITECTURE_MODULES:
        raise ModelConfigError(f"unknown model '{name}' (expected one of: {', '.join(sorted(ARCHITECTURE_MODULES))})")
    if name not in _REGISTRY:
        importlib.import_module(ARCHITECTURE_MODULES[name])
    return _REGISTRY[name]


def model_class(name: str) -> type[SegmentationModel]:
    return _load(name)


def create_model(name: str, **options: Any) -> SegmentationModel:
    """Build model ``name``; ``options`` are its constructor arguments (in_channels, num_classes,
    dims, base_width, levels, norm, spacing, ...). Unknown options fail naming the model."""
    cls = _load(name)
    try:
        return cls(**options)
    except TypeError as exc:  # wrong keyword: say which model and what it takes
        raise ModelConfigError(f"model '{name}': {exc}") from exc


def list_models() -> list[ModelInfo]:
    """Every architecture's :class:`ModelInfo`, in registry order, from the catalogue (each class's
    ``info`` is its catalogue entry): listing imports no architecture, and no torch."""
    return [model_info(name) for name in ARCHITECTURE_MODULES]


def model_names() -> list[str]:
    return list(ARCHITECTURE_MODULES)
