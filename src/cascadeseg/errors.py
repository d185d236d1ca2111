"""The project's own exception types.

Every failure a user can cause (a bad file, a wrong parameter, a checkpoint that does not fit)
raises a subclass of :class:`CascadeSegError` whose message names the file or parameter, what was
wrong and what was expected. The GUI and the command line catch this base class and show the
message without a traceback; anything else is a bug.
"""

from __future__ import annotations


class CascadeSegError(Exception):
    """Base class for every error the user can cause and fix."""


class InputFileError(CascadeSegError):
    """A file or folder given by the user cannot be read as what was expected."""


class VolumeError(CascadeSegError):
    """Image or label data are readable but unusable (wrong dims, NaN, constant, mismatched)."""


class GeometryMismatchError(VolumeError):
    """Two volumes that must share a voxel grid (image and label) do not."""


class ModelConfigError(CascadeSegError):
    """A model name or option is unknown or inconsistent."""


class CheckpointError(CascadeSegError):
    """A checkpoint folder is missing, corrupt, mismatched with its card, or from a newer format."""


class DatasetError(CascadeSegError):
    """A training or evaluation dataset is empty, incomplete or inconsistent."""


class OutputExistsError(CascadeSegError):
    """Refusing to overwrite a file or folder the user owns without an explicit flag."""


class CancelledError(CascadeSegError):
    """Raised inside long work when the user cancelled it; callers treat it as a clean stop."""


class DeviceError(CascadeSegError):
    """The requested device does not exist here, or ran out of memory even at the smallest batch."""


class TrainingError(CascadeSegError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class OutputWriteError(CascadeSegError):
    """An output cannot be written where the user asked: a read-only folder, a full disk, a name
    longer than the file system allows."""


class OutputIsInputError(OutputExistsError):
    """An output path is, or would replace, one of the inputs: refused whatever the flags say
    (``overwrite`` is consent to replace earlier outputs, never the data being read)."""


class InsufficientMemoryError(CascadeSegError):
    """A file or a computation needs more memory than this machine has available; refused before
    anything large is allocated."""


class RunFolderBusyError(OutputExistsError):
    """Another live process holds the run folder (a second training or resume into it)."""
