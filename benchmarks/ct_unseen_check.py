"""Liver Dice of CT checkpoints on the one CT in ``../shared`` that no CT model trained on.

The CT liver model trains on TotalSegmentator's example CT and the LiTS crop
(``benchmarks/datasets.py ct-liver``). TotalSegmentator's test files also hold a 20-slice DICOM
series (``totalseg/example_ct_dicom``, 512 x 512 at 0.98 mm, 2 mm apart) with its organ map
(``example_seg_dicom``, label 5 = liver; made by TotalSegmentator, not by hand): another
acquisition (a contrast PET/CT protocol, "FDG_TK_KM"; 500 mm field of view against 366 mm; liver
at 93 HU against 46 HU), in no training set here. Whether it is another person cannot be told from
its anonymised header. Each checkpoint segments the DICOM folder through ``cascadeseg predict``
(the path a user takes: reading the series, the card's window and spacing, back to the 512 x 512
grid), and the liver is scored with :func:`cascadeseg.metrics.evaluate_case`.

    python benchmarks/ct_unseen_check.py ct_liver_unet_3d [runs/other/last ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import one_thread_env, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "totalseg"
SERIES, TRUTH, LIVER = DATA / "example_ct_dicom", DATA / "example_seg_dicom.nii.gz", 5


def main() -> None:
    from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import evaluate_case

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="shipped model names or checkpoint folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    image = load_volume(SERIES)
    truth = (load_labels(TRUTH, reference=image).array == LIVER).astype(np.uint8)
    cli = str(Path(sys.executable).parent / "cascadeseg")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.checkpoints):
            card = read_card(resolve_checkpoint(name))
            liver = next(c["value"] for c in card.classes if c["name"].lower() == "liver")
            out = Path(tmp) / f"prediction_{i}"  # -o names a folder, as nnU-Net's does
            t0 = time.perf_counter()
            command = [cli, "predict", str(SERIES), "-c", name, "-o", str(out), "--no-progress"]
            subprocess.run(command, check=True, env=one_thread_env(), stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            predicted = load_labels(out / f"{SERIES.name}.nii.gz", reference=image)
            mask = (predicted.array == liver).astype(np.uint8)
            row = evaluate_case(mask, truth, image.spacing, classes=[1])["1"]
            rows.append(
                {
                    "checkpoint": name,
                    "dice": row["dice"],
                    "hd95": row["hd95"],
                    "seconds": seconds,
                    "predicted_ml": float(mask.sum() * np.prod(image.spacing) / 1e3),
                    "truth_ml": float(truth.sum() * np.prod(image.spacing) / 1e3),
                }
            )
            print(f"{name}: liver Dice {row['dice']:.3f}", flush=True)
    lines = [
        "# CT liver models on TotalSegmentator's DICOM series (no CT model trained on it)",
        "",
        f"Made by `python benchmarks/ct_unseen_check.py {' '.join(args.checkpoints)}`: `cascadeseg predict` on "
        f"`totalseg/example_ct_dicom` ({image.array.shape[-3]} slices of {image.array.shape[-2]} x "
        f"{image.array.shape[-1]}, spacing {tuple(round(s, 3) for s in image.spacing)} mm), one thread; the "
        "truth is TotalSegmentator's liver (label 5), model-made.",
        "",
        "| checkpoint | liver Dice | HD95 (mm) | predicted / true liver (ml) | predict s (with start-up) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoint']} | {r['dice']:.3f} | {r['hd95']:.1f} | {r['predicted_ml']:.0f} / "
            f"{r['truth_ml']:.0f} | {r['seconds']:.1f} |"
        )
    write_results(args.out, "ct_unseen_check", "\n".join(lines) + "\n", rows)


if __name__ == "__main__":
    main()
