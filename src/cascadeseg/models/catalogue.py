"""The zoo's catalogue (``catalogue.toml``) and the :class:`ModelInfo` it describes each
architecture with, readable without PyTorch: the napari docks list and describe models when they
open, and importing torch there froze the window for about a second (the architectures, which
need torch, are imported on first use by :mod:`.registry`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

import tomllib

from ..errors import ModelConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What a model supports, for the registry listing, the GUI and the model card.

    ``body_mask_at_inference``: the paper restricts the final segmentation to the body / head mask
    of the scan (CU-Net fuses its outputs with the non-brain mask at test time, paper 001 Sec. 2.2;
    the coarse-to-fine cascade searches only the body's candidate region, paper 002), so a predictor
    should turn its body-mask post-processing on by default for this model.

    ``default_loss_options``: options the planner gives the training loss (whichever loss is used)
    when none were given or inherited from a checkpoint: how a model's branches are weighted is the
    model's business (UNet#: its decoder branches at 0.1 each, docs/model_zoo.md).
    """

    name: str
    title: str
    paper: str
    family: str
    dims: tuple[int, ...] = (2, 3)
    deep_supervision: bool = False
    pruning_depths: tuple[int, ...] = ()
    stages: tuple[str, ...] = ()
    attention: bool = False
    classification_guided: bool = False
    default_loss: str = "dice_ce"
    body_mask_at_inference: bool = False
    default_loss_options: Mapping[str, Any] = field(default_factory=dict, hash=False)


CATALOGUE = "catalogue.toml"
_PACKAGE = __name__.rpartition(".")[0]  # cascadeseg.models


@functools.cache
def _catalogue() -> dict[str, dict[str, Any]]:
    return tomllib.loads(resources.files(_PACKAGE).joinpath(CATALOGUE).read_text(encoding="utf-8"))


def catalogue_modules() -> dict[str, str]:
    """Registry name -> the module implementing it, in the catalogue's order."""
    return {name: f"{_PACKAGE}.{entry['module']}" for name, entry in _catalogue().items()}


def model_info(name: str) -> ModelInfo:
    """Architecture ``name``'s entry of the zoo's catalogue (``catalogue.toml`` beside this file):
    descriptions live in one readable table, the classes keep only code."""
    entries = _catalogue()
    if name not in entries:
        raise ModelConfigError(f"{CATALOGUE}: no entry '{name}' (entries: {', '.join(entries)})")
    entry: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in entries[name].items()}
    del entry["module"]
    known = {field.name for field in dataclasses.fields(ModelInfo)} - {"name"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ModelConfigError(f"{CATALOGUE} [{name}]: unknown key(s) {unknown}; expected some of {sorted(known)}")
    if "default_loss_options" in entry:  # read-only: one ModelInfo is shared by every caller
        entry["default_loss_options"] = MappingProxyType(dict(entry["default_loss_options"]))
    return ModelInfo(name=name, **entry)
