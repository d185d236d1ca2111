"""How the FLAIR checkpoints do on brain scans from outside the LGG training set.

The shipped checkpoints are scored on 12 held-out patients of the LGG FLAIR set (same source,
same preparation as their training data). This script asks the harder question users meet: what
happens on FLAIR scans from other sources, through the real inference path
(:class:`cascadeseg.inference.Predictor`, each scan on its own grid and spacing)?

* ``brats-like/TCGA-DU-7294``: a skull-stripped FLAIR at 1 mm isotropic (BraTS preparation), not
  one of the 80 LGG patients. Reference: the whole tumour (labels 1, 2 and 4) of the ``simple``
  fusion of two BraTS algorithms (not a manual label). Reported: Dice and recall.
* ``tcia-btp``: four glioblastoma studies, FLAIR (``_0001``) registered to T1 post-contrast,
  6.5 mm slices. Reference: the *enhancing* lesion on T1 post-contrast, which lies inside the FLAIR
  abnormality but is much smaller, so Dice is meaningless; reported is the recall (the share of
  the enhancing lesion the predicted FLAIR abnormality covers) and the predicted volume.

Usage (from the repository root)::

    python benchmarks/external_flair_check.py                       # every shipped FLAIR checkpoint
    python benchmarks/external_flair_check.py runs/x/last --threads 2

Prints a Markdown table (one row per checkpoint and depth) and writes it with a JSON of the
figures under ``benchmarks/results/external_flair_<device>_<stamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cascadeseg.inference import PredictionRequest, Predictor
from cascadeseg.inference.checkpoint import available_checkpoints
from cascadeseg.io import load_labels, load_volume
from cascadeseg.metrics import evaluate_case


def scans(data: Path) -> list[tuple[str, Path, Path, str]]:
    """(name, FLAIR image, reference labels, kind) of every external scan found under ``data``."""
    found = []
    brats = data / "brats-like" / "TCGA-DU-7294"
    if brats.is_dir():
        found.append(("TCGA-DU-7294 (BraTS-style)", brats / "TCGA-DU-7294_fla_bet.nii.gz", brats / "simple.nii.gz", "whole tumour"))
    btp = data / "tcia-btp"
    for label in sorted((btp / "labelsTr").glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        found.append((f"{case} (TCIA-BTP)", btp / "imagesTr" / f"{case}_0001.nii.gz", label, "enhancing lesion"))
    if not found:
        raise SystemExit(f"no external FLAIR scans under '{data}' (expected brats-like/ and tcia-btp/)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoint folders (default: every shipped checkpoint with a FLAIR input)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = [Path(p) for p in args.checkpoints] or [
        c.path for c in available_checkpoints() if c.source == "shipped" and [ch.get("name") for ch in c.card.input_channels] == ["FLAIR"]
    ]
    external = [(name, load_volume(image, whole_case=False), ref_path, kind) for name, image, ref_path, kind in scans(args.data)]
    external = [(name, vol, (np.asarray(load_labels(ref, reference=vol).array) > 0).astype(np.uint8), kind) for name, vol, ref, kind in external]

    rows = []
    for path in paths:
        predictor = Predictor.from_checkpoint(path, device="cpu")
        by_depth: dict[int | None, dict[str, dict]] = {}
        for name, volume, ref, kind in external:
            start = time.perf_counter()
            # One forward pass gives every pruning depth's label map.
            result = predictor.predict(volume, want=PredictionRequest(depths=True))
            maps = result.depth_labels or {None: result.labels}
            seconds = round(time.perf_counter() - start, 2)
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            for depth, labels in maps.items():
                pred = (np.asarray(labels.array) > 0).astype(np.uint8)
                row = evaluate_case(pred, ref, volume.spacing, classes=[1], surface=False)["1"]
                by_depth.setdefault(depth, {})[name] = {
                    "reference": kind,
                    "dice": round(row["dice"], 4),
                    "recall": round(row["recall"], 4),
                    "predicted_ml": round((row["tp"] + row["fp"]) * voxel_ml, 2),
                    "reference_ml": round((row["tp"] + row["fn"]) * voxel_ml, 2),
                    "seconds_all_depths": seconds,
                }
        for depth, per_scan in by_depth.items():
            rows.append({"checkpoint": str(path), "name": predictor.card.name, "depth": depth, "scans": per_scan})
            print(f"{predictor.card.name} L{depth}: " + ", ".join(f"{n}: Dice {s['dice']:.3f} recall {s['recall']:.3f}" for n, s in per_scan.items()), flush=True)

    names = [name for name, *_ in external]
    head = "| checkpoint | depth | " + " | ".join(f"{n}: Dice / recall / pred. ml (ref. ml)" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for row in rows:
        cells = [f"{row['scans'][n]['dice']:.3f} / {row['scans'][n]['recall']:.3f} / {row['scans'][n]['predicted_ml']:.1f} ({row['scans'][n]['reference_ml']:.1f})" for n in names]
        depth_label = "-" if row["depth"] is None else f"L{row['depth']}"
        lines.append(f"| {row['name']} | {depth_label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"external_flair_cpu_{stamp}"
    meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__}
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    base.with_suffix(".md").write_text(f"# External FLAIR check ({stamp}, CPU, {args.threads} threads)\n\n{table}\n")
    print(f"\nwritten: {base}.md / .json")


if __name__ == "__main__":
    main()
