"""Files shipped inside the package (``cascadeseg.resources``): the sample scans, configs, checkpoints.

Reached through :mod:`importlib.resources`, so they are found from an installed wheel as well as
from a checkout. Installs are unpacked folders (pip never installs this package zipped), so the
returned objects are real :class:`pathlib.Path` objects that SimpleITK/nibabel can open.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from cascadeseg.errors import CascadeSegError, InputFileError


@dataclass(frozen=True)
class Sample:
    """A bundled real scan with its reference labels, and the shipped model made for its task."""

    key: str  # what `cascadeseg demo --sample` and napari's File > Open Sample call it
    case_id: str
    scan: str  # resource paths under cascadeseg.resources
    labels: str
    model: str  # the shipped model the demo runs on it
    unseen: bool  # whether that model never trained on this patient (a fair demonstration)


SAMPLES: dict[str, Sample] = {
    sample.key: sample
    for sample in (
        Sample(
            "brain",
            "TCGA_DU_6404_19850629",
            "sample/TCGA_DU_6404_19850629_flair.nii.gz",
            "sample/TCGA_DU_6404_19850629_mask.nii.gz",
            "lgg_flair_anu_net_2d",
            unseen=True,  # kept in the validation split of every model trained here
        ),
        Sample(
            "abdomen",
            "chaos_t2_08",
            "sample/chaos_t2_08_t2spir.nii.gz",
            "sample/chaos_t2_08_organs.nii.gz",
            "chaos_t2_anu_net_2d",
            unseen=True,  # a validation patient of the CHAOS model: it never trained on it (nor did its parent)
        ),
        Sample(
            "ct",
            "totalseg_example_ct_sm",
            "sample/totalseg_example_ct_sm.nii.gz",
            "sample/totalseg_example_ct_sm_liver.nii.gz",
            "ct_liver_unet_3d",
            unseen=False,  # the CT model's training patient: the shared data holds no other CT
        ),
    )
}
"""The bundled samples, one per task family (brain MRI, abdominal MRI, CT); see
``resources/sample/README.md`` for their sources and licences."""

SAMPLE_CASE_ID = SAMPLES["brain"].case_id
"""The LGG patient of the bundled brain sample; training keeps it in the validation split."""

DEFAULT_MODEL = SAMPLES["brain"].model
"""The shipped model the GUI preselects and the demo runs: the one made for the bundled sample
(brain FLAIR), whatever other task models ship beside it."""


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


def sample(key: str = "brain") -> Sample:
    """The bundled sample called ``key``; a clear error naming the choices otherwise."""
    if key not in SAMPLES:
        raise CascadeSegError(f"unknown sample {key!r} (expected one of: {', '.join(SAMPLES)})")
    return SAMPLES[key]


def sample_scan_path(key: str = "brain") -> Path:
    """The scan of a bundled sample (default: the brain MRI, FLAIR, LGG patient
    TCGA_DU_6404_19850629, CC BY-NC-SA 4.0)."""
    return _resource(sample(key).scan)


def sample_label_path(key: str = "brain") -> Path:
    """The reference label map of a bundled sample (brain: the manual FLAIR-abnormality mask,
    0 background, 1 lesion)."""
    return _resource(sample(key).labels)


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
