"""FLUX.1 transformer weights between BFL's layout and diffusers', for any width and depth.

BFL's reference code (and every single file people download: ``flux1-dev.safetensors``, the
ComfyUI all-in-one files) fuses q, k, v into one ``qkv`` layer in the double blocks and q, k,
v and the MLP's input into one ``linear1`` in the single blocks; diffusers keeps them apart.
diffusers' own converter (``convert_flux_transformer_checkpoint_to_diffusers``) does the same
renaming but hard-codes width 3072, so pruned or tiny models fail in it: this module computes
the splits from the tensors. ``diffusers_to_bfl`` is its exact inverse (the sandbox writes
files with it; the tests check it against diffusers' converter at FLUX's real width).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: BFL module -> diffusers module, for layers outside the blocks (no split).
TOP_LEVEL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    # BFL's AdaLayerNorm yields (shift, scale), diffusers' (scale, shift): rows swap halves.
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
#: Modules whose rows are the two halves swapped between the layouts.
SWAPPED = frozenset({"final_layer.adaLN_modulation.1"})

#: Double-block BFL module -> diffusers modules (a fused layer names several, in row order).
DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
SINGLE_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}

_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")


def split_sizes(bfl_module: str, width: int, mlp_hidden: int) -> tuple[int, ...]:
    """Row counts of the diffusers layers a fused BFL layer holds, in order."""
    if bfl_module.endswith("qkv"):
        return (width, width, width)
    if bfl_module == "linear1":
        return (width, width, width, mlp_hidden)
    return ()


def diffusers_targets(bfl_module: str) -> tuple[str, ...] | None:
    """The diffusers module(s) of a BFL module path (``double_blocks.0.img_attn.qkv``), or None."""
    if bfl_module in TOP_LEVEL:
        return (TOP_LEVEL[bfl_module],)
    match = _BLOCK.match(bfl_module)
    if match is None:
        return None
    kind, index, rest = match.groups()
    table = DOUBLE if kind == "double_blocks" else SINGLE
    prefix = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
    names = table.get(rest)
    return tuple(f"{prefix}.{index}.{name}" for name in names) if names else None


def block_counts(keys: Any) -> tuple[int, int]:
    """(double blocks, single blocks) from BFL key names: one more than the highest index."""
    doubles = singles = 0
    for key in keys:
        match = _BLOCK.match(key)
        if match is None:
            continue
        if match[1] == "double_blocks":
            doubles = max(doubles, int(match[2]) + 1)
        else:
            singles = max(singles, int(match[2]) + 1)
    return doubles, singles


def transformer_config(shapes: Mapping[str, tuple[int, ...]], *, head_dim: int = 128) -> dict[str, Any]:
    """A ``FluxTransformer2DModel`` config read from BFL tensor names and shapes, as ComfyUI does.

    Width, depth, input channels (64 text-to-image, 384 Fill; Kontext is 64 too), the text
    width and whether a guidance embedding exists (dev yes, schnell no) are all in the shapes;
    the head size is not (FLUX.1 uses 128; a width that 128 does not divide is refused).
    """
    doubles, singles = block_counts(shapes)
    width, in_channels = shapes["img_in.weight"]
    out_channels = shapes["final_layer.linear.weight"][0]
    if width % head_dim:
        raise ValueError(f"transformer width {width} is not a multiple of the head size {head_dim}")
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": int(in_channels),
        "out_channels": int(out_channels) if out_channels != in_channels else None,
        "num_layers": doubles,
        "num_single_layers": singles,
        "attention_head_dim": head_dim,
        "num_attention_heads": width // head_dim,
        "joint_attention_dim": int(shapes["txt_in.weight"][1]),
        "pooled_projection_dim": int(shapes["vector_in.in_layer.weight"][1]),
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": _rope_axes(head_dim),
    }


def _rope_axes(head_dim: int) -> list[int]:
    """FLUX.1's rotary split (16, 56, 56) of 128, scaled for other head sizes (even parts)."""
    if head_dim == 128:
        return [16, 56, 56]
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = (head_dim - first) // 2 // 2 * 2
    return [head_dim - 2 * rest, rest, rest]


def _swap_halves(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """BFL transformer tensors (no prefix) -> ``FluxTransformer2DModel`` state dict."""
    width = int(state["img_in.weight"].shape[0])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        match = _BLOCK.match(key)
        if match is not None:
            kind, index, rest = match.groups()
            norms = DOUBLE_NORMS if kind == "double_blocks" else SINGLE_NORMS
            prefix = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
            if rest in norms:
                out[f"{prefix}.{index}.{norms[rest]}"] = tensor
                continue
        targets = diffusers_targets(module)
        if targets is None:
            raise ValueError(f"unexpected FLUX transformer tensor {key!r}")
        if module in SWAPPED:
            tensor = _swap_halves(tensor)
        if len(targets) == 1:
            out[f"{targets[0]}.{param}"] = tensor
            continue
        leaf = module.rsplit(".", 1)[-1]
        mlp_hidden = int(tensor.shape[0]) - 3 * width
        sizes = split_sizes(leaf, width, mlp_hidden)
        for target, part in zip(targets, tensor.split(list(sizes), dim=0), strict=True):
            out[f"{target}.{param}"] = part.contiguous()
    return out


def diffusers_to_bfl(state: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse: a ``FluxTransformer2DModel`` state dict -> BFL names, fused layers joined."""
    import torch

    reverse: dict[str, tuple[str, int]] = {}
    for bfl, diff in TOP_LEVEL.items():
        reverse[diff] = (bfl, 0)
    out: dict[str, Any] = {}
    pending: dict[str, dict[int, Any]] = {}
    norms_rev = {v: k for k, v in DOUBLE_NORMS.items()}
    single_norms_rev = {v: k for k, v in SINGLE_NORMS.items()}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module in reverse:
            bfl = reverse[module][0]
            out[f"{bfl}.{param}"] = _swap_halves(tensor) if bfl in SWAPPED else tensor
            continue
        head = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", key)
        if head is None:
            raise ValueError(f"unexpected diffusers FLUX tensor {key!r}")
        kind, index, rest = head.groups()
        double = kind == "transformer_blocks"
        bfl_kind = "double_blocks" if double else "single_blocks"
        norms = norms_rev if double else single_norms_rev
        if rest in norms:
            out[f"{bfl_kind}.{index}.{norms[rest]}"] = tensor
            continue
        rest_module = rest.rpartition(".")[0]
        for bfl_rest, targets in (DOUBLE if double else SINGLE).items():
            if rest_module in targets:
                name = f"{bfl_kind}.{index}.{bfl_rest}.{param}"
                if len(targets) == 1:
                    out[name] = tensor
                else:
                    pending.setdefault(name, {})[targets.index(rest_module)] = tensor
                break
        else:
            raise ValueError(f"unexpected diffusers FLUX tensor {key!r}")
    for name, parts in pending.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0).contiguous()
    return out
