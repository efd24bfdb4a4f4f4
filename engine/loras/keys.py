"""Key layouts: which layer of which component a LoRA file's tensor belongs to.

People bring the same maths under half a dozen naming schemes: kohya/A1111 (``lora_unet_…``,
``lora_te1_…``, with SDXL UNet layers under their original SGM names ``input_blocks_4_1_…``),
diffusers (``unet.…``/``text_encoder.…``), PEFT (``base_model.model.…``), the old diffusers
attention processors (``….processor.to_q_lora.down.weight``), OneTrainer's OMI layout
(``unet.``/``clip_l.``/``clip_g.`` with SGM names) and bundled embeddings (``bundle_emb.…``).
This module only names things: it turns every key into (layout, component, flattened module
name, parameter role) and matches the flattened name against the loaded model's own layers,
where every layer is known under its diffusers and its SGM name. The maths lives in the
per-format modules next to it, so a new layout never touches a formula and vice versa.

Flattening dots to underscores is how kohya names layers, and it is unambiguous for the SD
1.5 / SDXL UNets and CLIP encoders (ComfyUI and A1111 match keys the same way).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Components an SD LoRA may patch, with the pipeline attribute that holds each (another
#: architecture's runtime names its own: engine.arch.runtime.Runtime.lora_components).
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
#: Components that run every denoising step (a LoRA there costs per call, not once).
DENOISERS = ("unet", "transformer")

#: Parameter names (the end of a key) -> the role the formats read. Longest first.
ROLES: tuple[tuple[str, str], ...] = tuple(
    sorted(
        {
            "lora_down.weight": "down",
            "lora_up.weight": "up",
            "lora_mid.weight": "mid",
            "lora_A.weight": "down",
            "lora_B.weight": "up",
            "lora_B.bias": "up_bias",
            "lora.down.weight": "down",
            "lora.up.weight": "up",
            "lora_linear_layer.down.weight": "down",
            "lora_linear_layer.up.weight": "up",
            "lora_magnitude_vector.weight": "magnitude",
            "lora_magnitude_vector": "magnitude",
            "dora_scale": "dora_scale",
            "alpha": "alpha",
            "hada_w1_a": "hada_w1_a",
            "hada_w1_b": "hada_w1_b",
            "hada_w2_a": "hada_w2_a",
            "hada_w2_b": "hada_w2_b",
            "hada_t1": "hada_t1",
            "hada_t2": "hada_t2",
            "lokr_w1": "lokr_w1",
            "lokr_w1_a": "lokr_w1_a",
            "lokr_w1_b": "lokr_w1_b",
            "lokr_w2": "lokr_w2",
            "lokr_w2_a": "lokr_w2_a",
            "lokr_w2_b": "lokr_w2_b",
            "lokr_t2": "lokr_t2",
            "diff": "diff",
            "diff_b": "diff_b",
            "on_input": "on_input",
            "weight": "ia3",
        }.items(),
        key=lambda item: -len(item[0]),
    )
)
# Old diffusers attention processors: `<attn>.processor.to_q_lora.down.weight` and friends.
_PROCESSOR = re.compile(r"^(?P<attn>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
_PROCESSOR_MODULE = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}

#: Prefix -> (layout, component); ``None`` component: matched against every component.
_PREFIXES: tuple[tuple[str, str, str | None], ...] = (
    ("lora_unet_", "kohya", "unet"),
    ("lora_te1_", "kohya", "text_encoder"),
    ("lora_te2_", "kohya", "text_encoder_2"),
    ("lora_te_", "kohya", "text_encoder"),
    ("base_model.model.", "peft", None),
    ("text_encoder_2.", "diffusers", "text_encoder_2"),
    ("text_encoder.", "diffusers", "text_encoder"),
    ("unet.", "diffusers", "unet"),
    ("clip_l.", "omi", "text_encoder"),
    ("clip_g.", "omi", "text_encoder_2"),
)
BUNDLE_PREFIX = "bundle_emb."
#: SGM block names: a ``unet.`` key naming them is OneTrainer's OMI layout, not diffusers'.
_SGM_NAME = re.compile(r"^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)[._]")


@dataclass(frozen=True)
class KeyParts:
    """One tensor key, taken apart."""

    key: str
    layout: str
    component: str | None
    #: The layer's name in the file, dots flattened to underscores.
    flat_module: str
    role: str


def flatten(name: str) -> str:
    return name.replace(".", "_")


def split_key(key: str) -> KeyParts | None:
    """(layout, component, layer, role) of a key, or ``None`` if it names no LoRA parameter."""
    processor = _PROCESSOR.match(key)
    if processor is not None:
        head = processor["attn"]
        role = processor["part"]
        module = f"{head}.{_PROCESSOR_MODULE[processor['proj']]}"
        for prefix, _layout, component in _PREFIXES:
            if module.startswith(prefix) and _layout == "diffusers":
                return KeyParts(key, "diffusers_old", component, flatten(module.removeprefix(prefix)), role)
        return KeyParts(key, "diffusers_old", "unet", flatten(module), role)
    for prefix, layout, component in _PREFIXES:
        if not key.startswith(prefix):
            continue
        rest = key.removeprefix(prefix)
        for suffix, role in ROLES:
            if rest.endswith("." + suffix):
                module = rest[: -len(suffix) - 1]
                if layout == "diffusers" and ".lora_linear_layer." in key:
                    layout = "diffusers_old"
                elif layout == "diffusers" and component == "unet" and _SGM_NAME.match(module):
                    layout = "omi"
                return KeyParts(key, layout, component, flatten(module), role)
        return None
    return None


def key_layout(keys: Iterable[str]) -> str:
    """The layout most of a file's LoRA keys use ("kohya", "diffusers", "peft", ...)."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = split_key(key)
        if parts is not None:
            counts[parts.layout] = counts.get(parts.layout, 0) + 1
    return max(counts, key=lambda layout: counts[layout]) if counts else "unknown"


