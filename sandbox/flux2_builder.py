"""Tiny FLUX.2 Klein models in the layouts people download, with seeded random weights, offline.

The real classes (diffusers ``Flux2Transformer2DModel`` and ``AutoencoderKLFlux2``, transformers
``Qwen3ForCausalLM``) at a tiny width with the tiny byte-level Qwen tokenizer of
:mod:`sandbox.zimage_builder`. Saved as a diffusers folder (``Flux2KleinPipeline``), and as BFL's
single-file transformer (``flux-2-klein-4b.safetensors`` names: ``double_blocks.N.img_attn.qkv``,
``single_blocks.N.linear1``, ``double_stream_modulation_img.lin``) beside ``flux2-components/``
with the repository's ``vae/`` folder, the Qwen3 text encoder as ComfyUI ships it and the
tokenizer folder. ``text_width`` picks the size's text encoder (tiny "4B" 32, tiny "9B" 48).
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

StoreDtype = Literal["bf16", "fp8"]


def build_components(seed: int = 0, *, heads: int = 2, head_dim: int = 16, text_width: int = 32) -> dict[str, Any]:
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = json.loads((CONFIG_ROOT / "flux2_klein" / "transformer" / "config.json").read_text())
    config.update(num_layers=1, num_single_layers=1, attention_head_dim=head_dim, num_attention_heads=heads,
                  joint_attention_dim=3 * text_width, axes_dims_rope=[head_dim // 4] * 4)  # fmt: skip
    _seeded(seed * 100 + 41)
    transformer = Flux2Transformer2DModel.from_config(config)
    _seeded(seed * 100 + 42)
    vae = AutoencoderKLFlux2(block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=32)
    _seeded(seed * 100 + 43)
    text = Qwen3ForCausalLM(Qwen3Config(hidden_size=text_width, intermediate_size=48, num_hidden_layers=4,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                        vocab_size=256 + len(SPECIAL), max_window_layers=4, tie_word_embeddings=True,
                                        bos_token_id=None, eos_token_id=258))  # fmt: skip
    generator = torch.Generator().manual_seed(seed * 100 + 49)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if name.startswith(("proj_out", "norm_out")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        json.loads((CONFIG_ROOT / "flux2_klein" / "scheduler" / "scheduler_config.json").read_text()))  # fmt: skip
    parts = {"transformer": transformer, "vae": vae, "text_encoder": text, "scheduler": scheduler}
    for module in parts.values():
        if hasattr(module, "eval"):
            module.eval()
    return parts


@dataclass(frozen=True)
class Flux2Build:
    folder: Path
    transformer: Path
    components: Path


def build_klein(out: Path, *, seed: int = 0, dtype: StoreDtype = "bf16", size: str = "4b", **shape: int) -> Flux2Build:
    """One tiny Klein in every layout; ``size`` "4b" or "9b" only changes names and text width."""
    # A tiny "9B" is wider than a tiny "4B", as 4096 is than 3072, and reads a wider Qwen3.
    shape.setdefault("text_width", 32 if size == "4b" else 48)
    shape.setdefault("heads", 2 if size == "4b" else 3)
    parts = build_components(seed, **shape)
    folder = out / f"flux2-klein-{size}-diffusers"
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "Flux2KleinPipeline", "_diffusers_version": "0.42.1", "is_distilled": True,
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "Qwen3ForCausalLM"],
             "tokenizer": ["transformers", "Qwen2TokenizerFast"], "transformer": ["diffusers", "Flux2Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKLFlux2"]}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    for name, module in parts.items():
        module.save_pretrained(str(folder / name), **({} if name == "scheduler" else {"safe_serialization": True}))
    write_tokenizer(folder / "tokenizer")
    components = out / "flux2-components"
    shutil.copytree(folder / "vae", components / "vae", dirs_exist_ok=True)
    shutil.copytree(folder / "tokenizer", components / "tokenizer", dirs_exist_ok=True)
    text = {k: v.detach() for k, v in parts["text_encoder"].state_dict().items() if k != "lm_head.weight"}
    _save(_store(text, "bf16"), components / f"qwen_3_{'4b' if size == '4b' else '8b'}.safetensors", {})
    from engine.arch.flux2.convert import to_bfl

    transformer = out / f"flux-2-klein-{size}{'' if dtype == 'bf16' else '-fp8'}.safetensors"
    _save(_store(to_bfl({k: v.detach() for k, v in parts["transformer"].state_dict().items()}), dtype), transformer, {})
    return Flux2Build(folder=folder, transformer=transformer, components=components)


def write_kohya_lora(transformer: Path, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> Path:
    """A kohya/musubi FLUX.2 LoRA in BFL names on every 2-D weight of ``transformer``'s blocks."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(transformer), framework="pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for key, shape in sorted(shapes.items()):
        if key.endswith(".weight") and len(shape) == 2:
            name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            state[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=generator) * 0.1
            state[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=generator) * 0.1
            state[f"{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path),
              {"ss_network_module": "networks.lora_flux_2", "ss_base_model_version": "flux2"})  # fmt: skip
    return path


def bfl_vae_state(vae: Any) -> dict[str, Any]:
    """``flux2-vae.safetensors``' names (BFL's LDM layout) for an ``AutoencoderKLFlux2``'s tensors,
    written from BFL's module tree, not by running the loader's converter backwards: up blocks
    numbered from the bottom, ``block_N`` mid blocks, 1x1-conv attention, the quant convs inside
    the encoder and decoder, the batch norm's running statistics (no counter)."""
    import re

    levels = len(vae.config.block_out_channels)
    out: dict[str, Any] = {}
    for key, tensor in vae.state_dict().items():
        if key == "bn.num_batches_tracked":
            continue
        new = re.sub(r"^quant_conv\.", "encoder.quant_conv.", key)
        new = re.sub(r"^post_quant_conv\.", "decoder.post_quant_conv.", new)
        new = new.replace(".conv_norm_out.", ".norm_out.").replace(".conv_shortcut.", ".nin_shortcut.")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        attention = ".mid_block.attentions.0." in new
        for ours, bfls in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            new = new.replace(f".mid_block.attentions.0.{ours}.", f".mid.attn_1.{bfls}.")
        value = tensor.detach()
        if attention and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # BFL's attention projections are 1x1 convolutions
        out[new] = value.contiguous()
    return out


def write_bfl_vae(vae: Any, path: Path) -> Path:
    """BFL's ``flux2-vae.safetensors`` (float32, as Comfy-Org's split_files/vae copy is)."""
    import torch

    _save({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in bfl_vae_state(vae).items()}, path, {})
    return path
