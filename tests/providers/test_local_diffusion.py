"""LOCAL GENERATION/EDITING on the tiny offline SD pipeline: seeds, LoRAs, img2img, cancellation, cache, API."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

import httpx
import numpy as np
from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.providers.base import ProviderContext, ProviderNotAvailableError, ProviderResult, TaskCancelledError
from atelier.providers.configs import LocalProviderConfig
from atelier.providers.local.diffusion import (
    LocalDiffusion,
    cached_pipelines,
    clear_pipeline_cache,
    get_pipeline,
)
from atelier.providers.registry import default_registry
from atelier.settings import DiffusionSettings
from atelier.storage.backend import LocalStorage
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import TaskType
from atelier.training.lora import LoraTrainingConfig, train_lora
from atelier.training.tiny import build_tiny_pipeline
from tests.conftest import AppFactory

LORA = "styles/sks.safetensors"
Pixels = np.ndarray[Any, Any]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from more, and spinning threads crawl on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    clear_pipeline_cache()
    yield build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd", "sd", seed=0)
    clear_pipeline_cache()


@pytest.fixture(scope="module")
def lora_root(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA folder holding one LoRA trained by our trainer for a few steps (a large rate: a visible effect)."""
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    config = LoraTrainingConfig(
        base_model_path=str(sd_folder),
        output_dir=tmp_path_factory.mktemp("lora-run"),
        rank=4,
        learning_rate=5e-2,
        steps=3,
        resolution=32,
        save_every=0,
        seed=0,
    )
    result = train_lora(config, images, ["a red square, sks style", "a blue square, sks style"])
    root = tmp_path_factory.mktemp("loras")
    (root / "styles").mkdir()
    shutil.copy(result.lora_path, root / LORA)
    return root


@pytest.fixture(scope="module")
def settings(sd_folder: Path) -> DiffusionSettings:
    return DiffusionSettings(base_model_path=str(sd_folder), device="cpu", dtype="float32", default_steps=3)


@pytest.fixture(scope="module")
def provider(settings: DiffusionSettings, lora_root: Path) -> LocalDiffusion:
    return LocalDiffusion(settings, lora_root)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def storage(tmp_path: Path) -> TenantStorage:
    return TenantStorage(LocalStorage(tmp_path / "storage"), "acme")


class Run:
    """One provider call's context pieces: progress seen, cancellation hook, requests logged."""

    def __init__(self, storage: TenantStorage, http: httpx.Client) -> None:
        self.storage = storage
        self.http = http
        self.progress: list[float] = []
        self.requests: list[dict[str, Any]] = []
        self.cancel_after: int | None = None  # raise on the n-th cancellation check
        self.checks = 0

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_after is not None and self.checks >= self.cancel_after:
            raise TaskCancelledError

    def load_image(self, source: str, field_name: str, draft: Any = None) -> Image.Image:
        image = Image.open(io.BytesIO(self.storage.read(source)))
        image.load()
        return image

    def context(self, task_type: TaskType, inputs: dict[str, Any], config: dict[str, Any] | None) -> ProviderContext:
        task_id = uuid.uuid4()
        return ProviderContext(
            task_id=task_id,
            task_type=task_type,
            inputs=inputs,
            config=LocalProviderConfig(),
            capabilities=[],
            task_config=config or {},
            storage=self.storage,
            output_prefix=f"out/{task_id}",
            attempt=1,
            http=self.http,
            load_image=self.load_image,
            progress=self.progress.append,
            check_cancelled=self.check_cancelled,
            log_request=self.requests.append,
        )


Generate = Callable[..., tuple[Pixels, ProviderResult, Run]]


@pytest.fixture
def generate(provider: LocalDiffusion, storage: TenantStorage, http: httpx.Client) -> Generate:
    """Run a task (GENERATION unless told) on the tiny pipeline; return its pixels, result and run record."""

    def call(
        task_type: TaskType = TaskType.GENERATION,
        config: dict[str, Any] | None = None,
        cancel_after: int | None = None,
        **inputs: Any,
    ) -> tuple[Pixels, ProviderResult, Run]:
        run = Run(storage, http)
        run.cancel_after = cancel_after
        fields = {"prompt": "a red square, sks style", "seed": 7, "width": 32, "height": 32, **inputs}
        result = provider.run(run.context(task_type, fields, config))
        path = result.outputs["result_image_path"]
        assert path.endswith(".png")
        with Image.open(io.BytesIO(storage.read(path))) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        return pixels, result, run

    return call


