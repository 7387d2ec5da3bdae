"""Local background removal: model checks without rembg, and real u2netp inference on synthetic images.

The model tests need rembg, onnxruntime and the u2netp weights (``scripts/install_models.py``); they skip without
them, except in CI (``CI=true``), which installs them, where they fail instead.

IoU thresholds, measured with u2netp (rembg 2.0.86, onnxruntime 1.32, CPU) on the images drawn below: red disc
0.996-0.998, blue square 1.000, dark person silhouette 0.970 (the model fills part of the narrow gap between the
legs). Required: 0.95 for discs, 0.90 for the silhouette, which leaves room for numeric drift across onnxruntime
builds while any real breakage (inverted or shifted mask, wrong channels, a blank input) lands far below.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from atelier.core.errors import InvalidInputError
from atelier.providers.configs import LocalProviderConfig
from atelier.providers.local import background_removal as bg
from atelier.tasks.enums import ErrorCategory

SIZE = 256
DEFAULT_HOME = Path(sys.prefix) / "share/atelier-models/rembg"
DISC_IOU = 0.95
SILHOUETTE_IOU = 0.90
BACKGROUND = (200, 200, 200)
WRONG_MD5 = r"has md5 [0-9a-f]{32}, expected 8e83ca70e441ab06c318d82300c84806 \(corrupt or wrong file\)"


# --------------------------------------------------------------------------- fixtures and helpers


def _unavailable_reason(home: Path) -> str | None:
    for module in ("onnxruntime", "rembg"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed (pip install 'rembg>=2.0.60,<3' 'onnxruntime>=1.17,<2')"
    weights = home / "u2netp.onnx"
    if not weights.is_file():
        target = home.parent if home.name == "rembg" else Path("DIR")
        return (
            f"u2netp weights missing at {weights}: python scripts/install_models.py {target}, U2NET_HOME={target}/rembg"
        )
    return None


@pytest.fixture
def u2net_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    """U2NET_HOME with the real u2netp weights; skip (fail in CI) when the ML stack or the weights are missing."""
    home = Path(os.environ.get("U2NET_HOME") or DEFAULT_HOME)
    reason = _unavailable_reason(home)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs the ML stack, but: {reason}")
        pytest.skip(reason)
    monkeypatch.setenv("U2NET_HOME", str(home))
    return home


@pytest.fixture
def rembg(u2net_home: Path) -> Any:  # the rembg module, untyped
    return importlib.import_module("rembg")  # untyped: rembg ships no type information


@pytest.fixture
def no_download(rembg: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if rembg reaches for the network (every session downloads through ``pooch.retrieve``)."""
    pooch = importlib.import_module("pooch")  # a rembg dependency, untyped
    attempts: list[str] = []

    def forbidden(url: str, *args: Any, **kwargs: Any) -> str:
        attempts.append(url)
        raise AssertionError(f"download attempted: {url}")

    monkeypatch.setattr(pooch, "retrieve", forbidden)
    yield attempts
    assert attempts == []


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    bg.clear_session_cache()
    yield
    bg.clear_session_cache()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def disc(
    centre: tuple[int, int] = (128, 128),
    radius: int = 64,
    colour: tuple[int, int, int] = (220, 20, 20),
    size: tuple[int, int] = (SIZE, SIZE),
) -> tuple[Image.Image, np.ndarray]:
    """A saturated disc on light grey, and its true mask."""
    image = Image.new("RGB", size, BACKGROUND)
    truth = Image.new("L", size, 0)
    box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    ImageDraw.Draw(truth).ellipse(box, fill=255)
    return image, np.asarray(truth) >= 128


def silhouette() -> tuple[Image.Image, np.ndarray]:
    """A dark person-like figure (head, torso, two legs) on light grey, and its true mask."""
    image = Image.new("RGB", (SIZE, SIZE), (210, 210, 210))
    truth = Image.new("L", (SIZE, SIZE), 0)
    for draw, fill in ((ImageDraw.Draw(image), (40, 40, 50)), (ImageDraw.Draw(truth), 255)):
        draw.ellipse((108, 40, 148, 84), fill=fill)
        draw.rounded_rectangle((88, 88, 168, 180), radius=16, fill=fill)
        draw.rectangle((96, 180, 124, 240), fill=fill)
        draw.rectangle((132, 180, 160, 240), fill=fill)
    return image, np.asarray(truth) >= 128


def iou(mask: Image.Image, truth: np.ndarray) -> float:
    predicted = np.asarray(mask) >= 128
    return float((predicted & truth).sum() / (predicted | truth).sum())


# --------------------------------------------------------------------------- without rembg


def test_model_files_cover_every_configurable_model() -> None:
    annotation = LocalProviderConfig.model_fields["rembg_model"].annotation
    assert set(bg.MODEL_FILES) == set(typing.get_args(annotation))
    for name, filename in bg.MODEL_FILES.items():
        for needed in (filename, *bg.EXTRA_MODEL_FILES.get(name, ())):
            assert needed in bg.MODEL_MD5, needed
    assert bg.MODEL_FILES["u2netp"] == "u2netp.onnx"
    assert bg.MODEL_MD5["u2netp.onnx"] == "8e83ca70e441ab06c318d82300c84806"


