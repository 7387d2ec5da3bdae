"""IMAGE_ADJUSTER algorithm: change an image's aspect ratio or size by cropping, padding or scaling.

Pure functions on PIL images (no I/O). Every geometric operation is expressed as one placement of the
source image on an output canvas (a per-axis scale plus an offset), so crop, pad, scale and the
subject-aware margin layout share a single renderer that only ever resamples the visible part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops

Mode = Literal["auto", "crop", "pad", "scale"]
CroppingPosition = Literal[
    "center", "top", "bottom", "left", "right", "top_left", "top_right", "bottom_left", "bottom_right"
]
Resampling = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
ScalingProportions = Literal["fit", "height", "width"]
Color = tuple[int, int, int, int]
Box = tuple[int, int, int, int]

MAX_OUTPUT_PIXELS = 100_000_000
AUTO_PAD_THRESHOLD = 0.05
_RATIO_EPSILON = 1e-9
_TRANSPARENT: Color = (0, 0, 0, 0)
_RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Margins:
    """Minimum subject margins as fractions (0..1) of the final height (top/bottom) or width (left/right)."""

    top: float = 0.0
    bottom: float = 0.0
    left: float = 0.0
    right: float = 0.0


@dataclass(frozen=True)
class AdjustParams:
    """What the caller asks for; `aspect_ratio` is width / height."""

    mode: Mode = "auto"
    aspect_ratio: float | None = None
    target_width: int | None = None
    target_height: int | None = None
    cropping_position: CroppingPosition = "center"
    margins: Margins | None = None
    resampling: Resampling = "lanczos"
    scaling_proportions: ScalingProportions = "fit"
    tolerance: float = 0.0
    pad_color: Color | None = None


@dataclass(frozen=True)
class AdjustResult:
    """The adjusted image and what was done to it (`subject_bbox` is in output pixel coordinates)."""

    image: Image.Image
    changed: bool
    applied: str
    subject_bbox: Box | None
    pad_color: Color | None


class AdjustError(ValueError):
    """An adjustment that cannot be performed with the given image and parameters."""


class _Placement(NamedTuple):
    """Output pixel = offset + scale * source pixel, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


class _Plan(NamedTuple):
    canvas: tuple[int, int]
    placement: _Placement
    applied: str


def resolve_target(width: int, height: int, params: AdjustParams) -> tuple[float, tuple[int, int] | None]:
    """Return (target aspect ratio, exact output size or None); an exact size wins over `aspect_ratio`."""
    if width < 1 or height < 1:
        raise AdjustError("the image is empty")
    target_w, target_h = params.target_width, params.target_height
    if target_w is not None or target_h is not None:
        if target_w is None or target_h is None:
            raise AdjustError("target_width and target_height must be given together")
        if target_w < 1 or target_h < 1:
            raise AdjustError("target_width and target_height must be positive")
        _check_pixels(target_w, target_h)
        return target_w / target_h, (target_w, target_h)
    ratio = params.aspect_ratio
    if ratio is None:
        raise AdjustError("no target: give aspect_ratio or target_width and target_height")
    if not (math.isfinite(ratio) and ratio > 0):
        raise AdjustError("aspect_ratio must be a positive finite number")
    return ratio, None


def background_color(image: Image.Image) -> Color:
    """Median colour of the 1-pixel border, or fully transparent when that border is mostly transparent."""
    work = _working_image(image)
    border = _border_pixels(work)
    if work.mode == "RGBA" and np.median(border[:, 3]) < 128:
        return _TRANSPARENT
    red, green, blue = (round(float(np.median(border[:, channel]))) for channel in range(3))
    return red, green, blue, 255


def detect_subject_bbox(image: Image.Image, threshold: int = 24) -> Box | None:
    """Tight (left, top, right, bottom) box of the pixels that differ from the background, or None."""
    work = _working_image(image)
    background = background_color(work)
    if background[3] == 0:
        distance = work.getchannel("A")
    else:
        # Per-pixel max channel distance, computed in 8-bit Pillow ops to stay cheap on large images.
        solid = Image.new("RGB", work.size, background[:3])
        bands = ImageChops.difference(work.convert("RGB"), solid).split()
        distance = ImageChops.lighter(ImageChops.lighter(bands[0], bands[1]), bands[2])
    mask = distance.point(lambda value: 255 if value > threshold else 0)
    return mask.getbbox()


