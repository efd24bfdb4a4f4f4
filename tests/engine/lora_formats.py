"""LoRA files in every format people bring, written offline with the real tools' layouts.

Key names, tensor shapes, dtypes and metadata follow what each tool writes (checked against
kohya sd-scripts, LyCORIS 4.x modules, diffusers ``save_lora_weights``, PEFT, the old diffusers
attention processors and OneTrainer's OMI key sets); the values are seeded random numbers.
Each writer returns the path and, for the test's own formula, the tensors per layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.loras.keys import flatten, unet_module_to_ldm


@dataclass(frozen=True)
class Target:
    """A layer of the model a file patches, and how each key layout names it."""

    component: str  # unet, text_encoder, text_encoder_2
    name: str  # the module path in the diffusers/transformers model
    shape: tuple[int, ...]
    ldm: str | None  # the UNet's SGM name, or None for a text encoder
    has_bias: bool = True

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    def kohya(self, arch: str, *, sgm: bool) -> str:
        if self.component == "unet":
            return "lora_unet_" + flatten(self.ldm if sgm and self.ldm else self.name)
        prefix = {"text_encoder": "lora_te1_" if arch == "sdxl" else "lora_te_", "text_encoder_2": "lora_te2_"}
        return prefix[self.component] + flatten("text_model." + self.name.removeprefix("text_model."))

    def diffusers(self) -> str:
        if self.component == "unet":
            return "unet." + self.name
        return f"{self.component}.text_model." + self.name.removeprefix("text_model.")

    def omi(self) -> str:
        if self.component == "unet":
            return "unet." + (self.ldm or self.name)
        head = "clip_l." if self.component == "text_encoder" else "clip_g."
        return head + "text_model." + self.name.removeprefix("text_model.")


def targets(pipe: Any, *, text_encoders: bool = True) -> list[Target]:
    """What a kohya LoCon touches, a few of each kind: attention and FF linears, proj_in/out,
    ResNet 3x3 convs, a 1x1 shortcut, a downsampler, time embedding; q/k/v/out and MLP of CLIP."""
    chosen: list[Target] = []
    unet = pipe.unet
    config = dict(unet.config)
    # SDXL's deeper transformer blocks (transformer_blocks.1) exist only there: real SDXL files
    # touch them, and they are how a header alone tells an SDXL UNet LoRA from an SD 1.5 one.
    wanted = ("attn1.to_q", "attn2.to_k", "attn1.to_out.0", "ff.net.2", "proj_in", "conv1",
              "conv_shortcut", "downsamplers.0.conv", "time_emb_proj", "transformer_blocks.1.attn1.to_v")  # fmt: skip
    seen: set[str] = set()
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        kind = next((w for w in reversed(wanted) if name.endswith(w)), None)
        if kind is None or kind in seen:
            continue
        seen.add(kind)
        ldm = unet_module_to_ldm(name, config)
        chosen.append(Target("unet", name, tuple(module.weight.shape), ldm, module.bias is not None))
    if text_encoders:
        for component in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, component, None)
            if encoder is None:
                continue
            for name, module in encoder.named_modules():
                if isinstance(module, torch.nn.Linear) and name.endswith(("layers.1.self_attn.q_proj", "layers.0.mlp.fc1")):
                    chosen.append(Target(component, name, tuple(module.weight.shape), None, module.bias is not None))
    return chosen


def _rand(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale


def kohya_metadata(arch: str, module: str, args: dict[str, str], rank: int, alpha: float) -> dict[str, str]:
    return {
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[arch],
        "ss_mixed_precision": "fp16",
        "modelspec.architecture": {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}[arch] + "/lora",
        "modelspec.title": "format test",
    }


#: Per layer: role -> tensor (the file's own tensors, for the test's formula).
Layers = dict[Target, dict[str, torch.Tensor]]


def _lora_pair(g: torch.Generator, t: Target, rank: int, *, conv_kernel: bool) -> dict[str, torch.Tensor]:
    out, inner = t.shape[0], t.shape[1]
    k = t.shape[2:] if t.is_conv else ()
    fan_in = inner * math.prod(k)
    down_shape = (rank, inner, *k) if (t.is_conv and conv_kernel) else ((rank, inner, 1, 1) if t.is_conv else (rank, inner))
    down = _rand(g, *down_shape, scale=1 / math.sqrt(fan_in))
    up = _rand(g, out, rank, *((1, 1) if t.is_conv else ()), scale=1.5 / math.sqrt(rank))
    return {"down": down, "up": up}


def write_kohya(path: Path, arch: str, layers_for: list[Target], *, seed: int, rank: int = 4, alpha: float = 2.0,
                dtype: torch.dtype = torch.float16, locon: bool = True, lycoris: bool = False,
                tucker: bool = False, dora: str | None = None, sgm: bool | None = None,
                layout: Callable[[Target], str] | None = None) -> Layers:  # fmt: skip
    """kohya/LyCORIS LoRA or LoCon (``lora_down``/``lora_up``/``alpha``; Tucker ``lora_mid``;
    DoRA ``dora_scale`` in float32 as LyCORIS keeps it), ``lora_unet_``/``lora_te*_`` names."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    sgm = arch == "sdxl" if sgm is None else sgm
    for t in layers_for:
        if t.is_conv and not locon and t.shape[2:] != (1, 1):
            continue
        key = layout(t) if layout else t.kohya(arch, sgm=sgm)
        if tucker and t.is_conv and t.shape[2:] != (1, 1):
            pair = _lora_pair(g, t, rank, conv_kernel=False)
            pair["mid"] = _rand(g, rank, rank, *t.shape[2:], scale=1 / math.sqrt(rank * math.prod(t.shape[2:])))
        else:
            pair = _lora_pair(g, t, rank, conv_kernel=True)
        roles = {**pair, "alpha": torch.tensor(alpha)}
        if dora is not None:
            rest = [1] * (len(t.shape) - 1)
            if dora == "out":  # LyCORIS wd_on_out=True: (out, 1, ...)
                roles["dora_scale"] = (torch.rand(t.shape[0], generator=g) + 0.5).reshape(t.shape[0], *rest)
            else:  # wd_on_out=False, A1111's axis: (1, in, 1, ...)
                roles["dora_scale"] = (torch.rand(t.shape[1], generator=g) + 0.5).reshape(1, t.shape[1], *rest[1:])
        names = {"down": "lora_down.weight", "up": "lora_up.weight", "mid": "lora_mid.weight",
                 "alpha": "alpha", "dora_scale": "dora_scale"}  # fmt: skip
        for role, tensor in roles.items():
            kept = tensor.to(torch.float32 if role == "dora_scale" else dtype).contiguous()
            state[f"{key}.{names[role]}"] = kept
            roles[role] = kept
        layers[t] = roles
    args = {"conv_dim": str(rank), "conv_alpha": str(alpha)} if locon else {}
    if lycoris:
        args = {**args, "algo": "locon" if locon else "lora", "use_tucker": str(tucker), "dora_wd": str(dora is not None)}
    module = "lycoris.kohya" if lycoris else "networks.lora"
    save_file(state, str(path), metadata=kohya_metadata(arch, module, args, rank, alpha))
    return layers


