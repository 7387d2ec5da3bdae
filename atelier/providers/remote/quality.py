"""Quality gates of the Sartiq fixers: is a remotely refined region still the same picture as the original?

Metrics (each compares an original RGB ``uint8`` crop with its candidate replacement of the same shape):

- **SSIM** (similarity, 1 = identical): :func:`ssim`, scikit-image's ``structural_similarity`` on BT.601
  grayscale, data range 255. Its default 7 × 7 window is clamped for small crops to the largest odd size that
  fits; crops under 3 px on a side score 1.0 when equal and 0.0 otherwise (as the LOCAL face enhancer does).
  Always computed: it is cheap, and the providers report it.
- **LPIPS** and **DISTS** (perceptual *distances*, 0 = identical): they need learned network weights that this
  service does not ship. They are looked up at run time, only when their threshold is > 0: LPIPS through the
  ``lpips`` package (AlexNet variant) or ``piq.LPIPS``, DISTS through ``piq.DISTS`` (both need ``torch``; their
  own loaders fetch weights into the torch cache when missing). When neither is importable (or loading fails)
  the gate cannot be honoured and :class:`QualityGate` raises :class:`~atelier.core.errors.InvalidInputError`
  naming the field (``("provider_config", "lpips_threshold")``) and saying that 0 disables the check — the task
  fails as INVALID_INPUT before any remote call is paid for.

A threshold of 0 disables its check. A candidate passes when every enabled check holds:
``ssim >= ssim_threshold``, ``lpips <= lpips_threshold``, ``dists <= dists_threshold``.

Gates are called from several worker threads at once: SSIM is stateless, and each loaded perceptual model is
cached once per process and serialised by its own lock.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from atelier.core.errors import InvalidInputError
from atelier.providers.local.face_enhancer import ssim as local_ssim

Scorer = Callable[[NDArray[np.uint8], NDArray[np.uint8]], float]
"""A perceptual distance between two RGB uint8 arrays of the same shape (lower = more alike)."""

PERCEPTUAL_METRICS = ("lpips", "dists")

_LOAD_LOCK = threading.Lock()
_LOADED: dict[str, Scorer] = {}


def ssim(original: NDArray[np.uint8], candidate: NDArray[np.uint8]) -> float:
    """Grayscale SSIM of two same-shape RGB (or gray) uint8 arrays, window clamped for small crops.

    The LOCAL face enhancer's measure (``face_enhancer.ssim``), with a shape check: remote answers are resized
    to their region before they are compared.
    """
    if original.shape != candidate.shape:
        raise ValueError(f"SSIM needs arrays of one shape, got {original.shape} and {candidate.shape}")
    return local_ssim(original, candidate)


# ------------------------------------------------------------------------------------------ perceptual metrics


def _import(name: str) -> Any:
    """The module, or None when it (or one of its own imports, e.g. torch) is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _torch_scorer(model: Any, torch: Any, *, signed: bool) -> Scorer:  # pragma: no cover - needs torch + weights
    """Wrap a torch metric module ``model(x, y) -> distance`` taking NCHW floats in [0, 1] (or [-1, 1])."""
    model.eval()
    lock = threading.Lock()

    def tensor(rgb: NDArray[np.uint8]) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        return t * 2.0 - 1.0 if signed else t

    def score(original: NDArray[np.uint8], candidate: NDArray[np.uint8]) -> float:
        with lock, torch.no_grad():
            return float(model(tensor(original), tensor(candidate)).mean().item())

    return score


def _build(metric: str) -> Scorer | None:  # pragma: no cover - the service's own environment has neither package
    torch = _import("torch")
    if torch is None:
        return None
    if metric == "lpips":
        lpips = _import("lpips")
        if lpips is not None:
            return _torch_scorer(lpips.LPIPS(net="alex", verbose=False), torch, signed=True)
        piq = _import("piq")
        return None if piq is None else _torch_scorer(piq.LPIPS(reduction="none"), torch, signed=False)
    piq = _import("piq")
    return None if piq is None else _torch_scorer(piq.DISTS(reduction="none"), torch, signed=False)


def load_metric(metric: str) -> Scorer | None:
    """The process-wide scorer of ``metric`` ("lpips" or "dists"), or None when no implementation is importable.

    Raises whatever the implementation raises while loading its weights (the caller reports it).
    """
    if metric not in PERCEPTUAL_METRICS:
        raise ValueError(f"unknown perceptual metric {metric!r}")
    with _LOAD_LOCK:
        if metric not in _LOADED:
            scorer = _build(metric)
            if scorer is None:
                return None
            _LOADED[metric] = scorer
        return _LOADED[metric]


