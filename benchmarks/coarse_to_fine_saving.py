"""What the coarse-to-fine cascade saves by running stage 2 only inside stage 1's candidate box.

Issue 4 asks that the coarse-to-fine 3D model run stage 2 only inside stage 1's candidate region
and that the saving be measured. This script takes a *trained* coarse-to-fine checkpoint and real
held-out scans with their labels, and segments each scan twice through the real inference path
(:class:`cascadeseg.inference.Predictor`, 3D sliding window, the card's preprocessing): once as
shipped (stage 2 in the box its own stage 1 found) and once with stage 2 forced over every patch
(``model.restrict_stage2 = False``). Per case it reports the share of the input stage 2 ran on,
the network time of both runs, their ratio, and both Dice scores against the reference (so the
saving is not bought with accuracy). Both runs of a case are interleaved and repeated
(``--repeats``), and the fastest time of each is kept (the least disturbed by other processes).

Usage (from the repository root)::

    python benchmarks/coarse_to_fine_saving.py runs/c2f-lgg/best ../shared/data/lgg-flair \\
        --cases-from runs/c2f-lgg/split.json --threads 2

It prints a Markdown table and writes it, with a JSON of the figures, under
``benchmarks/results/coarse_to_fine_<device>_<stamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cascadeseg.inference.predictor import Predictor
from cascadeseg.io import load_dataset
from cascadeseg.metrics import evaluate_case


def foreground_dice(pred: np.ndarray, ref: np.ndarray, spacing, classes: list[int]) -> float:
    row = evaluate_case(pred, ref, spacing, classes=classes, surface=False)
    return float(np.mean([row[str(k)]["dice"] for k in classes]))


def measure_case(predictor: Predictor, image, labels, classes: list[int], repeats: int) -> dict:
    model = predictor.model
    runs: dict[str, dict] = {}
    for _ in range(repeats):
        for restricted in (True, False):
            model.restrict_stage2 = restricted
            result = predictor.predict(image, mode="3d")
            key = "box" if restricted else "everywhere"
            seconds = result.timings["inference"]
            if key not in runs:  # the labels are the same every repeat: scored once
                runs[key] = {
                    "seconds": seconds,
                    "stage2_fraction": result.stats.get("stage2_fraction", float("nan")),
                    "patches": result.items,
                    "dice": foreground_dice(result.labels.array, labels.array, labels.spacing, classes),
                }
            runs[key]["seconds"] = min(runs[key]["seconds"], seconds)
    model.restrict_stage2 = True
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a trained coarse_to_fine_unet checkpoint (3D)")
    parser.add_argument("dataset", type=Path, help="MSD / nnU-Net folder with the scans and labels")
    parser.add_argument("--cases", nargs="*", default=None, help="case ids (default: --cases-from)")
    parser.add_argument("--cases-from", type=Path, default=None,
                        help="a run's split.json: its validation cases are used")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases or (json.loads(args.cases_from.read_text())["val"] if args.cases_from else None)
    if not cases:
        parser.error("give --cases or --cases-from (a run's split.json)")

    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    if not hasattr(predictor.model, "restrict_stage2"):
        parser.error(f"{args.checkpoint} is a '{predictor.card.architecture}' model, not coarse_to_fine_unet")
    classes = [c["value"] for c in predictor.card.classes if c["value"] != 0]
    refs = {ref.case_id: ref for ref in load_dataset(args.dataset)}
    device = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    header = (f"Coarse-to-fine saving: `{args.checkpoint}` on {len(cases)} held-out case(s) of `{args.dataset}`; "
              f"patch {predictor.card.patch_size}; CPU: {device}; fastest of {args.repeats}\n")
    lines = [header, "| case | shape | patches | stage-2 share | time in box (s) | time everywhere (s) | "
             "speed-up | Dice box | Dice everywhere |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rows = []
    for case in cases:
        image, labels = refs[case].load()
        runs = measure_case(predictor, image, labels, classes, args.repeats)
        box, full = runs["box"], runs["everywhere"]
        row = {"case": case, "shape": list(image.spatial_shape), **{f"{k}_{m}": v for k, r in runs.items() for m, v in r.items()}}
        rows.append(row)
        line = (f"| {case} | {'x'.join(map(str, image.spatial_shape))} | {box['patches']} | {box['stage2_fraction']:.3f} | "
                f"{box['seconds']:.2f} | {full['seconds']:.2f} | {full['seconds'] / box['seconds']:.2f}x | "
                f"{box['dice']:.3f} | {full['dice']:.3f} |")
        lines.append(line)
        print(line, flush=True)
    total_box = sum(r["box_seconds"] for r in rows)
    total_full = sum(r["everywhere_seconds"] for r in rows)
    summary = (f"| **all** | | {sum(r['box_patches'] for r in rows)} | "
               f"{np.mean([r['box_stage2_fraction'] for r in rows]):.3f} | {total_box:.2f} | {total_full:.2f} | "
               f"{total_full / total_box:.2f}x | {np.mean([r['box_dice'] for r in rows]):.3f} | "
               f"{np.mean([r['everywhere_dice'] for r in rows]):.3f} |")
    lines.append(summary)
    print(summary)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"coarse_to_fine_cpu_{stamp}"
    (base.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    payload = {"checkpoint": str(args.checkpoint), "dataset": str(args.dataset), "device": device,
               "repeats": args.repeats, "card_patch_size": predictor.card.patch_size, "cases": rows,
               "total_seconds_box": total_box, "total_seconds_everywhere": total_full}
    (base.with_suffix(".json")).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {base}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
