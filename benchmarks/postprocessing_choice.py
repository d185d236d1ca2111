"""Choose a shipped model's post-processing on its training run's validation patients, then score
the choice on the held-out patients.

Training chooses post-processing by Dice alone (``validate(choose_postprocessing=True)``: a
candidate must beat the raw argmax by 0.005, nnU-Net's rule), which never sees the far islands
that make an organ's HD95 tens of millimetres while costing almost no Dice. Here every candidate
(:data:`cascadeseg.inference.postprocess.CANDIDATES`) is scored on the run's own validation
patients at the card's recommended depth, and the one with the lowest mean HD95 among those whose
Dice is within 0.005 of the raw argmax's is chosen (none unless it lowers HD95 by over 10 %). Only
then are the held-out patients segmented, raw and with the choice, for the card's figures.
``--write-card`` writes the choice into the checkpoint's card (the predictor applies it).

    python benchmarks/postprocessing_choice.py --checkpoint resources/checkpoints/chaos_t2_anu_net_2d \\
        --run runs/chaos/anu --holdout runs/chaos/holdout.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import write_results  # noqa: E402

DICE_MARGIN = 0.005
MIN_HD95_GAIN = 0.10


def score(predictor, refs: dict, cases: list[str], depth: int, variants: dict) -> dict[str, dict[str, list[float]]]:
    """Per variant: the cases' mean-over-classes Dice and HD95 at ``depth``."""
    from cascadeseg.inference.postprocess import postprocess
    from cascadeseg.metrics import evaluate_case, mean_dice

    foreground = [c["value"] for c in predictor.card.classes if c["value"] != 0]
    out: dict[str, dict[str, list[float]]] = {name: {"dice": [], "hd95": []} for name in variants}
    for case in cases:
        image, labels = refs[case].load()
        raw = predictor.predict(image, depth=depth).labels
        for name, options in variants.items():
            array = np.asarray(raw.array)
            if options is not None:
                array = postprocess(array.copy(), options, spacing=raw.spacing)
            row = evaluate_case(array, labels.array, labels.spacing, classes=foreground)
            out[name]["dice"].append(mean_dice(row, [str(k) for k in foreground]))
            out[name]["hd95"].append(float(np.mean([row[str(k)]["hd95"] for k in foreground])))
    return out


def main() -> None:
    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.inference.postprocess import CANDIDATES, to_card
    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.io import load_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="the training run (its split.json and config.json)")
    parser.add_argument("--holdout", type=Path, required=True, help="the held-out split (benchmarks/datasets.py)")
    parser.add_argument("--write-card", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    split = json.loads((args.run / "split.json").read_text())
    train_data = Path(json.loads((args.run / "config.json").read_text())["data"])
    holdout = json.loads(args.holdout.read_text())
    card = read_card(args.checkpoint)
    if card.postprocessing:
        raise SystemExit(f"{args.checkpoint} already post-processes ({card.postprocessing}): nothing to choose")
    depth = int(card.recommended_depth or 1)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    variants = {"none": None, **CANDIDATES}
    t0 = time.perf_counter()
    val = score(predictor, {r.case_id: r for r in load_dataset(train_data)}, list(split["val"]), depth, variants)
    means = {n: (float(np.mean(v["dice"])), float(np.mean(v["hd95"]))) for n, v in val.items()}
    eligible = [n for n in variants if means[n][0] >= means["none"][0] - DICE_MARGIN]
    best = min(eligible, key=lambda n: means[n][1])
    chosen = best if means[best][1] < (1 - MIN_HD95_GAIN) * means["none"][1] else "none"
    held = score(predictor, {r.case_id: r for r in load_dataset(Path(holdout["data"]))}, list(holdout["cases"]), depth,
                 {"none": None, chosen: variants[chosen]})
    rows = []
    for name in variants:
        d, h = means[name]
        mark = " **chosen**" if name == chosen else ""
        rows.append(f"| validation ({len(split['val'])}) | {name}{mark} | {d:.4f} | {h:.1f} |")
    for name, v in held.items():
        rows.append(f"| held-out ({len(holdout['cases'])}) | {name} | {np.mean(v['dice']):.4f} | {np.mean(v['hd95']):.1f} |")
    lines = [
        f"# Post-processing of `{args.checkpoint.name}` chosen on its validation patients",
        "",
        f"Made by `python benchmarks/postprocessing_choice.py --checkpoint {args.checkpoint} --run {args.run} "
        f"--holdout {args.holdout}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({time.perf_counter() - t0:.0f} s). Depth L{depth} (the card's recommended); Dice and HD95 (mm): "
        "per case the mean over the foreground classes, then the mean over cases. Rule: the lowest HD95 among "
        f"the candidates within {DICE_MARGIN} Dice of the raw argmax on validation, if it lowers HD95 by over "
        f"{MIN_HD95_GAIN:.0%}; the held-out patients were segmented only after the choice.",
        "",
        "| patients | post-processing | Dice | HD95 mm |",
        "|---|---|---:|---:|",
        *rows,
    ]
    write_results(args.results, f"postprocessing_{args.checkpoint.name}", "\n".join(lines) + "\n",
                  {"validation": val, "heldout": held, "chosen": chosen, "depth": depth})
    if args.write_card and chosen != "none":
        from cascadeseg.inference.checkpoint import load_checkpoint, save_checkpoint

        model, card = load_checkpoint(args.checkpoint)
        save_checkpoint(model, dataclasses.replace(card, postprocessing=to_card(variants[chosen])), args.checkpoint,
                        overwrite=True)
        print(f"card of {args.checkpoint} now post-processes with {to_card(variants[chosen])}")


if __name__ == "__main__":
    main()
