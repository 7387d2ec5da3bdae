"""Sartiq "Ultimate" fixers: remote image-to-image per region, local planning, quality gates and feathered blending.

Three providers share one scheme — cut the image into regions here, send each region to a fal image-to-image
app, check every answer with a quality gate (retrying it), and blend the accepted answers back so that no seam
shows:

- ``SARTIQ_ULTIMATE_REFINER`` (REFINE): the whole image in tiles;
- ``SARTIQ_ULTIMATE_FACE_FIXER`` (FACE_ENHANCER): each detected face;
- ``SARTIQ_ULTIMATE_GARMENT_FIXER`` (DETAIL_ENHANCER): the garment/detail region that matches the reference.

Protocol (fal's public queue API, as in :mod:`atelier.providers.remote.fal`, connection ``settings.fal``):

- App: ``settings.sartiq_fal_app_id`` (default ``fal-ai/flux/dev/image-to-image``); the task's ``fal_app_id``
  is *not* used (it names the app of FAL providers, e.g. a FAL fallback of the same task).
- One request per region and attempt: ``POST {base}/{app_id}`` with ``{"image_url": "data:image/png;base64,…"
  (the region, lossless), "prompt", "strength", "seed"?}`` → ``{"request_id"}``; status polled at
  ``GET {base}/{owner}/{alias}/requests/{id}/status`` until COMPLETED; output ``GET …/requests/{id}`` →
  ``{"images": [{"url"}]}``; the first image is downloaded (bounded), decoded, converted to RGB and resized
  (LANCZOS) back to the region's size when the app answered another size (apps snap sizes to multiples of 8).
- Auth ``Authorization: Key <FAL_KEY>``; every call is logged in ``service_requests`` without credentials.
- Errors: a job that ends in error → ``RemoteJobFailedError`` (retryable: the task is retried and the next
  attempt starts over); 429/5xx/timeouts are retried inside the attempt where safe (see ``ServiceClient``); a 4xx
  input rejection is an input error. Request ids are *not* saved for resumption (a task has one request per
  region and attempt, and the configs have no ``fal_request_id`` field): a resumed or retried task redoes every
  region. The ids of the requests made are returned in ``fal_request_ids``.
- Regions run concurrently (``concurrent.futures.ThreadPoolExecutor``; the refiner's ``max_workers``, None = all
  at once; faces all at once; garment tiles all at once). Cancellation is checked before every attempt and during
  every poll; when one region fails or the task is cancelled, the other regions stop and their pending remote
  requests are cancelled (``PUT …/cancel``) before the error propagates.

Quality gate and retries (:mod:`atelier.providers.remote.quality`): ``ssim_threshold``/``lpips_threshold``/
``dists_threshold`` (0 disables; LPIPS/DISTS > 0 without an implementation fails the task as INVALID_INPUT before
anything is sent). A region's candidate is gated against the original region; attempt ``k`` (0-based, up to
``max_retries`` extra calls) sends strength ``s · 0.5^k`` and seed ``seed + k`` (when a seed is given): a
rejected answer was too far from the original, so the next one is asked to stay closer. A region no attempt
passes keeps its original pixels (counted, and ``fallback_used`` is set where the task has that field). Scores
reported for a region that kept its original pixels are 1.0 (it is the original).

Refiner (REFINE)
----------------
1. ``base_image_url`` is loaded; when ``upscale_enabled`` (default) it is first resized (LANCZOS) by
   ``upscale_factor``, else to ``target_width``/``target_height`` (one of them: the other keeps the aspect ratio);
   neither: the size is kept. The result must stay within the service's pixel limit.
2. Tiles: ``plan_grid(width, height, num_tiles, overlap=feather_px)`` (about ``num_tiles`` cells following the
   aspect ratio, grown by ``feather_px`` on inner sides). Each tile is sent with ``upscale_prompt`` (default
   :data:`DEFAULT_REFINE_PROMPT`), strength ``upscale_denoise`` and seed ``upscale_seed``.
3. Colour: version ``"1"`` moves each answer to its original tile's colour in CIE Lab (lightness mean; a/b mean
   and spread — the detail enhancer's colour match); version ``"2"`` matches each channel's histogram to the
   original tile's (``skimage.exposure.match_histograms``). The gate sees the colour-matched tile.
4. Blend: tiles are weighted with the tiling module's linear ramps across the shared bands (weights sum to one,
   so a tile's exclusive area is exactly its pixels and a seam fades over ``2 · feather_px``).
5. Version ``"1"`` protects faces: ``detect_faces`` on the (upscaled) image, boxes expanded by
   ``face_expand_percent``; inside a box the original pixels are kept exactly, outside the weight of the
   original falls linearly to 0 over ``feather_px`` pixels. Version ``"2"`` does no face processing.
6. ``save_debug_tiles``: each tile's ``debug/tile_NN_before.png`` (original) and ``debug/tile_NN_after.png``
   (the last answer, colour-matched: the accepted one, or the last rejected) in the task's folder.

Outputs: ``result_image_path``, ``tiles``, ``tiles_kept_original``, ``tile_retries`` (extra calls made),
``min_ssim`` (lowest SSIM of a kept tile), ``faces_protected``, ``result_width``/``result_height``.

Face fixer (FACE_ENHANCER)
--------------------------
``detect_faces`` on ``input_image_path``. No face: the input's bytes are stored unchanged as the result with
``face_detected=False``, ``fallback_used=True``, ``attempts_used=0`` (as the LOCAL face enhancer reports it) and
nothing is sent. Otherwise each face box is expanded by ``expand_percent``, sent with ``face_prompt`` (default
:data:`DEFAULT_FACE_PROMPT`) at strength :data:`FACE_STRENGTH`, blended into the region through an elliptical
mask inset and Gaussian-feathered by ``feather_px`` (the LOCAL face enhancer's mask), and the *blended* region is
gated. Accepted faces are composited in order (largest first) onto the running result through their masks.
Outputs: ``face_detected``, ``fallback_used`` (a face kept the original), ``attempts_used`` (most attempts any
face needed), ``final_ssim_score`` (lowest over faces), ``final_lpips_score``/``final_dists_score`` (highest over
faces, when enabled), ``faces``; ``save_debug_images`` stores ``debug/face_NN_before.png``/``_after.png``.

Garment fixer (DETAIL_ENHANCER)
-------------------------------
``locate_detail(base_image, reference_image)`` (multi-scale template match). Not located, or a match score below
``min_score`` (0.5; a task may set ``config.min_score``): exactly what the LOCAL detail enhancer does — the base is
returned unchanged (its bytes stored as they are), ``fallback_used=True``, ``detail_location=None``, a note gives
the score; this is not an error (the caller asked for a best-effort fix) and nothing is sent. Otherwise the box is
expanded by ``bbox_expand_percent``; when its aspect ratio (long side / short side) exceeds ``split_threshold`` it
is split into 2 tiles along its long side overlapping by ``feather_px`` on each side of the cut (blended with the
tiling ramps). Each tile is sent with a prompt built from ``detail_label`` at strength :data:`GARMENT_STRENGTH`
and gated; the region is then blended into the base with a smoothstep edge weight over ``feather_px``
(``feather_px = 0``: a hard paste). Outputs: ``fallback_used`` (a tile kept the original), ``detail_location``
(the located box), ``match_score``, ``final_ssim_score`` (SSIM of the final region against the original region);
``save_debug_images`` stores ``debug/garment_NN_before.png``/``_after.png``.

All three keep the input's mode (RGB, RGBA, L, LA; the alpha channel is set aside and put back, resized with the
image when the refiner upscales) and encoding family (JPEG stays JPEG, everything else PNG), report progress per
finished region, and add ``enhancement_notes`` describing gate rejections and fallbacks.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel
from skimage.exposure import match_histograms

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits, open_image
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult, TaskCancelledError
from atelier.providers.configs import (
    SartiqUltimateFaceFixerConfig,
    SartiqUltimateGarmentFixerConfig,
    SartiqUltimateRefinerConfig,
)
from atelier.providers.local.detail_enhancer import DetailParams, colour_match, edge_weight, locate_detail
from atelier.providers.local.face_enhancer import detect_faces, elliptical_mask, expand_box, merge_alpha
from atelier.providers.local.modes import split_alpha
from atelier.providers.local.provider import store_image
from atelier.providers.local.tiling import Box, plan_grid, tile_weights
from atelier.providers.remote.fal import FalQueue, first_media_url
from atelier.providers.remote.media import Payload, read_source, store_result_image
from atelier.providers.remote.quality import GateResult, QualityGate, Thresholds, ssim
from atelier.settings import ProviderSettings, RemoteServiceSettings
from atelier.tasks.enums import ProviderType, TaskType

log = logging.getLogger(__name__)

DEFAULT_REFINE_PROMPT = "high quality, highly detailed, sharp focus, photorealistic"
DEFAULT_FACE_PROMPT = "a detailed, natural, photorealistic face"
DEFAULT_REFINE_STRENGTH = 0.3
FACE_STRENGTH = 0.35
GARMENT_STRENGTH = 0.35
RETRY_STRENGTH_DECAY = 0.5
"""Attempt ``k`` (0-based) sends ``strength · RETRY_STRENGTH_DECAY ** k``."""
MAX_SEED = 2**63
"""Retry seeds wrap around below this (the API's seed range)."""
PROGRESS_LOADED = 10.0
PROGRESS_REGIONS_DONE = 90.0
DEBUG_FOLDER = "debug"

ConfigT = TypeVar("ConfigT", bound=BaseModel)
Pixels = NDArray[np.uint8]


class _RegionAbortedError(TaskCancelledError):
    """Another region failed (or the task was cancelled): stop this one; FalQueue cancels its remote request."""


def _ignore_progress(_percent: float) -> None:
    """FalQueue reports per-request progress; the fixers report per region instead."""


def _ignore_remote_id(_remote_id: str, _config_field: str | None) -> None:
    """FalQueue saves its request id for resumption; a fixer makes many requests and resumes none of them."""


def _config(ctx: ProviderContext, model: type[ConfigT]) -> ConfigT:
    if isinstance(ctx.config, model):
        return ctx.config
    return model.model_validate(ctx.config.model_dump(exclude={"provider_type"}))


def _round(values: NDArray[Any]) -> Pixels:
    return np.asarray(np.clip(np.rint(values), 0, 255), dtype=np.uint8)


def _png(pixels: Pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ regions on fal


@dataclass(frozen=True)
class Region:
    """One part of the image sent to the remote app: its index, its box in the working image and its pixels."""

    index: int
    box: Box
    pixels: Pixels


@dataclass
class RegionOutcome:
    """What became of a region: the pixels to keep, the remote answer behind them and the gate's verdicts."""

    region: Region
    pixels: Pixels  # the accepted candidate, or a copy of the original pixels
    accepted: bool
    attempts: int
    raw: Pixels | None = None  # the accepted answer as received (resized), before any finishing step
    last_candidate: Pixels | None = None  # the last candidate gated (accepted or not), for debug images
    verdict: GateResult | None = None  # of the accepted candidate, else of the last rejected one
    request_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ssim(self) -> float:
        """SSIM of the kept pixels against the original (1.0 when the original was kept)."""
        return self.verdict.ssim if self.accepted and self.verdict is not None else 1.0


Finish = Callable[[Region, Pixels], Pixels]
"""Turns a remote answer (already resized to the region) into the candidate the gate judges."""


def _as_is(_region: Region, raw: Pixels) -> Pixels:
    return raw


class RemoteRegions:
    """Sends regions to the image-to-image app on fal's queue, gates and retries them, several at a time."""

    def __init__(
        self,
        ctx: ProviderContext,
        settings: RemoteServiceSettings,
        app_id: str,
        gate: QualityGate,
        max_retries: int,
    ) -> None:
        self.ctx = ctx
        self.app_id = app_id
        self.gate = gate
        self.max_retries = max_retries
        self._abort = threading.Event()
        quiet = replace(
            ctx, progress=_ignore_progress, save_remote_id=_ignore_remote_id, check_cancelled=self.check_cancelled
        )
        self.queue = FalQueue(quiet, settings)

    def check_cancelled(self) -> None:
        """The task's own check, plus a stop once a sibling region has failed."""
        if self._abort.is_set():
            raise _RegionAbortedError()
        self.ctx.check_cancelled()

    def call(self, pixels: Pixels, prompt: str, strength: float, seed: int | None) -> tuple[str, Pixels]:
        """One remote request for ``pixels``; returns (request id, the answer as RGB of the same size)."""
        arguments: dict[str, Any] = {
            "image_url": Payload(_png(pixels), "image/png").data_uri,
            "prompt": prompt,
            "strength": round(float(strength), 6),
        }
        if seed is not None:
            arguments["seed"] = int(seed)
        request_id, output = self.queue.run(self.app_id, arguments, None)
        url = first_media_url(output, "images") or first_media_url(output, "image")
        if url is None:
            raise ProviderFatalError(f"fal: the output of request {request_id} has no image")
        data = self.queue.client.download(url).data
        try:
            image = open_image(data, limits=self.ctx.fetch_limits or FetchLimits(), loc=("result",))
        except InvalidInputError as exc:  # the service's output is broken, not the user's input
            raise ProviderFatalError(f"fal: request {request_id} returned an unusable image: {exc}") from exc
        height, width = pixels.shape[:2]
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return request_id, np.asarray(image, dtype=np.uint8)

    def process(
        self,
        region: Region,
        prompt: str,
        strength: float,
        seed: int | None = None,
        finish: Finish = _as_is,
        what: str = "region",
    ) -> RegionOutcome:
        """Send ``region`` until a candidate passes the gate (1 + max_retries calls at most)."""
        outcome = RegionOutcome(region=region, pixels=region.pixels.copy(), accepted=False, attempts=0)
        for attempt in range(self.max_retries + 1):
            self.check_cancelled()
            outcome.attempts = attempt + 1
            request_id, raw = self.call(
                region.pixels,
                prompt,
                strength * RETRY_STRENGTH_DECAY**attempt,
                None if seed is None else (int(seed) + attempt) % MAX_SEED,
            )
            outcome.request_ids.append(request_id)
            candidate = finish(region, raw)
            verdict = self.gate.check(region.pixels, candidate)
            outcome.verdict, outcome.last_candidate = verdict, candidate
            if verdict.passed:
                outcome.pixels, outcome.raw, outcome.accepted = candidate, raw, True
                return outcome
            outcome.notes.append(f"{what} {region.index}: attempt {attempt + 1} rejected ({verdict.describe()})")
        outcome.notes.append(f"{what} {region.index}: original kept (no attempt passed the quality gate)")
        return outcome

    def run_all(
        self, regions: Sequence[Region], job: Callable[[Region], RegionOutcome], workers: int | None
    ) -> list[RegionOutcome]:
        """Run ``job`` on every region, ``workers`` at a time (None = all); progress per finished region.

        The first failure stops the others (their remote requests are cancelled) and is raised.
        """
        if not regions:
            return []
        count = len(regions) if workers is None else max(1, min(workers, len(regions)))
        done: dict[int, RegionOutcome] = {}
        span = PROGRESS_REGIONS_DONE - PROGRESS_LOADED
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sartiq-region") as pool:
            pending: set[Future[RegionOutcome]] = {pool.submit(job, region) for region in regions}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome = future.result()  # raises the region's error
                        done[outcome.region.index] = outcome
                    self.ctx.progress(PROGRESS_LOADED + span * len(done) / len(regions))
            except BaseException:
                self._abort.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return [done[region.index] for region in regions]


def _request_ids(outcomes: Sequence[RegionOutcome]) -> list[str]:
    return [rid for outcome in outcomes for rid in outcome.request_ids]


def _notes(outcomes: Sequence[RegionOutcome]) -> list[str]:
    return [note for outcome in outcomes for note in outcome.notes]


def _finish(
    ctx: ProviderContext, outputs: dict[str, Any], outcomes: Sequence[RegionOutcome], debug: str | None
) -> None:
    """Store the regions' before/after images when asked (``debug`` is the file stem prefix) and end progress."""
    if debug is not None:
        outputs["debug_image_paths"] = [
            path
            for o in outcomes
            for path in _save_debug(ctx, f"{debug}_{o.region.index:02d}", o.region.pixels, o.last_candidate)
        ]
    ctx.progress(100.0)


def _save_debug(ctx: ProviderContext, stem: str, before: Pixels, after: Pixels | None) -> list[str]:
    paths = [ctx.storage.save(ctx.output_path(f"{DEBUG_FOLDER}/{stem}_before.png"), _png(before), "image/png").path]
    if after is not None:
        paths.append(
            ctx.storage.save(ctx.output_path(f"{DEBUG_FOLDER}/{stem}_after.png"), _png(after), "image/png").path
        )
    return paths


def _unchanged(ctx: ProviderContext, source: str, field_name: str) -> str:
    """Store the input's own bytes as the result (nothing was changed)."""
    path, _ = store_result_image(ctx, read_source(ctx, source, field_name))
    return path


def _blend_tiles(outcomes: Sequence[RegionOutcome], width: int, height: int, overlap: int) -> NDArray[np.float32]:
    """Tiles of a ``width x height`` area blended with the tiling ramps (weights summing to one), as floats."""
    total = np.zeros((height, width, 3), dtype=np.float32)
    norm = np.zeros((height, width), dtype=np.float32)
    for outcome in outcomes:
        left, top, right, bottom = outcome.region.box
        weight = tile_weights(outcome.region.box, width, height, overlap)
        total[top:bottom, left:right] += outcome.pixels.astype(np.float32) * weight[:, :, None]
        norm[top:bottom, left:right] += weight
    return np.asarray(total / norm[:, :, None], dtype=np.float32)


class _SartiqProvider:
    """Connection settings and the fal app shared by the three fixers."""

    provider_type: ClassVar[ProviderType]
    task_types: ClassVar[frozenset[TaskType]]

    def __init__(self, settings: RemoteServiceSettings, app_id: str) -> None:
        self.settings = settings
        self.app_id = app_id

    def remote(self, ctx: ProviderContext, gate: QualityGate, max_retries: int) -> RemoteRegions:
        """A region runner for this task run."""
        return RemoteRegions(ctx, self.settings, self.app_id, gate, max_retries)


# ------------------------------------------------------------------------------------------ refiner


def target_size(inputs: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """The refiner's working size: ``upscale_factor``, else ``target_width``/``target_height``, else ``size``."""
    width, height = size
    if inputs.get("upscale_enabled") is False:
        return size
    factor = inputs.get("upscale_factor")
    if factor:
        return max(1, round(width * float(factor))), max(1, round(height * float(factor)))
    target_w, target_h = inputs.get("target_width"), inputs.get("target_height")
    if target_w and target_h:
        return int(target_w), int(target_h)
    if target_w:
        return int(target_w), max(1, round(height * int(target_w) / width))
    if target_h:
        return max(1, round(width * int(target_h) / height)), int(target_h)
    return size


def _lab_match(region: Region, raw: Pixels) -> Pixels:
    return _round(colour_match(raw, region.pixels))


def _histogram_match(region: Region, raw: Pixels) -> Pixels:
    return _round(match_histograms(raw, region.pixels, channel_axis=-1))


def _protection(boxes: Sequence[Box], width: int, height: int, feather_px: int) -> NDArray[np.float32]:
    """Weight of the original: 1 inside ``boxes``, falling linearly to 0 over ``feather_px`` outside them."""
    inside = np.zeros((height, width), dtype=np.uint8)
    for left, top, right, bottom in boxes:
        inside[top:bottom, left:right] = 1
    if feather_px <= 0:
        return inside.astype(np.float32)
    distance = np.asarray(cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5), dtype=np.float32)
    return np.asarray(np.clip(1.0 - distance / float(feather_px), 0.0, 1.0), dtype=np.float32)


class SartiqUltimateRefinerProvider(_SartiqProvider):
    """REFINE: (upscale,) tile, refine every tile remotely, gate, colour-match and blend seamlessly."""

    provider_type: ClassVar[ProviderType] = ProviderType.SARTIQ_ULTIMATE_REFINER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.REFINE})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """See the module doc, "Refiner"."""
        config = _config(ctx, SartiqUltimateRefinerConfig)
        gate = QualityGate(Thresholds.from_config(config))
        inputs = ctx.inputs
        image = ctx.load_image(str(inputs["base_image_url"]), "base_image_url")
        source_format = image.format
        notes: list[str] = []
        rgb, alpha, mode = split_alpha(image, notes)
        width, height = target_size(inputs, image.size)
        limit = (ctx.fetch_limits or FetchLimits()).max_pixels
        if width * height > limit:
            raise InvalidInputError(
                f"the upscaled image would be {width}x{height}, over the limit of {limit} pixels",
                loc=("upscale_factor",) if inputs.get("upscale_factor") else ("target_width",),
            )
        if (width, height) != image.size:
            rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
            alpha = alpha.resize((width, height), Image.Resampling.LANCZOS) if alpha is not None else None
            notes.append(f"upscaled (LANCZOS) from {image.width}x{image.height} to {width}x{height} before tiling")
        ctx.check_cancelled()

        faces: list[Box] = []
        if config.version == "1":
            found = detect_faces(Image.fromarray(rgb))
            faces = [expand_box(box, config.face_expand_percent, (width, height)) for box in found]
        ctx.progress(PROGRESS_LOADED)

        overlap = config.feather_px
        grid = plan_grid(width, height, config.num_tiles, overlap)
        regions = [Region(i, box, rgb[box[1] : box[3], box[0] : box[2]].copy()) for i, box in enumerate(grid.tiles)]
        prompt = str(inputs.get("upscale_prompt") or DEFAULT_REFINE_PROMPT)
        denoise = inputs.get("upscale_denoise")
        strength = DEFAULT_REFINE_STRENGTH if denoise is None else float(denoise)
        seed = inputs.get("upscale_seed")
        finish = _lab_match if config.version == "1" else _histogram_match
        remote = self.remote(ctx, gate, config.max_retries)
        outcomes = remote.run_all(
            regions,
            lambda region: remote.process(region, prompt, strength, seed, finish, what="tile"),
            config.max_workers,
        )

        blended = _blend_tiles(outcomes, width, height, overlap)
        if faces:
            keep = _protection(faces, width, height, overlap)[:, :, None]
            blended = blended + keep * (rgb.astype(np.float32) - blended)
            notes.append(f"{len(faces)} face(s) kept as they were: {[list(box) for box in faces]}")
        result = merge_alpha(_round(blended), alpha, mode)
        notes.extend(_notes(outcomes))
        ctx.check_cancelled()

        outputs: dict[str, Any] = {
            "result_image_path": store_image(ctx, result, source_format),
            "result_width": width,
            "result_height": height,
            "tiles": len(outcomes),
            "tiles_kept_original": sum(1 for o in outcomes if not o.accepted),
            "tile_retries": sum(o.attempts - 1 for o in outcomes),
            "min_ssim": min(o.ssim for o in outcomes),
            "faces_protected": len(faces),
            "fal_app_id": self.app_id,
            "fal_request_ids": _request_ids(outcomes),
            "enhancement_notes": notes,
        }
        _finish(ctx, outputs, outcomes, "tile" if config.save_debug_tiles else None)
        log.info(
            "sartiq refiner: %d tiles, %d kept original, %d retries",
            outputs["tiles"],
            outputs["tiles_kept_original"],
            outputs["tile_retries"],
        )
        return ProviderResult(outputs=outputs)


