"""File > Open Sample: the bundled real scans with their reference labels, one per task family
(brain MRI, abdominal MRI, CT; :data:`cascadeseg.shipped.SAMPLES`).

The files come from :mod:`cascadeseg.shipped` (package data, found from a wheel as from a
checkout) and are read by the same engine calls as any user file, so each sample carries its real
geometry and the writer can save a mask drawn on it. The reference labels are named and coloured
by the classes of the shipped model made for the sample's task, as that model's predictions are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascadeseg.io import load_labels, load_volume
from cascadeseg.shipped import sample, sample_label_path, sample_scan_path

from ._layers import LayerDataTuple, class_style, image_layers, labels_layer


def sample_layers(key: str) -> list[LayerDataTuple]:
    """Image layer(s) of a bundled sample, then its reference labels layer on the same grid."""
    scan = load_volume(sample_scan_path(key))
    mask = load_labels(sample_label_path(key), reference=scan)
    layers = image_layers(scan)
    data, kwargs, kind = labels_layer(np.asarray(mask.array), scan, f"{sample(key).case_id} ground truth")
    kwargs.update(_class_style(sample(key).model))
    layers.append((data, kwargs, kind))
    return layers


def _class_style(model: str) -> dict[str, Any]:
    """Class names and colours of the shipped model made for the sample (none if it is absent)."""
    from cascadeseg.errors import CascadeSegError
    from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint

    try:
        card = read_card(resolve_checkpoint(model))
    except CascadeSegError:  # the sample opens without the model; only the names are missing
        return {}
    return class_style(card.class_values, card.class_names, card.class_colors)


def sample_scan_with_mask() -> list[LayerDataTuple]:
    """The brain MRI (LGG FLAIR) and its manual tumour mask."""
    return sample_layers("brain")


def sample_abdominal_mri() -> list[LayerDataTuple]:
    """The abdominal MRI (CHAOS T2-SPIR) and its manual liver, kidney and spleen labels."""
    return sample_layers("abdomen")


def sample_ct() -> list[LayerDataTuple]:
    """The abdominal CT (TotalSegmentator example, HU) and its liver label."""
    return sample_layers("ct")