def save_png(storage: TenantStorage, path: str, colour: str, size: tuple[int, int] = (32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    storage.save(path, buffer.getvalue(), "image/png")
    return path


def test_registered_for_local_generation_and_editing_without_changing_defaults() -> None:
    from atelier.providers.registry import DEFAULT_PROVIDER
    from atelier.tasks.enums import ProviderType

    registry = default_registry()
    assert isinstance(registry.get(ProviderType.LOCAL, TaskType.GENERATION), LocalDiffusion)
    assert isinstance(registry.get(ProviderType.LOCAL, TaskType.EDITING), LocalDiffusion)
    assert DEFAULT_PROVIDER[TaskType.GENERATION] == ProviderType.FAL_STANDARD


def test_same_seed_same_pixels_other_seed_other_pixels(generate: Generate) -> None:
    first, result, run = generate(seed=11)
    again, _, _ = generate(seed=11)
    other, _, _ = generate(seed=12)
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0
    assert result.outputs["seed"] == 11
    assert (result.outputs["width"], result.outputs["height"]) == (32, 32)
    metadata = result.outputs["diffusion_metadata"]
    assert metadata["num_inference_steps"] == 3 and metadata["adapters"] == [] and metadata["strength"] is None
    assert run.requests[0]["service"] == "local-diffusion" and run.requests[0]["seed"] == 11


def test_progress_per_step_and_steps_from_config(generate: Generate) -> None:
    _, result, run = generate(config={"num_inference_steps": 4})
    assert result.outputs["diffusion_metadata"]["num_inference_steps"] == 4
    step_progress = [p for p in run.progress if p > 10.0]
    assert len(step_progress) == 4  # one report per denoising step
    assert step_progress == sorted(step_progress) and step_progress[-1] == pytest.approx(95.0)


def test_size_is_rounded_to_the_pipeline_multiple(generate: Generate) -> None:
    pixels, result, _ = generate(width=50, height=29)
    assert pixels.shape == (32, 48, 3)
    assert (result.outputs["width"], result.outputs["height"]) == (48, 32)
    assert any("rounded to 48x32" in note for note in result.outputs["diffusion_metadata"]["notes"])


def test_no_seed_draws_one_and_reports_it(generate: Generate) -> None:
    first, result, _ = generate(seed=None)
    seed = result.outputs["seed"]
    assert isinstance(seed, int)
    again, _, _ = generate(seed=seed)
    assert np.array_equal(first, again)


def test_lora_changes_the_output_weight_zero_and_the_next_task_are_the_base(generate: Generate) -> None:
    base, _, _ = generate()
    with_lora, result, _ = generate(style_model_path=LORA, style_lora_weight=1.0)
    assert np.abs(with_lora - base).mean() > 1.0
    assert result.outputs["diffusion_metadata"]["adapters"] == [{"name": "style", "path": LORA, "weight": 1.0}]
    stronger, _, _ = generate(style_model_path=LORA, style_lora_weight=2.0)
    assert not np.array_equal(stronger, with_lora)
    zero, _, _ = generate(style_model_path=LORA, style_lora_weight=0.0)
    assert np.array_equal(zero, base)
    after, _, _ = generate()  # the cached pipeline has no adapter left
    assert np.array_equal(after, base)


def test_several_loras_load_as_named_adapters(generate: Generate) -> None:
    _, result, _ = generate(
        subject_model_path=LORA, subject_lora_weight=0.5, style_model_path=LORA, product_model_path=LORA
    )
    adapters = result.outputs["diffusion_metadata"]["adapters"]
    assert [(a["name"], a["weight"]) for a in adapters] == [("subject", 0.5), ("product", 1.0), ("style", 1.0)]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("styles/missing.safetensors", "no LoRA file"),
        ("../escape.safetensors", "'..'"),
        ("styles/../../escape.safetensors", "'..'"),
        ("/etc/passwd", "outside the LoRA folder"),
        ("https://example.com/x.safetensors", "not URLs"),
        ("styles/sks.bin", r"only \.safetensors"),
    ],
)
def test_bad_lora_paths_are_invalid_input(generate: Generate, path: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        generate(subject_model_path=path)
    assert isinstance(caught.value, ValueError)  # the engine records INVALID_INPUT and does not retry
    assert caught.value.loc == ("task_data", "subject_model_path")


def test_symlink_out_of_the_lora_folder_is_refused(generate: Generate, lora_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.copy(lora_root / LORA, outside)
    link = lora_root / "styles" / "link.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(InvalidInputError, match="outside the LoRA folder"):
            generate(style_model_path="styles/link.safetensors")
    finally:
        link.unlink()


def test_absolute_path_inside_the_lora_folder_is_accepted(generate: Generate, lora_root: Path) -> None:
    _, result, _ = generate(style_model_path=str(lora_root / LORA))
    assert result.outputs["diffusion_metadata"]["adapters"][0]["path"] == LORA


def test_a_file_that_is_not_a_lora_of_this_model_is_invalid_input(generate: Generate, lora_root: Path) -> None:
    from safetensors.torch import save_file
    from torch import zeros

    save_file({"unet.nothing.lora_A.weight": zeros(2, 2)}, str(lora_root / "styles" / "alien.safetensors"))
    (lora_root / "styles" / "garbage.safetensors").write_bytes(b"not a safetensors file")
    base, _, _ = generate()
    for name in ("alien", "garbage"):
        with pytest.raises(InvalidInputError, match="does not fit the base model"):
            generate(subject_model_path=LORA, style_model_path=f"styles/{name}.safetensors")
        after, _, _ = generate()
        assert np.array_equal(after, base)


def test_editing_is_image_to_image_from_the_base_image(generate: Generate, storage: TenantStorage) -> None:
    red = save_png(storage, "in/red.png", "red", (40, 24))
    blue = save_png(storage, "in/blue.png", "blue", (40, 24))
    from_red, result, _ = generate(TaskType.EDITING, base_image_path=red, width=None, height=None)
    assert from_red.shape == (24, 40, 3)  # the base image's size by default
    metadata = result.outputs["diffusion_metadata"]
    assert metadata["pipeline"] == "StableDiffusionImg2ImgPipeline" and metadata["strength"] == 0.6
    again, _, _ = generate(TaskType.EDITING, base_image_path=red, width=None, height=None)
    from_blue, _, _ = generate(TaskType.EDITING, base_image_path=blue, width=None, height=None)
    assert np.array_equal(from_red, again)
    assert np.abs(from_red - from_blue).mean() > 1.0  # the input image matters
    light, _, _ = generate(TaskType.EDITING, {"strength": 0.9}, base_image_path=red, width=None, height=None)
    assert not np.array_equal(light, from_red)  # so does the strength
    resized, _, _ = generate(TaskType.EDITING, base_image_path=red, width=32, height=32)
    assert resized.shape == (32, 32, 3)


def test_editing_with_a_lora_then_without_is_clean(generate: Generate, storage: TenantStorage) -> None:
    red = save_png(storage, "in/red.png", "red")
    plain, _, _ = generate(TaskType.EDITING, base_image_path=red)
    styled, _, _ = generate(TaskType.EDITING, base_image_path=red, style_model_path=LORA)
    assert np.abs(styled - plain).mean() > 1.0
    after, _, _ = generate(TaskType.EDITING, base_image_path=red)
    assert np.array_equal(after, plain)


def test_generation_reference_image_strength_is_its_influence(generate: Generate, storage: TenantStorage) -> None:
    reference = save_png(storage, "in/ref.png", "green")
    text_only, _, _ = generate()
    weak, result, _ = generate(reference_image_path=reference, reference_image_strength=10)
    assert result.outputs["diffusion_metadata"]["strength"] == pytest.approx(0.9)
    strong, result, _ = generate(reference_image_path=reference, reference_image_strength=90)
    assert result.outputs["diffusion_metadata"]["strength"] == pytest.approx(1 / 3)  # 0.1 × 3 steps < 1: one step
    assert not np.array_equal(weak, text_only) and not np.array_equal(weak, strong)


def test_cancellation_during_the_steps_stops_and_leaves_the_pipeline_clean(generate: Generate) -> None:
    base, _, _ = generate()
    with pytest.raises(TaskCancelledError):
        generate(config={"num_inference_steps": 4}, cancel_after=4, style_model_path=LORA)
    # Checks: before the pipeline, before adapters, then one per step: the 4th is during step 2 of 4.
    after, _, _ = generate()
    assert np.array_equal(after, base)


def test_cancelled_run_reports_no_further_progress(
    provider: LocalDiffusion, storage: TenantStorage, http: httpx.Client
) -> None:
    run = Run(storage, http)
    run.cancel_after = 3
    ctx = run.context(TaskType.GENERATION, {"prompt": "x", "seed": 1, "width": 32, "height": 32}, None)
    with pytest.raises(TaskCancelledError):
        provider.run(ctx)
    assert run.checks == 3
    assert max(run.progress) < 95.0
    assert storage.stat(ctx.output_path("result.png")) is None


def test_bad_config_knobs_are_invalid_input(generate: Generate) -> None:
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        generate(config={"num_inference_steps": 0})
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        generate(config={"num_inference_steps": "many"})
    with pytest.raises(InvalidInputError, match="strength"):
        generate(TaskType.EDITING, {"strength": 1.5}, base_image_path="in/none.png")
    with pytest.raises(InvalidInputError, match="pixels"):
        generate(width=4096, height=4096)


def test_pipeline_is_cached_per_base_path(settings: DiffusionSettings, sd_folder: Path, tmp_path: Path) -> None:
    first = get_pipeline(settings)
    assert get_pipeline(settings) is first
    assert get_pipeline(settings.model_copy()).pipeline is first.pipeline
    copy = shutil.copytree(sd_folder, tmp_path / "copy")
    other = get_pipeline(settings.model_copy(update={"base_model_path": str(copy), "cache_size": 2}))
    assert other.pipeline is not first.pipeline
    assert [e.key[0] for e in cached_pipelines()] == [str(sd_folder.resolve()), str(copy.resolve())]
    get_pipeline(settings.model_copy(update={"cache_size": 1}))  # a hit; then the LRU one is dropped
    assert [e.pipeline for e in cached_pipelines()] == [first.pipeline]


def test_missing_base_model_is_a_clear_not_available_error(tmp_path: Path, lora_root: Path) -> None:
    with pytest.raises(ProviderNotAvailableError, match="ATELIER_DIFFUSION__BASE_MODEL_PATH"):
        get_pipeline(DiffusionSettings())
    nowhere = tmp_path / "nowhere" / "model"
    with pytest.raises(ProviderNotAvailableError, match=str(nowhere)):
        get_pipeline(DiffusionSettings(base_model_path=str(nowhere), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProviderNotAvailableError, match="not a diffusers folder"):
        get_pipeline(DiffusionSettings(base_model_path=str(tmp_path / "empty"), device="cpu"))


def test_default_registry_instance_reads_the_environment_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ATELIER_DIFFUSION__BASE_MODEL_PATH", "/models/base")
    monkeypatch.setenv("ATELIER_DIFFUSION__DEFAULT_STEPS", "9")
    monkeypatch.setenv("ATELIER_LORA__ROOT", str(tmp_path / "loras"))
    settings, root = LocalDiffusion()._config()
    assert (settings.base_model_path, settings.default_steps, settings.cache_size) == ("/models/base", 9, 1)
    assert root == (tmp_path / "loras").resolve()


def test_generation_end_to_end_through_the_api(
    app_factory: AppFactory, provider: LocalDiffusion, lora_root: Path, settings: DiffusionSettings
) -> None:
    registry = default_registry(["tests.fakes.providers:register"])
    registry.register(LocalDiffusion(settings, lora_root))
    api = app_factory(registry=registry)
    body = {
        "task_type": "GENERATION",
        "provider_type": "LOCAL",
        "prompt": "a red square, sks style",
        "width": 40,
        "height": 24,
        "seed": 3,
        "style_model_path": LORA,
        "style_lora_weight": 0.8,
        "config": {"num_inference_steps": 2},
    }
    task = api.wait(api.create(body)["id"], timeout=60)
    assert task["status"] == "COMPLETED", task["errors"]
    assert (task["width"], task["height"], task["seed"]) == (40, 24, 3)
    assert task["progress"] == 100.0
    response = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG" and image.size == (40, 24)
    logged = [r for r in task["service_requests"] if r.get("service") == "local-diffusion"]
    assert logged and logged[0]["adapters"] == [{"name": "style", "path": LORA, "weight": 0.8}]

    bad = api.wait(api.create({**body, "style_model_path": "../../secrets.safetensors"})["id"], timeout=60)
    assert bad["status"] == "FAILED"
    assert bad["error_category"] == "INVALID_INPUT"
    assert any("'..'" in error for error in bad["errors"] or [])


@pytest.mark.slow
def test_flux_pipeline_generates_and_edits(storage: TenantStorage, http: httpx.Client, tmp_path: Path) -> None:
    folder = build_tiny_pipeline(tmp_path / "flux", "flux", seed=1)
    settings = DiffusionSettings(
        base_model_path=str(folder), device="cpu", dtype="float32", default_steps=2, cache_size=2
    )
    flux = LocalDiffusion(settings, tmp_path)
    red = save_png(storage, "in/red.png", "red", (40, 24))
    cases: list[tuple[TaskType, dict[str, Any]]] = [
        (TaskType.GENERATION, {"width": 36, "height": 20}),
        (TaskType.EDITING, {"base_image_path": red}),
    ]
    outputs = []
    try:
        for task_type, inputs in cases:
            run = Run(storage, http)
            result = flux.run(run.context(task_type, {"prompt": "a red square", "seed": 1, **inputs}, None))
            outputs.append(result.outputs)
            assert run.progress[-1] == pytest.approx(95.0)  # per-step progress up to the end of the loop
    finally:
        clear_pipeline_cache()  # the Flux pipeline is not kept for other tests
    assert outputs[0]["diffusion_metadata"]["pipeline"] == "FluxPipeline"
    assert (outputs[0]["width"], outputs[0]["height"]) == (40, 24)  # rounded half up to multiples of 8
    assert outputs[1]["diffusion_metadata"]["pipeline"] == "FluxImg2ImgPipeline"
    with Image.open(io.BytesIO(storage.read(outputs[1]["result_image_path"]))) as image:
        assert image.size == (40, 24)
