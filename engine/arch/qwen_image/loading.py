"""Loading Qwen-Image: a diffusers folder (``Qwen/Qwen-Image`` as downloaded), or the published
single-file transformer (``qwen_image_bf16.safetensors``, ``qwen_image_fp8_e4m3fn.safetensors``:
diffusers' module names, with or without ComfyUI's ``model.diffusion_model.``) with the shared
components in ``<models>/qwen-image-components/``: the repository's ``vae/``, ``text_encoder/``
and ``tokenizer/`` folders as they are downloaded.

The transformer's config is read from its tensors (width, head size, depth, text width, input
and output channels, a guidance input). ComfyUI's single-file VAE (``qwen_image_vae``, Wan's
layout) and text encoder (``qwen_2.5_vl_7b``, without its config) load in
:mod:`engine.arch.qwen_image.single_file`. fp8 as Z-Image's (plain kept, scaled dequantised).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.loading import _DTYPE_NAMES, _empty, _fill, keep_fp8
from engine.arch.zimage.convert import strip_prefix
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

#: The real head size, whose RoPE axes ship in the config; a cut model gets them in proportion.
REAL_HEAD_DIM = 128


@dataclass(frozen=True)
class TransformerInfo:
    config: dict[str, Any]
    storage: str
    width: int


def shipped(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "qwen_image" / component / name).read_text(encoding="utf-8"))


def rope_axes(head_dim: int) -> list[int]:
    """RoPE axes summing to ``head_dim``: the shipped (16, 56, 56) at 128, else in proportion
    (a quarter, then three eighths twice; even sizes for a head of a multiple of 16)."""
    if head_dim == REAL_HEAD_DIM:
        return list(shipped("transformer")["axes_dims_rope"])
    quarter = head_dim // 4
    return [quarter, (head_dim - quarter) // 2, head_dim - quarter - (head_dim - quarter) // 2]


def transformer_info(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> TransformerInfo:
    shapes = {k: v for k, v in shapes.items() if not k.endswith(_SCALE_SUFFIXES + _IGNORED_SUFFIXES) and k not in _MARKERS}
    if "img_in.weight" not in shapes or "transformer_blocks.0.attn.norm_q.weight" not in shapes:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, "this file has no Qwen-Image transformer (no img_in / "
                          "transformer_blocks.0.attn tensors)")  # fmt: skip
    counts: dict[str, int] = {}
    for key, dtype in dtypes.items():
        if key in shapes and key.endswith(".weight") and len(shapes[key]) >= 2:
            counts[dtype] = counts.get(dtype, 0) + 1
    storage = _DTYPE_NAMES.get(max(counts, key=counts.__getitem__), "unknown") if counts else "unknown"
    if storage.startswith("float8") and any(k.endswith(_SCALE_SUFFIXES) for k in dtypes):
        storage += "_scaled"
    width, in_channels = (int(n) for n in shapes["img_in.weight"])
    head_dim = int(shapes["transformer_blocks.0.attn.norm_q.weight"][0])
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks."))
    config = shipped("transformer")
    config.update(
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=width // head_dim,
        joint_attention_dim=int(shapes["txt_in.weight"][1]),
        in_channels=in_channels,
        out_channels=int(shapes["proj_out.weight"][0]) // 4,  # 2x2 patches
        guidance_embeds=any(k.startswith("time_text_embed.guidance_embedder.") for k in shapes),
        use_additional_t_cond=any(k.startswith("time_text_embed.addition_t_embedding.") for k in shapes),
        axes_dims_rope=rope_axes(head_dim),
    )
    return TransformerInfo(config=config, storage=storage, width=width)


def inspect_transformer(path: Path) -> TransformerInfo:
    shapes, dtypes = header(path)
    return transformer_info(strip_prefix(shapes), strip_prefix(dtypes))


def transformer_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    import torch
    from diffusers import QwenImageTransformer2DModel

    state = strip_prefix(state)
    names = {v: k for k, v in _DTYPE_NAMES.items()}
    info = transformer_info({k: tuple(v.shape) for k, v in state.items()},
                            {k: names.get(str(v.dtype).removeprefix("torch."), "") for k, v in state.items()})  # fmt: skip
    if info.storage.endswith("_scaled"):
        state = dequantise(state, dtype)
    fp8 = info.storage.startswith("float8") and not info.storage.endswith("_scaled")
    model = _empty(lambda: QwenImageTransformer2DModel.from_config(info.config))
    _fill(model, state, torch.bfloat16 if fp8 else dtype, "Qwen-Image transformer")
    if fp8:
        storage = getattr(torch, info.storage)
        keep_fp8(model, {k for k, v in state.items() if v.dtype == storage}, storage)
    return model


def vae_from_folder(folder: Path, *, dtype: Any) -> Any:
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                  use_safetensors=True).eval()  # fmt: skip


def text_encoder_from_folder(folder: Path, *, dtype: Any) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                              use_safetensors=True).eval()  # fmt: skip


def tokenizer_from_folder(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(shipped("scheduler", "scheduler_config.json"))


def pipeline(transformer: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(scheduler=scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             transformer=transformer)  # fmt: skip


def load_folder(folder: Path, *, dtype: Any) -> Any:
    from diffusers import QwenImagePipeline

    return QwenImagePipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True, use_safetensors=True)


__all__ = ["TransformerInfo", "header", "inspect_transformer", "load_folder", "pipeline", "read",
           "text_encoder_from_folder", "tokenizer_from_folder", "transformer_from_state", "vae_from_folder"]  # fmt: skip