def margins_from_reference(reference: Image.Image) -> Margins:
    """Margins that reproduce the reference image's subject framing, as fractions of its size."""
    bbox = detect_subject_bbox(reference)
    if bbox is None:
        raise AdjustError("no subject detected in the reference image")
    width, height = reference.size
    left, top, right, bottom = bbox
    return Margins(
        top=top / height, bottom=(height - bottom) / height, left=left / width, right=(width - right) / width
    )


def adjust_image(image: Image.Image, params: AdjustParams) -> AdjustResult:
    """Crop, pad, scale or lay out `image` to the requested aspect ratio or size."""
    ratio, size = resolve_target(image.width, image.height, params)
    if not 0.0 <= params.tolerance <= 1.0:
        raise AdjustError("tolerance must be between 0 and 1")
    if params.margins is not None:
        return _adjust_with_margins(image, params, ratio, size)
    if _within_tolerance(image.size, ratio, size, params.tolerance):
        return AdjustResult(image, changed=False, applied="none", subject_bbox=None, pad_color=None)
    plan = _plan(image.size, ratio, size, params)
    if plan.canvas == image.size and plan.placement == _Placement(1.0, 1.0, 0.0, 0.0):
        # Integer rounding made the request a no-op: the image already matches at pixel precision.
        return AdjustResult(image, changed=False, applied="none", subject_bbox=None, pad_color=None)
    work = _working_image(image)
    fill = params.pad_color if params.pad_color is not None else background_color(work)
    output, padded = _render(work, plan.placement, plan.canvas, fill, _RESAMPLING[params.resampling])
    return AdjustResult(
        _restore_mode(output, image.mode),
        changed=True,
        applied=plan.applied,
        subject_bbox=None,
        pad_color=fill if padded else None,
    )


def _within_tolerance(
    image_size: tuple[int, int], ratio: float, size: tuple[int, int] | None, tolerance: float
) -> bool:
    width, height = image_size
    if _ratio_difference(width / height, ratio) > max(tolerance, _RATIO_EPSILON):
        return False
    if size is None or image_size == size:
        return True
    target_w, target_h = size
    return (
        tolerance > 0
        and abs(width - target_w) / target_w <= tolerance
        and abs(height - target_h) / target_h <= tolerance
    )


def _ratio_difference(image_ratio: float, target_ratio: float) -> float:
    return abs(image_ratio - target_ratio) / target_ratio


def _plan(image_size: tuple[int, int], ratio: float, size: tuple[int, int] | None, params: AdjustParams) -> _Plan:
    mode = params.mode
    if mode == "auto":
        too_different = _ratio_difference(image_size[0] / image_size[1], ratio) > AUTO_PAD_THRESHOLD
        mode = "pad" if too_different else "crop"
    if mode == "scale" and size is not None:
        return _scale_plan(image_size, size, params.scaling_proportions)
    if mode == "crop":
        return _crop_plan(image_size, ratio, size, params.cropping_position)
    return _pad_plan(image_size, ratio, size)


def _crop_plan(
    image_size: tuple[int, int], ratio: float, size: tuple[int, int] | None, position: CroppingPosition
) -> _Plan:
    width, height = image_size
    if width / height > ratio:
        region = (min(width, max(1, round(height * ratio))), height)
    else:
        region = (width, min(height, max(1, round(width / ratio))))
    horizontal = "left" if "left" in position else "right" if "right" in position else "center"
    vertical = "top" if "top" in position else "bottom" if "bottom" in position else "center"
    left = _aligned_start(width, region[0], horizontal == "left", horizontal == "right")
    top = _aligned_start(height, region[1], vertical == "top", vertical == "bottom")
    applied = "scale" if region == image_size else "crop"
    return _resized_plan(region, _Placement(1.0, 1.0, -left, -top), size, applied)


def _aligned_start(outer: int, inner: int, at_start: bool, at_end: bool) -> int:
    if at_start:
        return 0
    return outer - inner if at_end else (outer - inner) // 2


