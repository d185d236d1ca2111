"""``cascadeseg train``: train a model on an MSD / nnU-Net folder or on image/label file pairs.

Give the data and a time budget; the planner chooses the rest for this data and this machine
(2D or 3D, working grid, patch, batch, network width and depth, loss, validation) and writes its
reasons to ``plan.json`` in the run folder (``cascadeseg plan DATA`` prints them without training).
Every option below overrides the planner. The run folder receives ``config.json`` (the planned
configuration), ``plan.json``, ``split.json``, ``log.csv`` and the ``last/`` and ``best/``
checkpoints; it must not exist yet, unless ``--resume`` continues a killed or finished run from it
(with the stored settings; ``--epochs``/``--minutes`` may extend it). The same command runs on
several GPUs or CPU processes under
``torchrun --nproc_per_node=N -m cascadeseg.cli.main train ...`` (DDP; only rank 0 writes). On a
CPU with several cores and neither --threads nor --processes given, a new run first measures one
process with a thread per core against a process per core (one thread each) on its planned
network, and trains with the faster (``cascadeseg.training.cpu_layout``).

Examples:
  cascadeseg train ../shared/data/lgg-flair --minutes 20
  cascadeseg train ../shared/data/lgg-flair --model anu_net --dims 2 --minutes 30 --run-dir runs/anu
  cascadeseg train --pairs img1.nii.gz lab1.nii.gz img2.nii.gz lab2.nii.gz --epochs 20
  cascadeseg train --resume --run-dir runs/anu --minutes 60
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..errors import ModelConfigError
from ..training.config import PLANNED_FIELDS, TrainConfig

GROUPS = ("model", "loss and optimiser", "budget", "data and sampling", "run")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .main import command_parser

    parser = command_parser(subparsers, "train", __doc__)
    add_train_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_train_parser=parser)
    return parser


def _default_text(f: Any) -> str:
    if f.name in PLANNED_FIELDS and (f.default is None or f.default is MISSING):
        return "planned"
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(default, bool) or default in ([], "", None):
        return ""
    return str(default)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` (and ``plan``), built from :class:`TrainConfig`'s field metadata.
    Options not given are absent from the parsed namespace, so the config keeps its own default
    (``None``: the planner decides) and the recorded command holds only what was given."""
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=None,
        help="MSD / nnU-Net dataset folder (imagesTr/, labelsTr/, optional dataset.json)",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="instead of DATA: image and label files in turns (img1 lab1 img2 lab2 ...)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder to create (default: runs/<data>-<date>-<time>); never overwritten",
    )
    parser.add_argument(
        "--from-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="instead of DATA and options: a planned config.json (how train starts its own data-parallel processes)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint with its stored settings",
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        if not meta.get("cli"):
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        default = _default_text(f)
        kwargs["help"] = meta["help"] + (f" (default: {default})" if default else "")
        if "action" in meta:
            kwargs["action"] = meta["action"]
        if meta.get("type") == "json":
            kwargs["type"] = _json_value(flag)
            kwargs["metavar"] = "JSON"
        elif "type" in meta:
            kwargs["type"] = meta["type"]
        for key in ("choices", "nargs"):
            if key in meta:
                kwargs[key] = meta[key]
        groups[meta.get("group", "run")].add_argument(flag, **kwargs)
    model = groups["model"]
    model.add_argument(
        "--base-width", type=int, default=None, help="channels of the first level (paper: 32; default: planned)"
    )
    model.add_argument("--levels", type=int, default=None, help="resolution levels (paper: 5; default: planned)")
    model.add_argument(
        "--norm", choices=("batch", "instance"), default=None, help="normalisation (default: the model's)"
    )
    model.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other create_model option, VALUE as JSON (repeatable)",
    )
    groups["loss and optimiser"].add_argument(
        "--loss-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loss option, VALUE as JSON (repeatable)",
    )
    data = groups["data and sampling"]
    data.add_argument("--no-augmentation", action="store_true", help="switch all augmentation off")
    data.add_argument(
        "--augmentation",
        default=None,
        metavar="JSON",
        help='augmentation settings to change in the plan, as JSON, e.g. \'{"flip": false, "elastic_probability": '
        "0.2}' (the others stay as planned)",
    )


