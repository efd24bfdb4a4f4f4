"""Sampling profiles: the settings a speed LoRA or a distilled checkpoint needs (issue 21).

A speed LoRA (LCM, SDXL-Lightning, Hyper-SD, DMD2, TCD, the FLUX and Qwen-Image turbo
LoRAs) cuts the steps a model needs from 25-30 to 2-8, but only with its own sampler,
timestep spacing, steps and CFG; used with a 30-step, CFG 7 recipe it burns the image. A
:class:`SpeedProfile` is those settings, shipped as data (``data/speed_profiles.json``, each
value with the model card or README it comes from), attached to a model or LoRA entry by its
admin, and merged into requests by the bot's validation (:mod:`bot.request.profiles`).

:func:`detect` proposes a profile for a file being registered: from the names its metadata
gives (``ss_output_name``, ``modelspec.title``, a ``lora_adapter_metadata`` name), its file
name as the authors publish it, or the Civitai ``baseModel`` of the version it was fetched
from. No standard metadata marks a speed LoRA, so names are all there is (Krita AI Diffusion
matches file-name substrings the same way). Detection reads untrusted text: each name is cut
to :data:`MAX_NAME` characters before anything else and matched by plain substring search
(no regular expressions), so it is linear in a bounded input.

Plain Python, no torch: the bot process imports this module.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.recipe.sampler_names import SAMPLERS
from engine.shipped_data import data_dir

#: Characters of one name (file name, metadata value) that detection looks at.
MAX_NAME = 256
#: Longest ``lora_adapter_metadata`` JSON read for a name (a real one is a few hundred bytes).
MAX_ADAPTER_METADATA = 16 * 1024
#: Metadata keys whose values name the file (kohya, ModelSpec, diffusers/peft).
NAME_KEYS = ("ss_output_name", "modelspec.title")
ADAPTER_KEY = "lora_adapter_metadata"
_ADAPTER_NAME_KEYS = ("name", "adapter_name", "title", "model_name")


class ProfileError(ValueError):
    """A profile file or name that is not right; the message says what."""


@dataclass(frozen=True)
class SpeedProfile:
    """One speed LoRA's (or distilled checkpoint's) settings, as its authors publish them."""

    id: str
    label: str
    #: "lora" (a speed LoRA; a model merged with one, or distilled the same way, may take it
    #: too) or "checkpoint" (a distilled model only).
    kind: str
    #: Architectures (:mod:`engine.arch` names) it was made for.
    architectures: tuple[str, ...]
    sampler: str
    steps: int
    steps_allowed: tuple[int, int]
    cfg: float
    cfg_allowed: tuple[float, float]
    #: Variants of the architecture it runs on (FLUX.1 "dev"); empty = any.
    variants: tuple[str, ...] = ()
    eta: float | None = None
    #: A fixed flow-matching shift (Qwen-Image-Lightning: 3); None = the model's own.
    shift: float | None = None
    #: The LoRA weight its authors use (Hyper-FLUX: 0.125); None for checkpoints.
    lora_weight: float | None = None
    names: tuple[str, ...] = ()
    civitai_base_models: tuple[str, ...] = ()
    #: Setting -> where its value is published.
    sources: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """``Euler SGM Uniform, 4 steps, CFG 1`` (plus eta, shift, weight where set)."""
        steps = str(self.steps) if self.steps_allowed[0] == self.steps_allowed[1] else (
            f"{self.steps} ({self.steps_allowed[0]}-{self.steps_allowed[1]})")  # fmt: skip
        parts = [self.sampler, f"{steps} steps", f"CFG {self.cfg:g}"]
        if self.eta is not None:
            parts.append(f"eta {self.eta:g}")
        if self.shift is not None:
            parts.append(f"shift {self.shift:g}")
        if self.lora_weight is not None and self.lora_weight != 1.0:
            parts.append(f"LoRA weight {self.lora_weight:g}")
        return ", ".join(parts)

    def cannot_run(self, architecture: str, variant: str | None, samplers: tuple[str, ...] = ()) -> str | None:
        """Why a model of ``architecture``/``variant`` cannot run this profile, or None.

        ``samplers`` are the samplers the model's architecture runs (empty: not checked).
        """
        if architecture not in self.architectures:
            return f"{self.label} is made for {' / '.join(self.architectures)} models, not {architecture}"
        if self.variants and variant and variant not in self.variants:
            return f"{self.label} is made for the {' / '.join(self.variants)} variant, not {variant}"
        if samplers and self.sampler not in samplers:
            return f"{self.label} needs the sampler {self.sampler}, which {architecture} models do not run here"
        return None


def _pair(value: Any, kind: type, what: str) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise ProfileError(f"{what} must be a [low, high] pair")
    low, high = kind(value[0]), kind(value[1])
    if low > high:
        raise ProfileError(f"{what}: low {low} above high {high}")
    return low, high


def parse_profile(data: Mapping[str, Any]) -> SpeedProfile:
    """One profile from its JSON object, checked (the data ships, but a typo must not)."""
    try:
        profile = SpeedProfile(
            id=str(data["id"]),
            label=str(data["label"]),
            kind=str(data["kind"]),
            architectures=tuple(data["architectures"]),
            sampler=str(data["sampler"]),
            steps=int(data["steps"]),
            steps_allowed=_pair(data["steps_allowed"], int, f"{data['id']} steps_allowed"),
            cfg=float(data["cfg"]),
            cfg_allowed=_pair(data["cfg_allowed"], float, f"{data['id']} cfg_allowed"),
            variants=tuple(data.get("variants", ())),
            eta=None if data.get("eta") is None else float(data["eta"]),
            shift=None if data.get("shift") is None else float(data["shift"]),
            lora_weight=None if data.get("lora_weight") is None else float(data["lora_weight"]),
            names=tuple(data.get("names", ())),
            civitai_base_models=tuple(data.get("civitai_base_models", ())),
            sources=dict(data.get("sources", {})),
        )
    except KeyError as exc:
        raise ProfileError(f"a profile has no {exc.args[0]!r}") from None
    if profile.kind not in ("lora", "checkpoint"):
        raise ProfileError(f"{profile.id}: kind must be lora or checkpoint")
    if profile.sampler not in SAMPLERS:
        raise ProfileError(f"{profile.id}: unknown sampler {profile.sampler!r}")
    if not profile.steps_allowed[0] <= profile.steps <= profile.steps_allowed[1]:
        raise ProfileError(f"{profile.id}: steps {profile.steps} outside steps_allowed")
    if not profile.cfg_allowed[0] <= profile.cfg <= profile.cfg_allowed[1]:
        raise ProfileError(f"{profile.id}: cfg {profile.cfg} outside cfg_allowed")
    for key in ("sampler", "steps", "cfg", *(k for k in ("eta", "shift") if getattr(profile, k) is not None)):
        if key not in profile.sources:
            raise ProfileError(f"{profile.id}: no source for its {key}")
    if profile.lora_weight not in (None, 1.0) and "lora_weight" not in profile.sources:
        raise ProfileError(f"{profile.id}: no source for its lora_weight")
    if any(normal_name(n) != n or not n for n in profile.names):
        raise ProfileError(f"{profile.id}: names must be lower-case letters and digits")
    return profile


@functools.cache
def profiles() -> dict[str, SpeedProfile]:
    """Every shipped profile by id, in the file's order."""
    data = json.loads((data_dir() / "speed_profiles.json").read_text(encoding="utf-8"))
    found: dict[str, SpeedProfile] = {}
    for item in data["profiles"]:
        profile = parse_profile(item)
        if profile.id in found:
            raise ProfileError(f"two profiles are called {profile.id!r}")
        found[profile.id] = profile
    return found