# ------------------------------------------------------------------------------------------ the gate


@dataclass(frozen=True)
class Thresholds:
    """The three thresholds of a Sartiq config; 0 disables a check."""

    ssim: float = 0.0
    lpips: float = 0.0
    dists: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> Thresholds:
        """Read ``ssim_threshold``/``lpips_threshold``/``dists_threshold`` (missing = 0) from a config model."""
        return cls(
            ssim=float(getattr(config, "ssim_threshold", 0.0) or 0.0),
            lpips=float(getattr(config, "lpips_threshold", 0.0) or 0.0),
            dists=float(getattr(config, "dists_threshold", 0.0) or 0.0),
        )


@dataclass(frozen=True)
class GateResult:
    """The verdict on one candidate: scores of the metrics computed and the checks that failed."""

    passed: bool
    ssim: float
    lpips: float | None = None
    dists: float | None = None
    failures: tuple[str, ...] = ()

    def describe(self) -> str:
        """``ssim 0.9321, lpips 0.041`` plus the failed checks, for notes and logs."""
        parts = [f"ssim {self.ssim:.4f}"]
        if self.lpips is not None:
            parts.append(f"lpips {self.lpips:.4f}")
        if self.dists is not None:
            parts.append(f"dists {self.dists:.4f}")
        text = ", ".join(parts)
        return f"{text} (failed: {'; '.join(self.failures)})" if self.failures else text


class QualityGate:
    """Checks candidates against :class:`Thresholds`; build it before any remote call (it validates them).

    ``scorers`` replaces the perceptual metric lookup (tests, or a caller with its own models); ``loc`` is the
    location prefix of the threshold fields in error messages.
    """

    def __init__(
        self,
        thresholds: Thresholds,
        *,
        scorers: Mapping[str, Scorer | None] | None = None,
        loc: tuple[str, ...] = ("provider_config",),
    ) -> None:
        for name in ("ssim", "lpips", "dists"):
            value = getattr(thresholds, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(
                    f"{name}_threshold must be a finite number >= 0", loc=(*loc, f"{name}_threshold")
                )
        if thresholds.ssim > 1.0:
            raise InvalidInputError("ssim_threshold must be within 0..1 (0 disables)", loc=(*loc, "ssim_threshold"))
        self.thresholds = thresholds
        self._scorers: dict[str, Scorer] = {}
        for metric in PERCEPTUAL_METRICS:
            if getattr(thresholds, metric) <= 0:
                continue
            field = f"{metric}_threshold"
            try:
                scorer = scorers[metric] if scorers is not None and metric in scorers else load_metric(metric)
            except Exception as exc:  # pragma: no cover - an installed implementation whose weights fail to load
                raise InvalidInputError(
                    f"{field} > 0 needs the {metric.upper()} metric, which failed to load "
                    f"({type(exc).__name__}: {exc}); set {field} to 0 (0 disables the check)",
                    loc=(*loc, field),
                ) from exc
            if scorer is None:
                raise InvalidInputError(
                    f"{field} > 0 needs the {metric.upper()} metric, which is not installed on this service "
                    f"(it needs the 'piq' or 'lpips' package with torch and their model weights); "
                    f"set {field} to 0 (0 disables the check)",
                    loc=(*loc, field),
                )
            self._scorers[metric] = scorer

    @property
    def enabled(self) -> bool:
        """True when at least one check can reject a candidate."""
        return self.thresholds.ssim > 0 or bool(self._scorers)

    def check(self, original: NDArray[np.uint8], candidate: NDArray[np.uint8]) -> GateResult:
        """Score ``candidate`` against ``original`` and tell whether every enabled check holds."""
        score = ssim(original, candidate)
        failures: list[str] = []
        limits = self.thresholds
        if limits.ssim > 0 and score < limits.ssim:
            failures.append(f"ssim {score:.4f} < {limits.ssim:.4f}")
        distances: dict[str, float] = {}
        for metric, scorer in self._scorers.items():
            distance = float(scorer(original, candidate))
            distances[metric] = distance
            limit = getattr(limits, metric)
            if not distance <= limit:  # NaN fails too
                failures.append(f"{metric} {distance:.4f} > {limit:.4f}")
        return GateResult(
            passed=not failures,
            ssim=score,
            lpips=distances.get("lpips"),
            dists=distances.get("dists"),
            failures=tuple(failures),
        )