# --- the model's side --------------------------------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_module_to_ldm(module: str, config: dict[str, Any]) -> str:
    """A diffusers UNet module path -> its original (ldm/sgm) path, e.g. for kohya SDXL keys."""
    layers = config["layers_per_block"]
    parts = module.split(".")
    if module in _UNET_TOP_TO_LDM:
        return _UNET_TOP_TO_LDM[module]
    head = parts[0]
    if head == "down_blocks":
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        rest = parts[4:]
        if kind == "downsamplers":
            prefix = f"input_blocks.{(block + 1) * (layers + 1)}.0"
            rest = ["op"] + rest[1:]
        else:
            prefix = f"input_blocks.{block * (layers + 1) + index + 1}.{0 if kind == 'resnets' else 1}"
    elif head == "mid_block":
        kind, index = parts[1], int(parts[2])
        rest = parts[3:]
        prefix = f"middle_block.{2 * index if kind == 'resnets' else 1}"
    elif head == "up_blocks":
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        rest = parts[4:]
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][block]
            prefix = f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}"
        else:
            prefix = f"output_blocks.{block * (layers + 1) + index}.{0 if kind == 'resnets' else 1}"
    else:
        raise ValueError(f"no ldm name for UNet module {module!r}")
    if parts[2:3] == ["resnets"] or parts[1:2] == ["resnets"]:
        rest = [_RESNET_TO_LDM.get(rest[0], rest[0])] + rest[1:]
    return ".".join([prefix, *rest])


@dataclass(frozen=True)
class Layer:
    """A weight-carrying layer of the loaded model that a LoRA may patch."""

    component: str
    name: str  # its diffusers/transformers module path
    module: Any  # the torch module (nn.Linear or nn.Conv2d)


def _patchable(component: Any) -> Iterator[tuple[str, Any]]:
    import torch

    for name, module in component.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            yield name, module


class ModuleIndex:
    """Every patchable layer of a pipeline, under each name a LoRA file may give it."""

    def __init__(self, pipe: Any, components: Mapping[str, Any] | None = None) -> None:
        """``components``: the modules a LoRA may patch, by the component names its files use,
        as the architecture's runtime says (:meth:`engine.arch.runtime.Runtime.lora_components`);
        None: the SD pipeline attributes in :data:`COMPONENTS`."""
        self.by_component: dict[str, dict[str, Layer]] = {}
        if components is None:
            components = {c: getattr(pipe, c) for c in COMPONENTS if getattr(pipe, c, None) is not None}
        for component, model in components.items():
            model = getattr(model, "_orig_mod", model)  # a torch.compile'd UNet: its own modules
            names: dict[str, Layer] = {}
            config = dict(getattr(model, "config", None) or {}) if component == "unet" else None
            for name, module in _patchable(model):
                layer = Layer(component, name, module)
                aliases = {name}
                if config is not None:
                    try:
                        aliases.add(unet_module_to_ldm(name, config))
                    except (ValueError, IndexError, KeyError):
                        pass
                else:
                    bare = name.removeprefix("text_model.")
                    aliases |= {bare, "text_model." + bare}
                for alias in aliases:
                    names[flatten(alias)] = layer
            self.by_component[component] = names

    def candidates(self, component: str | None, flat_module: str) -> list[Layer]:
        """The layers a key may name: one, or for a component-less (PEFT) key one per
        component that has a layer of that name (SDXL's two CLIPs share their names: the
        shapes decide)."""
        if component is not None:
            layer = self.by_component.get(component, {}).get(flat_module)
            return [layer] if layer is not None else []
        found = (names.get(flat_module) for names in self.by_component.values())
        return [layer for layer in found if layer is not None]

    def layers(self) -> Iterator[Layer]:
        seen: set[int] = set()
        for names in self.by_component.values():
            for layer in names.values():
                if id(layer.module) not in seen:
                    seen.add(id(layer.module))
                    yield layer
