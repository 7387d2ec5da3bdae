"""Background removal on this machine with rembg (ONNX models on CPU).

rembg is an optional ML dependency (``atelier[ml]``): this module imports it only inside the functions that need it,
so importing the module never fails. Model weights are never downloaded: a model whose file is not already in
``U2NET_HOME`` fails fast with ``ModelNotAvailableError`` *before* rembg is asked for it (rembg would otherwise try
to fetch it from the internet). ``scripts/install_models.py`` installs the one model the service ships, ``u2netp``.

Sessions are cached per process and per model folder, so a worker loads each model once; onnxruntime sessions are
safe to share between threads.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import to_8bit
from atelier.providers.base import ProviderFatalError
from atelier.tasks.enums import ErrorCategory

#: rembg model name -> the weights file rembg looks for in ``U2NET_HOME`` (rembg 2.0.86 ``sessions/*.py``).
#: ``sam`` needs a second file, listed in ``EXTRA_MODEL_FILES``.
MODEL_FILES: dict[str, str] = {
    "u2net": "u2net.onnx",
    "u2netp": "u2netp.onnx",
    "u2net_human_seg": "u2net_human_seg.onnx",
    "u2net_cloth_seg": "u2net_cloth_seg.onnx",
    "silueta": "silueta.onnx",
    "isnet-general-use": "isnet-general-use.onnx",
    "isnet-anime": "isnet-anime.onnx",
    "sam": "sam_vit_b_01ec64.encoder.onnx",  # rembg's default sam_model; the decoder must sit beside it
}

#: Files a model needs besides ``MODEL_FILES[name]``, in the same folder.
EXTRA_MODEL_FILES: dict[str, tuple[str, ...]] = {"sam": ("sam_vit_b_01ec64.decoder.onnx",)}

#: md5 of each weights file, the hashes rembg pins for its downloads (rembg 2.0.86).
MODEL_MD5: dict[str, str] = {
    "u2net.onnx": "60024c5c889badc19c04ad937298a77b",
    "u2netp.onnx": "8e83ca70e441ab06c318d82300c84806",
    "u2net_human_seg.onnx": "c09ddc2e0104f800e3e1bb4652583d1f",
    "u2net_cloth_seg.onnx": "2434d1f3cb744e0e49386c906e5a08bb",
    "silueta.onnx": "55e59e0d8062d2f5d013f4725ee84782",
    "isnet-general-use.onnx": "fc16ebd8b0c10d971d3513d564d01e29",
    "isnet-anime.onnx": "6f184e756bb3bd901c8849220a83e38e",
    "sam_vit_b_01ec64.encoder.onnx": "a780f8ba09bceceaa1435724ed354848",
    "sam_vit_b_01ec64.decoder.onnx": "c4218b16ec1cb09889fcd6eb7a42a7c9",
}

#: What transparent input pixels become before the model sees them: a flat light backdrop, never "black object".
_BACKDROP = (255, 255, 255)

_sessions: dict[tuple[str, str], Any] = {}  # (model, models_home) -> rembg BaseSession (untyped)
_sessions_lock = threading.Lock()
_md5_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> md5: hash a big file once


class ModelNotAvailableError(ProviderFatalError):
    """rembg, onnxruntime or a model's weights are missing on this machine; nothing is downloaded."""

    category = ErrorCategory.PROVIDER_NOT_AVAILABLE


