"""Golden tests for the IMAGE_ADJUSTER algorithm on small synthetic images."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from atelier.providers.local.image_adjuster import (
    AdjustError,
    AdjustParams,
    CroppingPosition,
    Margins,
    Resampling,
    ScalingProportions,
    adjust_image,
    background_color,
    detect_subject_bbox,
    margins_from_reference,
    resolve_target,
)

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

WHITE: RGB = (255, 255, 255)
RED: RGB = (255, 0, 0)
GREEN: RGB = (0, 255, 0)
BLUE: RGB = (0, 0, 255)
YELLOW: RGB = (255, 255, 0)
GREY: RGB = (230, 230, 230)
SUBJECT_BOX: Box = (300, 60, 340, 140)


def _product_shot() -> Image.Image:
    """400x200 white image with a red 40x80 subject at SUBJECT_BOX."""
    image = Image.new("RGB", (400, 200), WHITE)
    ImageDraw.Draw(image).rectangle((300, 60, 339, 139), fill=RED)
    return image


def _stripes(size: tuple[int, int], colors: list[RGB], *, vertical: bool) -> Image.Image:
    """Equal stripes, left to right (`vertical`) or top to bottom."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    step = (size[0] if vertical else size[1]) // len(colors)
    for index, color in enumerate(colors):
        start, end = index * step, (index + 1) * step - 1
        box = (start, 0, end, size[1] - 1) if vertical else (0, start, size[0] - 1, end)
        draw.rectangle(box, fill=color)
    return image


def _rgba_cutout() -> Image.Image:
    """60x40 transparent image with an opaque blue 20x20 subject at (20, 10)."""
    image = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((20, 10, 39, 29), fill=(*BLUE, 255))
    return image


def _pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _colors(image: Image.Image) -> set[tuple[int, ...]]:
    found = image.getcolors(maxcolors=1 << 16)
    assert found is not None
    return {color for _, color in found if isinstance(color, tuple)}


def _margins_px(bbox: Box, size: tuple[int, int]) -> Box:
    """(top, bottom, left, right) free pixels around `bbox`."""
    return bbox[1], size[1] - bbox[3], bbox[0], size[0] - bbox[2]


def _assert_close_box(actual: Box | None, expected: Box, slack: int = 1) -> None:
    assert actual is not None
    assert all(abs(a - e) <= slack for a, e in zip(actual, expected, strict=True)), (actual, expected)


# --- target resolution and errors -------------------------------------------------------------------


def test_resolve_target_from_ratio_and_from_size() -> None:
    assert resolve_target(400, 200, AdjustParams(aspect_ratio=1.5)) == (1.5, None)
    assert resolve_target(400, 200, AdjustParams(aspect_ratio=9.0, target_width=300, target_height=200)) == (
        1.5,
        (300, 200),
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (AdjustParams(), "no target"),
        (AdjustParams(target_width=100), "together"),
        (AdjustParams(target_height=100), "together"),
        (AdjustParams(aspect_ratio=0.0), "positive"),
        (AdjustParams(aspect_ratio=1.0, tolerance=1.5), "tolerance"),
        (AdjustParams(target_width=20_000, target_height=20_000), "exceeds"),
        (AdjustParams(mode="pad", aspect_ratio=1e7), "exceeds"),
    ],
)
def test_impossible_requests_raise(params: AdjustParams, message: str) -> None:
    with pytest.raises(AdjustError, match=message):
        adjust_image(_product_shot(), params)


# --- tolerance ----------------------------------------------------------------------------------------


def test_exact_match_returns_the_input_unchanged() -> None:
    image = _product_shot()
    result = adjust_image(image, AdjustParams(aspect_ratio=2.0))
    assert (result.changed, result.applied, result.image) == (False, "none", image)
    same_size = adjust_image(image, AdjustParams(target_width=400, target_height=200))
    assert (same_size.changed, same_size.image) == (False, image)


