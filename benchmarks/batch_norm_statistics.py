"""Batch-norm statistics measured again on clean samples, against training's moving averages, on
patients no run saw.

For each finished ``recipe_cv.py --holdout-seed`` split (``val.json`` and the runs ``planned/``
and ``variant/``), each run's kept model gets its batch-norm statistics measured again on
``--batches`` clean batches of its own training samples (``Trainer.reestimate_batch_norm``, what a
run planned with ``batch_norm_statistics = "clean"`` does before every validation and
checkpoint); the weights are otherwise the same. Both models are applied to the split's held-out
patients with ``cascadeseg predict`` and scored per patient (files under
``<split>/batch_norm_statistics/``). ``--fewshot DIR`` does the same for a ``fewshot_rules.py``
folder: each fold's starting model and kept model, on the fold's held-out shifted patients.
Printed: per run, and pooled per kind of model (paired; a group's runs are averaged per patient
first, so the standard error counts patients).

Usage (from the repository root)::

    python benchmarks/recipe_cv.py ../shared/data/lgg-flair --holdout-seed 91 --out runs/bn \\
        --variant --seed 1
    python benchmarks/batch_norm_statistics.py runs/bn/split91 runs/bn/split92 --name lgg_20min
    python benchmarks/batch_norm_statistics.py --fewshot runs/fewshot3 --name fewshot3
    python benchmarks/batch_norm_statistics.py --pool benchmarks/results/batch_norm_statistics_*split9[123]_2*.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import paired_standard_error, run_model_checkpoint, write_results
from one_click_race import predict_and_score

from cascadeseg.distributed import DistContext
from cascadeseg.inference.checkpoint import load_weights, read_card, save_checkpoint
from cascadeseg.training.callbacks import CallbackList
from cascadeseg.training.config import TrainConfig
from cascadeseg.training.trainer import Trainer


def clean_statistics_model(
    run: Path, train_data: Path, weights: Path, out: Path, batches: int | None
) -> tuple[Path, float]:
    """The checkpoint ``weights`` (the kept model of ``run``, or one of its epochs) with its
    batch-norm statistics measured again on clean batches of ``run``'s training samples, saved to
    ``out``; and the seconds that took. The run folder is not touched: the trainer resumes a copy."""
    with tempfile.TemporaryDirectory(prefix="bn_statistics_") as tmp:
        work = Path(tmp) / run.name
        shutil.copytree(run, work, ignore=shutil.ignore_patterns(".cascadeseg-run.lock", "epoch_*", "*_pred"))
        cfg = TrainConfig.load(work)
        cfg.resume, cfg.run_dir, cfg.data, cfg.threads = True, str(work), str(train_data), 1
        trainer = Trainer(cfg, CallbackList(None), None, torch.device("cpu"), DistContext())
        try:
            trainer.on_train_start(calibrate=False)
            trainer.model.load_state_dict(load_weights(weights), strict=True)
            trainer.cfg.batch_norm_statistics = "clean"  # runs planned before the option existed
            seconds = trainer.reestimate_batch_norm(batches=batches)
            save_checkpoint(trainer.model.eval(), read_card(weights), out, overwrite=True)
        finally:
            trainer.release()
    return out, seconds


def compare(
    run: Path, train_data: Path, weights: Path, data: Path, cases: list[str], out: Path, batches: int | None
) -> dict:
    """``weights`` as saved against measured again, on ``cases``; files under ``out``."""
    model, seconds = clean_statistics_model(run, train_data, weights, out / "clean", batches)
    saved = predict_and_score(weights, data, cases, out / "saved_pred")
    clean = predict_and_score(model, data, cases, out / "clean_pred")
    diff = [clean[c] - saved[c] for c in cases]
    print(f"{out}: saved {np.mean(list(saved.values())):.3f}, clean {np.mean(list(clean.values())):.3f} "
          f"({np.mean(diff):+.3f} +- {paired_standard_error(diff):.3f}; {seconds:.1f} s)", flush=True)
    return {"saved": saved, "clean": clean, "seconds": seconds}


def split_jobs(split: Path) -> list[tuple[str, str, Path, Path, Path, list[str]]]:
    """(group, what, run, training data, weights, held-out cases) of a recipe_cv.py split: both runs'
    kept models, on the split's held-out patients."""
    cases = json.loads((split / "val.json").read_text())["val"]
    return [(split.name, "kept model", split / name, split / "train_data", run_model_checkpoint(split / name), cases)
            for name in ("planned", "variant")]


