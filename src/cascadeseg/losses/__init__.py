"""The papers' losses (napari-free).

``build_loss(name, **options)`` returns a module called as ``loss(output, target, roi=None)``
(``output``: a :class:`~cascadeseg.models.output.SegmentationOutput` or bare logits; ``target``:
``(B, *spatial)`` labels) that combines deep-supervision heads, auxiliary outputs, cascade stages
and the classification-guided module the way the model's paper does. The per-output pieces are
usable alone on logits: :func:`soft_dice_loss`, :func:`focal_tversky_loss`, :func:`focal_loss`,
:func:`cross_entropy_loss`, :func:`class_frequency_weighted_ce`, :func:`lovasz_hinge_loss`,
:func:`laplace_dice_loss`, :func:`sample_matrix`, :func:`anu_focal_term`.

Training in a paper's region of interest: :func:`training_region` gives the ``roi`` for a batch
(see :mod:`.regions`); ``loss.set_epoch(epoch)`` applies a paper's per-epoch loss schedule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attribute
from ..errors import ModelConfigError

if TYPE_CHECKING:
    from torch import nn

    from .lovasz import lovasz_hinge_loss
    from .named import (
        LOSSES,
        ANUHybridLoss,
        ClassWeightedCELoss,
        DiceCELoss,
        FocalTverskyLoss,
        SoftDiceLoss,
        UNetSharpMixedLoss,
        WeightedSamplingLoss,
    )
    from .overlap import focal_tversky_loss, laplace_dice_loss, soft_dice_loss
    from .pixelwise import (
        anu_focal_term,
        class_frequency_weighted_ce,
        class_frequency_weights,
        cross_entropy_loss,
        focal_loss,
    )
    from .regions import case_body_mask, loss_region, training_region
    from .sampling import brain_regions, sample_matrix
    from .supervision import SupervisedLoss

# The names ``build_loss`` accepts, in ``named.LOSSES``'s order (a test holds the two together),
# readable without torch: the Train dock lists them as it opens, and importing torch there froze
# the window for over a second. Everything else here needs torch and is imported when first used.
LOSS_NAMES = (
    "dice",
    "dice_ce",
    "focal_tversky",
    "weighted_sampling",
    "class_weighted_ce",
    "anu_hybrid",
    "unet_sharp_mixed",
)

_SUBMODULES = {
    ".lovasz": ("lovasz_hinge_loss",),
    ".named": (
        "LOSSES",
        "ANUHybridLoss",
        "ClassWeightedCELoss",
        "DiceCELoss",
        "FocalTverskyLoss",
        "SoftDiceLoss",
        "UNetSharpMixedLoss",
        "WeightedSamplingLoss",
    ),
    ".overlap": ("component_dice_loss", "focal_tversky_loss", "laplace_dice_loss", "soft_dice_loss"),
    ".pixelwise": (
        "anu_focal_term",
        "class_frequency_weighted_ce",
        "class_frequency_weights",
        "cross_entropy_loss",
        "focal_loss",
    ),
    ".regions": ("case_body_mask", "loss_region", "training_region"),
    ".sampling": ("brain_regions", "sample_matrix"),
    ".supervision": ("SupervisedLoss",),
}
_LAZY = {name: module for module, names in _SUBMODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _LAZY, name)


def loss_names() -> list[str]:
    """Names ``build_loss`` accepts (what ``ModelInfo.default_loss`` may say)."""
    return list(LOSS_NAMES)


def build_loss(name: str, **options: Any) -> nn.Module:
    """The loss called ``name`` with its options (each class's docstring lists them and the
    paper's defaults). Unknown names and options fail naming the loss and what it accepts."""
    from .named import LOSSES

    if name not in LOSSES:
        raise ModelConfigError(f"unknown loss '{name}' (expected one of: {', '.join(LOSSES)})")
    try:
        return LOSSES[name](**options)
    except TypeError as exc:
        raise ModelConfigError(f"loss '{name}': {exc}") from exc


__all__ = [
    "ANUHybridLoss",
    "ClassWeightedCELoss",
    "DiceCELoss",
    "FocalTverskyLoss",
    "SoftDiceLoss",
    "SupervisedLoss",
    "UNetSharpMixedLoss",
    "WeightedSamplingLoss",
    "anu_focal_term",
    "brain_regions",
    "case_body_mask",
    "build_loss",
    "class_frequency_weighted_ce",
    "class_frequency_weights",
    "component_dice_loss",
    "cross_entropy_loss",
    "focal_loss",
    "focal_tversky_loss",
    "laplace_dice_loss",
    "LOSSES",
    "LOSS_NAMES",
    "loss_names",
    "loss_region",
    "lovasz_hinge_loss",
    "sample_matrix",
    "soft_dice_loss",
    "training_region",
]
