"""DETAIL_ENHANCER: a sharp logo restored into a real photo where a degraded copy of it was pasted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from atelier.providers.local.detail_enhancer import (
    DetailEnhancerError,
    DetailParams,
    enhance_detail,
    locate_detail,
)

Box = tuple[int, int, int, int]
PLACE = (380, 250)  # where the logo is pasted in the 600 x 400 coffee photo
DARKEN = 0.7


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _logo() -> Image.Image:
    """A 40 x 30 distinctive pattern: a 5 px checker on the left, a red triangle and a blue bar on the right."""
    logo = Image.new("RGB", (40, 30), (240, 240, 240))
    draw = ImageDraw.Draw(logo)
    for y in range(0, 30, 5):
        for x in range(0, 20, 5):
            if (x // 5 + y // 5) % 2 == 0:
                draw.rectangle((x, y, x + 4, y + 4), fill=(20, 20, 20))
    draw.polygon([(22, 27), (38, 27), (30, 4)], fill=(200, 30, 30))
    draw.rectangle((22, 1, 38, 3), fill=(30, 60, 200))
    return logo


def _base() -> Image.Image:
    return Image.fromarray(data.coffee())  # type: ignore[no-untyped-call]


def _degraded_scene(logo: Image.Image, place: tuple[int, int]) -> tuple[Image.Image, Box]:
    """The coffee photo with ``logo`` pasted at ``place``, then blurred and darkened there."""
    base = _base()
    box = (place[0], place[1], place[0] + logo.width, place[1] + logo.height)
    base.paste(logo, place)
    degraded = logo.filter(ImageFilter.GaussianBlur(1.5)).point(lambda v: round(v * DARKEN))
    base.paste(degraded, place)
    return base, box


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_restores_a_degraded_logo() -> None:
    logo = _logo()
    scene, box = _degraded_scene(logo, PLACE)
    params = DetailParams()
    result = enhance_detail(scene, logo, params, label="logo")

    assert not result.fallback_used
    assert result.located is not None
    assert result.match_score is not None
    assert result.match_score >= params.min_score
    assert _iou(result.located, box) >= 0.8
    assert result.image.size == scene.size
    assert result.image.mode == scene.mode

    # Expected: the sharp logo in the base's (darkened) lighting.
    expected = np.asarray(logo, dtype=float) * DARKEN
    before = np.asarray(scene.crop(box))
    after = np.asarray(result.image.crop(box))
    inner = (slice(params.feather_px, -params.feather_px), slice(params.feather_px, -params.feather_px))
    assert _mae(after, expected) < _mae(before, expected)
    assert _mae(after[inner], expected[inner]) < _mae(before[inner], expected[inner])
    # Far from the box nothing changes (and nothing outside the located box changes at all).
    loc = result.located
    outside = np.ones((scene.height, scene.width), dtype=bool)
    outside[loc[1] : loc[3], loc[0] : loc[2]] = False
    assert np.array_equal(np.asarray(scene)[outside], np.asarray(result.image)[outside])


def test_reference_not_in_image_falls_back() -> None:
    scene = _base()
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8))
    result = enhance_detail(scene, noise, DetailParams())
    assert result.fallback_used
    assert result.match_score is None or result.match_score < DetailParams().min_score
    assert result.notes
    assert result.image is not scene
    assert np.array_equal(np.asarray(result.image), np.asarray(scene))


def test_scaled_placement_is_found() -> None:
    logo = _logo()
    big = logo.resize((50, 38), Image.Resampling.LANCZOS)  # pasted at 1.25x
    scene, box = _degraded_scene(big, (120, 60))
    found = locate_detail(scene, logo, DetailParams().scales)
    assert found is not None
    located, score = found
    assert score >= DetailParams().min_score
    assert _iou(located, box) >= 0.8
    only_unit_scale = locate_detail(scene, logo, (1.0,))
    assert only_unit_scale is not None
    assert only_unit_scale[1] < score


def test_large_base_is_searched_downscaled() -> None:
    logo = _logo()
    scene, box = _degraded_scene(logo, PLACE)
    big = scene.resize((1800, 1200), Image.Resampling.BICUBIC)  # searched at 1024 x 683
    found = locate_detail(big, logo.resize((120, 90), Image.Resampling.BICUBIC), (1.0,))
    assert found is not None
    assert _iou(found[0], tuple(3 * v for v in box)) >= 0.7  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_other_modes_work(mode: str) -> None:
    logo = _logo()
    scene, _ = _degraded_scene(logo, PLACE)
    scene = scene.convert(mode)
    result = enhance_detail(scene, logo, DetailParams())
    assert not result.fallback_used
    assert result.image.mode == mode
    assert not np.array_equal(np.asarray(result.image), np.asarray(scene))


def test_cancellation_propagates_and_bad_params() -> None:
    class JobCancelledError(Exception):
        pass

    def cancel() -> None:
        raise JobCancelledError

    logo = _logo()
    with pytest.raises(JobCancelledError):
        enhance_detail(_base(), logo, DetailParams(), check_cancelled=cancel)
    with pytest.raises(DetailEnhancerError):
        enhance_detail(_base(), logo, DetailParams(scales=()))
    with pytest.raises(DetailEnhancerError):
        enhance_detail(_base(), logo, DetailParams(feather_px=-1))