def fewshot_jobs(folder: Path) -> list[tuple[str, str, Path, Path, Path, list[str]]]:
    """The same for a fewshot_rules.py folder: each fold's starting model (``epoch_0``) and kept
    model, on the fold's held-out shifted patients."""
    jobs = []
    for record in sorted(folder.glob("fold_*.json")):
        fold = json.loads(record.read_text())
        run = folder / f"run_{fold['fold']}"
        train_data = Path(json.loads((run / "config.json").read_text())["data"])
        for what, weights in (("starting model", run / "epoch_0"), ("kept model", run_model_checkpoint(run))):
            jobs.append((f"fold {fold['fold']}", what, run, train_data, weights, fold["held_out"]))
    return jobs


def table(results: list[dict], batches: int | None) -> tuple[str, dict]:
    """Rows per run, and per kind of model the pooled per-patient difference (a group's runs
    averaged per patient first)."""
    rows, pooled_lines, payload = [], [], {}
    for what in dict.fromkeys(r["what"] for r in results):
        pooled = []
        for group in dict.fromkeys(r["group"] for r in results if r["what"] == what):
            runs = [r for r in results if r["what"] == what and r["group"] == group]
            cases = runs[0]["cases"]
            pooled += np.mean([[r["clean"][c] - r["saved"][c] for c in cases] for r in runs], axis=0).tolist()
            for r in runs:
                diff = [r["clean"][c] - r["saved"][c] for c in cases]
                rows.append(
                    f"| {group} | {what} ({Path(r['run']).name}) | {np.mean(list(r['saved'].values())):.3f} | "
                    f"{np.mean(list(r['clean'].values())):.3f} | {np.mean(diff):+.3f} +- "
                    f"{paired_standard_error(diff):.3f} | {sum(d > 0 for d in diff)} / {sum(d < 0 for d in diff)} | "
                    f"{r['seconds']:.1f} |"
                )
        se = paired_standard_error(pooled)
        pooled_lines.append(
            f"| pooled | {what}, {len(pooled)} patients | | | **{np.mean(pooled):+.4f} +- {se:.4f}** | "
            f"{sum(d > 0 for d in pooled)} / {sum(d < 0 for d in pooled)} | |"
        )
        payload[what] = {"pooled_mean": float(np.mean(pooled)), "pooled_se": se, "differences": pooled}
    text = "\n".join([
        "# Batch-norm statistics: training's moving averages against measured again on clean samples",
        "",
        f"Batches measured on: {batches or 'the planned voxel count'}. The same weights, scored on patients the "
        "run did not train on through `cascadeseg predict`; a group's runs are averaged per patient before pooling.",
        "",
        "| group | model | as saved | measured again | difference (paired SE) | better / worse | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        *pooled_lines,
        "",
    ])
    return text, {"batches": batches, "pooled": payload, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("splits", type=Path, nargs="*", help="finished recipe_cv.py --holdout-seed split folders")
    parser.add_argument("--fewshot", type=Path, help="a finished fewshot_rules.py folder instead")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"),
                        help="the held-out patients' dataset (--fewshot: its target/ folder)")
    parser.add_argument("--batches", type=int, help="clean batches (default: the planned voxel count)")
    parser.add_argument("--pool", type=Path, nargs="+", help="results .json files of earlier runs to table together")
    parser.add_argument("--name", default="lgg")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.pool:
        payloads = [json.loads(path.read_text()) for path in args.pool]
        markdown, payload = table([r for p in payloads for r in p["results"]], payloads[0]["batches"])
        write_results(args.results, f"batch_norm_statistics_{args.name}", markdown, payload)
        return
    if bool(args.splits) == bool(args.fewshot):
        parser.error("give recipe_cv.py split folders, --fewshot FOLDER or --pool")
    torch.set_num_threads(1)
    jobs = fewshot_jobs(args.fewshot) if args.fewshot else [j for split in args.splits for j in split_jobs(split)]
    data = args.fewshot / "target" if args.fewshot else args.data
    results = []
    for group, what, run, train_data, weights, cases in jobs:
        out = run.parent / "batch_norm_statistics" / f"{run.name}_{weights.name}"
        result = compare(run, train_data, weights, data, cases, out, args.batches)
        results.append({"group": group, "what": what, "run": str(run), "cases": cases, **result})
    markdown, payload = table(results, args.batches)
    write_results(args.results, f"batch_norm_statistics_{args.name}", markdown, payload)


if __name__ == "__main__":
    main()
