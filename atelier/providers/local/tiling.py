"""Tiled processing with feathered overlaps, for work that must not see a whole large image at once.

The grid follows the image's aspect ratio (``num_tiles`` is a target, as in the Sartiq refiner configs);
neighbouring tiles overlap by ``overlap`` pixels and are blended with linear ramps across the overlap, whose
weights sum to one everywhere, so an identity step reproduces the input exactly and a per-tile difference
fades across the seam instead of showing as an edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Grid:
    """Tile layout: ``rows`` × ``cols`` core cells of the image, each grown by ``overlap`` on inner sides."""

    rows: int
    cols: int
    tiles: list[Box]


def _cuts(length: int, parts: int) -> list[int]:
    return [round(i * length / parts) for i in range(parts + 1)]


def plan_grid(width: int, height: int, num_tiles: int, overlap: int) -> Grid:
    """Rows × cols ≈ ``num_tiles`` with cells as square as the aspect ratio allows; boxes include the overlap."""
    if width < 1 or height < 1 or num_tiles < 1 or overlap < 0:
        raise ValueError("tiling needs a non-empty image, at least one tile and a non-negative overlap")
    cols = max(1, min(width, num_tiles, round(math.sqrt(num_tiles * width / height))))
    rows = max(1, min(height, round(num_tiles / cols)))
    xs, ys = _cuts(width, cols), _cuts(height, rows)
    tiles = [
        (
            max(0, xs[c] - overlap),
            max(0, ys[r] - overlap),
            min(width, xs[c + 1] + overlap),
            min(height, ys[r + 1] + overlap),
        )
        for r in range(rows)
        for c in range(cols)
    ]
    return Grid(rows, cols, tiles)


def _ramp(length: int, start_fade: int, end_fade: int) -> NDArray[np.float32]:
    """1 inside, rising over ``start_fade`` px at the start and falling over ``end_fade`` px at the end."""
    ramp = np.ones(length, dtype=np.float32)
    if start_fade > 0:
        ramp[:start_fade] = (np.arange(start_fade, dtype=np.float32) + 0.5) / start_fade
    if end_fade > 0:
        ramp[length - end_fade :] = np.minimum(
            ramp[length - end_fade :], ((np.arange(end_fade, dtype=np.float32) + 0.5) / end_fade)[::-1]
        )
    return ramp


def tile_weights(box: Box, width: int, height: int, overlap: int) -> NDArray[np.float32]:
    left, top, right, bottom = box
    fade = 2 * overlap  # the shared band is twice the overlap wide: fade across all of it
    xs = _ramp(right - left, fade if left > 0 else 0, fade if right < width else 0)
    ys = _ramp(bottom - top, fade if top > 0 else 0, fade if bottom < height else 0)
    return np.outer(ys, xs)


def process_tiled(
    pixels: NDArray[np.uint8],
    step: Callable[[NDArray[np.uint8]], NDArray[np.uint8]],
    num_tiles: int,
    overlap: int,
    check_cancelled: Callable[[], None] = lambda: None,
) -> NDArray[np.uint8]:
    """Apply ``step`` (same-shape in, same-shape out) tile by tile and blend the tiles back together."""
    height, width = pixels.shape[:2]
    grid = plan_grid(width, height, num_tiles, overlap)
    if len(grid.tiles) == 1:
        return step(pixels)
    total = np.zeros(pixels.shape, dtype=np.float32)
    norm = np.zeros((height, width), dtype=np.float32)
    for box in grid.tiles:
        check_cancelled()
        left, top, right, bottom = box
        out = step(pixels[top:bottom, left:right])
        if out.shape != pixels[top:bottom, left:right].shape:
            raise ValueError("a tile step must return an array of the shape it was given")
        weight = tile_weights(box, width, height, overlap)
        shaped = weight[:, :, None] if pixels.ndim == 3 else weight
        total[top:bottom, left:right] += out.astype(np.float32) * shaped
        norm[top:bottom, left:right] += weight
    normalised = total / (norm[:, :, None] if pixels.ndim == 3 else norm)
    return np.asarray(np.clip(np.rint(normalised), 0, 255), dtype=np.uint8)
