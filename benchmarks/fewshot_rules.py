"""Few-shot fine-tuning's two selection rules checked where many patients can score them.

The rules a fine-tuning runs by (stop 59) were written on the TCIA folds, whose held-out side is
four studies: the starting model's recommended depth as a prior (``recommended_depth(prior_depth=)``)
and ``best/`` chosen on the Dice at the recommended depth rather than at the best depth. This
benchmark asks the same questions on patients enough to measure them:

* the target: the 12 LGG patients the shipped FLAIR ANU-Net validated on and never trained on,
  made into "another source" as issue 14 describes one: slices twice as thick (pairs of slices
  averaged, a voxel labelled where the pair's mean label is at least a half; the slice spacing
  doubled) and another intensity response (gamma 0.6 on the 0-255 range, times 4, plus 100: a
  background that is not 0, int16);
* six few-shot folds, each ``cascadeseg train`` on two of those patients (so slice-block
  validation, the TCIA regime) from the shipped ANU-Net, for ``--minutes`` each, every validated
  epoch's weights saved;
* every epoch's weights (epoch 0: the starting model) segment the fold's ten other patients
  through the real predictor at every depth (``training.holdout.score_predictor``);
* the run's recorded validation is replayed under the rules before and after stop 59 and under
  stop 60's (slice blocks never overturn the prior depth), and the held-out Dice of the (epoch,
  depth) each chooses is read from that table.

    python benchmarks/fewshot_rules.py --minutes 8 --out runs/fewshot
    python benchmarks/fewshot_rules.py --minutes 8 --out runs/fewshot_lr --train-args='--lr 1e-4'
    python benchmarks/fewshot_rules.py --minutes 8 --out runs/fewshot3 --patients-per-fold 3
    python benchmarks/fewshot_rules.py --patients-per-fold 3 --minutes 2 --out runs/fewshot3_2min \\
        --compare-with runs/fewshot3

The second is a variant (extra ``cascadeseg train`` options; stop 60 chose the planned
fine-tuning rate this way). The first two ran at the then planned 1e-3: the first table is now
reproduced with ``--train-args='--lr 1e-3'``, and the plain command runs the planned 1e-4. The
third (stop 61) makes four folds of three patients, which validate on a whole patient instead of
slice blocks, each scored on the nine others. A fold's own run and epoch checkpoints stay in
``--out``. The fourth (stop 63) is another budget, its kept models paired per fold with an earlier
run's (``--compare-with``): it chose the planned budget of a fine-tuning given none.

One core per fold, ``--parallel`` folds at a time. A worker mode (``--worker K``) trains and
scores one fold; the driver starts the workers and writes the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_folder_arguments, paired_standard_error, run_pinned_jobs, write_results  # noqa: E402

LGG = ROOT.parent / "shared" / "data" / "lgg-flair"
STARTING_MODEL = "lgg_flair_anu_net_2d"


def target_patients() -> list[str]:
    """The starting model's validation patients: never trained on by it."""
    from cascadeseg.inference.checkpoint import available_checkpoints

    entry = next(e for e in available_checkpoints() if e.name == STARTING_MODEL)
    return sorted(str(c) for c in entry.card.validation["cases"])


