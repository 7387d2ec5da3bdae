"""Image-mode handling shared by the local enhancers: work in RGB, give back the caller's mode."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

KEPT_MODES = ("RGB", "RGBA", "L", "LA")


def split_alpha(image: Image.Image, notes: list[str]) -> tuple[NDArray[np.uint8], Image.Image | None, str]:
    """RGB working array, the alpha band set aside (or None), and the mode to return.

    RGB, RGBA, L and LA come back in their own mode; anything else becomes RGB (RGBA with transparency),
    which is recorded in ``notes``.
    """
    mode = image.mode
    if mode not in KEPT_MODES:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        new_mode = "RGBA" if has_alpha else "RGB"
        notes.append(f"input mode {mode} converted to {new_mode}")
        image = image.convert(new_mode)
        mode = new_mode
    alpha = image.getchannel("A") if mode in ("RGBA", "LA") else None
    return np.array(image.convert("RGB"), dtype=np.uint8), alpha, mode
