"""Turn the runs that trained the 3D and abdominal default models into shipped checkpoints.

Each model was trained by ``cascadeseg train`` on the training part of a seeded patient split
(``benchmarks/datasets.py holdout``: the held-out patients were set aside before any training saw
the data). Here its best checkpoint is exported to ``resources/checkpoints/<name>/`` by
:func:`cascadeseg.training.export_run`, which segments every held-out patient with the real
predictor at every pruning depth and writes those scores into the card (mean per-patient Dice,
per class, HD95 in mm, seconds per case). The card also gets the class names and display colours
the GUI paints the label layer with, and the data licence. Prints one row per model and depth.

    python benchmarks/ship_models.py hippocampus --run runs/hippo/unetpp --holdout runs/hippo/holdout.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# One colour per class, told apart at a glance over a grey scan (the card carries them; the GUI paints the labels layer with them).
MODELS: dict[str, dict[str, Any]] = {
    "hippocampus": {
        "name": "hippocampus_unet_plus_plus_3d",
        "data": SHARED / "hippocampus",
        "channel": "T1",
        "classes": [
            {"value": 0, "name": "background"},
            {"value": 1, "name": "anterior hippocampus", "color": "#dcd814"},
            {"value": 2, "name": "posterior hippocampus", "color": "#3c9cf0"},
        ],
        "licence": "CC BY-SA 4.0 (Medical Segmentation Decathlon, Task04 Hippocampus)",
        "description": (
            "UNet++ (paper 001, nested U-Net with deep supervision and pruning) in 3D, segmenting the "
            "anterior and posterior hippocampus on T1 MRI crops (MSD Task04 style, about 35x50x35 voxels at "
            "1 mm); trained one-click by cascadeseg train on a 1-thread CPU budget. Research use."
        ),
    },
    "chaos": {
        "name": "chaos_t2_anu_net_2d",
        "data": SHARED / "chaos-t2",
        "channel": "T2-SPIR",
        "classes": [
            {"value": 0, "name": "background"},
            {"value": 1, "name": "liver", "color": "#dd8265"},
            {"value": 2, "name": "right kidney", "color": "#c05a8a"},
            {"value": 3, "name": "left kidney", "color": "#e0c280"},
            {"value": 4, "name": "spleen", "color": "#6a8cd8"},
        ],
        "licence": "CC BY-NC-SA 4.0 (CHAOS challenge): research, non-commercial",
        "description": (
            "ANU-Net (paper 003, attention-based nested U-Net with deep supervision and pruning) in 2D, "
            "segmenting liver, right kidney, left kidney and spleen on axial abdominal T2-SPIR MRI (CHAOS); "
            "trained one-click by cascadeseg train on a 1-thread CPU budget. Research, non-commercial use."
        ),
    },
    "ct_liver": {
        "name": "ct_liver_unet_3d",
        "data": ROOT / "runs" / "ct_liver_data",
        "channel": "CT",
        "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "liver", "color": "#dd8265"}],
        "licence": "TotalSegmentator example CT: Apache-2.0; LiTS crop: research use",
        "description": (
            "3D U-Net segmenting the liver on abdominal CT (HU, windowed by the planner), trained one-click "
            "by cascadeseg train on the two CT volumes of ../shared (TotalSegmentator's example CT and a "
            "LiTS crop). Two training volumes: a starting point for fine-tuning, not a validated CT model."
        ),
    },
}


def time_depths(checkpoint: Path, data: Path, cases: list[str], threads: int) -> dict[int, float]:
    """Median seconds per scan through the predictor at each pruning depth (after a warm-up)."""
    import statistics
    import time

    import torch

    from cascadeseg.inference import Predictor
    from cascadeseg.io import load_volume

    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    depths = list(predictor.model.info.pruning_depths) or [1]
    scans = [load_volume(data / "imagesTr" / f"{case}_0000.nii.gz") for case in cases]
    predictor.predict(scans[0], depth=depths[-1])
    seconds = {}
    for depth in depths:
        times = []
        for scan in scans:
            t0 = time.perf_counter()
            predictor.predict(scan, depth=depth)
            times.append(time.perf_counter() - t0)
        seconds[depth] = statistics.median(times)
    return seconds


def held_out_estimate(parent_checkpoint: Path) -> dict[str, Any]:
    """The parent's held-out figures, as the estimate for new patients of a continuation that then
    trained on those patients too (nnU-Net's final models train on all the data the same way): the
    recipe was measured on them before they were trained on; the new weights cannot be."""
    from cascadeseg.inference import read_card

    parent = read_card(parent_checkpoint)
    figures = {k: parent.validation[k] for k in ("dice_per_depth", "dice_per_class", "hd95_per_depth", "metric")
               if k in parent.validation}
    patients = len(parent.validation.get("cases") or [])
    if "dice_per_depth" not in figures or not patients:
        raise SystemExit(f"{parent_checkpoint}: its card has no held-out figures to carry as an estimate")
    return {
        **figures,
        "patients": patients,
        "of": {"name": parent.name, "weights_sha256": parent.weights_sha256},
        "reason": (f"these weights continued {parent.name} on every one of its {patients} "
                   "held-out patients as well, so none is left to score them on; the figures are the parent's on "
                   "those patients before they were trained on, the estimate of this recipe for new patients"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--run", type=Path, required=True,
                        help="the run folder of cascadeseg train, or a checkpoint folder (a shipped model)")
    parser.add_argument("--ensemble-with", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                        help="ship the average of --run's network and these (cascadeseg ensemble), chosen beforehand "
                        "by benchmarks/ensemble_choice.py on validation patients")
    parser.add_argument("--ensemble-evidence", type=Path, default=None, metavar="JSON",
                        help="the ensemble_choice results file the ensemble was chosen on (its summary goes on the card)")
    parser.add_argument("--holdout", type=Path, default=None,
                        help="holdout.json of benchmarks/datasets.py (default: the card's validation cases)")
    parser.add_argument("--which", default="best", choices=["best", "last"])
    parser.add_argument("--dest", type=Path, default=ROOT / "resources" / "checkpoints")
    parser.add_argument("--timing-cases", type=int, default=5, help="held-out scans timed per depth")
    parser.add_argument("--no-score", action="store_true",
                        help="no held-out patients (the CT model): keep the run's own validation on the card")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--choose-mirroring", action="store_true",
                        help="decide the card's test-time mirroring on the run's validation patients "
                        "(and score the held-out ones both ways)")
    parser.add_argument("--keep-choices-of", type=Path, default=None, metavar="CHECKPOINT",
                        help="take the recommended depth and test-time mirroring from this checkpoint's card "
                        "(a continuation whose own validation is too small to choose them keeps its parent's)")
    parser.add_argument("--estimate-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="a continuation that trained on its parent's held-out patients: put the parent's held-out "
                        "figures on the card as the estimate for new patients (validation.estimate); --holdout then "
                        "names the few patients neither model trained on")
    args = parser.parse_args()

    import tempfile

    from cascadeseg.inference import read_card
    from cascadeseg.training import build_ensemble, export_checkpoint
    from cascadeseg.training.run_folder import find_checkpoint

    spec = MODELS[args.model]
    source = args.run if (args.run / "model_card.json").is_file() else find_checkpoint(args.run, args.which)
    if source is None:
        raise SystemExit(f"{args.run}: no '{args.which}' checkpoint")
    # The data folders name their channel by file suffix ('0000'); the card names the sequence.
    run_card = read_card(source)
    channels = [{**run_card.input_channels[0], "name": spec["channel"]}]
    cases = json.loads(args.holdout.read_text())["cases"] if args.holdout else None
    destination = args.dest / spec["name"]
    fixed = None
    if args.keep_choices_of is not None:  # read before the export replaces a shipped parent
        parent = read_card(args.keep_choices_of)
        # the parent's own validation (its trainer's figures and its mirroring choice) is the evidence
        chosen_on = parent.validation.get("choices", {}).get("evidence") or {
            k: parent.validation[k] for k in ("trainer_validation", "mirroring_choice") if k in parent.validation
        }
        patients = len(chosen_on.get("trainer_validation", {}).get("dice_per_case") or {})
        fixed = {"recommended_depth": parent.recommended_depth, "test_time_mirroring": parent.test_time_mirroring,
                 "reason": f"kept from {parent.name or args.keep_choices_of}, chosen there on its {patients} "
                           "validation patients",
                 "evidence": chosen_on}
    updates: dict[str, Any] = {"classes": spec["classes"], "input_channels": channels,
                               "training": {"licence": spec["licence"]}}
    if args.estimate_from is not None:  # read before the export replaces a shipped parent
        updates["validation"] = {"estimate": held_out_estimate(args.estimate_from)}
    if args.ensemble_evidence is not None:
        evidence = json.loads(args.ensemble_evidence.read_text())
        updates.setdefault("validation", {})["ensemble_choice"] = {
            "file": args.ensemble_evidence.name, "cases": evidence["cases"], "mirror": evidence["mirror"],
            "members": evidence["members"], "ensemble_minus_member": evidence["summary"]}
    with tempfile.TemporaryDirectory(prefix="ship-ensemble-") as staging:
        description = spec["description"]
        if args.ensemble_with:  # built before the export replaces a shipped member
            source = build_ensemble([source, *args.ensemble_with], Path(staging) / "ensemble")
            description += (f" An ensemble of {1 + len(args.ensemble_with)} such networks trained apart: their class "
                            "probabilities are averaged.")
        folder = export_checkpoint(
            source, destination, name=spec["name"], description=description,
            holdout_data=None if args.no_score else spec["data"], holdout_cases=cases, overwrite=True,
            choose_mirroring=args.choose_mirroring and not args.no_score, holdout_mirror=args.choose_mirroring,
            card_updates=updates, fixed_choices=fixed,
        )
    card = json.loads((folder / "model_card.json").read_text())
    validation = card["validation"]
    if args.no_score:
        print(f"{spec['name']}: not scored on held-out patients; the run's validation: {validation.get('dice_per_depth')}")
        return
    seconds = time_depths(folder, spec["data"], validation["cases"][: args.timing_cases], args.threads)
    names = {str(c["value"]): c["name"] for c in spec["classes"]}
    chosen = validation.get("choices", {}).get("reason", "chosen on the run's validation patients")
    other_name = "plain" if card["test_time_mirroring"] else "mirrored"
    other = validation.get(other_name, {}).get("dice_per_depth", {})
    print(f"{spec['name']}: {len(validation['cases'])} held-out case(s); recommended depth {card['recommended_depth']} "
          f"({chosen}); test-time mirroring by default: {card['test_time_mirroring']}"
          + (" ({})".format({k: v for k, v in validation["mirroring_choice"].items() if k != "cases"})
             if "mirroring_choice" in validation else "")
          + f"; seconds per case (the default inference): median over {min(args.timing_cases, len(validation['cases']))} "
          f"held-out scans through the predictor, {args.threads} thread(s)")
    print(f"| depth | mean Dice ({'mirrored: ' if card['test_time_mirroring'] else ''}the default) | per class "
          f"| HD95 mean / median (mm) | {other_name} mean Dice | s / case |")
    print("|---|---:|---|---:|---:|---:|")
    for depth, dice in validation["dice_per_depth"].items():
        per_class = validation.get("dice_per_class", {}).get(depth, {})
        classes = ", ".join(f"{names[v]} {d:.3f}" for v, d in per_class.items())
        hd = validation["hd95_per_depth"][depth]
        alternative = f"{other[depth]:.3f}" if depth in other else "-"
        print(f"| {depth} | {dice:.3f} | {classes} | {hd['mean_mm']} / {hd['median_mm']} | {alternative} "
              f"| {seconds[int(depth)]:.2f} |")
    if "estimate" in validation:
        estimate = validation["estimate"]
        print(f"quoted for new patients (validation.estimate, {estimate['of']['name']} on its {estimate['patients']} "
              f"held-out patients): {estimate['dice_per_depth']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
