"""Local diffusion tooling: tiny offline pipelines (for tests and smoke runs) and a LoRA trainer.

Nothing here imports torch, diffusers or transformers at import time: the core service stays light. Those come
from the ``ml`` extra and are imported inside the functions that need them.
"""
