"""npe2 writer: a labels layer to NIfTI with the geometry of the scan it was drawn on.

The geometry comes from ``layer.metadata["cascadeseg"]`` (put there by the reader, the sample
data and the segment widget); a labels layer created by hand in napari falls back to its own
scale / translate / rotate. The engine's :func:`cascadeseg.io.save_labels` does the writing
(smallest integer type, the source file's orientation, atomic temp-file + ``os.replace``).

Overwriting: napari's Save dialog asks before it passes an existing path, so an existing target
is replaced (atomically). The files never replaced are those of the scan the labels were drawn on
(every channel file of its case, through links and letter case): saving a mask over its own image
is always a slip. The rule is the engine's (:mod:`cascadeseg.io.protect`), the same for every
writer.

A successful save also clears the Correct-mask dock's crash-recovery file of the scan when it
holds this same layer (File > Save is a clean save like the dock's own Save button); a recovery
file of another layer of the scan is left alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg._atomic import clean_leftovers
from cascadeseg.errors import OutputIsInputError, VolumeError
from cascadeseg.io.protect import input_files, same_file

from ._layers import geometry_from_meta, volume_from_geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for labels; returns the written path."""
    from cascadeseg.io import save_labels

    target = Path(path)
    if not target.name.lower().endswith(NIFTI_SUFFIXES):
        target = target.with_name(target.name + ".nii.gz")
    labels = np.asarray(data)
    name = attributes.get("name", "labels")
    if labels.ndim != 3:
        raise VolumeError(
            f"labels layer '{name}' has shape {labels.shape}: only 3D label maps (Z, Y, X) can be saved as NIfTI"
        )
    geometry = geometry_from_meta(attributes)
    source = geometry.get("source")
    reference = volume_from_geometry(np.broadcast_to(np.uint8(0), labels.shape), geometry)
    if any(same_file(target, scan_file) for scan_file in input_files(reference)):
        raise OutputIsInputError(
            f"{target}: refusing to write labels '{name}' over the scan they were drawn on; choose another file name"
        )
    clean_leftovers(target.parent)  # what a save killed in this folder left (said in the log)
    written = save_labels(labels, reference, target, overwrite=True)
    if source:
        _clear_recovery(str(source), name)
    return [str(written)]


def _clear_recovery(source: str, layer_name: str) -> None:
    """Drop the scan's recovery file if it holds ``layer_name`` (the edits are now on disk). A
    recovery store that cannot be read or cleared only gets a warning: the save itself has
    succeeded, and a stale recovery file merely offers edits that are already saved."""
    from cascadeseg.editing.autosave import RecoveryStore
    from cascadeseg.errors import CascadeSegError

    store = RecoveryStore()
    try:
        info = store.find(source)
        if info is not None and info.layer_name == layer_name:
            store.clear(source)
    except (OSError, CascadeSegError) as exc:
        warnings.warn(f"saved, but the recovery file of {source} could not be cleared: {exc}", stacklevel=2)