def test_difference_below_one_pixel_is_a_no_op() -> None:
    # Ratio 2.0001 rounds to the same 400x200 crop, so nothing would change.
    image = _product_shot()
    result = adjust_image(image, AdjustParams(mode="crop", aspect_ratio=2.0001))
    assert (result.changed, result.applied, result.image) == (False, "none", image)


@pytest.mark.parametrize(("tolerance", "changed"), [(0.048, False), (0.047, True), (0.0, True)])
def test_tolerance_edge_on_ratio(tolerance: float, changed: bool) -> None:
    # 400x200 is ratio 2.0; 2.1 differs by 0.1 / 2.1 = 4.76 %.
    result = adjust_image(_product_shot(), AdjustParams(aspect_ratio=2.1, tolerance=tolerance))
    assert result.changed is changed
    assert result.image.size == ((400, 200) if not changed else (400, 190))


@pytest.mark.parametrize(("tolerance", "size"), [(0.05, (400, 200)), (0.02, (410, 205)), (0.0, (410, 205))])
def test_tolerance_edge_on_exact_size(tolerance: float, size: tuple[int, int]) -> None:
    # 410x205 has the same ratio; the sizes differ by 10 / 410 = 2.4 %.
    result = adjust_image(_product_shot(), AdjustParams(target_width=410, target_height=205, tolerance=tolerance))
    assert result.image.size == size
    assert result.changed is (size != (400, 200))
    assert result.applied == ("none" if size == (400, 200) else "scale")


# --- auto -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("difference", "applied", "size"), [(0.04, "crop", (385, 200)), (0.06, "pad", (400, 212))])
def test_auto_switches_from_crop_to_pad_above_five_percent(
    difference: float, applied: str, size: tuple[int, int]
) -> None:
    result = adjust_image(_product_shot(), AdjustParams(aspect_ratio=2.0 / (1 + difference)))
    assert (result.applied, result.image.size) == (applied, size)


# --- crop -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "wide_stripe", "tall_stripe"),
    [
        ("center", 1, 1),
        ("top", 1, 0),
        ("bottom", 1, 2),
        ("left", 0, 1),
        ("right", 2, 1),
        ("top_left", 0, 0),
        ("top_right", 2, 0),
        ("bottom_left", 0, 2),
        ("bottom_right", 2, 2),
    ],
)
def test_crop_keeps_the_region_at_the_cropping_position(
    position: CroppingPosition, wide_stripe: int, tall_stripe: int
) -> None:
    colors = [RED, GREEN, BLUE]
    params = AdjustParams(mode="crop", aspect_ratio=1.0, cropping_position=position)
    wide = adjust_image(_stripes((300, 100), colors, vertical=True), params)
    tall = adjust_image(_stripes((100, 300), colors, vertical=False), params)
    assert (wide.image.size, tall.image.size) == ((100, 100), (100, 100))
    assert _colors(wide.image) == {colors[wide_stripe]}
    assert _colors(tall.image) == {colors[tall_stripe]}
    assert (wide.applied, wide.pad_color) == ("crop", None)


def test_crop_centre_uses_the_floor_of_the_half_offset() -> None:
    image = Image.new("RGB", (301, 100), WHITE)
    ImageDraw.Draw(image).line((100, 0, 100, 99), fill=RED)
    ImageDraw.Draw(image).line((200, 0, 200, 99), fill=BLUE)
    result = adjust_image(image, AdjustParams(mode="crop", aspect_ratio=1.0))
    assert result.image.size == (100, 100)
    assert (_pixel(result.image, (0, 50)), _pixel(result.image, (99, 50))) == (RED, WHITE)


def test_crop_then_resize_to_exact_size() -> None:
    image = _stripes((400, 200), [RED, GREEN, BLUE, YELLOW], vertical=True)
    params = AdjustParams(mode="crop", target_width=100, target_height=100, resampling="nearest")
    result = adjust_image(image, params)
    assert (result.image.size, result.applied) == ((100, 100), "crop")
    assert _pixel(result.image, (10, 50)) == GREEN
    assert _pixel(result.image, (90, 50)) == BLUE
    assert _colors(result.image) == {GREEN, BLUE}


