"""Every real sample of ../shared/data opens through the plugin's reader with the right layers,
channels, scale (voxel spacing) and physical position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels

from cascadeseg.io import load_volume, save_volume
from napari_cascade._reader import get_reader

PLUGIN = "napari-cascade"


def _itk_spacing_zyx(path: Path) -> tuple[float, ...]:
    """Spacing straight from SimpleITK (independent of the engine), in array order."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        image = sitk.ReadImage(files[0])
        spacing = list(image.GetSpacing())
        # Slice spacing of a series is the distance between neighbouring slice positions.
        # GDCM sorts the files by position: the first two are neighbours.
        first, second = (np.array(sitk.ReadImage(f).GetOrigin()) for f in files[:2])
        spacing[2] = float(np.linalg.norm(second - first))
        return tuple(spacing[::-1])
    return tuple(sitk.ReadImage(str(path)).GetSpacing()[::-1])


def _world(layer, index=(0, 0, 0)) -> np.ndarray:
    return np.asarray(layer.data_to_world(np.asarray(index, dtype=float)))


# (relative path, expected [(layer type, name fragment)], file giving the spacing)
SAMPLES = [
    ("lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz", [Image], None),
    ("lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz", [Labels], None),
    ("lgg-flair", [Image, Labels], "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz"),
    ("tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz", [Image, Image], None),
    ("tcia-btp/labelsTr/PGBM-003_19950329.nii.gz", [Labels], None),
    ("dicom/PGBM-001_19920402/T1post", [Image], None),
    ("brats-like/TCGA-DU-7294/TCGA-DU-7294_t1_bet.nii.gz", [Image], None),
    ("brats-like/TCGA-DU-7294/TCGA-DU-7294_fla_bet.nii.gz", [Image], None),
    ("brats-like/TCGA-DU-7294/simple.nii.gz", [Labels], None),
    ("brats-like/TCGA-DU-7294/hnfnetv1-20.nii.gz", [Labels], None),
    ("totalseg/example_ct.nii.gz", [Image], None),
    ("totalseg/example_seg_fast_force_split.nii.gz", [Labels], None),
    ("totalseg/example_ct_dicom", [Image], None),
    ("totalseg/example_mr_sm.nii.gz", [Image], None),
    ("totalseg/example_seg_mr.nii.gz", [Labels], None),
]


def test_every_sample_opens_with_scale_and_channels(make_napari_viewer, shared_data: Path) -> None:
    viewer = make_napari_viewer()
    for relative, kinds, spacing_from in SAMPLES:
        path = shared_data / relative
        assert path.exists(), path
        layers = viewer.open(str(path), plugin=PLUGIN)
        assert [type(layer) for layer in layers] == kinds, relative
        expected = _itk_spacing_zyx(shared_data / (spacing_from or relative))
        for layer in layers:
            assert layer.data.ndim == 3, relative
            np.testing.assert_allclose(layer.scale, expected, rtol=1e-4, err_msg=relative)
            assert layer.metadata["cascadeseg"]["spacing"] == pytest.approx(list(expected), rel=1e-4)
        for layer in layers[1:]:  # channels and labels of one case share its grid
            assert layer.data.shape == layers[0].data.shape
            np.testing.assert_allclose(_world(layer, (3, 5, 7)), _world(layers[0], (3, 5, 7)))
    names = [layer.name for layer in viewer.layers]
    # Multi-channel cases: one layer per channel, named by the channel.
    assert "PGBM-003_19950329 [0000]" in names and "PGBM-003_19950329 [0001]" in names
    # CT opens with the engine's window preset, MRI with percentile limits inside its range.
    from cascadeseg.preprocessing import CT_WINDOWS

    ct = viewer.layers["example_ct"]
    assert tuple(ct.contrast_limits) == pytest.approx(CT_WINDOWS["abdomen"])
    mri = viewer.layers["TCGA-DU-7294_t1_bet"]
    assert 0 <= mri.contrast_limits[0] < mri.contrast_limits[1] <= float(mri.data.max())
    brats = viewer.layers["hnfnetv1-20"]
    assert set(np.unique(brats.data)) == {0, 1, 2, 4}


