"""``cascadeseg demo``: a bundled sample scan segmented by the shipped model made for its task.

With a display, napari opens with the sample scan and its ground truth, the Segment and Compare
widgets docked, and both run at once (segmentation, then the stage / depth comparison). Without a
display (no ``DISPLAY`` / ``WAYLAND_DISPLAY`` on Linux, or ``--headless``) the same pipeline runs
here, napari-free, and writes under ``--out`` (default ``./out``):

* ``<case>_mask.nii.gz``: the predicted label map with the sample scan's geometry;
* ``<case>_overview.png``: the scan, the mask outline against the ground truth, and every pruning
  depth and cascade stage side by side (matplotlib, Agg backend), for a person to look at.

Existing outputs are never replaced without ``--overwrite``: a second run writes ``_2``, ``_3``...
beside them and says so.

Samples (``--sample``, :data:`cascadeseg.shipped.SAMPLES`): ``brain`` (default; an LGG FLAIR MRI
with its tumour mask), ``abdomen`` (a CHAOS T2-SPIR MRI with liver, kidneys and spleen) and ``ct``
(TotalSegmentator's small example CT with its liver). Each runs the shipped model made for its
task: brain, the FLAIR default (:data:`cascadeseg.shipped.DEFAULT_MODEL`, a pruned ANU-Net, so the
overview shows its depths) and, when a shipped cascade takes the same channels, that model's stage
1 / stage 2 outputs beside them; abdomen, the CHAOS ANU-Net (its depths); ct, the CT liver U-Net in
3D. ``--model`` replaces them with the one model given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import open_atomic
from ..errors import CascadeSegError, CheckpointError
from ..shipped import SAMPLES

DEFAULT_OUT = Path("out")


@dataclass(frozen=True)
class DemoModels:
    """The checkpoint the demo segments with, and an optional cascade for the stages row."""

    main: Path
    stages: Path | None = None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run the bundled sample through the default model (GUI or headless)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sample",
        default="brain",
        choices=list(SAMPLES),
        help="which bundled scan: brain MRI (FLAIR), abdominal MRI (T2-SPIR) or CT (default: brain)",
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="never open a window: write the mask and the PNG overview (default when there is no display)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for the headless outputs (default: ./out)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder or shipped / user model name (default: the shipped model for the sample's task)",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="pruning depth 1..4 (default: the card's recommended depth)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu (default: auto)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier outputs in --out instead of writing numbered new ones"
    )
    return parser


def has_display() -> bool:
    """Whether a window can open: on Linux an X11 or Wayland display must be set."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def run(args: argparse.Namespace) -> int:
    models = choose_models(args.model, sample=args.sample)
    if args.headless or not has_display():
        report = run_headless(
            models, args.out, depth=args.depth, device=args.device, overwrite=args.overwrite, sample=args.sample
        )
        print(report)
        return 0
    return gui_demo()(models, depth=args.depth, device=args.device, sample=args.sample)


GUI_ENTRY_POINTS = "cascadeseg.gui"


