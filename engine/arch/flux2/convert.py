"""FLUX.2 transformer weights between BFL's layout and diffusers', for any width and depth.

Loading uses diffusers' own converter (``convert_flux2_transformer_checkpoint_to_diffusers``,
which splits the fused double-block ``qkv`` by thirds, so any width works). This module adds
the module table LoRAs need (a BFL layer -> the diffusers layers, with the rows of a fused ΔW
each takes) and the inverse the sandbox writes single files with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # (shift, scale) -> (scale, shift)
}
SWAPPED = frozenset({"final_layer.adaLN_modulation.1"})
DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.linear_in",),
    "img_mlp.2": ("ff.linear_out",),
    "txt_mlp.0": ("ff_context.linear_in",),
    "txt_mlp.2": ("ff_context.linear_out",),
}
DOUBLE_NORMS = {"img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
                "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k"}  # fmt: skip
SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # fmt: skip
    return dict(state)


def to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import (
        convert_flux2_transformer_checkpoint_to_diffusers,
    )

    return convert_flux2_transformer_checkpoint_to_diffusers(dict(strip_prefix(state)))


def _swap(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_bfl(state: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' names -> BFL's: the inverse of :func:`to_diffusers`."""
    import torch

    out: dict[str, Any] = {}
    top = {v: k for k, v in TOP.items()}
    double = {v[0]: k for k, v in DOUBLE.items() if len(v) == 1} | {v: k for k, v in DOUBLE_NORMS.items()}
    single = {v[0]: k for k, v in SINGLE.items()} | {v: k for k, v in SINGLE_NORMS.items()}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module in top:
            out[f"{top[module]}.{param}"] = _swap(tensor) if top[module] in SWAPPED else tensor
            continue
        parts = module.split(".")
        block, index, inner = parts[0], parts[1], ".".join(parts[2:])
        if block == "transformer_blocks":
            for fused, targets in DOUBLE.items():
                if len(targets) == 3 and inner == targets[0]:
                    out[f"double_blocks.{index}.{fused}.{param}"] = torch.cat(
                        [state[f"transformer_blocks.{index}.{t}.{param}"] for t in targets], dim=0)  # fmt: skip
            if inner in double:
                name = double[inner]
                out[f"double_blocks.{index}.{name}.{'scale' if 'norm' in name else param}"] = tensor
        elif block == "single_transformer_blocks" and inner in single:
            name = single[inner]
            out[f"single_blocks.{index}.{name}.{'scale' if 'norm' in name else param}"] = tensor
    return out


def transformer_config(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, Any]) -> dict[str, Any]:
    """``Flux2Transformer2DModel``'s config from BFL-named shapes (as ComfyUI reads them)."""
    config = dict(base)
    width, in_channels = (int(n) for n in shapes["img_in.weight"])
    head_dim = int(shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0])

    def depth(prefix: str) -> int:
        found = {int(k.split(".")[1]) for k in shapes if k.startswith(prefix + ".")}
        return 1 + max(found) if found else 0

    config.update(
        num_layers=depth("double_blocks"),
        num_single_layers=depth("single_blocks"),
        attention_head_dim=head_dim,
        num_attention_heads=width // head_dim,
        joint_attention_dim=int(shapes["txt_in.weight"][1]),
        in_channels=in_channels,
        timestep_guidance_channels=int(shapes["time_in.in_layer.weight"][1]),
        mlp_ratio=int(shapes["double_blocks.0.img_mlp.0.weight"][0]) / (2 * width),
        guidance_embeds="guidance_in.in_layer.weight" in shapes,
    )
    if head_dim != sum(base["axes_dims_rope"]):
        config["axes_dims_rope"] = [head_dim // 4] * 4
    return config
