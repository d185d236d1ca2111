"""Named preprocessing presets shipped in ``resources/configs/preprocessing_presets.json``.

A preset is one spec per channel (the dicts :func:`apply_channel_preprocessing` takes) plus the
expected channel names, so the GUI and training can offer "brain MRI (FLAIR)" or "CT liver window"
instead of raw JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cascadeseg.errors import ModelConfigError
from cascadeseg.shipped import configs_dir

PRESETS_FILE = "preprocessing_presets.json"
KNOWN_TYPES = ("ct_window", "mri_zscore", "minmax", "none")


@dataclass(frozen=True)
class PreprocessingPreset:
    name: str
    description: str
    channels: tuple[str, ...]
    specs: tuple[dict[str, Any], ...]


def preprocessing_presets() -> dict[str, PreprocessingPreset]:
    """All shipped presets by name, validated (one spec per channel, known spec types)."""
    path = configs_dir() / PRESETS_FILE
    table = json.loads(path.read_text())
    presets = {}
    for name, entry in table.items():
        channels, specs = tuple(entry["channels"]), tuple(entry["specs"])
        if len(channels) != len(specs) or any(spec.get("type") not in KNOWN_TYPES for spec in specs):
            raise ModelConfigError(f"{path}: preset {name!r} needs one spec of a known type {KNOWN_TYPES} per channel")
        presets[name] = PreprocessingPreset(name, entry.get("description", ""), channels, specs)
    return presets
