"""Tiny Qwen-Image models in the layouts people download, with seeded random weights, offline.

The real classes (diffusers ``QwenImageTransformer2DModel`` and ``AutoencoderKLQwenImage``,
transformers ``Qwen2_5_VLForConditionalGeneration`` with a one-block vision tower) at a tiny
width, and the tiny byte-level Qwen tokenizer of :mod:`sandbox.zimage_builder`. Saved as a
diffusers folder, and as the published single-file transformer (``qwen_image_bf16.safetensors``:
diffusers' module names; bf16 or fp8 e4m3fn) beside a ``qwen-image-components/`` holding the
repository's ``vae/``, ``text_encoder/`` and ``tokenizer/`` folders.

Qwen-Image-Edit and -2509 (:func:`build_qwen_image_edit`) have the same components plus the
repository's ``processor/`` (Qwen2.5-VL's image processor config and its tokenizer, with the
vision tokens the text encoder's config names), and a ``model_index.json`` naming their pipeline.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.component_configs import CONFIG_ROOT
from sandbox.model_builder import _save, _seeded
from sandbox.zimage_builder import SPECIAL, _store, write_tokenizer

StoreDtype = Literal["bf16", "fp8", "fp8_scaled"]
EditPipeline = Literal["QwenImageEditPipeline", "QwenImageEditPlusPipeline"]
TEXT_WIDTH = 32
#: Qwen2.5-VL's vision tokens, after Qwen's own special tokens (the ids the text config names).
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
#: The tiny processor's pixel bounds (the real one's are 56x56 to 3584x3584): a condition image
#: becomes at most 16 patches of 28x28 for the one-block vision tower.
PROCESSOR_PIXELS = (56 * 56, 112 * 112)


def _read(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "qwen_image" / component / name).read_text(encoding="utf-8"))


def text_encoder_config() -> Any:
    from transformers import Qwen2_5_VLConfig

    vocab = 256 + len(SPECIAL)
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=TEXT_WIDTH, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, rms_norm_eps=1e-6,
                         num_key_value_heads=1, vocab_size=vocab + len(VISION_TOKENS), max_position_embeddings=2048, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=None,
                         eos_token_id=258),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=TEXT_WIDTH,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=vocab, video_token_id=vocab + 1, vision_start_token_id=vocab + 2,
    )  # fmt: skip


def build_components(seed: int = 0, *, heads: int = 2, head_dim: int = 16, layers: int = 2,
                     wan_vae: bool = False) -> dict[str, Any]:  # fmt: skip
    """``wan_vae``: the VAE in the real structure (:func:`build_wan_vae`), as ComfyUI's file needs."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLForConditionalGeneration

    from engine.arch.qwen_image.loading import rope_axes

    config = _read("transformer")
    config.update(num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
                  joint_attention_dim=TEXT_WIDTH, axes_dims_rope=rope_axes(head_dim))  # fmt: skip
    _seeded(seed * 100 + 31)
    transformer = QwenImageTransformer2DModel.from_config(config)
    _seeded(seed * 100 + 32)
    vae = build_wan_vae(seed) if wan_vae else AutoencoderKLQwenImage(
        base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True])  # fmt: skip
    _seeded(seed * 100 + 33)
    text = Qwen2_5_VLForConditionalGeneration(text_encoder_config())
    generator = torch.Generator().manual_seed(seed * 100 + 39)
    with torch.no_grad():  # louder outputs than a fresh network's, so a LoRA's change shows
        for name, param in transformer.named_parameters():
            if name.startswith(("proj_out", "norm_out")) and param.ndim >= 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    parts = {"transformer": transformer, "vae": vae, "text_encoder": text,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(_read("scheduler", "scheduler_config.json"))}  # fmt: skip
    for module in parts.values():
        if hasattr(module, "eval"):
            module.eval()
    return parts


@dataclass(frozen=True)
class QwenImageBuild:
    folder: Path
    transformer: Path
    components: Path  # qwen-image-components/ with vae/, text_encoder/, tokenizer/


def build_qwen_image(out: Path, *, seed: int = 0, dtype: StoreDtype = "bf16", wan_vae: bool = False,
                     **shape: int) -> QwenImageBuild:  # fmt: skip
    parts = build_components(seed, wan_vae=wan_vae, **shape)
    folder = out / "qwen-image-diffusers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text((CONFIG_ROOT / "qwen_image" / "model_index.json").read_text())
    for name, module in parts.items():
        module.save_pretrained(str(folder / name), **({} if name == "scheduler" else {"safe_serialization": True}))
    write_tokenizer(folder / "tokenizer", VISION_TOKENS)
    components = out / "qwen-image-components"
    for name in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(folder / name, components / name, dirs_exist_ok=True)
    suffix = {"bf16": "bf16", "fp8": "fp8_e4m3fn", "fp8_scaled": "fp8_scaled"}[dtype]
    transformer = out / f"qwen_image_{suffix}.safetensors"
    _save(_store({k: v.detach() for k, v in parts["transformer"].state_dict().items()}, dtype), transformer, {})
    return QwenImageBuild(folder=folder, transformer=transformer, components=components)


def write_processor(folder: Path) -> Path:
    """The repository's ``processor/``: Qwen2-VL's image processor config and the tokenizer."""
    from transformers import Qwen2VLImageProcessorPil

    write_tokenizer(folder, VISION_TOKENS)
    low, high = PROCESSOR_PIXELS
    Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, patch_size=14, merge_size=2,
                             temporal_patch_size=2).save_pretrained(str(folder))  # fmt: skip
    return folder


