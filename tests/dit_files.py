"""Diffusion-transformer files (FLUX.1, SD 3, Qwen-Image, FLUX.2) with their real key names.

Written with safetensors here because the engine cannot build these models. Key names are the
ones each tool writes (BFL/ComfyUI, diffusers, kohya, PEFT; see /work/shared/reference.md).
LoRAs keep the real hidden widths (FLUX.1 3072, SD 3 medium 1536), since a layout FLUX and
SD 3 share is told apart by width, at rank 4 so each file stays a few hundred kilobytes;
checkpoints keep the real structure at a tiny width, since the structure alone names them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

FLUX_WIDTH = 3072
SD3_WIDTH = 1536
RANK = 4


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float16)


def _save(path: Path, state: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def _kohya(module: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    return {
        f"{module}.lora_down.weight": _zeros(RANK, fan_in),
        f"{module}.lora_up.weight": _zeros(fan_out, RANK),
        f"{module}.alpha": np.array(RANK, np.float16),
    }


def _peft(module: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    return {f"{module}.lora_A.weight": _zeros(RANK, fan_in), f"{module}.lora_B.weight": _zeros(fan_out, RANK)}


# --- FLUX.1 checkpoints ---------------------------------------------------------------------


def flux_bfl_checkpoint(path: Path, *, prefix: str = "", width: int = 32) -> Path:
    """BFL's own layout (``flux1-dev.safetensors``); ComfyUI's full files put
    ``model.diffusion_model.`` before every key (``prefix``)."""
    w = width
    state = {
        "img_in.weight": _zeros(w, 64), "txt_in.weight": _zeros(w, 64),
        "time_in.in_layer.weight": _zeros(w, 256), "vector_in.in_layer.weight": _zeros(w, 768),
        "guidance_in.in_layer.weight": _zeros(w, 256), "final_layer.linear.weight": _zeros(64, w),
    }  # fmt: skip
    for n in range(2):
        for stream in ("img", "txt"):
            state[f"double_blocks.{n}.{stream}_attn.qkv.weight"] = _zeros(3 * w, w)
            state[f"double_blocks.{n}.{stream}_attn.proj.weight"] = _zeros(w, w)
            state[f"double_blocks.{n}.{stream}_mlp.0.weight"] = _zeros(4 * w, w)
            state[f"double_blocks.{n}.{stream}_mlp.2.weight"] = _zeros(w, 4 * w)
            state[f"double_blocks.{n}.{stream}_mod.lin.weight"] = _zeros(6 * w, w)
        state[f"single_blocks.{n}.linear1.weight"] = _zeros(7 * w, w)
        state[f"single_blocks.{n}.linear2.weight"] = _zeros(w, 5 * w)
        state[f"single_blocks.{n}.modulation.lin.weight"] = _zeros(3 * w, w)
    return _save(path, {prefix + k: v for k, v in state.items()})


def flux_diffusers_transformer(path: Path, *, width: int = 32) -> Path:
    """diffusers' ``FluxTransformer2DModel`` saved as one file (``transformer/`` weights)."""
    w = width
    state = {"x_embedder.weight": _zeros(w, 64), "context_embedder.weight": _zeros(w, 64),
             "time_text_embed.guidance_embedder.linear_1.weight": _zeros(w, 256),
             "proj_out.weight": _zeros(64, w)}  # fmt: skip
    for n in range(2):
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            state[f"transformer_blocks.{n}.attn.{proj}.weight"] = _zeros(w, w)
        state[f"transformer_blocks.{n}.ff.net.0.proj.weight"] = _zeros(4 * w, w)
        state[f"transformer_blocks.{n}.ff_context.net.0.proj.weight"] = _zeros(4 * w, w)
        state[f"single_transformer_blocks.{n}.attn.to_q.weight"] = _zeros(w, w)
        state[f"single_transformer_blocks.{n}.proj_mlp.weight"] = _zeros(4 * w, w)
        state[f"single_transformer_blocks.{n}.proj_out.weight"] = _zeros(w, 5 * w)
    return _save(path, state)


