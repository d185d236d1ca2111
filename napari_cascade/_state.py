"""The one object through which the docks of a viewer find each other and each other's results.

Modelled on micro-sam's ``AnnotatorState`` (one state object the annotator widgets share instead
of looking each other up), with one difference: napari-cascade docks can live in several viewers
of one process (the tests make a viewer each), so there is one :class:`CascadeState` per viewer,
from :func:`state_for`. It holds no widgets and imports no Qt: docks connect to its signals.

What it carries:

* ``model_installed(name)``: a dock installed a model in the user's models folder (the Train
  dock after a run); the Segment and Compare docks re-list their models and select it.
* ``prediction_added(layer)``: the Segment dock placed a result layer.
* ``models``: the loaded checkpoint the docks share (:class:`ModelCache`).
* the *roles* of labels layers, read from the metadata the docks write (see :func:`layer_role`):
  a prediction of the Segment dock, a working mask of the Correct-mask dock, a Compare panel, or
  anything else (a label map opened from a file, painted by hand: a reference such as the
  ground truth). The docks' defaults come from these roles: the newest prediction is what one
  corrects, and the ground truth is never offered as the mask to edit while a prediction exists.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from psygnal import Signal

from ._layers import GEOMETRY_KEY

# Where the docks record what a layer is: layer.metadata[GEOMETRY_KEY][RESULT_KEY] = {"kind": ...}.
RESULT_KEY = "result"
# Names start with what a mask is, so the layer list (which elides the end) still tells them apart.
EDITED_PREFIX = "edited · "
PREDICTION, WORKING_MASK, COMPARE, PROBABILITIES, REFERENCE = (
    "segmentation", "working mask", "compare", "probabilities", "reference",
)


def result_info(layer: Any) -> dict[str, Any] | None:
    """What a dock recorded about a layer it made (``None`` for other layers)."""
    return ((getattr(layer, "metadata", None) or {}).get(GEOMETRY_KEY) or {}).get(RESULT_KEY)


def _feature_class_names(layer: Any) -> dict[int, str]:
    """The ``index`` -> ``class`` table a dock put in a Labels layer's features (``{}`` if none)."""
    features = getattr(layer, "features", None)
    if features is None or "index" not in features or "class" not in features:
        return {}
    return {int(v): str(n) for v, n in zip(features["index"], features["class"], strict=False)}


def layer_role(layer: Any) -> str:
    """``PREDICTION``, ``WORKING_MASK``, ``COMPARE``, ``PROBABILITIES`` or ``REFERENCE`` (a layer
    no dock made: opened from a file, drawn by hand)."""
    kind = (result_info(layer) or {}).get("kind")
    return kind if kind in (PREDICTION, WORKING_MASK, COMPARE, PROBABILITIES) else REFERENCE


def created_at(layer: Any) -> float:
    """When a dock made the layer (``time.time()``); 0 for layers it did not make."""
    return float((result_info(layer) or {}).get("created", 0.0))


def newest(layers: Iterable[Any]) -> Any | None:
    """The most recently made layer; ties (layers no dock made) go to the later in the list."""
    ordered = list(layers)
    if not ordered:
        return None
    return max(enumerate(ordered), key=lambda pair: (created_at(pair[1]), pair[0]))[1]


class ModelCache:
    """The last loaded checkpoint, shared by the docks of a viewer: a re-run, or Compare after
    Segment with the same model, does not load the weights again (thread-safe: workers call it)."""

    def __init__(self) -> None:
        self._key: tuple[str, float] | None = None
        self._value: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def load(self, folder: Path) -> tuple[Any, Any]:
        """``(model, card)`` of the checkpoint ``folder`` (reloaded when its weights changed)."""
        from cascadeseg.inference.checkpoint import load_checkpoint

        weights = Path(folder) / "model.safetensors"
        key = (str(folder), weights.stat().st_mtime if weights.exists() else 0.0)
        with self._lock:
            if self._key != key or self._value is None:
                self._value = load_checkpoint(folder, device=None)
                self._key = key
            return self._value


class CascadeState:
    """Shared state of the napari-cascade docks of one viewer (see the module docstring)."""

    model_installed = Signal(str)
    prediction_added = Signal(object)
    # "Add to training set" wrote a case: {"folder": training set, "case_id": ..., "model": the
    # model whose prediction the mask was corrected from, or None}. The Train dock offers the
    # one-click fine-tune of that model on the set.
    case_added = Signal(object)

    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)
        self.models = ModelCache()

    @property
    def viewer(self) -> Any | None:
        return self._viewer()

    def labels_layers(self, role: str | None = None) -> list[Any]:
        from napari.layers import Labels

        viewer = self.viewer
        if viewer is None:
            return []
        found = [layer for layer in viewer.layers if isinstance(layer, Labels)]
        return found if role is None else [layer for layer in found if layer_role(layer) == role]

    def newest_prediction(self, shape: tuple[int, ...] | None = None) -> Any | None:
        """The newest Segment result (on a grid of ``shape`` when given)."""
        return newest(layer for layer in self.labels_layers(PREDICTION)
                      if shape is None or tuple(layer.data.shape) == tuple(shape))

    def model_behind(self, mask: Any) -> str | None:
        """The model whose prediction ``mask`` was corrected from (a working mask records its
        prediction; the prediction records its model), or ``None``."""
        info = result_info(mask) or {}
        if info.get("model"):
            return str(info["model"])
        viewer = self.viewer
        source = info.get("prediction")
        if viewer is None or not source or source not in viewer.layers:
            return None
        return (result_info(viewer.layers[source]) or {}).get("model")

    def class_names_behind(self, mask: Any) -> dict[int, str]:
        """``{label value: class name}`` of ``mask``: its own features table (a prediction's, from
        its model card), else that of the prediction it was corrected from (``{}`` when neither
        names its classes)."""
        names = _feature_class_names(mask)
        if names:
            return names
        viewer = self.viewer
        source = (result_info(mask) or {}).get("prediction")
        if viewer is None or not source or source not in viewer.layers:
            return {}
        return _feature_class_names(viewer.layers[source])

    def announce_model(self, name: str) -> None:
        """Tell the docks that model ``name`` is installed (they re-list and select it)."""
        self.model_installed.emit(name)


_STATES: weakref.WeakKeyDictionary[Any, CascadeState] = weakref.WeakKeyDictionary()


def state_for(viewer: Any) -> CascadeState:
    """The viewer's shared state (made on first use; it goes with the viewer)."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = CascadeState(viewer)
    return state


def connect_while_alive(signal: Any, widget: Any, slot: Callable[..., Any]) -> None:
    """Connect ``slot`` to a psygnal ``signal`` until the Qt ``widget`` is destroyed (a dock closed
    with its viewer still open must not be called back)."""
    signal.connect(slot)
    widget.destroyed.connect(lambda *_: signal.disconnect(slot, missing_ok=True))
