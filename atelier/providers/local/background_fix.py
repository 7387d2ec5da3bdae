"""BACKGROUND_FIX algorithm: recolour the backdrop of a product/fashion photo towards a palette colour.

Pure functions on PIL images (no I/O). The subject mask (white = subject, from a segmentation model) is an
input; the subject itself is left untouched (or, for ``HARMONIZE``, given a faint cast of the new light).

Algorithm
---------
1. Inputs are normalised: the image to RGB (an alpha channel, if the input has one, is set aside and put back
   unchanged), the mask to L, the palette to RGBA.
2. Target colour ``T = palette_color(palette)``: the palette's opaque pixels (alpha >= 128) are binned on a coarse
   8 x 8 x 8 RGB grid (32 levels per bin); the most populated bin gives a seed (per-channel median of its pixels);
   ``T`` is the per-channel median, rounded, of every opaque pixel within +/-32 of that seed on each channel (the
   refinement gathers a colour that straddles a bin border). Large palettes are first subsampled (nearest
   neighbour) to at most ~1 Mpx.
3. Background weight ``B = 1 - feather(expand_mask(mask, mask_expansion_percentage), edge_blur_sigma) / 255``
   in [0, 1]: the subject mask is dilated by ``round(percentage * image diagonal)`` pixels (square structuring
   element, separable sliding maximum), then Gaussian-blurred with standard deviation ``edge_blur_sigma``.
4. ``L = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601 luma) of the input, per pixel.
5. ``I_ref`` = per-channel median colour of the background pixels (``B > 0.5``); ``D = T - I_ref``.
6. Per strategy, with ``ramp(L) = clip((L - shadow_threshold) / (light_threshold - shadow_threshold), 0, 1)``:

   * ``COLOR_SHIFT``: ``out = I + B * ramp(L) * D``. The backdrop's cast moves to ``T`` while its local variation
     (gradients, the shape of shadows) is kept; shadows (``L <= shadow_threshold``) keep their darkness, the bright
     backdrop (``L >= light_threshold``) gets the full shift, and the subject (``B = 0``) is unchanged.
   * ``REPLACE``: ``out = B * T + (1 - B) * I``: a flat new backdrop with a soft edge.
   * ``HARMONIZE``: ``out = I + (B * ramp(L) + HARMONIZE_SUBJECT_STRENGTH * (1 - B)) * D``: ``COLOR_SHIFT`` plus a
     subtle cast on the subject, which is moved ``HARMONIZE_SUBJECT_STRENGTH`` (10 %) of the way along ``D``
     so it sits in the new light.

   The result is rounded to the nearest integer and clipped to 0..255.

Refused with :class:`BackgroundFixError`: a mask whose size differs from the image's, an empty image,
``shadow_threshold >= light_threshold`` or thresholds outside 0..255, a negative/non-finite sigma, an expansion
percentage outside 0..1, a palette with no opaque pixel, an unknown strategy, and - for ``COLOR_SHIFT`` and
``HARMONIZE`` - a mask that leaves no background pixel (no ``B > 0.5``, so ``I_ref`` is undefined).

Memory: the work runs on horizontal strips of about one megapixel in float32, so a 4k x 4k image needs the
uint8 input/output plus a few uint8 masks and ~50 MB of float32 scratch, never float64 copies of the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

STRATEGIES = frozenset({"COLOR_SHIFT", "REPLACE", "HARMONIZE"})
HARMONIZE_SUBJECT_STRENGTH = 0.10
"""Fraction of the backdrop shift ``T - I_ref`` applied to the subject by ``HARMONIZE``."""
OPAQUE_ALPHA = 128
"""Palette pixels with a lower alpha are ignored by :func:`palette_color`."""
PALETTE_BIN_SHIFT = 5
"""Coarse palette bins: ``channel >> 5`` gives 8 levels per channel (512 bins)."""
PALETTE_REFINE_RADIUS = 32
"""Per-channel distance to the seed colour within which palette pixels count for the final median."""
PALETTE_MAX_PIXELS = 1 << 20
STRIP_PIXELS = 1 << 20
_LUMA = (0.299, 0.587, 0.114)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class FixParams:
    """What the caller asks for (defaults as in the API spec); `strategy` also accepts a BackgroundFixStrategy."""

    strategy: str = "COLOR_SHIFT"
    edge_blur_sigma: float = 20.0
    light_threshold: int = 220
    shadow_threshold: int = 150
    mask_expansion_percentage: float = 0.005


class BackgroundFixError(ValueError):
    """A background fix that cannot be performed with the given images and parameters."""


def _median_u8(values: NDArray[np.uint8]) -> float:
    """Median of a flat uint8 array via a 256-bin histogram (mean of the two middle values for an even count)."""
    count = int(values.size)
    if count == 0:
        raise BackgroundFixError("median of an empty set")
    cumulative = np.cumsum(np.bincount(values, minlength=256))
    low = int(np.searchsorted(cumulative, (count - 1) // 2, side="right"))
    high = int(np.searchsorted(cumulative, count // 2, side="right"))
    return (low + high) / 2.0


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def palette_color(palette: Image.Image) -> RGB:
    """Target background colour: the dominant colour of the palette image.

    Method: pixels with alpha < 128 are ignored; the rest are binned on a coarse 8x8x8 RGB grid. The most
    populated bin (lowest index on a tie) gives a seed colour, the per-channel median of its pixels. The result
    is the per-channel median, rounded half up, of all opaque pixels within 32 of the seed on every channel.
    Palettes over ~1 Mpx are subsampled (nearest neighbour) first. Raises BackgroundFixError when no pixel is opaque.
    """
    width, height = palette.size
    if width * height > PALETTE_MAX_PIXELS:
        scale = math.sqrt(PALETTE_MAX_PIXELS / (width * height))
        palette = palette.resize((max(1, int(width * scale)), max(1, int(height * scale))), Image.Resampling.NEAREST)
    rgba = np.asarray(palette.convert("RGBA"), dtype=np.uint8).reshape(-1, 4)
    pixels = rgba[rgba[:, 3] >= OPAQUE_ALPHA, :3]
    if pixels.shape[0] == 0:
        raise BackgroundFixError("the palette image has no opaque pixel (alpha >= 128)")
    coarse = (pixels >> PALETTE_BIN_SHIFT).astype(np.intp)
    bins = (coarse[:, 0] << 6) | (coarse[:, 1] << 3) | coarse[:, 2]
    best = int(np.argmax(np.bincount(bins, minlength=512)))
    in_bin = pixels[bins == best]
    seed = np.array([_median_u8(in_bin[:, channel]) for channel in range(3)], dtype=np.float32)
    near = np.all(np.abs(pixels.astype(np.float32) - seed) <= PALETTE_REFINE_RADIUS, axis=1)
    chosen = pixels[near]
    red, green, blue = (_round_half_up(_median_u8(chosen[:, channel])) for channel in range(3))
    return red, green, blue


def _expansion_px(size: tuple[int, int], percentage: float) -> int:
    """Dilation radius: ``round(percentage * diagonal)``, at least 0, at most the longer side (no effect beyond)."""
    width, height = size
    return min(max(0, round(percentage * math.hypot(width, height))), max(width, height))


def _sliding_max_rows(values: NDArray[np.uint8], radius: int) -> NDArray[np.uint8]:
    """``out[i] = max(values[i - radius : i + radius + 1])`` along axis 0 (zero outside), in O(log radius) passes."""
    count = values.shape[0]
    window = 2 * radius + 1
    padded = np.zeros((count + 2 * radius, *values.shape[1:]), dtype=np.uint8)
    padded[radius : radius + count] = values
    # After each doubling, current[i] = max(padded[i : i + span]).
    current: NDArray[np.uint8] = padded
    span = 1
    while 2 * span <= window:
        current = np.maximum(current[:-span], current[span:])
        span *= 2
    if span < window:
        offset = window - span
        return np.maximum(current[:count], current[offset : offset + count])
    return current[:count]


def expand_mask(mask: Image.Image, percentage: float) -> Image.Image:
    """Dilate an L mask by ``round(percentage * image diagonal)`` pixels (at least 0).

    Grey-level dilation with a square (2r+1)^2 structuring element, computed as two separable sliding maxima
    (zero outside the image). `percentage` is a fraction in 0..1 (0.005 = 0.5 %); 0 returns an unchanged copy.
    """
    if not math.isfinite(percentage) or not 0.0 <= percentage <= 1.0:
        raise BackgroundFixError(f"mask_expansion_percentage must be within 0..1, got {percentage}")
    grey = mask.convert("L")
    radius = _expansion_px(grey.size, percentage)
    if radius == 0 or grey.width == 0 or grey.height == 0:
        return grey.copy()
    values = np.asarray(grey, dtype=np.uint8)
    dilated = _sliding_max_rows(values, radius)
    dilated = np.ascontiguousarray(_sliding_max_rows(np.ascontiguousarray(dilated.T), radius).T)
    return Image.fromarray(dilated)


def feather(mask: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur of an L mask with standard deviation `sigma` pixels (0 returns an unchanged copy)."""
    if not math.isfinite(sigma) or sigma < 0:
        raise BackgroundFixError(f"edge_blur_sigma must be a finite value >= 0, got {sigma}")
    grey = mask.convert("L")
    if sigma == 0:
        return grey.copy()
    return grey.filter(ImageFilter.GaussianBlur(sigma))


