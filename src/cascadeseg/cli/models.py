"""``cascadeseg models``: what the model zoo offers and which checkpoints are installed.

Without options: one line per architecture (dims, deep supervision, pruning depths, cascade
stages, attention maps, classification-guided module, paper). ``--table`` measures parameters and
GFLOPs of every model per pruning depth at paper width (PyTorch's FLOP counter on the meta
device: nothing is allocated) next to the papers' figures, with its default options and, where
they differ from the paper, as the paper variant (e.g. ``anu_net [merge=sum]``, the reading that
matches ANU-Net's Table 6). ``--checkpoints`` lists the shipped default models and the user's
models (``models/`` in the home folder, ``$CASCADESEG_HOME`` when set) with their cards, and
verifies each one's weights against the checksum its card records ("damaged" names a checkpoint
whose weights changed since it was saved).
"""

from __future__ import annotations

import argparse
from typing import Any

from .main import command_parser
from .markdown import markdown_table


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "models", __doc__)
    parser.add_argument("names", nargs="*", metavar="MODEL", help="restrict to these architectures (default: all)")
    parser.add_argument(
        "--table",
        action="store_true",
        help="measure parameters and GFLOPs per pruning depth (2D 1x256x256, 3D 1x128^3) vs the papers, "
        "default options and paper variants",
    )
    parser.add_argument("--checkpoints", action="store_true", help="list shipped and user checkpoints with their cards")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.checkpoints and not args.names:
        # Cards only: no torch, no model registry (a cold start of those took 23 s).
        print(checkpoints_table())
        return 0
    from ..models import list_models, model_class

    names = [model_class(n).info.name for n in args.names]  # unknown names fail naming the known ones
    if args.checkpoints:
        print(checkpoints_table())
        return 0
    if args.table:
        from ..models.zoo_table import render_markdown, zoo_rows

        print(render_markdown(zoo_rows(names or None)), end="")
        return 0
    infos = [i for i in list_models() if not names or i.name in names]
    header = ("model", "title", "dims", "deep sup.", "pruning", "stages", "attention", "CGM", "paper")
    rows = []
    for info in infos:
        rows.append(
            (
                info.name,
                info.title,
                "/".join(f"{d}D" for d in info.dims),
                _yes(info.deep_supervision),
                ",".join(f"L{d}" for d in info.pruning_depths) or "-",
                ",".join(info.stages) or "-",
                _yes(info.attention),
                _yes(info.classification_guided),
                info.paper,
            )
        )
    print(markdown_table(header, rows))
    return 0


def recorded_dice(card: Any) -> float | None:
    """The Dice a card quotes for what runs by default (:meth:`ModelCard.dice_for_depth`): the
    recommended depth's, or, for a model without pruning depths (a cascade), the one figure the
    trainer recorded."""
    if card.recommended_depth is not None:
        return card.dice_for_depth(card.recommended_depth)
    per_depth = card.validation.get("dice_per_depth") or {}
    if len(per_depth) == 1:
        return card.dice_for_depth(int(next(iter(per_depth))))
    return None


def checkpoints_table() -> str:
    """Installed checkpoints as a Markdown table (name, source, model, dims, channels, classes, depth, Dice)."""
    import sys

    from ..errors import CheckpointError
    from ..inference.checkpoint import available_checkpoints, user_models_dir, verify_checkpoint

    entries = available_checkpoints()
    if not entries:
        return f"no checkpoints installed (shipped defaults: none found; user models: {user_models_dir()})"
    header = (
        "name",
        "source",
        "architecture",
        "dims",
        "channels",
        "classes",
        "recommended depth",
        "validation Dice",
        "weights",
        "path",
    )
    rows = []
    for e in entries:
        card = e.card
        depth = card.recommended_depth
        dice = recorded_dice(card)
        try:
            weights = verify_checkpoint(e.path)
        except CheckpointError as exc:
            weights = "DAMAGED"
            print(f"cascadeseg: warning: {exc}", file=sys.stderr)
        rows.append(
            (
                e.name,
                e.source,
                card.architecture + (f" x{card.ensemble_members}" if card.ensemble_members > 1 else ""),
                f"{card.dims}D",
                ",".join(card.channel_names),
                ",".join(card.class_names),
                "-" if depth is None else f"L{depth}",
                "-" if dice is None else f"{dice:.3f}",
                weights,
                str(e.path),
            )
        )
    return markdown_table(header, rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"
