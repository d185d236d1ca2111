"""The rule every writer shares: an output never replaces an input.

``overwrite`` (``--overwrite`` on the command line, the GUI's "replace" choices) is consent to
replace earlier *outputs*; the scans, label maps and datasets being read are never replaced,
whatever the flags. Two paths are the same file when the file system says so
(:func:`os.path.samefile`: symbolic links, hard links and case-insensitive file systems included);
a path that does not exist yet replaces nothing.

MSD / nnU-Net dataset folders get one more rule: their ``imagesTr``/``imagesTs``/``labelsTr``/
``labelsTs`` folders hold the dataset itself, so predictions and reports are never written into
them (label maps among the images would be read as scans by the next run; predictions in
``labelsTr`` would replace the ground truth).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cascadeseg.errors import OutputIsInputError
from cascadeseg.io.volume import Volume

__all__ = ["input_files", "same_file", "refuse_input_overwrite", "refuse_dataset_folder", "DATASET_SUBFOLDERS"]

DATASET_SUBFOLDERS = ("imagesTr", "imagesTs", "labelsTr", "labelsTs")


def input_files(volume: Volume) -> tuple[Path, ...]:
    """The files ``volume`` was read from: its source and every channel file of its case."""
    files = [Path(p) for p in volume.meta.get("channel_files", ()) or ()]
    if volume.source is not None:
        files.insert(0, Path(volume.source))
    return tuple(files)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one existing file or folder (links and letter case resolved
    by the file system itself)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_input_overwrite(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]], *, option: str = "output"
) -> None:
    """Raise :class:`OutputIsInputError` when an output path is one of the inputs.

    ``option`` names where the output path came from in the message (``--output``, a file name).
    """
    inputs = [Path(p) for p in inputs]
    for output in outputs:
        output = Path(output)
        if not os.path.lexists(output):
            continue
        for source in inputs:
            if same_file(output, source):
                through = "" if output.absolute() == Path(source).absolute() else f" (the same file as {source})"
                raise OutputIsInputError(
                    f"{output}: is an input{through}; refusing to replace it, even with overwrite "
                    f"(--overwrite replaces earlier outputs, never the data being read); choose another {option}"
                )


def refuse_dataset_folder(folder: str | os.PathLike[str], *, option: str = "output folder") -> None:
    """Refuse writing into the image or label folder of an MSD / nnU-Net dataset."""
    folder = Path(folder)
    if folder.name in DATASET_SUBFOLDERS and (folder.parent / "imagesTr").is_dir():
        raise OutputIsInputError(
            f"{folder}: is the {folder.name}/ folder of the dataset {folder.parent}; refusing to write there "
            f"(label maps among its files would be read as part of the dataset, or replace its ground truth); "
            f"choose another {option}"
        )
