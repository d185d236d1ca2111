"""The results table of issue 5: the six architectures trained under ONE budget on ONE split.

Each model is trained with ``cascadeseg train`` (same data, split, seed, input size, width,
augmentation and wall-clock budget; each model with its paper's loss), then its best checkpoint
is scored on the held-out patients through the real predictor (Dice and HD95 per patient, at
every pruning depth). Writes ``docs/training_results.md`` and ``benchmarks/results/train_results.json``.

    python benchmarks/train_results.py --minutes 4 --parallel 2

Trainings run as separate processes (``--parallel`` at a time, one torch thread each). A run
folder that already exists is scored again without retraining (``--rescore``) or refused.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cascadeseg._atomic import write_text

REPO = Path(__file__).resolve().parents[1]
MODELS = ["unet", "cascaded_unet", "inner_cascaded_unet", "unet_plus_plus", "anu_net", "unet_sharp"]
SAMPLE_CASE = "TCGA_DU_6404_19850629"


def train_command(args: argparse.Namespace, model: str, run_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "cascadeseg"), "train", str(args.data), "--model", model, "--dims", "2",
        "--base-width", str(args.base_width), "--inplane-size", str(args.inplane_size),
        "--patch-size", str(args.patch), str(args.patch), "--batch-size", str(args.batch_size),
        "--minutes", str(args.minutes), "--epochs", "1000", "--steps-per-epoch", str(args.steps_per_epoch),
        "--val-fraction", str(args.val_fraction), "--val-case", SAMPLE_CASE, "--augmentation", '{"rot90": false}',
        "--threads", "1", "--seed", str(args.seed), "--run-dir", str(run_dir), "--no-progress",
    ]


def run_one(args: argparse.Namespace, model: str) -> dict:
    """Train (unless the run exists and --rescore), then score the best checkpoint."""
    import torch

    torch.set_num_threads(1)
    from cascadeseg.models import create_model, model_class
    from cascadeseg.training.holdout import score_checkpoint
    from cascadeseg.training.split import Split

    run_dir = args.runs / f"results-{model}"
    command = train_command(args, model, run_dir)
    if run_dir.exists() and not args.rescore:
        raise SystemExit(f"{run_dir} exists: pass --rescore to score it again, or remove it to retrain")
    if not run_dir.exists():
        log = (args.runs / f"results-{model}.out").open("w")
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split = Split.load(run_dir)
    best = run_dir / "best"
    scores = score_checkpoint(best, args.data, split.val, device="cpu")
    card = json.loads((best / "model_card.json").read_text())
    info = model_class(model).info
    net = create_model(model, in_channels=1, num_classes=2, dims=2, base_width=args.base_width)
    depths = sorted(scores.dice)
    recommended = card.get("recommended_depth") or depths[-1]
    full = depths[-1]
    mean_hd, median_hd, n_inf = scores.hd95_summary(full)
    full_epochs = [r for r in rows if float(r["epoch_seconds"]) > 0]
    return {
        "model": model, "title": info.title, "loss": card["training"]["loss"],
        "parameters": sum(p.numel() for p in net.parameters()),
        "epochs": len(rows), "steps": int(rows[-1]["step"]) if rows else 0,
        "best_epoch": card["training"].get("epochs_completed"),
        "seconds_per_epoch": sum(float(r["epoch_seconds"]) for r in full_epochs) / max(1, len(full_epochs)),
        "validation_seconds": sum(float(r["validation_seconds"]) for r in rows) / max(1, len(rows)),
        "samples_per_second": sum(float(r["samples_per_second"]) for r in full_epochs) / max(1, len(full_epochs)),
        "dice_full": scores.mean_dice(full), "dice_recommended": scores.mean_dice(recommended),
        "recommended_depth": card.get("recommended_depth"), "dice_per_depth": {d: scores.mean_dice(d) for d in depths},
        "hd95_mean": mean_hd, "hd95_median": median_hd, "hd95_inf": n_inf,
        "predict_seconds_per_case": scores.seconds_per_case, "val_cases": split.val,
        "command": " ".join(shlex.quote(c) for c in ["cascadeseg"] + command[1:]),
        "scores": scores.to_dict(),
    }


def markdown(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    import torch

    once = args.steps_per_epoch >= 10000
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Training results: six architectures, one budget, one split",
        "",
        f"Made by `{made_by(args)}` on {stamp}.",
        "",
        "**Budget, stated plainly:** each model trained for "
        f"**{args.minutes:g} minutes of wall-clock time** (validation included) on a **{os.cpu_count()}-core CPU** "
        f"(one torch thread per training, {args.parallel} trainings at a time; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; load average at the start and the "
        f"end of the table: {load_note(results)}). "
        f"That is {min(r['steps'] for r in results) * args.batch_size:,}-{max(r['steps'] for r in results) * args.batch_size:,} "
        "training crops per model, far below the papers' hundreds of epochs on GPUs at full width: the table "
        "compares the architectures at small width under a small CPU budget, not their final accuracy, and it "
        "does not settle which paper is right.",
        "",
        f"Setup shared by all rows: LGG FLAIR (`{args.data}`, Buda et al. 2019, TCGA-LGG; CC BY-NC-SA 4.0), "
        f"seeded patient split (seed {args.seed}, {int(args.val_fraction * 100)} % of 80 patients held out, "
        f"the bundled sample patient {SAMPLE_CASE} always in validation: {len(results[0]['val_cases']) if results else 0} "
        f"validation patients), 2D axial slices resampled to {args.inplane_size} px in-plane, {args.patch} x {args.patch} "
        f"training crops (half centred on tumour), batch {args.batch_size}, base width {args.base_width} (paper: 32), "
        "Adam 1e-3 with cosine decay over the budget, flips / small rotations / zoom / elastic / intensity augmentation, "
        "each model with its paper's loss. "
        + (f"Validated every {args.steps_per_epoch} steps; the epoch with the best validation Dice is the one scored "
           "(model selection on the validation patients, as for the shipped models)."
           if not once else "Validated once, when the budget ran out, and that checkpoint is scored."),
        "",
        "Scores: every validation patient's scan segmented by the real predictor (`Predictor`, the path of "
        "`cascadeseg predict`) on its original 256 x 256 grid; Dice and HD95 per patient (3D), then the mean over "
        "patients. HD95 is in voxels of the source (its spacing is unknown and written as 1 mm); patients where "
        "the prediction is empty but the reference is not (HD95 infinite) are counted in the `HD95 inf` column "
        "and left out of the HD95 mean.",
        "",
        "| model | paper loss | parameters | training steps (samples) | validations (best) | time per epoch* | "
        "train samples / s | validation s | Dice (full depth) | Dice (recommended depth) | HD95 mean / median | HD95 inf |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slices = training_slices(args, results)
    for r in results:
        rec = f"{r['dice_recommended']:.3f} (L{r['recommended_depth']})" if r["recommended_depth"] else "-"
        epoch = slices / r["samples_per_second"] / 60 if r["samples_per_second"] else float("nan")
        lines.append(
            f"| {r['title']} (`{r['model']}`) | {r['loss']} | {r['parameters'] / 1e6:.2f} M | {r['steps']} "
            f"({r['steps'] * args.batch_size}) | {r['epochs']} ({r.get('best_epoch') or '-'}) | {epoch:.1f} min | "
            f"{r['samples_per_second']:.1f} | "
            f"{r['validation_seconds']:.0f} | {r['dice_full']:.3f} | {rec} | "
            f"{r['hd95_mean']:.1f} / {r['hd95_median']:.1f} | {r['hd95_inf']} |"
        )
    lines += [
        "",
        f"\\* time per epoch: one pass over the {slices} axial slices of the training patients at the measured "
        f"throughput ({args.parallel} trainings shared the CPU, one thread each), so it is a rough speed ranking, "
        "not a benchmark; `cascadeseg bench` measures inference speed properly.",
    ]
    lines += [
        "",
        "Reading the table: under a wall-clock budget a cheaper network takes more optimiser steps, so the "
        "ranking partly follows the steps column; the nested and cascaded models pay for their extra decoders and "
        "second stage per step. The papers' claims (each beating the others after full training on GPUs at width "
        "32) are not settled by a CPU budget at width 8. The longer runs of the default models "
        "(`docs/default_models.md`) show where two of them get with 2-3 hours.",
    ]
    lines += ["", "Dice per pruning depth (models with deep supervision):", ""]
    for r in results:
        if len(r["dice_per_depth"]) > 1:
            per = ", ".join(f"L{d}: {v:.3f}" for d, v in sorted(r["dice_per_depth"].items()))
            lines.append(f"- `{r['model']}`: {per}")
    lines += [
        "",
        f"Wall-clock time of the whole table: {wall / 60:.1f} min (data loading, training, validation and scoring). "
        "Per-patient values are in `benchmarks/results/train_results.json`.",
        "",
        "Each training command (one per row):",
        "",
    ]
    lines += [f"- `{r['command']}`" for r in results]
    return "\n".join(lines) + "\n"


def made_by(args: argparse.Namespace) -> str:
    line = f"python benchmarks/train_results.py --minutes {args.minutes:g} --parallel {args.parallel}"
    if args.steps_per_epoch != 10000:
        line += f" --steps-per-epoch {args.steps_per_epoch}"
    if args.runs != REPO / "runs":
        line += f" --runs {os.path.relpath(args.runs, REPO)}"
    return line


def load_note(results: list[dict]) -> str:
    loads = results[0].get("load_average") if results else None
    if not loads:
        return "not recorded"
    return f"{loads['start']} / {loads['end']} (1, 5, 15 min)"


def training_slices(args: argparse.Namespace, results: list[dict]) -> int:
    """Axial slices of the training patients (read from the NIfTI headers of the split's cases)."""
    import nibabel as nib

    from cascadeseg.training.split import Split

    split = Split.load(args.runs / f"results-{results[0]['model']}")
    return int(sum(nib.load(str(Path(args.data) / "labelsTr" / f"{case}.nii.gz")).shape[2] for case in split.train))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per model")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--inplane-size", type=int, default=128)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    # Large: the budget ends the first epoch, so each model is validated once, at the end.
    parser.add_argument("--steps-per-epoch", type=int, default=10000)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--rescore", action="store_true", help="score existing run folders again without training")
    parser.add_argument("--merge", action="store_true", help="keep rows of other models from an earlier --json (same settings)")
    parser.add_argument("--render-only", type=float, default=None, metavar="WALL_MINUTES",
                        help="only rewrite the Markdown from --json (with the whole table's wall-clock minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "training_results.md")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "train_results.json")
    args = parser.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.render_only is not None:
        results = json.loads(args.json.read_text())
        text = markdown(results, args, args.render_only * 60)
        write_text(args.out, text)
        print(text)
        return 0
    t0 = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda m: run_one(args, m), args.models))
    wall = time.perf_counter() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and args.json.is_file():
        # Rows of models trained by an earlier invocation (same settings) are kept.
        earlier = {r["model"]: r for r in json.loads(args.json.read_text())}
        earlier.update({r["model"]: r for r in results})
        results = [earlier[m] for m in MODELS if m in earlier] + [r for m, r in earlier.items() if m not in MODELS]
        wall += sum(r.get("wall_seconds", 0.0) for m, r in earlier.items() if m not in args.models)
    for r in results:
        r.setdefault("wall_seconds", wall)
        r.setdefault("load_average", {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]})
    for path, text in ((args.json, json.dumps(results, indent=1, default=str) + "\n"), (args.out, markdown(results, args, wall))):
        write_text(path, text)
    print(markdown(results, args, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
