"""Preprocessing transforms of training datasets (``TransformType``), validated at create and applied by workers.

Each transform is an object ``{"type": TransformType, …parameters}``; they run in the order given. Every
transform maps images to images (HORIZONTAL_FLIP_AUGMENT doubles the dataset, the mirrored copy keeping its
original's caption).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image, ImageColor, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atelier.core.errors import InvalidInputError
from atelier.training.enums import TransformType

T = TransformType
K = TypeVar("K")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Resize(_Params):
    size: int = Field(1024, ge=8, le=8192, description="Longest side in pixels")


class _CenterCrop(_Params):
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)


class _Color(_Params):
    color: str = "white"

    @field_validator("color")
    @classmethod
    def _known(cls, value: str) -> str:
        ImageColor.getrgb(value)  # raises ValueError for an unknown colour
        return value


class _AutoContrast(_Params):
    cutoff: float = Field(0.5, ge=0, lt=50, description="Percent of darkest/lightest pixels clipped")


class _CropToSubject(_Params):
    margin: float = Field(0.05, ge=0, le=1, description="Extra border, as a fraction of the subject's size")
    threshold: int = Field(12, ge=1, le=255, description="Difference from the corner colour that counts as content")


PARAMS: dict[TransformType, type[_Params]] = {
    T.RESIZE: _Resize,
    T.CENTER_CROP: _CenterCrop,
    T.PAD_TO_SQUARE: _Color,
    T.AUTO_CONTRAST: _AutoContrast,
    T.GRAYSCALE: _Params,
    T.HORIZONTAL_FLIP_AUGMENT: _Params,
    T.REMOVE_BACKGROUND: _Color,
    T.CROP_TO_SUBJECT: _CropToSubject,
}
MAX_TRANSFORMS = 16


def validate_transforms(transforms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transforms with their defaults filled in; a clear InvalidInputError (422) names the bad one."""
    if len(transforms) > MAX_TRANSFORMS:
        raise InvalidInputError(f"at most {MAX_TRANSFORMS} transforms", loc=("body", "preprocessing_transforms"))
    out = []
    for i, item in enumerate(transforms):
        loc: tuple[str | int, ...] = ("body", "preprocessing_transforms", i)
        params = dict(item)
        raw = params.pop("type", None)
        try:
            kind = TransformType(str(raw).upper())
        except ValueError:
            known = ", ".join(t.value for t in TransformType)
            raise InvalidInputError(f"unknown transform type {raw!r} (known: {known})", loc=(*loc, "type")) from None
        try:
            parsed = PARAMS[kind].model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInputError(f"{kind.value}: {where}: {first['msg']}", loc=loc) from None
        out.append({"type": kind.value, **parsed.model_dump()})
    return out


def _resize(image: Image.Image, size: int) -> Image.Image:
    scale = size / max(image.size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS)


def _center_crop(image: Image.Image, width: int | None, height: int | None) -> Image.Image:
    side = min(image.size)
    w, h = min(width or side, image.width), min(height or side, image.height)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def _pad_to_square(image: Image.Image, color: str) -> Image.Image:
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), ImageColor.getrgb(color))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _crop_to_subject(image: Image.Image, margin: float, threshold: int) -> Image.Image:
    """Crop to what differs from the background (the median colour of the four corners)."""
    rgb = image.convert("RGB")
    corners = [
        rgb.getpixel(p) for p in ((0, 0), (rgb.width - 1, 0), (0, rgb.height - 1), (rgb.width - 1, rgb.height - 1))
    ]
    background = tuple(sorted(channel)[1] for channel in zip(*corners, strict=True))
    plain = Image.new("RGB", rgb.size, background)
    diff = ImageOps.grayscale(Image.fromarray(_absdiff(rgb, plain)))
    box = diff.point(lambda v: 255 if v >= threshold else 0).getbbox()
    if box is None:
        return image  # nothing but background: leave the image as it is
    left, top, right, bottom = box
    pad_x, pad_y = round((right - left) * margin), round((bottom - top) * margin)
    return image.crop(
        (max(0, left - pad_x), max(0, top - pad_y), min(image.width, right + pad_x), min(image.height, bottom + pad_y))
    )


def _absdiff(a: Image.Image, b: Image.Image) -> Any:
    import numpy as np

    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).astype(np.uint8)


def _remove_background(image: Image.Image, color: str) -> Image.Image:
    from atelier.providers.local.background_removal import remove_background

    cutout = remove_background(image, "u2netp")
    canvas = Image.new("RGBA", cutout.size, (*ImageColor.getrgb(color), 255))
    canvas.alpha_composite(cutout)
    return canvas.convert("RGB")


Step = Callable[[Image.Image], Image.Image]


def _step(kind: TransformType, params: dict[str, Any]) -> Step:
    if kind is T.RESIZE:
        return lambda im: _resize(im, params["size"])
    if kind is T.CENTER_CROP:
        return lambda im: _center_crop(im, params["width"], params["height"])
    if kind is T.PAD_TO_SQUARE:
        return lambda im: _pad_to_square(im, params["color"])
    if kind is T.AUTO_CONTRAST:
        return lambda im: ImageOps.autocontrast(im.convert("RGB"), cutoff=params["cutoff"])
    if kind is T.GRAYSCALE:
        return lambda im: ImageOps.grayscale(im).convert("RGB")
    if kind is T.REMOVE_BACKGROUND:
        return lambda im: _remove_background(im, params["color"])
    if kind is T.CROP_TO_SUBJECT:
        return lambda im: _crop_to_subject(im, params["margin"], params["threshold"])
    raise ValueError(f"{kind.value} is not a per-image step")


def apply_transforms(
    items: list[tuple[Image.Image, K]], transforms: list[dict[str, Any]]
) -> list[tuple[Image.Image, K]]:
    """Run the (validated) transforms over (image, key) pairs, in order (a mirrored copy keeps its key)."""
    for spec in transforms:
        params = dict(spec)
        kind = TransformType(params.pop("type"))
        if kind is T.HORIZONTAL_FLIP_AUGMENT:
            items = items + [(ImageOps.mirror(image), key) for image, key in items]
            continue
        step = _step(kind, params)
        items = [(step(image.convert("RGB")), key) for image, key in items]
    return items
