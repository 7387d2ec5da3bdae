"""LOCAL GENERATION and EDITING on a diffusers pipeline, with the task's subject/product/style LoRAs.

The base pipeline comes from the ``diffusion`` settings (a local diffusers folder, or a hub id already in the
local Hugging Face cache: nothing is downloaded) and stays loaded in the worker process (LRU by base path,
``diffusion.cache_size`` of them). A run loads the task's LoRA files (paths relative to the LoRA folder) as
named adapters with the task's weights, generates, and unloads them again, so the cached pipeline is the base
pipeline for the next task. EDITING, and GENERATION with a reference image, run image-to-image from the same
components. torch and diffusers are imported inside the functions (the ``ml`` extra): importing this module
only checks that they are installed, so the API process never loads torch.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import safe_relative_path
from atelier.providers.base import ProviderContext, ProviderNotAvailableError, ProviderResult
from atelier.providers.local.provider import store_image
from atelier.settings import DiffusionSettings, Settings
from atelier.tasks.enums import ProviderType, TaskType

if TYPE_CHECKING:
    import torch

_MISSING = [name for name in ("torch", "diffusers", "peft") if importlib.util.find_spec(name) is None]
if _MISSING:  # the registry catches this and leaves LOCAL GENERATION/EDITING out
    raise ImportError(f"{', '.join(_MISSING)} not installed (LOCAL generation needs the `ml` extra)")

log = logging.getLogger(__name__)

SERVICE = "local-diffusion"
# (adapter name, path field, weight field) of the LoRAs a task may name.
LORA_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("subject", "subject_model_path", "subject_lora_weight"),
    ("product", "product_model_path", "product_lora_weight"),
    ("style", "style_model_path", "style_lora_weight"),
    ("product2", "product2_model_path", "product2_lora_weight"),
)
DEFAULT_STRENGTH = 0.6  # image-to-image denoising strength when the task gives none
_PROGRESS_LOADED = 5.0
_PROGRESS_READY = 10.0
_PROGRESS_DONE = 95.0


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a task: the adapter name, the field it came from, the file and its weight."""

    name: str
    field: str
    path: Path
    relative: str
    weight: float


@dataclass
class CachedPipeline:
    """A loaded base pipeline, its image-to-image variant (made on first use) and the lock of its runs."""

    key: tuple[str, str, str]
    pipeline: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    img2img: Any | None = None


_CACHE: OrderedDict[tuple[str, str, str], CachedPipeline] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def cached_pipelines() -> list[CachedPipeline]:
    """The pipelines this process holds, least recently used first."""
    with _CACHE_LOCK:
        return list(_CACHE.values())


def clear_pipeline_cache() -> None:
    """Drop every cached pipeline (tests; memory pressure)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def resolve_device(setting: str) -> str:
    """``auto``: CUDA when available, else CPU."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 (float16 without bf16 support) on CUDA, float32 elsewhere."""
    import torch

    if setting == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


def base_model_folder(base: str | None) -> Path:
    """The local diffusers folder of the configured base model, or ProviderNotAvailableError saying why not."""
    from atelier.training.lora import resolve_base_model

    if not base:
        raise ProviderNotAvailableError(
            "LOCAL generation has no base model: set ATELIER_DIFFUSION__BASE_MODEL_PATH to a diffusers folder "
            "or a hub id in the local Hugging Face cache"
        )
    try:
        return resolve_base_model(base)
    except ValueError as exc:
        raise ProviderNotAvailableError(f"LOCAL generation base model unusable: {exc}") from exc


def get_pipeline(settings: DiffusionSettings) -> CachedPipeline:
    """The cached pipeline of the configured base model, loading it (offline) on first use."""
    folder = base_model_folder(settings.base_model_path)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    key = (str(folder.resolve()), device, str(dtype).removeprefix("torch."))
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            entry = CachedPipeline(key, _load_pipeline(folder, device, dtype))
            _CACHE[key] = entry
        _CACHE.move_to_end(key)
        while len(_CACHE) > settings.cache_size:
            dropped, _ = _CACHE.popitem(last=False)
            log.info("diffusion pipeline cache: dropped %s", dropped[0])
        return entry


