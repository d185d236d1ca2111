"""Several trained networks of one architecture that answer as one: nnU-Net's ensemble.

nnU-Net ships the five networks of its cross-validation and averages their softmax
probabilities; independently trained networks make partly independent mistakes, so the average
is better than the typical member. :class:`ModelEnsemble` does the same behind the zoo's output
contract, so the predictor, pruning depths, test-time mirroring, the Compare view and the CLI
use an ensemble exactly as they use one network.

What is averaged: the class probabilities (softmax over the class channel) of ``logits``, of every
pruning head, cascade stage and auxiliary output, and the presence probabilities (sigmoid) of the
classification-guided modules. An averaged probability ``p`` is returned as ``log p`` (a valid
logit: softmax gives ``p`` back exactly), computed as ``logsumexp(log_softmax) - log n`` so that
confident members do not underflow. Attention coefficients are already in [0, 1] and are
averaged as they are.

The members must be the same architecture with the same options (one card describes them); they
differ only in their weights. A checkpoint stores them as ``members.0.*``, ``members.1.*``, ...
(``ModelCard.ensemble_members``); fine-tuning an ensemble starts from its first member
(:func:`member_state`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelConfigError
from .base import SegmentationModel
from .catalogue import ModelInfo
from .output import OutputRequest, SegmentationOutput

MEMBER_PREFIX = "members."


class ModelEnsemble(nn.Module):
    """``len(members)`` networks of one architecture; ``forward`` averages their probabilities."""

    def __init__(self, members: Sequence[SegmentationModel]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ModelConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        expected = _what_it_is(members[0])
        for index, member in enumerate(members[1:], start=1):
            if _what_it_is(member) != expected:
                raise ModelConfigError(
                    f"ensemble member {index} ({_what_it_is(member)}) differs from member 0 ({expected}); "
                    "expected networks of one architecture with the same options"
                )
        self.members = nn.ModuleList(members)

    def _first(self) -> SegmentationModel:
        member = self.members[0]
        assert isinstance(member, SegmentationModel)
        return member

    # What the predictor, trainer and GUI read from a model, answered by the first member.
    @property
    def info(self) -> ModelInfo:
        return self._first().info

    @property
    def in_channels(self) -> int:
        return self._first().in_channels

    @property
    def num_classes(self) -> int:
        return self._first().num_classes

    @property
    def dims(self) -> int:
        return self._first().dims

    @property
    def max_depth(self) -> int:
        return self._first().max_depth

    @property
    def size_divisor(self) -> tuple[int, ...]:
        return tuple(self._first().size_divisor)

    def check_depth(self, depth: int | None) -> int:
        return self._first().check_depth(depth)

    def check_input(self, x: Tensor) -> None:
        self._first().check_input(x)

    def forward(self, x: Tensor, depth: int | None = None, request: OutputRequest | None = None) -> SegmentationOutput:
        outputs = [member(x, depth=depth, request=request) for member in self.members]
        return average_outputs(outputs)


def _what_it_is(model: SegmentationModel) -> str:
    """What members must share, as the refusal names it."""
    return (
        f"{model.info.name}, in {model.in_channels}, classes {model.num_classes}, {model.dims}D, "
        f"depth {model.max_depth}, size divisor {tuple(model.size_divisor)}"
    )


def average_outputs(outputs: Sequence[SegmentationOutput]) -> SegmentationOutput:
    """The members' outputs averaged field by field (see the module docstring)."""

    def classes(tensors: list[Tensor]) -> Tensor:
        log_probs = torch.stack([t.float().log_softmax(dim=1) for t in tensors])
        return (torch.logsumexp(log_probs, dim=0) - math.log(len(tensors))).to(tensors[0].dtype)

    def presence(tensors: list[Tensor]) -> Tensor:
        # log of the mean sigmoid against log of the mean complement: the logit of the mean probability.
        stacked = torch.stack([t.float() for t in tensors])
        yes = torch.logsumexp(nn.functional.logsigmoid(stacked), dim=0)
        no = torch.logsumexp(nn.functional.logsigmoid(-stacked), dim=0)
        return (yes - no).to(tensors[0].dtype)

    def each(field: str, merge: Any) -> dict[Any, Tensor]:
        maps = [getattr(out, field) for out in outputs]
        return {key: merge([m[key] for m in maps]) for key in maps[0]}

    def mean(tensors: list[Tensor]) -> Tensor:
        return torch.stack(tensors).mean(dim=0)

    classification = [out.classification for out in outputs]
    return SegmentationOutput(
        logits=classes([out.logits for out in outputs]),
        heads=each("heads", classes),
        aux=each("aux", classes),
        stages=each("stages", classes),
        attention=each("attention", mean),
        classification=None if classification[0] is None else presence([c for c in classification if c is not None]),
        branch_classification=each("branch_classification", presence),
    )


def member_state(state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """The weights of member ``index`` from an ensemble's state dict, named as a single network's."""
    prefix = f"{MEMBER_PREFIX}{index}."
    found = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not found:
        raise ModelConfigError(f"the ensemble's weights hold no member {index} (no tensor named {prefix}*)")
    return found


def ensemble_state(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One state dict for an ensemble of the networks whose state dicts are ``states``, in order."""
    return {f"{MEMBER_PREFIX}{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}


__all__ = ["ModelEnsemble", "average_outputs", "member_state", "ensemble_state", "MEMBER_PREFIX"]