def build_target(folder: Path, patients: list[str]) -> None:
    """The shifted copies of ``patients`` as an MSD folder (written once)."""
    import nibabel as nib

    if (folder / "done").exists():
        return
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in patients:
        image = nib.load(LGG / "imagesTr" / f"{case}_0000.nii.gz")
        label = nib.load(LGG / "labelsTr" / f"{case}.nii.gz")
        data = np.asarray(image.dataobj, dtype=np.float32)
        truth = np.asarray(label.dataobj, dtype=np.float32)
        # The slicing axis of these files is their last (22-36 slices of 256 x 256).
        pairs = data.shape[2] // 2
        thick = data[:, :, : 2 * pairs].reshape(data.shape[0], data.shape[1], pairs, 2).mean(axis=3)
        thick_truth = truth[:, :, : 2 * pairs].reshape(truth.shape[0], truth.shape[1], pairs, 2).mean(axis=3)
        shifted = 4.0 * 255.0 * (np.clip(thick, 0, 255) / 255.0) ** 0.6 + 100.0
        affine = image.affine.copy()
        affine[:3, 2] *= 2.0
        out_image = nib.Nifti1Image(np.round(shifted).astype(np.int16), affine)
        out_label = nib.Nifti1Image((thick_truth >= 0.5).astype(np.uint8), affine)
        nib.save(out_image, folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(out_label, folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "done").write_text("\n".join(patients))


def fold_patients(patients: list[str], per_fold: int = 2) -> list[list[str]]:
    """The folds' training patients: one shuffle (seed 0), cut into groups of ``per_fold``."""
    order = np.random.default_rng(0).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    return [shuffled[i : i + per_fold] for i in range(0, len(shuffled) - per_fold + 1, per_fold)]


def fold_folder(target: Path, train: list[str], out: Path) -> Path:
    folder = out / f"fold_{'_'.join(p[5:12] for p in train)}"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in train:
        for sub, name in (("imagesTr", f"{case}_0000.nii.gz"), ("labelsTr", f"{case}.nii.gz")):
            link = folder / sub / name
            if not link.exists():
                link.symlink_to((target / sub / name).resolve())
    return folder


def run_worker(fold: int, minutes: float, out: Path, train_args: str = "", per_fold: int = 2) -> None:
    """Train fold ``fold`` with every validated epoch's weights saved, then score each of them on
    the fold's held-out patients at every depth."""
    from cascadeseg.cli.train import add_train_arguments, config_from_args
    from cascadeseg.distributed import init_distributed
    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.training.callbacks import CallbackList, TrainingCallback
    from cascadeseg.training.holdout import score_predictor
    from cascadeseg.training.trainer import Trainer, resolve_device

    target = out / "target"
    patients = target_patients()
    train = fold_patients(patients, per_fold)[fold]
    held = [p for p in patients if p not in train]
    folder = fold_folder(target, train, out)
    run_dir = out / f"run_{fold}"
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [str(folder), "--minutes", str(minutes), "--run-dir", str(run_dir), "--threads", "1"]
        + ["--init-checkpoint", STARTING_MODEL, *shlex.split(train_args)]
    )
    config = config_from_args(args)
    records: list[dict[str, Any]] = []

    class SaveEpochs(TrainingCallback):
        trainer: Any = None

        def on_epoch(self, info: Any) -> None:
            # Epoch 0 of a fine-tuning is the starting model, validated before any step.
            number = len(records)
            # A checkpoint folder as best/ is (the predictor folds batch norm on loading).
            self.trainer.save_checkpoint(f"epoch_{number}", validation=None)
            records.append(
                {
                    "epoch": number,
                    "dice_per_depth": {int(k): float(v) for k, v in info.dice_per_depth.items()},
                    "dice_per_case": {
                        str(c): {int(k): float(v) for k, v in d.items()} for c, d in info.dice_per_case.items()
                    },
                    "recommended_depth": int(info.recommended_depth),
                    "is_best": bool(info.is_best),
                }
            )

    callback = SaveEpochs()
    started = time.perf_counter()
    config.validate()
    device = resolve_device(config.device)
    trainer = Trainer(config, CallbackList([callback]), None, device, init_distributed(device), started)
    callback.trainer = trainer
    result = trainer.run_training()
    trainer.release()
    kept = Path(result.model_checkpoint or run_dir / "best")
    for record in records:
        predictor = Predictor.from_checkpoint(run_dir / f"epoch_{record['epoch']}", device="cpu")
        scores = score_predictor(predictor, target, held)
        record["held_out"] = {int(d): {c: float(v) for c, v in cases.items()} for d, cases in scores.dice.items()}
    card = json.loads((kept / "model_card.json").read_text())
    payload = {
        "fold": fold,
        "train": train,
        "held_out": held,
        "records": records,
        "kept": kept.name,
        "split": json.loads((run_dir / "split.json").read_text()).get("kind"),
        "prior_fixed": bool((card.get("validation") or {}).get("prior_fixed")),
        "kept_best_epoch": result.best_epoch,
        "card_recommended_depth": card.get("recommended_depth"),
        "prior_depth": (card.get("validation") or {}).get("prior_depth"),
        "steps": result.steps,
        "elapsed_seconds": result.elapsed_seconds,
    }
    (out / f"fold_{fold}.json").write_text(json.dumps(payload, indent=1))


