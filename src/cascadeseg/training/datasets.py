"""Training data: read the cases once, check them, preprocess them, and keep them in memory.

Three sources, one result (a list of :class:`TrainingCase`):

* an MSD / nnU-Net folder (``imagesTr/``, ``labelsTr/``), read with :func:`cascadeseg.io.load_dataset`;
* a list of ``(image_path, label_path)`` pairs;
* a list of in-memory ``(Volume, Volume)`` pairs (what the GUI hands over).

Decoded volumes are cached as preprocessed float32 on the working grid, made by the predictor's
own :func:`~cascadeseg.inference.prepare_scan`, so sampling a batch is array slicing only and
what the network trains on is what it sees at inference; the original-grid labels are kept for
patient-level validation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, GeometryMismatchError, InputFileError, VolumeError
from ..inference.predictor import NativeZoom, PreparedScan, prepare_scan
from ..io.checks import as_label_array, check_same_grid
from ..io.volume import Volume


@dataclass
class TrainingCase:
    """One case ready for sampling and validation.

    ``scan``: the image as the network sees it (:class:`~cascadeseg.inference.PreparedScan`: the
    preprocessed ``(C, Z, Y, X)`` float32 array on the working grid, and the zoom back to the
    scan's own grid), made by the predictor's own :func:`~cascadeseg.inference.prepare_scan`.
    ``labels``: ``(Z, Y, X)`` uint8 class indices on the working grid (what the loss sees).
    ``labels_full``: the labels on the scan's own grid (validation Dice is computed there).
    ``spacing``: working-grid spacing (z, y, x) in mm; ``native_spacing``: the scan's.
    """

    case_id: str
    scan: PreparedScan
    labels: np.ndarray
    labels_full: np.ndarray
    spacing: tuple[float, float, float]
    native_spacing: tuple[float, float, float]
    source: str | None = None
    body: np.ndarray | None = None  # (Z, Y, X) bool on the working grid: a loss's region of interest

    @property
    def image(self) -> np.ndarray:
        return self.scan.image

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)  # type: ignore[return-value]

    def restrict(self, axis: int, start: int, stop: int, suffix: str) -> TrainingCase:
        """The slices ``[start, stop)`` along ``axis`` as a case of its own (views, no copy).
        The indices are of the scan's own grid; along a resampled axis (3D) they are mapped onto
        the working grid for the training arrays."""
        scale = self.labels.shape[axis] / self.labels_full.shape[axis]
        w_start, w_stop = int(round(start * scale)), max(int(round(start * scale)) + 1, int(round(stop * scale)))
        working = [slice(None)] * 3
        working[axis] = slice(w_start, w_stop)
        native = [slice(None)] * 3
        native[axis] = slice(start, stop)
        if self.scan.zoom is None or abs(self.scan.zoom.scales[axis] - 1.0) < 1e-9:
            scan = self.scan.restrict(axis, start, stop)
        else:  # 3D resampled along the axis: the block's maps are zoomed onto its native slices
            shape = tuple(self.labels_full[tuple(native)].shape)
            scan = PreparedScan(
                self.scan.image[(slice(None), *working)],
                shape,  # type: ignore[arg-type]
                NativeZoom(shape, self.scan.zoom.scales),
            )
        return TrainingCase(
            case_id=f"{self.case_id}{suffix}",
            scan=scan,
            labels=self.labels[tuple(working)],
            labels_full=self.labels_full[tuple(native)],
            spacing=self.spacing,
            native_spacing=self.native_spacing,
            source=self.source,
            body=None if self.body is None else self.body[tuple(working)],
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


def dataset_class_names(data: Any) -> dict[int, str]:
    """``{label value: name}`` from the ``dataset.json`` of training data given as a dataset folder
    (``{}`` for file pairs, in-memory volumes, or a folder that names no classes)."""
    if not isinstance(data, (str, os.PathLike)):
        return {}
    from ..io.dataset import class_names  # the I/O engineer's dataset.json reader

    return class_names(Path(data))


def _folder_sources(folder: Path) -> list[CaseSource]:
    from ..io import load_dataset  # the I/O engineer's MSD reader

    if not folder.exists():
        raise InputFileError(f"training data folder '{folder}' does not exist")
    if not folder.is_dir():
        raise InputFileError(
            f"training data '{folder}' is not a folder (expected an MSD folder with imagesTr/ and labelsTr/)"
        )
    refs = load_dataset(folder)
    if not refs:
        raise DatasetError(
            f"'{folder}': the dataset folder holds no cases (expected imagesTr/<case>_0000.nii.gz files)"
        )
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


# ----------------------------------------------------------------------------------------------
# Preprocessing and resampling


def default_preprocessing(image: Volume, num_channels: int) -> list[dict[str, Any]]:
    """Per-channel preprocessing when neither the config nor the plan gives one: z-score (robust
    percentiles) for MR and unknown modality, the generic soft-tissue window for CT."""
    if (image.modality or "").upper() == "CT":
        return [{"type": "ct_window", "window": [-160, 240]}] * num_channels
    return [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}] * num_channels


# ----------------------------------------------------------------------------------------------
# Reading and preparing


@dataclass
class RawCase:
    """A case as read and checked: its image and its label array on the image's grid."""

    case_id: str
    image: Volume
    labels: np.ndarray  # (Z, Y, X) unsigned
    where: str = ""  # " (image / labels files)" for messages


def read_cases(sources: Sequence[CaseSource], num_classes: int | None, cancel: Any = None) -> list[RawCase]:
    """Read and check every case (same channels everywhere, labels on the image grid, whole
    non-negative label values that the model knows). ``cancel.is_set()`` is checked between cases."""
    from ..errors import CancelledError

    cases: list[RawCase] = []
    in_channels: int | None = None
    for source in sources:
        if cancel is not None and cancel.is_set():
            raise CancelledError("training cancelled while reading the data")
        image, labels = source.read()
        array, lab = check_pair(source.case_id, image, labels)
        if in_channels is None:
            in_channels = array.shape[0]
        elif array.shape[0] != in_channels:
            raise DatasetError(
                f"case '{source.case_id}' has {array.shape[0]} channel(s), the first case has {in_channels} "
                f"(expected every case to have the same channels)"
            )
        where = _where(image, labels)
        check_label_values(source.case_id, lab, num_classes if num_classes is not None else 256, where)
        if image.array.ndim == 3:
            image = image.with_array(image.array[None])
        cases.append(RawCase(source.case_id, image, np.asarray(lab, dtype=np.uint8), where))
    if not cases:
        raise DatasetError("the training data holds no cases")
    return cases


def prepare_case(
    raw: RawCase,
    specs: Sequence[dict[str, Any]],
    target_spacing: Sequence[float] | None,
    slice_axis: int | None,
    class_values: Sequence[int],
    *,
    body_at_inference: bool = False,
    training_body: bool = False,
) -> TrainingCase:
    """The case on the working grid through the predictor's own preparation (so training,
    validation and inference see the same array), with its labels carried onto that grid as
    output-channel indices (``class_values[i]`` is channel ``i``); ``labels_full`` keeps the
    label values on the scan's own grid, which is what the predictor writes and validation scores.

    ``body_at_inference``: the scan keeps its body mask, as the predictor's does for models whose
    paper fuses the segmentation with it; ``training_body``: the body mask on the working grid too,
    for a loss that trains inside it (:func:`cascadeseg.losses.training_region`)."""
    try:
        scan = prepare_scan(raw.image, specs, target_spacing, slice_axis, body_mask=body_at_inference or training_body)
    except (VolumeError, InputFileError) as exc:
        raise type(exc)(f"case '{raw.case_id}'{raw.where}: {exc}") from exc
    num_classes = len(class_values)
    labels = raw.labels
    if list(class_values) != list(range(num_classes)):
        channel_of = np.zeros(max(int(labels.max()), max(class_values)) + 1, dtype=np.uint8)
        channel_of[list(class_values)] = np.arange(num_classes, dtype=np.uint8)
        labels = channel_of[labels]
    spacing = tuple(float(s) for s in raw.image.spacing)
    if scan.zoom is not None:
        spacing = tuple(float(s) * z for s, z in zip(spacing, scan.zoom.scales))
        labels = resample_labels(raw.image.with_array(labels), spacing, num_classes, scan.working_shape)
    body = None
    if training_body and scan.body is not None:
        body = scan.body
        if scan.zoom is not None:
            body = resample_labels(raw.image.with_array(scan.body.astype(np.uint8)), spacing, 2, scan.working_shape) > 0
    if not body_at_inference:
        scan.body = None  # a loss's region only: the model's predictions are not fused with it
    return TrainingCase(
        case_id=raw.case_id,
        scan=scan,
        labels=np.ascontiguousarray(labels, dtype=np.uint8),
        labels_full=raw.labels,
        spacing=spacing,  # type: ignore[arg-type]  # three values: the scan's spacing scaled per axis
        native_spacing=tuple(float(s) for s in raw.image.spacing),  # type: ignore[arg-type]
        source=None if raw.image.source is None else str(raw.image.source),
        body=body,
    )


# Per-class linear resampling holds one float map per class: above this many classes nearest
# neighbour is used instead (a 117-organ CT map would otherwise need 117 float volumes).
_MAX_SOFT_LABEL_CLASSES = 16


def resample_labels(labels: Volume, spacing: Sequence[float], num_classes: int, shape: Sequence[int]) -> np.ndarray:
    """Labels onto the working grid of ``spacing`` (the same grid ``prepare_scan`` resamples the
    image to): each class's indicator resampled linearly, then the majority class, as nnU-Net
    resamples segmentations; this keeps thin structures better than nearest-neighbour picking.
    Above :data:`_MAX_SOFT_LABEL_CLASSES` classes: nearest neighbour."""
    from ..preprocessing import resample_to_spacing

    if num_classes > _MAX_SOFT_LABEL_CLASSES:
        out = resample_to_spacing(labels, spacing, is_label=True).array
    else:
        onehot = np.stack([(labels.array == k).astype(np.float32) for k in range(num_classes)])
        shares = resample_to_spacing(labels.with_array(onehot), spacing, is_label=False).array
        out = np.argmax(shares, axis=0)
    if tuple(out.shape) != tuple(shape):
        raise VolumeError(f"labels resampled to {tuple(out.shape)} but the image to {tuple(shape)}")
    return out.astype(np.uint8, copy=False)


def _where(image: Volume, labels: Volume) -> str:
    if image.source is None and labels.source is None:
        return ""
    return f" ({image.source} / {labels.source})"
