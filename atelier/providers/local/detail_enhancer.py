"""DETAIL_ENHANCER algorithm: restore a detail (logo, print, garment texture) of a base image from a reference.

Pure functions on PIL images (no I/O, no DB, no model). Uses OpenCV (``opencv-python-headless`` 4.x).

Location (:func:`locate_detail`)
--------------------------------
1. Base and reference are converted to grayscale. When the base's long side exceeds ``LOCATE_MAX_SIDE`` (1024 px)
   it is downscaled (area) by ``f = 1024 / long side``, so the work is bounded whatever the input size.
2. For each scale ``s`` in ``scales`` the reference is resized (area/bicubic) to ``s * f`` times its size;
   scales that make it larger than the (downscaled) base, smaller than ``MIN_TEMPLATE_PX`` (8 px) on a side, or
   flat (grey-level standard deviation below 1) are skipped. ``cv2.matchTemplate`` with ``TM_CCOEFF_NORMED``
   (normalised cross-correlation, insensitive to the base's brightness/contrast at that place) gives a score map;
   non-finite scores (flat base windows) count as -1.
3. The best score over all scales wins; its box is mapped back to the base's coordinates
   ``(left, top, right, bottom)`` (right/bottom exclusive). ``None`` when no scale could be tried.

Restoration (:func:`enhance_detail`)
------------------------------------
1. Locate the reference. No location, or a score below ``min_score``: the base is returned unchanged (a copy),
   ``fallback_used=True``, with a note giving the score.
2. The reference (RGB) is resized (LANCZOS) to the located box.
3. Colour match: in CIE Lab (OpenCV, float), the lightness of the resized reference is moved to the mean
   lightness of the base's box (its contrast is kept: a degraded detail has lost contrast, so matching the
   spread would copy the degradation), and each colour channel is moved to the base's mean and standard
   deviation, ``out = (ref - mean_ref) / std_ref * std_base + mean_base`` (a channel with ``std_ref < 1e-3``
   only gets its mean shifted), so the restored detail takes the base's lighting and colour cast while keeping
   the reference's sharp structure.
4. Blend: ``out = base + w * (matched - base)`` inside the box, where ``w`` is 1 in the box's interior and falls
   to 0 at its border over ``feather_px`` pixels (a smoothstep of the distance to the nearest box edge; a hard
   edge with ``feather_px = 0``). When the reference has an alpha channel, ``w`` is also multiplied by the
   reference's alpha (resized), so a transparent logo background keeps the base. Nothing outside the box changes.

Modes: RGB, RGBA, L and LA bases are returned in their own mode (the alpha is set aside and put back unchanged;
L is processed as grey RGB and converted back, only inside the box). Other modes are converted to RGB (RGBA when
they carry transparency), with a note. ``check_cancelled()`` is called before location, between scales and before
the blend; whatever it raises propagates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from atelier.providers.local.modes import split_alpha

Box = tuple[int, int, int, int]

LOCATE_MAX_SIDE = 1024
MIN_TEMPLATE_PX = 8
MIN_TEMPLATE_STD = 1.0
MIN_CHANNEL_STD = 1e-3


class DetailEnhancerError(ValueError):
    """Detail enhancement parameters or images that cannot be used."""


@dataclass(frozen=True)
class DetailParams:
    """What the caller asks for (defaults as in the API spec)."""

    min_score: float = 0.5
    feather_px: int = 8
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass
class DetailResult:
    image: Image.Image
    located: Box | None
    match_score: float | None
    fallback_used: bool
    notes: list[str] = field(default_factory=list)


def _no_op() -> None:
    return None


def _gray(image: Image.Image) -> NDArray[np.uint8]:
    return np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))


def locate_detail(
    base: Image.Image,
    reference: Image.Image,
    scales: Sequence[float],
    check_cancelled: Callable[[], None] = _no_op,
) -> tuple[Box, float] | None:
    """Best ``(box, score)`` of ``reference`` in ``base`` over ``scales`` (see module doc), or None."""
    width, height = base.size
    ref_w, ref_h = reference.size
    if min(width, height, ref_w, ref_h) == 0:
        return None
    factor = min(1.0, LOCATE_MAX_SIDE / max(width, height))
    base_img = base.convert("L")
    if factor < 1.0:
        base_img = base_img.resize(
            (max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BOX
        )
    base_gray = _gray(base_img)
    ref_img = reference.convert("L")
    best: tuple[Box, float] | None = None
    for scale in scales:
        check_cancelled()
        if not math.isfinite(scale) or scale <= 0:
            continue
        tw, th = round(ref_w * scale * factor), round(ref_h * scale * factor)
        if tw < MIN_TEMPLATE_PX or th < MIN_TEMPLATE_PX or tw > base_gray.shape[1] or th > base_gray.shape[0]:
            continue
        shrinking = tw < ref_w
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        template = _gray(ref_img.resize((tw, th), resample))
        if float(template.std()) < MIN_TEMPLATE_STD:
            continue
        scores = np.asarray(cv2.matchTemplate(base_gray, template, cv2.TM_CCOEFF_NORMED), dtype=np.float32)
        scores = np.where(np.isfinite(scores), scores, np.float32(-1.0))
        _, max_val, _, max_loc = cv2.minMaxLoc(scores)
        score = float(max_val)
        if best is None or score > best[1]:
            x, y = max_loc
            box = (
                max(0, min(width, round(x / factor))),
                max(0, min(height, round(y / factor))),
                max(0, min(width, round((x + tw) / factor))),
                max(0, min(height, round((y + th) / factor))),
            )
            if box[2] > box[0] and box[3] > box[1]:
                best = (box, score)
    return best


def _validate(params: DetailParams) -> None:
    if not math.isfinite(params.min_score) or not -1.0 <= params.min_score <= 1.0:
        raise DetailEnhancerError("min_score must be within -1..1")
    if params.feather_px < 0:
        raise DetailEnhancerError("feather_px must be >= 0")
    if not params.scales or any(not math.isfinite(s) or s <= 0 for s in params.scales):
        raise DetailEnhancerError("scales must be a non-empty list of positive numbers")


def edge_weight(width: int, height: int, feather_px: int) -> NDArray[np.float32]:
    """1 inside, falling to 0 at the border over ``feather_px`` pixels (smoothstep of the edge distance)."""
    if feather_px <= 0:
        return np.ones((height, width), dtype=np.float32)
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    dx = np.minimum(xs, width - xs)
    dy = np.minimum(ys, height - ys)
    dist = np.minimum(dy[:, None], dx[None, :])
    t = np.clip(dist / float(feather_px), 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float32)


def _lab(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab), dtype=np.float32)


def colour_match(reference: NDArray[np.uint8], target: NDArray[np.uint8]) -> NDArray[np.float32]:
    """``reference`` (RGB) moved to ``target``'s lighting (L mean) and colour cast (a/b mean+std); RGB 0..255."""
    ref_lab = _lab(reference)
    tgt_lab = _lab(target)
    out = np.empty_like(ref_lab)
    for c in range(3):
        ref_c, tgt_c = ref_lab[:, :, c], tgt_lab[:, :, c]
        ref_std = float(ref_c.std())
        # Lightness keeps the reference's contrast (the degraded detail lost exactly that); only its mean moves
        # to the base's, which carries the lighting. Colour channels match mean and spread (the colour cast).
        if c == 0 or ref_std < MIN_CHANNEL_STD:
            out[:, :, c] = ref_c - float(ref_c.mean()) + float(tgt_c.mean())
        else:
            out[:, :, c] = (ref_c - float(ref_c.mean())) * (float(tgt_c.std()) / ref_std) + float(tgt_c.mean())
    rgb = np.asarray(cv2.cvtColor(out, cv2.COLOR_Lab2RGB), dtype=np.float32)
    return np.asarray(np.clip(rgb, 0.0, 1.0) * 255.0, dtype=np.float32)


