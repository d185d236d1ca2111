"""The main job, ``cascadeseg demo``: headless (mask + PNG, napari never imported) and in napari."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from gui_helpers import wait_for_job

from cascadeseg.cli.demo import choose_models, free_path
from cascadeseg.errors import CheckpointError
from cascadeseg.inference import available_checkpoints
from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint
from cascadeseg.io import load_labels
from cascadeseg.metrics import case_mean_dice
from cascadeseg.shipped import SAMPLE_CASE_ID, sample_label_path, sample_scan_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _shipped() -> list:
    return [entry for entry in available_checkpoints() if entry.source == "shipped"]


def test_headless_demo_writes_mask_and_overview_without_napari(tmp_path: Path, tiny_models, artifacts_dir) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # no display
    env["OMP_NUM_THREADS"] = "2"
    code = (
        "import sys; from cascadeseg.cli.main import main; "
        f"rc = main(['demo', '--out', {str(out)!r}, '--model', {str(tiny_models['cascade'])!r}]); "
        "gui = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PySide6', 'magicgui')]; "
        "print('GUI modules:', gui); sys.exit(rc or (3 if gui else 0))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GUI modules: []" in proc.stdout
    mask = out / f"{SAMPLE_CASE_ID}_mask.nii.gz"
    png = out / f"{SAMPLE_CASE_ID}_overview.png"
    assert str(mask) in proc.stdout and str(png) in proc.stdout
    saved, source = nib.load(mask), nib.load(sample_scan_path())
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-5)
    assert saved.shape == source.shape and np.issubdtype(saved.get_data_dtype(), np.integer)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    (artifacts_dir / "demo_overview_tiny_model.png").write_bytes(data)
    print(f"\nheadless demo overview: {artifacts_dir / 'demo_overview_tiny_model.png'}")
    assert "stage1" in proc.stdout and "stage2" in proc.stdout  # the cascade's stages are in the overview


def test_outputs_are_never_overwritten_silently(tmp_path: Path) -> None:
    first = tmp_path / "case_mask.nii.gz"
    assert free_path(first, overwrite=False) == first
    first.write_bytes(b"x")
    assert free_path(first, overwrite=False) == tmp_path / "case_mask_2.nii.gz"
    (tmp_path / "case_mask_2.nii.gz").write_bytes(b"x")
    assert free_path(first, overwrite=False) == tmp_path / "case_mask_3.nii.gz"
    assert free_path(first, overwrite=True) == first
    assert free_path(tmp_path / "o.png", overwrite=False) == tmp_path / "o.png"


def test_default_model_choice(monkeypatch) -> None:
    shipped = _shipped()
    assert shipped, "no default model shipped in resources/checkpoints (the README's main job needs one)"
    models = choose_models()
    assert models.main in [entry.path for entry in shipped]
    from cascadeseg.inference import checkpoint

    monkeypatch.setattr(checkpoint, "shipped_checkpoints_dir", lambda: None)
    with pytest.raises(CheckpointError, match="no default model"):
        choose_models()


def test_headless_demo_with_the_shipped_default(tmp_path: Path, artifacts_dir) -> None:
    assert _shipped(), "no default model shipped in resources/checkpoints (the README's main job needs one)"
    from cascadeseg.cli.demo import run_headless

    report = run_headless(choose_models(), tmp_path, device="cpu")
    print(report)
    dice = [float(line.rsplit(":", 1)[1]) for line in report.splitlines() if "(mask)" in line]
    assert dice and dice[0] > 0.6, report  # as test_segment_widget.SAMPLE_DICE_FLOOR
    png = tmp_path / f"{SAMPLE_CASE_ID}_overview.png"
    (artifacts_dir / "demo_overview.png").write_bytes(png.read_bytes())
    print(f"headless demo overview: {artifacts_dir / 'demo_overview.png'}")
    if os.environ.get("CASCADESEG_UPDATE_SCREENSHOTS") == "1":
        docs = Path(__file__).parents[2] / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "demo_overview.png").write_bytes(png.read_bytes())


@pytest.mark.parametrize(("sample", "floor"), [("abdomen", 0.82), ("ct", 0.74)])
def test_headless_demo_on_the_abdominal_and_ct_samples(sample: str, floor: float, tmp_path: Path) -> None:
    """`cascadeseg demo --sample abdomen|ct --headless`: the sample's own shipped model (CHAOS
    ANU-Net in 2D, CT liver U-Net in 3D) segments it; mean Dice over the model's classes against the
    sample's reference (measured 0.868 and 0.786 on this CPU; floors 0.05 below)."""
    from cascadeseg.cli.main import main
    from cascadeseg.shipped import sample as bundled

    assert main(["demo", "--sample", sample, "--headless", "--device", "cpu", "--out", str(tmp_path)]) == 0
    case = bundled(sample).case_id
    mask = load_labels(tmp_path / f"{case}_mask.nii.gz")
    reference = load_labels(sample_label_path(sample))
    assert mask.array.shape == reference.array.shape and np.allclose(mask.spacing, reference.spacing)
    model = read_card(resolve_checkpoint(bundled(sample).model))
    dice = case_mean_dice(np.asarray(mask.array), np.asarray(reference.array), [v for v in model.class_values if v])
    assert dice >= floor, dice
    assert (tmp_path / f"{case}_overview.png").stat().st_size > 10_000


