"""The zoo's catalogue (``models/catalogue.toml``): one entry per architecture file, read into
each class's ``info``; a mistyped key is refused by name."""

from __future__ import annotations

from importlib import resources

import pytest

from cascadeseg.errors import ModelConfigError
from cascadeseg.models import catalogue, model_class, model_names
from cascadeseg.models.registry import ARCHITECTURE_MODULES


def test_every_catalogue_entry_is_the_class_its_module_registers() -> None:
    assert model_names() == list(ARCHITECTURE_MODULES)
    for name in model_names():
        cls = model_class(name)
        assert cls.__module__ == ARCHITECTURE_MODULES[name]
        assert cls.info == catalogue.model_info(name)
        assert cls.info.name == name
    # Spot checks of values that reach the GUI and the cards (typed, not strings of lists).
    assert model_class("anu_net").info.pruning_depths == (1, 2, 3, 4)
    assert model_class("anu_net").info.attention is True
    assert model_class("coarse_to_fine_unet").info.stages == ("stage1", "stage2")
    assert model_class("unet").info.dims == (2, 3)
    assert model_class("unet").info.default_loss == "dice_ce"


def test_a_mistyped_catalogue_key_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {"unet": {"module": "unet", "title": "U-Net", "family": "unet", "paper": "p", "pruning_depth": [1]}}
    monkeypatch.setattr(catalogue, "_catalogue", lambda: entries)
    with pytest.raises(ModelConfigError, match=r"catalogue.toml \[unet\]: unknown key\(s\) \['pruning_depth'\]"):
        catalogue.model_info("unet")
    with pytest.raises(ModelConfigError, match="no entry 'unet_plus'"):
        catalogue.model_info("unet_plus")


def test_the_catalogue_is_read_from_the_installed_package() -> None:
    # importlib.resources, not a path relative to the source tree: a wheel holds the same file.
    text = resources.files("cascadeseg.models").joinpath(catalogue.CATALOGUE).read_text(encoding="utf-8")
    assert "[unet_sharp]" in text
