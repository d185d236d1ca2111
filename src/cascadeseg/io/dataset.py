"""MSD / nnU-Net dataset folders as a list of cases: :func:`load_dataset`, :class:`CaseRef`.

Reads only names (and ``dataset.json`` when present) when listing, so listing a large dataset is
instant; :meth:`CaseRef.load` reads the voxels of one case.

``dataset.json`` may record which patient each case belongs to, under this project's own block
(nnU-Net ignores unknown keys): ``{"napari_cascade": {"patients": {"<case>": "<patient>"}}}``. The
local training set writes it (a re-added case ``<case>_v2`` belongs to ``<case>``'s patient) and
every patient split reads it (:func:`patient_keys`), so versions of a scan and scans of one
patient never end up on both sides of a split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cascadeseg.errors import DatasetError
from cascadeseg.io.msd_layout import (
    channel_names_from_json,
    channel_of,
    is_image_file,
    label_values_from_json,
    split_suffix,
)
from cascadeseg.io.reader import PathLike, load_channels, load_labels, load_volume
from cascadeseg.io.volume import Volume

PROJECT_KEY = "napari_cascade"  # this project's block in dataset.json
PATIENTS_KEY = "patients"  # {case id: patient key} inside it
_STUDY_DATE = re.compile(r"_(19|20)\d{6}$")
_VERSION = re.compile(r"_v\d+$")


def patient_id(case_id: str, recorded: Mapping[str, str] | None = None) -> str:
    """The patient a case belongs to: its key in ``recorded`` (a dataset's :func:`patient_keys`)
    when there, else its id without a trailing ``_vN`` version (the local training set's re-added
    cases) and then without a trailing ``_YYYYMMDD`` study date (the TCGA/TCIA naming)."""
    if recorded and case_id in recorded:
        return str(recorded[case_id])
    return _STUDY_DATE.sub("", _VERSION.sub("", case_id))


@dataclass(frozen=True)
class CaseRef:
    """One case of a dataset: its channel files (in channel order) and its label file, if any."""

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path | None
    channel_names: tuple[str, ...]

    def load(self, *, nan_policy: str = "raise") -> tuple[Volume, Volume | None]:
        """``(image with all channels, label map or None)``; the label is checked against the image grid."""
        if len(self.image_files) == 1 and channel_of(self.image_files[0]) is None:
            image = load_volume(self.image_files[0], nan_policy=nan_policy, whole_case=False)  # MSD 4D file
            if len(self.channel_names) == image.num_channels:
                image.channel_names = list(self.channel_names)
        else:
            image = load_channels(self.image_files, list(self.channel_names), nan_policy=nan_policy)
        labels = load_labels(self.label_file, reference=image) if self.label_file is not None else None
        return image, labels


def _read_description(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: is not valid JSON ({exc}); expected an MSD/nnU-Net dataset.json") from exc
    if not isinstance(description, dict):
        raise DatasetError(f"{path}: expected a JSON object with channel_names/modality and labels")
    return description


def patient_keys(folder: PathLike) -> dict[str, str]:
    """``{case id: patient}`` recorded in ``folder/dataset.json`` (``{}`` when none is recorded)."""
    block = _read_description(Path(folder).expanduser()).get(PROJECT_KEY)
    keys = block.get(PATIENTS_KEY) if isinstance(block, dict) else None
    if keys is None:
        return {}
    if not isinstance(keys, dict) or not all(isinstance(v, str) and v for v in keys.values()):
        raise DatasetError(
            f"{Path(folder) / 'dataset.json'}: {PROJECT_KEY}.{PATIENTS_KEY} must map case ids to patient names "
            f"(strings), got {str(keys)[:80]}"
        )
    return {str(k): v for k, v in keys.items()}


def class_names(folder: PathLike) -> dict[int, str]:
    """``{label value: class name}`` recorded in ``folder/dataset.json`` (``{}`` when none is)."""
    named = label_values_from_json(_read_description(Path(folder).expanduser()))
    return {value: name for name, value in named.items()}


def _group_cases(images_dir: Path) -> dict[str, dict[int, Path]]:
    """case id -> {channel: file}; a file without ``_NNNN`` is a whole (MSD 4D) case on its own."""
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if not is_image_file(path):
            continue
        parsed = channel_of(path)
        case, channel = parsed if parsed is not None else (split_suffix(path)[0], -1)
        if channel in cases.setdefault(case, {}):
            raise DatasetError(f"{path}: channel {channel:04d} of case {case!r} appears twice (two file types?)")
        cases[case][channel] = path
    return cases


def _label_files(labels_dir: Path) -> dict[str, Path]:
    """case id -> its label map (the first by name when a case has two file types); one listing of
    the folder (a glob per case read the folder once per case: 6,400 entries for 80 cases)."""
    if not labels_dir.is_dir():
        return {}
    files: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if is_image_file(path):
            files.setdefault(split_suffix(path)[0], path)
    return files


def load_dataset(folder: PathLike, *, images: str = "imagesTr", labels: str = "labelsTr") -> list[CaseRef]:
    """List the cases of an MSD / nnU-Net folder (``imagesTr/``, ``labelsTr/``, optional ``dataset.json``).

    Channel names come from ``dataset.json`` (``channel_names`` or ``modality``) when present, else
    the channel suffixes (``"0000"``). Every case must have the same channels ``_0000 .. _{n-1}``;
    a case without a label file gets ``label_file=None`` (test-set style).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: is not a folder; expected an MSD/nnU-Net dataset folder with {images}/")
    images_dir = root / images
    if not images_dir.is_dir():
        raise DatasetError(
            f"{root}: has no {images}/ folder; expected the MSD/nnU-Net layout {images}/<case>_0000.nii.gz"
        )
    description = _read_description(root)
    cases = _group_cases(images_dir)
    if not cases:
        raise DatasetError(f"{images_dir}: holds no image files; expected <case>_0000.nii.gz files")

    json_names = channel_names_from_json(description)
    label_files = _label_files(root / labels)
    refs: list[CaseRef] = []
    expected_channels: list[int] | None = None
    for case, channels in cases.items():
        indices = sorted(channels)
        if indices != [-1]:
            if indices != list(range(len(indices))):
                raise DatasetError(
                    f"{images_dir}: case {case!r} has channels {[f'{i:04d}' for i in indices]}; "
                    "expected an unbroken run _0000, _0001, ..."
                )
            if expected_channels is None:
                expected_channels = indices
            elif indices != expected_channels:
                raise DatasetError(
                    f"{images_dir}: case {case!r} has {len(indices)} channels but other cases have "
                    f"{len(expected_channels)}; expected the same channels in every case"
                )
        names = json_names or ([f"{i:04d}" for i in indices] if indices != [-1] else [])
        refs.append(
            CaseRef(
                case_id=case,
                image_files=tuple(channels[i] for i in indices),
                label_file=label_files.get(case),
                channel_names=tuple(names),
            )
        )
    orphans = sorted(set(label_files) - set(cases))
    if orphans:
        raise DatasetError(
            f"{root / labels}: {len(orphans)} label map(s) have no image in {images}/ "
            f"({', '.join(orphans[:5])}{', ...' if len(orphans) > 5 else ''}); expected {images}/<case>_0000.nii.gz "
            f"for every label map (add the images, or remove the labels that have none)"
        )
    if json_names and expected_channels is not None and len(json_names) != len(expected_channels):
        raise DatasetError(
            f"{root / 'dataset.json'}: names {len(json_names)} channels ({json_names}) but the files have "
            f"{len(expected_channels)}; expected one name per channel"
        )
    return refs
