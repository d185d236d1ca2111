"""Named structures made of several labels, and how a caller's ``classes`` become structures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Union

from ..errors import VolumeError

#: BraTS evaluation regions over the BraTS label convention (1 necrosis / non-enhancing core,
#: 2 oedema, 4 enhancing tumour): whole tumour, tumour core and enhancing tumour. Pass it as
#: ``evaluate_case(..., regions=BRATS_REGIONS)``.
BRATS_REGIONS: Mapping[str, tuple[int, ...]] = MappingProxyType({"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)})

ClassSpec = Union[Sequence[int], Mapping[str, int], None]
RegionSpec = Union[Mapping[str, Iterable[int]], None]


def resolve_structures(
    present_labels: Iterable[int], classes: ClassSpec, regions: RegionSpec
) -> dict[str, tuple[int, ...]]:
    """Name -> labels for every structure to score.

    ``classes``: a list of labels (named ``"1"``, ``"2"``, ...) or a ``{name: label}`` mapping.
    ``regions``: ``{name: labels}`` (e.g. :data:`BRATS_REGIONS`). When both are ``None`` every
    non-zero label of ``present_labels`` (those found in either map) is scored; when only ``regions`` is given, only the
    regions are. Background (0) is never scored unless asked for explicitly.
    """
    structures: dict[str, tuple[int, ...]] = {}
    if classes is None and regions is None:
        classes = sorted(int(v) for v in present_labels if v != 0)
    if isinstance(classes, Mapping):
        structures.update({str(name): (int(label),) for name, label in classes.items()})
    elif classes is not None:
        structures.update({str(int(label)): (int(label),) for label in classes})
    for name, labels in (regions or {}).items():
        labels = tuple(int(v) for v in labels)
        if not labels:
            raise VolumeError(f"regions: region '{name}' has no labels (expected at least one label value)")
        if name in structures:
            raise VolumeError(f"regions: name '{name}' is also a class name (expected distinct names)")
        structures[str(name)] = labels
    return structures
