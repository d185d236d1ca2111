"""File > Open Sample: the bundled brain MRI (LGG, FLAIR) with its manual tumour mask.

The files come from :mod:`cascadeseg.shipped` (package data, found from a wheel as from a
checkout) and are read by the same engine calls as any user file, so the sample carries its real
geometry and the writer can save a mask drawn on it.
"""

from __future__ import annotations

import numpy as np

from cascadeseg.io import load_labels, load_volume
from cascadeseg.shipped import SAMPLE_CASE_ID, sample_label_path, sample_scan_path

from ._layers import LayerDataTuple, image_layers, labels_layer


def sample_scan_with_mask() -> list[LayerDataTuple]:
    """Image layer of the sample scan, then its ground-truth labels layer on the same grid."""
    scan = load_volume(sample_scan_path())
    mask = load_labels(sample_label_path(), reference=scan)
    layers = image_layers(scan)
    layers.append(labels_layer(np.asarray(mask.array), scan, f"{SAMPLE_CASE_ID} ground truth"))
    return layers
