"""Post-processing of a predicted label map, as the papers use it.

* keep the largest connected component of each label (the cascaded papers keep one tumour / one
  organ per class and drop false-positive islands);
* fill holes enclosed by a label;
* restrict the labels to a body / non-brain mask (the coarse-to-fine paper searches only inside
  the body; brain papers only inside the skull-stripped brain), i.e. everything outside the
  mask becomes background.

The component and hole operations are the label operations of :mod:`cascadeseg.labelops` (
scipy.ndimage, per label value, never overwriting another label): one implementation serves
the GUI's correction tools and automatic post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GeometryMismatchError, VolumeError
from ..labelops import fill_holes, keep_largest_component, remove_distant_islands


@dataclass(frozen=True)
class PostProcessing:
    """Which post-processing steps to run, in this order: mask, largest component, fill holes.

    The mask goes first so an island outside the body cannot win "largest component".
    ``fill_holes_axis``: ``None`` fills cavities closed in 3D; an axis fills holes closed within
    each slice along it (what slice-by-slice 2D predictions produce).
    """

    largest_component: bool = False
    fill_holes: bool = False
    fill_holes_axis: int | None = None
    restrict_to_mask: bool = False
    # Drop small islands farther than this (mm) from each label's main island (see labelops).
    distant_islands_mm: float | None = None

    @property
    def any(self) -> bool:
        return self.largest_component or self.fill_holes or self.restrict_to_mask or self.distant_islands_mm is not None


def apply_mask(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Labels outside ``mask`` (bool, same shape) set to background, in place; returns ``labels``."""
    if mask.shape != labels.shape:
        raise GeometryMismatchError(f"post-processing mask has shape {mask.shape} but the label map has {labels.shape}")
    labels[~mask.astype(bool, copy=False)] = 0
    return labels


def postprocess(
    labels: np.ndarray,
    options: PostProcessing,
    mask: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Run the chosen steps on a ``(Z, Y, X)`` label map; returns a new array (input untouched).
    ``spacing`` (mm, the scan's) is needed by ``distant_islands_mm``."""
    out = labels
    if options.restrict_to_mask:
        if mask is None:
            raise VolumeError("post-processing: restrict_to_mask was chosen but no mask was given")
        out = apply_mask(out.copy(), mask)
    if options.largest_component:
        out = keep_largest_component(out)
    if options.distant_islands_mm is not None:
        if spacing is None:
            raise VolumeError("post-processing: distant_islands_mm needs the scan's spacing")
        out = remove_distant_islands(out, spacing, options.distant_islands_mm)
    if options.fill_holes:
        out = fill_holes(out, slice_axis=options.fill_holes_axis)
    return out if out is not labels else labels.copy()


# What training compares on its validation patients (the raw argmax is always the reference).
CANDIDATES: dict[str, PostProcessing] = {
    "largest_component": PostProcessing(largest_component=True),
    "distant_islands_10mm": PostProcessing(distant_islands_mm=10.0),
}


def from_card(spec: dict | None) -> PostProcessing | None:
    """A card's ``postprocessing`` as :class:`PostProcessing` (``None``: nothing to do)."""
    if not spec:
        return None
    known = {"largest_component", "fill_holes", "fill_holes_axis", "distant_islands_mm"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise VolumeError(
            f"model card postprocessing {spec}: unknown step(s) {unknown} (expected some of {sorted(known)})"
        )
    return PostProcessing(**spec)


def to_card(options: PostProcessing) -> dict:
    return {k: v for k, v in options.__dict__.items() if v not in (False, None)}