# --- pad colour and padding --------------------------------------------------------------------------


def test_background_color_is_the_border_median() -> None:
    image = Image.new("RGB", (100, 50), GREY)
    image.putpixel((0, 0), (0, 0, 0))
    image.putpixel((7, 49), (10, 200, 30))
    ImageDraw.Draw(image).rectangle((40, 10, 59, 39), fill=RED)
    assert background_color(image) == (*GREY, 255)
    assert background_color(_rgba_cutout()) == (0, 0, 0, 0)


def test_pad_fills_with_the_detected_border_colour() -> None:
    image = Image.new("RGB", (100, 50), GREY)
    image.putpixel((0, 0), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((40, 10, 59, 39), fill=RED)
    result = adjust_image(image, AdjustParams(mode="pad", aspect_ratio=1.0))
    assert (result.image.size, result.applied, result.pad_color) == ((100, 100), "pad", (*GREY, 255))
    assert _pixel(result.image, (50, 5)) == GREY
    assert _pixel(result.image, (50, 95)) == GREY
    assert _pixel(result.image, (0, 25)) == (0, 0, 0)  # the image starts at y = (100 - 50) // 2
    assert _pixel(result.image, (50, 35)) == RED


def test_pad_of_transparent_cutout_is_transparent() -> None:
    result = adjust_image(_rgba_cutout(), AdjustParams(mode="pad", aspect_ratio=1.0))
    assert (result.image.size, result.image.mode, result.pad_color) == ((60, 60), "RGBA", (0, 0, 0, 0))
    assert _pixel(result.image, (0, 0)) == (0, 0, 0, 0)
    assert _pixel(result.image, (30, 30)) == (*BLUE, 255)
    assert detect_subject_bbox(result.image) == (20, 20, 40, 40)


def test_transparent_pad_colour_forces_rgba() -> None:
    params = AdjustParams(mode="pad", aspect_ratio=1.0, pad_color=(0, 0, 0, 0))
    result = adjust_image(Image.new("RGB", (40, 20), RED), params)
    assert result.image.mode == "RGBA"
    assert (_pixel(result.image, (20, 2)), _pixel(result.image, (20, 20))) == ((0, 0, 0, 0), (*RED, 255))


@pytest.mark.parametrize(("row", "color"), [(24, BLUE), (25, RED), (74, RED), (75, BLUE)])
def test_pad_centres_with_the_floor_of_the_half_offset(row: int, color: RGB) -> None:
    params = AdjustParams(mode="pad", aspect_ratio=1.0, pad_color=(*BLUE, 255))
    result = adjust_image(Image.new("RGB", (101, 50), RED), params)
    assert result.image.size == (101, 101)
    assert _pixel(result.image, (50, row)) == color


@pytest.mark.parametrize(("row", "color"), [(24, BLUE), (25, RED), (74, RED), (75, BLUE)])
def test_pad_then_resize_to_exact_size(row: int, color: RGB) -> None:
    params = AdjustParams(mode="pad", target_width=100, target_height=100, pad_color=(*BLUE, 255))
    result = adjust_image(Image.new("RGB", (200, 100), RED), params)
    assert (result.image.size, result.applied, result.pad_color) == ((100, 100), "pad", (*BLUE, 255))
    assert _pixel(result.image, (50, row)) == color


# --- scale ----------------------------------------------------------------------------------------------


def test_scale_fit_resizes_then_pads() -> None:
    params = AdjustParams(mode="scale", target_width=100, target_height=100, pad_color=(*BLUE, 255))
    result = adjust_image(Image.new("RGB", (200, 100), RED), params)
    assert (result.image.size, result.applied) == ((100, 100), "scale")
    assert [_pixel(result.image, (50, y)) for y in (24, 25, 74, 75)] == [BLUE, RED, RED, BLUE]


@pytest.mark.parametrize("proportions", ["height", "width"])
def test_scale_to_one_side_crops_the_other_centrally(proportions: ScalingProportions) -> None:
    vertical = proportions == "height"
    size = (400, 200) if vertical else (200, 400)
    image = _stripes(size, [RED, GREEN, BLUE, YELLOW], vertical=vertical)
    params = AdjustParams(
        mode="scale",
        target_width=100,
        target_height=100,
        scaling_proportions=proportions,
        resampling="nearest",
    )
    result = adjust_image(image, params)
    assert (result.image.size, result.pad_color) == ((100, 100), None)
    assert _pixel(result.image, (10, 10)) == GREEN
    assert _pixel(result.image, (90, 90)) == BLUE
    assert _colors(result.image) == {GREEN, BLUE}


@pytest.mark.parametrize("proportions", ["height", "width"])
def test_scale_to_one_side_pads_the_other_centrally(proportions: ScalingProportions) -> None:
    vertical = proportions == "height"
    image = Image.new("RGB", (100, 400) if vertical else (400, 100), RED)
    params = AdjustParams(
        mode="scale",
        target_width=100,
        target_height=100,
        scaling_proportions=proportions,
        pad_color=(*BLUE, 255),
    )
    result = adjust_image(image, params)
    assert (result.image.size, result.pad_color) == ((100, 100), (*BLUE, 255))
    # The 25-pixel band starts at (100 - 25) // 2 = 37.
    points = [(c, 50) if vertical else (50, c) for c in (36, 37, 61, 62)]
    assert [_pixel(result.image, point) for point in points] == [BLUE, RED, RED, BLUE]


def test_scale_without_exact_size_pads() -> None:
    result = adjust_image(_product_shot(), AdjustParams(mode="scale", aspect_ratio=1.0))
    assert (result.image.size, result.applied, result.pad_color) == ((400, 400), "pad", (*WHITE, 255))


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])
def test_resampling_name_selects_the_pillow_filter(resampling: Resampling) -> None:
    pattern = Image.new("L", (16, 16))
    pattern.putdata([(x * 37 + y * 91) % 256 for y in range(16) for x in range(16)])
    result = adjust_image(pattern, AdjustParams(target_width=5, target_height=5, resampling=resampling))
    assert (result.image.size, result.image.mode, result.applied) == ((5, 5), "L", "scale")
    expected = pattern.resize((5, 5), Image.Resampling[resampling.upper()])
    assert result.image.tobytes() == expected.tobytes()


