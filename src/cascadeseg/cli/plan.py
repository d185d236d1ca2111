"""``cascadeseg plan``: what ``cascadeseg train`` would do with this data on this machine.

Reads the data, fingerprints it, plans every choice (with the reason for each), builds the network,
on a CPU measures one process with a thread per core against a process per core (as ``train``
does), times a few real training steps and one validation case, then prints the plan with the
estimated number of steps the budget affords. Nothing is trained or written. It takes the same
options as ``cascadeseg train``; an option given overrides the planner, as in training.

Examples:
  cascadeseg plan ../shared/data/lgg-flair --minutes 20
  cascadeseg plan ../shared/data/hippocampus --minutes 10 --json plan.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .main import command_parser
    from .train import add_train_arguments

    parser = command_parser(subparsers, "plan", __doc__)
    add_train_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the plan as JSON to FILE")
    return parser


def run(args: argparse.Namespace) -> int:
    from .._atomic import write_text as write_text_atomic
    from ..training.cpu_layout import layout_needed, measure_cpu_layout
    from ..training.trainer import plan_only
    from .train import config_from_args

    args.resume = False
    config = config_from_args(args)
    if layout_needed(config) is None:
        layout = measure_cpu_layout(config)
        layout.apply(config)
        if layout.processes > 1:
            print(f"training would run as {layout.describe()}; the plan of each process:\n")
    plan = plan_only(config)
    print(plan.describe())
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(plan.to_dict(), indent=2) + "\n")
        print(f"plan written to {args.json}", file=sys.stderr)
    return 0
