"""LOCAL provider benchmarks: ratios against the best raw pipeline doing the same work, in the same run.

.venv/bin/python -m bench.local adjuster   # IMAGE_ADJUSTER on a 4096² JPEG → 1024² crop, vs raw Pillow
.venv/bin/python -m bench.local rembg      # u2netp background removal, vs calling rembg directly
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from atelier.core.inputs import FetchLimits, open_image
from atelier.providers.base import ProviderContext
from atelier.providers.configs import LocalProviderConfig
from atelier.providers.local.provider import LocalImageAdjuster
from atelier.settings import Settings
from atelier.storage.backend import LocalStorage
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import TaskType
from bench.run import scratch


def photo(size: int) -> bytes:
    """A structured JPEG (gradient, shapes, noise-free) of size×size."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 4, size // 2, size // 2), fill=(200, 40, 40))
    draw.rectangle((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs after one warm-up."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def context(storage: TenantStorage, inputs: dict[str, Any], limits: FetchLimits) -> ProviderContext:
    """A provider context without database or broker: the pixel path only."""

    def load(source: str, field: str, draft: Any = None) -> Image.Image:
        return open_image(storage.read(source), limits=limits, loc=(field,), draft=draft)

    return ProviderContext(
        task_id=uuid.uuid4(),
        task_type=TaskType.IMAGE_ADJUSTER,
        inputs=inputs,
        config=LocalProviderConfig(),
        capabilities=[],
        task_config={},
        storage=storage,
        output_prefix=f"adjustments/{uuid.uuid4()}",
        attempt=1,
        http=None,  # type: ignore[arg-type]  # never used by local providers
        load_image=load,
        progress=lambda _p: None,
        check_cancelled=lambda: None,
        log_request=lambda _r: None,
    )


def bench_adjuster(repeat: int) -> dict[str, Any]:
    with scratch() as d:
        storage = TenantStorage(LocalStorage(Path(d)), "bench")
        data = photo(4096)
        storage.save("in/big.jpg", data)
        inputs = {
            "input_image_path": "in/big.jpg",
            "mode": "crop",
            "target_width": 1024,
            "target_height": 1024,
            "resampling": "lanczos",
        }
        limits = FetchLimits(max_pixels=Settings().inputs.max_pixels)
        provider = LocalImageAdjuster()
        ours = timed(lambda: provider.run(context(storage, inputs, limits)), repeat)
        out = Path(d) / "raw.jpg"

        def raw() -> None:  # the best plain Pillow pipeline for the same result
            encoded = Image.open(io.BytesIO((Path(d) / "tenants/bench/in/big.jpg").read_bytes()))
            encoded.draft("RGB", (1024, 1024))
            resized = encoded.convert("RGB").resize((1024, 1024), Image.Resampling.LANCZOS)
            resized.save(out, format="JPEG", quality=95, subsampling=0)

        base = timed(raw, repeat)
    return {"ours_ms": ours * 1000, "raw_pillow_ms": base * 1000, "ratio": ours / base, "goal": "<= 1.2"}


def bench_rembg(repeat: int) -> dict[str, Any]:
    os.environ.setdefault("U2NET_HOME", str(Settings().models_root / "rembg"))
    from rembg import new_session, remove  # type: ignore[import-untyped]

    from atelier.providers.local.background_removal import remove_background
    from atelier.providers.local.provider import encode_image

    buffer = io.BytesIO()
    source = Image.new("RGB", (512, 512), (235, 235, 235))
    ImageDraw.Draw(source).ellipse((128, 128, 384, 384), fill=(200, 30, 30))
    source.save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    session = new_session("u2netp")

    def ours() -> None:
        encode_image(remove_background(image, "u2netp"), None)

    def direct() -> None:
        out = io.BytesIO()
        remove(image, session=session).save(out, format="PNG", compress_level=1)

    theirs_s, ours_s = timed(direct, repeat), timed(ours, repeat)
    return {"ours_ms": ours_s * 1000, "rembg_direct_ms": theirs_s * 1000, "ratio": ours_s / theirs_s, "goal": "<= 1.1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["adjuster", "rembg", "all"])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.which in ("adjuster", "all"):
        results["adjuster"] = bench_adjuster(args.repeat)
    if args.which in ("rembg", "all"):
        results["rembg"] = bench_rembg(args.repeat)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
