"""``cascadeseg predict``: segment scans with a checkpoint and write nnU-Net-style label files.

Inputs (any mix, each argument one of):

* an image file (NIfTI, MHA/MHD, NRRD); an MSD channel file ``<case>_0000.nii.gz`` brings all of
  its case's channels (``_0001``, ...) and names the output ``<case>.nii.gz``;
* a DICOM series folder (output named after the folder);
* a folder of image files (cases grouped by their ``_NNNN`` channel suffix, or BraTS-style by the
  sequence their names give: ``<case>_flair.nii.gz``, ``<case>_t1c_bet.nii.gz`` are one case with
  channels ``flair``, ``t1c``; label maps found there are skipped, and said so);
* an MSD / nnU-Net dataset folder: its ``imagesTs/`` when present, else ``imagesTr/``.

A scan with more channels than the model gives it those named after the card's sequences
(``--channels`` chooses them by name or index when the names say nothing).

Outputs are ``OUTPUT/<case>.nii.gz`` with the source scan's geometry (and, with
``--save-probabilities``, ``OUTPUT/<case>_probabilities.nii.gz``: float32 softmax, one volume per
class along the 4th axis, same geometry); for a single scan, ``-o mask.nii.gz`` (any image ending
that is not an existing folder) names the label file itself. Every output path is checked
before any work starts: an existing file stops the run unless ``--overwrite``, and no output may
be an input, whatever the flags (the output folder may not be a folder of inputs, nor the images or
labels folder of an MSD dataset). What a killed run left in the output folder (temporaries of
its writes) is removed first, and said so. Under ``torchrun`` each rank segments its share of the
cases (round robin) and writes only those.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DatasetError, InputFileError, OutputExistsError, OutputIsInputError, VolumeError
from .main import command_parser

if TYPE_CHECKING:
    from ..io.volume import Volume

OUTPUT_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"


@dataclass(frozen=True)
class PredictCase:
    """One scan to segment: the path handed to ``load_volume`` and the output's case id.

    ``files``/``channel_names``: a BraTS-style case of a folder, one file per sequence
    (``<case>_flair.nii.gz``, ``<case>_t1c.nii.gz``), stacked as the channels so named.
    ``in_folder``: found by listing a folder (a label map there is skipped, not refused)."""

    case_id: str
    path: Path
    files: tuple[Path, ...] = ()
    channel_names: tuple[str, ...] = ()
    in_folder: bool = False

    def load(self, nan_policy: str, series_uid: str | None) -> Volume:
        from ..io import load_volume
        from ..io.stacking import stack_channels

        if len(self.files) > 1:
            return stack_channels(
                [load_volume(f, nan_policy=nan_policy, whole_case=False) for f in self.files], self.channel_names
            )
        return load_volume(self.path, nan_policy=nan_policy, series_uid=series_uid)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "predict", __doc__)
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image file, DICOM folder, folder of images, or MSD dataset folder",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="folder for the label files <case>.nii.gz (created if missing); for one scan, a file name "
        "with an image ending (mask.nii.gz, .nrrd, .mha) names the label file itself",
    )
    parser.add_argument(
        "-c",
        "--checkpoint",
        required=True,
        help="checkpoint folder, or the name of a shipped / user model (see 'cascadeseg models --checkpoints')",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        help="pruning depth 1..4 for models with pruning (default: the card's recommended depth)",
    )
    parser.add_argument(
        "--mode",
        choices=("2d", "3d"),
        default=None,
        help="2d: slice by slice; 3d: sliding window (default: what the network was trained as)",
    )
    parser.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="2D slicing axis in (z, y, x) array order; 0 = axial (default: the card's slice axis)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu (default: auto)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per 2D batch or windows per 3D batch (default: 8 slices of 256x256 or "
        "2 of 512x512 / 1 window on CPU; 4x that on GPU)",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help="3D sliding-window size (default: the card's patch size)",
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="3D window overlap in [0, 1) (default: 0.5)")
    parser.add_argument(
        "--no-mixed-precision",
        action="store_true",
        help="run in fp32 on GPUs too (mixed precision is never used on the CPU)",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time mirroring (nnU-Net's default): average over the mirror images along the "
        "axes training mirrored (the in-plane axes: 4x the time) (default: the model card's "
        "test_time_mirroring)",
    )
    parser.add_argument(
        "--foreground-threshold",
        type=float,
        default=None,
        metavar="T",
        help="two-class models: a voxel is foreground when its foreground probability is above T "
        "(lower finds more, higher keeps less) (default: the model card's foreground_threshold, "
        "else 0.5, the argmax)",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write OUTPUT/<case>_probabilities.nii.gz (float32 softmax, class along "
        "the 4th axis, the scan's geometry)",
    )
    parser.add_argument(
        "--largest-component", action="store_true", help="keep only the largest connected component of each label"
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill holes enclosed by each label")
    parser.add_argument(
        "--body-mask",
        action="store_true",
        help="clear labels outside the body (CT) / head (MR) mask found by thresholding the first channel",
    )
    parser.add_argument(
        "--nan-policy",
        default="raise",
        metavar="{raise,zero,min}",
        help="NaN/Inf voxels in a scan: raise (refuse the scan, default), zero (replace them by 0) "
        "or min (by the scan's smallest finite value)",
    )
    parser.add_argument(
        "--channels",
        nargs="+",
        default=None,
        metavar="CHANNEL",
        help="the scan channels that feed the model, one per model input in the card's order, each by "
        "name (0001, FLAIR) or 0-based index: e.g. --channels 0001 runs a FLAIR model on the FLAIR file "
        "of a T1c + FLAIR case (default: all of them when the counts agree, else the channels named "
        "after the card's sequences)",
    )
    parser.add_argument(
        "--series-uid",
        default=None,
        help="DICOM folder holding several series: the SeriesInstanceUID of the one to segment "
        "(the error for such a folder lists them)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (never an input: that is always refused)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    return parser


def run(args: argparse.Namespace) -> int:
    from .._atomic import clean_leftovers
    from ..distributed import rank_info, shard
    from ..io import save_labels, save_volume
    from ..io.checks import NAN_POLICIES
    from ..io.label_maps import looks_like_label_map
    from ..io.reader import check_volume_size
    from ..preprocessing import body_mask

    if args.batch_size is not None and args.batch_size < 1:
        raise InputFileError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.nan_policy not in NAN_POLICIES:
        raise InputFileError(f"--nan-policy {args.nan_policy!r}: expected one of {', '.join(NAN_POLICIES)}")
    cases = discover_cases(args.inputs)
    info = rank_info()
    mine = shard(cases, info)
    out_dir, targets, prob_targets = output_targets(args.output.expanduser(), cases, mine, args.save_probabilities)
    named_file = out_dir != args.output.expanduser()  # -o mask.nii.gz: the file, not a folder
    check_outputs_spare_inputs(
        args.inputs,
        cases,
        out_dir,
        [*targets.values(), *prob_targets.values()],
        option="--output file" if named_file else "--output folder",
    )
    existing = [str(p) for p in [*targets.values(), *prob_targets.values()] if p.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputExistsError(
            f"output file(s) already exist: {', '.join(existing[:3])}{more} (pass --overwrite to replace them)"
        )
    for case in mine:  # headers only, before the model loads: an impossible scan fails in milliseconds
        for path in case.files or (case.path,):
            check_volume_size(path)
    from ..inference import PostProcessing, PredictionRequest, Predictor, postprocess
    from ..inference.predictor import check_foreground_threshold

    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, mixed_precision=not args.no_mixed_precision, batch_size=args.batch_size
    )
    predictor.resolve_depth(args.depth)  # an impossible depth is refused before any scan is read
    threshold = args.foreground_threshold
    check_foreground_threshold(threshold, predictor.card, "--foreground-threshold")  # before any scan is read
    mode = args.mode or f"{predictor.card.dims}d"
    slice_axis = predictor.card.slice_axis if args.axis is None else args.axis
    # 2D predictions are made slice by slice, so the holes to fill are those closed within a slice.
    post = PostProcessing(
        largest_component=args.largest_component,
        fill_holes=args.fill_holes,
        fill_holes_axis=slice_axis if mode == "2d" else None,
        restrict_to_mask=args.body_mask,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)  # a killed earlier run's temporaries (it says what it removed)
    prefix = f"[rank {info.rank}/{info.world_size}] " if info.is_distributed else ""
    start = time.perf_counter()
    skipped = 0
    for index, case in enumerate(mine, 1):
        volume = case.load(args.nan_policy, args.series_uid)
        # A constant scan is no label map: the predictor's own error says what is wrong with it.
        if looks_like_label_map(volume) and volume.array.min() != volume.array.max():
            what = f"{case.path}: holds a label map (whole numbers, few values), not a scan"
            if not case.in_folder:
                raise VolumeError(f"{what}: nothing to segment (give the scan it labels)")
            print(f"{prefix}{what}: skipped", file=sys.stderr)
            skipped += 1
            continue
        volume, taken = predictor.choose_channels(volume, args.channels)
        if taken:
            print(f"{prefix}{taken}", file=sys.stderr)
        for warning in predictor.input_warnings(volume, args.mode, args.axis):  # before running, not after
            print(f"cascadeseg: warning: {warning}", file=sys.stderr)
        with ProgressBar(f"{prefix}{index}/{len(mine)} {case.case_id}", disable=args.no_progress) as bar:
            result = predictor.predict(
                volume,
                mode=args.mode,
                axis=args.axis,
                depth=args.depth,
                want=PredictionRequest(
                    probabilities=args.save_probabilities, mirror=args.mirror, foreground_threshold=threshold
                ),
                progress=bar.update,
                patch_size=args.patch_size,
                overlap=args.overlap,
            )
        if "stage2_fraction" in result.stats:  # coarse-to-fine cascade: the saving of its crop
            print(
                f"{prefix}{case.case_id}: stage 2 ran on {result.stats['stage2_fraction']:.0%} of the input",
                file=sys.stderr,
            )
        labels = result.labels.array
        if post.any:
            labels = postprocess(labels, post, mask=body_mask(volume) if args.body_mask else None)
        save_labels(labels, volume, targets[case.case_id], overwrite=args.overwrite)
        if result.probabilities is not None:
            save_volume(result.probabilities, prob_targets[case.case_id], overwrite=args.overwrite)
        del volume, result, labels
    elapsed = time.perf_counter() - start
    also = f" ({skipped} label map(s) skipped)" if skipped else ""
    print(f"{prefix}segmented {len(mine) - skipped} case(s) in {elapsed:.1f} s{also} -> {out_dir}", file=sys.stderr)
    return 0


def output_targets(
    output: Path, cases: list[PredictCase], mine: list[PredictCase], save_probabilities: bool
) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """The output folder, and the label (and probability) file of each of this process's cases.

    ``--output`` is a folder (``<case>.nii.gz`` in it), unless it is not an existing folder and ends
    in an image suffix: then it names the one scan's label file (as ``-o mask.nii.gz`` reads), and the
    probabilities, if asked for, go beside it as ``<name>_probabilities.nii.gz``.
    """
    from ..io.msd_layout import split_suffix

    stem, suffix = split_suffix(output)
    if suffix and not output.is_dir():
        if len(cases) != 1:
            raise InputFileError(
                f"--output {output}: names one label file, but {len(cases)} scans were given "
                f"({', '.join(c.case_id for c in cases[:3])}{', ...' if len(cases) > 3 else ''}); "
                "give a folder, where each scan's labels are written as <case>.nii.gz"
            )
        folder = output.parent
        return (
            folder,
            {case.case_id: output for case in mine},
            {case.case_id: folder / f"{stem}{PROBABILITIES_SUFFIX}" for case in mine} if save_probabilities else {},
        )
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"--output {output}: exists and is not a folder (expected a folder for label files)")
    return (
        output,
        {case.case_id: output / f"{case.case_id}{OUTPUT_SUFFIX}" for case in mine},
        {case.case_id: output / f"{case.case_id}{PROBABILITIES_SUFFIX}" for case in mine} if save_probabilities else {},
    )


class ProgressBar:
    """A tqdm bar fed by the predictor's :class:`Progress` callbacks (slices/s or patches/s)."""

    def __init__(self, desc: str, disable: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=1, desc=desc, disable=disable, leave=True, file=sys.stderr, dynamic_ncols=True)

    def update(self, progress: Any) -> None:
        bar = self._bar
        if bar.total != progress.total:
            bar.total, bar.unit = progress.total, f" {progress.unit}"
        bar.update(progress.done - bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


# -- inputs are never outputs ----------------------------------------------------------------------


def check_outputs_spare_inputs(
    inputs: list[Path], cases: list[PredictCase], out_dir: Path, outputs: list[Path], option: str = "--output folder"
) -> None:
    """Refuse, before any work, outputs that are inputs (see the module docstring). ``option``: what
    the user gave, for the message (``--output folder`` or ``--output file``)."""
    from ..io.protect import refuse_dataset_folder, refuse_input_overwrite, same_file
    from ..io.writer import check_file_name

    for output in outputs:
        check_file_name(output)
    refuse_dataset_folder(out_dir, option=option)
    for given in inputs:
        given = Path(given).expanduser()
        if given.is_dir() and same_file(given, out_dir):
            raise OutputIsInputError(
                f"--output {out_dir}: is the input folder {given}; label maps written there would be read as "
                f"scans by the next run, or replace them; choose another {option}"
            )
    refuse_input_overwrite(outputs, [f for case in cases for f in _case_files(case)], option=option)


def _case_files(case: PredictCase) -> list[Path]:
    """The files a case is read from: its channel files, or the files of its DICOM folder."""
    from ..io.msd_layout import case_channel_files

    if case.files:
        return list(case.files)
    if case.path.is_dir():
        return [p for p in case.path.iterdir() if p.is_file()]
    return case_channel_files(case.path) or [case.path]


# -- finding the cases -----------------------------------------------------------------------------


def discover_cases(inputs: list[Path]) -> list[PredictCase]:
    """Every case named by ``inputs``, sorted by case id; duplicate ids are an error."""
    found: dict[str, PredictCase] = {}
    for path in inputs:
        for case in _cases_of(Path(path).expanduser()):
            other = found.get(case.case_id)
            if other is not None and other.path != case.path:
                raise DatasetError(
                    f"two inputs give the same case id '{case.case_id}' ({other.path} and {case.path}); "
                    f"outputs would collide (expected distinct case names)"
                )
            found[case.case_id] = case
    if not found:
        raise DatasetError(
            f"no images found in {', '.join(map(str, inputs))} (expected image files, "
            f"DICOM folders or an MSD folder with imagesTs/ or imagesTr/)"
        )
    return [found[k] for k in sorted(found)]


def _cases_of(path: Path) -> list[PredictCase]:
    from ..io.msd_layout import is_image_file

    if not path.exists():
        raise InputFileError(f"{path}: input does not exist (expected an image file or a folder)")
    if path.is_file():
        return [_file_case(path)]
    for sub in ("imagesTs", "imagesTr"):
        if (path / sub).is_dir():
            return _folder_cases(path / sub)
    if any(is_image_file(p) for p in path.iterdir()):
        return _folder_cases(path)
    # Neither images nor an MSD layout: a DICOM series folder (load_volume says if it is not).
    return [PredictCase(path.name, path)]


def _file_case(path: Path) -> PredictCase:
    from ..io.msd_layout import case_channel_files, channel_of, split_suffix

    channels = case_channel_files(path)
    if channels:
        case_id = channel_of(path)[0]  # type: ignore[index]
        return PredictCase(case_id, channels[0])
    stem, suffix = split_suffix(path)
    if not suffix:
        # A DICOM slice, or something load_volume will name in its error.
        return PredictCase(path.parent.name, path)
    return PredictCase(stem, path)


def _folder_cases(folder: Path) -> list[PredictCase]:
    """The cases of a folder of image files: MSD channel files grouped by their ``_NNNN`` suffix,
    BraTS-style files by the sequence their name gives (``<case>_flair``, ``<case>_t1c_bet``) when a
    case has two or more, every other file a case of its own."""
    from ..io.channels import sequence_in_file_name
    from ..io.msd_layout import channel_of, is_image_file

    cases: dict[str, PredictCase] = {}
    # case named by the sequences -> (sequence, file, the file's own case id)
    by_sequence: dict[str, list[tuple[str, Path, str]]] = {}
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        case = _file_case(path)
        split = None if channel_of(path) else sequence_in_file_name(case.case_id)
        if split is not None:
            by_sequence.setdefault(split[0], []).append((split[1], path, case.case_id))
        cases.setdefault(case.case_id, PredictCase(case.case_id, case.path, in_folder=True))
    for case_id, members in by_sequence.items():
        if len(members) < 2 or case_id in cases:
            continue
        for _, _, own_id in members:
            cases.pop(own_id)
        cases[case_id] = PredictCase(
            case_id,
            members[0][1],
            files=tuple(path for _, path, _ in members),
            channel_names=tuple(sequence for sequence, _, _ in members),
            in_folder=True,
        )
    return [cases[k] for k in sorted(cases)]