def write_loha(path: Path, arch: str, layers_for: list[Target], *, seed: int, rank: int = 4,
               alpha: float = 2.0, tucker: bool = False) -> Layers:  # fmt: skip
    """LyCORIS LoHa: ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in·k·k) ...; Tucker: ``hada_t1``
    (r, r, kh, kw) with ``hada_w1_a`` (r, out) and ``hada_w1_b`` (r, in)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    for t in layers_for:
        out, inner = t.shape[0], t.shape[1]
        k = t.shape[2:]
        roles: dict[str, torch.Tensor] = {}
        use_tucker = tucker and t.is_conv and k != (1, 1)
        for n in (1, 2):
            if use_tucker:
                roles[f"hada_t{n}"] = _rand(g, rank, rank, *k, scale=0.5)
                roles[f"hada_w{n}_a"] = _rand(g, rank, out, scale=0.5)
                roles[f"hada_w{n}_b"] = _rand(g, rank, inner, scale=1 / math.sqrt(inner))
            else:
                roles[f"hada_w{n}_a"] = _rand(g, out, rank, scale=0.7)
                roles[f"hada_w{n}_b"] = _rand(g, rank, inner * math.prod(k), scale=1 / math.sqrt(inner))
        roles["alpha"] = torch.tensor(alpha)
        roles = {r: v.to(torch.bfloat16).contiguous() for r, v in roles.items()}
        for role, tensor in roles.items():
            state[f"{t.kohya(arch, sgm=arch == 'sdxl')}.{role}"] = tensor
        layers[t] = roles
    args = {"algo": "loha", "conv_dim": str(rank), "conv_alpha": str(alpha), "use_tucker": str(tucker)}
    save_file(state, str(path), metadata=kohya_metadata(arch, "lycoris.kohya", args, rank, alpha))
    return layers


def _factor(dimension: int) -> tuple[int, int]:
    from lycoris.functional.general import factorization

    return factorization(dimension, -1)


def write_lokr(path: Path, arch: str, layers_for: list[Target], *, seed: int, rank: int = 2,
               alpha: float = 1.0, full: bool = False) -> Layers:  # fmt: skip
    """LyCORIS LoKr: ``lokr_w1`` (a, c) full, ``lokr_w2_a`` (b, r) @ ``lokr_w2_b`` (r, d·k·k);
    ``full``: both sides full matrices (``lokr_w1``, ``lokr_w2`` (b, d, kh, kw)), scale 1."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    for t in layers_for:
        out, inner = t.shape[0], t.shape[1]
        k = t.shape[2:]
        out_l, out_k = _factor(out)
        in_m, in_n = _factor(inner)
        roles = {"lokr_w1": _rand(g, out_l, in_m, scale=0.5)}
        if full:
            roles["lokr_w2"] = _rand(g, out_k, in_n, *k, scale=0.5 / math.sqrt(in_n))
        else:
            roles["lokr_w2_a"] = _rand(g, out_k, rank, scale=0.5)
            roles["lokr_w2_b"] = _rand(g, rank, in_n * math.prod(k), scale=1 / math.sqrt(in_n))
            roles["alpha"] = torch.tensor(alpha)
        roles = {r: v.to(torch.float16).contiguous() for r, v in roles.items()}
        for role, tensor in roles.items():
            state[f"{t.kohya(arch, sgm=arch == 'sdxl')}.{role}"] = tensor
        layers[t] = roles
    args = {"algo": "lokr", "factor": "-1", "full_matrix": str(full)}
    save_file(state, str(path), metadata=kohya_metadata(arch, "lycoris.kohya", args, rank, alpha))
    return layers


