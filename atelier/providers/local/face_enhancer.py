"""FACE_ENHANCER algorithm: find faces and give each a mild local detail/contrast enhancement.

Pure functions on PIL images (no I/O, no DB, no network, no model download). Detection uses the Haar cascades that
ship inside ``opencv-python-headless`` 4.x (``cv2.data.haarcascades``); nothing else is loaded.

Detection (:func:`detect_faces`)
--------------------------------
1. The image is converted to grayscale and, when its long side exceeds ``DETECT_MAX_SIDE`` (1024 px), downscaled
   (area interpolation) so that detection work is bounded whatever the input size; the grey levels are
   histogram-equalised.
2. Pass 1: ``haarcascade_frontalface_default`` (``scaleFactor`` 1.1, ``minNeighbors`` 5, min size 24 px).
   Pass 2: ``haarcascade_profileface`` on the image and on its mirror (the cascade knows one orientation only);
   a profile box is kept only when it does not overlap (IoU <= 0.3, and not contained in) a box already found.
3. Boxes are mapped back to the input's coordinates, clipped to the image, sorted largest first and cut to
   ``max_faces``. A box is ``(left, top, right, bottom)``, right/bottom exclusive.

Enhancement (:func:`enhance_faces`)
-----------------------------------
For each face box, largest first:

1. The box is expanded by ``expand_percent`` of its size (0.5 = the box grows by 50 %, i.e. 25 % of its width and
   height on each side) and clipped to the image; this is the *region*. Nothing outside the regions is touched.
2. Attempt ``k`` (1-based) uses strength ``s = 0.5 ** (k - 1)`` (1, 0.5, 0.25, ...). The region's RGB crop is
   upscaled x2 (LANCZOS) when its long side is below 256 px; in CIE Lab, the lightness ``L`` becomes
   ``L + 0.5 * s * (CLAHE(L) - L)`` (``skimage.exposure.equalize_adapthist``, clip limit 0.01) and then gets an unsharp
   mask (Gaussian sigma 1.5 px at the working scale, amount ``0.5 * s``); ``a``/``b`` are unchanged. The result is
   converted back to RGB and downscaled (LANCZOS) to the region's size when it was upscaled.
3. It is blended into the region through a feathered elliptical mask: an ellipse inscribed in the region, inset by
   ``feather_px`` on each side, blurred with a Gaussian of sigma ``feather_px / 2`` (so the weight falls to ~0 at the
   region's border; with ``feather_px = 0`` the ellipse has a hard edge).
4. Gate: when ``ssim_threshold > 0``, ``SSIM(original region, blended region)`` (``skimage.metrics
   .structural_similarity`` on BT.601 grayscale, uint8, data range 255) must be ``>= ssim_threshold``; otherwise
   the next attempt (half the strength) is made, up to ``max_attempts``. When no attempt passes, the original
   region is kept for that face (its SSIM counts as 1.0) and ``fallback_used`` is set. With ``ssim_threshold = 0``
   the first attempt is always kept.
5. Faces are processed one after another on the running result, so overlapping regions compose.

Result: ``attempts_used`` is the largest number of attempts made for any one face (so it never exceeds
``max_attempts``); ``final_ssim_score`` is the mean SSIM of the kept crops. No face detected: the image is returned
unchanged (a copy), ``face_detected=False``, ``fallback_used=True``, ``attempts_used=0``, ``final_ssim_score=None``
and the note ``"no face detected"``. LPIPS and DISTS are always ``None``: both scorers need pretrained network
weights that are not installed here (and nothing is downloaded at run time); a note says so.

Modes: RGB, RGBA, L and LA are returned in their own mode (the alpha channel is set aside and put back unchanged;
L is processed as grey RGB and converted back). Any other mode is converted to RGB (RGBA when it carries
transparency) and returned in that mode, with a note. ``check_cancelled()`` is called before detection, before
each face and before each attempt; whatever it raises propagates.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from skimage.exposure import equalize_adapthist
from skimage.metrics import structural_similarity

from atelier.providers.local.modes import split_alpha
from atelier.providers.local.tiling import process_tiled

Box = tuple[int, int, int, int]

DETECT_MAX_SIDE = 1024
"""Detection runs on a copy whose long side is at most this many pixels."""
UPSCALE_BELOW = 256
"""Regions whose long side is below this are enhanced at x2 resolution."""
CLAHE_CLIP_LIMIT = 0.01
CLAHE_BLEND = 0.5
"""At strength 1 the lightness moves half-way to its CLAHE result (full CLAHE over-accentuates skin texture)."""
UNSHARP_SIGMA = 1.5
UNSHARP_AMOUNT = 0.5
PROFILE_OVERLAP_IOU = 0.3
MIN_FACE_PX = 24
MIN_SSIM_SIDE = 7
"""SSIM's default 7x7 window needs at least this many pixels on each side."""
TILE_ABOVE = 1024  # larger face crops (4K portraits) are enhanced in tiles of about TILE_AREA pixels
TILE_AREA = 768 * 768
TILE_OVERLAP = 32
LPIPS_DISTS_NOTE = "LPIPS/DISTS scorers need model weights that are not installed"

