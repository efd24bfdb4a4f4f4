"""Z-Image LoRA files in every layout their trainers write, mapped onto diffusers' modules.

- kohya sd-scripts / musubi-tuner: ``lora_unet_layers_0_attention_qkv`` (the original layout,
  fused q/k/v) or ``lora_unet_layers_0_attention_to_q`` (diffusers names), ``.lora_down`` /
  ``.lora_up`` / ``.alpha``;
- ComfyUI: ``diffusion_model.layers.0.attention.qkv.lora_down.weight``;
- ai-toolkit: ``diffusion_model.layers.0.attention.to_q.lora_A.weight`` (diffusers names);
- diffusers / PEFT: ``transformer.layers.0.attention.to_q.lora_A.weight``
  (``base_model.model.`` when saved by PEFT itself, ``lora_A.default.weight`` with its adapter);
- LyCORIS LoKr (``.lokr_w1`` / ``.lokr_w2`` or their ``_a``/``_b`` halves, ``.alpha``) under any
  of those prefixes, and LyCORIS' own ``lycoris_layers_0_attention_to_q``.

A fused ``qkv`` delta is the tool's ΔW of the fused weight: diffusers' ``to_q``/``to_k``/``to_v``
each take their rows of it (what the tool computes when it merges into the fused weight).
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
from engine.arch.runtime import LoraTarget
from engine.arch.zimage.convert import PATCH
from engine.loras.reader import BoundLora, LoraFile

LABEL = "Z-Image"
#: Original module name -> diffusers' (outside the per-block renames).
_TOP = {"x_embedder": f"all_x_embedder.{PATCH}", "final_layer.linear": f"all_final_layer.{PATCH}.linear",
        "final_layer.adaLN_modulation.1": f"all_final_layer.{PATCH}.adaLN_modulation.1"}  # fmt: skip


def read_zimage_lora(path: Path, *, label: str, sha256: str) -> LoraFile:
    return read_dit_lora(path, label=label, sha256=sha256, arch_label=LABEL)


def table(pipe: Any) -> dict[tuple[str, str], list[LoraTarget]]:
    """(component, flattened file layer) -> targets, for this model's depth and width."""
    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    found: dict[tuple[str, str], list[LoraTarget]] = {
        (TRANSFORMER, flat): targets for flat, targets in linear_table(transformer, TRANSFORMER).items()
    }
    modules = dict(transformer.named_modules())
    for original, diffusers in _TOP.items():
        if diffusers in modules:
            found[(TRANSFORMER, flatten(original))] = [LoraTarget(TRANSFORMER, diffusers)]
    for name in modules:
        if not name.endswith(".attention.to_q"):
            continue
        block = name.removesuffix(".attention.to_q")
        rows = [int(modules[f"{block}.attention.{p}"].weight.shape[0]) for p in ("to_q", "to_k", "to_v")]
        starts = [0, rows[0], rows[0] + rows[1]]
        found[(TRANSFORMER, flatten(f"{block}.attention.qkv"))] = [
            LoraTarget(TRANSFORMER, f"{block}.attention.{p}", (s, s + n))
            for p, s, n in zip(("to_q", "to_k", "to_v"), starts, rows, strict=True)
        ]
        found[(TRANSFORMER, flatten(f"{block}.attention.out"))] = [LoraTarget(TRANSFORMER, f"{block}.attention.to_out.0")]
    text = getattr(pipe, "text_encoder", None)
    if text is not None:
        found.update({(TEXT_ENCODER, flat): t for flat, t in linear_table(text, TEXT_ENCODER).items()})
    return found


def bind_zimage_lora(lora: LoraFile, pipe: Any, *, model_name: str) -> BoundLora:
    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    models = {TRANSFORMER: transformer}
    if getattr(pipe, "text_encoder", None) is not None:
        models[TEXT_ENCODER] = pipe.text_encoder
    return bind_dit_lora(lora, models, table(pipe), model_name=model_name, arch_label=LABEL,
                         width=int(transformer.config.dim))  # fmt: skip
