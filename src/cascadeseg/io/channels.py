"""What a channel name says about its sequence: ``"FLAIR"``, ``"fla"``, ``"T2-FLAIR"`` are one key.

Used wherever channels of a scan meet the channels of a model: fine-tuning maps a checkpoint's
inputs onto new data by these keys, and the input check warns when a channel is named after
another sequence than the model expects.
"""

from __future__ import annotations

import re

_ALIASES = {
    "flair": "flair",
    "fla": "flair",
    "t2flair": "flair",
    "t2-flair": "flair",
    "t1c": "t1c",
    "t1ce": "t1c",
    "t1gd": "t1c",
    "t1post": "t1c",
    "t1 post-contrast": "t1c",
    "t1-post": "t1c",
    "t1": "t1",
    "t1w": "t1",
    "t2": "t2",
    "t2w": "t2",
    "ct": "ct",
}


def canonical_channel(name: str) -> str | None:
    """A channel name reduced to a known modality key (``"FLAIR"``, ``"fla"`` -> ``"flair"``);
    a file stem that names one sequence among other words counts too
    (``"TCGA-DU-7294_t1c_bet"`` -> ``"t1c"``, ``"BraTS20_Training_001_flair"`` -> ``"flair"``);
    ``None`` for names that say nothing (``"0000"``, ``"channel0"``) or name several sequences."""
    key = re.sub(r"[_\s]+", " ", str(name).strip().lower())
    if key in _ALIASES:
        return _ALIASES[key]
    compact = key.replace(" ", "")
    if compact in _ALIASES:
        return _ALIASES[compact]
    found = {_ALIASES[word] for word in re.split(r"[\s.]+", key) if word in _ALIASES}
    return found.pop() if len(found) == 1 else None


def sequence_in_file_name(stem: str) -> tuple[str, str] | None:
    """A BraTS-style file stem split into its case and its sequence: ``"TCGA-DU-7294_fla_bet"`` ->
    ``("TCGA-DU-7294", "fla")``, ``"BraTS20_Training_001_t1ce"`` -> ``("BraTS20_Training_001", "t1ce")``;
    ``None`` when no ``_``-separated word after the first names a sequence."""
    words = str(stem).split("_")
    hits = [k for k, word in enumerate(words) if k > 0 and word.lower() in _ALIASES]
    if len(hits) != 1:
        return None
    return "_".join(words[: hits[0]]), words[hits[0]]
