"""Tiny offline diffusers pipelines and LoRA training on them (CPU, no downloads)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from atelier.cli import cli
from atelier.training.lora import (
    LoraTrainingConfig,
    LoraTrainingResult,
    StepReport,
    checkpoint_step,
    train_lora,
)
from atelier.training.tiny import build_tiny_pipeline

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 20), "yellow": (240, 230, 20)}


def _dataset() -> tuple[list[Image.Image], list[str]]:
    images, captions = [], []
    for name, colour in COLOURS.items():
        array = np.zeros((72, 96, 3), dtype=np.uint8)  # not square: exercises resize + center crop
        array[:] = colour
        array[::8] = 255  # stripes, so there is some structure to learn
        images.append(Image.fromarray(array))
        captions.append(f"a {name} square, sks style")
    return images, captions


def _generate(pipeline: Any, seed: int = 0, **kwargs: Any) -> np.ndarray[Any, Any]:
    generator = torch.Generator().manual_seed(seed)
    image = pipeline("a red square", num_inference_steps=4, height=64, width=64, generator=generator, **kwargs)
    return np.asarray(image.images[0], dtype=np.float32)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd", "sd", seed=0)


@pytest.fixture(scope="module")
def trained(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> LoraTrainingResult:
    images, captions = _dataset()
    config = LoraTrainingConfig(
        base_model_path=str(sd_folder),
        output_dir=tmp_path_factory.mktemp("lora"),
        rank=4,
        learning_rate=1e-3,
        steps=150,
        batch_size=2,
        resolution=64,
        save_every=40,
        max_step_saves_to_keep=2,
        sample_every=75,
        sample_prompts=["a red square, sks style"],
        sample_steps=3,
        seed=0,
    )
    reports: list[StepReport] = []
    result = train_lora(config, images, captions, on_step=reports.append)
    assert [r.step for r in reports] == list(range(1, 151))
    assert all(r.total_steps == 150 and r.eta_seconds >= 0 and r.elapsed > 0 for r in reports)
    assert reports[-1].eta_seconds == 0
    return result


def test_tiny_sd_builds_reloads_offline_and_generates(sd_folder: Path, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    assert (sd_folder / "model_index.json").is_file()
    pipeline = DiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    assert isinstance(pipeline, StableDiffusionPipeline)
    pipeline.set_progress_bar_config(disable=True)
    image = _generate(pipeline)
    assert image.shape == (64, 64, 3)
    # Deterministic for a seed: a second build is byte-identical.
    again = build_tiny_pipeline(tmp_path / "again", "sd", seed=0)
    for path in sorted(p for p in sd_folder.rglob("*") if p.is_file()):
        assert (again / path.relative_to(sd_folder)).read_bytes() == path.read_bytes(), path


def test_tiny_flux_builds_and_generates(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline, FluxPipeline

    folder = build_tiny_pipeline(tmp_path / "flux", "flux", seed=1)
    pipeline = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(pipeline, FluxPipeline)
    pipeline.set_progress_bar_config(disable=True)
    image = _generate(pipeline, max_sequence_length=32)
    assert image.shape == (64, 64, 3)


def test_cli_tiny_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["tiny-pipeline", str(tmp_path / "p"), "--kind", "sd", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "unet").is_dir()


def test_lora_training_lowers_the_loss(trained: LoraTrainingResult) -> None:
    assert trained.steps_done == 150
    assert not trained.stopped
    assert trained.optimizer == "adamw"  # CPU: no 8-bit AdamW
    assert len(trained.losses) == 150
    first, last = statistics.mean(trained.losses[:20]), statistics.mean(trained.losses[-20:])
    assert last < first, (first, last)


def test_checkpoints_are_pruned_and_samples_written(trained: LoraTrainingResult) -> None:
    output = trained.lora_path.parent
    assert trained.lora_path == output / "lora.safetensors"
    assert [p.name for p in trained.checkpoints] == ["step_000080.safetensors", "step_000120.safetensors"]
    assert sorted(p.name for p in output.glob("step_*.safetensors")) == [p.name for p in trained.checkpoints]
    assert checkpoint_step(trained.checkpoints[-1]) == 120
    assert checkpoint_step(trained.lora_path) == 150
    assert [p.name for p in trained.samples] == ["step_000075_00.png", "step_000150_00.png"]
    for path in trained.samples:
        with Image.open(path) as sample:
            assert sample.size == (64, 64)


def test_final_lora_loads_and_changes_the_output(trained: LoraTrainingResult, sd_folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    before = _generate(pipeline)
    pipeline.load_lora_weights(str(trained.lora_path.parent), weight_name=trained.lora_path.name, adapter_name="t")
    pipeline.set_adapters(["t"], adapter_weights=[1.0])
    after = _generate(pipeline)
    assert np.abs(after - before).mean() > 0.5


def test_should_stop_saves_and_resume_continues(sd_folder: Path, tmp_path: Path) -> None:
    images, captions = _dataset()

    def config(output: Path) -> LoraTrainingConfig:
        return LoraTrainingConfig(
            base_model_path=str(sd_folder), output_dir=output, rank=4, learning_rate=1e-3, steps=8,
            resolution=64, save_every=0, seed=3,
        )  # fmt: skip

    seen: list[int] = []
    stopped = train_lora(
        config(tmp_path / "a"),
        images,
        captions,
        on_step=lambda r: seen.append(r.step),
        should_stop=lambda: len(seen) >= 3,
    )
    assert stopped.stopped and stopped.steps_done == 3 and seen == [1, 2, 3]
    assert stopped.lora_path == tmp_path / "a" / "step_000003.safetensors"
    assert checkpoint_step(stopped.lora_path) == 3
    assert not (tmp_path / "a" / "lora.safetensors").exists()

    resumed = train_lora(config(tmp_path / "a"), images, captions, resume_from=stopped.lora_path)
    assert not resumed.stopped and resumed.steps_done == 8 and len(resumed.losses) == 5

    straight = train_lora(config(tmp_path / "b"), images, captions)
    # Same data order, same optimizer state: the resumed run follows the uninterrupted one.
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-4)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "flux", "flux", seed=0)


def _flux_config(folder: Path, output: Path, **overrides: Any) -> LoraTrainingConfig:
    values: dict[str, Any] = {
        "base_model_path": str(folder), "output_dir": output, "rank": 4, "learning_rate": 2e-3, "steps": 60,
        "batch_size": 2, "resolution": 32, "save_every": 20, "max_step_saves_to_keep": 2, "seed": 0,
        "max_sequence_length": 16,
    }  # fmt: skip
    values.update(overrides)
    return LoraTrainingConfig(**values)


def _flux_generate(pipeline: Any, seed: int = 0) -> np.ndarray[Any, Any]:
    generator = torch.Generator().manual_seed(seed)
    image = pipeline(
        "a red square", num_inference_steps=3, height=32, width=32, generator=generator, max_sequence_length=16
    )
    return np.asarray(image.images[0], dtype=np.float32)


def test_flux_lora_trains_with_flow_matching_and_loads_in_the_pipeline(flux_folder: Path, tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    images, captions = _dataset()
    result = train_lora(
        _flux_config(flux_folder, tmp_path / "o", sample_every=60, sample_prompts=["a red square"], sample_steps=2),
        images,
        captions,
    )
    assert result.extra["family"] == "flux" and result.steps_done == 60 and not result.stopped
    assert statistics.mean(result.losses[-15:]) < statistics.mean(result.losses[:15])
    assert [p.name for p in result.checkpoints] == ["step_000020.safetensors", "step_000040.safetensors"]
    assert len(result.samples) == 1
    with Image.open(result.samples[0]) as sample:
        assert sample.size == (32, 32)
    assert checkpoint_step(result.lora_path) == 60

    pipeline = FluxPipeline.from_pretrained(str(flux_folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    before = _flux_generate(pipeline)
    pipeline.load_lora_weights(str(result.lora_path.parent), weight_name=result.lora_path.name)
    after = _flux_generate(pipeline)
    assert np.abs(after - before).mean() > 0.5  # the trained adapter changes what the base model draws


def test_flux_stop_and_resume_follow_the_uninterrupted_run(flux_folder: Path, tmp_path: Path) -> None:
    images, captions = _dataset()
    seen: list[int] = []
    stopped = train_lora(
        _flux_config(flux_folder, tmp_path / "a", steps=6, save_every=0),
        images,
        captions,
        on_step=lambda r: seen.append(r.step),
        should_stop=lambda: len(seen) >= 2,
    )
    assert stopped.stopped and checkpoint_step(stopped.lora_path) == 2
    resumed = train_lora(
        _flux_config(flux_folder, tmp_path / "a", steps=6, save_every=0),
        images,
        captions,
        resume_from=stopped.lora_path,
    )
    straight = train_lora(_flux_config(flux_folder, tmp_path / "b", steps=6, save_every=0), images, captions)
    assert resumed.steps_done == 6 and resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)


def test_bypass_guidance_embedding_zeroes_its_contribution(tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    from atelier.training.lora import _Flux

    folder = build_tiny_pipeline(tmp_path / "flux", "flux", seed=1)
    # A guidance-distilled transformer (as FLUX.1-dev): the tiny one is rebuilt with a guidance embedder.
    config = FluxTransformer2DModel.load_config(str(folder), subfolder="transformer")
    transformer = FluxTransformer2DModel.from_config({**config, "guidance_embeds": True})
    transformer.save_pretrained(str(folder / "transformer"))
    on = _Flux(folder, _flux_config(folder, tmp_path / "o", bypass_guidance_embedding=True), "cpu", torch.float32)
    off = _Flux(folder, _flux_config(folder, tmp_path / "o"), "cpu", torch.float32)
    embed_on = on.model.time_text_embed.guidance_embedder(torch.ones(1, 256))
    embed_off = off.model.time_text_embed.guidance_embedder(torch.ones(1, 256))
    assert torch.count_nonzero(embed_on) == 0 and torch.count_nonzero(embed_off) > 0
    images, captions = _dataset()
    result = train_lora(
        _flux_config(folder, tmp_path / "t", steps=3, save_every=0, bypass_guidance_embedding=True), images, captions
    )
    assert result.steps_done == 3 and all(np.isfinite(result.losses))


def test_hub_id_not_in_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    images, captions = _dataset()
    config = LoraTrainingConfig(base_model_path="someone/not-cached-model", output_dir=tmp_path / "o")
    with pytest.raises(ValueError, match=r"someone/not-cached-model.*local Hugging Face cache"):
        train_lora(config, images, captions)
    missing = LoraTrainingConfig(base_model_path=str(tmp_path / "nowhere" / "x" / "y"), output_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="does not exist"):
        train_lora(missing, images, captions)