def choose(
    records: list[dict[str, Any]], prior: int | None, epoch_rule: str, prior_fixed: bool = False
) -> tuple[int, int]:
    """The (epoch, depth) a run keeps under a depth rule (with or without the prior) and an epoch
    rule ("at_depth": an epoch's Dice at its recommended depth, stop 59; "max": its best depth's,
    before). Ties keep the earlier epoch, as the trainer does."""
    from cascadeseg.training.validation import recommended_depth

    best, best_epoch, best_depth = -1.0, 0, 4
    for record in records:
        dpd = {int(k): v for k, v in record["dice_per_depth"].items()}
        dpc = {c: {int(k): v for k, v in d.items()} for c, d in record["dice_per_case"].items()}
        depth = recommended_depth(dpd, dice_per_case=dpc, prior_depth=prior, prior_fixed=prior_fixed)
        value = dpd[depth] if epoch_rule == "at_depth" else max(dpd.values())
        if value > best:
            best, best_epoch, best_depth = value, record["epoch"], depth
    return best_epoch, best_depth


def table(folds: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    # "fold": the prior is fixed where the fold's split was slice blocks (stop 60), as the trainer sets it.
    rules: dict[str, tuple[int | None, str, bool | str]] = {
        "stop 59 (prior depth, best at that depth)": (4, "at_depth", False),
        "before (no prior, best at the best depth)": (None, "max", False),
        "no prior, best at the recommended depth": (None, "at_depth", False),
        "prior depth, best at the best depth": (4, "max", False),
        "best/ now (prior depth, fixed for slice blocks, best at that depth)": (4, "at_depth", "fold"),
    }
    model = "the run's model (what its plan keeps, at its card's depth)"
    per_rule: dict[str, list[float]] = {name: [] for name in [*rules, model]}
    lines = [
        "| fold (training patients) | split | steps | start L4 | "
        + " | ".join(f"{name}: epoch, depth, held-out" for name in [*rules, model])
        + " | last epoch L4 |",
        "|---" * (6 + len(rules)) + "|",
    ]
    start_l4, last_l4 = [], []
    for fold in folds:
        recs = fold["records"]
        by_epoch = {r["epoch"]: r for r in recs}
        split = fold.get("split", "slice_blocks")  # folds run before stop 61 were all slice blocks
        cells = []
        choices = {}
        for name, (prior, epoch_rule, fixed) in rules.items():
            fixed_here = fold.get("prior_fixed", split == "slice_blocks") if fixed == "fold" else bool(fixed)
            choices[name] = choose(recs, prior, epoch_rule, fixed_here)
        choices[model] = kept_choice(fold)
        for name, (epoch, depth) in choices.items():
            value = float(np.mean(list(_depth(by_epoch[epoch]["held_out"], depth).values())))
            per_rule[name].append(value)
            cells.append(f"{fold['kept'] + ' ' if name == model else ''}{epoch}, L{depth}, {value:.3f}")
        start = float(np.mean(list(_depth(by_epoch[0]["held_out"], 4).values())))
        last = float(np.mean(list(_depth(recs[-1]["held_out"], 4).values())))
        start_l4.append(start)
        last_l4.append(last)
        lines.append(
            f"| {fold['fold']} ({', '.join(p[:15] for p in fold['train'])}) | {split} | {fold['steps']} | "
            f"{start:.3f} | " + " | ".join(cells) + f" | {last:.3f} |"
        )
    lines.append(
        f"| mean of {len(folds)} folds | | | {np.mean(start_l4):.3f} | "
        + " | ".join(f"{np.mean(v):.3f}" for v in per_rule.values())
        + f" | {np.mean(last_l4):.3f} |"
    )
    compared = {**per_rule, "start L4": start_l4}
    names = list(compared)
    held = len(folds[0]["held_out"]) if folds else 0
    summary = ""
    # stop 59 against before it; now against both; best/ against the run's model; that against the start
    for a, b in ((0, 1), (4, 0), (4, 1), (4, 5), (5, 6)):
        first_name, second_name = names[a], names[b]
        diff = np.array(compared[first_name]) - np.array(compared[second_name])
        summary += (
            f"\n{first_name} - {second_name}, per fold (each fold's mean over its {held} held-out patients): "
            f"{np.mean(diff):+.4f} +- {paired_standard_error(list(diff)):.4f} over {len(folds)} folds "
            f"(better in {int((diff > 1e-9).sum())}, worse in {int((diff < -1e-9).sum())})\n"
        )
    text = (
        "# Few-shot fine-tuning rules on shifted LGG patients (benchmarks/fewshot_rules.py)\n\n"
        + "\n".join(lines)
        + "\n"
        + summary
    )
    return text, {"per_rule": per_rule, "start_l4": start_l4, "last_l4": last_l4, "folds": folds}


def kept_choice(fold: dict[str, Any]) -> tuple[int, int]:
    """(epoch, depth) of the model the fold's plan kept: its last or best epoch, at its card's depth."""
    epoch = fold["records"][-1]["epoch"] if fold["kept"] == "last" else fold["kept_best_epoch"]
    return epoch, int(fold["card_recommended_depth"] or 4)


def run_model_held_out(fold: dict[str, Any]) -> float:
    """The held-out mean of the model the fold's plan kept."""
    epoch, depth = kept_choice(fold)
    record = next(r for r in fold["records"] if r["epoch"] == epoch)
    return float(np.mean(list(_depth(record["held_out"], depth).values())))


def compare_with(folds: list[dict[str, Any]], other: Path) -> str:
    """This run's kept models against another run's (``--compare-with``: another budget or variant)
    on the same folds (matched by training patients), per fold and paired."""
    theirs = {tuple(f["train"]): f for f in (json.loads(p.read_text()) for p in sorted(other.glob("fold_*.json")))}
    rows, diff = [], []
    for fold in folds:
        match = theirs.get(tuple(fold["train"]))
        if match is None:
            raise SystemExit(f"{other}: no fold trained on {fold['train']}")
        ours, base = run_model_held_out(fold), run_model_held_out(match)
        diff.append(ours - base)
        rows.append(f"| {fold['fold']} | {fold['steps']} / {match['steps']} | {ours:.3f} | {base:.3f} | {ours - base:+.3f} |")
    if not diff:
        return f"\n(no finished fold to compare with `{other}`)\n"
    return (
        f"\n## The run's model against `{other}`'s (the same folds and held-out patients)\n\n"
        "| fold | steps (this / that) | this run | that run | this - that |\n|---|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nthis - that, per fold: {np.mean(diff):+.4f} +- {paired_standard_error(diff):.4f} over {len(diff)} folds"
        f" (better in {sum(d > 1e-9 for d in diff)}, worse in {sum(d < -1e-9 for d in diff)}; lowest {min(diff):+.3f})\n"
    )


def _depth(held: dict[Any, dict[str, float]], depth: int) -> dict[str, float]:
    return held[str(depth)] if str(depth) in held else held[depth]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--folds", type=int, nargs="*", help="fold numbers to run (default: all)")
    parser.add_argument(
        "--train-args",
        default="",
        help="a variant: extra 'cascadeseg train' options, written --train-args='--lr 1e-4' (default: none)",
    )
    parser.add_argument(
        "--patients-per-fold",
        type=int,
        default=2,
        help="training patients per fold: 2 (six folds, slice-block validation) or 3 (four folds, a validation patient)",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--table-only", action="store_true", help="write the table from the folds already run")
    parser.add_argument("--compare-with", type=Path, help="another run's --out (same folds): its kept models against these")
    add_folder_arguments(parser, "fewshot")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.worker is not None:
        run_worker(args.worker, args.minutes, out, args.train_args, args.patients_per_fold)
        return
    patients = target_patients()
    build_target(out / "target", patients)
    folds = list(range(len(fold_patients(patients, args.patients_per_fold)))) if not args.folds else args.folds
    if not args.table_only:
        shared = ["--minutes", str(args.minutes), "--out", str(out), f"--train-args={args.train_args}"]
        shared += ["--patients-per-fold", str(args.patients_per_fold)]
        jobs = {str(fold): [sys.executable, __file__, "--worker", str(fold), *shared] for fold in folds}
        run_pinned_jobs(jobs, lambda fold: out / f"fold_{fold}.log", args.parallel)
    done = [json.loads((out / f"fold_{k}.json").read_text()) for k in folds if (out / f"fold_{k}.json").exists()]
    text, payload = table(done)
    if args.compare_with is not None:
        text += compare_with(done, args.compare_with.resolve())
    variant = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in args.train_args.strip()).strip("-_")
    if variant:
        text = text.replace("\n\n", f"\n\nVariant: `cascadeseg train ... {args.train_args}`\n\n", 1)
    if args.patients_per_fold != 2:
        variant = f"{args.patients_per_fold}_per_fold" + (f"_{variant}" if variant else "")
    if args.minutes != 8.0:  # the budget the earlier tables ran at
        variant = f"{args.minutes:g}min" + (f"_{variant}" if variant else "")
    write_results(args.results, "fewshot_rules" + (f"_{variant}" if variant else ""), text, payload)


if __name__ == "__main__":
    main()
