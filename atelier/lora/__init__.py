"""LoRA model files: streamed, validated uploads into a shared models folder, and admin deletion to a bin."""
