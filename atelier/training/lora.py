"""LoRA training for Stable-Diffusion- and Flux-style diffusers pipelines (the ML core behind training jobs).

SD-style pipelines train a LoRA on the UNet's attention with the epsilon/v-prediction loss; Flux-style ones
train it on the transformer's attention with the rectified-flow (flow-matching) loss and logit-normal timesteps,
as diffusers' and ai-toolkit's Flux trainers do.

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
SUPPORTED = ("StableDiffusionPipeline", "FluxPipeline")


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
    optimizer: Literal["adamw8bit", "adamw"] = Field(
        "adamw8bit", description="adamw8bit where bitsandbytes and CUDA are present, else AdamW (logged)"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="Autocast dtype on CUDA; always off on CPU"
    )
    device: str | None = Field(None, description="torch device; None: cuda when available, else cpu")
    guidance_scale: float = Field(1.0, ge=0, description="Flux: the guidance value fed to a guidance-distilled model")
    bypass_guidance_embedding: bool = Field(
        False, description="Flux: zero the guidance embedding during training (ai-toolkit's bypass)"
    )
    max_sequence_length: int = Field(256, ge=8, le=512, description="Flux: T5 tokens per caption")

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

    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate), "adamw"
    if device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=config.learning_rate), "adamw8bit"
    log.info("optimizer: torch AdamW (adamw8bit needs bitsandbytes and CUDA; device is %s)", device)
    return torch.optim.AdamW(params, lr=config.learning_rate), "adamw"


def _checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.safetensors"


def optim_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".optim.pt")


def kept_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def _prune(output_dir: Path, keep: int) -> None:
    checkpoints = kept_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        old.unlink(missing_ok=True)
        optim_path(old).unlink(missing_ok=True)


def _lora_layers(model: Any) -> dict[str, Any]:
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}


def _save_lora(backbone: _Backbone, config: LoraTrainingConfig, path: Path, step: int, optimizer: Any | None) -> Path:
    """Write the adapter in the diffusers LoRA format, with the step (and our config) in the metadata."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    backbone.save_weights(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata[STEP_METADATA_KEY] = str(step)
    metadata["atelier_rank"] = str(config.rank)
    metadata["atelier_alpha"] = str(config.lora_alpha)
    metadata["atelier_base_model"] = config.base_model_path
    metadata["atelier_family"] = backbone.family
    save_file(load_file(str(path)), str(path), metadata=metadata)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), optim_path(path))
    return path


def _load_lora_into(model: Any, prefix: str, checkpoint: Path) -> None:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(checkpoint))
    own = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    if not own:
        raise ValueError(f"{checkpoint} holds no {prefix} LoRA layers: not a checkpoint of this base model")
    result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(own), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{checkpoint} does not match this model's LoRA layers: unexpected keys {unexpected[:3]}")