_FRONTAL_CASCADE = "haarcascade_frontalface_default.xml"
_PROFILE_CASCADE = "haarcascade_profileface.xml"
_CASCADE_LOCK = threading.Lock()  # CascadeClassifier.detectMultiScale is not documented as thread-safe


class FaceEnhancerError(ValueError):
    """Face enhancement parameters that cannot be used."""


@dataclass(frozen=True)
class FaceParams:
    """What the caller asks for (defaults as in the API spec)."""

    expand_percent: float = 0.5
    feather_px: int = 16
    ssim_threshold: float = 0.0
    max_attempts: int = 2
    max_faces: int = 8


@dataclass
class FaceResult:
    image: Image.Image
    face_detected: bool
    faces: list[Box]
    attempts_used: int
    fallback_used: bool
    final_ssim_score: float | None
    final_lpips_score: float | None
    final_dists_score: float | None
    notes: list[str] = field(default_factory=list)


def _no_op() -> None:
    return None


@lru_cache(maxsize=2)
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = str(importlib.import_module("cv2.data").haarcascades) + name  # cv2's stubs do not declare cv2.data
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise RuntimeError(f"OpenCV Haar cascade {name} could not be loaded from {path}")
    return classifier


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _detect(classifier: cv2.CascadeClassifier, gray: NDArray[np.uint8]) -> list[Box]:
    with _CASCADE_LOCK:
        found = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE_PX, MIN_FACE_PX))
    return [(int(x), int(y), int(x + w), int(y + h)) for (x, y, w, h) in found]


def detect_faces(image: Image.Image, max_faces: int = 8) -> list[Box]:
    """Face boxes ``(left, top, right, bottom)`` in ``image``'s coordinates, largest first (see module doc)."""
    if max_faces < 1:
        return []
    width, height = image.size
    if width == 0 or height == 0:
        return []
    gray_img = image.convert("L")
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    if scale < 1.0:
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray_img = gray_img.resize(small, Image.Resampling.BOX)
    gray = np.ascontiguousarray(np.asarray(gray_img, dtype=np.uint8))
    gray = np.asarray(cv2.equalizeHist(gray), dtype=np.uint8)
    small_w = gray.shape[1]

    boxes = _detect(_cascade(_FRONTAL_CASCADE), gray)
    profile = _cascade(_PROFILE_CASCADE)
    candidates = _detect(profile, gray)
    mirrored = np.ascontiguousarray(gray[:, ::-1])
    candidates += [(small_w - r, t, small_w - left, b) for (left, t, r, b) in _detect(profile, mirrored)]
    for cand in candidates:
        if all(_iou(cand, kept) <= PROFILE_OVERLAP_IOU and not _contains(kept, cand) for kept in boxes):
            boxes.append(cand)

    mapped: list[Box] = []
    for left, top, right, bottom in boxes:
        box = (
            max(0, min(width, math.floor(left / scale))),
            max(0, min(height, math.floor(top / scale))),
            max(0, min(width, math.ceil(right / scale))),
            max(0, min(height, math.ceil(bottom / scale))),
        )
        if box[2] > box[0] and box[3] > box[1]:
            mapped.append(box)
    mapped.sort(key=lambda b: ((b[2] - b[0]) * (b[3] - b[1]), -b[1], -b[0]), reverse=True)
    return mapped[:max_faces]


