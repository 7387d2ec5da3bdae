"""Providers that call remote AI services over their public HTTP protocols.

Each module documents the protocol it speaks and exposes ``providers(settings)``; ``remote_providers``
collects them for the registry.
"""

from __future__ import annotations

import importlib

from atelier.providers.base import Provider
from atelier.settings import ProviderSettings

MODULES = ("fal", "fashn", "freepik", "vertex", "nano_banana", "aicore", "sartiq")


def remote_providers(settings: ProviderSettings) -> list[Provider]:
    """Every remote provider, built with its service's connection settings."""
    found: list[Provider] = []
    for name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        found.extend(module.providers(settings))
    return found
