"""Ensembles: several networks of one architecture averaged behind the one output contract
(cascadeseg.models.ensemble), written by `cascadeseg ensemble` and loaded like any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.cli.main import main
from cascadeseg.errors import ModelConfigError
from cascadeseg.models import OutputRequest, create_model
from cascadeseg.models.ensemble import ModelEnsemble, ensemble_state, member_state

HIPPOCAMPUS = "hippocampus_unet_plus_plus_3d"


def test_ensemble_averages_the_members_probabilities_in_every_output() -> None:
    torch.manual_seed(0)
    members = [create_model("unet_sharp", in_channels=1, num_classes=3, dims=2, base_width=4).eval() for _ in range(3)]
    ensemble = ModelEnsemble(members).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = ensemble(x, depth=3, request=OutputRequest(heads=True, classification=True))
        alone = [m(x, depth=3, request=OutputRequest(heads=True, classification=True)) for m in members]
    expected = torch.stack([o.logits.softmax(1) for o in alone]).mean(0)
    assert torch.allclose(out.logits.softmax(1), expected, atol=1e-6)
    assert sorted(out.heads) == [1, 2, 3]
    for depth in out.heads:
        head = torch.stack([o.heads[depth].softmax(1) for o in alone]).mean(0)
        assert torch.allclose(out.heads[depth].softmax(1), head, atol=1e-6)
    presence = torch.stack([o.classification.sigmoid() for o in alone]).mean(0)
    assert out.classification is not None
    assert torch.allclose(out.classification.sigmoid(), presence, atol=1e-6)
    # The ensemble answers what the predictor asks a model.
    assert (ensemble.max_depth, ensemble.size_divisor, ensemble.info.name) == (
        members[0].max_depth, members[0].size_divisor, "unet_sharp")
    with pytest.raises(ModelConfigError, match="pruning depth 5"):
        ensemble(x, depth=5)


def test_members_of_another_architecture_or_task_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nested = create_model("unet_plus_plus", in_channels=1, num_classes=3, dims=3, base_width=4)
    plain = create_model("unet_plus_plus", in_channels=1, num_classes=2, dims=3, base_width=4)
    with pytest.raises(ModelConfigError, match="member 1 .*classes 2.*differs from member 0"):
        ModelEnsemble([nested, plain])
    with pytest.raises(ModelConfigError, match="at least 2"):
        ModelEnsemble([nested])
    # The 3D hippocampus model and the 2D abdominal one: refused naming what differs, nothing written.
    assert main(["ensemble", HIPPOCAMPUS, "chaos_t2_anu_net_2d", "--out", str(tmp_path / "x")]) == 2
    assert "differ in architecture, model_options, dims, class_values" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["ensemble", HIPPOCAMPUS, "--out", str(tmp_path / "x")]) == 2
    assert "at least 2 checkpoints" in capsys.readouterr().err


def test_an_ensemble_checkpoint_segments_a_real_crop_and_is_scored_on_its_card(
    shared_data: Path, tmp_path: Path
) -> None:
    """`cascadeseg ensemble` of the shipped model with itself: the checkpoint round-trips, its card
    keeps both members' training, and the predictor gives the member's own probabilities (the mean
    of two equal distributions), so the Dice it records for a real crop is the single model's."""
    from cascadeseg.inference import load_checkpoint, resolve_checkpoint
    from cascadeseg.inference.predictor import PredictionRequest, Predictor
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    out = tmp_path / "hippo_x2"
    case = "hippocampus_001"
    data = shared_data / "hippocampus"
    assert main(["ensemble", HIPPOCAMPUS, HIPPOCAMPUS, "--out", str(out), "--name", "hippo x2",
                 "--score-data", str(data), "--score-case", case]) == 0
    card = json.loads((out / "model_card.json").read_text())
    single_model, single = load_checkpoint(resolve_checkpoint(HIPPOCAMPUS))
    assert card["ensemble_members"] == 2 and card["name"] == "hippo x2"
    assert [m["weights_sha256"] for m in card["training"]["members"]] == [single.weights_sha256] * 2
    assert card["validation"]["cases"] == [case]
    model, loaded = load_checkpoint(out)
    assert isinstance(model, ModelEnsemble) and loaded.recommended_depth == single.recommended_depth
    for index in range(2):
        assert all(torch.equal(v, single_model.state_dict()[k])
                   for k, v in member_state(model.state_dict(), index).items())

    scan = load_volume(data / "imagesTr" / f"{case}_0000.nii.gz")
    want = PredictionRequest(probabilities=True, mirror=True)
    both = Predictor.from_checkpoint(out, device="cpu").predict(scan, want=want)
    one = Predictor.from_checkpoint(HIPPOCAMPUS, device="cpu").predict(scan, want=want)
    np.testing.assert_allclose(np.asarray(both.probabilities.array), np.asarray(one.probabilities.array), atol=1e-5)
    assert np.array_equal(np.asarray(both.labels.array), np.asarray(one.labels.array))
    truth = load_labels(data / "labelsTr" / f"{case}.nii.gz").array
    alone = case_mean_dice(np.asarray(one.labels.array), np.asarray(truth), [1, 2])
    assert card["validation"]["dice_per_case"][str(single.recommended_depth)][case] == pytest.approx(alone, abs=1e-4)


