"""Writer: a labels layer saved through the plugin is a NIfTI with the source scan's geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.errors import OutputExistsError
from napari_cascade._writer import write_labels

PLUGIN = "napari-cascade"

CASES = [
    # oblique TCIA scan (rotated direction), and a LGG scan stored RAS-flipped
    ("tcia-btp/imagesTr/PGBM-001_19920402_0000.nii.gz", "tcia-btp/labelsTr/PGBM-001_19920402.nii.gz"),
    ("lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz", "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz"),
]


@pytest.mark.parametrize(("image_file", "label_file"), CASES)
def test_labels_round_trip_keeps_the_source_affine(make_napari_viewer, shared_data: Path, tmp_path: Path,
                                                   image_file: str, label_file: str) -> None:
    viewer = make_napari_viewer()
    image_layers = viewer.open(str(shared_data / image_file), plugin=PLUGIN)
    (labels,) = viewer.open(str(shared_data / label_file), plugin=PLUGIN)
    # Edit the mask in napari, then save it through the plugin's writer.
    edited = np.asarray(labels.data).copy()
    edited[0, :5, :5] = 3
    labels.data = edited
    target = tmp_path / "edited_mask.nii.gz"
    written = labels.save(str(target), plugin=PLUGIN)
    assert [Path(p) for p in written] == [target]

    source = nib.load(shared_data / label_file)
    saved = nib.load(target)
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-4)
    assert np.issubdtype(saved.get_data_dtype(), np.integer)
    # Same voxels in the file's own orientation: the source mask plus the edit made in napari.
    (reopened,) = viewer.open(str(target), plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(reopened.data), edited)
    np.testing.assert_allclose(reopened.data_to_world((1, 2, 3)), image_layers[0].data_to_world((1, 2, 3)), atol=1e-4)


def test_labels_drawn_in_napari_take_geometry_from_their_transform(make_napari_viewer, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(shared_data / "totalseg/example_ct_sm.nii.gz"), plugin=PLUGIN)
    drawn = viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint8), scale=image.scale,
                              translate=image.translate, name="drawn")
    drawn.data[10, 20:30, 20:30] = 1
    target = tmp_path / "drawn.nii.gz"
    drawn.save(str(target), plugin=PLUGIN)
    # No metadata: the file is written in the canonical orientation, at the same physical place.
    assert nib.load(target).shape == image.data.shape[::-1]
    (reopened,) = viewer.open(str(target), plugin=PLUGIN)
    np.testing.assert_allclose(reopened.data_to_world((10, 25, 25)), image.data_to_world((10, 25, 25)), atol=1e-4)
    assert int(np.asarray(reopened.data)[10, 25, 25]) == 1


def test_writer_never_replaces_the_scan_itself(shared_data: Path, tmp_path: Path) -> None:
    from napari_cascade._reader import read_path

    scan = tmp_path / "scan.nii.gz"
    shutil.copy(shared_data / "totalseg/example_ct_sm.nii.gz", scan)
    before = scan.read_bytes()
    (data, kwargs, _), = read_path(scan)
    with pytest.raises(OutputExistsError, match="drawn on"):
        write_labels(str(scan), np.zeros(data.shape, np.uint8), {"name": "mask", **kwargs})
    assert scan.read_bytes() == before


def test_saving_through_the_writer_clears_that_layers_recovery_file(make_napari_viewer, shared_data: Path,
                                                                    tmp_path: Path) -> None:
    """File > Save is a clean save: the scan's crash-recovery file of the saved layer goes away;
    one holding another layer of the same scan stays."""
    from cascadeseg.editing.autosave import RecoveryStore

    viewer = make_napari_viewer()
    scan_path = shared_data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz"
    (image,) = viewer.open(str(scan_path), plugin=PLUGIN)
    mask = viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint8), name="working mask",
                             metadata=dict(image.metadata))
    mask.data[5, 10:20, 10:20] = 1
    store = RecoveryStore()
    store.save(str(scan_path), np.asarray(mask.data), layer_name="another mask")
    mask.save(str(tmp_path / "kept.nii.gz"), plugin=PLUGIN)
    assert store.find(str(scan_path)) is not None  # another layer's edits: not ours to drop
    store.save(str(scan_path), np.asarray(mask.data), layer_name="working mask")
    mask.save(str(tmp_path / "saved.nii.gz"), plugin=PLUGIN)
    assert store.find(str(scan_path)) is None
    assert np.array_equal(np.asarray(viewer.open(str(tmp_path / "saved.nii.gz"), plugin=PLUGIN)[0].data),
                          np.asarray(mask.data))
