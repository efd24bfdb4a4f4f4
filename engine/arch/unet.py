"""What SD 1.5 and SDXL checkpoints (UNets) show in their tensors beyond their architecture.

Torch-free helpers the SD modules' ``checkpoint_variant`` rules use: a UNet whose input
convolution reads more than the 4 latent channels is an inpainting (9: image, mask, noise) or
InstructPix2Pix (8: image, noise) model, and SDXL's refiner reads OpenCLIP-G alone (1280 wide
context, not base's 2048). The engine's pipelines would fail loading either as text-to-image.
"""

from __future__ import annotations

import re

from engine.arch.base import Tensors

#: conv_in of a UNet checkpoint (ldm, diffusers single-file and pipeline-prefixed names).
_CONV_IN_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight", "unet.conv_in.weight")
_INPUT_CHANNEL_VARIANTS = {9: "inpainting", 8: "instruct-pix2pix"}
#: The SDXL refiner's UNet reads OpenCLIP-G alone (1280 wide), not SDXL base's 2048.
REFINER_CONTEXT = 1280
_DOWN_KEY = re.compile(r"(lora_down|lora_A|lora\.down|_lora\.down|lora_linear_layer\.down|hada_w1_b)")
_ATTN2_TO_K = re.compile(r"attn2[._]to_k")


def context_dim(tensors: Tensors) -> int | None:
    """Width of the text features the UNet's cross-attention reads (to_k's input width)."""
    for name, entry in tensors.items():
        if not _ATTN2_TO_K.search(name):
            continue
        shape = entry["shape"]
        if _DOWN_KEY.search(name) and len(shape) == 2:
            return int(shape[1])
        if name.endswith("to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def input_variant(tensors: Tensors) -> str | None:
    """"inpainting" or "instruct-pix2pix" from the UNet's input channels, else None."""
    for key in _CONV_IN_KEYS:
        shape = tensors.get(key, {}).get("shape")
        if shape and len(shape) == 4 and shape[1] in _INPUT_CHANNEL_VARIANTS:
            return _INPUT_CHANNEL_VARIANTS[shape[1]]
    return None


def sdxl_variant(tensors: Tensors) -> str | None:
    """SDXL's: its input variants, or "refiner" for the refiner's OpenCLIP-G-only context."""
    return input_variant(tensors) or ("refiner" if context_dim(tensors) == REFINER_CONTEXT else None)
