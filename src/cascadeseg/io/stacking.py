"""Stacking single- or multi-channel volumes of one case into one channel-first Volume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cascadeseg.errors import VolumeError
from cascadeseg.io.checks import check_same_grid
from cascadeseg.io.modality import infer_modality
from cascadeseg.io.volume import Volume


def stack_channels(volumes: Sequence[Volume], names: Sequence[str] | None = None) -> Volume:
    """Concatenate image volumes on the channel axis (BraTS-style ``t1, t1c, t2, flair``).

    All must lie on the first volume's grid (:class:`GeometryMismatchError` otherwise). Names
    default to the volumes' own channel names. Geometry, source and meta come from the first volume.
    Mixed dtypes are promoted once by numpy (e.g. int16 + float32 -> float32).
    """
    if not volumes:
        raise VolumeError("stack_channels: no volumes given; expected at least one image")
    for volume in volumes:
        if volume.is_label:
            raise VolumeError(f"{volume.source or 'volume'}: is a label map; expected image volumes (C, Z, Y, X)")
        check_same_grid(volume, volumes[0], what="channel")
    channel_names = list(names) if names is not None else [n for v in volumes for n in v.channel_names]
    total = sum(v.num_channels for v in volumes)
    if len(channel_names) != total:
        raise VolumeError(
            f"stack_channels: {total} channels but {len(channel_names)} names; expected one name per channel"
        )
    array = np.concatenate([v.array for v in volumes], axis=0)
    modalities = {v.modality for v in volumes} - {None}
    modality = infer_modality(array, *channel_names) or (modalities.pop() if len(modalities) == 1 else None)
    return volumes[0].with_array(array, channel_names=channel_names, modality=modality, meta=dict(volumes[0].meta))