def test_palette_and_la_inputs_are_normalised() -> None:
    palette = Image.new("RGB", (40, 20), RED).convert("P")
    assert adjust_image(palette, AdjustParams(mode="pad", aspect_ratio=1.0)).image.mode == "RGB"
    with_alpha = Image.new("LA", (40, 20), (128, 0))
    result = adjust_image(with_alpha, AdjustParams(mode="pad", aspect_ratio=1.0))
    assert (result.image.mode, result.pad_color) == ("RGBA", (0, 0, 0, 0))


# --- subject detection ----------------------------------------------------------------------------------


def test_detect_subject_on_uniform_background() -> None:
    assert detect_subject_bbox(_product_shot()) == SUBJECT_BOX
    assert detect_subject_bbox(Image.new("RGB", (50, 50), GREY)) is None


def test_detect_subject_on_transparent_background_ignores_faint_alpha() -> None:
    image = _rgba_cutout()
    image.putpixel((2, 2), (255, 255, 255, 20))  # below the default threshold of 24
    assert detect_subject_bbox(image) == (20, 10, 40, 30)
    assert detect_subject_bbox(image, threshold=10) == (2, 2, 40, 30)


# --- margins --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proportions", "margins", "expected"),
    [
        ("fit", Margins(0.1, 0.1, 0.1, 0.1), (60, 20, 140, 180)),
        ("fit", Margins(0.1, 0.1, 0.4, 0.4), (80, 60, 120, 140)),
        ("height", Margins(0.1, 0.1, 0.4, 0.4), (60, 20, 140, 180)),
        ("width", Margins(0.3, 0.3, 0.1, 0.1), (20, 0, 180, 200)),
    ],
)
def test_margins_with_exact_size(proportions: ScalingProportions, margins: Margins, expected: Box) -> None:
    params = AdjustParams(
        mode="crop", target_width=200, target_height=200, margins=margins, scaling_proportions=proportions
    )
    result = adjust_image(_product_shot(), params)
    assert (result.image.size, result.applied, result.changed) == ((200, 200), "margins", True)
    assert result.subject_bbox == expected
    _assert_close_box(detect_subject_bbox(result.image), expected)


