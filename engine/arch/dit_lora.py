"""LoRA files for diffusion transformers, read and bound the same way whatever the architecture.

FLUX.1 brought this shape (:mod:`engine.arch.flux.lora_keys`); Z-Image, Qwen-Image and FLUX.2
have the same problem with other names: a file names its layers under one of several tool
prefixes (kohya/musubi ``lora_unet_``, LyCORIS ``lycoris_``, ComfyUI and ai-toolkit
``diffusion_model.``, diffusers ``transformer.``, PEFT ``base_model.model.``), in the model's
original layout (fused ``qkv``) or diffusers' (``to_q``/``to_k``/``to_v``), and the loaded model
is diffusers'. This module does the walking once: an architecture gives its prefixes and a
*table* (flattened file layer name -> diffusers layers, with the rows of a fused ΔW each gets:
:class:`~engine.arch.runtime.LoraTarget`), and gets back the patcher's
:class:`~engine.loras.reader.BoundLora`, with every refusal named (a layer of another width:
``arch_mismatch``; part of a file: ``lora_no_match``). The maths stays in the per-format deltas
(:func:`engine.loras.reader.delta_for`): LoRA, LoCon, LoHa, LoKr, full/diff, DoRA.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.lora_keys import RowSliceDelta, flatten
from engine.arch.runtime import LoraTarget
from engine.classify import adapter_configs
from engine.loras.base import LayerDelta
from engine.loras.dora import DoraDelta
from engine.loras.keys import ROLES, Layer
from engine.loras.reader import UNSUPPORTED, BoundLora, LoraFile, delta_for, pattern_alpha
from engine.protocol import EngineError, ErrorCode

TRANSFORMER = "transformer"
TEXT_ENCODER = "text_encoder"

#: End of a key -> the role the delta formats read, less the bare ``weight`` (IA)3 reading:
#: on a DiT a bare ``.weight`` is a layer replacement, refused as a part not applied.
_ROLES: tuple[tuple[str, str], ...] = tuple(sorted(
    [(suffix, role) for suffix, role in ROLES if suffix != "weight"] + [("down.weight", "down"), ("up.weight", "up")],
    key=lambda item: -len(item[0])))  # fmt: skip

#: Tool prefix -> (layout, component), for a DiT with one text encoder.
DEFAULT_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("lora_unet_", "kohya", TRANSFORMER),
    ("lycoris_", "lycoris", TRANSFORMER),
    ("lora_transformer_", "kohya", TRANSFORMER),
    ("lora_te_", "kohya", TEXT_ENCODER),
    ("lora_te1_", "kohya", TEXT_ENCODER),
    ("diffusion_model.", "comfyui", TRANSFORMER),
    ("model.diffusion_model.", "comfyui", TRANSFORMER),
    ("transformer.", "diffusers", TRANSFORMER),
    ("base_model.model.", "peft", TRANSFORMER),
    ("text_encoder.", "diffusers", TEXT_ENCODER),
)


@dataclass(frozen=True)
class ParsedKey:
    layout: str
    component: str
    flat_module: str
    role: str


def parse_key(key: str, prefixes: Sequence[tuple[str, str, str]] = DEFAULT_PREFIXES) -> ParsedKey | None:
    """(layout, component, flattened module, role) of a LoRA key, or None for anything else.
    PEFT's adapter name (``lora_A.default.weight``) is dropped. A prefix of layout ``"bare"`` is
    the start of a module's own name (LoRAs written with no tool prefix): it is kept."""
    key = key.replace(".default.weight", ".weight").replace(".default_0.weight", ".weight")
    for prefix, layout, component in sorted(prefixes, key=lambda p: -len(p[0])):
        if key.startswith(prefix):
            rest = key if layout == "bare" else key[len(prefix):]
            for suffix, role in _ROLES:
                if rest.endswith("." + suffix):
                    return ParsedKey(layout, component, flatten(rest[: -len(suffix) - 1]), role)
            return None
    return None