# --- FLUX.1 LoRAs -----------------------------------------------------------------------


def flux_kohya_lora(path: Path) -> Path:
    """kohya sd-scripts' FLUX LoRA: BFL module names under ``lora_unet_``."""
    w = FLUX_WIDTH
    state = {
        **_kohya("lora_unet_double_blocks_0_img_attn_qkv", w, 3 * w),
        **_kohya("lora_unet_double_blocks_0_txt_attn_qkv", w, 3 * w),
        **_kohya("lora_unet_single_blocks_0_linear2", 5 * w, w),
    }
    return _save(path, state, {"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux"})


def flux_diffusers_kohya_lora(path: Path) -> Path:
    """kohya names over diffusers' module paths (issue 18's ``lora_unet_transformer_blocks_1_attn_to_q``)."""
    w = FLUX_WIDTH
    state: dict[str, np.ndarray] = {}
    for n in (0, 1):
        for proj in ("to_q", "to_k", "to_v"):
            state.update(_kohya(f"lora_unet_transformer_blocks_{n}_attn_{proj}", w, w))
    return _save(path, state)


def flux_peft_lora(path: Path, *, add_q_proj: bool = False) -> Path:
    """PEFT / diffusers ``save_lora_weights`` (ai-toolkit, SimpleTuner): ``transformer.…lora_A``.
    ``add_q_proj``: the text stream's projections too (issue 18's file read as SD 3)."""
    w = FLUX_WIDTH
    projections = ("to_q", "to_k", "to_v") + (("add_q_proj", "add_k_proj", "add_v_proj") if add_q_proj else ())
    state: dict[str, np.ndarray] = {}
    for proj in projections:
        state.update(_peft(f"transformer.transformer_blocks.0.attn.{proj}", w, w))
    return _save(path, state)


# --- other diffusion transformers ----------------------------------------------------------


def sd3_peft_lora(path: Path) -> Path:
    """An SD 3 medium LoRA in diffusers' layout: the same key names as FLUX's, 1536 wide."""
    w = SD3_WIDTH
    state: dict[str, np.ndarray] = {}
    for proj in ("to_q", "to_k", "to_v", "add_q_proj"):
        state.update(_peft(f"transformer.transformer_blocks.0.attn.{proj}", w, w))
    return _save(path, state)


def sd3_checkpoint(path: Path, *, width: int = 32) -> Path:
    """SAI's SD 3 file layout (MMDiT joint blocks under ``model.diffusion_model.``)."""
    w = width
    state = {"model.diffusion_model.x_embedder.proj.weight": _zeros(w, 16, 2, 2)}
    for n in range(2):
        for block in ("x_block", "context_block"):
            state[f"model.diffusion_model.joint_blocks.{n}.{block}.attn.qkv.weight"] = _zeros(3 * w, w)
    return _save(path, state)


def qwen_image_lora(path: Path) -> Path:
    """A Qwen-Image LoRA (diffusers names): its blocks carry img_mlp/txt_mlp, not ff/ff_context."""
    w = FLUX_WIDTH
    state = {**_peft("transformer.transformer_blocks.0.attn.to_q", w, w),
             **_peft("transformer.transformer_blocks.0.img_mlp.net.0.proj", w, 4 * w)}  # fmt: skip
    return _save(path, state)


def flux2_checkpoint(path: Path, *, width: int = 32) -> Path:
    """FLUX.2: BFL-style double/single blocks with shared stream modulations."""
    w = width
    state = {"double_stream_modulation_img.lin.weight": _zeros(6 * w, w),
             "single_stream_modulation.lin.weight": _zeros(3 * w, w),
             "double_blocks.0.img_attn.qkv.weight": _zeros(3 * w, w)}  # fmt: skip
    return _save(path, state)


# --- FLUX.2 Klein and Qwen-Image in their published layouts (issue 19) -----------------------

#: FLUX.2's widths by size.
KLEIN_4B_WIDTH = 3072
KLEIN_9B_WIDTH = 4096


