"""Derived datasets for benchmarks and for training the shipped models (never copied into the repo).

* :func:`holdout_split`: set patients aside before any training sees the data (seeded, by
  patient); the rest becomes an MSD folder of symbolic links that a training gets. Figures quoted
  for a model come from the held-out patients only; recipes are chosen on the training part.
* :func:`ct_liver_set`: the two CTs of ``../shared/data`` as one binary liver set (TotalSegmentator's
  example CT, label 5 = liver; the LiTS crop, labels 1 liver + 2 tumour = liver), written as NIfTI.

    python benchmarks/datasets.py holdout ../shared/data/hippocampus --patients 40 --out runs/hippo
    python benchmarks/datasets.py ct-liver --out runs/ct_liver_data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def holdout_split(data: Path, patients: int, seed: int, out: Path) -> tuple[Path, list[str]]:
    """``out/train_data`` (links to the cases of the patients not held out) and the held-out case
    ids (also in ``out/holdout.json``)."""
    from cascadeseg.io import load_dataset
    from cascadeseg.training.split import patient_id

    refs = load_dataset(data)
    names = sorted({patient_id(r.case_id) for r in refs})
    rng = np.random.default_rng(seed)
    held = {names[i] for i in rng.permutation(len(names))[:patients]}
    train_dir = out / "train_data"
    held_cases = [ref.case_id for ref in refs if patient_id(ref.case_id) in held]
    link_cases([ref for ref in refs if patient_id(ref.case_id) not in held], train_dir)
    (out / "holdout.json").write_text(json.dumps({"data": str(data), "seed": seed, "cases": sorted(held_cases)}, indent=2))
    return train_dir, sorted(held_cases)


def link_cases(refs: list, train_dir: Path) -> None:
    """An MSD folder (``imagesTr``, ``labelsTr``) of symbolic links to the files of ``refs``
    (:class:`cascadeseg.io.CaseRef`); links already there are kept."""
    for sub in ("imagesTr", "labelsTr"):
        (train_dir / sub).mkdir(parents=True, exist_ok=True)
    for ref in refs:
        files = [("imagesTr", f) for f in ref.image_files]
        if ref.label_file is not None:
            files.append(("labelsTr", ref.label_file))
        for sub, f in files:
            link = train_dir / sub / f.name
            if not link.exists():
                link.symlink_to(f.resolve())


def ct_liver_set(out: Path) -> Path:
    """An MSD folder with the two CTs and binary liver labels (0 background, 1 liver)."""
    from cascadeseg.io import load_labels, load_volume, save_labels, save_volume

    sources = [
        ("totalseg_example_ct", DATA / "totalseg" / "example_ct.nii.gz",
         DATA / "totalseg" / "example_seg_fast_force_split.nii.gz", (5,)),
        ("lits_117", DATA / "lits-crop" / "imagesTr" / "lits_117_0000.nii.gz",
         DATA / "lits-crop" / "labelsTr" / "lits_117.nii.gz", (1, 2)),
    ]
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case, image_path, label_path, liver in sources:
        image = load_volume(image_path)
        labels = load_labels(label_path, reference=image)
        binary = np.isin(labels.array, liver).astype(np.uint8)
        save_volume(image, out / "imagesTr" / f"{case}_0000.nii.gz", overwrite=True)
        save_labels(binary, image, out / "labelsTr" / f"{case}.nii.gz", overwrite=True)
    (out / "dataset.json").write_text(json.dumps({
        "name": "CT liver (TotalSegmentator example CT + LiTS crop)", "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1}, "numTraining": 2,
        "licence": "TotalSegmentator test files Apache-2.0; LiTS research use",
    }, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("holdout")
    h.add_argument("data", type=Path)
    h.add_argument("--patients", type=int, required=True)
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("ct-liver")
    c.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "holdout":
        train_dir, held = holdout_split(args.data, args.patients, args.seed, args.out)
        print(f"{train_dir}: training data; {len(held)} held-out case(s) in {args.out / 'holdout.json'}")
    else:
        print(ct_liver_set(args.out))


if __name__ == "__main__":
    main()
