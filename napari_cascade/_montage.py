"""Volumes side by side in one lazy array: the Compare dock's panels as a single napari layer.

napari spends 0.1-0.5 s of GUI-thread time per layer it adds, shows for the first time or removes
(controls, visuals, shader compilation, scene graph; on 2 CPU cores under Xvfb), and its grid mode
lays every layer out again on each change. A comparison of four depths, a difference, the ground
truth and the attention maps would be a dozen layers in grid mode, each with a copy of the scan
beneath. Here every panel is a tile of one :class:`Montage`, an array-like napari slices like any
other: a slice request copies the requested slice of each tile's volume into place (a few
milliseconds for nine 512x512 tiles), and nothing is stored twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TileLayout:
    """Where each of ``count`` tiles of ``tile_shape`` (Z, Y, X) lies in the montage plane: rows
    of tiles, each tile under a title band of ``header`` pixels, ``gap`` pixels apart."""

    count: int
    tile_shape: tuple[int, int, int]
    columns: int
    gap: int
    header: int

    @classmethod
    def for_tiles(cls, count: int, tile_shape: Sequence[int], aspect: float = 16 / 9) -> TileLayout:
        """About as many columns as a ``aspect`` (width / height) screen wants; a gap of 3 % of
        the tile between tiles and a title band of 11 % above each."""
        columns = max(1, min(count, math.ceil(math.sqrt(count * aspect * tile_shape[1] / max(tile_shape[2], 1)))))
        size = max(tile_shape[1:])
        gap = max(2, int(round(0.03 * size)))
        header = max(12, int(round(0.11 * size)))
        return cls(count, tuple(int(s) for s in tile_shape), columns, gap, header)  # type: ignore[arg-type]

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.columns)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.tile_shape
        return z, self.rows * (self.header + y) + (self.rows - 1) * self.gap, \
            self.columns * x + (self.columns - 1) * self.gap

    def origin(self, index: int) -> tuple[int, int]:
        """(row, column) pixel of the tile's first voxel in the montage plane."""
        row, column = divmod(index, self.columns)
        return row * (self.header + self.tile_shape[1] + self.gap) + self.header, column * (self.tile_shape[2] + self.gap)


def text_bitmap(text: str, height: int, width: int) -> np.ndarray:
    """``text`` rendered white on black into a ``(height, width)`` boolean mask (Qt's QImage and
    QPainter: no window needed, any thread); cut at ``width``."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QColor, QFont, QImage, QPainter

    image = QImage(max(width, 1), max(height, 1), QImage.Format_Grayscale8)
    image.fill(QColor(0, 0, 0))
    painter = QPainter(image)
    font = QFont()
    font.setPixelSize(max(6, int(height * 0.7)))
    painter.setFont(font)
    painter.setPen(QColor(255, 255, 255))
    margin = max(1, height // 6)
    painter.drawText(margin, 0, width - margin, height, int(Qt.AlignLeft | Qt.AlignVCenter), text)
    painter.end()
    pointer = image.constBits()
    buffer = np.frombuffer(pointer, np.uint8, count=image.bytesPerLine() * image.height())
    return buffer.reshape(image.height(), image.bytesPerLine())[:, :image.width()] > 96


def outline(labels: np.ndarray) -> np.ndarray:
    """The in-plane border of every label of ``labels`` (..., Y, X): voxels with a 4-neighbour of
    another value (the volume's edge counts as background)."""
    padded = np.pad(labels, [(0, 0)] * (labels.ndim - 2) + [(1, 1), (1, 1)])
    inner = padded[..., 1:-1, 1:-1]
    interior = ((inner == padded[..., :-2, 1:-1]) & (inner == padded[..., 2:, 1:-1])
                & (inner == padded[..., 1:-1, :-2]) & (inner == padded[..., 1:-1, 2:]))
    return np.where(interior, 0, labels).astype(labels.dtype, copy=False)


class Montage:
    """A read-only (Z, H, W) array whose tiles are other volumes, composed on every slice request.

    ``tiles[i]`` (Z, Y, X) or ``None`` (an empty tile), optionally passed through ``luts[i]`` (a
    value -> value table, e.g. to give a difference map colours of its own). Everything outside
    the tiles is ``fill``. With ``titles`` (one per tile), each tile's title is written in its
    band with ``title_value`` (the brightest value of the dtype: white at any contrast). A tile
    with ``outlines[i]`` shows only the in-plane border of each label (a reference drawn so that
    it cannot be mistaken for a prediction).
    """

    def __init__(self, layout: TileLayout, tiles: Sequence[np.ndarray | None], dtype: Any,
                 luts: Sequence[np.ndarray | None] | None = None, fill: Any = 0,
                 titles: Sequence[str] | None = None, outlines: Sequence[bool] | None = None) -> None:
        if len(tiles) != layout.count:
            raise ValueError(f"{len(tiles)} tiles for a layout of {layout.count}")
        for tile in tiles:
            if tile is not None and tuple(tile.shape) != layout.tile_shape:
                raise ValueError(f"tile of shape {tile.shape} in a montage of {layout.tile_shape} tiles")
        self.layout = layout
        self.tiles = list(tiles)
        self.luts = list(luts) if luts is not None else [None] * len(self.tiles)
        self.outlines = list(outlines) if outlines is not None else [False] * len(self.tiles)
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self._titles: list[str] = []
        self._bitmaps: list[np.ndarray] = []
        info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else np.finfo(self.dtype)
        self.title_value = info.max
        if titles is not None:
            self.titles = list(titles)

    @property
    def titles(self) -> list[str]:
        return list(self._titles)

    @titles.setter
    def titles(self, titles: Sequence[str]) -> None:
        _, _, width = self.layout.tile_shape
        previous = dict(zip(self._titles, self._bitmaps))
        self._titles = list(titles)
        self._bitmaps = [previous[t] if t in previous else text_bitmap(t, self.layout.header, width)
                         for t in self._titles]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.layout.shape

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (3 - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (3 - len(key))
        z_key, y_key, x_key = key
        z_index = np.arange(self.shape[0])[z_key]
        planes = np.full((np.size(z_index), *self.shape[1:]), self.fill, dtype=self.dtype)
        _, tile_y, tile_x = self.layout.tile_shape
        for index, (tile, lut) in enumerate(zip(self.tiles, self.luts)):
            if tile is None:
                continue
            values = np.asarray(tile[np.atleast_1d(z_index)] if np.ndim(z_index) == 0 else tile[z_key])
            if lut is not None:
                values = lut[values]
            if self.outlines[index]:
                values = outline(values)
            row, column = self.layout.origin(index)
            planes[:, row:row + tile_y, column:column + tile_x] = values
        for index, bitmap in enumerate(self._bitmaps):
            row, column = self.layout.origin(index)
            band = planes[:, row - self.layout.header:row, column:column + tile_x]
            band[:, bitmap] = self.title_value
        out = planes[:, y_key, x_key]
        return out[0] if np.ndim(z_index) == 0 else out