def test_dicom_and_nifti_of_one_scan_lie_at_the_same_place(make_napari_viewer, shared_data: Path) -> None:
    """The oblique TCIA scan: DICOM series and its NIfTI conversion overlay voxel for voxel."""
    viewer = make_napari_viewer()
    (dicom,) = viewer.open(str(shared_data / "dicom/PGBM-001_19920402/T1post"), plugin=PLUGIN)
    nifti, _ = viewer.open(str(shared_data / "tcia-btp/imagesTr/PGBM-001_19920402_0000.nii.gz"), plugin=PLUGIN)
    assert dicom.data.shape == nifti.data.shape
    np.testing.assert_array_equal(np.asarray(dicom.data), np.asarray(nifti.data))
    for index in [(0, 0, 0), (23, 319, 259), (12, 100, 50)]:
        np.testing.assert_allclose(_world(dicom, index), _world(nifti, index), atol=1e-3)
    # Oblique: the direction is a real rotation, kept as the layer's rotate (scale stays spacing).
    assert not np.allclose(dicom.rotate, np.eye(3), atol=1e-3)
    np.testing.assert_allclose(dicom.scale, (6.5, 0.6875, 0.6875), rtol=1e-4)


def test_mha_and_nrrd_open_like_the_nifti(make_napari_viewer, shared_data: Path, tmp_path: Path) -> None:
    source = load_volume(shared_data / "totalseg/example_ct_sm.nii.gz")
    viewer = make_napari_viewer()
    (reference,) = viewer.open(str(shared_data / "totalseg/example_ct_sm.nii.gz"), plugin=PLUGIN)
    for suffix in (".mha", ".nrrd"):
        path = save_volume(source, tmp_path / f"example_ct_sm{suffix}")
        (layer,) = viewer.open(str(path), plugin=PLUGIN)
        np.testing.assert_array_equal(np.asarray(layer.data), np.asarray(reference.data))
        np.testing.assert_allclose(layer.scale, reference.scale, rtol=1e-6)
        np.testing.assert_allclose(_world(layer, (5, 6, 7)), _world(reference, (5, 6, 7)), atol=1e-4)


def test_every_lgg_patient_reads_as_one_flair_channel(shared_data: Path) -> None:
    """The 80-patient cohort through the reader function (no viewer: layer data only)."""
    files = sorted((shared_data / "lgg-flair/imagesTr").glob("*_0000.nii.gz"))
    assert len(files) == 80
    for path in files:
        reader = get_reader(str(path))
        assert reader is not None, path
        (layer,) = reader(str(path))
        data, kwargs, kind = layer
        assert kind == "image" and data.ndim == 3 and data.shape[1:] == (256, 256), path
        assert kwargs["scale"] == (1.0, 1.0, 1.0)


