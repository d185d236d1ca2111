"""Training data: read the cases once, check them, preprocess them, and keep them in memory.

Three sources, one result (a list of :class:`TrainingCase`):

* an MSD / nnU-Net folder (``imagesTr/``, ``labelsTr/``), read with :func:`cascadeseg.io.load_dataset`;
* a list of ``(image_path, label_path)`` pairs;
* a list of in-memory ``(Volume, Volume)`` pairs (what the GUI hands over).

Decoded volumes are cached as preprocessed float32 at the training resolution, so sampling a batch
is array slicing only; the original-grid labels are kept for patient-level validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DatasetError, GeometryMismatchError, InputFileError, VolumeError
from ..io.checks import as_label_array, check_same_grid
from ..io.volume import Volume


@dataclass
class TrainingCase:
    """One case ready for sampling.

    ``image``: ``(C, Z, Y, X)`` float32, preprocessed, at the training resolution.
    ``labels``: ``(Z, Y, X)`` uint8 class indices at the training resolution.
    ``labels_full``: the labels on the original grid (validation Dice is computed there).
    ``spacing``: training-resolution spacing (z, y, x) in mm.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    labels_full: np.ndarray
    spacing: tuple[float, float, float]
    source: str | None = None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)  # type: ignore[return-value]

    def restrict(self, axis: int, start: int, stop: int, suffix: str) -> "TrainingCase":
        """The slices ``[start, stop)`` along ``axis`` as a case of its own (views, no copy)."""
        index = [slice(None)] * 3
        index[axis] = slice(start, stop)
        return TrainingCase(
            case_id=f"{self.case_id}{suffix}",
            image=self.image[(slice(None), *index)],
            labels=self.labels[tuple(index)],
            labels_full=self.labels_full[tuple(index)],
            spacing=self.spacing,
            source=self.source,
        )


@dataclass
class CaseSource:
    """A case not yet read: its id and how to read it (lazy, so one bad file names itself)."""

    case_id: str
    read: Callable[[], tuple[Volume, Volume]]


# ----------------------------------------------------------------------------------------------
# Sources