def enhance_detail(
    base: Image.Image,
    reference: Image.Image,
    params: DetailParams,
    label: str | None = None,
    check_cancelled: Callable[[], None] = _no_op,
) -> DetailResult:
    """Restore ``reference``'s detail where it is found in ``base`` (see module doc)."""
    _validate(params)
    name = f"detail {label!r}" if label else "detail"
    notes: list[str] = []
    check_cancelled()
    found = locate_detail(base, reference, params.scales, check_cancelled)
    if found is None or found[1] < params.min_score:
        if found is None:
            notes.append(f"{name} not located: no scale fits the base image (or the reference is flat)")
        else:
            notes.append(f"{name} not located: best match score {found[1]:.3f} below min_score {params.min_score:.3f}")
        return DetailResult(
            image=base.copy(),
            located=found[0] if found else None,
            match_score=found[1] if found else None,
            fallback_used=True,
            notes=notes,
        )
    box, score = found
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    check_cancelled()

    rgb, alpha, mode = split_alpha(base, notes)
    region = rgb[top:bottom, left:right]
    ref_rgb = np.asarray(reference.convert("RGB").resize((box_w, box_h), Image.Resampling.LANCZOS), dtype=np.uint8)
    matched = colour_match(ref_rgb, region)
    weight = edge_weight(box_w, box_h, params.feather_px)
    if "A" in reference.getbands() or "transparency" in reference.info:
        ref_alpha = reference.convert("RGBA").getchannel("A").resize((box_w, box_h), Image.Resampling.BILINEAR)
        weight = weight * (np.asarray(ref_alpha, dtype=np.float32) / 255.0)
    blended = region.astype(np.float32) + weight[:, :, None] * (matched - region.astype(np.float32))
    patch = np.asarray(np.clip(np.rint(blended), 0, 255), dtype=np.uint8)

    out = base.convert(mode) if mode != base.mode else base.copy()
    patch_img = Image.fromarray(patch)
    if mode in ("L", "LA"):
        patch_img = patch_img.convert("L")
    if alpha is not None:
        patch_img.putalpha(alpha.crop(box))
    out.paste(patch_img, (left, top))
    notes.append(f"{name} restored at {box} (match score {score:.3f})")
    return DetailResult(image=out, located=box, match_score=score, fallback_used=False, notes=notes)
