"""``cascadeseg ensemble``: average trained networks of one architecture into one checkpoint.

nnU-Net's way of shipping a model: networks trained apart (other seeds, folds or patients)
make partly different mistakes, and their averaged class probabilities are usually better than
any one of them. The checkpoints must be the same architecture with the same options, classes,
grid and input preprocessing (a fine-tuned copy of a model and another training of the same recipe
are). The result is an ordinary checkpoint folder: ``cascadeseg predict``, pruning depths,
test-time mirroring and the napari docks use it as they use one network, at the cost of one pass
per member. Its card keeps each member's training and has no validation figures of its own until
it is scored (``--score-data``: the listed cases are segmented through the predictor at every
depth, with the card's default mirroring, and their Dice and HD95 go on the card).

    cascadeseg ensemble runs/a/last runs/b/last --out my_models/hippo_x2 --score-data data --score-case hippocampus_014
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .main import command_parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "ensemble", __doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint folders or model names (2+)")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write (refused if it exists)")
    parser.add_argument("--name", default=None, help="the model's name on its card (default: the first member's)")
    parser.add_argument("--description", default=None, help="the card's description (default: the first member's)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--score-data",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="an MSD folder with labels: score the ensemble on --score-case cases and put the figures on its card",
    )
    parser.add_argument(
        "--score-case", action="append", default=[], metavar="CASE", help="a case id to score (repeatable)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import tempfile

    from ..errors import CascadeSegError
    from ..training.export import build_ensemble, export_checkpoint

    if bool(args.score_data) != bool(args.score_case):
        raise CascadeSegError("ensemble: --score-data and --score-case go together (the folder and the cases to score)")
    if args.out.exists() and not args.overwrite:
        raise CascadeSegError(f"{args.out}: already exists; choose another --out (or pass --overwrite to replace it)")
    if args.score_data is None:
        folder = build_ensemble(
            args.checkpoints, args.out, name=args.name, description=args.description, overwrite=args.overwrite
        )
    else:
        with tempfile.TemporaryDirectory(prefix="cascadeseg-ensemble-") as staging:
            unscored = build_ensemble(
                args.checkpoints, Path(staging) / "ensemble", name=args.name, description=args.description
            )
            folder = export_checkpoint(
                unscored,
                args.out,
                holdout_data=args.score_data,
                holdout_cases=args.score_case,
                overwrite=args.overwrite,
            )
    print(f"wrote {folder}: an ensemble of {len(args.checkpoints)} networks")
    return 0
