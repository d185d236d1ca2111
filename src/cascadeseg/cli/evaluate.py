"""``cascadeseg evaluate``: score a folder of predicted label maps against reference labels.

Predictions ``PRED/<case>.nii.gz`` are paired with ``LABELS/<case>.nii.gz`` by case id
(``LABELS`` may be an MSD dataset folder: its ``labelsTr/`` is used). Every prediction needs a
reference; references without a prediction are listed but do not stop the run.

Writes a per-case CSV (one row per case and structure: Dice, IoU, precision, recall,
specificity, HD95 in mm, voxel counts) and a JSON summary (mean, median and pooled "global" Dice
per structure, from :func:`cascadeseg.metrics.aggregate_cases`), and prints the summary table.
Structures are every non-zero label found (default), or the labels given with ``--classes``
and/or the BraTS regions (whole tumour, tumour core, enhancing tumour) with ``--regions brats``.
A file that holds a scan rather than a label map is refused. The CSV and summary never replace a
prediction or reference file, ``--overwrite`` or not.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import DatasetError, InputFileError, OutputExistsError, OutputIsInputError
from .main import command_parser
from .markdown import markdown_table

METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "specificity", "hd95", "tp", "fp", "fn", "tn")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "evaluate", __doc__)
    parser.add_argument("predictions", type=Path, metavar="PRED", help="folder of predicted label files <case>.nii.gz")
    parser.add_argument(
        "labels",
        type=Path,
        metavar="LABELS",
        help="folder of reference label files <case>.nii.gz, or an MSD folder with labelsTr/",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="per-case CSV to write (default: PRED/evaluation.csv); the summary goes beside it as .json",
    )
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=None,
        metavar="LABEL",
        help="label values to score (default: every non-zero label present)",
    )
    parser.add_argument(
        "--regions",
        choices=("brats",),
        default=None,
        help="score the BraTS regions WT (1,2,4), TC (1,4), ET (4) (only these, unless --classes adds labels)",
    )
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster on large volumes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV / summary")
    return parser


def run(args: argparse.Namespace) -> int:
    from .._atomic import clean_leftovers, write_text
    from ..io import load_labels
    from ..metrics import BRATS_REGIONS, aggregate_cases, evaluate_case

    pairs, unmatched = pair_cases(args.predictions, args.labels)
    csv_path = (args.output or args.predictions / "evaluation.csv").expanduser()
    json_path = csv_path.with_suffix(".json")
    check_reports_spare_inputs(csv_path, json_path, args.predictions, args.labels)
    for path in (csv_path, json_path):
        if path.exists() and not args.overwrite:
            raise OutputExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    clean_leftovers(csv_path.parent)  # an earlier, killed run's temporaries (said on the way)
    regions = BRATS_REGIONS if args.regions == "brats" else None
    classes = args.classes
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    for case_id, pred_path, ref_path in pairs:
        ref = load_labels(ref_path)
        pred = load_labels(pred_path, reference=ref)
        per_case[case_id] = evaluate_case(
            pred.array, ref.array, ref.spacing, classes=classes, regions=regions, surface=not args.no_hd95
        )
    summary = aggregate_cases(per_case.values())
    write_text(csv_path, _csv_text(per_case))
    report = {"cases": len(per_case), "summary": _strict_json(summary), "unmatched_labels": unmatched}
    write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_summary(summary))
    if unmatched:
        print(
            f"note: {len(unmatched)} reference(s) without a prediction were not scored: "
            f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}",
            file=sys.stderr,
        )
    print(f"{len(per_case)} case(s) scored; per-case CSV: {csv_path}; summary: {json_path}", file=sys.stderr)
    return 0


def check_reports_spare_inputs(csv_path: Path, json_path: Path, pred_dir: Path, label_dir: Path) -> None:
    """The reports are text: refuse a name of a label file, any file of PRED or LABELS, and the
    folders of an MSD dataset."""
    from ..io.msd_layout import is_image_file, split_suffix
    from ..io.protect import refuse_dataset_folder, refuse_input_overwrite

    if split_suffix(csv_path)[1]:
        raise OutputIsInputError(
            f"--output {csv_path}: is an image file name; expected a .csv file name for the per-case table"
        )
    refuse_dataset_folder(csv_path.parent, option="--output")
    folders = [pred_dir, label_dir, label_dir / "labelsTr"]
    inputs = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if is_image_file(p)]
    refuse_input_overwrite([csv_path, json_path], inputs, option="--output")


def pair_cases(pred_dir: Path, label_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``[(case, prediction, reference)]`` sorted by case, and reference ids with no prediction."""
    from ..io.msd_layout import is_image_file, split_suffix

    for name, folder in (("PRED", pred_dir), ("LABELS", label_dir)):
        if not folder.is_dir():
            raise InputFileError(f"{name} {folder}: not a folder (expected a folder of label files)")
    if (label_dir / "labelsTr").is_dir():
        label_dir = label_dir / "labelsTr"

    def by_case(folder: Path) -> dict[str, Path]:
        return {split_suffix(p)[0]: p for p in sorted(folder.iterdir()) if is_image_file(p)}

    preds, refs = by_case(pred_dir), by_case(label_dir)
    if not preds:
        raise DatasetError(f"PRED {pred_dir}: no label files found (expected <case>.nii.gz files)")
    missing = sorted(set(preds) - set(refs))
    if missing:
        raise DatasetError(
            f"LABELS {label_dir}: no reference for {len(missing)} prediction(s) ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); expected <case>.nii.gz with the same case names"
        )
    pairs = [(case, preds[case], refs[case]) for case in sorted(preds)]
    return pairs, sorted(set(refs) - set(preds))


def _csv_text(per_case: dict[str, dict[str, dict[str, float]]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("case", "structure", *METRIC_COLUMNS))
    for case_id, structures in per_case.items():
        for name, row in structures.items():
            writer.writerow((case_id, name, *(_cell(m, row.get(m)) for m in METRIC_COLUMNS)))
    return buffer.getvalue()


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric in ("tp", "fp", "fn", "tn"):
        return str(int(value))
    return "inf" if math.isinf(value) else f"{value:.6g}"


def _strict_json(value: Any) -> Any:
    """Standard JSON has no NaN/Infinity: NaN (no case to average) -> null, inf -> "inf"."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per structure, means (medians) and the pooled Dice."""
    header = (
        "structure",
        "cases",
        "Dice mean",
        "Dice median",
        "global Dice",
        "IoU",
        "precision",
        "recall",
        "specificity",
        "HD95 mm (median)",
    )
    rows = []
    for name, entry in summary.items():
        hd = entry.get("hd95")
        hd_text = (
            "-"
            if hd is None
            else f"{_fmt(hd['mean'])} ({_fmt(hd['median'])})" + (f", {hd['n_inf']} inf" if hd.get("n_inf") else "")
        )
        rows.append(
            (
                name,
                str(entry["n_cases"]),
                _fmt(entry["dice"]["mean"]),
                _fmt(entry["dice"]["median"]),
                _fmt(entry["global_dice"]),
                _fmt(entry["iou"]["mean"]),
                _fmt(entry["precision"]["mean"]),
                _fmt(entry["recall"]["mean"]),
                _fmt(entry["specificity"]["mean"]),
                hd_text,
            )
        )
    return markdown_table(header, rows)


def _fmt(value: Any) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4f}")