def flux2_kohya_lora(path: Path, *, width: int, mlp: bool = True) -> Path:
    """A kohya/musubi FLUX.2 LoRA in BFL names (FLUX.1's, with FLUX.2's 3x SwiGLU MLP: 6x rows)."""
    w = width
    state = {**_kohya("lora_unet_double_blocks_0_img_attn_qkv", w, 3 * w),
             **_kohya("lora_unet_double_blocks_0_txt_attn_qkv", w, 3 * w)}  # fmt: skip
    if mlp:
        state.update(_kohya("lora_unet_double_blocks_0_img_mlp_0", w, 6 * w))
        state.update(_kohya("lora_unet_single_blocks_0_linear1", w, 9 * w))
    return _save(path, state)


def flux2_diffusers_lora(path: Path, *, width: int = 32) -> Path:
    """diffusers' FLUX.2 names (ai-toolkit, diffusers): the fused single-block projection."""
    w = width
    state = {**_peft("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", w, 9 * w),
             **_peft("transformer.transformer_blocks.0.attn.to_q", w, w)}  # fmt: skip
    return _save(path, state)


def flux2_bfl_checkpoint(path: Path, *, width: int) -> Path:
    """A FLUX.2 transformer in BFL names (``flux-2-klein-4b.safetensors``): structure only."""
    w = width
    state = {"img_in.weight": _zeros(w, 128), "txt_in.weight": _zeros(w, 8),
             "double_blocks.0.img_attn.qkv.weight": _zeros(3 * w, w),
             "double_blocks.0.img_mlp.0.weight": _zeros(6 * w, w),
             "single_blocks.0.linear1.weight": _zeros(9 * w, w),
             "double_stream_modulation_img.lin.weight": _zeros(6 * w, w)}  # fmt: skip
    return _save(path, state)


def qwen_image_checkpoint(path: Path, *, prefix: str = "", width: int = 32) -> Path:
    """Qwen-Image's transformer as ComfyUI ships it (diffusers' module names)."""
    w = width
    state = {"img_in.weight": _zeros(w, 64), "txt_in.weight": _zeros(w, 16), "txt_norm.weight": _zeros(16, 1)[:, 0],
             "transformer_blocks.0.attn.to_q.weight": _zeros(w, w),
             "transformer_blocks.0.attn.add_q_proj.weight": _zeros(w, w),
             "transformer_blocks.0.img_mlp.net.0.proj.weight": _zeros(4 * w, w),
             "transformer_blocks.0.img_mod.1.weight": _zeros(6 * w, w)}  # fmt: skip
    return _save(path, {prefix + k: v for k, v in state.items()})


def qwen_image_kohya_lora(path: Path) -> Path:
    """musubi-tuner's Qwen-Image LoRA: kohya names over diffusers' modules, at 3072."""
    w = FLUX_WIDTH
    state = {**_kohya("lora_unet_transformer_blocks_0_attn_to_q", w, w),
             **_kohya("lora_unet_transformer_blocks_0_img_mlp_net_0_proj", w, 4 * w)}  # fmt: skip
    return _save(path, state)


def chroma_checkpoint(path: Path, *, width: int = 32) -> Path:
    """Chroma: FLUX.1 schnell's blocks with its modulations replaced by a distilled guidance
    layer (``distilled_guidance_layer.in_proj``), no ``vector_in``/``guidance_in``."""
    w = width
    state = {"img_in.weight": _zeros(w, 64), "txt_in.weight": _zeros(w, 64),
             "distilled_guidance_layer.in_proj.weight": _zeros(w, 64),
             "double_blocks.0.img_attn.qkv.weight": _zeros(3 * w, w),
             "double_blocks.0.img_mlp.0.weight": _zeros(4 * w, w),
             "single_blocks.0.linear1.weight": _zeros(7 * w, w)}  # fmt: skip
    return _save(path, state)


def hidream_lora(path: Path) -> Path:
    """A HiDream-I1 LoRA (kohya names over its double-stream blocks): no module runs it."""
    return _save(path, _kohya("lora_unet_double_stream_blocks_0_block_attn1_to_q", 2560, 2560))
