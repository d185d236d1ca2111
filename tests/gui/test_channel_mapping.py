"""The model's channels are mapped to image layers by the card's channel names against what the
layers say about their scans: file names, DICOM series descriptions, modality (header, names or
the Hounsfield-unit signature of the voxels). Real scans, real file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_cascade._channels import map_channels, words
from napari_cascade._qt.segment_widget import SegmentWidget

PLUGIN = "napari-cascade"
MRI = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}


def _mapped(widget: SegmentWidget) -> list[str]:
    return [combo.currentText() for combo in widget.channels.combos]


def test_brats_files_map_by_their_modality_words(make_napari_viewer, qtbot, shared_data: Path, tiny_models) -> None:
    """T1c and FLAIR of a BraTS case (``*_t1c_bet``, ``*_fla_bet``; ``*_t1_bet`` must not pass for
    T1c), whatever order the files were opened in."""
    viewer = make_napari_viewer()
    folder = shared_data / "brats-like/TCGA-DU-7294"
    for name in ("t2", "fla", "t1", "t1c"):  # an order that puts the wrong layers first
        viewer.open(str(folder / f"TCGA-DU-7294_{name}_bet.nii.gz"), plugin=PLUGIN)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.models.select_path(tiny_models["two_channel"])  # channels T1c, FLAIR
    assert _mapped(widget) == ["TCGA-DU-7294_t1c_bet", "TCGA-DU-7294_fla_bet"]
    assert not widget.channels.unconfirmed
    # A choice the user makes stays, while its layer exists.
    combo = widget.channels.combos[1]
    combo.setCurrentText("TCGA-DU-7294_t2_bet")
    combo.activated.emit(combo.currentIndex())
    viewer.open(str(shared_data / "totalseg/example_ct_sm.nii.gz"), plugin=PLUGIN)
    assert _mapped(widget) == ["TCGA-DU-7294_t1c_bet", "TCGA-DU-7294_t2_bet"]


def test_dicom_series_description_names_the_channel(make_napari_viewer, qtbot, shared_data: Path, tiny_models) -> None:
    """The TCIA study as its NIfTI pair (``_0000``/``_0001``: nothing says which is which) plus the
    DICOM series whose SeriesDescription is 'T1post': T1c maps to the DICOM series, and FLAIR,
    named by nothing, is flagged for the user to check rather than silently guessed."""
    viewer = make_napari_viewer()
    viewer.open(str(shared_data / "tcia-btp/imagesTr/PGBM-001_19920402_0000.nii.gz"), plugin=PLUGIN)
    (dicom,) = viewer.open(str(shared_data / "dicom/PGBM-001_19920402/T1post"), plugin=PLUGIN)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.models.select_path(tiny_models["two_channel"])
    assert _mapped(widget)[0] == dicom.name == "T1post"
    assert widget.channels.unconfirmed == ["FLAIR"] and "'FLAIR'" in widget.channels.note.text()


def test_ct_channel_takes_the_ct_scan_by_its_intensities(make_napari_viewer, shared_data: Path) -> None:
    """A CT channel (CT-window preprocessing) picks the scan whose voxels are Hounsfield units over
    an MRI opened before it; an MR channel never picks the CT."""
    viewer = make_napari_viewer()
    (mri,) = viewer.open(str(shared_data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz"), plugin=PLUGIN)
    (ct,) = viewer.open(str(shared_data / "totalseg/example_ct_sm.nii.gz"), plugin=PLUGIN)
    assert ct.metadata["cascadeseg"]["modality"] == "CT"
    layers = [mri, ct]
    (choice,) = map_channels([{"name": "image", "preprocessing": {"type": "ct_window", "preset": "abdomen"}}], layers)
    assert choice.layer is ct
    (choice,) = map_channels([{"name": "FLAIR", "preprocessing": MRI}], layers[::-1])
    assert choice.layer is mri


@pytest.mark.parametrize("text, expected", [
    ("TCGA-DU-7294_fla_bet", {"flair"}), ("T1post", {"t1c"}), ("BraTS_t1ce", {"t1c"}),
    ("sub-01_T2w", {"t2"}), ("CT Body 3.0", {"ct"}), ("t2-flair", {"flair"}),
])
def test_sequence_words(text: str, expected: set[str]) -> None:
    assert expected <= words(text)
    assert not ({"t1c", "t1", "t2", "flair", "ct"} - expected) & words(text)
