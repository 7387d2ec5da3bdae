"""Providers that call remote AI services over their public HTTP protocols.

Each module documents the protocol it speaks and exposes ``providers(settings)``; ``remote_providers``
collects them for the registry.
"""

from __future__ import annotations

import importlib
import logging

from atelier.providers.base import Provider
from atelier.settings import ProviderSettings

log = logging.getLogger(__name__)

MODULES = ("fal", "fashn", "freepik", "vertex", "nano_banana", "aicore", "sartiq")


def remote_providers(settings: ProviderSettings) -> list[Provider]:
    """Every remote provider, built with its service's connection settings."""
    found: list[Provider] = []
    for name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:  # e.g. the Sartiq fixers need OpenCV/scikit-image from the `ml` extra
            log.warning("%s providers not installed (%s): pip install 'atelier[ml]'", name, exc)
            continue
        found.extend(module.providers(settings))
    return found