def _pad_plan(image_size: tuple[int, int], ratio: float, size: tuple[int, int] | None) -> _Plan:
    width, height = image_size
    if width / height > ratio:
        canvas = (width, max(height, round(width / ratio)))
    else:
        canvas = (max(width, round(height * ratio)), height)
    placement = _Placement(1.0, 1.0, (canvas[0] - width) // 2, (canvas[1] - height) // 2)
    applied = "scale" if canvas == image_size else "pad"
    return _resized_plan(canvas, placement, size, applied)


def _resized_plan(canvas: tuple[int, int], placement: _Placement, size: tuple[int, int] | None, applied: str) -> _Plan:
    """Compose an unscaled placement on `canvas` with a final resize of that canvas to `size`."""
    if size is None or size == canvas:
        return _Plan(canvas, placement, applied)
    scale_x, scale_y = size[0] / canvas[0], size[1] / canvas[1]
    resized = _Placement(scale_x, scale_y, placement.offset_x * scale_x, placement.offset_y * scale_y)
    return _Plan(size, resized, applied)


def _scale_plan(image_size: tuple[int, int], size: tuple[int, int], proportions: ScalingProportions) -> _Plan:
    width, height = image_size
    target_w, target_h = size
    if proportions == "height":
        scaled = (max(1, round(width * target_h / height)), target_h)
    elif proportions == "width":
        scaled = (target_w, max(1, round(height * target_w / width)))
    else:
        factor = min(target_w / width, target_h / height)
        scaled = (min(target_w, max(1, round(width * factor))), min(target_h, max(1, round(height * factor))))
    offset_x = _centered_offset(target_w, scaled[0])
    offset_y = _centered_offset(target_h, scaled[1])
    return _Plan(size, _Placement(scaled[0] / width, scaled[1] / height, offset_x, offset_y), "scale")


def _centered_offset(outer: int, inner: int) -> int:
    """Offset of `inner` centered in `outer`; crops (negative offsets) use the same floor as crop mode."""
    return (outer - inner) // 2 if outer >= inner else -((inner - outer) // 2)


def _adjust_with_margins(
    image: Image.Image, params: AdjustParams, ratio: float, size: tuple[int, int] | None
) -> AdjustResult:
    margins = _validated_margins(params.margins)
    work = _working_image(image)
    bbox = detect_subject_bbox(work)
    if bbox is None:
        raise AdjustError("no subject detected; margins need a subject on a uniform background")
    canvas, scale, (subject_x, subject_y) = _margin_layout(bbox, margins, ratio, size, params.scaling_proportions)
    offset_x, offset_y = subject_x - scale * bbox[0], subject_y - scale * bbox[1]
    if scale == 1.0:
        # Whole-pixel offsets keep an unscaled subject free of any resampling.
        offset_x, offset_y = round(offset_x), round(offset_y)
    fill = params.pad_color if params.pad_color is not None else background_color(work)
    placement = _Placement(scale, scale, offset_x, offset_y)
    output, padded = _render(work, placement, canvas, fill, _RESAMPLING[params.resampling])
    subject = _placed_box(bbox, placement, canvas)
    return AdjustResult(
        _restore_mode(output, image.mode),
        changed=True,
        applied="margins",
        subject_bbox=subject,
        pad_color=fill if padded else None,
    )


def _validated_margins(margins: Margins | None) -> Margins:
    if margins is None:
        raise AdjustError("margins are required for a subject-aware layout")
    values = (margins.top, margins.bottom, margins.left, margins.right)
    if not all(0.0 <= value <= 1.0 for value in values):
        raise AdjustError("each margin must be between 0 and 1")
    if margins.top + margins.bottom >= 1.0 or margins.left + margins.right >= 1.0:
        raise AdjustError("opposite margins must sum to less than 1")
    return margins


def _margin_layout(
    bbox: Box, margins: Margins, ratio: float, size: tuple[int, int] | None, proportions: ScalingProportions
) -> tuple[tuple[int, int], float, tuple[float, float]]:
    """Canvas size, subject scale factor and the subject's top-left corner on the canvas."""
    box_w, box_h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    free_w, free_h = 1.0 - margins.left - margins.right, 1.0 - margins.top - margins.bottom
    if size is None:
        # Without an exact size the subject keeps its pixels; the canvas grows around it instead.
        canvas, scale, proportions = (
            _unscaled_margin_canvas(box_w / free_w, box_h / free_h, ratio),
            1.0,
            "fit",
        )
    else:
        canvas = size
        scale = _margin_scale(size[0] * free_w / box_w, size[1] * free_h / box_h, proportions)
    x = canvas[0] * margins.left
    y = canvas[1] * margins.top
    if proportions != "width":
        x += (canvas[0] * free_w - scale * box_w) / 2
    if proportions != "height":
        y += (canvas[1] * free_h - scale * box_h) / 2
    return canvas, scale, (x, y)


def _margin_scale(width_scale: float, height_scale: float, proportions: ScalingProportions) -> float:
    if proportions == "height":
        return height_scale
    if proportions == "width":
        return width_scale
    return min(width_scale, height_scale)


def _unscaled_margin_canvas(min_width: float, min_height: float, ratio: float) -> tuple[int, int]:
    if min_width / min_height < ratio:
        min_width = min_height * ratio
    else:
        min_height = min_width / ratio
    # The epsilon keeps float noise (e.g. 160.00000000000003) from adding a whole pixel.
    width, height = math.ceil(min_width - _RATIO_EPSILON), math.ceil(min_height - _RATIO_EPSILON)
    _check_pixels(width, height)
    return max(1, width), max(1, height)


def _placed_box(bbox: Box, placement: _Placement, canvas: tuple[int, int]) -> Box:
    left = round(placement.offset_x + placement.scale_x * bbox[0])
    top = round(placement.offset_y + placement.scale_y * bbox[1])
    right = round(placement.offset_x + placement.scale_x * bbox[2])
    bottom = round(placement.offset_y + placement.scale_y * bbox[3])
    width, height = canvas
    return max(0, left), max(0, top), min(width, right), min(height, bottom)


def _render(
    work: Image.Image,
    placement: _Placement,
    canvas: tuple[int, int],
    fill: Color,
    resample: Image.Resampling,
) -> tuple[Image.Image, bool]:
    """Draw `work` on a `fill`-coloured canvas per `placement`; returns (image, whether any fill shows)."""
    _check_pixels(*canvas)
    target = _placed_box((0, 0, *work.size), placement, canvas)
    piece = None
    if target[2] > target[0] and target[3] > target[1]:
        piece = _render_piece(work, placement, target, resample)
    if piece is not None and target == (0, 0, *canvas):
        return piece, False
    mode = "RGBA" if work.mode == "RGBA" or fill[3] < 255 else "RGB"
    output = Image.new(mode, canvas, fill if mode == "RGBA" else fill[:3])
    if piece is not None:
        output.paste(piece.convert(mode), target[:2])
    return output, True


def _render_piece(work: Image.Image, placement: _Placement, target: Box, resample: Image.Resampling) -> Image.Image:
    """The part of `work` that lands on the `target` rectangle of the canvas, at the target's size."""
    size = (target[2] - target[0], target[3] - target[1])
    scale_x, scale_y, offset_x, offset_y = placement
    if scale_x == 1.0 and scale_y == 1.0:
        # An unscaled placement has whole-pixel offsets: a plain crop keeps pixels bit-exact.
        left, top = target[0] - round(offset_x), target[1] - round(offset_y)
        return work.crop((left, top, left + size[0], top + size[1]))
    # The exact (fractional) inverse of the target rectangle, so only visible pixels are resampled.
    box = (
        min(max((target[0] - offset_x) / scale_x, 0.0), work.width),
        min(max((target[1] - offset_y) / scale_y, 0.0), work.height),
        min(max((target[2] - offset_x) / scale_x, 0.0), work.width),
        min(max((target[3] - offset_y) / scale_y, 0.0), work.height),
    )
    return work.resize(size, resample, box=box)


def _working_image(image: Image.Image) -> Image.Image:
    """The image as RGB, or RGBA when it carries any transparency."""
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = image.mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _restore_mode(output: Image.Image, original_mode: str) -> Image.Image:
    return output.convert("L") if original_mode == "L" and output.mode == "RGB" else output


def _border_pixels(work: Image.Image) -> NDArray[np.uint8]:
    """The 1-pixel frame of the image as an (N, channels) array, without copying the interior."""
    width, height = work.size
    strips = [(0, 0, width, 1)]
    if height > 1:
        strips.append((0, height - 1, width, height))
    if height > 2:
        strips.append((0, 1, 1, height - 1))
    if height > 2 and width > 1:
        strips.append((width - 1, 1, width, height - 1))
    channels = len(work.getbands())
    return np.concatenate([np.asarray(work.crop(strip)).reshape(-1, channels) for strip in strips], axis=0)


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_OUTPUT_PIXELS:
        raise AdjustError(f"output of {width}x{height} exceeds {MAX_OUTPUT_PIXELS} pixels")
