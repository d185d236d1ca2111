"""Decide whether an ensemble ships: each member alone and their ensemble, scored on validation
patients that none of them trained on, through the product's path.

The ensemble is the checkpoint ``cascadeseg ensemble`` writes (:func:`cascadeseg.training.export.build_ensemble`),
so what is measured is what ``cascadeseg predict`` and the docks would run; every checkpoint is
scored by :func:`cascadeseg.training.holdout.score_checkpoint` at every pruning depth (mirrored
with ``--mirror``, as the cards' default inference), per patient by ``cascadeseg.metrics``. The
table gives the mean per-patient Dice and the ensemble's paired difference to each member
(mean +- standard error over the patients). Held-out patients that a card quotes must not be
passed here: this is where the choice is made.

    python benchmarks/ensemble_choice.py --data runs/hippo/train_data --cases-file runs/hippo/val32.txt \\
        --mirror runs/hippo/second_sitting runs/hippo/unetpp_seed1/last
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import paired_standard_error, write_results  # noqa: E402


def main() -> None:
    import torch

    from cascadeseg.training.export import build_ensemble
    from cascadeseg.training.holdout import score_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", type=Path, nargs="+", help="checkpoint folders of the members (2+)")
    parser.add_argument("--data", type=Path, required=True, help="MSD folder holding the validation cases")
    parser.add_argument("--cases-file", type=Path, required=True, help="whitespace-separated validation case ids")
    parser.add_argument("--mirror", action="store_true", help="test-time mirroring (the cards' default inference)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if len(args.members) < 2:
        raise SystemExit("give two or more member checkpoints")
    torch.set_num_threads(args.threads)
    cases = args.cases_file.read_text().split()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ensemble-choice-") as staging:
        ensemble = build_ensemble(args.members, Path(staging) / "ensemble")
        names = [str(m) for m in args.members] + ["ensemble"]
        scores = {
            name: score_checkpoint(path, args.data, cases, mirror=args.mirror)
            for name, path in zip(names, [*args.members, ensemble])
        }
    depths = sorted(scores["ensemble"].dice)
    lines = [
        "# An ensemble against its members",
        "",
        f"Made by `python benchmarks/ensemble_choice.py {' '.join(map(str, args.members))} --data {args.data} "
        f"--cases-file {args.cases_file}{' --mirror' if args.mirror else ''}`: {len(cases)} validation patients "
        f"none of the members trained on, the predictor at every depth{', mirrored' if args.mirror else ''}, "
        f"{args.threads} thread(s), {time.perf_counter() - t0:.0f} s.",
        "",
        "| depth | " + " | ".join(f"member {i}" for i in range(len(args.members))) + " | ensemble | "
        + " | ".join(f"ensemble - member {i} (better / worse)" for i in range(len(args.members))) + " |",
        "|---|" + "---:|" * (2 * len(args.members) + 1),
    ]
    summary: dict[str, dict[str, float]] = {}
    for depth in depths:
        table = {name: np.array([scores[name].dice[depth][case] for case in cases]) for name in names}
        cells = [f"{table[name].mean():.4f}" for name in names]
        diffs = []
        for i, name in enumerate(names[:-1]):
            diff = table["ensemble"] - table[name]
            se = paired_standard_error(diff)
            summary[f"L{depth} vs member {i}"] = {"diff": float(diff.mean()), "se": se}
            diffs.append(f"{diff.mean():+.4f} +- {se:.4f} ({int((diff > 0.0005).sum())} / {int((diff < -0.0005).sum())})")
        lines.append(f"| L{depth} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    lines += ["", "Members: " + "; ".join(f"{i}: `{m}`" for i, m in enumerate(args.members))]
    text = "\n".join(lines) + "\n"
    payload = {"members": [str(m) for m in args.members], "cases": cases, "mirror": args.mirror,
               "dice": {name: {str(d): v for d, v in s.dice.items()} for name, s in scores.items()},
               "summary": summary}
    write_results(args.out, f"ensemble_choice{'_' + args.tag if args.tag else ''}", text, payload)


if __name__ == "__main__":
    main()
