"""One-click training on glioblastoma studies, scored on a patient it never saw (issue 14's TCIA check).

``../shared/data/tcia-btp`` holds four studies of three patients (T1 post-contrast + FLAIR, 6.5 mm
slices, the enhancing lesion labelled). For each patient in turn, ``cascadeseg train FOLDER
--minutes N`` (nothing else) runs on the other patients' studies, and the patient's own studies are
segmented by ``cascadeseg predict`` with the run's model (the checkpoint its plan keeps) and scored by
``cascadeseg.metrics``: an estimate, on three folds, of what one-click training on this collection
gives on another patient. Runs ``--parallel`` folds at a time, one core each.

    python benchmarks/tcia_leave_one_out.py --minutes 15 --out runs/tcia_loo
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_folder_arguments, one_thread_env, run_pinned_jobs, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tcia-btp"


def fold_folder(held: str, out: Path) -> tuple[Path, list[str]]:
    from cascadeseg.io import load_dataset
    from cascadeseg.training.split import patient_id

    folder = out / f"without_{held}"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    held_cases = []
    for ref in load_dataset(DATA):
        if patient_id(ref.case_id) == held:
            held_cases.append(ref.case_id)
            continue
        for f in [*ref.image_files, ref.label_file]:
            assert f is not None
            link = folder / ("labelsTr" if f == ref.label_file else "imagesTr") / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return folder, held_cases


def main() -> None:
    from cascadeseg.io import load_dataset, load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice
    from cascadeseg.training.split import patient_id

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--train-args",
        default="",
        help="a variant: extra 'cascadeseg train' options, written --train-args='--no-auto-init' (the '=' lets the "
        "value start with '--'; default: none, the one-click run)",
    )
    add_folder_arguments(parser, "tcia_loo")
    args = parser.parse_args()
    out = args.out.resolve()
    patients = sorted({patient_id(r.case_id) for r in load_dataset(DATA)})
    jobs = []
    for held in patients:
        folder, cases = fold_folder(held, out)
        jobs.append((held, folder, cases))
    train = [sys.executable, "-m", "cascadeseg.cli.main", "train", "--minutes", str(args.minutes), "--no-progress"]
    runs = {
        held: [*train, str(folder), "--run-dir", str(out / f"run_without_{held}"), *shlex.split(args.train_args)]
        for held, folder, _ in jobs
    }
    done = run_pinned_jobs(runs, lambda held: out / f"without_{held}.log", args.parallel)
    walls = {held: job.wall_seconds for held, job in done.items()}
    env = one_thread_env()
    rows, dice = [], {}
    for held, _, cases in jobs:
        pred_dir = out / f"pred_{held}"
        # The run's model: the checkpoint its plan keeps (result.json says which).
        kept = json.loads((out / f"run_without_{held}" / "result.json").read_text())["model_checkpoint"]
        for case in cases:
            channels = [str(DATA / "imagesTr" / f"{case}_{k:04d}.nii.gz") for k in (0, 1)]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cascadeseg.cli.main",
                    "predict",
                    channels[0],
                    "-o",
                    str(pred_dir),
                    "-c",
                    kept,
                    "--overwrite",
                ],
                env=env,
                check=True,
            )
            reference = load_labels(DATA / "labelsTr" / f"{case}.nii.gz")
            prediction = load_volume(pred_dir / f"{case}.nii.gz")
            value = case_mean_dice(
                np.asarray(prediction.array).reshape(reference.array.shape).astype(np.uint8),
                np.asarray(reference.array),
                [1],
            )
            dice[case] = value
            plan = (out / f"run_without_{held}" / "plan.json").read_text()
            init = "lgg_flair" in plan
            rows.append(
                f"| {held} | {case} | {walls[held]:.0f} | {'shipped FLAIR model' if init else 'scratch'} | "
                f"{value:.3f} |"
            )
    values = np.array(list(dice.values()))
    lines = [
        f"# One-click training on TCIA glioblastoma studies, leave one patient out ({args.minutes:g} minutes)",
        "",
        f"Made by `python benchmarks/tcia_leave_one_out.py --minutes {args.minutes:g}"
        + (f" --train-args '{args.train_args}'" if args.train_args else "")
        + "` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one CPU core per run. Each fold trains with "
        f"`cascadeseg train FOLDER --minutes N {args.train_args}` on the other patients' studies and scores the held-out patient's "
        "studies through `cascadeseg predict` (per-study 3D Dice of the enhancing lesion).",
        "",
        "| held-out patient | study | wall s | started from | Dice |",
        "|---|---|---:|---|---:|",
        *rows,
        "",
        f"Mean over the {len(values)} held-out studies: **{values.mean():.3f}** (min {values.min():.3f}).",
    ]
    write_results(args.results, "tcia_leave_one_out", "\n".join(lines) + "\n", {"dice": dice, "walls": walls})


if __name__ == "__main__":
    main()