class _Backbone:
    """What differs between pipeline families: loading, encoding the dataset, the loss, saving, sampling."""

    family = ""
    prefix = ""  # the LoRA layers' key prefix in the saved file (diffusers' convention)
    model: Any  # the module the LoRA is added to

    def __init__(self, base: Path, config: LoraTrainingConfig, device: str, dtype: Any) -> None:
        self.base, self.config, self.device, self.dtype = base, config, device, dtype

    def frozen(self) -> list[Any]:
        raise NotImplementedError

    def encode(self, images: list[Image.Image], captions: list[str]) -> int:
        """Encode the dataset once (the encoders are frozen); returns the number of examples."""
        raise NotImplementedError

    def loss(self, index: Any, generator: Any, autocast: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def save_weights(self, path: Path) -> None:
        raise NotImplementedError

    def pipeline(self) -> Any:
        raise NotImplementedError

    def _encode_latents(self, vae: Any, images: list[Image.Image]) -> None:
        import torch

        with torch.no_grad():
            pixels = _prepare_images(images, self.config.resolution).to(self.device, self.dtype)
            dist = vae.encode(pixels).latent_dist
        self.latent_mean, self.latent_std = dist.mean.float(), dist.std.float()

    def _sample_latents(self, index: Any, generator: Any) -> Any:
        import torch

        eps = torch.randn(self.latent_mean[index].shape, generator=generator)
        return self.latent_mean[index] + self.latent_std[index] * eps.to(self.device)


class _StableDiffusion(_Backbone):
    family = "sd"
    prefix = "unet"

    def __init__(self, base: Path, config: LoraTrainingConfig, device: str, dtype: Any) -> None:
        super().__init__(base, config, device, dtype)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        where = {"pretrained_model_name_or_path": str(base), "local_files_only": True}
        self.tokenizer = CLIPTokenizer.from_pretrained(subfolder="tokenizer", **where)
        self.text_encoder = CLIPTextModel.from_pretrained(subfolder="text_encoder", **where)
        self.vae = AutoencoderKL.from_pretrained(subfolder="vae", **where)
        self.model = UNet2DConditionModel.from_pretrained(subfolder="unet", **where)
        self.scheduler = DDPMScheduler.from_pretrained(subfolder="scheduler", **where)

    def frozen(self) -> list[Any]:
        return [self.text_encoder, self.vae, self.model]

    def encode(self, images: list[Image.Image], captions: list[str]) -> int:
        import torch

        self._encode_latents(self.vae, images)
        with torch.no_grad():
            ids = self.tokenizer(
                captions,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            self.text_embeddings = self.text_encoder(ids)[0].float()
        return int(self.latent_mean.shape[0])

    def loss(self, index: Any, generator: Any, autocast: Callable[[], Any]) -> Any:
        import torch

        config, scheduler = self.config, self.scheduler
        latents = self._sample_latents(index, generator) * float(self.vae.config.scaling_factor)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = int(scheduler.config.num_train_timesteps)
        timesteps = torch.randint(0, steps, (config.batch_size,), generator=generator).to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with autocast():
            prediction = self.model(noisy.to(self.dtype), timesteps, self.text_embeddings[index].to(self.dtype)).sample
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def save_weights(self, path: Path) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            str(path.parent),
            unet_lora_layers=_lora_layers(self.model),
            weight_name=path.name,
            safe_serialization=True,
            unet_lora_adapter_metadata=self.model.peft_config["default"].to_dict(),
        )

    def pipeline(self) -> Any:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.model,
            scheduler=DDIMScheduler.from_pretrained(str(self.base), subfolder="scheduler", local_files_only=True),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


class _Flux(_Backbone):
    family = "flux"
    prefix = "transformer"

    def __init__(self, base: Path, config: LoraTrainingConfig, device: str, dtype: Any) -> None:
        super().__init__(base, config, device, dtype)
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        where = {"pretrained_model_name_or_path": str(base), "local_files_only": True}
        self.tokenizer = CLIPTokenizer.from_pretrained(subfolder="tokenizer", **where)
        self.text_encoder = CLIPTextModel.from_pretrained(subfolder="text_encoder", **where)
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(subfolder="tokenizer_2", **where)
        self.text_encoder_2 = T5EncoderModel.from_pretrained(subfolder="text_encoder_2", **where)
        self.vae = AutoencoderKL.from_pretrained(subfolder="vae", **where)
        self.model = FluxTransformer2DModel.from_pretrained(subfolder="transformer", **where)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(subfolder="scheduler", **where)
        self._hook: Any = None
        embedder = getattr(getattr(self.model, "time_text_embed", None), "guidance_embedder", None)
        if config.bypass_guidance_embedding and embedder is not None:
            # The guidance embedding's contribution is zeroed: the LoRA never learns to lean on it.
            self._hook = embedder.register_forward_hook(lambda _m, _i, output: output * 0)

    def frozen(self) -> list[Any]:
        return [self.text_encoder, self.text_encoder_2, self.vae, self.model]

    def _components(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "text_encoder_2": self.text_encoder_2,
            "tokenizer_2": self.tokenizer_2,
            "transformer": self.model,
        }

    def encode(self, images: list[Image.Image], captions: list[str]) -> int:
        import torch
        from diffusers import FluxPipeline

        self._encode_latents(self.vae, images)
        with torch.no_grad():
            encoder = FluxPipeline(**self._components())
            embeds, pooled, text_ids = encoder.encode_prompt(
                prompt=captions,
                prompt_2=captions,
                device=torch.device(self.device),
                max_sequence_length=self.config.max_sequence_length,
            )
        self.prompt_embeds, self.pooled, self.text_ids = embeds.float(), pooled.float(), text_ids
        _, channels, height, width = self.latent_mean.shape
        if height % 2 or width % 2:
            raise ValueError(
                f"resolution {self.config.resolution} gives odd latents ({height}×{width}): use a multiple of 16"
            )
        self.latent_shape = (channels, height, width)
        self.image_ids = FluxPipeline._prepare_latent_image_ids(
            1, height // 2, width // 2, torch.device(self.device), torch.float32
        )
        return int(self.latent_mean.shape[0])

    def loss(self, index: Any, generator: Any, autocast: Callable[[], Any]) -> Any:
        import torch
        from diffusers import FluxPipeline

        vae = self.vae.config
        x0 = (self._sample_latents(index, generator) - float(vae.shift_factor or 0.0)) * float(vae.scaling_factor)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        batch = x0.shape[0]
        sigma = torch.sigmoid(torch.randn((batch,), generator=generator)).to(self.device)  # logit-normal
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1.0 - s) * x0 + s * noise
        channels, height, width = self.latent_shape
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        target = FluxPipeline._pack_latents(noise - x0, batch, channels, height, width)
        guidance = None
        if getattr(self.model.config, "guidance_embeds", False):
            guidance = torch.full((batch,), self.config.guidance_scale, device=self.device)
        with autocast():
            prediction = self.model(
                hidden_states=packed.to(self.dtype),
                timestep=sigma.to(self.dtype),
                guidance=guidance,
                pooled_projections=self.pooled[index].to(self.dtype),
                encoder_hidden_states=self.prompt_embeds[index].to(self.dtype),
                txt_ids=self.text_ids,
                img_ids=self.image_ids,
                return_dict=False,
            )[0]
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def save_weights(self, path: Path) -> None:
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            str(path.parent),
            transformer_lora_layers=_lora_layers(self.model),
            weight_name=path.name,
            safe_serialization=True,
            transformer_lora_adapter_metadata=self.model.peft_config["default"].to_dict(),
        )

    def pipeline(self) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline(**self._components())