def build_qwen_image_edit(out: Path, *, pipeline: EditPipeline = "QwenImageEditPipeline", seed: int = 0,
                          dtype: StoreDtype = "bf16", **shape: int) -> QwenImageBuild:  # fmt: skip
    """Qwen-Image-Edit (or -2509 with ``QwenImageEditPlusPipeline``): a diffusers folder naming its
    pipeline, with ``processor/``; the single-file transformer beside the components folder, which
    gets the processor too."""
    build = build_qwen_image(out, seed=seed, dtype=dtype, **shape)
    index = json.loads((build.folder / "model_index.json").read_text())
    index["_class_name"] = pipeline
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    folder = build.folder.with_name("qwen-image-edit-diffusers")
    build.folder.rename(folder)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    write_processor(folder / "processor")
    write_processor(build.components / "processor")
    suffix = build.transformer.name.removeprefix("qwen_image_")
    transformer = build.transformer.with_name(f"qwen_image_edit_{suffix}")
    build.transformer.rename(transformer)
    return QwenImageBuild(folder=folder, transformer=transformer, components=build.components)


def write_musubi_lora(transformer: Path, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                      trained_on: str = "Qwen-Image") -> Path:  # fmt: skip
    """A musubi-tuner Qwen-Image LoRA (kohya names over diffusers' modules) on every 2-D weight
    of the blocks, bf16. ``trained_on``: the model musubi-tuner's model spec names
    (``modelspec.architecture`` "<model>/lora": "Qwen-Image", "Qwen-Image-Edit",
    "Qwen-Image-Edit-Plus" for -2509, "Qwen-Image-Edit-2511")."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(transformer), framework="pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for key, shape in sorted(shapes.items()):
        if not key.startswith("transformer_blocks.") or not key.endswith(".weight") or len(shape) != 2:
            continue
        name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        state[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=generator) * 0.1
        state[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=generator) * 0.1
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path),
              {"ss_network_module": "networks.lora_qwen_image", "ss_base_model_version": "qwen_image",
               "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{trained_on}/lora",
               "modelspec.implementation": "https://github.com/QwenLM/Qwen-Image"})  # fmt: skip
    return path


# --- ComfyUI's single files (Comfy-Org/Qwen-Image_ComfyUI, split_files/) ------------------------

#: diffusers' residual-block names -> Wan 2.1's (``residual`` is an nn.Sequential there).
_WAN_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
                 "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
                 "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}  # fmt: skip


def build_wan_vae(seed: int = 0) -> Any:
    """A tiny ``AutoencoderKLQwenImage`` with the real structure (four levels of two residual
    blocks, Wan's channel proportions), at 1/12 of the width: ComfyUI's file is the real one."""
    from diffusers import AutoencoderKLQwenImage

    _seeded(seed * 100 + 34)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                  temperal_downsample=[False, True, True]).eval()  # fmt: skip


def wan_vae_state(vae: Any) -> dict[str, Any]:
    """``qwen_image_vae.safetensors``' names (Wan 2.1's VAE) for a diffusers VAE's tensors,
    written from Wan's module tree (encoder.downsamples / decoder.upsamples as flat lists, the
    quant convs as conv1 / conv2), not by running the loader's converter backwards."""
    import re

    out: dict[str, Any] = {}
    for key, tensor in vae.state_dict().items():
        new = key
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.conv_in.", f"{side}.conv1.").replace(f"{side}.norm_out.", f"{side}.head.0.")
            new = new.replace(f"{side}.conv_out.", f"{side}.head.2.").replace(f"{side}.mid_block.attentions.0.", f"{side}.middle.1.")
            new = re.sub(rf"^{side}\.mid_block\.resnets\.(\d)\.", lambda m, s=side: f"{s}.middle.{2 * int(m[1])}.", new)
        new = re.sub(r"^quant_conv\.", "conv1.", re.sub(r"^post_quant_conv\.", "conv2.", new))
        new = new.replace("encoder.down_blocks.", "encoder.downsamples.")
        new = re.sub(r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.", lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"decoder.upsamples.{4 * int(m[1]) + 3}.", new)
        for ours, wans in _WAN_RESIDUAL.items():
            if new.endswith("." + ours) and (".downsamples." in new or ".upsamples." in new or ".middle." in new):
                new = new.removesuffix(ours) + wans
                break
        out[new] = tensor.detach()
    return out


def comfy_text_encoder_state(text: Any, *, vision: bool = True) -> dict[str, Any]:
    """``qwen_2.5_vl_7b.safetensors``' names: transformers' layout before 4.52 (``model.layers``,
    ``visual.blocks``), without ``lm_head``; ``vision=False``: without the tower too."""
    out: dict[str, Any] = {}
    for key, tensor in text.state_dict().items():
        if key.startswith("model.language_model."):
            out["model." + key.removeprefix("model.language_model.")] = tensor.detach()
        elif key.startswith("model.visual.") and vision:
            out[key.removeprefix("model.")] = tensor.detach()
    return out


def write_comfy_components(folder: Path, parts: dict[str, Any], *, text_dtype: StoreDtype = "bf16",
                           vision: bool = True) -> tuple[Path, Path]:  # fmt: skip
    """ComfyUI's ``qwen_image_vae.safetensors`` (bf16) and ``qwen_2.5_vl_7b[_fp8_scaled].safetensors``
    in ``folder``, from built components (``parts["vae"]`` must have Wan's real structure)."""
    import torch

    vae = folder / "qwen_image_vae.safetensors"
    _save({k: v.to(torch.bfloat16).contiguous() for k, v in wan_vae_state(parts["vae"]).items()}, vae, {})
    suffix = {"bf16": "", "fp8": "_fp8_e4m3fn", "fp8_scaled": "_fp8_scaled"}[text_dtype]
    text = folder / f"qwen_2.5_vl_7b{suffix}.safetensors"
    _save(_store(comfy_text_encoder_state(parts["text_encoder"], vision=vision), text_dtype), text, {})
    return vae, text
