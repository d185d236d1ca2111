"""Checkpoints: safetensors + model card, atomic save, strict load, discovery, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from cascadeseg.errors import CheckpointError, OutputExistsError
from cascadeseg.inference import (
    ModelCard,
    available_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    user_models_dir,
)
from cascadeseg.inference.checkpoint import CARD_FILE, FORMAT_VERSION, WEIGHTS_FILE
from cascadeseg.models import create_model

OPTIONS = {"in_channels": 2, "num_classes": 4, "dims": 2, "base_width": 4, "levels": 3}


def _card(**changes) -> ModelCard:
    fields = dict(
        architecture="unet",
        model_options=dict(OPTIONS),
        dims=2,
        input_channels=[{"name": "T1c", "preprocessing": {"type": "mri_zscore", "percentiles": [0.5, 99.5]}},
                        {"name": "FLAIR", "preprocessing": {"type": "mri_zscore", "percentiles": [0.5, 99.5]}}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "necrosis"},
                 {"value": 2, "name": "oedema"}, {"value": 4, "name": "enhancing"}],
        regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
        slice_size=[256, 256],
        training={"data": "tcia-btp (4 studies)", "command": "cascadeseg train ...", "licence": "CC BY 3.0"},
        validation={"dice_per_depth": {"1": 0.5}},
        recommended_depth=None,
        name="tiny",
    )
    fields.update(changes)
    return ModelCard(**fields)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("unet", **OPTIONS).eval()
    return model, save_checkpoint(model, _card(), tmp_path / "ckpt")


def test_round_trip_restores_weights_and_card(saved) -> None:
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_FILE, CARD_FILE]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"
    loaded, card = load_checkpoint(folder)
    # the card is the one saved, plus the checksum of the weights as written
    assert card == _card(weights_sha256=hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest())
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 2, 32, 32)
    assert torch.equal(model(x).logits, loaded(x).logits)
    data = json.loads((folder / CARD_FILE).read_text())
    assert data["format_version"] == FORMAT_VERSION and data["project_version"]
    assert card.class_values == [0, 1, 2, 4] and card.channel_names == ["T1c", "FLAIR"]
    # A file inside the folder works as well as the folder.
    assert load_checkpoint(folder / CARD_FILE)[1] == card


def test_save_refuses_existing_folder_unless_overwrite(saved) -> None:
    model, folder = saved
    with pytest.raises(OutputExistsError, match="already exists"):
        save_checkpoint(model, _card(), folder)
    card = _card(name="second")
    save_checkpoint(model, card, folder, overwrite=True)
    assert load_checkpoint(folder)[1].name == "second"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"]


def test_save_refuses_card_that_does_not_fit_model(tmp_path: Path) -> None:
    model = create_model("unet", **OPTIONS)
    with pytest.raises(CheckpointError, match="num_classes"):
        save_checkpoint(model, _card(classes=[{"value": 0}, {"value": 1}], model_options={**OPTIONS, "num_classes": 2}),
                        tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_newer_card_format_is_refused(saved) -> None:
    _, folder = saved
    data = json.loads((folder / CARD_FILE).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"format_version 2 is newer.*upgrade"):
        load_checkpoint(folder)


def test_card_weights_mismatch_is_refused(saved) -> None:
    _, folder = saved
    data = json.loads((folder / CARD_FILE).read_text())
    data["model_options"]["base_width"] = 8  # every conv now has other shapes
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(folder)
    data["model_options"]["base_width"] = 4
    data["model_options"]["levels"] = 4  # the card describes a deeper network: tensors are missing
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_checkpoint(folder)


def test_corrupt_checkpoint_files(saved) -> None:
    _, folder = saved
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: the weights are damaged"):
        load_checkpoint(folder)
    # a card from before checksums: the truncation is still caught, by safetensors
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "weights_sha256": None}))
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(folder)
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)
    (folder / CARD_FILE).write_text(json.dumps({"architecture": "unet"}))
    with pytest.raises(CheckpointError, match="missing required field"):
        load_checkpoint(folder)


def test_card_validation_messages(saved) -> None:
    with pytest.raises(CheckpointError, match="in_channels=2 but input_channels lists 1"):
        ModelCard.from_dict({**_card().to_dict(), "input_channels": [{"name": "FLAIR"}]})
    with pytest.raises(CheckpointError, match="distinct"):
        ModelCard.from_dict({**_card().to_dict(), "classes": [{"value": 0}, {"value": 1}, {"value": 1}, {"value": 2}]})
    classes = [{"value": 0}, {"value": 1, "name": "necrosis", "color": "red"}, {"value": 2}, {"value": 4}]
    with pytest.raises(CheckpointError, match="class 'necrosis' has color 'red'; expected '#rrggbb'"):
        ModelCard.from_dict({**_card().to_dict(), "classes": classes})
    classes[1]["color"] = "#C83C28"
    assert ModelCard.from_dict({**_card().to_dict(), "classes": classes}).class_colors == {1: "#C83C28"}
    _, folder = saved
    (folder / CARD_FILE).write_text(json.dumps(_card(architecture="nope").to_dict()))
    with pytest.raises(CheckpointError, match="does not describe a buildable model: unknown model 'nope'"):
        load_checkpoint(folder)
    # Unknown keys of a same-version card survive a round trip.
    data = {**_card().to_dict(), "future_field": {"x": 1}}
    assert ModelCard.from_dict(data).to_dict()["future_field"] == {"x": 1}


def test_missing_folder_and_unknown_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADESEG_HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither an existing folder nor a known model name"):
        resolve_checkpoint("no-such-model")


def test_available_checkpoints_lists_user_models_and_skips_broken(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADESEG_HOME", str(tmp_path / "home"))
    assert user_models_dir() == tmp_path / "home" / "models"
    assert not user_models_dir().exists()  # listing never creates it
    assert [e for e in available_checkpoints() if e.source == "user"] == []
    model = create_model("unet", **OPTIONS)
    save_checkpoint(model, _card(name="mine"), user_models_dir() / "my-model")
    broken = user_models_dir() / "broken"
    broken.mkdir()
    (broken / CARD_FILE).write_text("[]")
    with pytest.warns(UserWarning, match="skipping checkpoint .*broken"):
        entries = [e for e in available_checkpoints() if e.source == "user"]
    assert [(e.name, e.card.name) for e in entries] == [("my-model", "mine")]
    with pytest.warns(UserWarning):
        assert resolve_checkpoint("my-model") == user_models_dir() / "my-model"


def test_zip_archive_of_a_checkpoint_loads_without_extracting(saved, tmp_path: Path) -> None:
    import zipfile

    model, folder = saved
    archive = tmp_path / "shared-model.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in (CARD_FILE, WEIGHTS_FILE):
            handle.write(folder / name, f"ckpt/{name}")
    loaded, card = load_checkpoint(archive)
    assert card == load_checkpoint(folder)[1] and card.weights_sha256 and resolve_checkpoint(archive) == archive
    x = torch.randn(1, 2, 32, 32)
    assert torch.equal(model(x).logits, loaded(x).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "shared-model.zip"]  # nothing extracted
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really")
    with pytest.raises(CheckpointError, match="not a readable zip archive"):
        load_checkpoint(bad)