def test_models_home_from_env_else_rembg_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    assert bg.models_home() == tmp_path
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert bg.models_home() == Path.home() / ".u2net"


def test_missing_model_names_the_file_and_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    with pytest.raises(bg.ModelNotAvailableError) as caught:
        bg.check_model("u2net")
    assert "u2net.onnx" in str(caught.value)
    assert str(tmp_path) in str(caught.value)
    assert caught.value.category is ErrorCategory.PROVIDER_NOT_AVAILABLE
    with pytest.raises(bg.ModelNotAvailableError, match=r"sam_vit_b_01ec64\.encoder\.onnx"):
        bg.check_model("sam")


def test_wrong_md5_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    (tmp_path / "u2netp.onnx").write_bytes(b"not the model")
    with pytest.raises(bg.ModelNotAvailableError, match=WRONG_MD5):
        bg.check_model("u2netp")


def test_per_model_folder_shadows_the_flat_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """rembg 2.0.86 loads <home>/models/<name>/<file> before <home>/<file>: the check follows the same order."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    flat = tmp_path / "u2netp.onnx"
    flat.write_bytes(b"good")
    monkeypatch.setitem(bg.MODEL_MD5, "u2netp.onnx", _md5(b"good"))
    assert bg.check_model("u2netp") == flat
    shadow = tmp_path / "models" / "u2netp" / "u2netp.onnx"
    shadow.parent.mkdir(parents=True)
    shadow.write_bytes(b"bad")
    with pytest.raises(bg.ModelNotAvailableError, match=r"has md5 [0-9a-f]{32}, expected"):
        bg.check_model("u2netp")


def test_unknown_model_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="unknown rembg model"):
        bg.check_model("bria-rmbg")
    assert issubclass(InvalidInputError, ValueError)


def test_rembg_not_installed_is_model_not_available(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_cache: None
) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    (tmp_path / "u2netp.onnx").write_bytes(b"stand-in")
    monkeypatch.setitem(bg.MODEL_MD5, "u2netp.onnx", _md5(b"stand-in"))
    monkeypatch.setitem(sys.modules, "rembg", None)  # makes `import rembg` raise ImportError
    with pytest.raises(bg.ModelNotAvailableError, match=r"rembg is not installed: pip install 'atelier\[ml\]'"):
        bg.get_session("u2netp")


def test_module_imports_without_rembg() -> None:
    code = (
        "import sys; sys.modules['rembg'] = None; sys.modules['onnxruntime'] = None\n"
        "import atelier.providers.local.background_removal as m\n"
        "assert m.MODEL_FILES['u2netp'] == 'u2netp.onnx'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda: Image.new("RGB", (30, 20), (10, 20, 30)), (10, 20, 30), id="RGB"),
        pytest.param(lambda: Image.new("RGBA", (30, 20), (10, 20, 30, 0)), (255, 255, 255), id="RGBA-transparent"),
        pytest.param(lambda: Image.new("LA", (30, 20), (80, 255)), (80, 80, 80), id="LA"),
        pytest.param(lambda: Image.new("CMYK", (30, 20), (0, 255, 255, 0)), (255, 0, 0), id="CMYK"),
        pytest.param(lambda: Image.new("RGB", (30, 20), (200, 0, 0)).quantize(4), (200, 0, 0), id="P"),
        pytest.param(lambda: Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)), (156, 156, 156), id="I;16"),
        pytest.param(lambda: Image.new("I", (30, 20), 65535), (255, 255, 255), id="I-16bit"),
        pytest.param(lambda: Image.new("F", (30, 20), 0.5), (128, 128, 128), id="F-unit"),
    ],
)
def test_model_input_is_plain_rgb_of_the_same_size(
    make: Callable[[], Image.Image], expected: tuple[int, int, int]
) -> None:
    image = make()
    converted = bg.model_input(image)
    assert converted.mode == "RGB"
    assert converted.size == (30, 20)
    assert converted.getpixel((5, 5)) == expected
    assert converted.info == {}


def test_model_input_drops_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90°: rembg's exif_transpose would swap width and height
    image.info["exif"] = exif.tobytes()
    converted = bg.model_input(image)
    assert converted.size == (40, 20)
    assert 0x0112 not in converted.getexif()


# --------------------------------------------------------------------------- real u2netp


@pytest.mark.parametrize(
    ("make", "threshold"),
    [
        pytest.param(disc, DISC_IOU, id="red-disc"),
        pytest.param(lambda: disc(centre=(100, 150), radius=48, colour=(30, 160, 60)), DISC_IOU, id="green-disc"),
        pytest.param(silhouette, SILHOUETTE_IOU, id="silhouette"),
    ],
)
def test_mask_matches_the_drawn_subject(
    u2net_home: Path,
    no_download: list[str],
    make: Callable[[], tuple[Image.Image, np.ndarray]],
    threshold: float,
) -> None:
    image, truth = make()
    mask = bg.subject_mask(image, "u2netp")
    assert mask.mode == "L"
    assert mask.size == image.size
    assert iou(mask, truth) >= threshold


def test_cutout_is_transparent_around_and_opaque_on_the_subject(u2net_home: Path, no_download: list[str]) -> None:
    image, _ = disc()
    cutout = bg.remove_background(image, "u2netp")
    assert cutout.mode == "RGBA"
    assert cutout.size == image.size
    alpha = np.asarray(cutout.getchannel("A"))
    for corner in (alpha[:16, :16], alpha[:16, -16:], alpha[-16:, :16], alpha[-16:, -16:]):
        assert corner.max() <= 5
    assert alpha[112:144, 112:144].min() >= 250
    assert cutout.getpixel((128, 128)) == (220, 20, 20, alpha[128, 128])  # colours kept, not premultiplied


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda im: im.convert("RGBA"), id="RGBA"),
        pytest.param(lambda im: im.quantize(16), id="P"),
        pytest.param(lambda im: im.convert("CMYK"), id="CMYK"),
    ],
)
def test_other_modes_segment_like_rgb(
    u2net_home: Path, no_download: list[str], convert: Callable[[Image.Image], Image.Image]
) -> None:
    image, truth = disc()
    converted = convert(image)
    mask = bg.subject_mask(converted, "u2netp")
    assert mask.size == image.size
    assert iou(mask, truth) >= DISC_IOU
    assert bg.remove_background(converted, "u2netp").mode == "RGBA"


def test_transparent_background_and_non_square_input(u2net_home: Path, no_download: list[str]) -> None:
    """A disc on a fully transparent (black under alpha 0) 320x200 canvas: the transparency is not the subject."""
    image, truth = disc(centre=(200, 100), radius=60, size=(320, 200))
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray((truth * 255).astype(np.uint8)))
    rgba = Image.composite(rgba, Image.new("RGBA", rgba.size, (0, 0, 0, 0)), rgba.getchannel("A"))
    mask = bg.subject_mask(rgba, "u2netp")
    assert mask.size == (320, 200)
    assert iou(mask, truth) >= DISC_IOU


def test_missing_model_fails_fast_without_download(
    u2net_home: Path, rembg: Any, no_download: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "only-u2netp"
    home.mkdir()
    (home / "u2netp.onnx").symlink_to(u2net_home / "u2netp.onnx")
    monkeypatch.setenv("U2NET_HOME", str(home))
    # The guard matters: rembg itself would go for the network for a model it cannot find.
    with pytest.raises(AssertionError, match="download attempted"):
        rembg.new_session("u2net")
    no_download.clear()

    started = time.perf_counter()
    with pytest.raises(bg.ModelNotAvailableError, match=r"u2net\.onnx") as caught:
        bg.subject_mask(Image.new("RGB", (64, 64)), "u2net")
    assert time.perf_counter() - started < 1.0
    assert no_download == []
    assert f"put u2net.onnx in {home}" in str(caught.value)
    assert bg.get_session("u2netp") is not None  # the model that is there still loads


def test_wrong_md5_is_refused_before_rembg_loads_it(
    u2net_home: Path, rembg: Any, no_download: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "u2netp.onnx").write_bytes((u2net_home / "u2netp.onnx").read_bytes()[:-1024])  # truncated
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))

    def must_not_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rembg.new_session called for a refused file")

    monkeypatch.setattr(rembg, "new_session", must_not_load)
    with pytest.raises(bg.ModelNotAvailableError, match=WRONG_MD5):
        bg.get_session("u2netp")


def test_session_is_loaded_once_and_shared(
    u2net_home: Path, rembg: Any, no_download: list[str], monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    loads: list[str] = []
    real_new_session = rembg.new_session

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        loads.append(name)
        time.sleep(0.05)  # widen the race window for the threads below
        return real_new_session(name, *args, **kwargs)

    monkeypatch.setattr(rembg, "new_session", counting)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(bg.get_session("u2netp"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(session is results[0] for session in results)
    assert bg.get_session("u2netp") is results[0]
    assert loads == ["u2netp"]


def test_install_script_is_idempotent(u2net_home: Path, tmp_path: Path) -> None:
    """With the file already there (a copy of the real one) the script verifies it and does not run pip."""
    target = tmp_path / "models"
    (target / "rembg").mkdir(parents=True)
    shutil.copyfile(u2net_home / "u2netp.onnx", target / "rembg" / "u2netp.onnx")
    script = Path(__file__).resolve().parents[2] / "scripts" / "install_models.py"
    result = subprocess.run(
        [sys.executable, str(script), str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "already present" in result.stdout
    assert str(target / "rembg" / "u2netp.onnx") in result.stdout