def truth_name(viewer) -> str:
    return next(layer.name for layer in viewer.layers if layer.name.endswith("ground truth"))


def test_gui_demo_docks_both_widgets_runs_them_and_screenshots(make_napari_viewer, qtbot, artifacts_dir) -> None:
    """The GUI main job on the bundled sample, then screenshots of the main views.

    With the shipped default the screenshots are the README's; set
    CASCADESEG_UPDATE_SCREENSHOTS=1 to copy them into docs/screenshots/.
    """
    from napari_cascade._qt.demo_viewer import setup_demo

    shipped = bool(_shipped())
    assert shipped, "no default model shipped in resources/checkpoints (the README's main job needs one)"
    models = choose_models()
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    segment, compare = setup_demo(viewer, models, device="cpu")
    assert {"Segment", "Compare stages and depths"} <= {
        name.split(" (")[0] for name in viewer.window._dock_widgets
    }
    wait_for_job(qtbot, segment, 600_000)
    qtbot.waitUntil(lambda: compare.job.last_outcome is not None and not compare.job.busy, timeout=600_000)
    qtbot.waitUntil(lambda: not segment.busy and not compare.busy, timeout=60_000)
    assert segment.job.last_outcome.ok and compare.job.last_outcome.ok
    names = [layer.name for layer in viewer.layers]
    assert any(name.startswith(f"{SAMPLE_CASE_ID}") and " · lgg_flair" in name for name in names)
    rows = compare.table_rows()
    assert rows and all(cells[0] != "—" for cells in rows.values())  # the sample's ground truth was used
    shots = {}
    # The demo ends on the comparison: its panels shown, the user's layers hidden meanwhile.
    assert compare.panel_titles()[:2] == [f"ground truth · {truth_name(viewer)}", "L1"]
    assert all(layer.visible for layer in viewer.layers if layer.name.startswith("compare · "))
    qtbot.wait(300)
    shots["napari_compare.png"] = viewer.screenshot(canvas_only=False, flash=False)
    compare.grid.setChecked(False)
    viewer.layers.selection.active = next(layer for layer in viewer.layers if "lgg_flair" in layer.name)
    next(dock for name, dock in viewer.window._dock_widgets.items() if name.startswith("Segment")).raise_()
    qtbot.wait(300)
    shots["napari_segmented.png"] = viewer.screenshot(canvas_only=False, flash=False)
    from napari.utils.io import imsave

    for name, pixels in shots.items():
        assert pixels.ndim == 3 and pixels.shape[0] > 400 and pixels[..., :3].std() > 10  # not blank
        imsave(str(artifacts_dir / name), pixels)
        print(f"\nscreenshot: {artifacts_dir / name}")
        if os.environ.get("CASCADESEG_UPDATE_SCREENSHOTS") == "1":
            docs = Path(__file__).parents[2] / "docs" / "screenshots"
            docs.mkdir(parents=True, exist_ok=True)
            imsave(str(docs / name), pixels)
