"""Qwen-Image LoRA files in the layouts their trainers write, onto diffusers' modules.

Qwen-Image's own module names are diffusers' (``transformer_blocks.0.attn.to_q``,
``img_mlp.net.0.proj``, ``img_mod.1``), so every layout maps one to one: musubi-tuner/kohya
``lora_unet_transformer_blocks_0_attn_to_q``, ComfyUI and ai-toolkit ``diffusion_model.``,
diffusers ``transformer.``, PEFT, and the Lightning LoRAs' bare ``transformer_blocks.0...``
(``lora_down``/``lora_up``/``alpha`` with no prefix); LoKr and LoHa as LyCORIS writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.arch.dit_lora import (
    DEFAULT_PREFIXES,
    TEXT_ENCODER,
    TRANSFORMER,
    bind_dit_lora,
    linear_table,
    read_dit_lora,
)
from engine.loras.reader import BoundLora, LoraFile

LABEL = "Qwen-Image"
#: The Lightning LoRAs name the transformer's modules with no tool prefix.
PREFIXES = (*DEFAULT_PREFIXES, ("transformer_blocks.", "bare", TRANSFORMER), ("img_in.", "bare", TRANSFORMER),
            ("txt_in.", "bare", TRANSFORMER), ("proj_out.", "bare", TRANSFORMER))  # fmt: skip


def read_qwen_lora(path: Path, *, label: str, sha256: str) -> LoraFile:
    return read_dit_lora(path, label=label, sha256=sha256, arch_label=LABEL, prefixes=PREFIXES)


def bind_qwen_lora(lora: LoraFile, pipe: Any, *, model_name: str) -> BoundLora:
    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    models = {TRANSFORMER: transformer}
    table = {(TRANSFORMER, flat): t for flat, t in linear_table(transformer, TRANSFORMER).items()}
    if getattr(pipe, "text_encoder", None) is not None:
        models[TEXT_ENCODER] = pipe.text_encoder
        table.update({(TEXT_ENCODER, flat): t for flat, t in linear_table(pipe.text_encoder, TEXT_ENCODER).items()})
    width = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
    return bind_dit_lora(lora, models, table, model_name=model_name, arch_label=LABEL, width=width)
