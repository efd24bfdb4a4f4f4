"""Where a file's denoiser modules are and how wide they are, read from key names and shapes.

Kept apart from :mod:`engine.arch.recognition` (which asks the registry of architectures)
so that an architecture module can read its own files' widths without importing the
registry that imports it.
"""

from __future__ import annotations

import re

from engine.arch.base import Tensors

# Diffusion transformers (DiT: FLUX, SD 3, Qwen-Image, ...) have their blocks at the top of the
# denoiser; a UNet's transformer_blocks only ever sit inside its down/mid/up blocks. Reading the
# module path under the prefixes tools add tells the two apart whatever the key layout (kohya
# "lora_unet_transformer_blocks_1_attn_to_q" is a FLUX LoRA, not an SDXL one).
_DENOISER_PREFIXES = (
    "lora_unet_", "lora_transformer_", "lycoris_", "base_model.model.", "model.diffusion_model.",
    "diffusion_model.", "transformer.", "unet.",
)  # fmt: skip
_DIT_TOP = re.compile(
    r"^(double_blocks|single_blocks|single_transformer_blocks|transformer_blocks|joint_blocks|"
    r"x_embedder|context_embedder|img_in|txt_in|time_in|vector_in|guidance_in|pos_embed|"
    r"time_text_embed|double_stream_modulation_img|single_stream_modulation|distilled_guidance_layer|"
    r"double_layers|single_layers|double_stream_blocks|single_stream_blocks|noise_refiner|context_refiner|"
    r"(layers|blocks)[._]\d+)[._]"
)


def denoiser_path(key: str) -> str:
    """The module path under the prefixes kohya, PEFT, diffusers and ComfyUI put before it."""
    for _ in range(3):  # "base_model.model.transformer.", at most three deep
        for prefix in _DENOISER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            break
    return key


_UP_KEY = re.compile(r"[._](lora_up|lora_B|lora\.up|up)\.weight$")
_DOWN_END = re.compile(r"[._](lora_down|lora_A|lora\.down|down)\.weight$")


def module_features(
    tensors: Tensors, paths: dict[str, str]
) -> dict[str, tuple[int | None, int | None]]:
    """Flattened denoiser module -> (out, in) features, from a weight's shape or a LoRA's up
    rows and down columns (None where the file does not show it)."""
    found: dict[str, tuple[int | None, int | None]] = {}
    for key, path in paths.items():
        shape = tensors[key].get("shape") or ()
        if len(shape) != 2:
            continue
        up, down = _UP_KEY.search(path), _DOWN_END.search(path)
        if up is not None or down is not None:
            module = path[: (up or down).start()].replace(".", "_")  # type: ignore[union-attr]
            out, inner = found.get(module, (None, None))
            found[module] = (int(shape[0]), inner) if up is not None else (out, int(shape[1]))
        elif path.endswith(".weight"):
            found[path.removesuffix(".weight").replace(".", "_")] = (int(shape[0]), int(shape[1]))
    return found
