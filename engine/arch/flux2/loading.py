"""Loading FLUX.2 Klein: a diffusers folder (``black-forest-labs/FLUX.2-klein-4B`` as downloaded),
or BFL's single-file transformer (``flux-2-klein-4b.safetensors``, bf16 or fp8, with or without
ComfyUI's ``model.diffusion_model.``) with shared components: the Qwen3 text encoder as ComfyUI
ships it (``qwen_3_4b.safetensors`` for 4B, ``qwen_3_8b.safetensors`` for 9B: the one whose
width, three layers stacked, is what the transformer reads; Z-Image's Qwen3-4B is the same file
and the same loaded module), the Qwen tokenizer folder, and the repository's ``vae/`` folder
(FLUX.2's 32-channel VAE) or BFL's single-file ``flux2-vae.safetensors`` (converted in
:mod:`engine.arch.flux2.single_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.loading import _DTYPE_NAMES, _empty, _fill, keep_fp8
from engine.arch.flux2.convert import strip_prefix, to_diffusers, transformer_config
from engine.arch.zimage.loading import (
    _IGNORED_SUFFIXES,
    _MARKERS,
    _SCALE_SUFFIXES,
    dequantise,
    header,
    read,
)
from engine.component_configs import CONFIG_ROOT
from engine.protocol import EngineError, ErrorCode


@dataclass(frozen=True)
class TransformerInfo:
    config: dict[str, Any]
    storage: str
    width: int


def shipped(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "flux2_klein" / component / name).read_text(encoding="utf-8"))


def transformer_info(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str]) -> TransformerInfo:
    shapes = {k: v for k, v in shapes.items() if not k.endswith(_SCALE_SUFFIXES + _IGNORED_SUFFIXES) and k not in _MARKERS}
    if "img_in.weight" not in shapes or "double_blocks.0.img_attn.norm.query_norm.scale" not in shapes:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, "this file has no FLUX.2 transformer in BFL's layout (no "
                          "img_in / double_blocks tensors); a diffusers-named one loads as a diffusers folder")  # fmt: skip
    counts: dict[str, int] = {}
    for key, dtype in dtypes.items():
        if key in shapes and key.endswith(".weight") and len(shapes[key]) >= 2:
            counts[dtype] = counts.get(dtype, 0) + 1
    storage = _DTYPE_NAMES.get(max(counts, key=counts.__getitem__), "unknown") if counts else "unknown"
    if storage.startswith("float8") and any(k.endswith(_SCALE_SUFFIXES) for k in dtypes):
        storage += "_scaled"
    config = transformer_config(shapes, shipped("transformer"))
    return TransformerInfo(config=config, storage=storage, width=int(shapes["img_in.weight"][0]))


def inspect_transformer(path: Path) -> TransformerInfo:
    shapes, dtypes = header(path)
    return transformer_info(strip_prefix(shapes), strip_prefix(dtypes))


def transformer_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    import torch
    from diffusers import Flux2Transformer2DModel

    state = strip_prefix(state)
    names = {v: k for k, v in _DTYPE_NAMES.items()}
    info = transformer_info({k: tuple(v.shape) for k, v in state.items()},
                            {k: names.get(str(v.dtype).removeprefix("torch."), "") for k, v in state.items()})  # fmt: skip
    if info.storage.endswith("_scaled"):
        state = dequantise(state, dtype)
    fp8 = info.storage.startswith("float8") and not info.storage.endswith("_scaled")
    converted = to_diffusers(state)
    model = _empty(lambda: Flux2Transformer2DModel.from_config(info.config))
    _fill(model, converted, torch.bfloat16 if fp8 else dtype, "FLUX.2 transformer")
    if fp8:
        storage = getattr(torch, info.storage)
        keep_fp8(model, {k for k, v in converted.items() if v.dtype == storage}, storage)
    return model


def text_width(path: Path) -> int | None:
    """The hidden width of a Qwen3 file, from its header (``embed_tokens``)."""
    shapes, _ = header(path)
    for key in ("model.embed_tokens.weight", "embed_tokens.weight"):
        if key in shapes:
            return int(shapes[key][1])
    return None


def vae_from_folder(folder: Path, *, dtype: Any) -> Any:
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                              use_safetensors=True).eval()  # fmt: skip


def scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(shipped("scheduler", "scheduler_config.json"))


def pipeline(transformer: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import Flux2KleinPipeline

    # Guidance is decided per job from the registry's variant (distilled Klein or its base
    # model), never from this flag: the runtime passes guidance 1 for a distilled one.
    return Flux2KleinPipeline(scheduler=scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)  # fmt: skip


def load_folder(folder: Path, *, dtype: Any) -> Any:
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True, use_safetensors=True)
    pipe.register_to_config(is_distilled=False)
    return pipe


__all__ = ["TransformerInfo", "inspect_transformer", "load_folder", "pipeline", "read", "text_width",
           "transformer_from_state", "vae_from_folder"]  # fmt: skip
