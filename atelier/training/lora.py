"""LoRA training for Stable-Diffusion-style diffusers pipelines (the ML core behind LoRA training jobs).

The knobs follow ai-toolkit's names (rank, alpha, steps, save_every, max_step_saves_to_keep, sample_every…).
Checkpoints and the final file are LoRA weights in the diffusers format (what ``load_lora_weights`` reads),
written as safetensors whose metadata records the step (``atelier_step``) so a run can resume from one; the
optimizer state travels beside each checkpoint (``step_000100.optim.pt``) so a resumed run continues the same
trajectory. torch, diffusers and peft are imported inside the functions (the ``ml`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

STEP_METADATA_KEY = "atelier_step"
FINAL_NAME = "lora.safetensors"
_CHECKPOINT = re.compile(r"^step_(\d{6,})\.safetensors$")
SD_ONLY = "LoRA training supports SD-style pipelines for now"


class LoraTrainingConfig(BaseModel):
    """One LoRA training run (ai-toolkit-style names)."""

    model_config = ConfigDict(extra="forbid")

    base_model_path: str = Field(
        description="A local diffusers folder, or a Hugging Face hub id already in the local cache (never downloaded)"
    )
    output_dir: Path = Field(description="Local folder for checkpoints, the final LoRA and samples")
    rank: int = Field(16, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / rank); None means rank")
    learning_rate: float = Field(1e-4, gt=0)
    steps: int = Field(1000, ge=1, description="Optimizer steps in total (a resumed run counts the earlier ones)")
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    resolution: int = Field(512, ge=8, description="Training images are resized and center-cropped to this square")
    save_every: int = Field(250, ge=0, description="Checkpoint every N steps (0: none but the final)")
    max_step_saves_to_keep: int = Field(4, ge=1, description="Older step checkpoints are deleted")
    sample_every: int = Field(0, ge=0, description="Generate samples every N steps (0: never)")
    sample_prompts: list[str] = Field(default_factory=list)
    sample_steps: int = Field(20, ge=1, description="Inference steps per sample")
    seed: int = 42
    target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="Autocast dtype on CUDA; always off on CPU"
    )
    device: str | None = Field(None, description="torch device; None: cuda when available, else cpu")

    @model_validator(mode="after")
    def _samples_need_prompts(self) -> LoraTrainingConfig:
        if self.sample_every and not self.sample_prompts:
            raise ValueError("sample_every needs sample_prompts")
        return self

    @property
    def lora_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else self.alpha


@dataclass(frozen=True)
class StepReport:
    step: int
    total_steps: int
    loss: float
    eta_seconds: float
    elapsed: float


@dataclass
class LoraTrainingResult:
    lora_path: Path  # lora.safetensors when the run completed; the checkpoint written at the stop otherwise
    checkpoints: list[Path]  # step checkpoints kept on disk, oldest first
    samples: list[Path]
    losses: list[float]  # one per optimizer step run in this call
    steps_done: int  # the step reached (counting the steps before a resume)
    stopped: bool
    optimizer: str  # "adamw8bit" or "adamw"
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_step(path: Path) -> int:
    """The step recorded in a checkpoint's safetensors metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if STEP_METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no {STEP_METADATA_KEY!r} metadata: not a checkpoint of this trainer")
    return int(metadata[STEP_METADATA_KEY])


def resolve_base_model(base: str) -> Path:
    """A local diffusers folder for ``base``: the folder itself, or the hub id's snapshot in the local HF cache."""
    local = Path(base).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"base model {base!r} is not a diffusers folder (no model_index.json)")
        return local
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base):
        raise ValueError(f"base model {base!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(base, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise ValueError(
            f"base model {base!r} is neither a local diffusers folder nor in the local Hugging Face cache "
            "(models are never downloaded here)"
        ) from exc
    if not (snapshot / "model_index.json").is_file():
        raise ValueError(f"base model {base!r} in the local cache is not a diffusers pipeline")
    return snapshot


