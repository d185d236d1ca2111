"""Averaging a nested network's heads at inference (UNet++'s "accurate mode") against its deepest
head alone, on the checkpoint's own validation patients.

A nested network (UNet++, ANU-Net, UNet#) computes every pruning head in one full-depth pass, so
the mean of their class probabilities costs nothing more than the deepest head alone; Zhou et al.'s
UNet++ offers it as the "accurate mode" (paper 004 borrows the name for its training loss, the
average over branches). Whether it helps is measured here before it is offered: each variant
segments the card's validation patients (``training.data.val_cases``, never the held-out ones
quoted in docs/default_models.md) through the real predictor at full depth, with the card's
test-time mirroring; the table gives mean per-patient Dice and the paired difference to the
deepest head (mean +- standard error).

    python benchmarks/head_averaging.py resources/checkpoints/hippocampus_unet_plus_plus_3d ../shared/data/hippocampus
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import paired_standard_error, write_results  # noqa: E402


def averaged_heads(model, heads: list[int]) -> None:
    """Make ``model`` return the log of its heads' mean softmax as its logits (in place).

    The predictor (its mirroring included) calls the model as usual and sees the average."""
    import torch

    from cascadeseg.models.output import OutputRequest

    plain = model.forward

    def forward(x, depth=None, request=None):  # noqa: ANN001 - the model's own signature
        out = plain(x, depth=None, request=OutputRequest(heads=True))
        mean = sum(torch.softmax(out.heads[d].float(), dim=1) for d in heads) / len(heads)
        out.logits = torch.log(mean.clamp_min(1e-12))
        return out

    model.forward = forward


def main() -> None:
    import torch

    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.io import load_dataset
    from cascadeseg.metrics import evaluate_case, mean_dice
    from cascadeseg.models import model_class

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="the dataset folder holding the card's validation patients")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    card = read_card(args.checkpoint)
    depth = max(model_class(card.architecture).info.pruning_depths or [0])  # no network built
    if depth < 2:
        raise SystemExit(f"{args.checkpoint}: not a nested network with pruning heads")
    cases = list(card.training["data"]["val_cases"])
    refs = {r.case_id: r for r in load_dataset(args.data)}
    foreground = [c["value"] for c in card.classes if c["value"] != 0]
    variants = {f"L{depth} alone": [depth]} | {
        f"mean of L{first}..L{depth}": list(range(first, depth + 1)) for first in range(depth - 1, 0, -1)
    }
    dice: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name, heads in variants.items():
        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
        averaged_heads(predictor.model, heads)
        t0 = time.perf_counter()
        dice[name] = {}
        for case in cases:
            image, labels = refs[case].load()
            predicted = predictor.predict(image, depth=depth).labels
            row = evaluate_case(predicted.array, labels.array, labels.spacing, classes=foreground)
            dice[name][case] = mean_dice(row, [str(k) for k in foreground])
        seconds[name] = (time.perf_counter() - t0) / len(cases)
        print(f"{name}: {np.mean(list(dice[name].values())):.4f}", flush=True)

    base = dice[f"L{depth} alone"]
    lines = [
        f"# Averaging the heads of `{args.checkpoint.name}` at inference",
        "",
        f"Made by `python benchmarks/head_averaging.py {args.checkpoint} {args.data}`: the card's "
        f"{len(cases)} validation patients, full depth, test-time mirroring "
        f"{'on' if card.test_time_mirroring else 'off'} (the card's), one thread.",
        "",
        f"| heads | mean Dice | minus L{depth} alone (mean +- s.e.) | s per patient |",
        "|---|---:|---:|---:|",
    ]
    summary = {}
    for name, by_case in dice.items():
        diff = np.array([by_case[c] - base[c] for c in cases])
        se = paired_standard_error(diff)
        summary[name] = {"mean": float(np.mean(list(by_case.values()))), "diff": float(diff.mean()), "se": se}
        lines.append(f"| {name} | {summary[name]['mean']:.4f} | {diff.mean():+.4f} +- {se:.4f} | {seconds[name]:.2f} |")
    payload = {"checkpoint": str(args.checkpoint), "cases": cases, "dice": dice, "summary": summary, "seconds": seconds}
    write_results(args.out, f"head_averaging_{args.checkpoint.name}", "\n".join(lines) + "\n", payload)


if __name__ == "__main__":
    main()
