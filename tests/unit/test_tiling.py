"""Tiled processing: grid shape, exact reconstruction, seamless blending."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.providers.local.tiling import plan_grid, process_tiled


@pytest.mark.parametrize(
    ("size", "tiles", "grid"),
    [((1000, 1000), 4, (2, 2)), ((2000, 500), 4, (1, 4)), ((500, 2000), 4, (4, 1)), ((300, 200), 1, (1, 1))],
)
def test_grid_follows_the_aspect_ratio(size: tuple[int, int], tiles: int, grid: tuple[int, int]) -> None:
    plan = plan_grid(size[0], size[1], tiles, overlap=16)
    assert (plan.rows, plan.cols) == grid
    covered = np.zeros((size[1], size[0]), dtype=bool)
    for left, top, right, bottom in plan.tiles:
        covered[top:bottom, left:right] = True
    assert covered.all()


def test_identity_step_reproduces_the_image_exactly() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (301, 457, 3), dtype=np.uint8)
    assert np.array_equal(process_tiled(image, lambda tile: tile, num_tiles=6, overlap=12), image)


def test_per_tile_differences_fade_across_seams() -> None:
    image = np.full((100, 400), 100, dtype=np.uint8)
    calls = iter(range(100))

    def brighten(tile: np.ndarray) -> np.ndarray:  # each tile shifted by a different amount
        return np.asarray(np.clip(tile.astype(int) + 40 * next(calls), 0, 255), dtype=np.uint8)

    out = process_tiled(image, brighten, num_tiles=2, overlap=20)
    row = out[50].astype(int)
    assert row[0] == 100 and row[-1] == 140
    steps = np.diff(row)
    assert (steps >= 0).all() and steps.max() <= 2  # a gradual ramp, no visible edge


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tiling"):
        plan_grid(0, 10, 4, 8)
    with pytest.raises(ValueError, match="shape"):
        process_tiled(np.zeros((64, 64), dtype=np.uint8), lambda t: t[1:], num_tiles=4, overlap=4)


def test_cancellation_between_tiles() -> None:
    seen = []

    def cancel() -> None:
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        process_tiled(np.zeros((64, 64), dtype=np.uint8), lambda t: t, num_tiles=4, overlap=4, check_cancelled=cancel)


def test_large_face_crops_are_enhanced_in_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    from atelier.providers.local import face_enhancer

    calls: list[int] = []
    real = process_tiled

    def counting(pixels: np.ndarray, step, num_tiles: int, overlap: int, **kw):  # type: ignore[no-untyped-def]
        calls.append(num_tiles)
        return real(pixels, step, num_tiles, overlap, **kw)

    monkeypatch.setattr("atelier.providers.local.face_enhancer.process_tiled", counting)
    rng = np.random.default_rng(5)
    big = rng.integers(60, 200, (1300, 1100, 3), dtype=np.uint8)
    out = face_enhancer._enhance_crop(big, 1.0)
    assert out.shape == big.shape and calls == [3]  # ceil(1300·1100 / 768²) tiles
    small = big[:500, :500]
    face_enhancer._enhance_crop(small, 1.0)
    assert calls == [3]  # small crops are not tiled
