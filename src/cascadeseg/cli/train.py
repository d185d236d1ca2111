"""``cascadeseg train``: train a model on an MSD / nnU-Net folder or on image/label file pairs.

The run folder (``--run-dir``) receives ``config.json``, ``split.json``, ``log.csv`` and the
``last/`` and ``best/`` checkpoints; it must not exist yet, unless ``--resume`` continues a killed
or finished run from it (with the stored settings; ``--epochs``/``--minutes`` may extend it).
The same command runs on several GPUs or CPU processes under
``torchrun --nproc_per_node=N -m cascadeseg.cli.main train ...`` (DDP; only rank 0 writes).

Examples:
  cascadeseg train ../shared/data/lgg-flair --model anu_net --dims 2 --minutes 30 --run-dir runs/anu
  cascadeseg train --pairs img1.nii.gz lab1.nii.gz img2.nii.gz lab2.nii.gz --model unet --epochs 20
  cascadeseg train --resume --run-dir runs/anu --minutes 60
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelConfigError
from ..training.config import TrainConfig

_DEFAULTS = TrainConfig()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model on an MSD folder or image/label pairs",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", nargs="?", type=Path, default=None,
                        help="MSD / nnU-Net dataset folder (imagesTr/, labelsTr/, optional dataset.json)")
    parser.add_argument("--pairs", nargs="+", type=Path, default=None, metavar="FILE",
                        help="instead of DATA: image and label files in turns (img1 lab1 img2 lab2 ...)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder to create (default: runs/<model>-<dims>d); never overwritten")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint with its stored settings")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=_DEFAULTS.model, help="architecture (see 'cascadeseg models'; default: unet)")
    g.add_argument("--dims", type=int, choices=(2, 3), default=_DEFAULTS.dims, help="2: slices, 3: patches (default: 2)")
    g.add_argument("--base-width", type=int, default=None, help="channels of the first level (paper: 32; default: the model's)")
    g.add_argument("--levels", type=int, default=None, help="resolution levels (paper: 5; default: the model's)")
    g.add_argument("--norm", choices=("batch", "instance"), default=None, help="normalisation (default: the model's)")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other create_model option, VALUE as JSON (repeatable)")
    g.add_argument("--num-classes", type=int, default=None, help="classes incl. background (default: max label + 1)")
    g.add_argument("--class-names", nargs="+", default=None, help="one name per class, background first")
    g.add_argument("--channel-names", nargs="+", default=None, help="one name per input channel (default: from the data)")
    g.add_argument("--init-checkpoint", default=None, help="fine-tune: start from this checkpoint's weights (a folder, or the name of a shipped / user model; a patient split must not validate on the checkpoint's training patients: keep its --seed / --val-fraction)")
    g = parser.add_argument_group("loss and optimiser")
    g.add_argument("--loss", default=None, help="loss name (default: the model's paper loss; fine-tuning: the loss the --init-checkpoint was trained with)")
    g.add_argument("--loss-option", action="append", default=[], metavar="KEY=VALUE", help="loss option, VALUE as JSON (repeatable)")
    g.add_argument("--cascade-training", choices=("end_to_end", "stagewise"), default=_DEFAULTS.cascade_training,
                   help="cascades: both stages jointly, or stage 1 first then stage 2 with stage 1 frozen (default: end_to_end)")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=_DEFAULTS.optimizer, help="default: adam")
    g.add_argument("--lr", type=float, default=_DEFAULTS.lr, help=f"learning rate (default: {_DEFAULTS.lr})")
    g.add_argument("--momentum", type=float, default=_DEFAULTS.momentum, help=f"SGD momentum (default: {_DEFAULTS.momentum})")
    g.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay, help="default: 0")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default=_DEFAULTS.schedule, help="default: cosine")
    g.add_argument("--step-size", type=int, default=_DEFAULTS.step_size, help="step schedule: epochs per decay")
    g.add_argument("--gamma", type=float, default=_DEFAULTS.gamma, help="step schedule: decay factor")
    g.add_argument("--warmup-steps", type=int, default=_DEFAULTS.warmup_steps, help="linear warm-up steps (default: 0)")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
                        "validate, checkpoint and ship it instead of the raw weights (default: off)")
    g.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip, help="gradient norm clip, 0 to disable (default: 12)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA (never used on CPU)")
    g = parser.add_argument_group("budget")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {_DEFAULTS.epochs})")
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget incl. validation; whichever of epochs/minutes ends first")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="batches per epoch (default: one pass over the training slices)")
    g.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help=f"default: {_DEFAULTS.batch_size}")
    g.add_argument("--val-every", type=int, default=_DEFAULTS.val_every, help="validate every N epochs (default: 1)")
    g = parser.add_argument_group("data and sampling")
    g.add_argument("--axis", type=int, choices=(0, 1, 2), default=_DEFAULTS.axis, help="2D slicing axis (z, y, x); 0 = axial")
    g.add_argument("--inplane-size", type=int, default=None,
                   help="resample slices so the longer in-plane side has this many pixels (cheap CPU training; "
                        "recorded in the card so prediction resamples too)")
    g.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help="2D crop H W or 3D patch D H W (default: whole slice / 32x128x128)")
    g.add_argument("--foreground-probability", type=float, default=_DEFAULTS.foreground_probability,
                   help="share of samples centred on foreground (default: 0.5)")
    g.add_argument("--preprocessing", default=None,
                   help='per-channel preprocessing as JSON list, e.g. \'[{"type": "mri_zscore", "percentiles": [0.5, 99.5]}]\' '
                        "(default: z-score for MR, a soft-tissue window for CT)")
    g.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction, help="share of patients for validation (default: 0.2)")
    g.add_argument("--val-case", action="append", default=[], help="case id forced into validation (repeatable)")
    g.add_argument("--slice-block", type=int, default=_DEFAULTS.slice_block, help="single volume: slices per split block")
    g.add_argument("--slice-gap", type=int, default=_DEFAULTS.slice_gap, help="single volume: slices left out beside validation blocks")
    g.add_argument("--annotated-slices-only", action="store_true", help="single volume: use only slices that carry labels")
    g.add_argument("--no-augmentation", action="store_true", help="switch all augmentation off")
    g.add_argument("--augmentation", default=None, metavar="JSON",
                   help='augmentation settings as JSON, e.g. \'{"rot90": false, "elastic_probability": 0.2}\'')
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed of split, sampling and augmentation (default: 0)")
    g.add_argument("--device", default=_DEFAULTS.device, help="auto, cuda, cuda:N, mps or cpu (default: auto)")
    g.add_argument("--workers", type=int, default=_DEFAULTS.num_workers, help="DataLoader worker processes (default: 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--description", default="", help="text for the model card")
    g.add_argument("--data-licence", default=None, help="licence of the training data, written into the model card")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_train_parser=parser)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: every option that differs from its default, in the
    parser's order (recorded in the model card)."""
    parser = getattr(args, "_train_parser", None)
    if parser is None:
        return "cascadeseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    words = ["cascadeseg", "train"]
    for action in parser._actions:  # argparse keeps no public list of its actions
        if action.dest in ("help", "_train_parser") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default or value is None:
            continue
        if not action.option_strings:
            words.append(str(value))
        elif action.nargs == 0:
            words.append(action.option_strings[0])
        elif isinstance(value, list) and action.nargs in ("+", "*", 2, 3):
            words += [action.option_strings[0], *map(str, value)]
        elif isinstance(value, list):  # append actions: the option once per value
            for item in value:
                words += [action.option_strings[0], str(item)]
        else:
            words += [action.option_strings[0], str(value)]
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


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelConfigError(f"--{what}: not valid JSON ({exc})") from exc


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the arguments describe (resume: the stored one, extended)."""
    command = command_line(args)
    if args.resume:
        if args.run_dir is None:
            raise ModelConfigError("--resume needs --run-dir (the folder of the run to continue)")
        from ..training.run_folder import check_resumable

        check_resumable(args.run_dir)
        config = TrainConfig.load(args.run_dir)
        config.resume = True
        config.run_dir = str(args.run_dir)
        if args.epochs is not None:
            config.epochs = args.epochs
        if args.minutes is not None:
            config.minutes = args.minutes
        if args.threads is not None:
            config.threads = args.threads
        return config
    if (args.data is None) == (args.pairs is None):
        raise ModelConfigError("give the training data as DATA (an MSD folder) or as --pairs IMAGE LABEL ..., not both or neither")
    if args.pairs is not None:
        if len(args.pairs) % 2:
            raise ModelConfigError(f"--pairs takes image and label files in turns; got an odd number ({len(args.pairs)})")
        data: Any = [(str(args.pairs[i]), str(args.pairs[i + 1])) for i in range(0, len(args.pairs), 2)]
    else:
        data = str(args.data)
    options = _key_values(args.model_option, "model-option")
    for key in ("base_width", "levels", "norm"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    augmentation = _json_arg(args.augmentation, "augmentation") or {}
    if args.no_augmentation:
        augmentation["enabled"] = False
    return TrainConfig(
        data=data,
        run_dir=str(args.run_dir or Path("runs") / f"{args.model}-{args.dims}d"),
        model=args.model, dims=args.dims, model_options=options,
        loss=args.loss, loss_options=_key_values(args.loss_option, "loss-option"),
        num_classes=args.num_classes, class_names=args.class_names, channel_names=args.channel_names,
        preprocessing=_json_arg(args.preprocessing, "preprocessing"),
        axis=args.axis, inplane_size=args.inplane_size, patch_size=args.patch_size,
        batch_size=args.batch_size, epochs=args.epochs if args.epochs is not None else _DEFAULTS.epochs,
        minutes=args.minutes, steps_per_epoch=args.steps_per_epoch,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        schedule=args.schedule, step_size=args.step_size, gamma=args.gamma, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip or None, ema_decay=args.ema_decay, amp=not args.no_amp, seed=args.seed,
        val_fraction=args.val_fraction, val_cases=list(args.val_case),
        slice_gap=args.slice_gap, slice_block=args.slice_block, annotated_slices_only=args.annotated_slices_only,
        foreground_probability=args.foreground_probability, augmentation=augmentation,
        cascade_training=args.cascade_training, num_workers=args.workers, device=args.device,
        init_checkpoint=args.init_checkpoint, val_every=args.val_every, description=args.description,
        command=command, data_licence=args.data_licence, threads=args.threads,
    )


class _ProgressBar:
    """A tqdm bar over the steps of each epoch, with loss, throughput and validation Dice."""

    def __init__(self, disable: bool) -> None:
        self.disable = disable
        self.bar = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        print(
            f"training {info['model']} ({info['dims']}D, {info['parameters'] / 1e6:.2f} M parameters, loss {info['loss']}) "
            f"on {info['train_cases']} training / {info['val_cases']} validation case(s), input {info['patch_size']}, "
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
        print(
            f"epoch {info.epoch + 1}/{info.epochs}: loss {info.train_loss:.4f}, val Dice {dice}, "
            f"recommended depth {info.recommended_depth}, best {info.best_dice:.4f} (epoch {info.best_epoch + 1}), "
            f"{info.samples_per_second:.1f} samples/s, elapsed {info.elapsed_seconds / 60:.1f} min",
            file=sys.stderr,
        )

    def on_train_end(self, result: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..training.distributed import rank_info
    from ..training.trainer import train

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
        result = train(config, callbacks=_ProgressBar(disable=args.no_progress or not main_rank), cancel=cancel)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if main_rank:
        best = f"best Dice {result.best_dice:.4f} (epoch {result.best_epoch})" if result.best_dice is not None else "no validation yet"
        print(
            f"stopped ({result.stopped}) after {result.epochs_completed} epoch(s), {result.steps} steps, "
            f"{result.elapsed_seconds / 60:.1f} min; {best}; checkpoints in {result.run_dir}"
        )
    return 130 if result.stopped == "cancelled" else 0