def expand_box(box: Box, expand_percent: float, size: tuple[int, int]) -> Box:
    """``box`` grown by ``expand_percent`` of its width/height (half on each side), clipped to ``size``."""
    left, top, right, bottom = box
    dx = (right - left) * expand_percent / 2.0
    dy = (bottom - top) * expand_percent / 2.0
    return (
        max(0, math.floor(left - dx)),
        max(0, math.floor(top - dy)),
        min(size[0], math.ceil(right + dx)),
        min(size[1], math.ceil(bottom + dy)),
    )


def _validate(params: FaceParams) -> None:
    if not math.isfinite(params.expand_percent) or params.expand_percent < 0:
        raise FaceEnhancerError("expand_percent must be a finite number >= 0")
    if params.feather_px < 0:
        raise FaceEnhancerError("feather_px must be >= 0")
    if not math.isfinite(params.ssim_threshold) or not 0.0 <= params.ssim_threshold <= 1.0:
        raise FaceEnhancerError("ssim_threshold must be within 0..1")
    if params.max_attempts < 1:
        raise FaceEnhancerError("max_attempts must be >= 1")
    if params.max_faces < 1:
        raise FaceEnhancerError("max_faces must be >= 1")


def elliptical_mask(width: int, height: int, feather_px: int) -> NDArray[np.float32]:
    """Weights in 0..1: an ellipse inscribed in ``width x height``, inset by ``feather_px``, Gaussian-feathered."""
    inset_x = min(float(feather_px), width / 4.0)
    inset_y = min(float(feather_px), height / 4.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    rx = max(width / 2.0 - inset_x, 0.5)
    ry = max(height / 2.0 - inset_y, 0.5)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1.0).astype(np.float32)
    if feather_px > 0:
        mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), sigmaX=feather_px / 2.0), dtype=np.float32)
    return np.asarray(np.clip(mask, 0.0, 1.0), dtype=np.float32)


def _enhance_crop(crop: NDArray[np.uint8], strength: float) -> NDArray[np.uint8]:
    """The enhanced crop; crops above TILE_ABOVE px are worked tile by tile with feathered seams."""
    height, width = crop.shape[:2]
    if max(width, height) <= TILE_ABOVE:
        return _enhance_region(crop, strength)
    tiles = math.ceil(width * height / TILE_AREA)
    return process_tiled(crop, lambda tile: _enhance_region(tile, strength), num_tiles=tiles, overlap=TILE_OVERLAP)


def _enhance_region(crop: NDArray[np.uint8], strength: float) -> NDArray[np.uint8]:
    """The enhanced version of an RGB uint8 crop (same size), at ``strength`` in (0, 1]."""
    height, width = crop.shape[:2]
    work = crop
    upscaled = max(width, height) < UPSCALE_BELOW
    if upscaled:
        big = Image.fromarray(crop).resize((width * 2, height * 2), Image.Resampling.LANCZOS)
        work = np.asarray(big, dtype=np.uint8)
    rgb = work.astype(np.float32) / 255.0
    lab = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab), dtype=np.float32)
    lightness = lab[:, :, 0] / 100.0
    equalised = np.asarray(equalize_adapthist(np.clip(lightness, 0.0, 1.0), clip_limit=CLAHE_CLIP_LIMIT))
    lightness = lightness + CLAHE_BLEND * strength * (equalised.astype(np.float32) - lightness)
    blurred = np.asarray(cv2.GaussianBlur(lightness, (0, 0), sigmaX=UNSHARP_SIGMA), dtype=np.float32)
    lightness = lightness + UNSHARP_AMOUNT * strength * (lightness - blurred)
    lab[:, :, 0] = np.clip(lightness, 0.0, 1.0) * 100.0
    out_rgb = np.asarray(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), dtype=np.float32)
    out = np.asarray(np.clip(np.rint(out_rgb * 255.0), 0, 255), dtype=np.uint8)
    if upscaled:
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
    return out


