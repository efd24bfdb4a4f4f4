"""FLUX.1 LoRA files in every layout people bring, mapped onto diffusers' FLUX modules.

A FLUX LoRA names its layers in one of five ways: kohya sd-scripts (``lora_unet_double_blocks_0_
img_attn_qkv``, BFL's fused layers flattened, plus ``lora_te1_`` for CLIP-L), the same with
diffusers names (``lora_unet_transformer_blocks_0_attn_to_q``), ComfyUI/BFL
(``diffusion_model.double_blocks.0.img_attn.qkv``), diffusers/PEFT/ai-toolkit
(``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``) and XLabs
(``double_blocks.0.processor.qkv_lora1.down.weight``). The loaded model is diffusers', where
BFL's fused ``qkv`` is three layers and ``linear1`` four (q, k, v, MLP in). A delta trained on a
fused layer is the tool's ΔW of the fused weight, so each diffusers layer gets its rows of it:
:class:`RowSliceDelta`, sliced at the model's own width (never a hard-coded 3072), which is what
the tool computes when it merges into the fused weight. Reading a file is model-independent
(:func:`read_flux_lora`, a :class:`~engine.loras.reader.LoraFile`); :func:`bind_flux_lora`
matches it to one model and gives the patcher's :class:`~engine.loras.reader.BoundLora`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.convert import DOUBLE, SINGLE, SWAPPED, TOP_LEVEL, diffusers_targets
from engine.classify import adapter_configs
from engine.loras.base import LayerDelta
from engine.loras.dora import DoraDelta
from engine.loras.keys import ROLES, Layer
from engine.loras.reader import UNSUPPORTED, BoundLora, LoraFile, delta_for, pattern_alpha
from engine.protocol import EngineError, ErrorCode

TRANSFORMER = "transformer"
CLIP = "text_encoder"
T5 = "text_encoder_2"

#: End of a key -> the role the delta formats read: engine.loras.keys' table (one place), less
#: the bare ``weight`` it reads as (IA)3 (on FLUX a bare ``.weight`` is a Control LoRA's layer
#: replacement, refused below), plus the bare ``down``/``up`` some FLUX trainers write.
_ROLES: tuple[tuple[str, str], ...] = tuple(sorted(
    [(suffix, role) for suffix, role in ROLES if suffix != "weight"] + [("down.weight", "down"), ("up.weight", "up")],
    key=lambda item: -len(item[0])))  # fmt: skip

#: Key prefix -> (layout, component).
_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("lora_unet_", "kohya", TRANSFORMER),
    ("lora_te1_", "kohya", CLIP),
    ("lora_te2_", "kohya", T5),
    ("diffusion_model.", "comfyui", TRANSFORMER),
    ("transformer.", "diffusers", TRANSFORMER),
    ("base_model.model.", "peft", TRANSFORMER),
    ("text_encoder.", "diffusers", CLIP),
    ("text_encoder_2.", "diffusers", T5),
)
_XLABS = re.compile(r"^(?:diffusion_model\.)?(double_blocks|single_blocks)\.(\d+)\.processor\.(qkv|proj)_lora(\d?)\.(down|up)\.weight$")  # fmt: skip
#: XLabs processor LoRA -> the BFL layer whose output it adds to.
_XLABS_TARGET = {("double_blocks", "qkv", "1"): "img_attn.qkv", ("double_blocks", "qkv", "2"): "txt_attn.qkv",
                 ("double_blocks", "proj", "1"): "img_attn.proj", ("double_blocks", "proj", "2"): "txt_attn.proj",
                 ("single_blocks", "qkv", ""): "linear1_qkv"}  # fmt: skip
def flatten(name: str) -> str:
    return name.replace(".", "_")


@dataclass(frozen=True)
class ParsedKey:
    layout: str
    component: str
    flat_module: str
    role: str


def parse_key(key: str) -> ParsedKey | str | None:
    """A key's (layout, component, flattened module, role); a string naming an unsupported
    layout; or None for a key that is no LoRA parameter."""
    xlabs = _XLABS.match(key)
    if xlabs is not None:
        kind, index, what, side, part = xlabs.groups()
        target = _XLABS_TARGET.get((kind, what, side))
        if target is None:
            return "XLabs single-block proj_lora (it scales linear2's output, not its weight)"
        return ParsedKey("xlabs", TRANSFORMER, flatten(f"{kind}.{index}.{target}"), part)
    for prefix, layout, component in _PREFIXES:
        if key.startswith(prefix):
            rest = key.removeprefix(prefix)
            for suffix, role in _ROLES:
                if rest.endswith("." + suffix):
                    module = rest[: -len(suffix) - 1]
                    return ParsedKey(layout, component, flatten(module), role)
            return None
    return None


def read_flux_lora(path: Path, *, label: str, sha256: str) -> LoraFile:
    """Every layer delta of a FLUX LoRA ``.safetensors``, keyed (component, flattened layer)."""
    from safetensors import SafetensorError, safe_open

    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    layouts: dict[str, int] = defaultdict(int)
    skipped: list[str] = []
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                parsed = parse_key(key)
                if isinstance(parsed, str):
                    raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{label}' uses {parsed}, a layout this "
                                      "engine cannot apply to FLUX.1")  # fmt: skip
                if parsed is None:
                    skipped.append(key)
                    continue
                layouts[parsed.layout] += 1
                groups[(parsed.component, parsed.flat_module)][parsed.role] = handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise EngineError(ErrorCode.CORRUPT_FILE, f"could not read LoRA '{label}': {exc}") from exc
    for needle, name in UNSUPPORTED:
        if any(needle in key for key in skipped):
            raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{label}' is a {name} file, a format this "
                              "engine cannot apply; use a LoRA, LoHa, LoKr or full/diff file")  # fmt: skip
    if skipped and groups:  # part of the file would be left out: say so rather than apply the rest
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{label}' has {len(skipped)} tensor(s) this "
                          f"engine cannot apply to FLUX.1 (e.g. '{skipped[0]}': not a LoRA, LoHa, LoKr or "
                          "diff parameter, such as the norm replacements of BFL's Control LoRAs), beside "
                          f"{len(groups)} layer(s) it can; applying only those would not be this LoRA")  # fmt: skip
    configs = adapter_configs(metadata)
    layers: dict[tuple[str | None, str], LayerDelta] = {}
    for where, roles in groups.items():
        if "alpha" not in roles and where[0] in configs and "down" in roles:  # diffusers' saved PEFT config
            roles["alpha"] = pattern_alpha(configs[where[0]], where[1], int(roles["down"].shape[0]))
        try:
            delta = delta_for(roles)
        except (KeyError, IndexError, RuntimeError, AttributeError) as exc:
            raise EngineError(ErrorCode.CORRUPT_FILE, f"LoRA '{label}' has a malformed layer '{where[1]}' "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        if delta is not None:
            layers[where] = delta
    if not layers:
        raise EngineError(ErrorCode.LORA_NO_MATCH, f"LoRA '{label}' has no LoRA layers this engine can read "
                          f"(e.g. '{skipped[0] if skipped else '-'}')")  # fmt: skip
    return LoraFile(label=label, sha256=sha256, layout=max(layouts, key=layouts.__getitem__), layers=layers,
                    nbytes=sum(d.nbytes for d in layers.values()))  # fmt: skip


class RowSliceDelta(LayerDelta):
    """Rows ``[start, stop)`` of a delta trained on a fused layer of ``fused_rows`` rows
    (optionally with the two halves swapped first, for BFL's (shift, scale) modulation)."""

    def __init__(self, inner: LayerDelta, start: int, stop: int, fused_rows: int, swap_halves: bool = False) -> None:
        super().__init__(inner.tensors)
        self.inner = inner
        self.start, self.stop, self.fused_rows = start, stop, fused_rows
        self.swap_halves = swap_halves
        self.format = inner.format
        self.rank = inner.rank

    @property
    def nbytes(self) -> int:  # the file's tensors are shared by the slices: count them once
        return 0 if self.start else self.inner.nbytes

    def out_in(self) -> tuple[int, int] | None:
        inner = self.inner.out_in()
        return None if inner is None else (self.stop - self.start, inner[1])

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        import math

        fused = (self.fused_rows, math.prod(weight_shape[1:]))
        return weight_shape[0] == self.stop - self.start and self.inner.fits(fused)

    def _rows(self, tensor: Any) -> Any:
        import torch

        if self.swap_halves:
            first, second = tensor.chunk(2, dim=0)
            tensor = torch.cat([second, first], dim=0)
        return tensor[self.start : self.stop]

    def dense(self, weight: Any) -> Any:
        import torch

        fused = torch.empty((self.fused_rows, *weight.shape[1:]), dtype=torch.float32, device="meta")
        return self._rows(self.inner.dense(fused)).reshape(weight.shape)

    def dense_bias(self) -> Any | None:
        bias = self.inner.dense_bias()
        return None if bias is None else self._rows(bias)

    @property
    def factors_available(self) -> bool:  # type: ignore[override]
        return self.inner.factors_available

    def factors(self) -> tuple[Any, Any] | None:
        pair = self.inner.factors()
        return None if pair is None else (self._rows(pair[0]), pair[1])

    def bypass_down(self) -> Any | None:
        return self.inner.bypass_down()


@dataclass(frozen=True)
class _Target:
    module: str
    start: int
    stop: int
    fused_rows: int
    swap: bool


def _bfl_table(transformer: Any) -> dict[str, list[_Target]]:
    """Flattened BFL layer name -> the diffusers layers (with rows) it is, for this model."""
    config = transformer.config
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    mlp_hidden = int(transformer.single_transformer_blocks[0].proj_mlp.out_features) if config.num_single_layers else 4 * width
    names = [*TOP_LEVEL]
    names += [f"double_blocks.{i}.{rest}" for i in range(config.num_layers) for rest in DOUBLE]
    names += [f"single_blocks.{i}.{rest}" for i in range(config.num_single_layers) for rest in SINGLE]
    modules = dict(transformer.named_modules())
    table: dict[str, list[_Target]] = {}
    for name in names:
        targets = diffusers_targets(name)
        if not targets or targets[0] not in modules:
            continue  # guidance_in on schnell
        leaf = name.rsplit(".", 1)[-1]
        sizes = (width,) * 3 if leaf == "qkv" else (width,) * 3 + (mlp_hidden,) if leaf == "linear1" else None
        if sizes is None:
            rows = int(modules[targets[0]].weight.shape[0])
            table[flatten(name)] = [_Target(targets[0], 0, rows, rows, name in SWAPPED)]
            continue
        spans, start = [], 0
        for target, size in zip(targets, sizes, strict=True):
            spans.append(_Target(target, start, start + size, sum(sizes), False))
            start += size
        table[flatten(name)] = spans
        if leaf == "linear1":  # XLabs' single-block LoRA covers only linear1's q, k, v rows
            table[flatten(name) + "_qkv"] = [_Target(t.module, t.start, t.stop, 3 * width, False) for t in spans[:3]]
    return table


def _linear_names(model: Any) -> dict[str, tuple[str, Any]]:
    import torch

    names: dict[str, tuple[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            names[flatten(name)] = (name, module)
            bare = name.removeprefix("text_model.")
            names.setdefault(flatten(bare), (name, module))
            names.setdefault(flatten("text_model." + bare), (name, module))
    return names


def bind_flux_lora(lora: LoraFile, pipe: Any, *, model_name: str) -> BoundLora:
    """Match a FLUX LoRA to a loaded FLUX pipeline; refuse what does not fit, whole or in part."""
    transformer = pipe.transformer
    bfl = _bfl_table(transformer)
    linear = {TRANSFORMER: _linear_names(transformer)}
    for component in (CLIP, T5):
        model = getattr(pipe, component, None)
        if model is not None:
            linear[component] = _linear_names(model)
    targets: list[tuple[Layer, LayerDelta]] = []
    unmatched: list[str] = []
    misfit: tuple[str, tuple[int, ...], str] | None = None
    width = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
    modules = dict(transformer.named_modules())
    for (component, flat), delta in lora.layers.items():
        assert component is not None
        pairs: list[tuple[str, Any, LayerDelta]] = []
        if component == TRANSFORMER and flat in bfl:
            for t in bfl[flat]:
                sliced = delta if (t.stop - t.start == t.fused_rows and not t.swap) else RowSliceDelta(
                    delta, t.start, t.stop, t.fused_rows, t.swap)  # fmt: skip
                pairs.append((t.module, modules[t.module], sliced))
        elif flat in linear.get(component, {}):
            name, module = linear[component][flat]
            pairs.append((name, module, delta))
        else:
            unmatched.append(flat)
            continue
        for name, module, part in pairs:
            if isinstance(part, RowSliceDelta) and isinstance(part.inner, DoraDelta):
                raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{lora.label}' has DoRA on the fused "
                                  f"FLUX layer '{flat}'; DoRA's norm is of the whole fused weight, which this "
                                  "engine does not split")  # fmt: skip
            if not part.fits(tuple(module.weight.shape)):
                misfit = misfit or (name, tuple(module.weight.shape), flat)
                continue
            targets.append((Layer(component, name, module), part))
    if misfit is not None:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"LoRA '{lora.label}' does not fit the model '{model_name}' "
                          f"(FLUX.1, width {width}): its layer '{misfit[2]}' has another shape than the model's "
                          f"'{misfit[0]}' {list(misfit[1])}, so it was trained for a FLUX model of another width "
                          "or another architecture; pick a LoRA made for this model")  # fmt: skip
    if not targets:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"LoRA '{lora.label}' ({lora.layout} layout) names no layer of "
                          f"the FLUX.1 model '{model_name}' (e.g. '{unmatched[0]}'): it was made for another "
                          "architecture; pick a FLUX.1 LoRA")  # fmt: skip
    if unmatched:
        total = len(lora.layers)
        raise EngineError(ErrorCode.LORA_NO_MATCH, f"LoRA '{lora.label}' only partly matches '{model_name}': "
                          f"{total - len(unmatched)} of {total} layers matched (e.g. '{unmatched[0]}' did not); "
                          "applying part of a LoRA would not give what it was trained to give, so it was not "
                          "applied")  # fmt: skip
    targets.sort(key=lambda pair: (pair[0].component, pair[0].name))
    return BoundLora(file=lora, targets=targets, unmatched=0)