def write_full(path: Path, arch: str, layers_for: list[Target], *, seed: int) -> Layers:
    """LyCORIS full/diff: ``.diff`` (the weight's shape) and ``.diff_b`` (out,)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    for t in layers_for:
        roles = {"diff": _rand(g, *t.shape, scale=0.05)}
        if t.has_bias:  # LyCORIS writes diff_b only for layers that have a bias
            roles["diff_b"] = _rand(g, t.shape[0], scale=0.05)
        roles = {r: v.to(torch.float16).contiguous() for r, v in roles.items()}
        for role, tensor in roles.items():
            state[f"{t.kohya(arch, sgm=arch == 'sdxl')}.{role}"] = tensor
        layers[t] = roles
    save_file(state, str(path), metadata=kohya_metadata(arch, "lycoris.kohya", {"algo": "full"}, 0, 0))
    return layers


def write_ia3(path: Path, arch: str, layers_for: list[Target], *, seed: int) -> Layers:
    """(IA)3: ``.weight`` (out,) for linears, (1, out, 1, 1)... as LyCORIS shapes it, and
    ``.on_input`` (int tensor 0: the vector scales output rows)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    for t in layers_for:
        vector = _rand(g, t.shape[0], scale=0.5)
        weight = vector.reshape(1, t.shape[0], 1, 1) if t.is_conv else vector
        roles = {"ia3": weight.to(torch.float16).contiguous(), "on_input": torch.tensor(0)}
        state[f"{t.kohya(arch, sgm=arch == 'sdxl')}.weight"] = roles["ia3"]
        state[f"{t.kohya(arch, sgm=arch == 'sdxl')}.on_input"] = roles["on_input"]
        layers[t] = roles
    save_file(state, str(path), metadata=kohya_metadata(arch, "lycoris.kohya", {"algo": "ia3"}, 0, 0))
    return layers