def _load_pipeline(folder: Path, device: str, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    started = time.monotonic()
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        pipeline.to(device)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ProviderNotAvailableError(f"LOCAL generation could not load the base model {folder}: {exc}") from exc
    pipeline.set_progress_bar_config(disable=True)
    log.info(
        "diffusion pipeline %s (%s) loaded on %s/%s in %.1f s",
        folder,
        type(pipeline).__name__,
        device,
        dtype,
        time.monotonic() - started,
    )
    return pipeline


def image_to_image(entry: CachedPipeline) -> Any:
    """The image-to-image pipeline sharing the cached pipeline's components (call with ``entry.lock`` held)."""
    if entry.img2img is None:
        from diffusers import AutoPipelineForImage2Image

        try:
            img2img = AutoPipelineForImage2Image.from_pipe(entry.pipeline)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderNotAvailableError(
                f"the base model's {type(entry.pipeline).__name__} has no image-to-image variant: LOCAL EDITING "
                f"and reference images need one ({exc})"
            ) from exc
        img2img.set_progress_bar_config(disable=True)
        entry.img2img = img2img
    return entry.img2img


def resolve_lora_path(root: Path, raw: str, field_name: str) -> tuple[Path, str]:
    """A task's LoRA path → (file inside ``root``, its relative path); InvalidInputError on anything else."""
    loc = ("task_data", field_name)
    if raw.lower().startswith(("http://", "https://")):
        raise InvalidInputError(
            f"{field_name}: LOCAL loads LoRA files from the LoRA folder (a path such as "
            f"'identities/name.safetensors'), not URLs",
            loc=loc,
        )
    base = root.resolve()
    candidate = Path(raw)
    if candidate.is_absolute():  # an upload's full path is accepted when it lies inside the LoRA folder
        if ".." in candidate.parts or not candidate.is_relative_to(base):
            raise InvalidInputError(f"{field_name}: {raw!r} is outside the LoRA folder", loc=loc)
        raw = candidate.relative_to(base).as_posix()
    relative = safe_relative_path(raw, loc=loc)  # refuses '..', '~', backslashes, control characters
    path = (base / relative).resolve()
    if not path.is_relative_to(base):  # a symlink pointing out of the folder
        raise InvalidInputError(f"{field_name}: {relative!r} is outside the LoRA folder", loc=loc)
    if not relative.lower().endswith(".safetensors"):
        raise InvalidInputError(
            f"{field_name}: only .safetensors LoRA files are loaded ({relative!r}; pickled formats are refused)",
            loc=loc,
        )
    if not path.is_file():
        raise InvalidInputError(f"{field_name}: no LoRA file {relative!r} in the LoRA folder", loc=loc)
    return path, relative


def task_loras(inputs: dict[str, Any], root: Path) -> list[LoraSpec]:
    """The LoRAs a task names, resolved and checked (a missing weight means 1.0)."""
    loras = []
    for name, path_field, weight_field in LORA_FIELDS:
        raw = inputs.get(path_field)
        if not raw:
            continue
        path, relative = resolve_lora_path(root, str(raw), path_field)
        weight = inputs.get(weight_field)
        loras.append(LoraSpec(name, path_field, path, relative, 1.0 if weight is None else float(weight)))
    return loras


def _number(config: dict[str, Any], name: str, kind: type[int] | type[float]) -> int | float | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or (kind is int and not float(value).is_integer()):
        raise InvalidInputError(f"config.{name} must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


@dataclass
class RunPlan:
    """What one run does, worked out before any model is touched."""

    prompt: str
    seed: int
    steps: int
    guidance_scale: float | None
    negative_prompt: str | None
    strength: float | None  # image-to-image denoising strength; None: text-to-image
    source_field: str | None
    notes: list[str]


def plan_run(ctx: ProviderContext, settings: DiffusionSettings) -> RunPlan:
    """Seed, steps, guidance, strength and image source from the task (and its ``config`` knobs)."""
    config = ctx.task_config
    notes: list[str] = []
    steps = _number(config, "num_inference_steps", int)
    if steps is None:
        steps = settings.default_steps
    if not 1 <= steps <= settings.max_steps:
        raise InvalidInputError(f"config.num_inference_steps must be between 1 and {settings.max_steps}")
    guidance = _number(config, "guidance_scale", float)
    negative = config.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise InvalidInputError("config.negative_prompt must be a string")
    seed = ctx.inputs.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**32)
        notes.append(f"no seed given: drew {seed}")
    strength = _number(config, "strength", float)
    if strength is not None and not 0.0 < strength <= 1.0:
        raise InvalidInputError("config.strength must be in (0, 1]")
    source_field: str | None = None
    if ctx.task_type == TaskType.EDITING:
        source_field = "base_image_path"
        if not ctx.inputs.get(source_field):
            raise InvalidInputError("EDITING needs a base image", loc=("task_data", source_field))
        if ctx.inputs.get("reference_images") or ctx.inputs.get("reference_image_path"):
            notes.append("reference images are not used by LOCAL editing (image-to-image from the base image)")
    elif ctx.inputs.get("reference_image_path"):
        source_field = "reference_image_path"
        influence = ctx.inputs.get("reference_image_strength")
        if influence is not None:  # influence of the reference (0-100) → denoising strength
            strength = 1.0 - float(influence) / 100.0
    if source_field is not None:
        strength = DEFAULT_STRENGTH if strength is None else strength
        if strength * steps < 1.0:
            notes.append(f"strength {strength:g} leaves no denoising step of {steps}: raised to one step")
            strength = min(1.0, (1.0 + 1e-9) / steps)  # int(steps * strength) must not round down to 0
    else:
        strength = None
    return RunPlan(str(ctx.inputs["prompt"]), int(seed), int(steps), guidance, negative, strength, source_field, notes)


def size_multiple(pipeline: Any) -> int:
    """What width and height must be a multiple of: 8 for UNet pipelines, 2 × the VAE scale for packed latents."""
    vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
    packed = getattr(pipeline, "transformer", None) is not None and "Flux" in type(pipeline).__name__
    return max(8, vae_scale * 2 if packed else vae_scale)


def default_size(pipeline: Any) -> int:
    """The pipeline's native square size in pixels."""
    vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
    sample = getattr(pipeline, "default_sample_size", None)
    unet = getattr(pipeline, "unet", None)
    if sample is None and unet is not None:
        sample = unet.config.sample_size
    return int(sample or 64) * vae_scale


def output_size(
    pipeline: Any, width: Any, height: Any, source: Image.Image | None, max_pixels: int, notes: list[str]
) -> tuple[int, int]:
    """Requested size (the source image's, or the pipeline's default, when missing), rounded to the multiple."""
    aspect = source.width / source.height if source is not None else 1.0
    if width is None and height is None:
        if source is not None:
            width, height = source.width, source.height
        else:
            width = height = default_size(pipeline)
    elif width is None:
        width = round(int(height) * aspect)
    elif height is None:
        height = round(int(width) / aspect)
    multiple = size_multiple(pipeline)
    rounded = tuple(max(multiple, int(int(v) / multiple + 0.5) * multiple) for v in (width, height))  # half up
    if rounded != (int(width), int(height)):
        notes.append(f"size {width}x{height} rounded to {rounded[0]}x{rounded[1]} (multiple of {multiple})")
    if rounded[0] * rounded[1] > max_pixels:
        raise InvalidInputError(f"{rounded[0]}x{rounded[1]} is more than the {max_pixels} pixels allowed")
    return rounded[0], rounded[1]


def load_adapters(pipeline: Any, loras: list[LoraSpec]) -> None:
    """Load every LoRA as a named adapter and activate them with their weights."""
    if not loras:
        return
    if not hasattr(pipeline, "load_lora_weights"):
        raise InvalidInputError(f"the base model's {type(pipeline).__name__} does not take LoRAs")
    for lora in loras:
        try:
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
                pipeline.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=lora.name)
        except Exception as exc:  # whatever a foreign file makes diffusers/peft raise, it is the file's fault
            raise InvalidInputError(
                f"{lora.field}: the LoRA {lora.relative!r} does not fit the base model ({type(exc).__name__}: {exc})",
                loc=("task_data", lora.field),
            ) from exc
    pipeline.set_adapters([lora.name for lora in loras], adapter_weights=[lora.weight for lora in loras])


