"""Two or more options of one model trained side by side on the same budget, data and split.

The short training comparison of docs/model_zoo.md: every variant is ``cascadeseg train`` on LGG
FLAIR with the results table's settings (``benchmarks/train_results.py``: 2D slices at 128 px,
64 x 64 crops, batch 8, base width 8, seed 0, the same validation patients) and a fixed budget of
optimiser steps (a step budget, not minutes, so that the load of a shared CPU does not decide who
trains longer). The last checkpoint of each (no epoch selection) segments every validation patient
through the real predictor at every pruning depth; the table gives mean per-patient Dice per depth,
HD95 at full depth, training seconds per step and predictor seconds per patient.

    python benchmarks/model_variants.py unet_sharp link_targets=all link_targets=inner_and_output

A variant is ``KEY=VALUE[,KEY=VALUE...]`` (VALUE as JSON, bare words as strings; ``loss=NAME`` picks
the training loss, ``loss.KEY=VALUE`` sets one of its options, any other key is a model option);
each trains in its own process with one thread, ``--parallel`` at a time. A run folder that exists
is scored again without training; the table marks such a row "(reused)" and every row shows the
loss and options its card records, so a folder trained under an older default cannot pass for a
new run (move it aside to retrain).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_folder_arguments, one_thread_env, write_results
from train_results import SAMPLE_CASE  # the results table's validation patient, here too


def parse_variant(text: str) -> dict[str, object]:
    options: dict[str, object] = {}
    # Commas separate options, except inside a JSON list ("loss.head_weights=[2,1,1,1]").
    for item in filter(None, re.split(r",(?![^\[]*\])", text)):
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def run_name(variant: str) -> str:
    return variant.replace("=", "-").replace(",", "_") or "default"


def train_command(args: argparse.Namespace, variant: str, run_dir: Path) -> list[str]:
    command = [
        str(Path(sys.executable).parent / "cascadeseg"), "train", str(args.data), "--model", args.model,
        "--dims", "2", "--base-width", "8", "--inplane-size", "128", "--patch-size", "64", "64",
        "--batch-size", "8", "--minutes", "600", "--epochs", str(args.epochs),
        "--steps-per-epoch", str(args.steps_per_epoch), "--val-fraction", "0.15", "--val-case", SAMPLE_CASE,
        "--augmentation", '{"rot90": false}', "--threads", "1", "--seed", str(args.seed), "--run-dir", str(run_dir),
        "--no-progress",
    ]
    for key, value in parse_variant(variant).items():
        # "loss" names the training loss, "loss.KEY" is one of its options; any other key is a
        # create_model option.
        if key == "loss":
            command += ["--loss", str(value)]
        elif key.startswith("loss."):
            command += ["--loss-option", f"{key[5:]}={json.dumps(value)}"]
        else:
            command += ["--model-option", f"{key}={json.dumps(value)}"]
    return command


def run_one(args: argparse.Namespace, variant: str) -> dict:
    import torch

    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.training.holdout import score_checkpoint
    from cascadeseg.training.split import Split

    run_dir = args.out / run_name(variant)
    command = train_command(args, variant, run_dir)
    reused = run_dir.exists()
    if not reused:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=one_thread_env())
    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split = Split.load(run_dir)
    scores = score_checkpoint(run_dir / "last", args.data, split.val, device="cpu")
    card = read_card(run_dir / "last")
    with torch.device("meta"):  # the card builds the network without weights: a count, no second load
        model = card.create_model()
    depths = sorted(scores.dice)
    steps = int(rows[-1]["step"])
    train_seconds = sum(float(r["epoch_seconds"]) for r in rows)
    hd_mean, _, hd_inf = scores.hd95_summary(depths[-1])
    return {
        "variant": variant or "default",
        "reused": reused,
        "loss": card.training.get("loss"),
        "loss_options": card.training.get("loss_options"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "seconds_per_step": train_seconds / max(1, steps),
        "dice": {d: scores.mean_dice(d) for d in depths},
        "hd95_full": hd_mean,
        "hd95_inf": hd_inf,
        "predict_seconds_per_case": scores.seconds_per_case,
        "val_cases": split.val,
        "command": shlex.join(["cascadeseg", *command[1:]]).replace(f"{Path.cwd()}/", ""),
        "scores": scores.to_dict(),
    }


def markdown(args: argparse.Namespace, results: list[dict]) -> str:
    depths = sorted({d for r in results for d in r["dice"]})
    lines = [
        f"# {args.model}: variants trained side by side",
        "",
        f"Made by `python benchmarks/model_variants.py {args.model} {' '.join(args.variants)} --seed {args.seed}`: "
        f"{args.epochs} x {args.steps_per_epoch} optimiser steps each, one thread, {args.parallel} at a time; "
        f"the last checkpoint scored on the {len(results[0]['val_cases'])} validation patients through the predictor.",
        "",
        "| variant | parameters | steps | s / step | " + " | ".join(f"Dice L{d}" for d in depths)
        + " | HD95 full (inf) | predict s / patient | loss (card) |",
        "|---|---:|---:|---:|" + "---:|" * len(depths) + "---:|---:|---|",
    ]
    for r in results:
        params = f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "-"
        dice = " | ".join(f"{r['dice'].get(d, float('nan')):.3f}" for d in depths)
        options = ", ".join(f"{k}={v}" for k, v in (r["loss_options"] or {}).items())
        recorded = f"{r['loss']} {options}".strip() if r["loss"] else "-"
        variant = f"{r['variant']} (reused)" if r["reused"] else r["variant"]
        lines.append(
            f"| {variant} | {params} | {r['steps']} | {r['seconds_per_step']:.2f} | {dice} | "
            f"{r['hd95_full']:.1f} ({r['hd95_inf']}) | {r['predict_seconds_per_case']:.2f} | {recorded} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("variants", nargs="+", help="KEY=VALUE[,KEY=VALUE...] per variant")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and sampling seed")
    add_folder_arguments(parser, "model_variants")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.out = args.out / (args.model if args.seed == 0 else f"{args.model}-seed{args.seed}")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda v: run_one(args, v), args.variants))
    write_results(args.results, f"model_variants_{args.model}_seed{args.seed}", markdown(args, results), results)


if __name__ == "__main__":
    main()
