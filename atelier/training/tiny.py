"""Tiny diffusers pipelines with random weights, built from configs without any download.

They have the real shapes of a Stable-Diffusion-style pipeline (UNet + VAE + CLIP text encoder) and of a
Flux-style one (MMDiT transformer + VAE + CLIP + T5), a few million parameters at most, so tests and smoke runs
can exercise loading, generation and LoRA training on a CPU in seconds. The tokenizers are trained here, on a
handful of prompts, with the ``tokenizers`` library.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

TinyKind = Literal["sd", "flux"]

# A small corpus for the tokenizers: enough words for prompts in tests and samples.
_CORPUS = [
    "a photo of a red square on a white background",
    "a photo of a blue circle on a black background",
    "a green triangle, a yellow star and an orange heart",
    "a purple cat sitting on a grey sofa in a bright room",
    "a portrait of a person wearing a hat, studio lighting",
    "a landscape with mountains, a lake and a forest at sunset",
    "a dog running on the beach under a cloudy sky",
    "high quality, detailed, sharp, colourful, simple pattern, stripes, checkerboard, gradient",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
    "sks style, toy dataset, solid colour image, abstract shapes, text, logo, product shot",
]

_CLIP_MAX_LENGTH = 77
_CLIP_MERGES = 150


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map (the byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _learn_bpe(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn BPE merges over byte-level words with a ``</w>`` suffix; ties broken lexicographically (deterministic).

    (The ``tokenizers`` BPE trainer breaks frequency ties in a run-dependent order, so its output is not
    reproducible; this corpus is tiny, so a plain Python learner is fast enough.)
    """
    byte_map = _bytes_to_unicode()
    counts: dict[tuple[str, ...], int] = {}
    for word in words:
        chars = [byte_map[b] for b in word.encode("utf-8")]
        symbols = (*chars[:-1], chars[-1] + "</w>")
        counts[symbols] = counts.get(symbols, 0) + 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: dict[tuple[str, str], int] = {}
        for symbols, n in counts.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in counts.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        counts = merged
    return merges


def _clip_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer learned on the corpus (byte-level alphabet, ``</w>`` word suffix, CLIP's id layout)."""
    from transformers import CLIPTokenizer

    words = [w for line in _CORPUS for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower())]
    merges = _learn_bpe(words, num_merges=_CLIP_MERGES)
    alphabet = list(_bytes_to_unicode().values())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=_CLIP_MAX_LENGTH
    )


def _t5_tokenizer() -> Any:
    """A T5 Unigram tokenizer over the corpus (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no extra ids).

    The vocabulary is laid out deterministically (the ``tokenizers`` Unigram trainer is not reproducible run to
    run): whole words (``▁word``) score better than their characters, so known words stay one piece.
    """
    from transformers import T5Tokenizer

    words = sorted({w for line in _CORPUS for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower())})
    chars = sorted({c for w in words for c in w})
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words]
    vocab += [(c, -2.0) for c in chars]
    vocab = list({piece: (piece, score) for piece, score in vocab}.values())
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_text_encoder(tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def _tiny_vae(seed: int, **flux_options: Any) -> Any:
    """The tiny VAE both pipeline shapes share (Flux's drops the quant convs and the latent scaling)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
        **flux_options,
    )


def _build_sd(folder: Path, seed: int, work: Path) -> Any:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = _tiny_vae(seed + 1)
    tokenizer = _clip_tokenizer(work / "clip")
    text_encoder = _clip_text_encoder(tokenizer, seed + 2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_flux(folder: Path, seed: int, work: Path) -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _tiny_vae(seed + 1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0)
    tokenizer = _clip_tokenizer(work / "clip")
    text_encoder = _clip_text_encoder(tokenizer, seed + 2)
    tokenizer_2 = _t5_tokenizer()
    t5_config = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        decoder_start_token_id=tokenizer_2.pad_token_id,
    )
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(t5_config).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_tiny_pipeline(folder: Path, kind: TinyKind, seed: int = 0) -> Path:
    """Build a tiny ``kind`` pipeline with random weights (deterministic for ``seed``) and save it into ``folder``.

    Returns ``folder``; ``DiffusionPipeline.from_pretrained(folder)`` loads it back offline.
    """
    import tempfile

    _offline()
    if kind not in ("sd", "flux"):
        raise ValueError(f"unknown tiny pipeline kind {kind!r}: expected 'sd' or 'flux'")
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="atelier-tiny-") as tmp:
        build = _build_sd if kind == "sd" else _build_flux
        pipeline = build(folder, seed, Path(tmp))
        folder.mkdir(parents=True, exist_ok=True)
        pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder
