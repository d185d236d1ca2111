"""Reading and writing scans and label maps (:func:`load_volume`, :func:`load_labels`,
:func:`save_labels`, :func:`save_volume`, :func:`load_dataset`) with their geometry. See
``docs/architecture.md`` for the conventions."""

from cascadeseg.io.checks import check_same_grid, handle_non_finite
from cascadeseg.io.dataset import CaseRef, load_dataset
from cascadeseg.io.dicom import DicomSeries, list_series
from cascadeseg.io.orientation import CANONICAL_ORIENTATION
from cascadeseg.io.reader import SUPPORTED_FORMATS, load_channels, load_labels, load_volume
from cascadeseg.io.volume import Volume
from cascadeseg.io.writer import save_labels, save_volume

__all__ = [
    "CANONICAL_ORIENTATION",
    "SUPPORTED_FORMATS",
    "CaseRef",
    "DicomSeries",
    "Volume",
    "check_same_grid",
    "handle_non_finite",
    "list_series",
    "load_channels",
    "load_dataset",
    "load_labels",
    "load_volume",
    "save_labels",
    "save_volume",
]