def read_dit_lora(path: Path, *, label: str, sha256: str, arch_label: str,
                  prefixes: Sequence[tuple[str, str, str]] = DEFAULT_PREFIXES) -> LoraFile:  # fmt: skip
    """Every layer delta of a DiT LoRA ``.safetensors``, keyed (component, flattened layer)."""
    from safetensors import SafetensorError, safe_open

    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    layouts: dict[str, int] = defaultdict(int)
    skipped: list[str] = []
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                parsed = parse_key(key, prefixes)
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
    if skipped and groups:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{label}' has {len(skipped)} tensor(s) this engine "
                          f"cannot apply to {arch_label} (e.g. '{skipped[0]}': not a LoRA, LoHa, LoKr or diff "
                          f"parameter) beside {len(groups)} layer(s) it can; applying only those would not be "
                          "this LoRA")  # fmt: skip
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


def linear_table(model: Any, component: str) -> dict[str, list[LoraTarget]]:
    """Every ``nn.Linear`` of ``model`` under its flattened name (with and without a leading
    ``model.``/``text_model.``, as text-encoder LoRAs write it)."""
    import torch

    table: dict[str, list[LoraTarget]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            target = [LoraTarget(component, name)]
            table.setdefault(flatten(name), target)
            for prefix in ("model.", "text_model."):
                table.setdefault(flatten(name.removeprefix(prefix)), target)
                table.setdefault(flatten(prefix + name.removeprefix(prefix)), target)
    return table


def bind_dit_lora(lora: LoraFile, models: Mapping[str, Any], table: Mapping[tuple[str, str], list[LoraTarget]], *,
                  model_name: str, arch_label: str, width: int) -> BoundLora:  # fmt: skip
    """Match a LoRA to a loaded DiT's modules; refuse what does not fit, whole or in part.

    ``models``: component name -> module; ``table``: (component, flattened file layer) -> the
    targets (a fused layer names several, each with its rows of the fused ΔW)."""
    modules = {component: dict(model.named_modules()) for component, model in models.items()}
    targets: list[tuple[Layer, LayerDelta]] = []
    unmatched: list[str] = []
    misfit: tuple[str, tuple[int, ...], str] | None = None
    for (component, flat), delta in lora.layers.items():
        assert component is not None
        found = table.get((component, flat))
        if not found or component not in modules:
            unmatched.append(flat)
            continue
        fused = sum((t.rows[1] - t.rows[0]) if t.rows else 0 for t in found)
        for target in found:
            module = modules[component][target.module]
            part = delta
            if target.rows is not None:
                if isinstance(delta, DoraDelta):
                    raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"LoRA '{lora.label}' has DoRA on the fused "
                                      f"{arch_label} layer '{flat}'; DoRA's norm is of the whole fused weight, "
                                      "which this engine does not split")  # fmt: skip
                part = RowSliceDelta(delta, target.rows[0], target.rows[1], fused)
            elif target.swap_halves:
                rows = int(module.weight.shape[0])
                part = RowSliceDelta(delta, 0, rows, rows, swap_halves=True)
            if not part.fits(tuple(module.weight.shape)):
                misfit = misfit or (target.module, tuple(module.weight.shape), flat)
                continue
            targets.append((Layer(component, target.module, module), part))
    if misfit is not None:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"LoRA '{lora.label}' does not fit the model '{model_name}' "
                          f"({arch_label}, width {width}): its layer '{misfit[2]}' has another shape than the "
                          f"model's '{misfit[0]}' {list(misfit[1])}, so it was trained for a model of another "
                          "width or another architecture; pick a LoRA made for this model")  # fmt: skip
    if not targets:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"LoRA '{lora.label}' ({lora.layout} layout) names no layer of "
                          f"the {arch_label} model '{model_name}' (e.g. '{unmatched[0]}'): it was made for another "
                          f"architecture; pick a {arch_label} LoRA")  # fmt: skip
    if unmatched:
        total = len(lora.layers)
        raise EngineError(ErrorCode.LORA_NO_MATCH, f"LoRA '{lora.label}' only partly matches '{model_name}': "
                          f"{total - len(unmatched)} of {total} layers matched (e.g. '{unmatched[0]}' did not); "
                          "applying part of a LoRA would not give what it was trained to give, so it was not "
                          "applied")  # fmt: skip
    targets.sort(key=lambda pair: (pair[0].component, pair[0].name))
    return BoundLora(file=lora, targets=targets, unmatched=0)
