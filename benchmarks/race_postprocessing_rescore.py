"""Re-choose the post-processing of finished one-click races with the current rule, then re-score
their held-out patients.

A race run (``benchmarks/one_click_race.py``) keeps its run folder: the kept checkpoint, its
``split.json`` (the run's own validation patients) and ``holdout.json`` (the patients neither
side saw). Here, for each race folder, the run's validation patients are segmented again and
``cascadeseg.training.validation.validate(choose_postprocessing=True)`` picks the post-processing
as training now would (the choice sees only the validation patients); only then are the held-out
patients segmented through the predictor with the card's old choice and with the new one, and
scored by ``cascadeseg.metrics`` beside the MONAI baseline's saved predictions.

    python benchmarks/race_postprocessing_rescore.py runs/race runs/race2 runs/race3 runs/race4
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
from _common import run_model_checkpoint, write_results  # noqa: E402
from one_click_race import score  # noqa: E402  (the race's own scoring of saved predictions)

LGG = ROOT.parent / "shared" / "data" / "lgg-flair"  # the races' data (the first race's holdout.json omits it)


def validation_cases(run: Path, card, data: Path | None = None) -> list:
    """The run's validation patients, prepared as training prepared them; read from ``data``
    (default: the folder the run trained on, as its config recorded it)."""
    from cascadeseg.training.datasets import case_sources, prepare_case, read_cases

    split = json.loads((run / "split.json").read_text())
    data = data or Path(json.loads((run / "config.json").read_text())["data"])
    sources = [s for s in case_sources(data) if s.case_id in set(split["val"])]
    raw = read_cases(sources, len(card.classes))
    specs = [channel["preprocessing"] for channel in card.input_channels]
    values = [c["value"] for c in card.classes]
    axis = int(card.slice_axis) if card.dims == 2 else None
    return [prepare_case(r, specs, card.target_spacing, axis, values) for r in raw]


def holdout_dice(predictor, holdout: dict, **card_fields) -> dict[str, float]:
    """Per-patient Dice of the held-out patients through the predictor, with ``card_fields``
    (e.g. ``postprocessing=...``) set on its card first."""
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    for key, value in card_fields.items():
        setattr(predictor.card, key, value)
    data = Path(holdout.get("data", LGG))
    dice = {}
    for case in holdout["cases"]:
        labels = predictor.predict(load_volume(data / "imagesTr" / f"{case}_0000.nii.gz")).labels.array
        reference = np.asarray(load_labels(data / "labelsTr" / f"{case}.nii.gz").array)
        dice[case] = case_mean_dice(np.asarray(labels).reshape(reference.shape), reference, [1])
    return dice


def main() -> None:
    import torch

    from cascadeseg.inference import Predictor
    from cascadeseg.training.validation import validate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("races", nargs="+", type=Path, help="race folders (each with ours/, monai_pred/, holdout.json)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, payload = [], {}
    for race in args.races:
        run = race / "ours"
        # The checkpoint the run's plan keeps (runs from before result.json named it kept last/).
        kept = run_model_checkpoint(run)
        predictor = Predictor.from_checkpoint(kept, device="cpu")
        old = predictor.card.postprocessing
        result = validate(
            predictor.model,
            predictor.card,
            validation_cases(run, predictor.card),
            depths=False,
            choose_postprocessing=True,
        )
        new = result.postprocessing
        holdout = json.loads((race / "holdout.json").read_text())
        before = holdout_dice(predictor, holdout, postprocessing=old)
        after = before if new == old else holdout_dice(predictor, holdout, postprocessing=new)
        monai = score(race / "monai_pred", Path(holdout.get("data", LGG)), holdout["cases"])
        m_before, m_after, m_monai = (float(np.mean(list(d.values()))) for d in (before, after, monai))
        rows.append(
            f"| {race.name} (seed {holdout['seed']}) | {old} | {new} | {m_before:.3f} (min {min(before.values()):.3f}) | "
            f"{m_after:.3f} (min {min(after.values()):.3f}) | {m_monai:.3f} | {m_before - m_monai:+.3f} | "
            f"{m_after - m_monai:+.3f} |"
        )
        payload[race.name] = {
            "old": old,
            "new": new,
            "before": before,
            "after": after,
            "monai": monai,
            "validation_candidates": {k: {str(d): v for d, v in m.items()} for k, m in result.candidates.items()},
        }
    lines = [
        "# One-click races re-scored with the current post-processing rule",
        "",
        f"Made by `python benchmarks/race_postprocessing_rescore.py {' '.join(str(r) for r in args.races)}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The post-processing is re-chosen on each run's own "
        "validation patients (`validate(choose_postprocessing=True)`), then the held-out patients are scored with "
        "the old and the new choice (mean per-patient Dice, min in brackets).",
        "",
        "| race | old choice | new choice | ours before | ours after | MONAI | margin before | margin after |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_results(args.results, "race_postprocessing_rescore", "\n".join(lines) + "\n", payload)


if __name__ == "__main__":
    main()