def test_margins_fit_respects_every_margin_and_binds_one_axis() -> None:
    margins = Margins(top=0.1, bottom=0.2, left=0.15, right=0.05)
    params = AdjustParams(target_width=300, target_height=200, margins=margins)
    result = adjust_image(_product_shot(), params)
    assert result.subject_bbox is not None
    top, bottom, left, right = _margins_px(result.subject_bbox, (300, 200))
    assert (top, bottom) == (20, 40)  # vertical is binding: exact
    assert left >= 45
    assert right >= 15
    assert (left, right) == (130, 100)  # 70 px subject centred in the 240 px inner width


@pytest.mark.parametrize(
    ("ratio", "size", "expected", "padded"),
    [(1.0, (160, 160), (60, 40, 100, 120), False), (2.0, (320, 160), (140, 40, 180, 120), True)],
)
def test_margins_with_ratio_only_do_not_resample(
    ratio: float, size: tuple[int, int], expected: Box, padded: bool
) -> None:
    image = _product_shot()
    result = adjust_image(image, AdjustParams(aspect_ratio=ratio, margins=Margins(0.25, 0.25, 0.25, 0.25)))
    assert (result.image.size, result.subject_bbox) == (size, expected)
    # The 400x200 source covers the square canvas; the 320-pixel-wide one shows padding on the right.
    assert result.pad_color == ((*WHITE, 255) if padded else None)
    assert _pixel(result.image, (size[0] - 1, 80)) == WHITE
    assert detect_subject_bbox(result.image) == expected
    assert result.image.crop(expected).tobytes() == image.crop(SUBJECT_BOX).tobytes()


def test_margins_from_reference_round_trip() -> None:
    reference = Image.new("RGB", (300, 300), WHITE)
    ImageDraw.Draw(reference).rectangle((30, 60, 239, 269), fill=BLUE)
    margins = margins_from_reference(reference)
    assert margins == pytest.approx(Margins(top=0.2, bottom=0.1, left=0.1, right=0.2))
    params = AdjustParams(target_width=300, target_height=300, margins=margins, resampling="bilinear")
    result = adjust_image(_product_shot(), params)
    # s = min(210 / 40, 210 / 80): the subject is 105x210, centred horizontally in the 210-pixel inner width.
    assert result.subject_bbox == (82, 60, 188, 270)
    _assert_close_box(detect_subject_bbox(result.image), (82, 60, 188, 270))
    again = margins_from_reference(result.image)
    assert (again.top, again.bottom) == pytest.approx((0.2, 0.1), abs=1.5 / 300)


@pytest.mark.parametrize(
    ("margins", "message"),
    [
        (Margins(top=0.5, bottom=0.5), "sum"),
        (Margins(left=0.7, right=0.3), "sum"),
        (Margins(top=-0.1), "between 0 and 1"),
        (Margins(right=1.5), "between 0 and 1"),
    ],
)
def test_invalid_margins_raise(margins: Margins, message: str) -> None:
    with pytest.raises(AdjustError, match=message):
        adjust_image(_product_shot(), AdjustParams(aspect_ratio=1.0, margins=margins))


def test_margins_without_subject_raise() -> None:
    blank = Image.new("RGB", (100, 100), GREY)
    with pytest.raises(AdjustError, match="no subject detected"):
        adjust_image(blank, AdjustParams(aspect_ratio=1.0, margins=Margins(0.1, 0.1, 0.1, 0.1)))
    with pytest.raises(AdjustError, match="no subject detected"):
        margins_from_reference(blank)