def _pipeline_class(folder: Path) -> str:
    return str(json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))


def _prepare_images(images: list[Image.Image], resolution: int) -> Any:
    """Images → float tensor (N, 3, R, R) in [-1, 1]: resized (short side) and center-cropped."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        scale = resolution / min(rgb.size)
        size = (max(resolution, round(rgb.width * scale)), max(resolution, round(rgb.height * scale)))
        rgb = rgb.resize(size, PILImage.Resampling.BICUBIC)
        left, top = (rgb.width - resolution) // 2, (rgb.height - resolution) // 2
        rgb = rgb.crop((left, top, left + resolution, top + resolution))
        arrays.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _make_optimizer(params: list[Any], config: LoraTrainingConfig, device: str) -> tuple[Any, str]:
    import importlib.util

    import torch

    if device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=config.learning_rate), "adamw8bit"
    log.info("optimizer: torch AdamW (adamw8bit needs bitsandbytes and CUDA; device is %s)", device)
    return torch.optim.AdamW(params, lr=config.learning_rate), "adamw"


def _checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.safetensors"


def _optim_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".optim.pt")


def _kept_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def _prune(output_dir: Path, keep: int) -> None:
    checkpoints = _kept_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        old.unlink(missing_ok=True)
        _optim_path(old).unlink(missing_ok=True)


def _save_lora(unet: Any, config: LoraTrainingConfig, path: Path, step: int, optimizer: Any | None) -> Path:
    """Write the adapter in the diffusers LoRA format, with the step (and our config) in the metadata."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent),
        unet_lora_layers=layers,
        weight_name=path.name,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata[STEP_METADATA_KEY] = str(step)
    metadata["atelier_rank"] = str(config.rank)
    metadata["atelier_alpha"] = str(config.lora_alpha)
    metadata["atelier_base_model"] = config.base_model_path
    save_file(load_file(str(path)), str(path), metadata=metadata)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), _optim_path(path))
    return path


def _load_lora_into(unet: Any, checkpoint: Path) -> None:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(checkpoint))
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{checkpoint} does not match this model's LoRA layers: unexpected keys {unexpected[:3]}")