def _gray(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if rgb.ndim == 2:
        return rgb
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def ssim(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Grayscale SSIM of two same-shape uint8 images (RGB or gray), window clamped for small crops."""
    ga, gb = _gray(a), _gray(b)
    side = min(ga.shape)
    win = MIN_SSIM_SIDE if side >= MIN_SSIM_SIDE else (side if side % 2 else side - 1)
    if win < 3:
        return 1.0 if np.array_equal(ga, gb) else 0.0
    return float(structural_similarity(ga, gb, data_range=255, win_size=win))  # type: ignore[no-untyped-call]


def merge_alpha(rgb: NDArray[np.uint8], alpha: Image.Image | None, mode: str) -> Image.Image:
    out = Image.fromarray(rgb)
    if mode in ("L", "LA"):
        out = out.convert("L")
    if alpha is not None:
        out.putalpha(alpha)
    return out


def enhance_faces(image: Image.Image, params: FaceParams, check_cancelled: Callable[[], None] = _no_op) -> FaceResult:
    """Detect faces and enhance each one (see module doc)."""
    _validate(params)
    notes: list[str] = []
    check_cancelled()
    boxes = detect_faces(image, params.max_faces)
    if not boxes:
        notes += ["no face detected", LPIPS_DISTS_NOTE]
        return FaceResult(
            image=image.copy(),
            face_detected=False,
            faces=[],
            attempts_used=0,
            fallback_used=True,
            final_ssim_score=None,
            final_lpips_score=None,
            final_dists_score=None,
            notes=notes,
        )

    rgb, alpha, mode = split_alpha(image, notes)
    regions: list[Box] = []
    scores: list[float] = []
    attempts_used = 0
    fallback_used = False
    for index, box in enumerate(boxes):
        check_cancelled()
        left, top, right, bottom = expand_box(box, params.expand_percent, image.size)
        regions.append((left, top, right, bottom))
        crop = rgb[top:bottom, left:right].copy()
        weight = elliptical_mask(right - left, bottom - top, params.feather_px)[:, :, None]
        kept: NDArray[np.uint8] | None = None
        score = 1.0
        for attempt in range(1, params.max_attempts + 1):
            check_cancelled()
            attempts_used = max(attempts_used, attempt)
            strength = 0.5 ** (attempt - 1)
            enhanced = _enhance_crop(crop, strength).astype(np.float32)
            blended = crop.astype(np.float32) + weight * (enhanced - crop.astype(np.float32))
            candidate = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
            score = ssim(crop, candidate)
            if params.ssim_threshold <= 0.0 or score >= params.ssim_threshold:
                kept = candidate
                break
            notes.append(
                f"face {index}: attempt {attempt} SSIM {score:.4f} below threshold {params.ssim_threshold:.4f}"
            )
        if kept is None:
            fallback_used = True
            notes.append(f"face {index}: original kept (no attempt passed the SSIM gate)")
            scores.append(1.0)
        else:
            rgb[top:bottom, left:right] = kept
            scores.append(score)

    result = merge_alpha(rgb, alpha, mode)
    if mode in ("L", "LA"):
        # RGB -> L happens only inside the regions: every other pixel is copied from the original as is.
        base = image.copy()
        for left, top, right, bottom in regions:
            base.paste(result.crop((left, top, right, bottom)), (left, top))
        result = base
    notes.append(LPIPS_DISTS_NOTE)
    return FaceResult(
        image=result,
        face_detected=True,
        faces=boxes,
        attempts_used=attempts_used,
        fallback_used=fallback_used,
        final_ssim_score=float(np.mean(scores)),
        final_lpips_score=None,
        final_dists_score=None,
        notes=notes,
    )
