"""Reading a LoRA file into per-layer deltas, once; matching them to a model, per model.

Reading (disk, safetensors parse, key layout, format per layer) does not depend on the model,
so the LoRA cache keeps the :class:`LoraFile` and the prefetch thread can build one while
another job denoises. Binding it to a loaded model (:func:`bind`) is a dictionary walk.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.classify import adapter_configs
from engine.loras.base import LayerDelta
from engine.loras.dora import DoraDelta
from engine.loras.full import FullDelta
from engine.loras.ia3 import Ia3Delta
from engine.loras.keys import BUNDLE_PREFIX, Layer, ModuleIndex, key_layout, split_key
from engine.loras.loha import LohaDelta
from engine.loras.lokr import LokrDelta
from engine.loras.lora import LoraDelta
from engine.protocol import EngineError, ErrorCode, architecture_label

#: Tensor names of network types nobody here applies yet, with the name people know them by.
UNSUPPORTED = (
    ("oft_blocks", "LyCORIS OFT"),
    ("oft_diag", "LyCORIS BOFT/OFT"),
    (".a1.weight", "LyCORIS GLoRA"),
)


@dataclass
class LoraFile:
    """One file's deltas, keyed by (component or None, flattened layer name)."""

    label: str
    sha256: str
    layout: str
    layers: dict[tuple[str | None, str], LayerDelta]
    #: Bundled textual-inversion vectors (``bundle_emb.NAME.…``): name -> {vector name: tensor}.
    embeddings: dict[str, dict[str, Any]] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def formats(self) -> list[str]:
        return sorted({delta.format for delta in self.layers.values()})


def delta_for(roles: dict[str, Any]) -> LayerDelta | None:
    """Pick the format from which parameters a layer has; None for a layer with no delta."""
    magnitude = roles.get("dora_scale", roles.get("magnitude"))
    inner: LayerDelta | None
    if "hada_w1_a" in roles:
        inner = LohaDelta(roles)
    elif any(k.startswith("lokr_") for k in roles):
        inner = LokrDelta(roles)
    elif "down" in roles and "up" in roles:
        inner = LoraDelta(roles)
    elif "diff" in roles:
        inner = FullDelta(roles)
    elif "ia3" in roles:
        inner = Ia3Delta(roles)
    else:
        return None
    return DoraDelta(inner, magnitude) if magnitude is not None else inner


def unsupported_layout(keys: list[str]) -> str | None:
    """The name of a network type nobody here applies, if ``keys`` are one's."""
    for needle, name in UNSUPPORTED:
        if any(needle in key for key in keys):
            return name
    return None


def read_lora_file(path: Path, *, label: str, sha256: str) -> LoraFile:
    """Every layer delta of a ``.safetensors`` LoRA (the path is already confined and checked)."""
    from safetensors import SafetensorError, safe_open

    groups: dict[tuple[str | None, str], dict[str, Any]] = defaultdict(dict)
    embeddings: dict[str, dict[str, Any]] = defaultdict(dict)
    unparsed: list[str] = []
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            for key in keys:
                if key.startswith(BUNDLE_PREFIX):
                    name, _, vector = key.removeprefix(BUNDLE_PREFIX).partition(".")
                    embeddings[name][vector.rsplit(".", 1)[-1] or vector] = handle.get_tensor(key)
                    continue
                parts = split_key(key)
                if parts is None:
                    unparsed.append(key)
                    continue
                groups[(parts.component, parts.flat_module)][parts.role] = handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise EngineError(ErrorCode.CORRUPT_FILE, f"could not read LoRA '{label}': {exc}") from exc
    alphas = adapter_configs(metadata)
    layers: dict[tuple[str | None, str], LayerDelta] = {}
    for where, roles in groups.items():
        if "alpha" not in roles and where[0] in alphas and "down" in roles:
            try:
                roles["alpha"] = pattern_alpha(alphas[where[0]], where[1], int(roles["down"].shape[0]))
            except (TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
                raise EngineError(
                    ErrorCode.CORRUPT_FILE,
                    f"LoRA '{label}' has unreadable lora_adapter_metadata for '{where[0]}' "
                    f"({type(exc).__name__}: {exc}); re-save it with diffusers' save_lora_weights",
                ) from exc
        try:
            delta = delta_for(roles)
        except (KeyError, IndexError, RuntimeError, AttributeError) as exc:
            raise EngineError(
                ErrorCode.CORRUPT_FILE,
                f"LoRA '{label}' has a malformed layer '{where[1]}' ({type(exc).__name__}: {exc})",
            ) from exc
        if delta is not None:
            layers[where] = delta
    if not layers and not embeddings:
        name = unsupported_layout(unparsed)
        if name is not None:
            raise EngineError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"LoRA '{label}' is a {name} file, a format this engine cannot apply; use a "
                "LoRA, LoCon, LoHa, LoKr, full/diff, (IA)3 or DoRA file",
            )
    return LoraFile(
        label=label,
        sha256=sha256,
        layout=key_layout(keys),
        layers=layers,
        embeddings=dict(embeddings),
        nbytes=sum(delta.nbytes for delta in layers.values()),
    )


def pattern_alpha(config: dict[str, Any], flat_module: str, rank: int) -> Any:
    """PEFT's scaling alpha/r for one layer, written as an alpha for this layer's rank."""
    import torch

    alpha = float(config.get("lora_alpha", rank))
    r = float(config.get("r", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if flat_module.endswith(pattern.replace(".", "_")):
            alpha = float(value)
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if flat_module.endswith(pattern.replace(".", "_")):
            r = float(value)
    scale = alpha / (r**0.5 if config.get("use_rslora") else r)
    return torch.tensor(scale * rank)


@dataclass
class BoundLora:
    """A file's deltas against one model's layers (what the patcher applies)."""

    file: LoraFile
    targets: list[tuple[Layer, LayerDelta]]
    unmatched: int


def bind(lora: LoraFile, index: ModuleIndex, *, model_name: str, model_arch: str) -> BoundLora:
    """Match every delta to a layer of the model; refuse a file that fits none of them.

    A layer found by name whose shape differs means the LoRA was made for another model (an
    SD 1.5 LoRA on SDXL): that is an architecture error, named as such. Keys naming no layer
    at all (another network's keys) leave the file with nothing to apply: ``lora_no_match``.
    """
    targets: list[tuple[Layer, LayerDelta]] = []
    unmatched = 0
    misfit: tuple[str, tuple[int, ...]] | None = None
    for (component, flat), delta in lora.layers.items():
        candidates = index.candidates(component, flat)
        layer = next((c for c in candidates if delta.fits(tuple(c.module.weight.shape))), None)
        if layer is None:
            unmatched += 1
            if candidates and misfit is None:
                misfit = (candidates[0].name, tuple(candidates[0].module.weight.shape))
            continue
        targets.append((layer, delta))
    label = architecture_label(model_arch)
    if misfit is not None:  # as diffusers: one layer of the wrong shape is the wrong model
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"LoRA '{lora.label}' does not fit the model '{model_name}' ({label}): its layer "
            f"shapes differ (e.g. '{misfit[0]}' is {list(misfit[1])} in the model), so it was "
            f"trained for another architecture; pick an {label} LoRA",
        )
    if not targets:
        raise EngineError(
            ErrorCode.LORA_NO_MATCH,
            f"LoRA '{lora.label}' has no layers matching model '{model_name}' ({label}): it was "
            "made for a different model family or uses an unsupported key format; check what "
            "it was trained for",
        )
    targets.sort(key=lambda pair: (pair[0].component, pair[0].name))
    return BoundLora(file=lora, targets=targets, unmatched=unmatched)