def test_dicom_folder_with_two_series_opens_both(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "two_series"
    folder.mkdir()
    for prefix, series in (("mr", "dicom/PGBM-001_19920402/T1post"), ("ct", "totalseg/example_ct_dicom")):
        for item in (shared_data / series).iterdir():
            shutil.copy(item, folder / f"{prefix}_{item.name}")
    layers = get_reader(str(folder))(str(folder))
    shapes = sorted(data.shape for data, _, _ in layers)
    assert shapes == [(20, 512, 512), (24, 320, 260)]
    names = {kwargs["name"] for _, kwargs, _ in layers}
    assert names == {"two_series [CT Body 3.0]", "two_series [T1post]"}


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a scan")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder with neither DICOM nor imagesTr/


def test_plain_folder_of_nifti_files_opens_every_scan(make_napari_viewer, shared_data: Path) -> None:
    """A BraTS-style case folder (one file per modality plus algorithm label maps, no imagesTr/):
    it used to be refused. Images first, each named by its file; the label maps on top, as labels."""
    folder = shared_data / "brats-like/TCGA-DU-7294"
    assert get_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    kinds = [(type(layer).__name__, layer.name) for layer in layers]
    assert kinds == [("Image", "TCGA-DU-7294_fla_bet"), ("Image", "TCGA-DU-7294_t1_bet"),
                     ("Image", "TCGA-DU-7294_t1c_bet"), ("Image", "TCGA-DU-7294_t2_bet"),
                     ("Labels", "hnfnetv1-20"), ("Labels", "isen-20"), ("Labels", "simple")]
    for layer in layers[1:]:
        assert layer.data.shape == layers[0].data.shape
        np.testing.assert_allclose(_world(layer, (3, 5, 7)), _world(layers[0], (3, 5, 7)))
    assert set(np.unique(viewer.layers["hnfnetv1-20"].data)) == {0, 1, 2, 4}


def test_label_map_decision_lives_in_the_engine(shared_data: Path) -> None:
    """cascadeseg.io.label_maps decides label map vs image from name and values (no napari)."""
    from cascadeseg.io.label_maps import looks_like_label_map, named_like_label_map

    cases = {
        "brats-like/TCGA-DU-7294/simple.nii.gz": True,  # no hint in the name: few integer values
        "brats-like/TCGA-DU-7294/TCGA-DU-7294_t1_bet.nii.gz": False,
        "totalseg/example_seg_fast_force_split.nii.gz": True,  # 117 organ values: named 'seg'
        "totalseg/example_ct.nii.gz": False,  # integers, thousands of values
        "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz": True,
        "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz": False,  # uint8 MRI, ~256 values
    }
    for relative, expected in cases.items():
        path = shared_data / relative
        assert looks_like_label_map(load_volume(path, whole_case=False), path) is expected, relative
    assert named_like_label_map("labelsTr/case.nii.gz") and not named_like_label_map("segmental_t1.nii.gz")


def test_reading_from_the_event_loop_happens_in_the_background(make_napari_viewer, qtbot, shared_data: Path) -> None:
    """File > Open runs inside the event loop: the reader returns at once (napari's 'no layers'
    sentinel) and the layers arrive from a worker; a failing read becomes an error toast."""
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_cascade._qt.background_read import pending_reads, wait_for_reads
    from napari_cascade._reader import NO_LAYERS, read_paths

    viewer = make_napari_viewer()
    returned: list = []
    loop = QEventLoop()

    def open_like_a_menu() -> None:
        returned.append(read_paths(str(shared_data / "tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz")))
        returned.append(pending_reads())
        loop.quit()

    QTimer.singleShot(0, open_like_a_menu)
    loop.exec()
    assert returned == [NO_LAYERS, 1]
    assert wait_for_reads(60)
    assert [layer.data.shape for layer in viewer.layers] == [(22, 320, 280), (22, 320, 280)]
    # Outside the event loop (a script) the same call returns the layers.
    assert len(read_paths(str(shared_data / "tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz"))) == 2


def test_a_background_open_gives_the_viewer_its_axes_a_turn_before_the_first_layer(
    make_napari_viewer, qtbot, shared_data: Path
) -> None:
    """The first 3D layer of a viewer costs napari a new slider and a canvas resize besides the
    insertion; the background open raises the viewer's axes in a turn of their own, while no layer
    exists yet, and the user sees the same view as a script that adds the layers at once."""
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_cascade._qt.background_read import wait_for_reads
    from napari_cascade._reader import read_now, read_paths

    path = shared_data / "tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz"
    viewer = make_napari_viewer()
    layers_when_3d: list[int] = []
    viewer.dims.events.ndim.connect(lambda event: layers_when_3d.append(len(viewer.layers)))
    loop = QEventLoop()
    QTimer.singleShot(0, lambda: (read_paths(str(path)), loop.quit()))
    loop.exec()
    assert wait_for_reads(60)
    assert layers_when_3d == [0] and len(viewer.layers) == 2

    reference = make_napari_viewer()
    for data, kwargs, kind in read_now([path]):
        getattr(reference, f"add_{kind}")(data, **kwargs)

    def view(v) -> tuple:
        return (v.dims.ndim, v.dims.range, v.dims.current_step, v.dims.axis_labels, v.dims.order,
                tuple(np.round(v.camera.center, 6)), round(v.camera.zoom, 6))

    assert view(viewer) == view(reference)

    # A viewer that holds a 2D layer keeps napari's own way: the scan's layers arrive as a script's.
    flat_reference = make_napari_viewer()
    flat = make_napari_viewer()  # the newest viewer: the one napari's File > Open serves
    for target in (flat, flat_reference):
        target.add_image(np.zeros((50, 60), np.float32), name="a 2D image")
    QTimer.singleShot(0, lambda: (read_paths(str(path)), loop.quit()))
    loop.exec()
    assert wait_for_reads(60)
    for data, kwargs, kind in read_now([path]):
        getattr(flat_reference, f"add_{kind}")(data, **kwargs)
    assert [layer.data.shape for layer in flat.layers] == [(50, 60), (22, 320, 280), (22, 320, 280)]
    assert view(flat) == view(flat_reference)
