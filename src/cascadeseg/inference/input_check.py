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

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import VolumeError
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
    # Channel names are compared within a modality: a CT through an MR model has had its warning.
    named = volume.channel_names[: len(expected)] if not warnings else []
    for index, given in enumerate(named):
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


def choose_channels(volume: Volume, card: ModelCard, chosen: Sequence[str] | None = None) -> tuple[Volume, str | None]:
    """``volume`` with the channels ``card``'s network reads, in the card's order, and a line saying
    which were taken (``None`` when the volume was used as it is).

    ``chosen``: one entry per model input, each a channel of the scan by its name (``0001``,
    ``FLAIR``; a sequence alias such as ``fla`` matches too) or its 0-based index: what
    ``cascadeseg predict --channels`` passes. Without it, a scan with as many channels as the model
    is used as it is (:func:`input_warnings` says when their names disagree), and a scan with more
    channels gives the model those whose names are the sequences the card names, when each matches
    exactly one (a T1c + FLAIR study through a FLAIR model). Otherwise the error lists the scan's
    channels and the model's, and says how to choose."""
    where = str(volume.source) if volume.source else "the scan"
    expected = card.channel_names
    count = volume.num_channels
    names = list(volume.channel_names) if len(volume.channel_names) == count else [f"{c:04d}" for c in range(count)]
    listing = ", ".join(f"{k}: {n}" for k, n in enumerate(names))
    model = f"model '{card.name or card.architecture}' expects {len(expected)}: {', '.join(expected)}"
    if chosen:
        if len(chosen) != len(expected):
            raise VolumeError(
                f"--channels names {len(chosen)} channel(s) ({', '.join(chosen)}) but {model} "
                f"(one scan channel per model input, in that order)"
            )
        picked = [_channel_index(entry, names, where, listing) for entry in chosen]
    elif count == len(expected):
        return volume, None
    else:
        by_sequence = _channels_by_sequence(expected, names) if count > len(expected) else None
        if by_sequence is None:
            raise VolumeError(
                f"{where}: has {count} channel(s) ({listing}) but {model}; say which of the scan's channels "
                f"feed it with --channels, one per model input in the model's order, each by name or index"
            )
        picked = by_sequence
    selected = volume.with_array(volume.array[picked], channel_names=[names[k] for k in picked])
    said = ", ".join(f"'{names[k]}' as {want}" for k, want in zip(picked, expected))
    return selected, f"{where}: channel(s) {said} (of {count}: {', '.join(names)})"


def _channel_index(entry: str, names: list[str], where: str, listing: str) -> int:
    """The index of the scan channel ``entry`` names: by name, by sequence alias, or as an index."""
    text = str(entry).strip()
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    by_sequence = _only_channel_of(canonical_channel(text), [canonical_channel(n) for n in names])
    if by_sequence is not None:
        return by_sequence
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise VolumeError(
        f"{where}: --channels {text!r} is none of its channels ({listing}); give a channel's name or its index"
    )


def _channels_by_sequence(expected: Sequence[str], names: Sequence[str]) -> list[int] | None:
    """For each expected channel, the one scan channel named after the same sequence; ``None``
    when any expected channel has no such match or more than one."""
    keys = [canonical_channel(n) for n in names]
    picked = []
    for want in expected:
        index = _only_channel_of(canonical_channel(want), keys)
        if index is None:
            return None
        picked.append(index)
    return picked


def _only_channel_of(key: str | None, keys: Sequence[str | None]) -> int | None:
    """The index of the one channel whose sequence key is ``key``; ``None`` for none, several, or
    a ``key`` that names no sequence."""
    matches = [k for k, have in enumerate(keys) if key is not None and have == key]
    return matches[0] if len(matches) == 1 else None