# ------------------------------------------------------------------------------------------ face fixer


class SartiqUltimateFaceFixerProvider(_SartiqProvider):
    """FACE_ENHANCER: every detected face refined remotely, gated, blended back through a feathered ellipse."""

    provider_type: ClassVar[ProviderType] = ProviderType.SARTIQ_ULTIMATE_FACE_FIXER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.FACE_ENHANCER})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """See the module doc, "Face fixer"."""
        config = _config(ctx, SartiqUltimateFaceFixerConfig)
        gate = QualityGate(Thresholds.from_config(config))
        source = str(ctx.inputs["input_image_path"])
        image = ctx.load_image(source, "input_image_path")
        ctx.check_cancelled()
        boxes = detect_faces(image)
        ctx.progress(PROGRESS_LOADED)
        if not boxes:
            return ProviderResult(
                outputs={
                    "result_image_path": _unchanged(ctx, source, "input_image_path"),
                    "face_detected": False,
                    "fallback_used": True,
                    "attempts_used": 0,
                    "final_ssim_score": None,
                    "final_lpips_score": None,
                    "final_dists_score": None,
                    "faces": [],
                    "enhancement_notes": ["no face detected: the input is returned unchanged"],
                }
            )

        notes: list[str] = []
        rgb, alpha, mode = split_alpha(image, notes)
        regions = []
        masks: dict[int, NDArray[np.float32]] = {}
        for index, box in enumerate(boxes):
            left, top, right, bottom = expand_box(box, config.expand_percent, image.size)
            regions.append(Region(index, (left, top, right, bottom), rgb[top:bottom, left:right].copy()))
            masks[index] = elliptical_mask(right - left, bottom - top, config.feather_px)[:, :, None]

        def blend(region: Region, raw: Pixels) -> Pixels:
            crop = region.pixels.astype(np.float32)
            return _round(crop + masks[region.index] * (raw.astype(np.float32) - crop))

        prompt = config.face_prompt or DEFAULT_FACE_PROMPT
        remote = self.remote(ctx, gate, config.max_retries)
        outcomes = remote.run_all(
            regions, lambda region: remote.process(region, prompt, FACE_STRENGTH, None, blend, what="face"), None
        )
        for outcome in outcomes:  # largest face first; overlapping regions compose through their masks
            if outcome.accepted and outcome.raw is not None:
                left, top, right, bottom = outcome.region.box
                current = rgb[top:bottom, left:right].astype(np.float32)
                mask = masks[outcome.region.index]
                rgb[top:bottom, left:right] = _round(current + mask * (outcome.raw.astype(np.float32) - current))
        result = merge_alpha(rgb, alpha, mode)
        notes.extend(_notes(outcomes))
        ctx.check_cancelled()

        accepted = [o.verdict for o in outcomes if o.accepted and o.verdict is not None]
        lpips = [v.lpips for v in accepted if v.lpips is not None]
        dists = [v.dists for v in accepted if v.dists is not None]
        outputs: dict[str, Any] = {
            "result_image_path": store_image(ctx, result, image.format),
            "face_detected": True,
            "fallback_used": any(not o.accepted for o in outcomes),
            "attempts_used": max(o.attempts for o in outcomes),
            "final_ssim_score": min(o.ssim for o in outcomes),
            "final_lpips_score": max(lpips) if lpips else None,
            "final_dists_score": max(dists) if dists else None,
            "faces": [list(box) for box in boxes],
            "fal_app_id": self.app_id,
            "fal_request_ids": _request_ids(outcomes),
            "enhancement_notes": notes,
        }
        _finish(ctx, outputs, outcomes, "face" if config.save_debug_images else None)
        return ProviderResult(outputs=outputs)