def write_diffusers(path: Path, arch: str, layers_for: list[Target], *, seed: int, rank: int = 4,
                    alpha: float = 2.0, old: bool = False, peft: bool = False) -> Layers:  # fmt: skip
    """diffusers ``save_lora_weights`` (``unet.….lora_A/B.weight``, ``lora_adapter_metadata``
    with r and lora_alpha), the old attention-processor names (``….processor.to_q_lora.down``;
    text encoders ``lora_linear_layer``), or a PEFT adapter (``base_model.model.…``, UNet)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers: Layers = {}
    for t in layers_for:
        if t.is_conv or (peft and t.component != "unet"):
            continue
        if old and t.component == "unet" and not t.name.split(".")[-1].startswith("to_") and ".to_out." not in t.name:
            continue  # the processors only carried attention projections
        pair = _lora_pair(g, t, rank, conv_kernel=True)
        if old or peft:
            pair["up"] = pair["up"] * (alpha / rank)  # no alpha in these files: folded into up
        roles = {"down": pair["down"], "up": pair["up"]}
        if peft:
            base = "base_model.model." + t.name
            names = {"down": f"{base}.lora_A.weight", "up": f"{base}.lora_B.weight"}
        elif old and t.component == "unet":
            attn, proj = t.name.rsplit(".", 1) if ".to_out." not in t.name else (t.name.split(".to_out.")[0], "to_out")
            names = {"down": f"unet.{attn}.processor.{proj}_lora.down.weight",
                     "up": f"unet.{attn}.processor.{proj}_lora.up.weight"}  # fmt: skip
        elif old:
            names = {"down": f"{t.diffusers()}.lora_linear_layer.down.weight",
                     "up": f"{t.diffusers()}.lora_linear_layer.up.weight"}  # fmt: skip
        else:
            names = {"down": f"{t.diffusers()}.lora_A.weight", "up": f"{t.diffusers()}.lora_B.weight"}
        for role in ("down", "up"):
            state[names[role]] = roles[role].contiguous()
        layers[t] = {**roles, "alpha": torch.tensor(alpha if not (old or peft) else float(rank))}
    metadata = {"format": "pt"}
    if not (old or peft):
        config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted({t.name.split(".")[-1] for t in layers})}
        # As diffusers' save_lora_weights writes it: one flat object, keys prefixed with the
        # component ("unet.r", "unet.lora_alpha", ...; lora_base._pack_dict_with_prefix).
        packed = {f"{c}.{key}": value for c in sorted({t.component for t in layers}) for key, value in config.items()}
        metadata["lora_adapter_metadata"] = json.dumps(packed, indent=2, sort_keys=True)
    save_file(state, str(path), metadata=metadata)
    return layers


def write_omi(path: Path, arch: str, layers_for: list[Target], *, seed: int, bundle: dict[str, torch.Tensor] | None = None) -> Layers:
    """OneTrainer's OMI layout: ``unet.<SGM name>``, ``clip_l.``/``clip_g.`` + kohya suffixes;
    ``bundle``: ``bundle_emb.<name>.…`` embedding vectors saved in the same file."""
    layers = write_kohya(path, arch, layers_for, seed=seed, layout=Target.omi)
    if bundle:
        from safetensors.torch import load_file

        state = load_file(str(path))
        for key, tensor in bundle.items():
            state[f"bundle_emb.{key}"] = tensor
        save_file(state, str(path), metadata=kohya_metadata(arch, "networks.lora", {}, 4, 2.0))
    return layers