def _validate(image: Image.Image, subject_mask: Image.Image, params: FixParams) -> str:
    strategy = str(params.strategy)
    if strategy not in STRATEGIES:
        raise BackgroundFixError(f"unknown strategy {params.strategy!r}; expected one of {sorted(STRATEGIES)}")
    if image.width == 0 or image.height == 0:
        raise BackgroundFixError("the image is empty")
    if subject_mask.size != image.size:
        raise BackgroundFixError(f"mask size {subject_mask.size} differs from image size {image.size}")
    for name in ("light_threshold", "shadow_threshold"):
        value = getattr(params, name)
        if not 0 <= value <= 255:
            raise BackgroundFixError(f"{name} must be within 0..255, got {value}")
    if params.shadow_threshold >= params.light_threshold:
        raise BackgroundFixError(
            f"shadow_threshold ({params.shadow_threshold}) must be below light_threshold ({params.light_threshold})"
        )
    return strategy


def fix_background(
    image: Image.Image, subject_mask: Image.Image, palette: Image.Image, params: FixParams
) -> tuple[Image.Image, dict[str, Any]]:
    """Recolour the background of `image` towards the palette colour (see the module docstring).

    Returns the image (same size; RGB, or RGBA with the original alpha when the input had an alpha channel) and a
    report: strategy, target_color, reference_color (``I_ref``, None when there is no background), shift
    (``T - I_ref``), background_share (fraction of pixels with ``B > 0.5``), mask_expansion_px, edge_blur_sigma.
    """
    strategy = _validate(image, subject_mask, params)
    target = palette_color(palette)

    alpha: Image.Image | None = None
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        rgb_image = rgba.convert("RGB")
    else:
        rgb_image = image.convert("RGB")
    rgb = np.asarray(rgb_image, dtype=np.uint8)
    height, width = rgb.shape[:2]

    expanded = expand_mask(subject_mask.convert("L"), params.mask_expansion_percentage)
    subject = np.asarray(feather(expanded, params.edge_blur_sigma), dtype=np.uint8)
    # B = 1 - subject / 255 > 0.5  <=>  subject < 127.5
    background = subject < 128
    background_count = int(np.count_nonzero(background))

    reference: tuple[float, float, float] | None = None
    if background_count:
        red, green, blue = (_median_u8(rgb[..., channel][background]) for channel in range(3))
        reference = (red, green, blue)
    del background
    if reference is None and strategy != "REPLACE":
        raise BackgroundFixError(f"the subject mask leaves no background pixel; {strategy} needs a backdrop reference")

    target_f = np.array(target, dtype=np.float32)
    shift = target_f - np.array(reference if reference is not None else target, dtype=np.float32)
    luma = np.array(_LUMA, dtype=np.float32)
    shadow = np.float32(params.shadow_threshold)
    span = np.float32(params.light_threshold - params.shadow_threshold)
    inv255 = np.float32(1.0 / 255.0)

    out = np.empty_like(rgb)
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = rgb[top : top + rows].astype(np.float32)
        weight = np.float32(1.0) - subject[top : top + rows].astype(np.float32) * inv255  # B
        if strategy == "REPLACE":
            strip += weight[..., None] * (target_f - strip)
        else:
            ramp = strip @ luma
            ramp -= shadow
            ramp /= span
            np.clip(ramp, 0.0, 1.0, out=ramp)
            if strategy == "HARMONIZE":
                # B * ramp + s * (1 - B) = B * (ramp - s) + s
                ramp -= np.float32(HARMONIZE_SUBJECT_STRENGTH)
                ramp *= weight
                ramp += np.float32(HARMONIZE_SUBJECT_STRENGTH)
            else:
                ramp *= weight
            strip += ramp[..., None] * shift
        np.rint(strip, out=strip)
        np.clip(strip, 0.0, 255.0, out=strip)
        out[top : top + rows] = strip.astype(np.uint8)

    result = Image.fromarray(out)
    if alpha is not None:
        result.putalpha(alpha)

    report: dict[str, Any] = {
        "strategy": strategy,
        "target_color": target,
        "reference_color": reference,
        "shift": tuple(float(value) for value in shift) if reference is not None else None,
        "background_share": background_count / (width * height),
        "mask_expansion_px": _expansion_px(image.size, params.mask_expansion_percentage),
        "edge_blur_sigma": float(params.edge_blur_sigma),
    }
    return result, report