def get(profile_id: str | None) -> SpeedProfile | None:
    return profiles().get(profile_id) if profile_id else None


def normal_name(name: str) -> str:
    """``"sdxl_lightning_4step_lora"`` -> ``"sdxllightning4steplora"``, on the first
    :data:`MAX_NAME` characters only."""
    return "".join(ch for ch in name[:MAX_NAME].lower() if ch.isascii() and ch.isalnum())


@dataclass(frozen=True)
class Detected:
    """A proposed profile and what it was read from (``"file name"``, ``"ss_output_name"``...)."""

    profile: SpeedProfile
    evidence: str


def match_name(name: str) -> SpeedProfile | None:
    """The profile whose longest needle occurs in ``name`` (so ``...8steps-CFG...`` beats ``...8steps...``)."""
    normal = normal_name(name)
    best: tuple[int, SpeedProfile] | None = None
    for profile in profiles().values():
        for needle in profile.names:
            if needle in normal and (best is None or len(needle) > best[0]):
                best = (len(needle), profile)
    return best[1] if best else None


def _file_stem(path: str) -> str:
    name = path[-4 * MAX_NAME :].replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def _adapter_names(raw: str) -> list[str]:
    if len(raw) > MAX_ADAPTER_METADATA:
        return []
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    return [v for k in _ADAPTER_NAME_KEYS if isinstance(v := data.get(k), str)]


def detect(
    file_name: str, metadata: Mapping[str, Any] | None = None, base_model: str | None = None, *, kind: str | None = None
) -> Detected | None:
    """The profile a file is proposed, or None: its metadata's names first (the trainer's),
    then its file name, then Civitai's ``baseModel``. ``kind`` "lora" keeps a LoRA from being
    proposed a distilled checkpoint's profile; a checkpoint may take a speed LoRA's (ByteDance
    publishes ``sdxl_lightning_4step.safetensors`` whole, and Lightning merges run the same way)."""

    def fits(profile: SpeedProfile | None) -> bool:
        return profile is not None and (kind != "lora" or profile.kind == "lora")

    metadata = metadata or {}
    candidates: list[tuple[str, str]] = []
    for key in NAME_KEYS:
        value = metadata.get(key)
        if isinstance(value, str):
            candidates.append((value, key))
    adapter = metadata.get(ADAPTER_KEY)
    if isinstance(adapter, str):
        candidates += [(name, f"{ADAPTER_KEY} name") for name in _adapter_names(adapter)]
    candidates.append((_file_stem(file_name), "file name"))
    for name, evidence in candidates:
        found = match_name(name)
        if fits(found):
            return Detected(found, evidence)  # type: ignore[arg-type]
    if base_model:
        wanted = base_model[:MAX_NAME].strip().casefold()
        for profile in profiles().values():
            if fits(profile) and any(b.casefold() == wanted for b in profile.civitai_base_models):
                return Detected(profile, "Civitai base model")
    return None


def describe(profile_id: str | None) -> str:
    """``SDXL-Lightning 4-step · Euler SGM Uniform, 4 steps, CFG 1``, or "none"."""
    profile = get(profile_id)
    return f"{profile.label} · {profile.summary()}" if profile else "none"


__all__ = [
    "Detected",
    "ProfileError",
    "SpeedProfile",
    "describe",
    "detect",
    "get",
    "match_name",
    "normal_name",
    "parse_profile",
    "profiles",
]

