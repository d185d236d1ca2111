"""Does a foreground threshold chosen on a run's own validation patients help patients it never saw?

For each split folder (``benchmarks/datasets.py holdout`` wrote its ``holdout.json``; ``RUN`` is
the ``cascadeseg train`` run folder inside it), the run's kept checkpoint validates again on the
run's own validation patients through ``validate(choose_postprocessing=True, choose_threshold=True)``,
the choice training now makes; only then are the held-out patients segmented through the
predictor with the argmax (threshold 0.5) and with the chosen threshold, and scored by
``cascadeseg.metrics`` (mean per-patient Dice, differences paired by patient).

    python benchmarks/threshold_choice.py runs/exp/s31 runs/exp/s32 --run default
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import paired_standard_error, run_model_checkpoint, write_results  # noqa: E402
from race_postprocessing_rescore import holdout_dice, validation_cases  # noqa: E402


def main() -> None:
    import torch

    from cascadeseg.inference import Predictor
    from cascadeseg.training.validation import validate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("splits", nargs="+", type=Path, help="split folders (each with holdout.json and RUN/)")
    parser.add_argument("--run", default="default", help="the run folder's name inside each split folder")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, payload, pooled = [], {}, []
    for split in args.splits:
        run = split / args.run
        predictor = Predictor.from_checkpoint(run_model_checkpoint(run), device="cpu")
        predictor.card.foreground_threshold = None  # the candidates start from the argmax
        holdout = json.loads((split / "holdout.json").read_text())
        result = validate(
            predictor.model,
            predictor.card,
            validation_cases(run, predictor.card, Path(holdout["data"])),  # the whole set holds them
            depths=False,
            choose_postprocessing=True,
            choose_threshold=True,
        )
        predictor.card.postprocessing = result.postprocessing
        chosen = result.foreground_threshold
        argmax = holdout_dice(predictor, holdout, foreground_threshold=None)
        moved = argmax if chosen is None else holdout_dice(predictor, holdout, foreground_threshold=chosen)
        diff = [moved[c] - argmax[c] for c in argmax]
        pooled += diff
        val = result.threshold_candidates
        rows.append(
            f"| {split.name} (seed {holdout['seed']}) | {chosen or 0.5} | {val[0.5]:.3f} -> {max(val.values()):.3f} | "
            f"{np.mean(list(argmax.values())):.3f} (min {min(argmax.values()):.3f}) | "
            f"{np.mean(list(moved.values())):.3f} (min {min(moved.values()):.3f}) | "
            f"{np.mean(diff):+.4f} +- {paired_standard_error(diff):.4f} | "
            f"{sum(d > 0 for d in diff)} / {sum(d < 0 for d in diff)} |"
        )
        payload[split.name] = {
            "threshold": chosen,
            "validation_means": {str(t): v for t, v in val.items()},
            "postprocessing": result.postprocessing,
            "held_out_argmax": argmax,
            "held_out_chosen": moved,
        }
        print(rows[-1], flush=True)
    rows.append(
        f"| pooled, {len(pooled)} patients | | | | | **{np.mean(pooled):+.4f} +- {paired_standard_error(pooled):.4f}** | "
        f"{sum(d > 0 for d in pooled)} / {sum(d < 0 for d in pooled)} |"
    )
    lines = [
        "# A foreground threshold chosen on validation, scored on held-out patients",
        "",
        f"Made by `python benchmarks/threshold_choice.py {' '.join(str(s) for s in args.splits)} --run {args.run}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one thread. Each run's threshold is chosen on its own "
        "validation patients (`validate(choose_threshold=True)`: the best mean Dice among 0.5 .. 0.1, ties to the "
        "higher); the held-out patients are scored through the predictor at 0.5 (the argmax) and at that threshold.",
        "",
        "| split | chosen threshold | validation: 0.5 -> chosen | held-out at 0.5 | held-out at chosen | chosen - 0.5 per patient | better / worse |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_results(args.results, "threshold_choice", "\n".join(lines) + "\n", payload)


if __name__ == "__main__":
    main()