def train_lora(
    config: LoraTrainingConfig,
    images: list[Image.Image],
    captions: list[str],
    *,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: Path | None = None,
) -> LoraTrainingResult:
    """Train a LoRA on ``images``/``captions`` for ``config.steps`` optimizer steps (see the module docstring).

    ``should_stop`` is asked before every step; when it says so, the current state is saved as a step checkpoint
    and the result comes back with ``stopped=True``. ``resume_from`` (a checkpoint of this trainer) continues from
    the step recorded in it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not images or len(images) != len(captions):
        raise ValueError(f"need one caption per image and at least one image (got {len(images)}, {len(captions)})")
    base = resolve_base_model(config.base_model_path)
    if _pipeline_class(base) != "StableDiffusionPipeline":
        raise ValueError(f"{SD_ONLY}: {base} holds a {_pipeline_class(base) or 'unknown'} pipeline")

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = None
    if device.startswith("cuda") and config.mixed_precision != "no":
        autocast_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    frozen_dtype = autocast_dtype or torch.float32

    tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", local_files_only=True)
    noise_scheduler = DDPMScheduler.from_pretrained(str(base), subfolder="scheduler", local_files_only=True)
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        if frozen_dtype == torch.float32:
            module.to(device)
        else:
            module.to(device, dtype=frozen_dtype)
    text_encoder.eval()
    vae.eval()

    torch.manual_seed(config.seed)
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(config.target_modules),
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # the trained weights stay in fp32 under autocast

    start_step = 0
    if resume_from is not None:
        resume_from = Path(resume_from)
        start_step = checkpoint_step(resume_from)
        _load_lora_into(unet, resume_from)
    optimizer, optimizer_name = _make_optimizer(params, config, device)
    if resume_from is not None and _optim_path(resume_from).is_file():
        optimizer.load_state_dict(torch.load(_optim_path(resume_from), map_location=device, weights_only=True))

    # The encoders are frozen: encode the dataset once.
    with torch.no_grad():
        pixels = _prepare_images(images, config.resolution).to(device, frozen_dtype)
        dist = vae.encode(pixels).latent_dist
        latent_mean, latent_std = dist.mean.float(), dist.std.float()
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        text_embeddings = text_encoder(ids)[0].float()
    scaling = float(vae.config.scaling_factor)
    prediction_type = noise_scheduler.config.prediction_type
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    n_images = latent_mean.shape[0]

    config.output_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Path] = []
    losses: list[float] = []
    began = time.monotonic()
    step = start_step
    stopped = False
    stop_checkpoint: Path | None = None
    unet.train()

    def autocast() -> Any:
        if autocast_dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type="cuda", dtype=autocast_dtype)

    while step < config.steps:
        if should_stop is not None and should_stop():
            stop_checkpoint = _save_lora(unet, config, config.output_dir / _checkpoint_name(step), step, optimizer)
            _prune(config.output_dir, config.max_step_saves_to_keep)
            stopped = True
            break
        # One generator per step: a resumed run draws exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        micro_losses = []
        for _ in range(config.gradient_accumulation):
            index = torch.randint(0, n_images, (config.batch_size,), generator=generator)
            eps = torch.randn(latent_mean[index].shape, generator=generator)
            latents = (latent_mean[index] + latent_std[index] * eps.to(device)) * scaling
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, num_train_timesteps, (config.batch_size,), generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            with autocast():
                prediction = unet(noisy.to(frozen_dtype), timesteps, text_embeddings[index].to(frozen_dtype)).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            (loss / config.gradient_accumulation).backward()  # type: ignore[no-untyped-call]
            micro_losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(sum(micro_losses) / len(micro_losses))

        if config.save_every and step % config.save_every == 0 and step < config.steps:
            _save_lora(unet, config, config.output_dir / _checkpoint_name(step), step, optimizer)
            _prune(config.output_dir, config.max_step_saves_to_keep)
        if config.sample_every and step % config.sample_every == 0:
            samples += _sample(unet, vae, text_encoder, tokenizer, base, config, step, device)
        elapsed = time.monotonic() - began
        per_step = elapsed / (step - start_step)
        if on_step is not None:
            on_step(StepReport(step, config.steps, losses[-1], per_step * (config.steps - step), elapsed))

    if stopped:
        assert stop_checkpoint is not None
        lora_path = stop_checkpoint
    else:
        lora_path = _save_lora(unet, config, config.output_dir / FINAL_NAME, step, None)
    return LoraTrainingResult(
        lora_path=lora_path,
        checkpoints=_kept_checkpoints(config.output_dir),
        samples=samples,
        losses=losses,
        steps_done=step,
        stopped=stopped,
        optimizer=optimizer_name,
        device=device,
    )


def _sample(
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    base: Path,
    config: LoraTrainingConfig,
    step: int,
    device: str,
) -> list[Path]:
    """Generate one image per sample prompt with the current LoRA into ``output_dir/samples``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_pretrained(str(base), subfolder="scheduler", local_files_only=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    folder = config.output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    unet.eval()
    try:
        for i, prompt in enumerate(config.sample_prompts):
            generator = torch.Generator().manual_seed(config.seed + i)
            with torch.no_grad():
                image = pipeline(
                    prompt,
                    num_inference_steps=config.sample_steps,
                    height=config.resolution,
                    width=config.resolution,
                    generator=generator,
                ).images[0]
            path = folder / f"step_{step:06d}_{i:02d}.png"
            image.save(path)
            paths.append(path)
    finally:
        unet.train()
    return paths