def models_home() -> Path:
    """The folder rembg reads weights from: ``U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else ``~/.u2net``."""
    configured = os.environ.get("U2NET_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or "~", ".u2net").expanduser()


def _lookup_paths(model: str, filename: str) -> list[Path]:
    """Where rembg 2.0.86 looks for ``filename``, in its order: the per-model folder first, then the flat one.

    The flat ``models_home()/filename`` is the layout every rembg 2.x reads and the one ``install_models.py``
    writes; a copy in the per-model folder would shadow it, so it is checked too.
    """
    if os.environ.get("U2NET_HOME"):
        root = models_home()
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        root = Path(os.environ.get("REMBG_HOME") or (Path(xdg, "rembg") if xdg else "~/.rembg")).expanduser()
    return [root / "models" / model / filename, models_home() / filename]


def _md5(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _md5_memo:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        _md5_memo[key] = digest.hexdigest()
    return _md5_memo[key]


def _check_file(model: str, filename: str) -> Path:
    found = next((p for p in _lookup_paths(model, filename) if p.is_file()), None)
    if found is None:
        raise ModelNotAvailableError(
            f"rembg model {model!r} is not installed: put {filename} in {models_home()} (the U2NET_HOME folder); "
            "models are never downloaded at run time"
        )
    expected = MODEL_MD5.get(filename)
    actual = _md5(found)
    if expected is not None and actual != expected:
        raise ModelNotAvailableError(
            f"rembg model {model!r}: {found} has md5 {actual}, expected {expected} (corrupt or wrong file); "
            f"replace {filename} in {models_home()}"
        )
    return found


def check_model(name: str) -> Path:
    """The weights file rembg will load for ``name``, present and with the right md5, else ModelNotAvailableError.

    Runs before rembg sees the name, so a missing model never triggers rembg's download.
    """
    if name not in MODEL_FILES:
        raise InvalidInputError(f"unknown rembg model {name!r}; expected one of {', '.join(sorted(MODEL_FILES))}")
    primary = _check_file(name, MODEL_FILES[name])
    for extra in EXTRA_MODEL_FILES.get(name, ()):
        if _check_file(name, extra).parent != primary.parent:
            raise ModelNotAvailableError(
                f"rembg model {name!r}: {MODEL_FILES[name]} and {extra} must be in the same folder ({models_home()})"
            )
    return primary


def _import_rembg() -> Any:  # rembg ships no type information
    """rembg, imported on first use; onnxruntime first, because rembg calls ``sys.exit(1)`` when it is missing."""
    try:
        importlib.import_module("onnxruntime")
        return importlib.import_module("rembg")
    except ImportError as exc:
        raise ModelNotAvailableError(f"rembg is not installed: pip install 'atelier[ml]' ({exc})") from exc


def get_session(name: str) -> Any:  # a rembg BaseSession, untyped
    """``rembg.new_session(name)``, created once per process (and models folder) and then shared."""
    key = (name, str(models_home()))
    session = _sessions.get(key)
    if session is not None:
        return session
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            check_model(name)
            rembg = _import_rembg()
            try:
                session = rembg.new_session(name)
            except Exception as exc:  # onnxruntime refuses the file, or an older rembg looks elsewhere
                raise ModelNotAvailableError(
                    f"rembg model {name!r} could not be loaded from {models_home()}: {type(exc).__name__}: {exc}"
                ) from exc
            _sessions[key] = session
    return session


def clear_session_cache() -> None:
    """Forget every loaded session (tests; or to free memory)."""
    with _sessions_lock:
        _sessions.clear()


def model_input(image: Image.Image) -> Image.Image:
    """A fresh RGB copy of ``image`` for the model, same size, with no metadata.

    Transparency is flattened onto white (what is invisible should look like backdrop, not like a black object).
    Dropping the metadata matters: rembg applies EXIF orientation, which would rotate the mask off the input's size.
    """
    if image.mode in {"I", "F"} or image.mode.startswith("I;16"):
        image = to_8bit(image)
    try:
        if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info:
            rgba = image.convert("RGBA")
            rgb = Image.new("RGBA", rgba.size, (*_BACKDROP, 255))
            rgb.alpha_composite(rgba)
            converted = rgb.convert("RGB")
        else:
            converted = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"cannot convert a {image.mode} image to RGB: {exc}") from exc
    return Image.fromarray(np.asarray(converted))


def subject_mask(image: Image.Image, model: str) -> Image.Image:
    """The subject's mask ("L", 255 = subject), same size as ``image``."""
    session = get_session(model)
    rembg = _import_rembg()
    rgb = model_input(image)
    mask = rembg.remove(rgb, session=session, only_mask=True, post_process_mask=False)
    if not isinstance(mask, Image.Image):
        raise ProviderFatalError(f"rembg returned {type(mask).__name__}, not an image")
    mask = mask.convert("L")
    width, height = rgb.size
    if mask.width == width and mask.height > height and mask.height % height == 0:
        # Models with several masks (u2net_cloth_seg: upper, lower, full) come back stacked vertically: union them.
        stacked = np.asarray(mask).reshape(mask.height // height, height, width)
        mask = Image.fromarray(stacked.max(axis=0))
    if mask.size != rgb.size:
        mask = mask.resize(rgb.size, Image.Resampling.LANCZOS)
    return mask


def remove_background(image: Image.Image, model: str) -> Image.Image:
    """An RGBA cut-out, same size as ``image``: its colours with alpha = ``subject_mask`` (straight alpha).

    No mask post-processing and no alpha matting: the model's soft mask is the alpha, so edges stay soft. Colours
    are kept unmultiplied (also under alpha 0), unlike rembg's default cut-out, which darkens soft edges.
    """
    mask = subject_mask(image, model)
    cutout = model_input(image).convert("RGBA")
    cutout.putalpha(mask)
    return cutout
