"""Qwen-Image's components as ComfyUI publishes them, loaded into the modules diffusers runs.

Two files people download beside ``qwen_image_bf16.safetensors`` (Comfy-Org/Qwen-Image_ComfyUI,
``split_files/``):

- ``vae/qwen_image_vae.safetensors``: Wan 2.1's VAE key layout (``encoder.downsamples.N``,
  ``decoder.upsamples.N``, ``conv1``/``conv2`` for the quant convs). diffusers'
  ``AutoencoderKLQwenImage`` has exactly ``AutoencoderKLWan``'s parameter names, so diffusers'
  own ``convert_wan_vae_to_diffusers`` (registered for Wan only) converts it, and the result
  loads strictly into an ``AutoencoderKLQwenImage`` built from the shipped config
  (``data/configs/qwen_image/vae``) with the widths its tensors show.
- ``text_encoders/qwen_2.5_vl_7b.safetensors`` (bf16) and ``..._fp8_scaled.safetensors``:
  Qwen2.5-VL-7B in the checkpoint layout transformers had before 4.52 (``model.layers.N``,
  ``model.embed_tokens``, ``visual.blocks.N``), without ``lm_head`` (the pipeline reads hidden
  states, never logits). transformers renames that layout itself when it loads a folder (its
  ``conversion_mapping`` for ``Qwen2VLForConditionalGeneration``: ``^visual`` ->
  ``model.visual``, ``^model`` -> ``model.language_model``); a state dict gets the same two
  renames here. The config is read from the shapes; scaled fp8 is dequantised as Z-Image's.

Everything here reads tensors already in memory; which file is which is
:mod:`engine.arch.components`' (header only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from engine.arch.components import named as _named
from engine.arch.components import strip_component_prefix
from engine.component_configs import CONFIG_ROOT
from engine.protocol import EngineError, ErrorCode

#: transformers' renames of the pre-4.52 Qwen2-VL / Qwen2.5-VL layout (see the docstring).
_TE_RENAMES = ((re.compile(r"^visual\."), "model.visual."),
               (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."))  # fmt: skip
#: Real Qwen2.5-VL heads are 128 wide (the vision tower's 80); a cut test model has at least two.
TEXT_HEAD = 128
VISION_HEAD = 80


def _shipped(component: str) -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "qwen_image" / component / "config.json").read_text(encoding="utf-8"))


# --- the VAE ------------------------------------------------------------------------------


def vae_config(state: dict[str, Any]) -> dict[str, Any]:
    """The shipped config with the widths of these tensors (a cut VAE keeps Wan's structure:
    four levels of two residual blocks, which diffusers' converter is written for)."""
    config = _shipped("vae")
    config.pop("_class_name", None)
    base = int(state["encoder.conv1.weight"].shape[0])
    levels = [int(state[f"encoder.downsamples.{3 * i}.residual.2.weight"].shape[0]) for i in range(4)
              if f"encoder.downsamples.{3 * i}.residual.2.weight" in state]  # fmt: skip
    config.update(base_dim=base, z_dim=int(state["conv2.weight"].shape[0]),
                  dim_mult=[n // base for n in levels] or config["dim_mult"])  # fmt: skip
    return config


def vae_from_comfy(state: dict[str, Any], *, dtype: Any) -> Any:
    """``AutoencoderKLQwenImage`` from ``qwen_image_vae.safetensors`` (Wan 2.1's names)."""
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from engine.arch.flux.loading import _empty, _fill

    state = strip_component_prefix(state)
    if "encoder.conv1.weight" not in state or "decoder.head.2.weight" not in state:
        raise EngineError(ErrorCode.ARCH_MISMATCH, "this is not Qwen-Image's VAE in Wan 2.1's layout (no "
                          "encoder.conv1 / decoder.head tensors): use qwen_image_vae.safetensors")  # fmt: skip
    config = vae_config(state)
    model = _empty(lambda: AutoencoderKLQwenImage.from_config(config))
    return _fill(model, convert_wan_vae_to_diffusers(state), dtype, "Qwen-Image VAE",
                 "Qwen-Image reads ComfyUI's qwen_image_vae.safetensors (Wan 2.1's VAE) as published")  # fmt: skip


# --- the text encoder -----------------------------------------------------------------------


def _heads(width: int, head: int) -> int:
    return max(2, width // head)


def text_encoder_config(state: dict[str, Any]) -> Any:
    """A ``Qwen2_5_VLConfig`` from transformers-named shapes (after :func:`to_transformers`):
    width, depth, heads, kv heads, MLP and vocabulary; the vision tower's likewise when present."""
    from transformers import Qwen2_5_VLConfig

    from engine.arch.qwen_image.loading import rope_axes

    config = _shipped("text_encoder")
    text, vision = dict(config.pop("text_config")), dict(config.pop("vision_config"))
    config.pop("architectures", None)
    config.pop("model_type", None)
    prefix = "model.language_model."
    vocab, width = (int(n) for n in state[prefix + "embed_tokens.weight"].shape)
    heads = _heads(width, TEXT_HEAD)
    head_dim = width // heads
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(prefix + "layers."))
    text.update(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, max_window_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=int(state[prefix + "layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
                intermediate_size=int(state[prefix + "layers.0.mlp.gate_proj.weight"].shape[0]),
                rope_scaling={"type": "mrope", "mrope_section": rope_axes(head_dim // 2)})  # fmt: skip
    for special in ("bos_token_id", "eos_token_id"):  # a cut vocabulary has not Qwen's ids
        if text.get(special) is not None and text[special] >= vocab:
            text[special] = None
    if config["image_token_id"] >= vocab:  # a cut vocabulary keeps the vision tokens last
        config.update(image_token_id=vocab - 3, video_token_id=vocab - 2, vision_start_token_id=vocab - 1)
    if "model.visual.patch_embed.proj.weight" in state:
        patch = state["model.visual.patch_embed.proj.weight"].shape  # (width, 3, temporal, patch, patch)
        hidden = int(patch[0])
        depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("model.visual.blocks."))
        merged = int(state["model.visual.merger.mlp.0.weight"].shape[1])
        vision.update(hidden_size=hidden, depth=depth, num_heads=_heads(hidden, VISION_HEAD),
                      intermediate_size=int(state["model.visual.blocks.0.mlp.gate_proj.weight"].shape[0]),
                      out_hidden_size=int(state["model.visual.merger.mlp.2.weight"].shape[0]),
                      patch_size=int(patch[-1]), temporal_patch_size=int(patch[2]),
                      spatial_merge_size=round((merged // hidden) ** 0.5),
                      fullatt_block_indexes=[i for i in range(depth) if (i + 1) % 8 == 0] or [depth - 1])  # fmt: skip
    else:  # no tower in the file: a one-block stand-in that refuses pictures (see text_encoder_from_comfy)
        vision.update(depth=1, fullatt_block_indexes=[0], hidden_size=16, intermediate_size=16, num_heads=2,
                      out_hidden_size=width)  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **config)


def to_transformers(state: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's (pre-4.52 transformers) names -> today's ``Qwen2_5_VLForConditionalGeneration``."""
    out: dict[str, Any] = {}
    for key, tensor in strip_component_prefix(state).items():
        for pattern, replacement in _TE_RENAMES:
            key = pattern.sub(replacement, key, count=1)
        out[key] = tensor
    return out


def _no_vision_tower(dtype: Any) -> Any:
    """What stands where the vision tower goes when the file has none: text prompts never call
    it, and a picture gets a clear error instead of random weights."""
    import torch

    class NoVisionTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dtype = dtype  # read by Qwen2_5_VLModel before it calls the tower

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, "this Qwen2.5-VL text encoder file has no vision "
                              "tower (visual.* tensors), which reading a picture needs: use ComfyUI's full "
                              "qwen_2.5_vl_7b.safetensors")  # fmt: skip

    return NoVisionTower()


def text_encoder_from_comfy(state: dict[str, Any], *, dtype: Any) -> Any:
    """``Qwen2_5_VLForConditionalGeneration`` from ``qwen_2.5_vl_7b[_fp8_scaled].safetensors``.

    ``lm_head`` is absent from ComfyUI's file: it is tied to the input embeddings so the module
    is whole (nothing here reads logits). A file without the vision tower loads for text: a
    one-block stand-in fills the module and is then swapped for one that refuses a picture clearly.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from engine.arch.flux.loading import _empty, _fill
    from engine.arch.zimage.loading import _MARKERS, _SCALE_SUFFIXES, dequantise

    state = dict(state)
    if any(k.endswith(_SCALE_SUFFIXES) or k in _MARKERS for k in state):
        state = dequantise(state, dtype)
    state = to_transformers(state)
    if "model.language_model.embed_tokens.weight" not in state or not any(".layers.0.self_attn.k_proj." in k for k in state):
        raise EngineError(ErrorCode.ARCH_MISMATCH, "this is not a Qwen2.5-VL text encoder (no model.embed_tokens / "
                          "model.layers.0.self_attn tensors): Qwen-Image reads qwen_2.5_vl_7b.safetensors")  # fmt: skip
    config = text_encoder_config(state)
    has_vision = "model.visual.patch_embed.proj.weight" in state
    model = _empty(lambda: Qwen2_5_VLForConditionalGeneration(config))
    tie = "lm_head.weight" not in state
    state.setdefault("lm_head.weight", state["model.language_model.embed_tokens.weight"])
    if not has_vision:
        tower = model.model.visual
        for name, tensor in tower.state_dict().items():
            state[f"model.visual.{name}"] = torch.zeros(tensor.shape, dtype=dtype)
    _fill(model, state, dtype, "Qwen2.5-VL text encoder",
          "Qwen-Image reads ComfyUI's qwen_2.5_vl_7b.safetensors (or its _fp8_scaled copy) as published")  # fmt: skip
    if not has_vision:
        model.model.visual = _no_vision_tower(dtype)
    if tie:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight  # one tensor, not a copy
    return model


# --- a component as a folder or a single file ------------------------------------------------


def identity(path: Path) -> Path:
    """The file whose size and time name a component for the shared-component cache."""
    return path / "config.json" if path.is_dir() else path


def load_vae(path: Path, *, dtype: Any) -> Any:
    """The repository's ``vae/`` folder, or ComfyUI's ``qwen_image_vae.safetensors``."""
    from engine.arch.qwen_image.loading import read, vae_from_folder

    if path.is_dir():
        return vae_from_folder(path, dtype=dtype)
    return _named(path, lambda: vae_from_comfy(read(path), dtype=dtype).eval())


def load_text_encoder(path: Path, *, dtype: Any) -> Any:
    """The repository's ``text_encoder/`` folder, or ComfyUI's ``qwen_2.5_vl_7b*.safetensors``."""
    from engine.arch.qwen_image.loading import read, text_encoder_from_folder

    if path.is_dir():
        return text_encoder_from_folder(path, dtype=dtype)
    return _named(path, lambda: text_encoder_from_comfy(read(path), dtype=dtype).eval())

