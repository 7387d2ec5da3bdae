"""Golden tests for the BACKGROUND_FIX algorithm on small synthetic studio shots."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from atelier.providers.local.background_fix import (
    HARMONIZE_SUBJECT_STRENGTH,
    BackgroundFixError,
    FixParams,
    expand_mask,
    feather,
    fix_background,
    palette_color,
)
from atelier.tasks.enums import BackgroundFixStrategy

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

SIZE = (200, 150)
BACKDROP: RGB = (235, 235, 235)
SHADOW: RGB = (160, 160, 160)  # luma 160: between the default thresholds (150, 220)
SUBJECT: RGB = (30, 60, 200)  # luma 67: below the shadow threshold
BEIGE: RGB = (225, 205, 180)
SUBJECT_BOX: Box = (60, 25, 120, 135)  # left, top, right, bottom (exclusive), as getbbox() reports it
SHADOW_ELLIPSE: Box = (135, 110, 195, 145)
SUBJECT_CENTRE = (90, 80)  # x, y
SHADOW_CENTRE = (165, 127)
FAR_BACKDROP = ((5, 5), (195, 5), (5, 145), (195, 60))
# Small sigma so the subject centre (30 px from its edges) lies outside the blur's reach.
SHARP = FixParams(edge_blur_sigma=5.0)


def _scene(mode: str = "RGB") -> Image.Image:
    """200x150 light grey backdrop, a shadow ellipse at the lower right and a blue subject rectangle."""
    image = Image.new("RGB", SIZE, BACKDROP)
    draw = ImageDraw.Draw(image)
    draw.ellipse(SHADOW_ELLIPSE, fill=SHADOW)
    left, top, right, bottom = SUBJECT_BOX
    draw.rectangle((left, top, right - 1, bottom - 1), fill=SUBJECT)
    return image.convert(mode)


def _mask() -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    left, top, right, bottom = SUBJECT_BOX
    ImageDraw.Draw(mask).rectangle((left, top, right - 1, bottom - 1), fill=255)
    return mask


def _palette(color: RGB = BEIGE) -> Image.Image:
    return Image.new("RGB", (40, 30), color)


def _pixels(image: Image.Image) -> NDArray[np.int32]:
    return np.asarray(image, dtype=np.int32)


def _pixel(image: Image.Image, xy: tuple[int, int]) -> RGB:
    red, green, blue = _pixels(image.convert("RGB"))[xy[1], xy[0]].tolist()
    return red, green, blue


def _close(actual: RGB, expected: tuple[float, ...], tolerance: float) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _run(params: FixParams, palette: Image.Image | None = None) -> tuple[Image.Image, dict[str, Any]]:
    return fix_background(_scene(), _mask(), palette if palette is not None else _palette(), params)


# --- palette_color -----------------------------------------------------------------------------------------------


def test_palette_color_of_a_solid_image_is_that_colour() -> None:
    assert palette_color(_palette()) == BEIGE


def test_palette_color_ignores_transparent_border_and_noise() -> None:
    rng = np.random.default_rng(7)
    pixels = np.zeros((80, 120, 4), dtype=np.int32)
    pixels[...] = (255, 0, 0, 127)  # a translucent red border, larger than the interior: must be ignored
    interior = pixels[20:60, 30:90]
    interior[..., :3] = np.array(BEIGE) + rng.integers(-6, 7, size=(40, 60, 3))
    interior[..., 3] = 255
    spots = rng.random((40, 60)) < 0.25  # a minority of dark blue speckles
    interior[spots, :3] = (20, 30, 90)
    palette = Image.fromarray(pixels.astype(np.uint8))
    assert _close(palette_color(palette), BEIGE, 1)


def test_palette_color_is_the_dominant_cluster_not_a_channel_median() -> None:
    # 40 % beige, 30 % (30,30,30), 30 % (100,100,100): a per-channel median would give (100,100,100), a mean a
    # dark grey-beige; the most populated coarse bin is the beige one.
    pixels = np.zeros((10, 10, 3), dtype=np.uint8)
    pixels[:4] = BEIGE
    pixels[4:7] = (30, 30, 30)
    pixels[7:] = (100, 100, 100)
    assert palette_color(Image.fromarray(pixels)) == BEIGE


def test_palette_color_refuses_a_fully_transparent_palette() -> None:
    with pytest.raises(BackgroundFixError, match="opaque"):
        palette_color(Image.new("RGBA", (10, 10), (225, 205, 180, 0)))


# --- expand_mask / feather ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percentage", "radius"),
    [(0.0, 0), (0.005, 1), (0.02, 5), (0.04, 10), (0.3, 75)],  # diagonal of 200x150 is exactly 250
)
def test_expand_mask_grows_the_bbox_by_percentage_of_the_diagonal(percentage: float, radius: int) -> None:
    expanded = expand_mask(_mask(), percentage)
    left, top, right, bottom = SUBJECT_BOX
    expected = (
        max(0, left - radius),
        max(0, top - radius),
        min(SIZE[0], right + radius),
        min(SIZE[1], bottom + radius),
    )
    assert expanded.mode == "L"
    assert expanded.size == SIZE
    assert expanded.getbbox() == expected
    values = _pixels(expanded)
    assert set(np.unique(values).tolist()) <= {0, 255}
    # square structuring element: the bbox is filled, corners included
    assert (values[expected[1] : expected[3], expected[0] : expected[2]] == 255).all()


def test_expand_mask_dilates_grey_levels_with_their_value() -> None:
    mask = Image.new("L", (50, 50), 0)
    mask.putpixel((10, 10), 128)
    mask.putpixel((30, 30), 200)
    values = _pixels(expand_mask(mask, 2 / math.hypot(50, 50)))  # radius 2
    assert values[8:13, 8:13].tolist() == [[128] * 5] * 5
    assert values[28:33, 28:33].tolist() == [[200] * 5] * 5
    assert int(np.count_nonzero(values)) == 50


@pytest.mark.parametrize("percentage", [-0.01, 1.5, math.nan])
def test_expand_mask_refuses_out_of_range_percentage(percentage: float) -> None:
    with pytest.raises(BackgroundFixError, match="mask_expansion_percentage"):
        expand_mask(_mask(), percentage)


def test_feather_with_sigma_zero_is_identity() -> None:
    mask = _mask()
    mask.putpixel((3, 3), 77)
    assert feather(mask, 0.0).tobytes() == mask.tobytes()


def test_feather_softens_only_the_edges() -> None:
    values = _pixels(feather(_mask(), 5.0))
    assert values[SUBJECT_CENTRE[1], SUBJECT_CENTRE[0]] == 255
    assert values[5, 5] == 0
    row = values[SUBJECT_CENTRE[1], SUBJECT_BOX[2] - 3 : SUBJECT_BOX[2] + 3].tolist()
    assert all(0 < value < 255 for value in row)
    assert row == sorted(row, reverse=True)


def test_feather_refuses_a_negative_sigma() -> None:
    with pytest.raises(BackgroundFixError, match="edge_blur_sigma"):
        feather(_mask(), -1.0)


# --- REPLACE -----------------------------------------------------------------------------------------------------


def test_replace_paints_a_flat_backdrop_and_keeps_the_subject() -> None:
    out, _ = _run(FixParams(strategy="REPLACE", edge_blur_sigma=5.0))
    assert out.mode == "RGB"
    assert out.size == SIZE
    for xy in (*FAR_BACKDROP, SHADOW_CENTRE):  # the shadow is replaced too: the backdrop is flat
        assert _close(_pixel(out, xy), BEIGE, 1), xy
    assert _pixel(out, SUBJECT_CENTRE) == SUBJECT


def test_replace_edge_is_a_blend_of_subject_and_target() -> None:
    out, _ = _run(FixParams(strategy="REPLACE"))  # default sigma 20
    x_edge = SUBJECT_BOX[2] - 1  # last subject column: half-weighted by the blurred mask
    red, green, blue = _pixel(out, (x_edge, SUBJECT_CENTRE[1]))
    assert SUBJECT[0] < red < BEIGE[0]
    assert SUBJECT[1] < green < BEIGE[1]
    assert BEIGE[2] < blue < SUBJECT[2]


# --- COLOR_SHIFT -------------------------------------------------------------------------------------------------


def test_color_shift_moves_the_bright_backdrop_to_the_target() -> None:
    out, report = _run(SHARP)
    assert report["reference_color"] == (235.0, 235.0, 235.0)
    for xy in FAR_BACKDROP:
        assert _close(_pixel(out, xy), BEIGE, 3), xy


def test_color_shift_leaves_the_whole_subject_untouched() -> None:
    out, _ = _run(FixParams())  # default sigma 20: the subject edge has B > 0 but luma below the shadow threshold
    left, top, right, bottom = SUBJECT_BOX
    assert (_pixels(out)[top:bottom, left:right] == np.array(SUBJECT)).all()


def test_color_shift_keeps_shadows_below_the_shadow_threshold() -> None:
    source = _pixels(_scene())
    out, _ = _run(FixParams(shadow_threshold=170, edge_blur_sigma=5.0))  # shadow luma 160 < 170
    shadow = (source == np.array(SHADOW)).all(axis=2)
    assert int(shadow.sum()) > 1000
    assert (_pixels(out)[shadow] == np.array(SHADOW)).all()


def test_color_shift_shifts_midtones_in_proportion_to_the_ramp() -> None:
    out, _ = _run(SHARP)  # thresholds 150..220: the shadow (luma 160) takes 10/70 of the shift
    expected = tuple(s + (t - b) * 10 / 70 for s, t, b in zip(SHADOW, BEIGE, BACKDROP, strict=True))
    assert _close(_pixel(out, SHADOW_CENTRE), expected, 1)


def test_color_shift_edge_blends_monotonically() -> None:
    out, _ = _run(FixParams())  # default sigma 20: a wide transition
    row = _pixels(out)[SUBJECT_CENTRE[1], SUBJECT_BOX[2] :]  # from the subject's right edge to the image border
    for channel in range(3):
        values = row[:, channel]
        low, high = sorted((BEIGE[channel], BACKDROP[channel]))
        assert (values >= low).all()
        assert (values <= high).all()
        assert (np.diff(values) <= 0).all()  # towards the target (every channel of T is below 235)
        assert low < values[0] < high  # the first backdrop column is a blend
        assert values[-1] == BEIGE[channel]
        assert int(((values > low) & (values < high)).sum()) >= 10


def test_color_shift_preserves_the_backdrop_gradient() -> None:
    ramp = np.linspace(225, 251, SIZE[0]).round().astype(np.uint8)  # all above the light threshold
    pixels = np.repeat(np.repeat(ramp[None, :, None], SIZE[1], axis=0), 3, axis=2)
    pixels[50:100, 90:110] = SUBJECT
    image = Image.fromarray(pixels)
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle((90, 50, 109, 99), fill=255)
    out, report = fix_background(image, mask, _palette(), SHARP)
    shift = np.array(report["shift"])
    assert report["reference_color"] == pytest.approx((238.0, 238.0, 238.0), abs=1)
    moved = _pixels(out)[:20] - pixels[:20].astype(np.int32)  # rows far from the subject: B = 1, ramp = 1
    assert (np.abs(moved - shift) <= 0.5 + 1e-6).all()
    source_steps = np.diff(pixels[10, :, 0].astype(np.int32))
    assert (np.diff(_pixels(out)[10, :, 0]) == source_steps).sum() >= SIZE[0] - 10


# --- HARMONIZE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [BEIGE, (40, 90, 60)])
def test_harmonize_gives_the_subject_a_tenth_of_the_shift(target: RGB) -> None:
    out, report = _run(FixParams(strategy="HARMONIZE", edge_blur_sigma=5.0), _palette(target))
    assert HARMONIZE_SUBJECT_STRENGTH == 0.10
    assert report["reference_color"] == (235.0, 235.0, 235.0)
    expected = tuple(s + 0.1 * (t - b) for s, t, b in zip(SUBJECT, target, BACKDROP, strict=True))
    assert _close(_pixel(out, SUBJECT_CENTRE), expected, 2)
    assert _pixel(out, SUBJECT_CENTRE) != SUBJECT
    color_shift, _ = _run(FixParams(strategy="COLOR_SHIFT", edge_blur_sigma=5.0), _palette(target))
    for xy in FAR_BACKDROP:  # the backdrop is treated exactly as by COLOR_SHIFT
        assert _pixel(out, xy) == _pixel(color_shift, xy)


# --- report, modes, strategy values ------------------------------------------------------------------------------


def test_report_values() -> None:
    _, report = _run(FixParams(edge_blur_sigma=0.0))
    expanded_area = (SUBJECT_BOX[2] - SUBJECT_BOX[0] + 2) * (SUBJECT_BOX[3] - SUBJECT_BOX[1] + 2)  # 1 px expansion
    assert report == {
        "strategy": "COLOR_SHIFT",
        "target_color": BEIGE,
        "reference_color": (235.0, 235.0, 235.0),
        "shift": (-10.0, -30.0, -55.0),
        "background_share": pytest.approx(1 - expanded_area / (SIZE[0] * SIZE[1])),
        "mask_expansion_px": 1,
        "edge_blur_sigma": 0.0,
    }


def test_strategy_accepts_the_api_enum() -> None:
    out, report = _run(FixParams(strategy=BackgroundFixStrategy.REPLACE, edge_blur_sigma=5.0))
    assert report["strategy"] == "REPLACE"
    assert type(report["strategy"]) is str
    assert _close(_pixel(out, FAR_BACKDROP[0]), BEIGE, 1)


def test_rgba_input_keeps_its_alpha() -> None:
    scene = _scene("RGBA")
    alpha = Image.linear_gradient("L").resize(SIZE)
    scene.putalpha(alpha)
    out, _ = fix_background(scene, _mask(), _palette(), SHARP)
    plain, _ = _run(SHARP)
    assert out.mode == "RGBA"
    assert out.getchannel("A").tobytes() == alpha.tobytes()
    assert out.convert("RGB").tobytes() == plain.tobytes()


def test_input_without_alpha_gives_rgb() -> None:
    out, _ = fix_background(_scene("L"), _mask().convert("1"), _palette(), SHARP)
    assert out.mode == "RGB"
    assert out.size == SIZE


def test_replace_accepts_a_mask_covering_everything() -> None:
    scene = _scene()
    out, report = fix_background(scene, Image.new("L", SIZE, 255), _palette(), FixParams(strategy="REPLACE"))
    assert out.tobytes() == scene.tobytes()
    assert report["background_share"] == 0.0
    assert report["reference_color"] is None


# --- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "mask_size", "match"),
    [
        (FixParams(), (199, 150), "mask size"),
        (FixParams(shadow_threshold=200, light_threshold=200), SIZE, "shadow_threshold"),
        (FixParams(shadow_threshold=230, light_threshold=220), SIZE, "shadow_threshold"),
        (FixParams(light_threshold=300), SIZE, "light_threshold"),
        (FixParams(shadow_threshold=-1), SIZE, "shadow_threshold"),
        (FixParams(strategy="BLUR"), SIZE, "unknown strategy"),
        (FixParams(strategy="color_shift"), SIZE, "unknown strategy"),
        (FixParams(edge_blur_sigma=-2.0), SIZE, "edge_blur_sigma"),
        (FixParams(mask_expansion_percentage=1.5), SIZE, "mask_expansion_percentage"),
    ],
)
def test_refuses_impossible_input(params: FixParams, mask_size: tuple[int, int], match: str) -> None:
    with pytest.raises(BackgroundFixError, match=match):
        fix_background(_scene(), Image.new("L", mask_size, 0), _palette(), params)


@pytest.mark.parametrize("strategy", ["COLOR_SHIFT", "HARMONIZE"])
def test_refuses_a_mask_leaving_no_background(strategy: str) -> None:
    with pytest.raises(BackgroundFixError, match="no background"):
        fix_background(_scene(), Image.new("L", SIZE, 255), _palette(), FixParams(strategy=strategy))


def test_refusal_is_a_value_error() -> None:
    assert issubclass(BackgroundFixError, ValueError)


# --- size --------------------------------------------------------------------------------------------------------


def test_large_image_completes() -> None:
    size = (2048, 2048)
    image = Image.new("RGB", size, BACKDROP)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((600, 400, 1400, 1900), fill=255)
    ImageDraw.Draw(image).rectangle((600, 400, 1400, 1900), fill=SUBJECT)
    out, report = fix_background(image, mask, _palette(), FixParams(strategy="HARMONIZE"))
    assert out.size == size
    assert out.mode == "RGB"
    assert _pixel(out, (10, 10)) == BEIGE
    assert report["mask_expansion_px"] == round(0.005 * math.hypot(*size))
