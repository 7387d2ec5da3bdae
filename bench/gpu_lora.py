"""LoRA training step time on a GPU: our trainer vs a plain diffusers + peft loop on the same tiny pipeline.

    python -m bench.gpu_lora [--steps 300] [--rounds 2] [--out DIR]

Builds the tiny SD-style pipeline (`atelier tiny-pipeline`), then interleaves rounds of `train_lora` and of a
minimal loop written the usual way (same model, LoRA config, batch, optimizer, bf16 autocast, gradient clipping,
a `loss.item()` per step). The time per step is taken over steps 50..N of each run (after warm-up), with the
device synchronised. The goal is ours ≤ 1.1× the plain loop. Finally it generates an image with the trained LoRA
and one without, and checks that they differ. Needs the `ml` extra; runs on CPU too (slowly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from atelier.training.lora import LoraTrainingConfig, StepReport, train_lora
from atelier.training.tiny import build_tiny_pipeline

WARMUP = 50
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]


def toy_dataset(size: int = 64) -> tuple[list[Image.Image], list[str]]:
    images = []
    for n, colour in enumerate(COLOURS):
        image = Image.new("RGB", (size, size), colour)
        for x in range(0, size, 8):
            for y in range(size):
                if (x // 8 + n) % 2 == 0:
                    image.putpixel((x, y), (255, 255, 255))
        images.append(image)
    return images, [f"a sks striped pattern number {n}" for n in range(len(images))]


def ours(base: Path, out: Path, steps: int, batch: int, rank: int) -> tuple[float, list[float]]:
    import torch

    marks: dict[int, float] = {}

    def on_step(report: StepReport) -> None:
        if report.step in (WARMUP, steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[report.step] = time.perf_counter()

    images, captions = toy_dataset()
    config = LoraTrainingConfig(
        base_model_path=str(base),
        output_dir=out,
        rank=rank,
        learning_rate=1e-3,
        steps=steps,
        batch_size=batch,
        resolution=64,
        save_every=0,
        seed=1,
    )
    result = train_lora(config, images, captions, on_step=on_step)
    return (marks[steps] - marks[WARMUP]) / (steps - WARMUP), result.losses


def plain(base: Path, steps: int, batch: int, rank: int) -> float:
    """The loop as one writes it from the diffusers + peft documentation."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder").to(device, dtype)
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae").to(device, dtype)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet").to(device, dtype)
    scheduler = DDPMScheduler.from_pretrained(str(base), subfolder="scheduler")
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    images, captions = toy_dataset()
    pixels = torch.stack(
        [torch.from_numpy(__import__("numpy").asarray(i, dtype="float32")).permute(2, 0, 1) / 127.5 - 1 for i in images]
    ).to(device, dtype)
    with torch.no_grad():
        latents_all = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        embeddings = text_encoder(ids.input_ids.to(device))[0]
    start = 0.0
    for step in range(steps):
        if step == WARMUP:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        index = torch.randint(0, len(images), (batch,))
        latents = latents_all[index].float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            prediction = unet(noisy.to(dtype), timesteps, embeddings[index]).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps - WARMUP)


def generate(base: Path, lora: Path, out: Path) -> float:
    """Mean absolute pixel difference between images with and without the LoRA (same seed)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None).to(device)
    kwargs: dict[str, Any] = {
        "prompt": "a sks striped pattern number 1",
        "num_inference_steps": 10,
        "height": 64,
        "width": 64,
    }
    plain_image = pipe(**kwargs, generator=torch.Generator(device).manual_seed(0)).images[0]
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="sks")
    with_lora = pipe(**kwargs, generator=torch.Generator(device).manual_seed(0)).images[0]
    plain_image.save(out / "without_lora.png")
    with_lora.save(out / "with_lora.png")
    return float(np.abs(np.asarray(plain_image, dtype=np.float32) - np.asarray(with_lora, dtype=np.float32)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_pipeline(Path(tmp) / "tiny-sd", "sd", seed=0)
        out = args.out or Path(tmp) / "out"
        out.mkdir(parents=True, exist_ok=True)
        ours_times, plain_times = [], []
        losses: list[float] = []
        for n in range(args.rounds):
            seconds, losses = ours(base, out / f"run{n}", args.steps, args.batch, args.rank)
            ours_times.append(seconds)
            plain_times.append(plain(base, args.steps, args.batch, args.rank))
        difference = generate(base, out / f"run{args.rounds - 1}" / "lora.safetensors", out)
        result = {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "steps": args.steps,
            "batch": args.batch,
            "ours_ms_per_step": [round(t * 1000, 3) for t in ours_times],
            "plain_ms_per_step": [round(t * 1000, 3) for t in plain_times],
            "ratio": round(statistics.median(ours_times) / statistics.median(plain_times), 3),
            "loss_first20": round(sum(losses[:20]) / 20, 4),
            "loss_last20": round(sum(losses[-20:]) / 20, 4),
            "lora_vs_plain_pixel_difference": round(difference, 3),
        }
    print(json.dumps(result, indent=2))
    (out / "gpu_lora.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
