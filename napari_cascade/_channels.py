"""Which image layer holds which input channel of a model: the default of the channel mapping.

A model card names its input channels (``FLAIR``; ``T1c``, ``FLAIR``; ``CT``). Each image layer
carries what the reader learnt about its scan: the channel name (a ``dataset.json`` entry, the
file name, a DICOM SeriesDescription such as ``T1post``), the layer name, and the modality (DICOM
tag, header, file name, or the Hounsfield-unit signature of the voxels: ``cascadeseg.io``'s
intensity fingerprint, which tells CT from MR). A layer is scored against a channel by:

* **name**: a word of its channel name, series description or layer name is the channel's name
  or one of its usual spellings (``fla``/``flair``/``t2-flair``; ``t1c``/``t1ce``/``t1gd``/
  ``t1post``; ...). Words, not substrings: ``t1`` does not match ``T1c``;
* **modality**: a CT layer for a CT channel (a card channel whose preprocessing is a CT window)
  or an MR layer for an MR one counts for it; the other way round counts heavily against it.

The mapping takes, over all ways of giving each channel a different layer, the one with the
highest total, ties going to the layers in viewer order. A channel whose layer was chosen without
any name evidence is reported as *unconfirmed*: nothing in the data says which sequence a layer
is (``PGBM-003_19950329_0000.nii.gz`` and ``_0001`` carry no header text, no ``dataset.json``,
and T1 post-contrast and FLAIR intensity statistics overlap), and the dock says so instead of
pretending.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._layers import GEOMETRY_KEY

# Usual spellings of each sequence in file names, series descriptions and dataset.json files.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "fla", "t2flair", "t2-flair", "t2_flair", "t2f", "darkfluid"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1post", "t1+c", "t1-post", "t1_post", "t1contrast", "t1wce", "postcontrast"),
    "t1": ("t1", "t1w", "t1n", "t1pre", "t1-pre", "mprage"),
    "t2": ("t2", "t2w", "t2-weighted"),
    "pd": ("pd", "pdw"),
    "dwi": ("dwi", "diffusion"),
    "adc": ("adc",),
    "ct": ("ct", "cta", "hu"),
}
_CANONICAL = {spelling: name for name, spellings in SYNONYMS.items() for spelling in spellings}
_WORD = re.compile(r"[a-z0-9+]+(?:[-_][a-z0-9+]+)?")

NAME_MATCH, MODALITY_MATCH, MODALITY_CLASH = 10, 2, -20


def canonical(word: str) -> str:
    return _CANONICAL.get(word.lower(), word.lower())


def words(text: str | None) -> set[str]:
    """Canonical words of a name: ``TCGA-DU-7294_fla_bet`` -> {tcga, du, 7294, flair, bet}. A
    hyphen or underscore pair that spells a sequence (``t2-flair``, ``t1_post``) counts as that
    sequence alone: ``t2-flair`` is no T2."""
    if not text:
        return set()
    found = set()
    for match in _WORD.finditer(text.lower()):
        token = match.group(0)
        joined = canonical(token)
        if joined in SYNONYMS:
            found.add(joined)
        else:
            found.add(joined)
            found.update(canonical(part) for part in re.split(r"[-_]", token) if part)
    return found


@dataclass(frozen=True)
class ChannelChoice:
    """The layer chosen for one model channel, and whether a name confirms it."""

    channel: str
    layer: Any | None
    confirmed: bool


def channel_modality(card_channel: dict[str, Any]) -> str | None:
    """``"CT"`` for a channel preprocessed with a CT window, ``"MR"`` for MRI normalisation or an MR
    sequence name, else ``None``."""
    spec = card_channel.get("preprocessing") or {}
    kind = str(spec.get("type", "")).lower()
    if kind == "ct_window":
        return "CT"
    name = canonical(str(card_channel.get("name", "")))
    if name == "ct":
        return "CT"
    if kind.startswith("mri") or name in SYNONYMS:
        return "MR"
    return None


def layer_evidence(layer: Any) -> tuple[set[str], str | None]:
    """The words naming ``layer``'s scan (channel name, series description, layer name) and its
    modality, from the reader's metadata."""
    geometry = (getattr(layer, "metadata", None) or {}).get(GEOMETRY_KEY) or {}
    names = geometry.get("channel_names") or []
    index = geometry.get("channel_index", 0)
    texts = [layer.name]
    if index < len(names):
        texts.append(names[index])
    meta = geometry.get("reader_meta") or {}
    texts.append(meta.get("series_description"))
    found: set[str] = set()
    for text in texts:
        found |= words(text)
    modality = geometry.get("modality")
    return found, (str(modality).upper() if modality else None)


def score(card_channel: dict[str, Any], layer: Any) -> tuple[int, bool]:
    """(score, named): how well ``layer`` fits ``card_channel`` (module docstring)."""
    found, modality = layer_evidence(layer)
    wanted = canonical(str(card_channel.get("name", "")))
    named = wanted in found
    total = NAME_MATCH if named else 0
    expected = channel_modality(card_channel)
    if expected and modality:
        total += MODALITY_MATCH if expected == modality else MODALITY_CLASH
    return total, named


def map_channels(card_channels: Sequence[dict[str, Any]], layers: Sequence[Any]) -> list[ChannelChoice]:
    """One distinct layer per channel (when there are enough layers), best total score first."""
    channels = list(card_channels)
    if not channels:
        return []
    if not layers:
        return [ChannelChoice(str(c.get("name", "")), None, False) for c in channels]
    table = [[score(channel, layer) for layer in layers] for channel in channels]
    count = min(len(channels), len(layers))
    best: tuple[int, tuple[int, ...]] | None = None
    # Few channels (1-4) and few layers: trying every assignment is cheap and exact.
    for picked in itertools.permutations(range(len(layers)), count):
        total = sum(table[c][index][0] for c, index in enumerate(picked))
        if best is None or total > best[0]:  # strict: ties keep the earlier (viewer-order) pick
            best = (total, picked)
    assert best is not None
    choices = []
    for c, channel in enumerate(channels):
        name = str(channel.get("name", ""))
        if c < count:
            index = best[1][c]
            choices.append(ChannelChoice(name, layers[index], table[c][index][1]))
        else:
            choices.append(ChannelChoice(name, None, False))
    return choices
