"""Atelier Compute: a self-hostable job service for generative-image work."""

__version__ = "0.1.0"