def _json_value(flag: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: not valid JSON ({exc})") from exc

    return parse


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: every option that was given, in the parser's order
    (recorded in the model card)."""
    parser = getattr(args, "_train_parser", None)
    if parser is None:
        return "cascadeseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    words = ["cascadeseg", "train"]
    for action in parser._actions:  # argparse keeps no public list of its actions
        if action.dest in ("help", "_train_parser", "no_progress", "from_config") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None or (value == action.default and action.default is not argparse.SUPPRESS) or value == []:
            continue
        if not action.option_strings:
            words.append(str(value))
        elif action.nargs == 0:
            words.append(action.option_strings[0])
        elif isinstance(value, list) and isinstance(action, argparse._AppendAction):
            for item in value:
                words += [action.option_strings[0], json.dumps(item) if isinstance(item, (dict, list)) else str(item)]
        elif isinstance(value, list):
            words += [
                action.option_strings[0],
                *(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value),
            ]
        else:
            words += [action.option_strings[0], json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _key_values(items: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ModelConfigError(f"--{what} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the arguments describe (resume: the stored one, extended)."""
    if getattr(args, "from_config", None) is not None:
        return TrainConfig.from_dict(json.loads(Path(args.from_config).read_text()))
    command = command_line(args)
    given = {
        f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.metadata.get("cli") and hasattr(args, f.name)
    }
    if args.resume:
        if args.run_dir is None:
            raise ModelConfigError("--resume needs --run-dir (the folder of the run to continue)")
        from ..training.run_folder import check_resumable

        check_resumable(args.run_dir)
        config = TrainConfig.load(args.run_dir)
        config.resume = True
        config.run_dir = str(args.run_dir)
        for key in ("epochs", "minutes", "threads"):
            if key in given:
                setattr(config, key, given[key])
        return config
    if (args.data is None) == (args.pairs is None):
        raise ModelConfigError(
            "give the training data as DATA (an MSD folder) or as --pairs IMAGE LABEL ..., not both or neither"
        )
    if args.pairs is not None:
        if len(args.pairs) % 2:
            raise ModelConfigError(
                f"--pairs takes image and label files in turns; got an odd number ({len(args.pairs)})"
            )
        data: Any = [(str(args.pairs[i]), str(args.pairs[i + 1])) for i in range(0, len(args.pairs), 2)]
        name = Path(args.pairs[0]).name.split(".")[0]
    else:
        data = str(args.data)
        name = Path(args.data).resolve().name
    options = _key_values(args.model_option, "model-option")
    for key in ("base_width", "levels", "norm"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    augmentation = None
    if args.augmentation is not None:
        try:
            augmentation = json.loads(args.augmentation)
        except ValueError as exc:
            raise ModelConfigError(f"--augmentation: not valid JSON ({exc})") from exc
        if not isinstance(augmentation, dict):
            raise ModelConfigError(f"--augmentation: expected a JSON object of settings, got {args.augmentation!r}")
    if args.no_augmentation:
        augmentation = dict(augmentation or {}, enabled=False)
    if "grad_clip" in given and not given["grad_clip"]:
        given["grad_clip"] = None
    run_dir = args.run_dir or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig(
        data=data,
        run_dir=str(run_dir),
        model_options=options or None,
        loss_options=_key_values(args.loss_option, "loss-option"),
        augmentation_changes=augmentation,
        command=command,
        **given,
    )


class _ProgressBar:
    """A tqdm bar over the steps of each epoch, with loss, throughput and validation Dice."""

    def __init__(self, disable: bool) -> None:
        self.disable = disable
        self.bar: Any = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        if info.get("plan"):
            print(info["plan"], file=sys.stderr)
        what = "case(s)" if info.get("split") != "slice_blocks" else f"slice block(s) of {info['volumes']} volume(s)"
        print(
            f"training {info['model']} ({info['dims']}D, {info['parameters'] / 1e6:.2f} M parameters, loss {info['loss']}) "
            f"on {info['train_cases']} training / {info['val_cases']} validation {what} "
            f"({info['validation_cases']} per validation), input {info['patch_size']}, "
            f"{info['device']}; run folder {info['run_dir']}",
            file=sys.stderr,
        )

    def on_step(self, info: Any) -> None:
        if self.disable:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=info.steps_per_epoch, desc=f"epoch {info.epoch + 1}", file=sys.stderr, leave=False)
            self.bar.update(info.step_in_epoch - 1)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{info.loss:.4f}", rate=f"{info.samples_per_second:.1f}/s")

    def on_epoch(self, info: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        dice = " ".join(f"d{k}={v:.4f}" for k, v in info.dice_per_depth.items())
        # How many cases the depth was chosen on: a continuation that keeps two patients to validate
        # prints a depth two patients cannot choose (its export keeps the parent's).
        depth = f"recommended depth {info.recommended_depth} (on {len(info.dice_per_case)} validation case(s))"
        if info.extra.get("foreground_threshold") is not None:  # the figures are that threshold's
            depth += f", foreground above {info.extra['foreground_threshold']}"
        if info.epoch < 0:  # a fine-tuning's starting weights, validated before the first step
            print(f"epoch 0 (the starting model): val Dice {dice}, {depth}", file=sys.stderr)
            return
        print(
            f"epoch {info.epoch + 1}/{info.epochs}: loss {info.train_loss:.4f}, val Dice {dice}, "
            f"{depth}, best {info.best_dice:.4f} (epoch {info.best_epoch + 1}), "
            f"{info.samples_per_second:.1f} samples/s, elapsed {info.elapsed_seconds / 60:.1f} min",
            file=sys.stderr,
        )

    def on_train_end(self, result: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def process_started() -> float:
    """This process's start as a ``time.perf_counter()`` value (Linux: from ``/proc/self/stat``),
    so a budget also covers the interpreter's and the libraries' start-up; elsewhere: now."""
    now = time.perf_counter()
    try:
        import os

        fields_after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields_after_name[19])  # field 22: starttime, in clock ticks since boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return now - max(0.0, min(age, 600.0))
    except (OSError, ValueError, IndexError):
        return now


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..distributed import rank_info
    from ..errors import CancelledError
    from ..training.cpu_layout import budget_start, layout_needed, measure_cpu_layout, run_processes
    from ..training.trainer import train

    started = budget_start() or process_started()
    config = config_from_args(args)
    main_rank = rank_info().is_main
    # Ctrl-C asks the trainer to stop after the current step and save last/ (a second Ctrl-C
    # interrupts at once); without this a Ctrl-C would lose the steps since the last epoch.
    cancel = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_interrupt(signum: int, frame: Any) -> None:
            if cancel.is_set():
                raise KeyboardInterrupt
            print("\ncascadeseg: stopping after this step (Ctrl-C again to abort)", file=sys.stderr)
            cancel.set()

        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        if layout_needed(config) is None:
            try:
                layout = measure_cpu_layout(config, cancel, started)
            except CancelledError:
                print("cascadeseg: cancelled before training started; nothing was written", file=sys.stderr)
                return 130
            print(f"cascadeseg: training as {layout.describe()}", file=sys.stderr)
            layout.apply(config)
        if (config.processes or 1) > 1 and not rank_info().is_distributed:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)  # the launcher forwards Ctrl-C to the processes
                previous = None
            return run_processes(config, int(config.processes or 1), started, ["--no-progress"] * args.no_progress)
        result = train(
            config,
            callbacks=_ProgressBar(disable=args.no_progress or not main_rank),
            cancel=cancel,
            started=started,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if main_rank:
        best = (
            f"best Dice {result.best_dice:.4f} "
            + (
                "(epoch 0: the starting model, which no epoch beat)"
                if result.best_epoch == 0
                else f"(epoch {result.best_epoch})"
            )
            if result.best_dice is not None
            else "no validation yet"
        )
        print(
            f"stopped ({result.stopped}) after {result.epochs_completed} epoch(s), {result.steps} steps, "
            f"{result.elapsed_seconds / 60:.1f} min; {best}; checkpoints in {result.run_dir}"
        )
        if result.model_checkpoint is not None and result.stopped != "cancelled":
            dice = "" if result.model_dice is None else f", validation Dice {result.model_dice:.4f}"
            print(f"the run's model ('{result.keep}' checkpoint{dice}): {result.model_checkpoint}")
    return 130 if result.stopped == "cancelled" else 0
