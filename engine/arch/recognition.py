"""Which architecture a file's keys belong to: the machinery, with each module's own rules.

The rules live in the architecture modules (``Architecture.dit`` for diffusion transformers,
``context_widths`` for UNets, ``metadata_hints``); this module only walks a header and asks
them, in the order that keeps every reading unambiguous:

1. a diffusion transformer (FLUX, SD 3, ...) is recognised before anything else and is never
   SD 1.5/SDXL: structure first (every module's own key layout, then the families named in
   :data:`engine.arch.NAMED_ONLY`), then widths for layouts several DiTs share;
2. a UNet: SDXL's second text encoder or micro-conditioning, else the cross-attention width
   each UNet architecture reads, else SDXL's transformer depth, else SD 1.5's key names;
3. metadata (``modelspec.architecture``, ``ss_base_model_version``) where keys could not tell.

Torch-free; moved here from :mod:`engine.inspect`, whose ``classify`` asks this module.
"""

from __future__ import annotations

import re
from typing import Any

from engine import arch as registry
from engine.arch.base import Tensors
from engine.arch.unet import context_dim

_DOWN_KEY = re.compile(r"(lora_down|lora_A|lora\.down|_lora\.down|lora_linear_layer\.down|hada_w1_b)")
_TE2_KEY = re.compile(
    r"(^lora_te2_|^text_encoder_2\.|conditioner\.embedders\.1\.|^te2\.|^text_encoders\.clip_g|^clip_g\.)"
)
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
#: Joint (MMDiT) attention: a second stream for the text tokens, as SD 3 and FLUX have.
_MMDIT = re.compile(r"(^context_embedder|[._](add_[qkv]_proj|ff_context|norm1_context)([._]|$))")
_DIT_Q = re.compile(r"[._]attn[._](to_q|add_q_proj)[._]")
#: Separate cross-attention to the text (PixArt, SANA): not FLUX's joint attention.
_CROSS_ATTN = re.compile(r"[._]attn2[._]")
_SDXL_UNET_KEY = re.compile(r"(add_embedding|label_emb)")
# transformer_blocks beyond the first one only exist where transformer_layers_per_block > 1.
_DEEP_TRANSFORMER = re.compile(r"transformer_blocks[._]([1-9]\d*)[._]")
# kohya's SGM-style UNet names (input_blocks_4_1_...) versus diffusers' (down_blocks_1_...).
_UNET_KEY = re.compile(
    r"(^lora_unet_|^unet\.|model\.diffusion_model\.|down_blocks|input_blocks|mid_block|middle_block)"
)
#: SD 2.x's OpenCLIP-H context: an architecture with no module (never run here).
_SD2_CONTEXT = 1024


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


def dit_family(tensors: Tensors) -> tuple[str, str | None] | None:
    """(architecture, name of a family without a module) of a diffusion-transformer file, or
    None for anything else (a UNet's, a text encoder's, a VAE's)."""
    # Imported here: engine.classify imports the protocol, which imports engine.arch.
    from engine.classify import is_network_key

    paths = {key: path for key in tensors if _DIT_TOP.match(path := denoiser_path(key))}
    if not paths:
        return None
    found = tuple(paths.values())
    dits = sorted((a for a in registry.ARCHITECTURES.values() if a.dit), key=lambda a: a.dit.priority if a.dit else 0)
    by_shape = [a for a in dits if a.dit is not None and a.dit.modules is not None]
    if by_shape:
        features = module_features(tensors, paths)
        for architecture in by_shape:
            assert architecture.dit is not None and architecture.dit.modules is not None
            if architecture.dit.modules(features):
                return architecture.name, None
    for pattern, name in registry.NAMED_ONLY:
        if any(pattern.match(p) for p in found):
            return registry.UNKNOWN, name
    for architecture in dits:
        assert architecture.dit is not None
        if architecture.dit.structure(found):
            return architecture.name, None
    width = None
    for key, path in paths.items():
        if not _DIT_Q.search(path):
            continue
        shape = tensors[key]["shape"]
        if len(shape) == 2 and (_DOWN_KEY.search(key) or key.endswith(".weight") and not is_network_key(key)):
            width = int(shape[1])
            break
    joint = any(_MMDIT.search(p) for p in found)
    cross = any(_CROSS_ATTN.search(p) for p in found)
    for architecture in dits:
        assert architecture.dit is not None
        if architecture.dit.shape(width, joint, cross, found):
            return architecture.name, None
    return registry.UNKNOWN, registry.UNKNOWN_DIT


_UP_KEY = re.compile(r"[._](lora_up|lora_B|lora\.up|up)\.weight$")
_DOWN_END = re.compile(r"[._](lora_down|lora_A|lora\.down|down)\.weight$")


def module_features(tensors: Tensors, paths: dict[str, str]) -> dict[str, tuple[int | None, int | None]]:
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


def unet_architecture(keys: list[str], tensors: Tensors) -> str:
    """SD 1.5, SDXL or unknown for a file that is not a DiT's."""
    sdxl = registry.ARCHITECTURES["sdxl"]
    sd15 = registry.ARCHITECTURES["sd15"]
    if any(_TE2_KEY.search(k) or _SDXL_UNET_KEY.search(k) for k in keys):
        return sdxl.name
    width = context_dim(tensors)
    for architecture in (sd15, sdxl):
        if width in architecture.context_widths:
            return architecture.name
    if width == _SD2_CONTEXT or any(k.startswith("cond_stage_model.model.") for k in keys):
        return registry.UNKNOWN  # SD 2.x: not an architecture the engine runs
    if any(_DEEP_TRANSFORMER.search(k) for k in keys if _UNET_KEY.search(k)):
        return sdxl.name
    if any(_UNET_KEY.search(k) for k in keys) or any(
        k.startswith(("lora_te_", "cond_stage_model.transformer.")) for k in keys
    ):
        return sd15.name
    return registry.UNKNOWN


def recognise(tensors: Tensors, metadata: dict[str, str], *, dit: Any = False) -> tuple[str, str | None]:
    """(architecture, family name without a module) from keys first, metadata last.

    ``dit`` may pass an already computed :func:`dit_family` result (False: compute it).
    """
    keys = list(tensors)
    found = dit_family(tensors) if dit is False else dit
    if found is not None:
        hinted = registry.from_metadata(metadata)
        hinted_arch = registry.get(hinted) if hinted else None
        if found == (registry.UNKNOWN, registry.UNKNOWN_DIT) and hinted_arch and hinted_arch.dit:
            return hinted, None  # a DiT its keys alone cannot place, whose metadata does
        return found
    architecture = unet_architecture(keys, tensors)
    if architecture == registry.UNKNOWN:
        architecture = registry.from_metadata(metadata) or registry.UNKNOWN
    return architecture, None