def test_fine_tuning_an_ensemble_starts_from_its_first_member(tmp_path: Path) -> None:
    from cascadeseg.inference import load_checkpoint, resolve_checkpoint, save_checkpoint
    from cascadeseg.models import SegmentationModel
    from cascadeseg.training.transfer import load_for_data

    single_model, single = load_checkpoint(resolve_checkpoint(HIPPOCAMPUS))
    other = create_model("unet_plus_plus", **{**single.model_options, "in_channels": 1, "num_classes": 3, "dims": 3})
    ensemble = ModelEnsemble([single_model, other])
    import dataclasses

    folder = save_checkpoint(ensemble, dataclasses.replace(single, ensemble_members=2, weights_sha256=None),
                             tmp_path / "x2")
    state = ensemble_state([single_model.state_dict(), other.state_dict()])
    assert sorted(state) == sorted(ensemble.state_dict())
    # The same channel: the first member as it is.
    model, card, mapping = load_for_data(str(folder), 1, single.channel_names)
    assert isinstance(model, SegmentationModel) and card.ensemble_members == 1 and mapping == [0]
    assert all(torch.equal(v, single_model.state_dict()[k]) for k, v in model.state_dict().items())
    # A second channel: the first member's weights, inflated (the new channel starts at zero).
    model, card, mapping = load_for_data(str(folder), 2, [single.channel_names[0], "T2"])
    assert mapping == [0, None] and card.ensemble_members == 1
    first_conv = next(k for k, v in model.state_dict().items() if v.ndim == 5 and v.shape[1] == 2)
    weights = model.state_dict()[first_conv]
    assert torch.equal(weights[:, :1], single_model.state_dict()[first_conv]) and not weights[:, 1].any()


def test_an_ensemble_drops_a_members_foreground_threshold(tmp_path: Path) -> None:
    """A threshold chosen on one member's probabilities does not fit the members' average: the
    ensemble's card labels by the argmax."""
    import shutil

    from cascadeseg.inference import load_checkpoint, resolve_checkpoint
    from cascadeseg.training.export import build_ensemble

    member = tmp_path / "member"
    shutil.copytree(resolve_checkpoint("lgg_flair_cascaded_unet_2d"), member)
    card = json.loads((member / "model_card.json").read_text())
    (member / "model_card.json").write_text(json.dumps({**card, "foreground_threshold": 0.3}))
    assert load_checkpoint(member)[1].foreground_threshold == 0.3
    _, ensemble = load_checkpoint(build_ensemble([member, member], tmp_path / "x2"))
    assert ensemble.ensemble_members == 2 and ensemble.foreground_threshold is None