def unload_adapters(pipeline: Any) -> None:
    """Remove every LoRA layer: the cached pipeline is the base pipeline again."""
    if not hasattr(pipeline, "get_list_adapters") or not any(pipeline.get_list_adapters().values()):
        return
    pipeline.unload_lora_weights()


class LocalDiffusion:
    """GENERATION (text-to-image, or image-to-image from a reference) and EDITING (image-to-image) on diffusers."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.GENERATION, TaskType.EDITING})

    def __init__(self, settings: DiffusionSettings | None = None, lora_root: Path | None = None) -> None:
        # Without arguments (the default registry), both come from the environment's settings on first use.
        self._settings = settings
        self._lora_root = lora_root

    def configure(self, settings: Settings) -> None:
        """Take the runtime's settings (called by the registry when the runtime is built); explicit ones win."""
        self._settings = self._settings or settings.diffusion
        self._lora_root = self._lora_root or settings.lora_root

    def _config(self) -> tuple[DiffusionSettings, Path]:
        if self._settings is None or self._lora_root is None:
            env = Settings()
            self._settings = self._settings or env.diffusion
            self._lora_root = self._lora_root or env.lora_root
        return self._settings, self._lora_root

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Plan → resolve LoRAs → (cached) pipeline → adapters → denoise with progress/cancel → store a PNG."""
        settings, lora_root = self._config()
        started = time.perf_counter()
        plan = plan_run(ctx, settings)
        loras = task_loras(ctx.inputs, lora_root)  # refused before any model is loaded
        source = None
        if plan.source_field is not None:
            source = ctx.load_image(str(ctx.inputs[plan.source_field]), plan.source_field).convert("RGB")
        ctx.check_cancelled()
        entry = get_pipeline(settings)
        ctx.progress(_PROGRESS_LOADED)
        width, height = output_size(
            entry.pipeline, ctx.inputs.get("width"), ctx.inputs.get("height"), source, settings.max_pixels, plan.notes
        )
        with entry.lock:  # one run at a time per pipeline: adapters are pipeline state
            pipeline = image_to_image(entry) if source is not None else entry.pipeline
            ctx.check_cancelled()
            try:
                load_adapters(pipeline, loras)
                ctx.progress(_PROGRESS_READY)
                image = self._denoise(ctx, pipeline, plan, width, height, source)
            finally:
                unload_adapters(pipeline)
        ctx.check_cancelled()
        metadata: dict[str, Any] = {
            "base_model": settings.base_model_path,
            "pipeline": type(pipeline).__name__,
            "seed": plan.seed,
            "num_inference_steps": plan.steps,
            "width": image.width,
            "height": image.height,
            "strength": plan.strength,
            "adapters": [{"name": lr.name, "path": lr.relative, "weight": lr.weight} for lr in loras],
            "notes": plan.notes,
        }
        ctx.log_request(
            {
                "service": SERVICE,
                **metadata,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "at": datetime.now(UTC).isoformat(),
            }
        )
        return ProviderResult(
            outputs={
                "result_image_path": store_image(ctx, image, None),
                "width": image.width,
                "height": image.height,
                "seed": plan.seed,
                "diffusion_metadata": metadata,
            }
        )

    @staticmethod
    def _denoise(
        ctx: ProviderContext, pipeline: Any, plan: RunPlan, width: int, height: int, source: Image.Image | None
    ) -> Image.Image:
        import torch

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            ctx.check_cancelled()  # raises TaskCancelledError out of the denoising loop
            total = getattr(pipe, "num_timesteps", None) or plan.steps
            span = _PROGRESS_DONE - _PROGRESS_READY
            ctx.progress(_PROGRESS_READY + span * min(1.0, (step + 1) / total))
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "num_inference_steps": plan.steps,
            "generator": torch.Generator(device="cpu").manual_seed(plan.seed),  # same noise on every device
            "callback_on_step_end": on_step_end,
        }
        if plan.guidance_scale is not None:
            kwargs["guidance_scale"] = plan.guidance_scale
        if plan.negative_prompt:
            kwargs["negative_prompt"] = plan.negative_prompt
        if source is not None:
            kwargs["image"] = source.resize((width, height), Image.Resampling.LANCZOS)
            kwargs["strength"] = plan.strength
        if source is None or "width" in inspect.signature(pipeline.__call__).parameters:
            kwargs["width"], kwargs["height"] = width, height  # SD image-to-image takes the image's size
        result = pipeline(**kwargs)
        image: Image.Image = result.images[0]
        return image
