"""FACE_ENHANCER on a real photo (scikit-image's astronaut) and on synthetic edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from atelier.providers.local.face_enhancer import (
    LPIPS_DISTS_NOTE,
    FaceEnhancerError,
    FaceParams,
    FaceResult,
    detect_faces,
    enhance_faces,
    expand_box,
)

# The astronaut's face in skimage.data.astronaut() (512 x 512), (left, top, right, bottom). Measured once with
# cv2.CascadeClassifier(haarcascade_frontalface_default).detectMultiScale on the grayscale photo -> (177, 66, 95, 95)
# as x, y, w, h, and checked by drawing it on the image: the box spans brows to chin and ear to ear.
ASTRONAUT_FACE = (177, 66, 272, 161)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def head(astronaut: Image.Image) -> Image.Image:
    """A 256 x 256 crop around the face (cheaper to search): the face is at (77, 66, 172, 161) in it."""
    return astronaut.crop((100, 0, 356, 256))


@pytest.fixture(scope="module")
def default_result(astronaut: Image.Image) -> tuple[Image.Image, FaceResult]:
    """enhance_faces with the default params, run once; also returns a copy of the input taken beforehand."""
    before = astronaut.copy()
    return before, enhance_faces(astronaut, FaceParams())


def _outside(mask_shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    outside = np.ones(mask_shape, dtype=bool)
    outside[box[1] : box[3], box[0] : box[2]] = False
    return outside


def test_detects_the_astronaut_face(default_result: tuple[Image.Image, FaceResult]) -> None:
    faces = default_result[1].faces
    assert len(faces) >= 1
    assert _iou(faces[0], ASTRONAUT_FACE) >= 0.5


def test_detection_on_a_large_image_maps_boxes_back(astronaut: Image.Image) -> None:
    # 1600 x 600 canvas, detected on a 1024 x 384 copy; the astronaut scaled to 600 px is pasted at x = 1000.
    canvas = Image.new("RGB", (1600, 600), (128, 128, 128))
    canvas.paste(astronaut.resize((600, 600), Image.Resampling.BICUBIC), (1000, 0))
    faces = detect_faces(canvas, max_faces=1)
    k = 600 / 512
    expected = (
        round(1000 + k * ASTRONAUT_FACE[0]),
        round(k * ASTRONAUT_FACE[1]),
        round(1000 + k * ASTRONAUT_FACE[2]),
        round(k * ASTRONAUT_FACE[3]),
    )
    assert len(faces) == 1
    assert _iou(faces[0], expected) >= 0.5


def test_enhances_only_the_face_region(default_result: tuple[Image.Image, FaceResult]) -> None:
    params = FaceParams()
    astronaut, result = default_result
    assert result.face_detected
    assert not result.fallback_used
    assert result.attempts_used >= 1
    assert result.final_ssim_score is not None
    assert 0.0 < result.final_ssim_score <= 1.0
    assert result.final_ssim_score < 1.0  # something was changed
    assert result.final_lpips_score is None
    assert result.final_dists_score is None
    assert LPIPS_DISTS_NOTE in result.notes
    assert result.image.size == astronaut.size
    assert result.image.mode == astronaut.mode

    before = np.asarray(astronaut)
    after = np.asarray(result.image)
    region = expand_box(result.faces[0], params.expand_percent, astronaut.size)
    outside = _outside(before.shape[:2], region)
    assert np.array_equal(before[outside], after[outside])
    face = ASTRONAUT_FACE
    inner_before = before[face[1] : face[3], face[0] : face[2]].astype(int)
    inner_after = after[face[1] : face[3], face[0] : face[2]].astype(int)
    assert np.abs(inner_after - inner_before).mean() > 1.0
    assert (np.abs(inner_after - inner_before).sum(axis=2) > 0).mean() > 0.5
    # The enhancement adds local contrast to the face.
    gray_before = np.asarray(astronaut.convert("L").crop(face), dtype=float)
    gray_after = np.asarray(result.image.convert("L").crop(face), dtype=float)
    assert gray_after.std() > gray_before.std()


def test_input_image_is_not_modified(astronaut: Image.Image, default_result: tuple[Image.Image, FaceResult]) -> None:
    assert np.array_equal(np.asarray(default_result[0]), np.asarray(astronaut))
    assert default_result[1].image is not astronaut


def test_ssim_gate_retries_at_half_strength(
    astronaut: Image.Image, default_result: tuple[Image.Image, FaceResult]
) -> None:
    first = default_result[1]
    assert first.final_ssim_score is not None
    # A threshold just above attempt 1's score: attempt 2 (half strength) is gentler and passes.
    threshold = min(first.final_ssim_score + 0.01, 0.999)
    second = enhance_faces(astronaut, FaceParams(ssim_threshold=threshold, max_attempts=3, max_faces=1))
    assert len(second.faces) == 1
    assert second.attempts_used >= 2
    assert second.final_ssim_score is not None
    assert second.final_ssim_score >= threshold or second.fallback_used


def test_very_high_ssim_threshold_falls_back_to_the_original(astronaut: Image.Image) -> None:
    result = enhance_faces(astronaut, FaceParams(ssim_threshold=0.999, max_attempts=2))
    assert result.face_detected
    assert result.fallback_used
    assert result.attempts_used == 2
    assert result.final_ssim_score == 1.0
    assert np.array_equal(np.asarray(result.image), np.asarray(astronaut))


def test_blank_image_has_no_face() -> None:
    blank = Image.new("RGB", (320, 240), (200, 180, 160))
    result = enhance_faces(blank, FaceParams())
    assert not result.face_detected
    assert result.fallback_used
    assert result.attempts_used == 0
    assert result.faces == []
    assert result.final_ssim_score is None
    assert "no face detected" in result.notes
    assert result.image is not blank
    assert np.array_equal(np.asarray(result.image), np.asarray(blank))


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA"])
def test_other_modes_work(head: Image.Image, mode: str) -> None:
    image = head.convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.linear_gradient("L").resize(head.size)
        image.putalpha(alpha)
    params = FaceParams()
    result = enhance_faces(image, params)
    assert result.face_detected
    assert result.image.mode == mode
    assert result.image.size == image.size
    before = np.asarray(image)
    after = np.asarray(result.image)
    region = expand_box(result.faces[0], params.expand_percent, image.size)
    outside = _outside(before.shape[:2], region)
    assert np.array_equal(before[outside], after[outside])
    assert not np.array_equal(before, after)
    if mode in ("RGBA", "LA"):
        assert np.array_equal(np.asarray(image.getchannel("A")), np.asarray(result.image.getchannel("A")))


def test_cancellation_propagates(head: Image.Image) -> None:
    class JobCancelledError(Exception):
        pass

    calls = 0

    def cancel_on_second_call() -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            raise JobCancelledError

    with pytest.raises(JobCancelledError):
        enhance_faces(head, FaceParams(), check_cancelled=cancel_on_second_call)
    assert calls == 2


def test_bad_params_are_refused(astronaut: Image.Image) -> None:
    with pytest.raises(FaceEnhancerError):
        enhance_faces(astronaut, FaceParams(max_attempts=0))
    with pytest.raises(FaceEnhancerError):
        enhance_faces(astronaut, FaceParams(ssim_threshold=1.5))
    with pytest.raises(FaceEnhancerError):
        enhance_faces(astronaut, FaceParams(expand_percent=-0.1))