def gui_demo() -> Any:
    """The GUI half of the demo, provided by the plugin through the ``cascadeseg.gui`` entry point
    (``demo``): the engine never imports the plugin, and an engine installed without the GUI
    says what to install instead of failing on an import."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=GUI_ENTRY_POINTS):
        if entry.name == "demo":
            return entry.load()
    raise CascadeSegError(
        "the demo's window needs the napari plugin (pip install 'napari-cascade[gui]'); "
        "or run 'cascadeseg demo --headless' to write the mask and an overview image instead"
    )


def choose_models(requested: str | None = None, sample: str = "brain") -> DemoModels:
    """The demo's checkpoints for a bundled sample (see the module docstring); a clear error when
    none is installed."""
    from ..inference.checkpoint import available_checkpoints, resolve_checkpoint
    from ..models import model_class

    shipped = [entry for entry in available_checkpoints() if entry.source == "shipped"]

    def info(entry: Any) -> Any:
        try:
            return model_class(entry.card.architecture).info
        except Exception:  # noqa: BLE001 - an unknown architecture just is not preferred
            return None

    if requested is not None:  # the user's choice alone: its own stages / depths are shown
        return DemoModels(main=resolve_checkpoint(requested))
    cascades = [e for e in shipped if info(e) is not None and info(e).stages]
    if not shipped:
        raise CheckpointError(
            "no default model is installed (resources/checkpoints is empty): train one with "
            "'cascadeseg train' or pass --model CHECKPOINT_FOLDER"
        )
    from ..shipped import sample as bundled

    made_for = bundled(sample).model
    pruned = [e for e in shipped if info(e) is not None and info(e).pruning_depths]
    main = next((e for e in shipped if e.name == made_for), None)
    if main is None and sample != "brain":
        raise CheckpointError(
            f"the shipped model '{made_for}' for the {sample} sample is not installed: reinstall napari-cascade "
            "or pass --model CHECKPOINT_FOLDER"
        )
    main = main or (pruned or shipped)[0]
    # The stages row segments the same scan: a cascade that takes the main model's channels.
    stages = next(
        (e for e in cascades if e.path != main.path and e.card.channel_names == main.card.channel_names), None
    )
    return DemoModels(main=main.path, stages=stages.path if stages else None)


def free_path(path: Path, overwrite: bool) -> Path:
    """``path``, or ``name_2.ext``, ``name_3.ext``... when it exists and overwriting was not asked."""
    if overwrite or not path.exists():
        return path
    base, suffix = (
        (path.name[: -len(".nii.gz")], ".nii.gz") if path.name.endswith(".nii.gz") else (path.stem, path.suffix)
    )
    number = 2
    while (candidate := path.with_name(f"{base}_{number}{suffix}")).exists():
        number += 1
    return candidate


def run_headless(
    models: DemoModels,
    out: Path,
    *,
    depth: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    sample: str = "brain",
) -> str:
    """Segment a bundled sample, write the mask and the overview PNG; returns a summary to print."""
    from ..inference.predictor import PredictionRequest, Predictor
    from ..io import load_labels, load_volume, save_labels
    from ..metrics import case_mean_dice
    from ..shipped import sample as bundled
    from ..shipped import sample_label_path, sample_scan_path
    from .predict import ProgressBar

    start = time.perf_counter()
    case_id = bundled(sample).case_id
    scan = load_volume(sample_scan_path(sample))
    truth = load_labels(sample_label_path(sample), reference=scan)
    predictor = Predictor.from_checkpoint(models.main, device=device)
    card = predictor.card
    has_depths = len(getattr(predictor.model.info, "pruning_depths", ())) > 1
    want = PredictionRequest(depths=has_depths, stages=bool(predictor.model.info.stages))
    name = card.name or models.main.name
    with ProgressBar(f"demo: {name}", disable=False) as bar:
        result = predictor.predict(scan, depth=depth, want=want, progress=bar.update)
    panels = [("ground truth", truth.array)]
    if result.depth_labels:  # every depth; the one written as the mask is marked
        panels += [
            (f"{name} L{d}" + (" (mask)" if d == result.depth else ""), v.array)
            for d, v in sorted(result.depth_labels.items())
        ]
    else:
        panels.append((f"{name} (mask)", result.labels.array))
    panels += [(f"{name} {s}", v.array) for s, v in result.stage_labels.items()]
    if models.stages is not None:
        cascade = Predictor.from_checkpoint(models.stages, device=device)
        cascade_name = cascade.card.name or models.stages.name
        with ProgressBar(f"demo: {cascade_name}", disable=False) as bar:
            staged = cascade.predict(scan, want=PredictionRequest(stages=True), progress=bar.update)
        panels += [(f"{cascade_name} {s}", v.array) for s, v in staged.stage_labels.items()]
        panels.append((cascade_name, staged.labels.array))

    out.mkdir(parents=True, exist_ok=True)
    mask_path = save_labels(
        result.labels, scan, free_path(out / f"{case_id}_mask.nii.gz", overwrite), overwrite=overwrite
    )
    png_path = free_path(out / f"{case_id}_overview.png", overwrite)
    # Mean over the model's foreground classes (one organ or lesion per class), the one Dice of
    # cascadeseg.metrics; a stage or depth map has the same classes.
    foreground = [v for v in card.class_values if v != 0]
    reference = np.asarray(truth.array).reshape(scan.spatial_shape)
    dice = {
        title: case_mean_dice(np.asarray(labels).reshape(reference.shape), reference, foreground)
        for title, labels in panels[1:]
    }
    write_overview(
        scan.array[0],
        truth.array,
        panels,
        dice,
        scan.spacing,
        png_path,
        title=f"{case_id}: {name} on {result.device}, {result.rate:.1f} {result.unit}/s",
    )
    lines = [
        f"sample {case_id} ({' x '.join(map(str, scan.spatial_shape))} voxels) segmented by {name} "
        f"({card.architecture}, depth {result.depth}) on {result.device} in {result.timings['total']:.1f} s "
        f"({result.rate:.1f} {result.unit}/s)",
        *(f"  Dice vs ground truth, {title}: {value:.3f}" for title, value in dice.items()),
        f"mask:     {mask_path}",
        f"overview: {png_path}",
        f"total {time.perf_counter() - start:.1f} s",
    ]
    return "\n".join(lines)


def write_overview(
    scan: np.ndarray,
    truth: np.ndarray,
    panels: list[tuple[str, np.ndarray]],
    dice: dict[str, float],
    spacing: tuple[float, float, float],
    path: Path,
    title: str = "",
) -> Path:
    """One axial slice (the one with the most ground truth) of the scan, then every label map as
    an outline over it (ground truth green, prediction red), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    area = truth.reshape(truth.shape[0], -1).astype(bool).sum(axis=1)
    z = int(area.argmax()) if area.any() else scan.shape[0] // 2
    image = scan[z]
    low, high = np.percentile(image, (0.5, 99.5))
    aspect = float(spacing[1]) / float(spacing[2])  # y / x pixel size: mm-correct display
    columns = min(4, len(panels) + 1)
    rows = -(-(len(panels) + 1) // columns)
    figure = Figure(figsize=(3.0 * columns, 3.2 * rows + 0.5), dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect)
    axes[0].set_title(f"scan, slice z={z}", fontsize=9)
    for ax, (name, labels) in zip(axes[1:], panels):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect)
        if truth[z].any():
            ax.contour(truth[z] > 0, levels=[0.5], colors=["#2ecc40"], linewidths=1.0)
        if name != "ground truth" and labels[z].any():
            ax.contour(labels[z] > 0, levels=[0.5], colors=["#ff4136"], linewidths=1.0)
        score = f"\nDice {dice[name]:.3f}" if name in dice else ""
        ax.set_title(f"{name}{score}", fontsize=9)
    figure.suptitle(f"{title}\ngreen: ground truth, red: prediction", fontsize=10)
    with open_atomic(path, "wb") as handle:
        figure.savefig(handle, format="png")
    return path
