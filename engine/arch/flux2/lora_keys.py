"""FLUX.2 LoRA files in every layout their trainers write, mapped onto diffusers' modules.

BFL names (kohya/musubi ``lora_unet_double_blocks_0_img_attn_qkv``, ComfyUI
``diffusion_model.double_blocks.0.img_attn.qkv``): the fused double-block ``qkv`` delta gives
diffusers' ``to_q``/``to_k``/``to_v`` their thirds of its rows, the single blocks' ``linear1`` is
diffusers' fused ``to_qkv_mlp_proj`` as it is, and the last layer's modulation swaps its halves.
diffusers names (``transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj``, ai-toolkit,
PEFT) map one to one; LyCORIS LoKr (``lycoris_transformer_blocks_0_attn_to_q``) too. A LoRA for
another size (Klein 4B is 3072 wide, 9B 4096) never fits: ``arch_mismatch`` naming both widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.arch.dit_lora import (
    TEXT_ENCODER,
    TRANSFORMER,
    bind_dit_lora,
    linear_table,
    read_dit_lora,
)
from engine.arch.flux.lora_keys import flatten
from engine.arch.flux2.convert import DOUBLE, SINGLE, SWAPPED, TOP
from engine.arch.runtime import LoraTarget
from engine.loras.reader import BoundLora, LoraFile

LABEL = "FLUX.2"


def read_flux2_lora(path: Path, *, label: str, sha256: str) -> LoraFile:
    return read_dit_lora(path, label=label, sha256=sha256, arch_label=LABEL)


def table(pipe: Any) -> dict[tuple[str, str], list[LoraTarget]]:
    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    config = transformer.config
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    modules = dict(transformer.named_modules())
    found = {(TRANSFORMER, flat): t for flat, t in linear_table(transformer, TRANSFORMER).items()}
    for bfl, diffusers in TOP.items():
        if diffusers in modules:
            found[(TRANSFORMER, flatten(bfl))] = [LoraTarget(TRANSFORMER, diffusers, swap_halves=bfl in SWAPPED)]
    for index in range(int(config.num_layers)):
        for bfl, targets in DOUBLE.items():
            names = [f"transformer_blocks.{index}.{t}" for t in targets]
            if len(names) == 3:
                found[(TRANSFORMER, flatten(f"double_blocks.{index}.{bfl}"))] = [
                    LoraTarget(TRANSFORMER, n, (i * width, (i + 1) * width)) for i, n in enumerate(names)]  # fmt: skip
            else:
                found[(TRANSFORMER, flatten(f"double_blocks.{index}.{bfl}"))] = [LoraTarget(TRANSFORMER, names[0])]
    for index in range(int(config.num_single_layers)):
        for bfl, targets in SINGLE.items():
            found[(TRANSFORMER, flatten(f"single_blocks.{index}.{bfl}"))] = [
                LoraTarget(TRANSFORMER, f"single_transformer_blocks.{index}.{targets[0]}")]  # fmt: skip
    text = getattr(pipe, "text_encoder", None)
    if text is not None:
        found.update({(TEXT_ENCODER, flat): t for flat, t in linear_table(text, TEXT_ENCODER).items()})
    return found


def bind_flux2_lora(lora: LoraFile, pipe: Any, *, model_name: str) -> BoundLora:
    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    models = {TRANSFORMER: transformer}
    if getattr(pipe, "text_encoder", None) is not None:
        models[TEXT_ENCODER] = pipe.text_encoder
    width = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
    return bind_dit_lora(lora, models, table(pipe), model_name=model_name, arch_label=LABEL, width=width)
