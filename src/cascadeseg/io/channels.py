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
    ``None`` for names that say nothing (``"0000"``, ``"channel0"``)."""
    key = re.sub(r"[_\s]+", " ", str(name).strip().lower())
    if key in _ALIASES:
        return _ALIASES[key]
    compact = key.replace(" ", "")
    return _ALIASES.get(compact)
