"""Shot evaluation: framing, view angle, people, anatomy and collage checks by a local or a vision-LLM backend."""
