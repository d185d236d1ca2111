"""What UNet#'s classification-guided gate does to a trained run's validation patients.

Each run's ``last/`` checkpoint segments the run's validation patients through the real predictor
at every pruning depth twice, with the gate on (the model's default) and off (``cgm_gating``);
the table gives mean per-patient Dice per depth both ways and the patients the gate changed by
more than 0.05. The run folders are those of ``benchmarks/model_variants.py``.

    python benchmarks/cgm_gate_effect.py runs/model_variants/unet_sharp-seed1/loss-dice_ce_cgm_detach-true
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import add_folder_arguments, write_results


def gate_effect(run: Path, data: Path) -> dict:
    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.training.holdout import score_predictor
    from cascadeseg.training.split import Split

    split = Split.load(run)
    predictor = Predictor.from_checkpoint(run / "last", device="cpu")
    dice: dict[str, dict[int, dict[str, float]]] = {}
    for gate in ("on", "off"):
        predictor.model.cgm_gating = gate == "on"
        dice[gate] = score_predictor(predictor, data, split.val).dice
    return {"run": str(run), "dice": dice}


def markdown(results: list[dict]) -> str:
    lines = [
        "# UNet#'s gate on and off",
        "",
        f"Made by `python benchmarks/cgm_gate_effect.py {' '.join(r['run'] for r in results)}`: each run's last "
        "checkpoint on its validation patients, real predictor, no mirroring.",
        "",
        "| run | depth | Dice, gate on | Dice, gate off | patients the gate changed by > 0.05 (on - off) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        for depth in sorted(r["dice"]["on"]):
            on, off = r["dice"]["on"][depth], r["dice"]["off"][depth]
            changed = ", ".join(f"{c} {on[c] - off[c]:+.2f}" for c in on if abs(on[c] - off[c]) > 0.05) or "none"
            lines.append(
                f"| {r['run']} | L{depth} | {np.mean(list(on.values())):.3f} | {np.mean(list(off.values())):.3f} | {changed} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of benchmarks/model_variants.py")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"))
    add_folder_arguments(parser, "cgm_gate_effect")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for run in args.runs:
        if not (run / "last").is_dir() or not (run / "split.json").is_file():
            sys.exit(f"{run}: expected a training run folder with last/ and split.json")
    results = [gate_effect(run, args.data) for run in args.runs]
    write_results(args.results, "cgm_gate_effect", markdown(results), results)


if __name__ == "__main__":
    main()
