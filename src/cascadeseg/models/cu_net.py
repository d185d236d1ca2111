"""CU-Net: cascaded U-Net with between-net connections (Liu et al., paper 001, Sec. 2.1, Fig. 1).

* Two U-Nets whose every basic unit is a residual block of two 3x3 convolutions.
* U-Net 1 separates the whole target from the background (2 classes: background / whole, e.g.
  the whole tumour); U-Net 2 segments all ``num_classes`` classes. Labels are used as they are
  (nothing remaps them): BraTS label maps {0, 1, 2, 4} need ``num_classes=5`` (class 3 never
  occurs and is simply never predicted) unless the label files are remapped to {0, 1, 2, 3}
  beforehand (``np.where(labels == 4, 3, labels)``, as the loss tests do with the BraTS-like case).
* Between-net connections: "the features from the decoding layers of the first U-Net are
  transmitted to the corresponding encoding layers in the second U-Net by concatenation". Level
  ``l`` of U-Net 2's encoder reads ``[pool(e_2^{l-1}), d_1^l]``, at the first level
  ``[image, d_1^1]``, at the deepest level U-Net 1's bottleneck.
* Supervision: 2 branch supervisions (the two U-Nets' full-resolution outputs, ``stages``
  ``"stage1"`` and ``"stage2"``) and 8 auxiliary supervisions (at paper depth, 5 levels), one per
  lower-resolution decoding layer of each U-Net (levels 2..5 including the bottleneck), each a
  1x1 convolution to that U-Net's class count, in ``aux`` as ``"stage1_level2"`` ..
  ``"stage2_level5"`` (level numbers 1-based, level 1 being full resolution).

Choices where the paper is loose:

* Auxiliary outputs stay at their own resolution and the loss compares them with a down-scaled
  ground truth (the project's ``aux`` contract), instead of the paper's extra deconvolution to the
  input resolution per auxiliary branch: the same supervision signal, without weights that exist
  only for training and without full-size maps per branch. They are computed only when deep
  supervision is requested (``OutputRequest(heads=True)``, which training asks for).
* Final logits fuse the branches hierarchically, as the paper does at test time ("fuse ... with
  the outputs of branch1 and branch2"): ``log p(background) = log p_1(background)`` and
  ``log p(c) = log p_1(whole) + log softmax_{c >= 1}(stage 2)_c`` for the substructures. The
  result is a proper log-probability map (valid logits), so a voxel U-Net 1 calls background stays
  background and U-Net 2 only decides which substructure a target voxel is, which matches the
  paper's training of U-Net 2 on target voxels only (p1 = p2 = 0 in Eq. 2). Stage 2's own
  background channel is kept so ``stage2`` has ``num_classes`` channels like every other model.
* The non-brain mask of the paper is not part of the network: in training it reaches the loss as
  its region of interest (S1 = outside it, p1 = 0; :func:`cascadeseg.losses.training_region`), and
  at test time ``info.body_mask_at_inference`` asks the predictor to fuse the segmentation with it
  (voxels outside the brain become background), as paper 001 Sec. 2.2 does.
* The auxiliary weight omega decays as the paper's recipe says (0.1, /10 every ten epochs, down to
  1e-3): :func:`cascadeseg.models.recipes.cu_net_aux_weight`, applied by the loss's ``set_epoch``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import SegmentationModel, model_info
from .blocks.conv import Norm
from .blocks.encoder_decoder import BlockFactory, segmentation_head
from .blocks.residual import ResidualBlock
from .output import OutputRequest, SegmentationOutput
from .registry import register
from .unet import UNetBody

WHOLE_TARGET_CLASSES = 2  # U-Net 1: background / whole target


def residual_factory(dims: int, norm: Norm) -> BlockFactory:
    def make(level: int, in_ch: int, out_ch: int) -> nn.Module:
        return ResidualBlock(dims, in_ch, out_ch, norm=norm)

    return make


def hierarchical_fusion(whole: Tensor, parts: Tensor) -> Tensor:
    """Log-probabilities of all classes from a background/whole map and a substructure map."""
    log_whole = torch.log_softmax(whole, dim=1)
    log_parts = torch.log_softmax(parts[:, 1:], dim=1)
    return torch.cat([log_whole[:, :1], log_whole[:, 1:2] + log_parts], dim=1)


@register
class CUNet(SegmentationModel):
    """Cascaded U-Net with between-net connections (paper 001); see the module docstring."""

    info = model_info("cu_net")

    def __init__(self, in_channels: int, num_classes: int, dims: int, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        widths, layout = self.widths, self.level_layout(residual_factory(dims, self.norm))
        self.unet1 = UNetBody(layout, in_channels, WHOLE_TARGET_CLASSES)
        self.unet2 = UNetBody(layout, in_channels, num_classes, extra_channels=widths)
        # Auxiliary 1x1 heads on the lower-resolution decoding layers (levels 2..L, 1-based).
        self.aux1 = nn.ModuleList(segmentation_head(dims, w, WHOLE_TARGET_CLASSES) for w in widths[1:])
        self.aux2 = nn.ModuleList(segmentation_head(dims, w, num_classes) for w in widths[1:])

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        dec1 = self.unet1.features(x)
        dec2 = self.unet2.features(x, extras=dec1)
        whole = self.unet1.head(dec1[0])
        parts = self.unet2.head(dec2[0])
        out = SegmentationOutput(logits=hierarchical_fusion(whole, parts))
        if request.stages:
            out.stages = {"stage1": whole, "stage2": parts}
        if request.heads:
            for level, (head1, head2) in enumerate(zip(self.aux1, self.aux2), start=1):
                out.aux[f"stage1_level{level + 1}"] = head1(dec1[level])
                out.aux[f"stage2_level{level + 1}"] = head2(dec2[level])
        return out


__all__ = ["CUNet", "hierarchical_fusion", "residual_factory"]
