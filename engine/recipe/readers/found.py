"""What a reader hands back: the recipe as the image tells it, and the resources it names."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from engine.recipe.model import Recipe, file_stem

#: Longest JSON document parsed from an image (a ComfyUI graph is usually under 100 kB).
MAX_JSON = 2 * 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]{8,64}$")

ResourceKind = Literal["model", "lora", "embedding", "vae"]


def load_json(text: str) -> Any:
    """Parsed JSON, or None for anything too long, too deep or malformed."""
    if not isinstance(text, str) or len(text) > MAX_JSON:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def clean_hash(value: Any) -> str | None:
    """``"0xABC…"``, ``"sha256:abc…"``, ``"ABC…"`` -> lower-case hex; None if not a usable hash."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    for prefix in ("0x", "sha256:", "autov2:", "autov3:"):
        text = text.removeprefix(prefix)
    return text if _HEX.match(text) else None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any, limit: int = 100_000) -> str:
    return value[:limit] if isinstance(value, str) else ""


@dataclass(frozen=True)
class Resource:
    """A model, LoRA, embedding or VAE an image names, with whatever identifies it.

    ``hashes`` are lower-case hex digests or prefixes, whatever the tool wrote: a file's
    sha256 (AutoV2 is its first 10 digits) or a tensor hash (sha256 after the safetensors
    header: A1111's LoRA hash, SwarmUI's, Civitai's AutoV3). The registry is asked for both.
    """

    kind: ResourceKind
    name: str
    weight: float | None = None
    hashes: tuple[str, ...] = ()
    civitai_version: int | None = None
    #: A hash that cannot be compared here (InvokeAI's blake3), shown to people as is.
    foreign_hash: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.civitai_version is not None:
            return f"Civitai version {self.civitai_version}"
        return self.hashes[0] if self.hashes else "(unnamed)"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "weight": self.weight,
            "hashes": list(self.hashes),
            "civitai_version": self.civitai_version,
            "foreign_hash": self.foreign_hash,
        }


def resource(kind: ResourceKind, name: Any, weight: float | None = None, *hashes: Any, version: Any = None, foreign: Any = None) -> Resource:
    """A Resource from loosely typed fields; file names become stems (``x.safetensors`` -> ``x``)."""
    text = as_text(name, 300).strip()
    clean = tuple(dict.fromkeys(h for h in (clean_hash(h) for h in hashes) if h))
    return Resource(
        kind,
        file_stem(text) if text else "",
        weight,
        clean,
        as_int(version),
        as_text(foreign, 200) or None,
    )


@dataclass(frozen=True)
class FoundRecipe:
    """A recipe read from an image. ``recipe`` has the prompt and settings; its model and
    LoRAs are named (``model_name``, each LoRA's ``name``) but not resolved to files unless
    ``exact`` (our own chunk). ``missing`` names the settings the image did not give (they
    hold defaults, which the bot replaces with the model's); ``notes`` say what the image has
    that cannot be carried over, in words for the member."""

    format: str
    source: str
    recipe: Recipe
    resources: tuple[Resource, ...] = ()
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    exact: bool = False

    @property
    def model(self) -> Resource | None:
        return next((r for r in self.resources if r.kind == "model"), None)

    def of_kind(self, kind: ResourceKind) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "exact": self.exact,
            "recipe": self.recipe.to_json(),
            "resources": [r.to_json() for r in self.resources],
            "missing": list(self.missing),
            "notes": list(self.notes),
        }
