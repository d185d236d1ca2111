"""Does a scan fit a model? Warnings before a prediction runs, instead of a silently absurd mask.

A CT through a FLAIR model (58 thousand voxels of "FLAIR abnormality" across an abdomen), a T1
post-contrast series through it (an empty mask) or a coronal stack sliced as if axial (Dice 0.52)
all run without an error; each gets a warning here that says what does not fit and what to do.
The card says what the model expects: its channels' names and preprocessing (which says MR or
CT), its slicing axis, and, for models trained by this version, the fingerprint of its training
data (modality, spacing range, intensity percentiles). What is checked:

* modality: CT values (air at about -1000 HU) or a CT header into an MR model, or the reverse;
* channel names: a channel named after another sequence (``T1post`` where ``FLAIR`` is expected);
* slicing axis: 2D along another axis than the model was trained on;
* spacing: a scan whose in-plane spacing is over twice / under half the training range (the
  working grid resamples it, but anatomy of another size is out of the training distribution).

Warnings are advice, not errors: a user may know better (a FLAIR without a name, a model that
works across axes) and run anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.channels import canonical_channel
from ..io.modality import looks_like_ct
from ..io.volume import Volume
from .checkpoint import ModelCard

SPACING_FACTOR = 2.0


def expected_modality(card: ModelCard) -> str | None:
    recorded = (
        (card.training.get("data") or {}).get("fingerprint", {}).get("modality")
        if isinstance(card.training.get("data"), dict)
        else None
    )
    if recorded in ("CT", "MR"):
        return recorded
    types = {str((ch.get("preprocessing") or {}).get("type")) for ch in card.input_channels}
    if types == {"ct_window"}:
        return "CT"
    if types <= {"mri_zscore"}:
        return "MR"
    return None


def scan_modality(volume: Volume) -> str | None:
    if volume.modality in ("CT", "MR"):
        return volume.modality
    return "CT" if looks_like_ct(volume.array) else None


def input_warnings(volume: Volume, card: ModelCard, mode: str | None = None, axis: int | None = None) -> list[str]:
    """What about ``volume`` does not fit ``card`` (empty when everything does)."""
    name = f"'{card.name or card.architecture}'"
    where = str(volume.source) if volume.source else "the scan"
    warnings: list[str] = []
    wanted, found = expected_modality(card), scan_modality(volume)
    if wanted and found and wanted != found:
        what = "CT values (air near -1000 HU)" if found == "CT" else "an MR scan"
        warnings.append(
            f"{where} looks like {what} but model {name} was trained on {wanted}: its mask will not mean anything; "
            f"pick a {found} model"
        )
    expected = card.channel_names
    for index, given in enumerate(volume.channel_names[: len(expected)]):
        want_key, given_key = canonical_channel(expected[index]), canonical_channel(given)
        if want_key and given_key and want_key != given_key:
            warnings.append(
                f"{where}: channel {index} is named '{given}' but model {name} expects '{expected[index]}' there; "
                f"give the model the sequence it was trained on (or map the channels in the Segment dock)"
            )
    if card.dims == 2 and axis is not None and int(axis) != int(card.slice_axis):
        names = {0: "axial (z)", 1: "coronal (y)", 2: "sagittal (x)"}
        warnings.append(
            f"model {name} was trained on {names.get(int(card.slice_axis))} slices; slicing along "
            f"{names.get(int(axis))} shows it anatomy it has not seen: use axis {card.slice_axis}"
        )
    fingerprint = _fingerprint(card)
    if fingerprint and volume.array.ndim == 4:
        low, high = np.asarray(fingerprint["spacing_min"], float), np.asarray(fingerprint["spacing_max"], float)
        spacing = np.asarray(volume.spacing, float)
        axes = [a for a in range(3) if card.dims == 3 or a != int(card.slice_axis)]
        out = [a for a in axes if spacing[a] > SPACING_FACTOR * high[a] or spacing[a] < low[a] / SPACING_FACTOR]
        if out:
            warnings.append(
                f"{where} has voxels of {np.round(spacing, 3).tolist()} mm; model {name} was trained on "
                f"{np.round(low, 3).tolist()}-{np.round(high, 3).tolist()} mm: structures of another size in voxels "
                f"may be missed"
            )
    return warnings


def _fingerprint(card: ModelCard) -> dict[str, Any] | None:
    data = card.training.get("data")
    if isinstance(data, dict) and isinstance(data.get("fingerprint"), dict) and "spacing_min" in data["fingerprint"]:
        return data["fingerprint"]
    return None
