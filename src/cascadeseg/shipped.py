"""Files shipped inside the package (``cascadeseg.resources``): the sample scan, configs, checkpoints.

Reached through :mod:`importlib.resources`, so they are found from an installed wheel as well as
from a checkout. Installs are unpacked folders (pip never installs this package zipped), so the
returned objects are real :class:`pathlib.Path` objects that SimpleITK/nibabel can open.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from cascadeseg.errors import InputFileError

SAMPLE_CASE_ID = "TCGA_DU_6404_19850629"
"""The LGG patient of the bundled sample; training keeps it in the validation split."""

DEFAULT_MODEL = "lgg_flair_anu_net_2d"
"""The shipped model the GUI preselects and the demo runs: the one made for the bundled sample
(brain FLAIR), whatever other task models ship beside it."""

_SAMPLE_SCAN = f"sample/{SAMPLE_CASE_ID}_flair.nii.gz"
_SAMPLE_LABEL = f"sample/{SAMPLE_CASE_ID}_mask.nii.gz"


def _resource(relative: str, *, folder: bool = False) -> Path:
    traversable = files("cascadeseg.resources").joinpath(*relative.split("/"))
    path = Path(str(traversable))
    exists = path.is_dir() if folder else path.is_file()
    if not exists:
        raise InputFileError(
            f"{path}: shipped resource {relative!r} is missing; expected it in the installed "
            "cascadeseg.resources package (reinstall napari-cascade)"
        )
    return path


def sample_scan_path() -> Path:
    """The bundled sample brain MRI (FLAIR, LGG patient TCGA_DU_6404_19850629, CC BY-NC-SA 4.0)."""
    return _resource(_SAMPLE_SCAN)


def sample_label_path() -> Path:
    """The manual FLAIR-abnormality mask of the bundled sample (0 background, 1 lesion)."""
    return _resource(_SAMPLE_LABEL)


def sample_license_path() -> Path:
    """Licence and attribution text of the bundled sample."""
    return _resource("sample/LICENSE")


def checkpoints_dir() -> Path:
    """Folder of the default checkpoints (one sub-folder per model, each with its model card).

    Returned even when absent: a wheel built before any default model exists has no such folder,
    and callers listing checkpoints treat that as "no shipped models", not as an error."""
    return Path(str(files("cascadeseg.resources").joinpath("checkpoints")))


def configs_dir() -> Path:
    """Folder of the shipped training and preprocessing configs (JSON)."""
    return _resource("configs", folder=True)
