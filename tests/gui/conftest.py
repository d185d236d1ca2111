"""Fixtures of the GUI tests: real scans (whole, or cropped around the lesion to keep the 2-core
CI fast), tiny random-init checkpoints for plumbing tests, and an isolated models folder.

The tiny checkpoints test that the widgets turn engine results into the right layers; whether a
segmentation is *good* is tested with the shipped default model (see test_segment_widget.py).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from gui_helpers import crop_volume

from cascadeseg.io import Volume, load_labels, load_volume
from cascadeseg.shipped import sample_label_path, sample_scan_path

FLAIR_MRI = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}


@pytest.fixture(scope="session", autouse=True)
def _isolated_models_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's ~/.cascadeseg is never read or written by the tests."""
    home = tmp_path_factory.mktemp("cascadeseg_home")
    previous = os.environ.get("CASCADESEG_HOME")
    os.environ["CASCADESEG_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("CASCADESEG_HOME", None)
    else:
        os.environ["CASCADESEG_HOME"] = previous


@pytest.fixture(autouse=True)
def _collect_on_the_gui_thread():
    """A full garbage collection on the GUI thread after each test, once its viewer is closed.

    napari's ``make_napari_viewer`` runs a full one only every 50 tests, so a closed viewer's Qt
    wrappers in reference cycles lived on until some thread's allocation started a full
    collection. Started in a worker (a dock's background task building a model), it destroyed
    them there: ``~QObject`` took Qt's connection lock and waited for the interpreter lock, which
    the GUI thread held while it waited for that Qt lock in ``connect`` (a CI run hung in
    ``test_checkpoint_that_fails_to_load``; gdb showed the two threads). The plugin's own threads
    no longer collect (``napari_cascade._qt.collection``); napari's threads still may, outside the
    plugin's jobs, so the tests leave them no such wrappers to find."""
    yield
    gc.collect()


SAMPLE_CROP = (slice(22, 30), slice(64, 192), slice(64, 192))


@pytest.fixture(scope="session")
def sample_scan() -> Volume:
    return load_volume(sample_scan_path())


@pytest.fixture(scope="session")
def sample_crop(sample_scan: Volume) -> tuple[Volume, Volume]:
    """8 slices x 128 x 128 of the bundled sample around its lesion, with the mask."""
    mask = load_labels(sample_label_path(), reference=sample_scan)
    image = crop_volume(sample_scan, *SAMPLE_CROP)
    labels = crop_volume(mask, *SAMPLE_CROP)
    assert labels.array.any(), "the crop must contain lesion voxels"
    return image, labels


def _tiny_checkpoint(folder: Path, architecture: str, name: str, loss: str | None = None, **card_extra) -> Path:
    import torch

    from cascadeseg.inference.checkpoint import ModelCard, save_checkpoint

    torch.manual_seed(0)
    card = ModelCard(
        architecture=architecture,
        model_options={"in_channels": 1, "num_classes": 2, "dims": 2, "base_width": 4},
        dims=2,
        input_channels=[{"name": "FLAIR", "preprocessing": FLAIR_MRI}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}],
        name=name,
        description="random-init test model",
        training={"data": "none (random init, tests only)", "licence": "BSD-3-Clause", **({"loss": loss} if loss else {})},
        **card_extra,
    )
    model = card.create_model().eval()
    return save_checkpoint(model, card, folder / name)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init 2D checkpoints: ANU-Net (depths + attention), plain cascade (stages), and a
    2-channel one (channel mapping)."""
    root = tmp_path_factory.mktemp("checkpoints")
    anu = _tiny_checkpoint(
        root, "anu_net", "tiny-anu", loss="dice_ce",  # not its paper's loss (anu_hybrid)
        recommended_depth=2,
        validation={"dice_per_depth": {"1": 0.5, "2": 0.6, "3": 0.62, "4": 0.63},
                    "params_per_depth": {"1": 1000, "2": 5000, "3": 20000, "4": 90000}},
    )
    cascade = _tiny_checkpoint(root, "cascaded_unet", "tiny-cascade")
    two = root / "tiny-two-channel"
    import torch

    from cascadeseg.inference.checkpoint import ModelCard, save_checkpoint

    card = ModelCard(
        architecture="unet",
        model_options={"in_channels": 2, "num_classes": 2, "dims": 2, "base_width": 4},
        dims=2,
        input_channels=[{"name": "T1c", "preprocessing": FLAIR_MRI}, {"name": "FLAIR", "preprocessing": FLAIR_MRI}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "tumour"}],
        name="tiny-two-channel",
    )
    torch.manual_seed(0)
    save_checkpoint(card.create_model().eval(), card, two)
    return {"anu": anu, "cascade": cascade, "two_channel": two}


@pytest.fixture(scope="session")
def large_ct_file(shared_data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real TotalSegmentator CT and its organ map resampled to 600 x 512 x 512 voxels
    (tests/gui/large_ct.py), written uncompressed (157 M voxels: gzip would take half a minute)."""
    from large_ct import large_ct

    from cascadeseg.io import save_labels, save_volume

    folder = tmp_path_factory.mktemp("large_ct")
    image, organs = large_ct(shared_data)
    scan = save_volume(image, folder / "large_ct.nii")
    labels = save_labels(organs.array, image, folder / "large_ct_organs_seg.nii")
    return scan, labels
