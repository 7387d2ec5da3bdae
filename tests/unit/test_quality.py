"""Quality gates of the Sartiq fixers: SSIM on small and large crops, threshold semantics, missing LPIPS/DISTS."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from numpy.typing import NDArray

from atelier.core.errors import InvalidInputError
from atelier.providers.configs import SartiqUltimateFaceFixerConfig
from atelier.providers.remote import quality
from atelier.providers.remote.quality import QualityGate, Thresholds, ssim


def _image(seed: int = 0, size: tuple[int, int] = (48, 64)) -> NDArray[np.uint8]:
    """A smooth gradient with texture (SSIM behaves as on photos, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = 60 + 2 * xx + np.sin(yy / 3.0) * 25
    rgb = np.stack([base, base * 0.8 + 20, 200 - base / 2], axis=-1) + rng.normal(0, 3, (*size, 3))
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.uint8)


def _noise(seed: int, shape: tuple[int, ...]) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_ssim_is_one_for_identical_and_low_for_noise() -> None:
    image = _image()
    assert ssim(image, image.copy()) == pytest.approx(1.0)
    assert ssim(image, _noise(1, image.shape)) < 0.2
    brighter = np.asarray(np.clip(image.astype(int) + 3, 0, 255), dtype=np.uint8)
    assert 0.9 < ssim(image, brighter) < 1.0


@pytest.mark.parametrize("side", [3, 4, 5, 6])
def test_ssim_window_is_clamped_for_small_crops(side: int) -> None:
    crop = _image(size=(side, side + 10))
    assert ssim(crop, crop.copy()) == pytest.approx(1.0)
    assert ssim(crop, 255 - crop) < 1.0


def test_ssim_of_tiny_crops_is_equality() -> None:
    crop = _image(size=(2, 9))
    assert ssim(crop, crop.copy()) == 1.0
    assert ssim(crop, 255 - crop) == 0.0


def test_ssim_accepts_gray_and_refuses_mismatched_shapes() -> None:
    gray = _image()[:, :, 0]
    assert ssim(gray, gray.copy()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        ssim(_image(), _image(size=(48, 63)))


def test_zero_thresholds_pass_everything_but_still_report_ssim() -> None:
    gate = QualityGate(Thresholds())
    image = _image()
    verdict = gate.check(image, _noise(2, image.shape))
    assert verdict.passed and not gate.enabled
    assert verdict.ssim < 0.2 and verdict.lpips is None and verdict.dists is None


def test_ssim_threshold_accepts_close_and_rejects_far_candidates() -> None:
    gate = QualityGate(Thresholds(ssim=0.8))
    image = _image()
    assert gate.enabled
    assert gate.check(image, image.copy()).passed
    far = gate.check(image, _noise(3, image.shape))
    assert not far.passed
    assert far.failures and far.failures[0].startswith("ssim ")
    assert "failed" in far.describe()


def test_perceptual_metrics_are_distances_compared_with_at_most() -> None:
    calls: list[str] = []

    def lpips(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
        calls.append("lpips")
        return 0.1

    def dists(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
        calls.append("dists")
        return 0.3

    image = _image()
    exact = QualityGate(Thresholds(lpips=0.1, dists=0.3), scorers={"lpips": lpips, "dists": dists})
    verdict = exact.check(image, image)
    assert verdict.passed and verdict.lpips == 0.1 and verdict.dists == 0.3
    assert "lpips 0.1000" in verdict.describe()
    strict = QualityGate(Thresholds(lpips=0.05, dists=0.3), scorers={"lpips": lpips, "dists": dists})
    rejected = strict.check(image, image)
    assert not rejected.passed
    assert rejected.failures == ("lpips 0.1000 > 0.0500",)
    assert calls.count("lpips") == 2


def test_a_disabled_perceptual_metric_is_never_loaded_nor_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(metric: str) -> None:
        raise AssertionError(f"{metric} must not be loaded")

    monkeypatch.setattr(quality, "load_metric", boom)
    verdict = QualityGate(Thresholds(ssim=0.5)).check(_image(), _image())
    assert verdict.lpips is None and verdict.dists is None


@pytest.mark.parametrize("metric", ["lpips", "dists"])
def test_missing_perceptual_metric_is_an_input_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    monkeypatch.setattr(quality, "load_metric", lambda name: None)
    with pytest.raises(InvalidInputError) as info:
        QualityGate(Thresholds(**{metric: 0.2}))
    assert info.value.loc == ("provider_config", f"{metric}_threshold")
    assert "0 disables" in str(info.value)
    assert metric.upper() in str(info.value)


@pytest.mark.skipif(
    importlib.util.find_spec("piq") is not None or importlib.util.find_spec("lpips") is not None,
    reason="a perceptual metric implementation is installed here",
)
def test_without_piq_or_lpips_installed_the_real_lookup_finds_nothing() -> None:
    assert quality.load_metric("lpips") is None
    assert quality.load_metric("dists") is None
    with pytest.raises(InvalidInputError, match="lpips_threshold"):
        QualityGate(Thresholds(lpips=0.3))


def test_unknown_metric_and_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="unknown"):
        quality.load_metric("psnr")
    with pytest.raises(InvalidInputError, match="ssim_threshold"):
        QualityGate(Thresholds(ssim=1.5))
    with pytest.raises(InvalidInputError) as info:
        QualityGate(Thresholds(dists=float("nan")), loc=("fallback_provider_config",))
    assert info.value.loc == ("fallback_provider_config", "dists_threshold")


def test_thresholds_from_a_provider_config() -> None:
    config = SartiqUltimateFaceFixerConfig(ssim_threshold=0.7, lpips_threshold=0.2)
    assert Thresholds.from_config(config) == Thresholds(ssim=0.7, lpips=0.2, dists=0.0)
    assert Thresholds.from_config(object()) == Thresholds()