def case_sources(data: Any) -> list[CaseSource]:
    """Turn the ``data`` of a :class:`~cascadeseg.training.config.TrainConfig` into case sources."""
    if data is None:
        raise DatasetError("no training data given (expected an MSD folder, image/label file pairs, or volumes)")
    if isinstance(data, (str, os.PathLike)):
        return _folder_sources(Path(data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if len(data) == 0:
            raise DatasetError("the list of training cases is empty (expected at least one image/label pair)")
        sources = []
        for i, pair in enumerate(data):
            if not (isinstance(pair, Sequence) and len(pair) == 2):
                raise DatasetError(f"training case #{i} is {pair!r}: expected an (image, labels) pair")
            image, labels = pair
            if isinstance(image, Volume):
                sources.append(_memory_source(i, image, labels))
            else:
                sources.append(_file_pair_source(Path(image), Path(labels)))
        ids = [s.case_id for s in sources]
        if len(set(ids)) != len(ids):  # two files with the same stem in different folders
            sources = [CaseSource(f"{s.case_id}_{i}", s.read) for i, s in enumerate(sources)]
        return sources
    raise DatasetError(f"training data {data!r} is not a folder, a list of file pairs or a list of volumes")


def _folder_sources(folder: Path) -> list[CaseSource]:
    from ..io import load_dataset  # the I/O engineer's MSD reader

    if not folder.exists():
        raise InputFileError(f"training data folder '{folder}' does not exist")
    if not folder.is_dir():
        raise InputFileError(f"training data '{folder}' is not a folder (expected an MSD folder with imagesTr/ and labelsTr/)")
    refs = load_dataset(folder)
    if not refs:
        raise DatasetError(f"'{folder}': the dataset folder holds no cases (expected imagesTr/<case>_0000.nii.gz files)")
    sources = []
    missing = []
    for ref in refs:
        case_id = ref.case_id
        if ref.label_file is None:
            missing.append(case_id)
            continue
        sources.append(CaseSource(case_id, _ref_reader(ref, case_id, folder)))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"'{folder}': {len(missing)} of {len(refs)} case(s) have no label map in labelsTr/ ({shown}); "
            f"training needs a label for every image"
        )
    return sources


def _ref_reader(ref: Any, case_id: str, folder: Path) -> Callable[[], tuple[Volume, Volume]]:
    def read() -> tuple[Volume, Volume]:
        image, labels = ref.load()
        if labels is None:
            raise DatasetError(f"'{folder}': case '{case_id}' has no label map in labelsTr/; training needs one")
        return image, labels

    return read


def _file_pair_source(image_path: Path, label_path: Path) -> CaseSource:
    from ..io import load_labels, load_volume

    for path, what in ((image_path, "image"), (label_path, "label map")):
        if not path.exists():
            raise InputFileError(f"training {what} '{path}' does not exist")

    def read() -> tuple[Volume, Volume]:
        image = load_volume(image_path)
        return image, load_labels(label_path, reference=image)

    return CaseSource(_stem(image_path), read)


def _memory_source(index: int, image: Volume, labels: Any) -> CaseSource:
    if not isinstance(labels, Volume):
        raise DatasetError(f"training case #{index}: the labels are a {type(labels).__name__}, expected a label Volume")
    name = Path(image.source).name if image.source is not None else f"volume{index}"
    case_id = _stem(Path(name)) if image.source is not None else name
    return CaseSource(case_id, lambda: (image, labels))


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    # MSD channel suffix: case_0000 -> case
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


# ----------------------------------------------------------------------------------------------
# Checks


def check_pair(case_id: str, image: Volume, labels: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Check that image and labels share a voxel grid and the labels are whole non-negative
    numbers; return ``(image (C, Z, Y, X), labels (Z, Y, X) unsigned)``. Errors name the case."""
    array = image.array
    if array.ndim == 3:  # a single-channel image handed over as (Z, Y, X) (napari layers are)
        array = array[None]
    if array.ndim != 4:
        raise VolumeError(f"case '{case_id}': the image has shape {array.shape}, expected (C, Z, Y, X) or (Z, Y, X)")
    if labels.array.ndim != 3:
        raise VolumeError(f"case '{case_id}': the label map has shape {labels.array.shape}, expected (Z, Y, X)")
    try:
        check_same_grid(labels, image)
        lab = as_label_array(labels.array, f"case '{case_id}' label map")
    except (GeometryMismatchError, VolumeError) as exc:
        raise type(exc)(f"case '{case_id}': {exc}") from exc
    if not np.isfinite(array).all():
        raise VolumeError(f"case '{case_id}'{_where(image, labels)}: the image holds NaN or infinite voxels")
    return array, lab


def check_label_values(case_id: str, labels: np.ndarray, num_classes: int, where: str = "") -> None:
    """Every label value must be a class the model knows: 0..num_classes-1."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        values = np.unique(labels)
        unknown = [int(v) for v in values if v < 0 or v >= num_classes][:10]
        raise DatasetError(
            f"case '{case_id}'{where}: label value(s) {unknown} are not classes of this model "
            f"(expected 0..{num_classes - 1} for num_classes={num_classes}; remap the labels or raise num_classes)"
        )


def _where(image: Volume, labels: Volume) -> str:
    if image.source is None and labels.source is None:
        return ""
    return f" ({image.source} / {labels.source})"


# ----------------------------------------------------------------------------------------------
# Preprocessing and resampling


def default_preprocessing(image: Volume, num_channels: int) -> list[dict[str, Any]]:
    """Per-channel preprocessing when the config gives none: z-score (robust percentiles) for MR
    and unknown modality, the generic soft-tissue window for CT."""
    if (image.modality or "").upper() == "CT":
        return [{"type": "ct_window", "window": [-160, 240]}] * num_channels
    return [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}] * num_channels


def preprocess(array: np.ndarray, specs: Sequence[dict[str, Any]], case_id: str) -> np.ndarray:
    """Apply each channel's spec (``cascadeseg.preprocessing``) into one float32 array."""
    from ..preprocessing import apply_channel_preprocessing

    if len(specs) != array.shape[0]:
        raise DatasetError(
            f"case '{case_id}': the image has {array.shape[0]} channel(s) but the preprocessing "
            f"gives {len(specs)} spec(s) (expected one per channel)"
        )
    out = np.empty(array.shape, dtype=np.float32)
    for c, spec in enumerate(specs):
        try:
            out[c] = apply_channel_preprocessing(array[c], spec)
        except VolumeError as exc:  # e.g. a constant image: say which case
            raise VolumeError(f"case '{case_id}': {exc}") from exc
    return out


def inplane_shape(shape: Sequence[int], axis: int, size: int | None) -> tuple[int, int, int]:
    """The training-grid shape: the two axes other than ``axis`` scaled so the longer is
    ``size`` (aspect ratio kept); ``None`` keeps the shape."""
    shape = tuple(int(s) for s in shape)
    if size is None:
        return shape  # type: ignore[return-value]
    plane = [a for a in range(3) if a != axis]
    factor = size / max(shape[a] for a in plane)
    out = list(shape)
    for a in plane:
        out[a] = max(1, int(round(shape[a] * factor)))
    return tuple(out)  # type: ignore[return-value]


def resize_inplane(image: np.ndarray, labels: np.ndarray, axis: int, target: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (C, Z, Y, X) and labels (Z, Y, X) in the plane normal to ``axis``.

    The image uses area averaging when shrinking (anti-aliased) and bilinear when enlarging. Labels
    take the majority class of the covered area (a per-class area average, then argmax), which
    keeps thin structures better than nearest-neighbour picking of every other pixel.
    """
    if tuple(labels.shape) == tuple(target):
        return image, labels
    plane_target = [int(t) for a, t in enumerate(target) if a != axis]
    shrinking = all(t <= s for t, s in zip(plane_target, [labels.shape[a] for a in range(3) if a != axis]))
    mode = "area" if shrinking else "bilinear"
    with torch.no_grad():
        img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, axis + 1, 1)))  # (C, S, A, B)
        c, s = img.shape[:2]
        kwargs = {} if mode == "area" else {"align_corners": False}
        img = F.interpolate(img.reshape(c * s, 1, *img.shape[2:]), size=plane_target, mode=mode, **kwargs)
        image_out = np.moveaxis(img.reshape(c, s, *plane_target).numpy(), 1, axis + 1)
        lab = torch.from_numpy(np.ascontiguousarray(np.moveaxis(labels, axis, 0)))  # (S, A, B)
        best = torch.full((lab.shape[0], *plane_target), -1.0)
        best_class = torch.zeros((lab.shape[0], *plane_target), dtype=torch.uint8)
        for k in range(num_classes):  # a running argmax: memory of one class map at a time
            share = F.interpolate((lab == k).float()[:, None], size=plane_target, mode=mode, **kwargs)[:, 0]
            better = share > best
            best = torch.where(better, share, best)
            best_class[better] = k
        labels_out = np.moveaxis(best_class.numpy(), 0, axis)
    return np.ascontiguousarray(image_out, dtype=np.float32), np.ascontiguousarray(labels_out)


def scaled_spacing(spacing: Sequence[float], shape: Sequence[int], target: Sequence[int]) -> tuple[float, float, float]:
    return tuple(float(sp) * s / t for sp, s, t in zip(spacing, shape, target))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedData:
    """The cases plus what the model card must record about them."""

    cases: list[TrainingCase]
    num_classes: int
    in_channels: int
    channel_names: list[str]
    preprocessing: list[dict[str, Any]]
    modality: str | None
    spacing: tuple[float, float, float]  # median original spacing
    geometry: Volume  # first image with a 1-voxel array: the geometry template for messages/cards


def load_cases(
    sources: Iterable[CaseSource],
    *,
    axis: int,
    inplane_size: int | None,
    num_classes: int | None,
    preprocessing: list[dict[str, Any]] | None,
) -> LoadedData:
    """Read, check, preprocess and resample every case (in that order, one at a time, so peak
    memory is one raw volume plus the cache)."""
    cases: list[TrainingCase] = []
    first: Volume | None = None
    spacings = []
    in_channels: int | None = None
    for source in sources:
        image, labels = source.read()
        array, lab = check_pair(source.case_id, image, labels)
        if first is None:
            first, in_channels = image, array.shape[0]
        elif array.shape[0] != in_channels:
            raise DatasetError(
                f"case '{source.case_id}' has {array.shape[0]} channel(s), the first case has {in_channels} "
                f"(expected every case to have the same channels)"
            )
        if num_classes is not None:
            check_label_values(source.case_id, lab, num_classes, _where(image, labels))
        elif int(lab.min()) < 0 or int(lab.max()) > 255:
            check_label_values(source.case_id, lab, 256, _where(image, labels))
        specs = preprocessing or default_preprocessing(image, array.shape[0])
        preprocessing = list(specs)
        lab_u8 = np.asarray(lab, dtype=np.uint8)
        target = inplane_shape(lab.shape, axis, inplane_size)
        # Resampled one case at a time so only one raw float volume is alive beside the cache.
        img_t, lab_t = resize_inplane(preprocess(array, specs, source.case_id), lab_u8, axis, target, int(lab_u8.max()) + 1)
        spacings.append(image.spacing)
        cases.append(
            TrainingCase(
                case_id=source.case_id,
                image=img_t,
                labels=lab_t,
                labels_full=lab_u8,
                spacing=scaled_spacing(image.spacing, lab.shape, target),
                source=None if image.source is None else str(image.source),
            )
        )
    if first is None:
        raise DatasetError("the training data holds no cases")
    classes = num_classes if num_classes is not None else max(2, max(int(c.labels_full.max()) for c in cases) + 1)
    names = list(first.channel_names) or [f"channel{c}" for c in range(in_channels or 1)]
    spacing = tuple(float(v) for v in np.median(np.asarray(spacings, dtype=float), axis=0))
    return LoadedData(
        cases=cases,
        num_classes=classes,
        in_channels=int(in_channels or 1),
        channel_names=names,
        preprocessing=list(preprocessing or []),
        modality=first.modality,
        spacing=spacing,  # type: ignore[arg-type]
        geometry=first,
    )