def _backbone(base: Path, config: LoraTrainingConfig, device: str, dtype: Any) -> _Backbone:
    family = _pipeline_class(base)
    if family == "StableDiffusionPipeline":
        return _StableDiffusion(base, config, device, dtype)
    if family == "FluxPipeline":
        return _Flux(base, config, device, dtype)
    raise ValueError(f"{base} holds a {family or 'unknown'} pipeline; LoRA training supports {', '.join(SUPPORTED)}")


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
    if _pipeline_class(base) not in SUPPORTED:
        raise ValueError(
            f"{base} holds a {_pipeline_class(base) or 'unknown'} pipeline; LoRA training supports "
            f"{', '.join(SUPPORTED)}"
        )

    import torch
    from peft import LoraConfig

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = None
    if device.startswith("cuda") and config.mixed_precision != "no":
        autocast_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    frozen_dtype = autocast_dtype or torch.float32

    backbone = _backbone(base, config, device, frozen_dtype)
    model = backbone.model
    for module in backbone.frozen():
        module.requires_grad_(False)
        if frozen_dtype == torch.float32:
            module.to(device)
        else:
            module.to(device, dtype=frozen_dtype)
        if module is not model:
            module.eval()

    torch.manual_seed(config.seed)
    model.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(config.target_modules),
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # the trained weights stay in fp32 under autocast

    start_step = 0
    if resume_from is not None:
        resume_from = Path(resume_from)
        start_step = checkpoint_step(resume_from)
        _load_lora_into(model, backbone.prefix, resume_from)
    optimizer, optimizer_name = _make_optimizer(params, config, device)
    if resume_from is not None and optim_path(resume_from).is_file():
        optimizer.load_state_dict(torch.load(optim_path(resume_from), map_location=device, weights_only=True))

    n_images = backbone.encode(images, captions)

    config.output_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Path] = []
    losses: list[float] = []
    began = time.monotonic()
    step = start_step
    stopped = False
    stop_checkpoint: Path | None = None
    model.train()

    def autocast() -> Any:
        if autocast_dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type="cuda", dtype=autocast_dtype)

    while step < config.steps:
        if should_stop is not None and should_stop():
            stop_checkpoint = _save_lora(backbone, config, config.output_dir / _checkpoint_name(step), step, optimizer)
            _prune(config.output_dir, config.max_step_saves_to_keep)
            stopped = True
            break
        # One generator per step: a resumed run draws exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        micro_losses = []
        for _ in range(config.gradient_accumulation):
            index = torch.randint(0, n_images, (config.batch_size,), generator=generator)
            loss = backbone.loss(index, generator, autocast)
            (loss / config.gradient_accumulation).backward()
            micro_losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(sum(micro_losses) / len(micro_losses))

        if config.save_every and step % config.save_every == 0 and step < config.steps:
            _save_lora(backbone, config, config.output_dir / _checkpoint_name(step), step, optimizer)
            _prune(config.output_dir, config.max_step_saves_to_keep)
        if config.sample_every and step % config.sample_every == 0:
            samples += _sample(backbone, config, step)
        elapsed = time.monotonic() - began
        per_step = elapsed / (step - start_step)
        if on_step is not None:
            on_step(StepReport(step, config.steps, losses[-1], per_step * (config.steps - step), elapsed))

    if stopped:
        assert stop_checkpoint is not None
        lora_path = stop_checkpoint
    else:
        lora_path = _save_lora(backbone, config, config.output_dir / FINAL_NAME, step, None)
    return LoraTrainingResult(
        lora_path=lora_path,
        checkpoints=kept_checkpoints(config.output_dir),
        samples=samples,
        losses=losses,
        steps_done=step,
        stopped=stopped,
        optimizer=optimizer_name,
        device=device,
        extra={"family": backbone.family},
    )


def _sample(backbone: _Backbone, config: LoraTrainingConfig, step: int) -> list[Path]:
    """Generate one image per sample prompt with the current LoRA into ``output_dir/samples``."""
    import torch

    pipeline = backbone.pipeline()
    pipeline.set_progress_bar_config(disable=True)
    folder = config.output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    backbone.model.eval()
    extra = {"guidance_scale": config.guidance_scale} if backbone.family == "flux" else {}
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
                    **extra,
                ).images[0]
            path = folder / f"step_{step:06d}_{i:02d}.png"
            image.save(path)
            paths.append(path)
    finally:
        backbone.model.train()
    return paths
