"""Few-shot adaptation: start from a shipped model, and map its input channels onto new data.

A handful of annotated cases from another source (other channels, thicker slices) is the user's
core loop, and from scratch it rarely learns in a CPU budget. Two pieces make a shipped model a
starting point for such data:

* :func:`pick_starting_checkpoint`: the shipped model whose task fits the data (same number of
  classes, same modality family, a network the planned 2D/3D can run), used by the planner when
  the data has few patients and the user named no checkpoint and no architecture;
* :func:`map_channels` and :func:`inflate_input_weights`: a network trained on ``FLAIR`` applied
  to ``T1c + FLAIR`` data. Channels are matched by name (case-insensitive, common aliases); a
  one-channel network on unnamed channels spreads its input weights evenly over every new
  channel (each gets ``w / C``: on C copies of the old input the network computes exactly what it
  did, and fine-tuning then learns which channel carries what). Unmatched extra channels of a
  multi-channel network start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from ..inference.checkpoint import CheckpointEntry, ModelCard, available_checkpoints
from ..io.channels import canonical_channel

if TYPE_CHECKING:  # torch is imported where tensors are made: the Train dock imports this module
    import torch


def map_channels(card_names: Sequence[str], data_names: Sequence[str]) -> list[int | None]:
    """For each data channel, the index of the card channel it feeds (``None``: none).

    Names are matched through :func:`canonical_channel`. A one-channel card on data whose
    channels are not named after any modality maps every data channel to it (spread evenly by
    :func:`inflate_input_weights`)."""
    card_keys = [canonical_channel(n) for n in card_names]
    mapping: list[int | None] = []
    for name in data_names:
        key = canonical_channel(name)
        mapping.append(card_keys.index(key) if key is not None and key in card_keys else None)
    if all(m is None for m in mapping) and len(card_names) == 1:
        return [0] * len(data_names)
    return mapping


def inflate_input_weights(
    state: dict[str, torch.Tensor], model: torch.nn.Module, old_in: int, mapping: Sequence[int | None]
) -> dict[str, torch.Tensor]:
    """``state`` (a network with ``old_in`` input channels) made to fit ``model`` (``len(mapping)``
    input channels). Only tensors whose second dimension holds the input channels change: a
    convolution on the input (``old_in`` -> ``new_in``) or a cascade's stage-2 convolution on
    ``cat([input, stage-1 probabilities])`` (input channels first). Any other mismatch is refused."""
    import torch

    new_in = len(mapping)
    spread: dict[int, int] = {}
    for m in mapping:
        if m is not None:
            spread[m] = spread.get(m, 0) + 1
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        want = target.get(key)
        if want is None or want.shape == tensor.shape:
            out[key] = tensor
            continue
        same_rest = want.ndim == tensor.ndim and want.shape[0] == tensor.shape[0] and want.shape[2:] == tensor.shape[2:]
        if not (same_rest and want.ndim >= 2 and want.shape[1] - tensor.shape[1] == new_in - old_in):
            raise CheckpointError(
                f"cannot adapt tensor '{key}' from {tuple(tensor.shape)} to {tuple(want.shape)}: only the input "
                f"channels ({old_in} -> {new_in}) may change"
            )
        new = torch.zeros(want.shape, dtype=tensor.dtype)
        for j, m in enumerate(mapping):
            if m is not None:
                new[:, j] = tensor[:, m] / spread[m]
        new[:, new_in:] = tensor[:, old_in:]
        out[key] = new
    return out


def _modality_family(card: ModelCard) -> str:
    types = {str((ch.get("preprocessing") or {}).get("type")) for ch in card.input_channels}
    return "CT" if types == {"ct_window"} else "MR"


def pick_starting_checkpoint(
    *, num_classes: int, modality: str | None, dims: int, entries: Sequence[CheckpointEntry] | None = None
) -> tuple[CheckpointEntry | None, str]:
    """The shipped checkpoint to fine-tune for data of this kind, and why (or why none)."""
    family = "CT" if modality == "CT" else "MR"
    candidates = []
    for entry in entries if entries is not None else available_checkpoints():
        if entry.source != "shipped":
            continue
        card = entry.card
        if card.num_classes != num_classes or card.dims != dims or _modality_family(card) != family:
            continue
        dice = card.dice_for_depth(card.recommended_depth or 1) or 0.0
        candidates.append((dice, entry))
    if not candidates:
        return None, f"no shipped {dims}D {family} model with {num_classes} classes to start from"
    dice, best = max(candidates, key=lambda item: item[0])
    return best, (
        f"shipped '{best.name}' ({best.card.architecture}, {family}, {num_classes} classes; "
        f"held-out Dice {dice:.3f}): few patients learn more from a trained network than from scratch"
    )


def describe_mapping(card: ModelCard, data_names: Sequence[str], mapping: Sequence[int | None]) -> str:
    parts = []
    for name, m in zip(data_names, mapping):
        parts.append(f"{name} <- {card.channel_names[m]}" if m is not None else f"{name} <- (new, zero weights)")
    return "; ".join(parts)


def load_for_data(
    init: str, in_channels: int, data_names: Sequence[str], context_slices: int | None = None
) -> tuple[Any, ModelCard, list[int | None]]:
    """The init checkpoint's network adapted to ``in_channels`` named ``data_names`` (weights
    inflated as :func:`inflate_input_weights` says), its card, and the channel mapping.

    ``context_slices``: the slices per sample the new run reads (``None``: the checkpoint's). A
    one-slice checkpoint becomes 2.5D with its weights on the centre slice and zeros on the
    neighbours, so it starts out computing exactly what it did; another change is refused."""
    from ..inference.checkpoint import load_checkpoint, resolve_checkpoint

    folder = resolve_checkpoint(init)
    model, card = load_checkpoint(folder, device=None)
    members = card.ensemble_members
    if members > 1:
        # An ensemble is fine-tuned from its first member: one network trains, as from any checkpoint.
        import dataclasses

        model, card = model.members[0], dataclasses.replace(card, ensemble_members=1)
    old_in = len(card.input_channels)
    context = card.context_slices if context_slices is None else int(context_slices)
    if context != card.context_slices and card.context_slices != 0:
        raise CheckpointError(
            f"init checkpoint '{init}' reads {2 * card.context_slices + 1} slices per sample "
            f"(context_slices={card.context_slices}); fine-tune it with the same context_slices"
        )
    if (
        context == card.context_slices
        and in_channels == old_in
        and [canonical_channel(n) for n in data_names]
        in ([canonical_channel(n) for n in card.channel_names], [None] * old_in)
    ):
        return model, card, list(range(old_in))
    mapping = map_channels(card.channel_names, data_names)
    window = 2 * context + 1
    network_old_in = card.network_in_channels
    # Data channel c, slice s of the window feeds what the checkpoint's channel fed, at the
    # centre slice only (a one-slice checkpoint) or at the same slice (the same context).
    network_mapping: list[int | None] = []
    for m in mapping:
        for s in range(window):
            if m is None:
                network_mapping.append(None)
            elif card.context_slices == context:
                network_mapping.append(m * window + s)
            else:
                network_mapping.append(m if s == context else None)
    options = dict(card.model_options, in_channels=in_channels * window)
    from ..models import create_model

    adapted = create_model(card.architecture, **{k: v for k, v in options.items()})
    # The weights as loaded above (an ensemble's first member's), not a second read of the file.
    state = inflate_input_weights(model.state_dict(), adapted, network_old_in, network_mapping)
    adapted.load_state_dict(state, strict=True)
    return adapted, card, mapping


def check_labels_fit(card: ModelCard, values: set[int] | None, name: str) -> None:
    """Label values must be classes the checkpoint was set up for (its input channels may differ:
    :func:`load_for_data` maps them)."""
    if values is None:
        return
    unknown = sorted(values - set(card.class_values))
    if unknown:
        known = ", ".join(f"{c['value']} ({c.get('name', '')})" for c in card.classes)
        raise CheckpointError(
            f"the labels hold value(s) {unknown} but model '{name}' was set up for classes {known}; "
            "relabel them, or start a fresh model"
        )
