"""Z-Image transformer weights between the official/ComfyUI layout and diffusers', any width.

The files people download (``z_image_turbo_bf16.safetensors``, the authors' own checkpoint
names, ComfyUI's ``diffusion_models/``) fuse q, k, v into ``attention.qkv`` and call the output
``attention.out``, the qk norms ``q_norm``/``k_norm``, the patch embedder ``x_embedder`` and the
last layer ``final_layer``; diffusers' ``ZImageTransformer2DModel`` splits the fused layer and
keys its embedder and last layer by patch size (``all_x_embedder.2-1``). diffusers' own
converter (``convert_z_image_transformer_checkpoint_to_diffusers``) does the same; this module
is torch-light (the split is a ``chunk``) and has the inverse, which the sandbox writes files with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: The patch key diffusers uses for Z-Image's one patch size (2x2, 1 frame).
PATCH = "2-1"
#: Original name -> diffusers name, for the layers renamed one to one (prefix or infix).
_TOP = {"x_embedder.": f"all_x_embedder.{PATCH}.", "final_layer.": f"all_final_layer.{PATCH}."}
_IN_BLOCK = {".attention.out.": ".attention.to_out.0.", ".attention.q_norm.": ".attention.norm_q.",
             ".attention.k_norm.": ".attention.norm_k."}  # fmt: skip
#: Prefixes a full file may put before the transformer's keys.
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_QKV = re.compile(r"^(.+)\.attention\.qkv\.(weight|bias)$")


def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # fmt: skip
    return dict(state)


def is_original(keys: Any) -> bool:
    """True for the official layout (a fused ``attention.qkv`` or the bare ``x_embedder``)."""
    return any(k.endswith(".attention.qkv.weight") or k.startswith("x_embedder.") for k in keys)


def module_to_diffusers(name: str) -> str:
    """An original module path (``layers.0.attention.out``) -> diffusers' (``...to_out.0``);
    a fused ``qkv`` stays as it is (it is three diffusers layers)."""
    dotted = name + "."
    for old, new in _TOP.items():
        if dotted.startswith(old):
            dotted = new + dotted[len(old):]
    for old, new in _IN_BLOCK.items():
        dotted = dotted.replace(old, new)
    return dotted[:-1]


def to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official/ComfyUI names -> diffusers' (``norm_final`` has no diffusers counterpart: its
    LayerNorm has no weights there and the tensor is dropped, as diffusers' converter does)."""
    out: dict[str, Any] = {}
    for key, tensor in strip_prefix(state).items():
        if key.startswith("norm_final."):
            continue
        fused = _QKV.match(key)
        if fused is not None:
            q, k, v = tensor.chunk(3, dim=0)
            for proj, part in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"{fused[1]}.attention.{proj}.{fused[2]}"] = part
            continue
        module, _, param = key.rpartition(".")
        out[module_to_diffusers(module) + "." + param if module else key] = tensor
    return out


def to_original(state: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' names -> the official layout (q, k, v fused in that order): the inverse of
    :func:`to_diffusers`."""
    import torch

    out: dict[str, Any] = {}
    back_top = {v: k for k, v in _TOP.items()}
    back_block = {v: k for k, v in _IN_BLOCK.items()}
    for key, tensor in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            base, param = key.split(".attention.to_q.")
            parts = [state[f"{base}.attention.{p}.{param}"] for p in ("to_q", "to_k", "to_v")]
            out[f"{base}.attention.qkv.{param}"] = torch.cat(parts, dim=0)
            continue
        dotted = key
        for new, old in back_top.items():
            if dotted.startswith(new):
                dotted = old + dotted[len(new):]
        for new, old in back_block.items():
            dotted = dotted.replace(new, old)
        out[dotted] = tensor
    return out


def transformer_config(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, Any]) -> dict[str, Any]:
    """``ZImageTransformer2DModel``'s config from diffusers-named shapes, as ComfyUI reads it:
    width from the patch embedder, head size from the qk norm, depth from the layer indices,
    the text width from the caption embedder. ``base`` is the shipped real config."""
    config = dict(base)
    embed = shapes[f"all_x_embedder.{PATCH}.weight"]
    width = int(embed[0])
    head_dim = int(shapes["layers.0.attention.norm_q.weight"][0])

    def depth(prefix: str) -> int:
        found = {int(k.split(".")[1]) for k in shapes if k.startswith(prefix + ".")}
        return 1 + max(found) if found else 0

    config.update(
        dim=width,
        n_heads=width // head_dim,
        n_kv_heads=int(shapes["layers.0.attention.to_k.weight"][0]) // head_dim,
        n_layers=depth("layers"),
        n_refiner_layers=depth("noise_refiner"),
        in_channels=int(embed[1]) // 4,  # 2x2 patches of the latent, one frame
        cap_feat_dim=int(shapes["cap_embedder.1.weight"][1]),
    )
    if head_dim != sum(base["axes_dims"]):  # a cut model: RoPE axes in the real proportions
        quarter = head_dim // 4
        config["axes_dims"] = [quarter, (head_dim - quarter) // 2, head_dim - quarter - (head_dim - quarter) // 2]
    return config