# ------------------------------------------------------------------------------------------ garment fixer


def split_box(width: int, height: int, aspect_limit: float, overlap: int) -> list[Box]:
    """Tiles of a ``width x height`` region: itself, or 2 halves along the long side when it is too elongated.

    The halves share ``2 · overlap`` pixels around the cut (``overlap`` on each side, at most half a half).
    """
    long_side, short_side = max(width, height), min(width, height)
    if short_side < 1 or long_side / short_side <= aspect_limit or long_side < 2:
        return [(0, 0, width, height)]
    cut = long_side // 2
    ov = max(0, min(overlap, cut // 2, (long_side - cut) // 2))
    first, second = (0, cut + ov), (cut - ov, long_side)
    if width >= height:
        return [(first[0], 0, first[1], height), (second[0], 0, second[1], height)]
    return [(0, first[0], width, first[1]), (0, second[0], width, second[1])]


def garment_prompt(label: str | None) -> str:
    """The prompt sent with every garment tile."""
    subject = label.strip() if label and label.strip() else "garment"
    return f"a sharp, faithful, highly detailed {subject}; crisp fabric texture, clean print and stitching"


class SartiqUltimateGarmentFixerProvider(_SartiqProvider):
    """DETAIL_ENHANCER: the region matching the reference refined remotely (in 2 tiles when elongated)."""

    provider_type: ClassVar[ProviderType] = ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.DETAIL_ENHANCER})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """See the module doc, "Garment fixer"."""
        config = _config(ctx, SartiqUltimateGarmentFixerConfig)
        gate = QualityGate(Thresholds.from_config(config))
        min_score = _min_score(ctx)
        source = str(ctx.inputs["base_image_path"])
        base = ctx.load_image(source, "base_image_path")
        reference = ctx.load_image(str(ctx.inputs["reference_image_path"]), "reference_image_path")
        label = ctx.inputs.get("detail_label")
        name = f"detail {label!r}" if label else "detail"
        ctx.check_cancelled()
        found = locate_detail(base, reference, DetailParams().scales, ctx.check_cancelled)
        ctx.progress(PROGRESS_LOADED)
        if found is None or found[1] < min_score:
            why = (
                "no scale fits the base image (or the reference is flat)"
                if found is None
                else f"best match score {found[1]:.3f} below min_score {min_score:.3f}"
            )
            return ProviderResult(
                outputs={
                    "result_image_path": _unchanged(ctx, source, "base_image_path"),
                    "fallback_used": True,
                    "detail_location": None,
                    "match_score": found[1] if found else None,
                    "final_ssim_score": None,
                    "enhancement_notes": [f"{name} not located: {why}; the base is returned unchanged"],
                }
            )

        located, score = found
        notes: list[str] = []
        rgb, alpha, mode = split_alpha(base, notes)
        left, top, right, bottom = expand_box(located, config.bbox_expand_percent, base.size)
        box_w, box_h = right - left, bottom - top
        original = rgb[top:bottom, left:right].copy()
        tiles = split_box(box_w, box_h, config.split_threshold, config.feather_px)
        regions = [
            Region(i, tile, original[tile[1] : tile[3], tile[0] : tile[2]].copy()) for i, tile in enumerate(tiles)
        ]
        if len(tiles) > 1:
            notes.append(f"region {box_w}x{box_h} split into {len(tiles)} tiles (aspect > {config.split_threshold:g})")

        prompt = garment_prompt(label)
        remote = self.remote(ctx, gate, config.max_retries)
        outcomes = remote.run_all(
            regions, lambda region: remote.process(region, prompt, GARMENT_STRENGTH, what="tile"), None
        )
        assembled = _blend_tiles(outcomes, box_w, box_h, config.feather_px)
        edge = edge_weight(box_w, box_h, config.feather_px)[:, :, None]
        patch = _round(original.astype(np.float32) + edge * (assembled - original.astype(np.float32)))
        rgb[top:bottom, left:right] = patch
        result = merge_alpha(rgb, alpha, mode)
        notes.append(
            f"{name} located at {list(located)} (match score {score:.3f}); refined region {[left, top, right, bottom]}"
        )
        notes.extend(_notes(outcomes))
        ctx.check_cancelled()

        outputs: dict[str, Any] = {
            "result_image_path": store_image(ctx, result, base.format),
            "fallback_used": any(not o.accepted for o in outcomes),
            "detail_location": list(located),
            "match_score": score,
            "final_ssim_score": ssim(original, patch),
            "fal_app_id": self.app_id,
            "fal_request_ids": _request_ids(outcomes),
            "enhancement_notes": notes,
        }
        _finish(ctx, outputs, outcomes, "garment" if config.save_debug_images else None)
        return ProviderResult(outputs=outputs)


def _min_score(ctx: ProviderContext) -> float:
    """The match score a location needs: ``config.min_score`` of the task, else the LOCAL enhancer's default."""
    value = ctx.task_config.get("min_score", DetailParams().min_score)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError("config.min_score must be a number", loc=("config", "min_score"))
    return float(value)


def providers(settings: ProviderSettings) -> list[Any]:
    """The three Sartiq fixers, sending their regions to ``settings.sartiq_fal_app_id`` over ``settings.fal``."""
    app = settings.sartiq_fal_app_id
    return [
        SartiqUltimateRefinerProvider(settings.fal, app),
        SartiqUltimateFaceFixerProvider(settings.fal, app),
        SartiqUltimateGarmentFixerProvider(settings.fal, app),
    ]
