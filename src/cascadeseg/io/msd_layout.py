"""File naming of the Medical Segmentation Decathlon / nnU-Net layout (paths only, no reading).

``imagesTr/<case>_<channel:04d>.<ending>`` with ``labelsTr/<case>.<ending>``; the original MSD
release instead has one 4D file per case, ``imagesTr/<case>.nii.gz``, without the channel suffix.
"""

from __future__ import annotations

import re
from pathlib import Path

from cascadeseg.io.itk_files import ITK_SUFFIXES
from cascadeseg.io.nifti import NIFTI_SUFFIXES

IMAGE_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_suffix(path: Path) -> tuple[str, str]:
    """``("case_0000", ".nii.gz")`` for ``case_0000.nii.gz``; suffix ``""`` when not an image suffix."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def is_image_file(path: Path) -> bool:
    """An image file by name; hidden files (``._case.nii.gz`` from macOS) are not."""
    return not path.name.startswith(".") and split_suffix(path)[1] != "" and path.is_file()


def channel_of(path: Path) -> tuple[str, int] | None:
    """``(case, channel)`` when the name ends in ``_NNNN`` before the suffix."""
    match = _CHANNEL_FILE.match(split_suffix(path)[0])
    return (match["case"], int(match["channel"])) if match else None


def case_channel_files(path: Path) -> list[Path] | None:
    """All channel files of the case ``path`` belongs to, ordered ``_0000, _0001, ...``.

    Only when the siblings form an unbroken run starting at ``_0000`` (so a file that merely ends in
    four digits, such as ``scan_2023.nii.gz``, is not mistaken for a channel of something else).
    """
    parsed = channel_of(path)
    if parsed is None:
        return None
    case, _ = parsed
    suffix = split_suffix(path)[1]
    channels: dict[int, Path] = {}
    for sibling in path.parent.glob(f"{glob_escape(case)}_[0-9][0-9][0-9][0-9]{suffix}"):
        found = channel_of(sibling)
        if found is not None and found[0] == case and is_image_file(sibling):
            channels[found[1]] = sibling
    if sorted(channels) != list(range(len(channels))):
        return None
    return [channels[index] for index in range(len(channels))]


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a case id (ids may contain ``[``)."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def channel_names_from_json(description: dict) -> list[str] | None:
    """Channel names in channel order from a ``dataset.json``: nnU-Net v2 ``channel_names`` or the
    MSD / nnU-Net v1 ``modality`` (both ``{"0": "T1", "1": "FLAIR"}``)."""
    table = description.get("channel_names") or description.get("modality")
    if not isinstance(table, dict) or not table:
        return None
    try:
        ordered = sorted((int(key), str(value)) for key, value in table.items())
    except (TypeError, ValueError):
        return None
    if [index for index, _ in ordered] != list(range(len(ordered))):
        return None
    return [name for _, name in ordered]


def label_values_from_json(description: dict) -> dict[str, int]:
    """``{class name: label value}`` from a ``dataset.json``'s ``labels``: nnU-Net v2
    (``{"liver": 1}``) or MSD / nnU-Net v1 (``{"1": "liver"}``). nnU-Net v2 region entries (a list
    of values, e.g. ``"whole tumour": [1, 2, 3]``) name no single value and are skipped."""
    table = description.get("labels") or {}
    out: dict[str, int] = {}
    if not isinstance(table, dict):
        return out
    for key, value in table.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[str(key)] = value
        elif isinstance(value, str) and str(key).isdigit():
            out[value] = int(key)
    return out
